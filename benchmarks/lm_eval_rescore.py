"""Score balora's generations with lm-eval-harness's own task code (filters + exact_match), no model run.

Run it with the Python of an environment where ``lm_eval`` is installed and balora is importable (the task's
``balora-extract`` filter imports it), from the repository root::

    PYTHONPATH=src HF_DATASETS_OFFLINE=1 /path/to/lmeval-venv/bin/python benchmarks/lm_eval_rescore.py \
        --generations runs/arith-base/test/arithmetic_generations.jsonl --task balora_arithmetic \
        --out runs/arith-base/test/lm_eval_samples.jsonl

The task (configs/lm_eval/arithmetic) is built by lm-eval's TaskManager; each generation becomes the response
of its problem's request, ``task.apply_filters()`` and ``task.process_results()`` score it exactly as an
``lm_eval --log_samples`` run would, and the rows are written in that log's form (``doc``, ``filter``, ``resps``,
``filtered_resps``, ``exact_match``), so ``benchmarks/lm_eval_crosscheck.py`` compares them with balora's
scorer. This isolates the scoring: the generations are balora's, byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rescore(generations: Path, task_name: str, include_path: Path) -> list[dict]:
    """lm-eval sample rows (one per problem and filter) for the completions in ``generations``."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_name], TaskManager(include_path=str(include_path)))[task_name]
    docs = {doc["id"]: doc for doc in task.test_docs()}
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [r["id"] for r in rows if r["id"] not in docs]
    if missing:
        raise ValueError(f"{generations}: {len(missing)} problem id(s) are not in task {task_name}, e.g. {missing[:3]}")
    instances = []
    for i, row in enumerate(rows):
        inst = Instance(request_type="generate_until", doc=docs[row["id"]], arguments=("", {}), idx=0,
                        metadata=(task_name, i, 1))
        inst.resps = [row["completion"]]
        instances.append(inst)
    task._instances = instances  # what build_all_requests() fills before a model run
    task.apply_filters()
    out = []
    for inst in instances:
        for name, filtered in inst.filtered_resps.items():
            metrics = task.process_results(inst.doc, [filtered])
            out.append({"doc_id": inst.doc_id, "doc": inst.doc, "target": task.doc_to_target(inst.doc),
                        "resps": [inst.resps], "filtered_resps": [filtered], "filter": name, **metrics})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=Path, required=True, help="balora's <task>_generations.jsonl.")
    parser.add_argument("--task", default="balora_arithmetic", help="lm-eval task name.")
    parser.add_argument("--include-path", type=Path, default=REPO / "configs" / "lm_eval" / "arithmetic")
    parser.add_argument("--out", type=Path, required=True, help="Sample rows in lm-eval's --log_samples form.")
    args = parser.parse_args(argv)
    rows = rescore(args.generations, args.task, args.include_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name in sorted({r["filter"] for r in rows}):
        scores = [r["exact_match"] for r in rows if r["filter"] == name]
        print(f"{name}: exact_match {sum(scores) / len(scores):.3f} over {len(scores)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
