"""Final-answer extraction and equivalence for GSM8K and MATH.

GSM8K
    Gold solutions end with ``#### <number>``. Model completions are free text, so
    :func:`extract_gsm8k_answer` looks, in order, for a ``####`` marker, the last
    ``The answer is ...`` phrase, the last ``\\boxed{...}``, and finally the last number in
    the text. Numbers are compared exactly as fractions after removing ``$``, thousands
    separators, units and trailing zeros (``"$1,234.50"`` == ``1234.5``, ``"3/4"`` == ``0.75``).

MATH
    :func:`extract_boxed` returns the content of the last ``\\boxed{...}`` / ``\\fbox{...}``
    (nested braces handled). :func:`math_equiv` first compares normalised strings (the usual
    Hendrycks-style clean-up: ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``,
    ``\\left``/``\\right``, degrees, ``\\text{units}``, ``\\$``, percent, spaces, trailing ``.0``)
    and, when they differ, a sympy check.

    ``sympy.parsing.latex.parse_latex`` needs ``antlr4`` (or ``lark``), which is not a dependency
    of balora and is usually missing, so this module converts the small LaTeX subset that occurs
    in final answers (``\\frac``, ``\\sqrt``, ``^``, ``\\cdot``, ``\\pi``, ``\\infty``, trig/log names)
    to a Python expression string itself (:func:`latex_to_sympy_str`) and parses it with
    ``sympy.parsing.sympy_parser.parse_expr`` using implicit multiplication. The sympy step runs
    under a time limit and refuses huge integer powers, so a pathological answer cannot hang a run.
"""

from __future__ import annotations

import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

# ----------------------------------------------------------------------------- GSM8K

# A number: optional sign, optional "$", digits with optional thousands separators, optional
# decimals, optional "/denominator". The look-behind keeps "16-3" from reading as "-3".
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?\s?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<dec>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations <<2*3=6>>
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*", re.IGNORECASE)


def _iter_numbers(text: str) -> list[Fraction]:
    """All numbers in ``text`` as exact fractions, in order of appearance."""
    out: list[Fraction] = []
    for m in _NUMBER.finditer(text):
        whole, dec, den = m.group("int"), m.group("dec"), m.group("den")
        if whole is None and dec is None:
            continue
        value = Fraction((whole or "0").replace(",", "") + (dec or ""))
        if den is not None:
            d = Fraction(den)
            if d == 0:
                continue
            value /= d
        out.append(-value if m.group("sign") else value)
    return out


def parse_number(text: str) -> Optional[Fraction]:
    """Parse the first number in ``text`` (``"$1,234.50"``, ``"-7"``, ``"3/4"``, ``"18 dollars"``).

    Returns ``None`` when ``text`` holds no number.
    """
    nums = _iter_numbers(text)
    return nums[0] if nums else None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers without decimals, other values as a short decimal
    when exact (``0.75``), else ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal
        text = f"{float(value):.12f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def extract_gsm8k_gold(answer_text: str) -> str:
    """The gold final answer of a GSM8K ``answer`` field (text after the last ``####``)."""
    if "####" not in answer_text:
        raise ValueError(f"GSM8K gold answer has no '####' marker: {answer_text[-80:]!r}")
    return answer_text.rsplit("####", 1)[1].strip()


def extract_gsm8k_answer(completion: str) -> Optional[str]:
    """Extract a model's final numeric answer from free text, normalised by :func:`format_number`.

    Order: ``#### x``; the last ``The answer is x``; the last ``\\boxed{x}``; the last number.
    Returns ``None`` when no number is found.
    """
    text = _CALC_ANNOTATION.sub("", completion)
    candidates: list[str] = []
    if "####" in text:
        candidates.append(text.rsplit("####", 1)[1])
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        candidates.append(text[matches[-1].end():])
    boxed = extract_boxed(text)
    if boxed is not None:
        candidates.append(boxed)
    for cand in candidates:
        value = parse_number(cand.replace("\\$", "$").replace("\\!", ""))
        if value is not None:
            return format_number(value)
    numbers = _iter_numbers(text)
    return format_number(numbers[-1]) if numbers else None


def gsm8k_is_correct(completion: str, gold_answer_text: str) -> bool:
    """True when the final answer in ``completion`` equals the gold answer.

    ``gold_answer_text`` is either a full GSM8K solution (``... #### 18``) or the bare answer.
    """
    gold_str = extract_gsm8k_gold(gold_answer_text) if "####" in gold_answer_text else gold_answer_text
    gold = parse_number(gold_str)
    if gold is None:
        raise ValueError(f"GSM8K gold answer is not a number: {gold_str!r}")
    pred = extract_gsm8k_answer(completion)
    return pred is not None and Fraction(pred) == gold


# ----------------------------------------------------------------------------- MATH: boxed


def _matching_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` matching the ``{`` at ``open_idx``, or -1."""
    depth = 0
    for i in range(open_idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (also ``\\boxed 5``), or ``None``."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)]
    for m in reversed(starts):
        rest = text[m.end():]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            open_idx = m.end() + (len(rest) - len(stripped))
            close = _matching_brace(text, open_idx)
            if close != -1:
                return text[open_idx + 1 : close].strip()
        elif rest[:1] == " ":  # "\boxed 5": up to the next "$" or whitespace
            token = re.match(r"\s*([^\s$]+)", rest)
            if token:
                return token.group(1)
    return None


# ----------------------------------------------------------------------------- MATH: normalise

_UNIT_TEXT = re.compile(r"^(?P<body>.*\d.*?)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .^0-9]*\}$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")


def _fix_frac_shorthand(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{x}`` -> ``\\frac{1}{x}``."""
    out = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    out = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", out)
    return re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", out)


def normalize_math_answer(answer: str) -> str:
    """Canonical string form of a MATH final answer (used for the string comparison)."""
    s = answer.strip().replace("\n", "")
    s = s.rstrip(".").strip()
    s = re.sub(r"\\[!,;:> ]", "", s)  # thin spaces
    s = s.replace("\\\\", "\\")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("°", "")
    s = re.sub(r"\\text\{\s*degrees?\s*\}|\bdegrees?\b", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    unit = _UNIT_TEXT.match(s)
    if unit:
        s = unit.group("body")
    for _ in range(3):
        s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\displaystyle", "")
    # "x = 5" -> "5" when the left-hand side is a short name.
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    s = _fix_frac_shorthand(s)
    s = s.replace(" ", "")
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    s = re.sub(r"(\d+)\.0+(?!\d)", r"\1", s)  # "2.0" -> "2"
    s = re.sub(r"(\d+\.\d*?[1-9])0+(?!\d)", r"\1", s)  # "2.50" -> "2.5"
    simple = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if simple:
        s = f"\\frac{{{simple.group(1)}}}{{{simple.group(2)}}}"
    if s == "0.5":
        s = "\\frac{1}{2}"
    return s


# ----------------------------------------------------------------------------- MATH: sympy

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos", "arctan"}


def _replace_command_args(s: str, command: str, n_args: int, fmt: Callable[..., str]) -> str:
    """Replace ``\\command{a}{b}`` (brace-balanced) with ``fmt(a, b)``, innermost-safe."""
    while True:
        idx = s.find(command + "{")
        if idx == -1:
            return s
        args, pos = [], idx + len(command)
        for _ in range(n_args):
            while pos < len(s) and s[pos] == " ":
                pos += 1
            if pos >= len(s) or s[pos] != "{":
                raise ValueError(f"cannot parse {command} in {s!r}")
            close = _matching_brace(s, pos)
            if close == -1:
                raise ValueError(f"unbalanced braces in {s!r}")
            args.append(s[pos + 1 : close])
            pos = close + 1
        s = s[:idx] + fmt(*args) + s[pos:]


def latex_to_sympy_str(latex: str) -> str:
    """Convert the LaTeX subset used in final answers to a sympy-parsable expression string.

    Hand-written because ``sympy.parsing.latex`` needs the optional ``antlr4``/``lark`` packages.
    Raises ``ValueError`` for constructs it does not understand.
    """
    s = latex
    s = _replace_command_args(s, "\\frac", 2, lambda a, b: f"(({a})/({b}))")
    s = re.sub(r"\\sqrt\s*\[([^\]]*)\]\s*\{", r"\\root{\1}{", s)
    s = _replace_command_args(s, "\\root", 2, lambda n, a: f"(({a})**(1/({n})))")
    s = _replace_command_args(s, "\\sqrt", 1, lambda a: f"sqrt({a})")
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = s.replace("\\pi", " pi ").replace("\\infty", " oo ")
    for fn in _FUNCS:
        s = s.replace("\\" + fn, f" {fn} ")
    if "\\" in s:
        raise ValueError(f"unsupported LaTeX command in {latex!r}")
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    return s


def _too_expensive(expr) -> bool:  # noqa: ANN001 - sympy Basic
    """Reject numeric powers whose evaluation could take unbounded time (``10^{10^{10}}``)."""
    import sympy

    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            base, exp = node.args
            if exp.is_Number and abs(exp) > 1000 and base.is_Number:
                return True
            if isinstance(exp, sympy.Pow) and base.is_Number:
                return True
    return False


def _parse(latex: str):  # noqa: ANN202 - sympy Expr
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )
    import sympy

    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    local = {"i": sympy.I, "e": sympy.E, "ln": sympy.log}
    expr = parse_expr(latex_to_sympy_str(latex), local_dict=local, transformations=transformations,
                      evaluate=False)
    if _too_expensive(expr):
        raise ValueError("expression too expensive to evaluate")
    return expr


def _split_top_level(s: str) -> Optional[list[str]]:
    """Split ``a,b`` (brackets already removed) at top-level commas; ``None`` for one part."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts if len(parts) > 1 else None


def _strip_open(s: str) -> str:
    """Drop one opening bracket: ``(``, ``[`` or ``\\{``."""
    for tok in ("\\{", "(", "["):
        if s.startswith(tok):
            return s[len(tok):]
    return s


def _strip_close(s: str) -> str:
    """Drop one closing bracket: ``)``, ``]`` or ``\\}``."""
    for tok in ("\\}", ")", "]"):
        if s.endswith(tok):
            return s[: -len(tok)]
    return s


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    ea, eb = _parse(a), _parse(b)
    diff = sympy.simplify(ea - eb)
    if diff == 0:
        return True
    va, vb = complex(sympy.N(ea)), complex(sympy.N(eb))
    return abs(va - vb) <= 1e-9 * max(1.0, abs(vb))


def run_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """Run ``fn`` with a time limit; raise ``TimeoutError`` when it is exceeded.

    In the main thread a ``SIGALRM`` timer interrupts the computation. Elsewhere (Python only
    delivers signals to the main thread) ``fn`` runs in a daemon worker thread that is abandoned
    on timeout; it finishes in the background but the caller is not blocked.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def _raise(signum, frame):  # noqa: ANN001, ARG001
            raise TimeoutError(f"exceeded {timeout_s} s")

        previous = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except FutureTimeout as exc:
        raise TimeoutError(f"exceeded {timeout_s} s") from exc
    finally:
        pool.shutdown(wait=False)


def math_equiv(pred: Optional[str], gold: Optional[str], timeout_s: float = 3.0) -> bool:
    """Whether two MATH final answers are equivalent.

    Normalised strings are compared first; when they differ, tuples/intervals are compared
    element-wise (same brackets required) and expressions with sympy (under ``timeout_s``).
    Any parse failure or timeout counts as "not equivalent".
    """
    if pred is None or gold is None:
        return False
    a, b = normalize_math_answer(pred), normalize_math_answer(gold)
    if a == b:
        return True
    if not a or not b or len(a) > 300 or len(b) > 300:
        return False
    ia, ib = _strip_close(_strip_open(a)), _strip_close(_strip_open(b))
    pa, pb = _split_top_level(ia), _split_top_level(ib)
    if pa is not None or pb is not None:  # tuples, intervals, sets: same brackets, element-wise
        if pa is None or pb is None or len(pa) != len(pb):
            return False
        if (a[0], a[-1]) != (b[0], b[-1]) and (a[0] in "([\\" or b[0] in "([\\"):
            return False
        return all(math_equiv(x, y, timeout_s) for x, y in zip(pa, pb))
    try:
        return run_with_timeout(lambda: _sympy_equal(a, b), timeout_s)
    except Exception:  # noqa: BLE001 - parse errors, TimeoutError, sympy internals: not equal
        return False
