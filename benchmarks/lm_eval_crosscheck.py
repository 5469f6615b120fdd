"""lm-eval-harness against balora on the same problems: are the generations the same, and do the scores agree?

Inputs: the per-sample log of an lm-eval run of a task under configs/lm_eval/ (``--log_samples``: one row per
problem and filter) and the ``<task>_generations.jsonl`` of ``balora eval`` for the same model, adapter and
problems. Reported (printed, and as JSON with ``--out``):

* how many generations are identical text (both greedy; lm-eval and balora batch and pad differently);
* accuracy per lm-eval filter, balora's accuracy on its own generations and balora's scorer on lm-eval's
  generations;
* on lm-eval's generations, every problem where an lm-eval filter's exact match and balora's scorer disagree,
  with both extracted answers (so the reason can be read off).

    python benchmarks/lm_eval_crosscheck.py --samples runs/lm_eval/<model>/samples_balora_arithmetic_*.jsonl \
        --balora runs/lora-eval/arithmetic_generations.jsonl --out crosscheck.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from balora.atomic import write_json_atomic
from balora.evaluation.records import read_jsonl
from balora.evaluation.tasks import ScoreContext, get_task


def crosscheck(samples: Path, balora: Path, task: str = "arithmetic", show: int = 10) -> dict:
    """The comparison described in the module docstring."""
    by_filter: dict[str, dict] = defaultdict(dict)
    for row in read_jsonl(samples):
        by_filter[row["filter"]][row["doc"]["id"]] = row
    ours = {r["id"]: r for r in read_jsonl(balora)}
    filters = sorted(by_filter)
    ids = [i for i in by_filter[filters[0]] if i in ours]
    if not ids:
        raise ValueError(f"{samples} and {balora} share no problem id")
    first = by_filter[filters[0]]
    theirs = [first[i]["resps"][0][0] for i in ids]
    examples = [{"answer": first[i]["doc"]["gold"], "gold": first[i]["doc"]["gold"]} for i in ids]
    balora_on_theirs = get_task(task).score(examples, theirs, ScoreContext())
    same_text = [t.strip() == ours[i]["completion"].strip() for t, i in zip(theirs, ids)]
    out: dict = {
        "n": len(ids), "identical_generations": sum(same_text),
        "balora_accuracy_own_generations": sum(bool(ours[i]["correct"]) for i in ids) / len(ids),
        "balora_accuracy_on_lm_eval_generations": sum(bool(s["correct"]) for s in balora_on_theirs) / len(ids),
        "lm_eval": {}, "first_different_generations": [
            {"id": i, "lm_eval": t, "balora": ours[i]["completion"]}
            for t, i, same in zip(theirs, ids, same_text) if not same][:show],
    }
    for name in filters:
        em = [bool(by_filter[name][i]["exact_match"]) for i in ids]
        disagree = [{"id": i, "gold": ex["gold"], "lm_eval_extracted": by_filter[name][i]["filtered_resps"][0],
                     "lm_eval_exact_match": e, "balora_extracted": s["extracted"], "balora_correct": s["correct"],
                     "generation": t}
                    for i, ex, e, s, t in zip(ids, examples, em, balora_on_theirs, theirs) if e != s["correct"]]
        out["lm_eval"][name] = {"accuracy": sum(em) / len(ids), "disagreements_with_balora": len(disagree),
                                "examples": disagree[:show]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True, help="lm-eval's samples_<task>_*.jsonl.")
    parser.add_argument("--balora", type=Path, required=True, help="balora's <task>_generations.jsonl.")
    parser.add_argument("--task", default="arithmetic", help="balora task whose scorer is compared.")
    parser.add_argument("--out", type=Path, default=None, help="Write the comparison as JSON here.")
    args = parser.parse_args(argv)
    result = crosscheck(args.samples, args.balora, args.task)
    print(f"problems {result['n']}, identical generations {result['identical_generations']}")
    print(f"balora scorer: own generations {result['balora_accuracy_own_generations']:.3f}, "
          f"lm-eval's generations {result['balora_accuracy_on_lm_eval_generations']:.3f}")
    for name, row in result["lm_eval"].items():
        print(f"lm-eval {name}: {row['accuracy']:.3f} ({row['disagreements_with_balora']} disagreements with balora)")
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
