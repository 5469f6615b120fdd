"""Paired comparisons, collapse counts and wall times of `balora bench nlu` records (``balora report --paired``).

Reads bench records that hold per-example predictions (``predictions`` / ``references``, one list per evaluation
set: ``validation`` and each ``ood/<name>``) and builds a Markdown page. For every task, evaluation set and pair of
methods it gives, on the seeds both methods finished:

- the paired bootstrap of :func:`balora.reports.scoring.paired_bootstrap` (test examples and seeds resampled together,
  95 % percentile interval) of the task's main metric, and
- the paired-over-seeds difference: the per-seed differences (same subsample, data order and init for both
  methods), their mean and a Student-t 95 % interval over seeds (wide with 3 seeds).

A run is "collapsed" when it predicts one class for every example (classification) or when its prediction spread
is under 5 % of the labels' (regression: a near-constant score).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..methods import table_order_key
from .scoring import accuracy, is_collapsed, paired_bootstrap

__all__ = ["METRIC_FN", "constant_baseline", "paired_page", "t_interval"]


# Vectorisable numpy versions of the GLUE main metrics: the bootstrap calls them n_boot x seeds times, and
# scikit-learn's per-call input validation would make that minutes. Same definitions as
# balora.evaluation.nlu_metrics (binary F1 of class 1, MCC, Pearson); tests check them against scikit-learn/scipy.
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


METRIC_FN: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": _f1, "matthews_correlation": _mcc, "pearson": _pearson}
_TASK_ORDER = ("rte", "mrpc", "cola", "stsb", "sst2", "qnli")


def constant_baseline(ref: np.ndarray, metric: str, regression: bool) -> float:
    """The best score of a constant prediction (majority class; 0 for MCC / Pearson)."""
    if regression or metric == "matthews_correlation":
        return 0.0
    values, counts = np.unique(ref, return_counts=True)
    return METRIC_FN[metric](np.full_like(ref, values[counts.argmax()]), ref)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``d`` (nan with fewer than two values)."""
    from scipy import stats as sst

    if len(d) < 2:
        return float("nan"), float("nan")
    half = sst.t.ppf(0.5 + level / 2, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def _collect(sources: Iterable[tuple[str, list[dict]]]) -> tuple[dict, dict, int]:
    """(task, set) -> method -> seed -> (pred, ref); (source, task, method) -> wall times; records skipped."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    walls: dict = defaultdict(list)
    skipped = 0
    for source, records in sources:
        for rec in records:
            if "predictions" not in rec or "references" not in rec:
                skipped += 1
                continue
            walls[(source, rec["task"], rec["method"])].append(
                (rec["wall_seconds"], rec["train_seconds"], (rec.get("head") or {}).get("head_warmup_seconds")))
            for name, pred in rec["predictions"].items():
                set_name = name if name == "validation" else f"{rec['task']}→{name.removeprefix('ood/')}"
                if name not in rec["references"]:
                    raise ValueError(f"{source}: run {rec['method']}/{rec['task']}/seed {rec['seed']} has "
                                     f"predictions for {name!r} but no references")
                runs[(rec["task"], set_name)][rec["method"]][rec["seed"]] = (
                    np.asarray(pred), np.asarray(rec["references"][name]))
            ood = sorted(n for n in rec["predictions"] if n.startswith("ood/"))
            if len(ood) > 1:  # all OOD sets of the run pooled: accuracy over the pool = mean over equal-size sets
                pooled = np.concatenate([np.asarray(rec["predictions"][n]) for n in ood])
                pooled_ref = np.concatenate([np.asarray(rec["references"][n]) for n in ood])
                runs[(rec["task"], f"{rec['task']}→all {len(ood)} OOD sets pooled")][rec["method"]][rec["seed"]] = (
                    pooled, pooled_ref)
    return runs, walls, skipped


def paired_page(sources: Iterable[tuple[str, list[dict]]], *, n_boot: int = 2000, level: float = 0.95,
                title: Optional[str] = None) -> str:
    """The Markdown page: scores and collapse counts, paired differences, wall times.

    ``sources``: (name, records) per results file (the name labels the wall-time rows)."""
    from ..evaluation.nlu_metrics import main_metric

    sources = list(sources)
    runs, walls, skipped = _collect(sources)
    if not runs:
        raise ValueError("no record holds per-example predictions (`predictions` / `references`); rerun with "
                         "a balora version that writes them")
    methods = sorted({m for per_set in runs.values() for m in per_set}, key=table_order_key)
    pairs = [(b, a) for a, b in itertools.combinations(methods, 2)]
    pct = f"{100 * level:g} %"
    names = ", ".join(f"`{name}`" for name, _ in sources)
    lines = [f"# {title or 'Paired comparisons, collapse counts and wall times'}", "",
             f"Generated by `balora report --paired` from {names}."
             + (f" {skipped} records without per-example predictions were skipped." if skipped else ""), "",
             "Differences are A - B of the task's main metric x 100, averaged over the seeds both methods finished. "
             "**boot**: paired bootstrap over test examples and seeds (`balora.reports.stats.paired_bootstrap`, "
             f"{n_boot} draws, {pct} percentile interval). **seeds**: the per-seed differences (same subsample, "
             f"data order and init), their mean and a Student-t {pct} interval over seeds. * = the bootstrap "
             "interval excludes 0.", ""]

    lines += ["## Scores and collapse counts", "",
              "Mean ± std over seeds x 100; `const` = best constant prediction (majority class; 0 for MCC and "
              "Pearson); `collapsed` = runs predicting one class everywhere (regression: prediction spread < 5 % "
              "of the labels'); `> const` = runs above the constant baseline.", "",
              "| set | metric | const | " + " | ".join(methods) + " | collapsed (" + "/".join(methods)
              + ") | > const (" + "/".join(methods) + ") |",
              "|---|---|---|" + "---|" * len(methods) + "---|---|"]
    order = sorted(runs, key=lambda k: (_TASK_ORDER.index(k[0]) if k[0] in _TASK_ORDER else len(_TASK_ORDER),
                                        k[0], k[1] != "validation", k[1]))
    for key in order:
        task, set_name = key
        metric = main_metric(task)
        fn, regression = METRIC_FN[metric], metric == "pearson"
        some_ref = next(iter(next(iter(runs[key].values())).values()))[1]
        const = 100 * constant_baseline(some_ref, metric, regression)
        cells, coll, above = [], [], []
        for m in methods:
            seeds = runs[key].get(m, {})
            vals = np.array([100 * fn(p, r) for p, r in seeds.values()])
            cells.append(f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f} (n={len(vals)})" if len(vals) > 1
                         else (f"{vals[0]:.2f} (n=1)" if len(vals) else "–"))
            coll.append(str(sum(is_collapsed(p, r, regression) for p, r in seeds.values())) if seeds else "–")
            above.append(f"{int(np.sum(vals > const + 1e-9))}" if seeds else "–")
        label = f"{task} dev" if set_name == "validation" else set_name
        lines.append(f"| {label} | {metric} | {const:.2f} | " + " | ".join(cells) + f" | {'/'.join(coll)} | "
                     f"{'/'.join(above)} |")

    lines += ["", "## Paired differences", "",
              f"| set | A - B | seeds | boot: diff [{pct} CI] | seeds: per-seed diffs | seeds: mean [t {pct} CI] |",
              "|---|---|---|---|---|---|"]
    for key in order:
        task, set_name = key
        fn = METRIC_FN[main_metric(task)]
        label = f"{task} dev" if set_name == "validation" else set_name
        for a, b in pairs:
            sa, sb = runs[key].get(a, {}), runs[key].get(b, {})
            common = sorted(set(sa) & set(sb))
            if not common:
                continue
            ref = sa[common[0]][1]
            if not all(np.array_equal(sa[s][1], ref) and np.array_equal(sb[s][1], ref) for s in common):
                raise ValueError(f"{label}: reference labels differ between runs of {a} and {b}; cannot pair them")
            pa, pb = np.stack([sa[s][0] for s in common]), np.stack([sb[s][0] for s in common])
            res = paired_bootstrap(pa, pb, ref, metric=fn, n_boot=n_boot, level=level, seed=0)
            d = np.array([100 * (fn(sa[s][0], ref) - fn(sb[s][0], ref)) for s in common])
            lo, hi = t_interval(d, level)
            star = "" if res.within_noise else " *"
            lines.append(f"| {label} | {a} - {b} | {len(common)} | {100 * res.diff:+.2f} [{100 * res.low:+.2f}, "
                         f"{100 * res.high:+.2f}]{star} | {', '.join(f'{x:+.2f}' for x in d)} | "
                         f"{d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] |")

    lines += ["", "## Wall times", "", "Mean seconds per run (n runs): whole run (load, tokenise, head warm-up, "
              "train, evaluate) / training / head warm-up.", "",
              "| results | task | method | n | wall | train | head warm-up |", "|---|---|---|---|---|---|---|"]
    for (source, task, method), vals in sorted(walls.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                              table_order_key(kv[0][2]))):
        w, t = np.array([v[0] for v in vals]), np.array([v[1] for v in vals])
        h = [v[2] for v in vals if v[2] is not None]
        lines.append(f"| {Path(source).stem} | {task} | {method} | {len(vals)} | {w.mean():.0f} | {t.mean():.0f} | "
                     + (f"{np.mean(h):.1f} |" if h else "– |"))
    return "\n".join(lines) + "\n"
