"""Paired comparison of greedy generations on one benchmark: each fine-tuned run against the base model.

Reads the ``<task>_generations.jsonl`` files that ``balora eval`` / ``balora train`` (``eval:`` section) write,
pairs them by problem id and prints exact-match accuracy with a paired bootstrap interval of run - base
(:func:`balora.reports.stats.paired_bootstrap`; several runs = several seeds, then also the seed-pooled row).
Used for docs/results/nlg_task_pilot.md::

    python benchmarks/nlg_task_pilot.py --base runs/arith-base/eval/arithmetic_generations.jsonl \
        --runs runs/smollm2-arithmetic-lora-s0/eval/arithmetic_generations.jsonl [...] --out pilot.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from balora.atomic import write_json_atomic
from balora.evaluation.records import read_jsonl
from balora.reports.stats import paired_bootstrap


def correctness(path: Path, ids: list | None = None) -> tuple[list, np.ndarray]:
    """Problem ids and 0/1 correctness of one generations file (in ``ids`` order when given)."""
    rows = {r["id"]: bool(r["correct"]) for r in read_jsonl(path)}
    if ids is None:
        ids = list(rows)
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ValueError(f"{path}: no generation for {len(missing)} problem(s) of the base file, e.g. {missing[:3]}")
    return ids, np.array([rows[i] for i in ids], dtype=int)


def compare(base: Path, runs: list[Path], n_boot: int = 5000) -> dict:
    """Accuracy of the base and every run, and each run's (and the pooled) paired difference to the base."""
    ids, base_ok = correctness(base)
    runs_ok = np.stack([correctness(r, ids)[1] for r in runs])
    ones = np.ones_like(base_ok)
    out = {"n": len(ids), "base": {"file": str(base), "accuracy": float(base_ok.mean())}, "runs": []}
    for path, ok in zip(runs, runs_ok):
        diff = paired_bootstrap(ok, base_ok, ones, n_boot=n_boot)
        out["runs"].append({"file": str(path), "accuracy": float(ok.mean()), "minus_base": diff.to_dict(),
                            "wins": int(((ok == 1) & (base_ok == 0)).sum()),
                            "losses": int(((ok == 0) & (base_ok == 1)).sum())})
    if len(runs) > 1:
        pooled = paired_bootstrap(runs_ok, np.broadcast_to(base_ok, runs_ok.shape), ones, n_boot=n_boot)
        out["pooled_minus_base"] = pooled.to_dict()
    return out


def markdown(result: dict, label: str) -> str:
    """One table row per run: accuracy, base accuracy, difference [95% interval], wins / losses."""
    lines = []
    base = result["base"]["accuracy"]
    for run in result["runs"]:
        d = run["minus_base"]
        lines.append(f"| {label} | {Path(run['file']).parent.parent.name} | {result['n']} | {100 * base:.1f} | "
                     f"{100 * run['accuracy']:.1f} | {100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, "
                     f"{100 * d['high']:+.1f}] | {run['wins']} / {run['losses']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="The base model's generations JSONL.")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="Fine-tuned runs' generations JSONL.")
    parser.add_argument("--label", default="", help="Row label (e.g. the test set) in the markdown table.")
    parser.add_argument("--n-boot", type=int, default=5000, help="Bootstrap replicates.")
    parser.add_argument("--out", type=Path, default=None, help="Write the comparison as JSON here.")
    args = parser.parse_args(argv)
    result = compare(args.base, args.runs, args.n_boot)
    print(markdown(result, args.label))
    if "pooled_minus_base" in result:
        print("pooled:", result["pooled_minus_base"])
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
