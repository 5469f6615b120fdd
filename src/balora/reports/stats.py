"""Paired comparisons of two methods on the same test examples and seeds, with bootstrap intervals.

Mean ± std over three seeds says little about whether two methods differ. Here the two methods are
compared *paired*: the same test examples and the same seeds (same data order and subset) for both.
The bootstrap resamples test examples (one index draw shared by both methods and all seeds) and,
optionally, seeds (one seed draw shared by both methods), recomputes the metric difference each time,
and reports the percentile interval. The difference is "within noise" when the interval contains 0.

Hand-written on numpy rather than ``scipy.stats.bootstrap``: scipy resamples one axis of independent
observations, while this needs a two-level (seed x example) paired draw and metrics such as macro-F1
that are not means of per-example values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Union

import numpy as np

Metric = Union[str, Callable[[np.ndarray, np.ndarray], float]]


@dataclass
class PairedDiff:
    """metric(A) - metric(B), averaged over seeds, with its bootstrap interval."""

    diff: float
    low: float
    high: float
    within_noise: bool
    level: float
    n_boot: int
    resample_seeds: bool
    n_seeds: int
    n_examples: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        flag = "within noise" if self.within_noise else ("A better" if self.diff > 0 else "B better")
        return f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({flag})"


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(pred == ref))


def macro_f1(pred: np.ndarray, ref: np.ndarray, num_classes: int | None = None) -> float:
    """Macro-F1 over the classes present in ``ref`` or ``pred`` (scikit-learn's default label set)."""
    return float(_macro_f1_rows(pred[None], ref[None], num_classes)[0])


def _macro_f1_rows(pred: np.ndarray, ref: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Macro-F1 of each row of (R, N) integer predictions against (R, N) references, vectorised."""
    k = int(num_classes or max(pred.max(), ref.max()) + 1)
    rows = pred.shape[0]
    offset = (np.arange(rows) * k * k)[:, None]
    counts = np.bincount((offset + ref * k + pred).ravel(), minlength=rows * k * k).reshape(rows, k, k)
    tp = np.einsum("rkk->rk", counts).astype(float)
    support, predicted = counts.sum(2), counts.sum(1)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0  # scikit-learn averages over labels seen in ref or pred
    return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)


def _rows_metric(metric: Metric, num_classes: int | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if metric == "accuracy":
        return lambda p, r: (p == r).mean(1)
    if metric == "macro_f1":
        return lambda p, r: _macro_f1_rows(p, r, num_classes)
    if callable(metric):
        return lambda p, r: np.array([metric(pi, ri) for pi, ri in zip(p, r)], dtype=float)
    raise ValueError(f"metric must be 'accuracy', 'macro_f1' or a callable, got {metric!r}")


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, ref: np.ndarray, metric: Metric = "accuracy", *,
                     n_boot: int = 2000, level: float = 0.95, resample_seeds: bool = True, seed: int = 0,
                     num_classes: int | None = None) -> PairedDiff:
    """Paired bootstrap of ``metric(A) - metric(B)``, each averaged over seeds.

    Args:
        pred_a, pred_b: predictions of the two methods, shape (S, N) for S seeds (or (N,) for one run);
            row s of both comes from the same seed, column i from the same test example.
        ref: the N reference labels.
        metric: ``"accuracy"``, ``"macro_f1"`` or a callable ``(pred, ref) -> float``.
        n_boot: bootstrap replicates; level: interval coverage (percentile interval).
        resample_seeds: also draw seeds with replacement (shared by both methods), so the interval covers
            seed-to-seed variation as well as test-set sampling; with one seed only examples are drawn.
        seed: seed of the bootstrap's own generator (numpy ``default_rng``).

    Returns:
        :class:`PairedDiff`: the point difference on the full data, the interval, and ``within_noise``
        (the interval contains 0).
    """
    a, b = np.atleast_2d(np.asarray(pred_a)), np.atleast_2d(np.asarray(pred_b))
    ref = np.asarray(ref).reshape(-1)
    if a.shape != b.shape or a.shape[1] != ref.shape[0]:
        raise ValueError(f"paired_bootstrap: shapes differ: A {a.shape}, B {b.shape}, ref {ref.shape} "
                         "(expected (seeds, N), (seeds, N), (N,))")
    refs = np.broadcast_to(ref, a.shape)  # the same row for every seed: a seed draw leaves it unchanged
    return paired_rows_bootstrap(_rows_metric(metric, num_classes), (a, refs), (b, refs), n_boot=n_boot,
                                 level=level, resample_seeds=resample_seeds, seed=seed)


def _ece_rows(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> np.ndarray:
    """ECE of each row of (R, N) top-class confidences and 0/1 correctness, with the binning of
    :func:`balora.reports.measures.expected_calibration_error` (equal-width bins, right edges inclusive)."""
    rows, n = conf.shape
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    gap = np.bincount((which + np.arange(rows)[:, None] * bins).ravel(), weights=(correct - conf).ravel(),
                      minlength=rows * bins).reshape(rows, bins)
    return np.abs(gap).sum(1) / n  # sum over bins of share * |accuracy - confidence|


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of one run from its per-example top-class confidences and 0/1 correctness
    (equal-width bins, as :func:`balora.reports.measures.expected_calibration_error`)."""
    conf = np.asarray(conf, float).reshape(1, -1)
    return float(_ece_rows(conf, np.asarray(correct, float).reshape(1, -1), bins)[0])


def paired_rows_bootstrap(row_metric: Callable[..., np.ndarray], arrays_a: tuple, arrays_b: tuple, *,
                          n_boot: int = 2000, level: float = 0.95, resample_seeds: bool = True,
                          seed: int = 0) -> PairedDiff:
    """Paired bootstrap of ``metric(A) - metric(B)`` for metrics of several per-example arrays, with the same
    two-level (seed x example) draw as :func:`paired_bootstrap`.

    ``arrays_a`` / ``arrays_b``: tuples of (S, N) arrays (row = seed, column = test example, both methods alike);
    ``row_metric(*arrays)`` returns the (R,) metric of each row, e.g. ECE from confidences and correctness, or a
    token-weighted loss from per-example NLL sums and token counts.
    """
    a = [np.atleast_2d(np.asarray(x)) for x in arrays_a]
    b = [np.atleast_2d(np.asarray(x)) for x in arrays_b]
    shapes = {x.shape for x in a + b}
    if len(shapes) != 1:
        raise ValueError(f"paired_rows_bootstrap: arrays of different shapes {sorted(shapes)} (expected (seeds, N))")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    s, n = a[0].shape
    point = float(row_metric(*a).mean() - row_metric(*b).mean())
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        pick = rng.integers(0, s, s) if resample_seeds and s > 1 else np.arange(s)
        diffs[i] = (row_metric(*(x[pick][:, idx] for x in a)).mean()
                    - row_metric(*(x[pick][:, idx] for x in b)).mean())
    tail = (1 - level) / 2 * 100
    low, high = (float(v) for v in np.percentile(diffs, [tail, 100 - tail]))
    return PairedDiff(point, low, high, bool(low <= 0 <= high), level, n_boot, bool(resample_seeds and s > 1), s, n)


def paired_ece_bootstrap(conf_a: np.ndarray, correct_a: np.ndarray, conf_b: np.ndarray, correct_b: np.ndarray, *,
                         bins: int = 15, **kwargs) -> PairedDiff:
    """Paired bootstrap of ``ECE(A) - ECE(B)`` from (S, N) top-class confidences and 0/1 correctness."""
    return paired_rows_bootstrap(lambda conf, correct: _ece_rows(conf, correct, bins), (conf_a, correct_a),
                                 (conf_b, correct_b), **kwargs)


def paired_loss_bootstrap(nll_a: np.ndarray, tokens_a: np.ndarray, nll_b: np.ndarray, tokens_b: np.ndarray,
                          **kwargs) -> PairedDiff:
    """Paired bootstrap of the token-weighted held-out loss ``sum(nll) / sum(tokens)``, A - B, from (S, N)
    per-example NLL sums and response-token counts."""
    return paired_rows_bootstrap(lambda nll, tok: nll.sum(1) / np.maximum(tok.sum(1), 1), (nll_a, tokens_a),
                                 (nll_b, tokens_b), **kwargs)


def collapsed(pred: np.ndarray) -> bool:
    """True when a run predicts one class for every example."""
    pred = np.asarray(pred).reshape(-1)
    return bool(pred.size and (pred == pred[0]).all())


def majority_baseline(train_labels: np.ndarray, ref: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy and macro-F1 on ``ref`` of always predicting the training set's most frequent class."""
    train_labels = np.asarray(train_labels).reshape(-1)
    ref = np.asarray(ref).reshape(-1)
    majority = int(np.bincount(train_labels, minlength=num_classes or 0).argmax())
    pred = np.full_like(ref, majority)
    return {"class": majority, "accuracy": accuracy(pred, ref), "macro_f1": macro_f1(pred, ref, num_classes)}
