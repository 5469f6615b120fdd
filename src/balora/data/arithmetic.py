"""Seeded arithmetic word problems with worked answers: a generation task a 135M model learns on a CPU.

Each problem is a short story about a count of objects that changes in one to three steps (in-domain) or a
differently phrased shopping / reading / saving story (out-of-domain, ``ood``: never trained on, its templates
are not used by the other splits). The answer is worked one operation per sentence and ends with
``The answer is N.``, the form :func:`balora.evaluation.math_answers.extract_gsm8k_answer` reads first::

    Question: Mia has 23 shells. She finds 45 more shells. She gives 17 shells to her brother.
              How many shells does Mia have now?
    Answer:   23 + 45 = 68. 68 - 17 = 51. The answer is 51.

Splits never overlap: an in-domain problem belongs to ``train``, ``validation`` or ``test`` by a hash of its
question text (80 / 10 / 10), so no seed or size can put a test question into the training data; ``ood``
problems come from their own templates. The same ``(split, n, seed)`` always gives the same problems
(:data:`GENERATOR_VERSION` changes whenever the output would change).

A data source ``"arithmetic:<split>[:n[:seed]]"`` (e.g. ``arithmetic:train:4000:0``) is understood wherever
instruction data or a benchmark's data is read (:func:`balora.data.instruct.load_instruct_source`,
:mod:`balora.evaluation.tasks`), so the task needs no files.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Callable

GENERATOR_VERSION = 1
PREFIX = "arithmetic:"
SPLITS = ("train", "validation", "test", "ood")
DEFAULT_SIZES = {"train": 4000, "validation": 200, "test": 200, "ood": 200}
_HASH_SPLIT = (("train", 80), ("validation", 90), ("test", 100))  # cumulative percent of the question hash

_NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Ben", "Lily", "Omar", "Nina", "Jack", "Ruth", "Ivan", "Emma", "Noah")
_PRONOUN = {"Mia": "She", "Ava": "She", "Zoe": "She", "Lily": "She", "Nina": "She", "Ruth": "She", "Emma": "She"}
_OBJECTS = ("shells", "marbles", "stickers", "apples", "cards", "stamps", "coins", "pencils", "books", "cookies")


def _pronoun(name: str) -> str:
    return _PRONOUN.get(name, "He")


def _in_domain(rng: random.Random) -> tuple[str, str, int]:
    """A count that changes by 1-3 of: finds b more, gives b away, buys k bags of b."""
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    he = _pronoun(name)
    value = rng.randint(5, 60)
    sentences, steps = [f"{name} has {value} {obj}."], []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("add", "sub", "bags") if value > 3 else ("add", "bags"))
        if kind == "add":
            b = rng.randint(2, 40)
            sentences.append(rng.choice((f"{he} finds {b} more {obj}.", f"{he} gets {b} more {obj} from a friend.")))
            steps.append(f"{value} + {b} = {value + b}.")
            value += b
        elif kind == "sub":
            b = rng.randint(1, value - 1)
            sentences.append(rng.choice((f"{he} gives {b} {obj} to a friend.", f"{he} loses {b} {obj}.")))
            steps.append(f"{value} - {b} = {value - b}.")
            value -= b
        else:
            k, b = rng.randint(2, 5), rng.randint(2, 12)
            sentences.append(f"{he} buys {k} bags with {b} {obj} in each bag.")
            steps.append(f"{k} * {b} = {k * b}. {value} + {k * b} = {value + k * b}.")
            value += k * b
    sentences.append(f"How many {obj} does {name} have now?")
    return " ".join(sentences), " ".join(steps), value


def _ood_change(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(("pen", "notebook", "ticket", "sandwich", "toy car"))
    k, price = rng.randint(2, 6), rng.randint(2, 15)
    paid = k * price + rng.randint(1, 30)
    return (f"A {item} costs {price} dollars. {name} buys {k} of them and pays with {paid} dollars. "
            f"How much change does {name} get?",
            f"{k} * {price} = {k * price}. {paid} - {k * price} = {paid - k * price}.", paid - k * price)


def _ood_pages(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(_NAMES)
    a, b = rng.randint(5, 40), rng.randint(5, 40)
    total = a + b + rng.randint(1, 60)
    return (f"A book has {total} pages. {name} reads {a} pages on Monday and {b} pages on Tuesday. "
            "How many pages are left to read?",
            f"{a} + {b} = {a + b}. {total} - {a + b} = {total - a - b}.", total - a - b)


def _ood_saving(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(_NAMES)
    start, weekly, weeks = rng.randint(0, 50), rng.randint(2, 15), rng.randint(2, 6)
    return (f"{name} has saved {start} dollars and saves {weekly} dollars every week. "
            f"How many dollars will {name} have after {weeks} weeks?",
            f"{weekly} * {weeks} = {weekly * weeks}. {start} + {weekly * weeks} = {start + weekly * weeks}.",
            start + weekly * weeks)


def _ood_share(rng: random.Random) -> tuple[str, str, int]:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    friends, each, left = rng.randint(2, 6), rng.randint(2, 10), rng.randint(1, 9)
    total = friends * each + left
    return (f"{name} shares {total} {obj} equally among {friends} friends and keeps the {left} left over. "
            "How many does each friend get?",
            f"{total} - {left} = {friends * each}. {friends * each} / {friends} = {each}.", each)


_OOD: tuple[Callable[[random.Random], tuple[str, str, int]], ...] = (_ood_change, _ood_pages, _ood_saving, _ood_share)


def hash_split(question: str) -> str:
    """The in-domain split a question belongs to, from a hash of its text (stable across runs and platforms)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, upper in _HASH_SPLIT if bucket < upper)


def generate_split(split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """``n`` distinct problems of ``split`` (default :data:`DEFAULT_SIZES`), the same for the same arguments.

    Each record: ``id``, ``question``, ``answer`` (worked, ending ``The answer is N.``), ``gold`` (``"N"``),
    ``split``, ``seed``, ``generator_version``.
    """
    if split not in SPLITS:
        raise ValueError(f"arithmetic split {split!r} is not one of {SPLITS}")
    n = DEFAULT_SIZES[split] if n is None else n
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"arithmetic: the number of problems must be a positive integer, got {n!r}")
    # One stream per (split, seed), so the test problems do not depend on how many training problems were drawn.
    rng = random.Random(f"balora-arithmetic-v{GENERATOR_VERSION}-{split}-{seed}")
    seen: set[str] = set()
    out: list[dict] = []
    for _ in range(n * 200):  # far more draws than needed; a bound so a bad size cannot loop forever
        if len(out) == n:
            break
        question, work, value = rng.choice(_OOD)(rng) if split == "ood" else _in_domain(rng)
        if question in seen or (split != "ood" and hash_split(question) != split):
            continue
        seen.add(question)
        out.append({"id": f"{split}-{seed}-{len(out)}", "question": question,
                    "answer": f"{work} The answer is {value}.", "gold": str(value), "split": split,
                    "seed": seed, "generator_version": GENERATOR_VERSION})
    if len(out) < n:
        raise ValueError(f"arithmetic: only {len(out)} distinct {split} problems could be drawn, asked for {n}")
    return out


def parse_source(source: str) -> tuple[str, int | None, int]:
    """``"[arithmetic:]split[:n[:seed]]"`` -> ``(split, n, seed)``; a clear error for anything else."""
    text = source[len(PREFIX):] if source.startswith(PREFIX) else source
    parts = text.split(":")
    form = f"'{PREFIX}<split>[:n[:seed]]' with split one of {SPLITS}"
    if not 1 <= len(parts) <= 3 or parts[0] not in SPLITS or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"arithmetic data source {source!r} is not of the form {form}")
    n = int(parts[1]) if len(parts) > 1 else None
    return parts[0], n, int(parts[2]) if len(parts) > 2 else 0


def is_source(source: object) -> bool:
    """Whether ``source`` names generated arithmetic data (``"arithmetic:..."``) rather than a file or Hub set."""
    return isinstance(source, str) and source.startswith(PREFIX) and not Path(source).exists()


def load_source(source: str) -> list[dict]:
    """The problems a source string names (see :func:`parse_source`)."""
    split, n, seed = parse_source(source)
    return generate_split(split, n, seed)


def _is_number(value: object) -> bool:
    """A finite number or its text ("15.0", "1,234"); the gold answers of word-problem sets."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(str(value).replace(",", "")))
    except ValueError:
        return False


def load_problems(source: str) -> list[dict]:
    """Evaluation rows ``{id, question, answer, gold, worked}`` from generated data or a file of word problems.

    ``source``: ``"[arithmetic:]<split>[:n[:seed]]"`` (generated), or a JSON / JSONL / CSV / parquet file with a
    question (``question``, or ``instruction`` [+ ``input``] as in the LLM-Adapters sets AddSub, MultiArith,
    SingleEq, SVAMP, mawps) and a numeric ``answer`` (or ``gold``). ``answer`` is the bare gold number (what
    :func:`balora.evaluation.math_answers.gsm8k_is_correct` compares with); ``worked`` the worked answer if any.
    """
    from balora.data.files import load_table

    path = Path(source)
    if not path.exists():
        return [{"id": r["id"], "question": r["question"], "answer": r["gold"], "gold": r["gold"],
                 "worked": r["answer"]} for r in load_source(source)]
    rows = load_table(path).to_list()
    out = []
    for i, row in enumerate(rows, 1):
        where = f"{path}, row {i}"
        question = row.get("question") or " ".join(
            str(row.get(k) or "").strip() for k in ("instruction", "input")).strip()
        gold = row.get("gold", row.get("answer"))
        if not question:
            raise ValueError(f"{where}: no question (expected a 'question' or 'instruction' field)")
        if not _is_number(gold):
            raise ValueError(f"{where}: the answer {gold!r} is not a number (expected a numeric 'answer' or 'gold')")
        out.append({"id": row.get("id", i - 1), "question": question, "answer": str(gold), "gold": str(gold),
                    "worked": row.get("output")})
    return out


def write_split(split: str, path: str | Path, n: int | None = None, seed: int = 0) -> Path:
    """Write ``generate_split(split, n, seed)`` as JSONL (atomically), e.g. for an lm-eval task over the same
    problems (configs/lm_eval/arithmetic/)."""
    from balora.atomic import write_jsonl_atomic

    return write_jsonl_atomic(path, generate_split(split, n, seed))
