"""Paired comparisons, collapse counts and wall times of the v2 GLUE / OOD CPU runs (issue 14, part 3).

Reads bench records that hold per-example predictions (``predictions`` / ``references``, written by
``balora bench nlu`` since this run) and writes a Markdown page:

    PYTHONPATH=src python docs/results/glue_minilm_cpu_v2_paired.py docs/results/glue_minilm_cpu_v2.jsonl \
        [docs/results/ood_minilm_cpu_v2.jsonl ...] --out docs/results/glue_minilm_cpu_v2_paired.md

For every task and evaluation set (dev, and each OOD set) and every pair of methods it gives, on the seeds both
methods finished:
- the paired bootstrap of balora.analysis.stats.paired_bootstrap (test examples and seeds resampled together,
  2,000 draws, 95 % percentile interval) of the task's main metric, and
- the paired-over-seeds difference: the per-seed differences (same subsample, data order and init for both
  methods), their mean and a Student-t 95 % interval over seeds (wide with 3 seeds).
A run is "collapsed" when it predicts one class for every example (classification) or when its prediction
spread is under 5 % of the labels' (STS-B regression: a near-constant score).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats as sst

from balora.reports.stats import collapsed, paired_bootstrap
from balora.atomic import write_text_atomic
from balora.bench.runner import read_results
from balora.evaluation.nlu_metrics import main_metric

METHODS = ["lora", "pissa", "ba-lora"]
PAIRS = [("pissa", "lora"), ("ba-lora", "lora"), ("ba-lora", "pissa")]


# Vectorisable numpy versions of the GLUE main metrics (the bootstrap calls them 2,000 x seeds times; sklearn's
# per-call overhead would make that minutes). Same definitions as balora.evaluation.nlu_metrics.
def _acc(p: np.ndarray, r: np.ndarray) -> float:
    return float(np.mean(p == r))


def _f1(p: np.ndarray, r: np.ndarray) -> float:
    tp = float(np.sum((p == 1) & (r == 1)))
    denom = float(np.sum(p == 1) + np.sum(r == 1))
    return 2 * tp / denom if denom else 0.0


def _mcc(p: np.ndarray, r: np.ndarray) -> float:
    tp = float(np.sum((p == 1) & (r == 1))); tn = float(np.sum((p == 0) & (r == 0)))
    fp = float(np.sum((p == 1) & (r == 0))); fn = float(np.sum((p == 0) & (r == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def _pearson(p: np.ndarray, r: np.ndarray) -> float:
    if np.std(p) == 0 or np.std(r) == 0:
        return 0.0
    return float(np.corrcoef(p, r)[0, 1])


METRIC_FN = {"accuracy": _acc, "f1": _f1, "matthews_correlation": _mcc, "pearson": _pearson}


def is_collapsed(pred: np.ndarray, ref: np.ndarray, regression: bool) -> bool:
    if regression:
        return bool(np.std(pred) < 0.05 * np.std(ref))
    return collapsed(pred)


def constant_baseline(ref: np.ndarray, metric: str, regression: bool) -> float:
    """The best score of a constant prediction (majority class; 0 for MCC / Pearson)."""
    if regression or metric == "matthews_correlation":
        return 0.0
    values, counts = np.unique(ref, return_counts=True)
    best = values[counts.argmax()]
    return METRIC_FN[metric](np.full_like(ref, best), ref)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if len(d) < 2:
        return float("nan"), float("nan")
    half = sst.t.ppf(0.5 + level / 2, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()

    # (task, set) -> method -> seed -> (pred, ref, record)
    runs: dict = defaultdict(lambda: defaultdict(dict))
    walls: dict = defaultdict(list)
    skipped = 0
    for path in args.results:
        for rec in read_results(path):
            if "predictions" not in rec or "references" not in rec:
                skipped += 1
                continue
            walls[(Path(path).stem, rec["task"], rec["method"])].append(
                (rec["wall_seconds"], rec["train_seconds"], (rec.get("head") or {}).get("head_warmup_seconds")))
            for name, pred in rec["predictions"].items():
                set_name = name if name == "validation" else f"{rec['task']}→{name.removeprefix('ood/')}"
                ref = np.asarray(rec["references"][name])
                runs[(rec["task"], set_name)][rec["method"]][rec["seed"]] = (np.asarray(pred), ref, rec)
            ood = sorted(n for n in rec["predictions"] if n.startswith("ood/"))
            if len(ood) > 1:  # all OOD sets of the run pooled: accuracy over the pool = mean over equal-size sets
                pooled = np.concatenate([np.asarray(rec["predictions"][n]) for n in ood])
                pooled_ref = np.concatenate([np.asarray(rec["references"][n]) for n in ood])
                runs[(rec["task"], f"{rec['task']}→all {len(ood)} OOD sets pooled")][rec["method"]][rec["seed"]] = (
                    pooled, pooled_ref, rec)

    lines = ["# Paired comparisons, collapse counts and wall times (v2 CPU runs)", "",
             f"Generated by `docs/results/glue_minilm_cpu_v2_paired.py` from {', '.join(f'`{Path(p).name}`' for p in args.results)}."
             + (f" {skipped} records without per-example predictions were skipped." if skipped else ""), "",
             "Differences are A - B of the task's main metric x 100, averaged over the seeds both methods finished. "
             "**boot**: paired bootstrap over test examples and seeds (`balora.analysis.stats.paired_bootstrap`, "
             f"{args.n_boot} draws, 95 % percentile interval). **seeds**: the per-seed differences (same subsample, "
             "data order and init), their mean and a Student-t 95 % interval over seeds. * = the bootstrap interval "
             "excludes 0.", ""]

    lines += ["## Scores and collapse counts", "",
              "Mean ± std over seeds x 100; `const` = best constant prediction (majority class; 0 for MCC and "
              "Pearson); `collapsed` = runs predicting one class everywhere (STS-B: prediction spread < 5 % of "
              "the labels'); `> const` = runs above the constant baseline.", "",
              "| set | metric | const | " + " | ".join(METHODS) + " | collapsed (" + "/".join(METHODS)
              + ") | > const (" + "/".join(METHODS) + ") |",
              "|---|---|---|" + "---|" * len(METHODS) + "---|---|"]
    order = sorted(runs, key=lambda k: (["rte", "mrpc", "cola", "stsb", "sst2", "qnli"].index(k[0])
                                        if k[0] in ("rte", "mrpc", "cola", "stsb", "sst2", "qnli") else 9,
                                        k[1] != "validation", k[1]))
    for key in order:
        task, set_name = key
        metric = main_metric(task)
        fn = METRIC_FN[metric]
        regression = metric == "pearson"
        any_run = next(iter(next(iter(runs[key].values())).values()))
        const = 100 * constant_baseline(any_run[1], metric, regression)
        cells, coll, above = [], [], []
        for m in METHODS:
            seeds = runs[key].get(m, {})
            vals = np.array([100 * fn(p, r) for p, r, _ in seeds.values()])
            cells.append(f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f} (n={len(vals)})" if len(vals) > 1
                         else (f"{vals[0]:.2f} (n=1)" if len(vals) else "–"))
            coll.append(str(sum(is_collapsed(p, r, regression) for p, r, _ in seeds.values())) if seeds else "–")
            above.append(f"{int(np.sum(vals > const + 1e-9))}" if seeds else "–")
        label = f"{task} dev" if set_name == "validation" else set_name
        lines.append(f"| {label} | {metric} | {const:.2f} | " + " | ".join(cells) + f" | {'/'.join(coll)} | "
                     f"{'/'.join(above)} |")

    lines += ["", "## Paired differences", "",
              "| set | A - B | seeds | boot: diff [95 % CI] | seeds: per-seed diffs | seeds: mean [t 95 % CI] |",
              "|---|---|---|---|---|---|"]
    for key in order:
        task, set_name = key
        metric = main_metric(task)
        fn = METRIC_FN[metric]
        label = f"{task} dev" if set_name == "validation" else set_name
        for a, b in PAIRS:
            sa, sb = runs[key].get(a, {}), runs[key].get(b, {})
            common = sorted(set(sa) & set(sb))
            if not common:
                continue
            ref = sa[common[0]][1]
            if not all(np.array_equal(sa[s][1], ref) and np.array_equal(sb[s][1], ref) for s in common):
                raise ValueError(f"{label}: reference labels differ between runs; cannot pair them")
            pa = np.stack([sa[s][0] for s in common]); pb = np.stack([sb[s][0] for s in common])
            res = paired_bootstrap(pa, pb, ref, metric=fn, n_boot=args.n_boot, seed=0)
            d = np.array([100 * (fn(sa[s][0], ref) - fn(sb[s][0], ref)) for s in common])
            lo, hi = t_interval(d)
            star = "" if res.within_noise else " *"
            lines.append(f"| {label} | {a} - {b} | {len(common)} | {100 * res.diff:+.2f} [{100 * res.low:+.2f}, "
                         f"{100 * res.high:+.2f}]{star} | {', '.join(f'{x:+.2f}' for x in d)} | "
                         f"{d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] |")

    lines += ["", "## Wall times", "", "Mean seconds per run (n runs): whole run (load, tokenise, head warm-up, "
              "train, evaluate) / training / head warm-up.", "",
              "| results | task | method | n | wall | train | head warm-up |", "|---|---|---|---|---|---|---|"]
    for (stem, task, method), vals in sorted(walls.items()):
        w = np.array([v[0] for v in vals]); t = np.array([v[1] for v in vals])
        h = [v[2] for v in vals if v[2] is not None]
        lines.append(f"| {stem} | {task} | {method} | {len(vals)} | {w.mean():.0f} | {t.mean():.0f} | "
                     f"{np.mean(h):.1f} |" if h else f"| {stem} | {task} | {method} | {len(vals)} | {w.mean():.0f} | "
                     f"{t.mean():.0f} | – |")
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
