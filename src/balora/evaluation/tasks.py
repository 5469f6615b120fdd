"""Generation benchmarks: task registry and :func:`evaluate_model` (generate -> score -> save).

Tasks and the data they read (``data_path`` is a local file/folder, or a Hub dataset name when
no such path exists; the names in the data pack are shown for reference):

=========  ===========================================================  =====================
task       local data                                                   metric
=========  ===========================================================  =====================
gsm8k      ``gsm8k/test.jsonl`` (question, answer with ``#### x``)      accuracy
math       ``MATH/MATH_test.tar.gz`` (members ``<split>/<subject>/<n>.json``) or a folder of them  accuracy
math500    ``math500/test.jsonl`` (problem, solution, answer)          accuracy
humaneval  ``humaneval/HumanEval.jsonl.gz``                             pass@1
mbpp       ``mbpp/mbpp.jsonl`` (test split: task ids 11-510)            pass@1
mt-bench   folder with ``question.jsonl``, ``judge_prompts.jsonl``,      mean judge score (1-10)
           ``reference_answer/gpt-4.jsonl`` (first turn only)
=========  ===========================================================  =====================

``arithmetic`` and ``arithmetic-ood`` (the same task under two names, for a run's in-domain and out-of-domain
sets): generated word problems (``test``, ``ood``, ``validation``, optionally ``:n[:seed]``;
:mod:`balora.data.arithmetic`) or a file of questions with numeric answers (AddSub, SingleEq, MultiArith ...),
scored by exact match of the final number (accuracy).
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from balora.data.arithmetic import load_problems as load_arithmetic
from balora.evaluation import code_eval, mtbench
from balora.evaluation.records import read_jsonl, require_fields
from balora.evaluation.generation import (
    GenerationOptions,
    format_prompt,
    generate,
    generate_vllm,
    sample,
)
from balora.atomic import write_json_atomic, write_jsonl_atomic
from balora.evaluation.math_answers import (
    extract_boxed,
    extract_gsm8k_answer,
    extract_gsm8k_gold,
    gsm8k_is_correct,
    math_equiv,
)

PLAIN_STOPS = ("\n### Instruction",)


@dataclass
class ScoreContext:
    """Settings scorers may need (code execution limits, the MT-Bench judge)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    workers: int = 2
    judge: Optional[mtbench.JudgeConfig] = None
    data_path: Optional[str] = None


@dataclass(frozen=True)
class Task:
    """A benchmark: load examples, build a prompt per example, score completions in a batch."""

    name: str
    load: Callable[[str], list[dict]]
    build_prompt: Callable[[dict], str]
    score: Callable[[list[dict], list[str], ScoreContext], list[dict]]
    metric: str
    stop_sequences: tuple[str, ...] = PLAIN_STOPS
    use_chat_template: Union[bool, str] = "auto"
    data_hint: str = ""


# ----------------------------------------------------------------------------- GSM8K


def load_gsm8k(source: str) -> list[dict]:
    """GSM8K rows from a JSONL file or the Hub (``openai/gsm8k``, config ``main``, test split)."""
    p = Path(source)
    if p.exists():
        rows, where = read_jsonl(p), str(p)
    else:
        from datasets import load_dataset

        rows, where = list(load_dataset(source, "main", split="test")), source
    out = []
    for i, row in enumerate(rows, 1):
        require_fields(row, ("question", "answer"), f"{where} row {i}")
        out.append({"id": i - 1, "question": row["question"], "answer": row["answer"],
                    "gold": extract_gsm8k_gold(row["answer"])})
    return out


def score_gsm8k(examples: list[dict], completions: list[str], ctx: ScoreContext) -> list[dict]:
    out = []
    for ex, completion in zip(examples, completions):
        correct = gsm8k_is_correct(completion, ex["answer"])
        out.append({"extracted": extract_gsm8k_answer(completion), "score": float(correct), "correct": correct})
    return out


# ----------------------------------------------------------------------------- MATH

_MATH_MEMBER = re.compile(r"(?:^|/)(?P<split>[^/]+)/(?P<subject>[^/]+)/(?P<n>\d+)\.json$")


def _math_row(row: dict, where: str, unique_id: str) -> dict:
    require_fields(row, ("problem", "solution"), where)
    gold = row.get("answer") or extract_boxed(row["solution"])
    if gold is None:
        raise ValueError(f"{where}: no 'answer' field and no \\boxed{{}} answer in 'solution'")
    return {"id": unique_id, "problem": row["problem"], "gold": gold,
            "subject": row.get("subject") or row.get("type"), "level": row.get("level")}


def load_math(source: str) -> list[dict]:
    """MATH from the ``MATH_<split>.tar.gz`` archive, a folder of per-problem JSON files, a
    MATH-500 style JSONL (``answer`` field) or the Hub (``HuggingFaceH4/MATH-500``)."""
    p = Path(source)
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")):
        out = []
        with tarfile.open(p) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and _MATH_MEMBER.search(m.name)),
                             key=lambda m: (_MATH_MEMBER.search(m.name)["subject"], int(_MATH_MEMBER.search(m.name)["n"])))
            for m in members:
                row = json.loads(tar.extractfile(m).read().decode("utf-8"))
                out.append(_math_row(row, f"{p}:{m.name}", m.name))
        if not out:
            raise ValueError(f"{p}: no members named <split>/<subject>/<n>.json")
        return out
    if p.is_dir():
        files = sorted(p.rglob("*.json"))
        if not files:
            raise ValueError(f"{p}: folder has no *.json problem files")
        return [_math_row(json.loads(f.read_text(encoding="utf-8")), str(f), str(f.relative_to(p))) for f in files]
    if p.is_file():
        rows = read_jsonl(p)
        return [_math_row(r, f"{p} row {i}", r.get("unique_id", str(i - 1))) for i, r in enumerate(rows, 1)]
    from datasets import load_dataset

    rows = load_dataset(source, split="test")
    return [_math_row(dict(r), f"{source} row {i}", r.get("unique_id", str(i - 1))) for i, r in enumerate(rows, 1)]


def math_prompt(ex: dict) -> str:
    return ex["problem"] + "\nPut your final answer within \\boxed{}."


def score_math(examples: list[dict], completions: list[str], ctx: ScoreContext) -> list[dict]:
    out = []
    for ex, completion in zip(examples, completions):
        pred = extract_boxed(completion)
        if pred is None:  # "The answer is X" style completions
            m = re.findall(r"answer is:?\s*\$?([^\n$]+?)\$?\s*\.?\s*$", completion, flags=re.IGNORECASE | re.MULTILINE)
            pred = m[-1] if m else None
        correct = math_equiv(pred, ex["gold"])
        out.append({"extracted": pred, "score": float(correct), "correct": correct})
    return out


# ----------------------------------------------------------------------------- code


def _load_code(loader: Callable[[str], list]) -> Callable[[str], list[dict]]:
    return lambda source: [{"id": p.task_id, "problem": p} for p in loader(source)]


def score_code(examples: list[dict], completions: list[str], ctx: ScoreContext) -> list[dict]:
    problems = [ex["problem"] for ex in examples]
    cleaned = [code_eval.postprocess_completion(c, p) for c, p in zip(completions, problems)]
    results = code_eval.evaluate_samples(problems, [(p.task_id, c) for p, c in zip(problems, cleaned)],
                                         timeout_s=ctx.timeout_s, memory_mb=ctx.memory_mb, workers=ctx.workers)
    return [{"extracted": c, "score": float(r["passed"]), "correct": r["passed"], "status": r["status"],
             "stderr": r["stderr"][-500:]} for c, r in zip(cleaned, results)]


# ----------------------------------------------------------------------------- MT-Bench


def _mtbench_dir(source: str) -> Path:
    p = Path(source)
    if p.is_file():
        p = p.parent
    if not (p / "question.jsonl").is_file():
        raise ValueError(f"MT-Bench data folder {p} has no question.jsonl (expected question.jsonl, "
                         "judge_prompts.jsonl and reference_answer/gpt-4.jsonl from FastChat llm_judge)")
    return p


def load_mtbench(source: str) -> list[dict]:
    return [{"id": q["question_id"], "question": q} for q in mtbench.load_questions(_mtbench_dir(source) / "question.jsonl")]


def score_mtbench(examples: list[dict], completions: list[str], ctx: ScoreContext) -> list[dict]:
    if ctx.judge is None:
        ctx.judge = mtbench.JudgeConfig.resolve()
    folder = _mtbench_dir(ctx.data_path or "")
    prompts = mtbench.load_judge_prompts(folder / "judge_prompts.jsonl")
    ref_path = folder / "reference_answer" / "gpt-4.jsonl"
    refs = mtbench.load_reference_answers(ref_path) if ref_path.is_file() else {}
    judged = mtbench.judge_first_turn([ex["question"] for ex in examples], completions, ctx.judge, prompts, refs)
    return [{"extracted": None, "score": j["score"], "correct": None, "judgment": j["judgment"]} for j in judged]


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", load_gsm8k, lambda ex: ex["question"], score_gsm8k, "accuracy",
                  data_hint="gsm8k/test.jsonl or openai/gsm8k"),
    "math": Task("math", load_math, math_prompt, score_math, "accuracy",
                 data_hint="MATH/MATH_test.tar.gz or a folder <split>/<subject>/<n>.json"),
    "math500": Task("math500", load_math, math_prompt, score_math, "accuracy",
                    data_hint="math500/test.jsonl or HuggingFaceH4/MATH-500"),
    "humaneval": Task("humaneval", _load_code(code_eval.load_humaneval), lambda ex: ex["problem"].prompt,
                      score_code, "pass@1", code_eval.HUMANEVAL_STOP_SEQUENCES, use_chat_template=False,
                      data_hint="humaneval/HumanEval.jsonl.gz or openai_humaneval"),
    "mbpp": Task("mbpp", _load_code(code_eval.load_mbpp), lambda ex: code_eval.mbpp_prompt(ex["problem"]),
                 score_code, "pass@1", PLAIN_STOPS + ("\n[DONE]",), data_hint="mbpp/mbpp.jsonl or mbpp"),
    # Two names for one task, so that a run reports its in-domain and out-of-domain sets side by side.
    **{name: Task(name, load_arithmetic, lambda ex: ex["question"], score_gsm8k, "accuracy",
                  data_hint="test, validation, ood[:n[:seed]] (generated) or a file of question + numeric answer")
       for name in ("arithmetic", "arithmetic-ood")},
    "mt-bench": Task("mt-bench", load_mtbench, lambda ex: ex["question"]["turns"][0], score_mtbench,
                     "mean_score", data_hint="a folder with question.jsonl, judge_prompts.jsonl, reference_answer/"),
}


def get_task(name: str) -> Task:
    """The registered task ``name`` (see :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def evaluate_model(
    task: str,
    model: Any,
    tokenizer: Any,
    data_path: Union[str, Path],
    out_dir: Union[str, Path],
    limit: Optional[int] = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    use_chat_template: Optional[Union[bool, str]] = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    judge: Optional[mtbench.JudgeConfig] = None,
    progress: bool = True,
    backend: str = "transformers",
    adapter_path: Optional[str] = None,
    samples: int = 0,
    temperature: float = 0.7,
    sample_seed: int = 0,
) -> dict:
    """Generate for ``task``, score, and save ``<task>_generations.jsonl`` + ``<task>_summary.json``.

    ``model``/``tokenizer`` are transformers objects (``backend="transformers"``) or, for
    ``backend="vllm"``, ``model`` is the model path and ``tokenizer`` is used for prompt formatting.
    ``use_chat_template=None`` uses the task's default (raw prompt for HumanEval, else ``"auto"``).
    For MT-Bench the judge is resolved before any generation, so a missing judge fails fast with
    :class:`balora.evaluation.mtbench.JudgeNotConfigured`. Returns the summary dict.

    ``samples`` > 0 (transformers backend): also draw that many samples per prompt at ``temperature`` (seeded with
    ``sample_seed``), save them with their per-prompt diversity as ``<task>_samples.jsonl`` and add their means
    (:mod:`balora.evaluation.diversity`) and the sampling settings as ``diversity`` to the summary.
    """
    spec = get_task(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}")
    if samples and backend != "transformers":
        raise ValueError(f"samples={samples}: sampled generations (output diversity) need the transformers backend")
    if task == "mt-bench" and judge is None:
        judge = mtbench.JudgeConfig.resolve()
    start = time.time()
    examples = spec.load(str(data_path))[: limit or None]
    template = spec.use_chat_template if use_chat_template is None else use_chat_template
    stops = spec.stop_sequences if template is False or not getattr(tokenizer, "chat_template", None) else \
        tuple(s for s in spec.stop_sequences if s not in PLAIN_STOPS)
    options = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, stop_sequences=stops,
                                use_chat_template=template, progress=progress)
    raw_prompts = [spec.build_prompt(ex) for ex in examples]
    prompts = [format_prompt(tokenizer, p, template) for p in raw_prompts]
    if backend == "vllm":
        completions = generate_vllm(str(model), prompts, options, adapter_path=adapter_path)
    else:
        completions = generate(model, tokenizer, prompts, options)
    scores = spec.score(examples, completions, ScoreContext(timeout_s, memory_mb, workers, judge, str(data_path)))
    records = []
    for ex, prompt, completion, sc in zip(examples, raw_prompts, completions, scores):
        gold = ex.get("gold")
        records.append({"id": ex["id"], "prompt": prompt, "completion": completion, "gold": gold, **sc})
    out = Path(out_dir)
    gen_path = write_jsonl_atomic(out / f"{task}_generations.jsonl", records)
    valid = [r["score"] for r in records if r["score"] is not None]
    summary = {
        "task": task, "metric": spec.metric, "n": len(records),
        spec.metric: (sum(valid) / len(valid)) if valid else None,
        "n_scored": len(valid), "data": str(data_path), "generations": str(gen_path),
        "max_new_tokens": max_new_tokens, "chat_template": template, "seconds": round(time.time() - start, 2),
    }
    if task in ("humaneval", "mbpp"):
        summary["status_counts"] = {s: sum(r["status"] == s for r in records)
                                    for s in sorted({r["status"] for r in records})}
    if samples:
        summary["diversity"] = _diversity(model, tokenizer, examples, prompts, options, out / f"{task}_samples.jsonl",
                                          samples, temperature, sample_seed)
    summary["seconds"] = round(time.time() - start, 2)
    write_json_atomic(out / f"{task}_summary.json", summary)
    return summary


def _diversity(model: Any, tokenizer: Any, examples: list[dict], prompts: list[str], options: GenerationOptions,
               path: Path, samples: int, temperature: float, seed: int) -> dict:
    """Sample ``samples`` completions per prompt, save them with their diversity; the means and the settings."""
    from balora.evaluation.diversity import diversity_rows, summarize_diversity

    drawn = sample(model, tokenizer, prompts, options, samples=samples, temperature=temperature, seed=seed)
    rows = diversity_rows(drawn)
    write_jsonl_atomic(path, [{"id": ex["id"], "samples": s, **r} for ex, s, r in zip(examples, drawn, rows)])
    return {**summarize_diversity(rows), "samples": samples, "temperature": temperature, "seed": seed,
            "batch_size": options.batch_size, "max_new_tokens": options.max_new_tokens, "file": str(path)}
