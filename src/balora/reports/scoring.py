"""The one scoring module every command uses (``balora demo``, ``balora analyze``, ``balora report``, the sweeps).

Scores of one run (accuracy, macro-F1, per-class recall, ECE, collapse flag, majority baseline), their summary over
seeds (mean ± std), paired comparisons (the bootstraps of :mod:`balora.reports.stats`) and the Markdown table. The
metric and bootstrap code lives in :mod:`.stats` and :mod:`.measures`; this module adds what the commands share and
is the only one they import.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .measures import (classification_scores, expected_calibration_error, geometry_scores, per_class_recall,
                       softmax)
from .stats import (PairedDiff, accuracy, collapsed, macro_f1, majority_baseline, paired_bootstrap,
                    paired_ece_bootstrap, paired_loss_bootstrap)

__all__ = ["accuracy", "macro_f1", "per_class_recall", "expected_calibration_error", "softmax", "collapsed",
           "is_collapsed", "majority_baseline", "classification_scores", "geometry_scores", "score_predictions",
           "mean_std", "format_mean_std", "format_pm", "markdown_table", "PairedDiff", "paired_bootstrap",
           "paired_ece_bootstrap", "paired_loss_bootstrap", "seed_bootstrap", "verdict"]


def is_collapsed(pred: np.ndarray, ref: np.ndarray, regression: bool = False) -> bool:
    """One class everywhere (classification), or a prediction spread under 5 % of the labels' (regression)."""
    if regression:
        return bool(np.std(pred) < 0.05 * np.std(ref))
    return collapsed(pred)


def score_predictions(pred: np.ndarray, refs: np.ndarray, num_classes: int) -> dict[str, Any]:
    """accuracy, macro_f1, per_class_recall (every class; 0 for an absent one, scikit-learn's zero_division),
    collapsed and the confusion matrix of class predictions ``pred`` against ``refs``."""
    from sklearn.metrics import confusion_matrix, recall_score

    pred, refs = np.asarray(pred), np.asarray(refs)
    labels = list(range(num_classes))
    return {"accuracy": accuracy(pred, refs), "macro_f1": macro_f1(pred, refs, num_classes),
            "per_class_recall": recall_score(refs, pred, labels=labels, average=None, zero_division=0).tolist(),
            "collapsed": collapsed(pred), "confusion_matrix": confusion_matrix(refs, pred, labels=labels).tolist()}


def mean_std(values: Iterable[Any]) -> dict[str, float]:
    """``{"mean", "std"}`` over seeds; the sample std (ddof 1), 0 for a single value."""
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def format_pm(stat: dict) -> str:
    """``"0.612 ± 0.014"`` from a :func:`mean_std` result."""
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def format_mean_std(values: Iterable[Any]) -> str:
    """Mean ± std (population std, ddof 0) of the non-missing values to 3 decimals; the value alone when there is
    one, ``-`` when there is none (the analysis reports' cells)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "-"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: bool = False) -> str:
    """A Markdown table; ``align`` pads every column to its widest cell (readable as plain text on a terminal)."""
    if not align:
        lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *[line(r) for r in rows]])


def seed_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 % percentiles) of the per-seed differences ``a - b`` resampled over seeds: the paired
    comparison of runs that recorded only a score per seed (no per-example predictions)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    idx = rng.integers(0, len(d), (n_boot, len(d)))
    boots = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def verdict(diff: float, within_noise: bool, a: str = "A", b: str = "B", higher_is_better: bool = True) -> str:
    """The reading of a paired difference A - B: 'within noise' or which side is better."""
    if within_noise:
        return "within noise"
    return f"{a} better" if (diff > 0) == higher_is_better else f"{b} better"

