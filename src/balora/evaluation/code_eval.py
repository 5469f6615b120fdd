"""HumanEval and MBPP: loading problems, building test programs, running them, pass@k.

Programs run through :func:`balora.evaluation.sandbox.run_python` (one subprocess per sample,
see its docstring for what is and is not isolated).

* HumanEval: program = ``prompt + completion + test + "check(entry_point)"``.
* MBPP: program = ``code + test_setup_code + test_list`` (one ``assert`` per line). The prompt
  shows the task text and the asserts, as in the MBPP paper's few-shot format.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from balora.evaluation.generation import truncate_at_stop as cut_at_stop
from balora.evaluation.records import read_jsonl, require_fields
from balora.evaluation.sandbox import SandboxResult, run_python

Benchmark = Literal["humaneval", "mbpp"]

HUMANEVAL_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")
MBPP_STOP_SEQUENCES = ("\nassert ", "\nif __name__", "\nprint(", "\n[DONE]", "\n```")
# Conventional MBPP split by task_id (Austin et al. 2021): 1-10 prompt, 11-510 test, ...
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974), "all": (1, 974),
}


@dataclass
class CodeProblem:
    """One HumanEval or MBPP problem in a common form."""

    task_id: str
    benchmark: Benchmark
    prompt: str  # HumanEval: code prefix to complete; MBPP: the natural-language task text
    reference: str  # canonical solution (HumanEval: the body; MBPP: the full code)
    test: str  # HumanEval: test code defining check(); MBPP: the asserts, one per line
    entry_point: Optional[str] = None
    setup: str = ""  # MBPP test_setup_code


def _humaneval_from_rows(rows: Iterable[Mapping], source: str) -> list[CodeProblem]:
    out = []
    for i, row in enumerate(rows, 1):
        require_fields(row, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), f"{source} row {i}")
        out.append(CodeProblem(str(row["task_id"]), "humaneval", row["prompt"], row["canonical_solution"],
                               row["test"], row["entry_point"]))
    return out


def _mbpp_from_rows(rows: Iterable[Mapping], source: str, split: str) -> list[CodeProblem]:
    if split not in MBPP_SPLITS:
        raise ValueError(f"MBPP split must be one of {sorted(MBPP_SPLITS)}, got {split!r}")
    lo, hi = MBPP_SPLITS[split]
    out = []
    for i, row in enumerate(rows, 1):
        text_key = "text" if "text" in row else "prompt"  # Hub "sanitized" config uses "prompt"
        require_fields(row, ("task_id", text_key, "code", "test_list"), f"{source} row {i}")
        if not lo <= int(row["task_id"]) <= hi:
            continue
        out.append(CodeProblem(str(row["task_id"]), "mbpp", row[text_key], row["code"],
                               "\n".join(row["test_list"]), setup=row.get("test_setup_code", "") or ""))
    return out


def load_humaneval(path: Union[str, Path]) -> list[CodeProblem]:
    """Load HumanEval from ``HumanEval.jsonl(.gz)``, or from the Hub when ``path`` is a dataset
    name such as ``"openai_humaneval"`` (needs network and the ``datasets`` cache)."""
    p = Path(path)
    if p.exists():
        return _humaneval_from_rows(read_jsonl(p), str(p))
    from datasets import load_dataset

    return _humaneval_from_rows(load_dataset(str(path), split="test"), str(path))


def load_mbpp(path: Union[str, Path], split: str = "test") -> list[CodeProblem]:
    """Load MBPP from ``mbpp.jsonl`` (all 974 tasks, filtered to ``split`` by task id), or from
    the Hub when ``path`` is a dataset name such as ``"mbpp"`` (its own ``split`` is used)."""
    if split not in MBPP_SPLITS:
        raise ValueError(f"MBPP split must be one of {sorted(MBPP_SPLITS)}, got {split!r}")
    p = Path(path)
    if p.exists():
        return _mbpp_from_rows(read_jsonl(p), str(p), split)
    from datasets import load_dataset

    hub_split = "train" if split == "all" else split
    return _mbpp_from_rows(load_dataset(str(path), split=hub_split), str(path), "all")


def mbpp_prompt(problem: CodeProblem) -> str:
    """The MBPP prompt: task text plus the asserts the code must pass."""
    return (f"You are an expert Python programmer, and here is your task: {problem.prompt} "
            f"Your code should pass these tests:\n\n{problem.test}\n")


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def postprocess_completion(text: str, problem: CodeProblem) -> str:
    """Clean a raw model completion into code for ``problem``.

    Takes the first fenced code block when there is one, drops a repeated HumanEval prompt, and
    cuts at the first stop sequence. A HumanEval completion that writes the whole function
    (``def entry_point(`` at column 0) keeps its helper functions: only script-level stops apply.
    """
    code = text
    fence = _FENCE.search(code)
    if fence:
        code = fence.group(1)
    if problem.benchmark == "humaneval" and code.startswith(problem.prompt):
        code = code[len(problem.prompt):]
    full_function = problem.benchmark == "mbpp" or (
        problem.entry_point is not None and re.search(rf"(?m)^def {re.escape(problem.entry_point)}\(", code))
    if problem.benchmark == "humaneval" and not full_function:
        stops: Sequence[str] = HUMANEVAL_STOP_SEQUENCES
    else:
        stops = ("\nif __name__", "\nprint(", "\nassert ") if problem.benchmark == "humaneval" else MBPP_STOP_SEQUENCES
    return cut_at_stop(code, stops)


def build_program(problem: CodeProblem, completion: str) -> str:
    """The complete test program for ``completion`` (already post-processed)."""
    if problem.benchmark == "humaneval":
        sep = "" if problem.prompt.endswith("\n") or completion.startswith("\n") else "\n"
        return f"{problem.prompt}{sep}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    return f"{completion}\n\n{problem.setup}\n\n{problem.test}\n"


def _run_one(problem: CodeProblem, completion: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    try:
        return run_python(build_program(problem, completion), timeout_s=timeout_s, memory_mb=memory_mb)
    except Exception as exc:  # noqa: BLE001 - one broken sample must not stop the run
        return SandboxResult("error", "", f"{type(exc).__name__}: {exc}", 0.0)


def evaluate_samples(
    problems: Union[Mapping[str, CodeProblem], Sequence[CodeProblem]],
    completions: Sequence[Union[Mapping[str, str], tuple[str, str]]],
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
) -> list[dict]:
    """Run every ``(task_id, completion)`` sample in the sandbox, ``workers`` at a time.

    ``completions`` items are ``{"task_id": ..., "completion": ...}`` dicts or tuples. Completions
    are used as given (call :func:`postprocess_completion` first for raw model output). Returns,
    in input order, dicts with ``task_id``, ``completion``, ``status``, ``passed``, ``duration_s``
    and ``stderr`` (tail).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    by_id = dict(problems) if isinstance(problems, Mapping) else {p.task_id: p for p in problems}
    samples: list[tuple[str, str]] = []
    for i, item in enumerate(completions):
        task_id, completion = (item["task_id"], item["completion"]) if isinstance(item, Mapping) else item
        if str(task_id) not in by_id:
            raise ValueError(f"completion {i}: unknown task_id {task_id!r}")
        samples.append((str(task_id), completion))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_one, by_id[t], c, timeout_s, memory_mb) for t, c in samples]
        results = [f.result() for f in futures]
    return [
        {"task_id": t, "completion": c, "status": r.status, "passed": r.passed,
         "duration_s": round(r.duration_s, 4), "stderr": r.stderr[-2000:]}
        for (t, c), r in zip(samples, results)
    ]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"k={k} exceeds the number of samples n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def estimate_pass_at_k(results: Sequence[Mapping], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """Mean pass@k over tasks from :func:`evaluate_samples` output (tasks with fewer than k
    samples are left out of that k's mean)."""
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    out = {}
    for k in ks:
        vals = [pass_at_k(len(v), sum(v), k) for v in per_task.values() if len(v) >= k]
        out[f"pass@{k}"] = float(np.mean(vals)) if vals else float("nan")
    return out
