"""GLUE metrics (scikit-learn / scipy) and a Trainer-ready ``compute_metrics``.

Metric names follow the ``evaluate`` GLUE metric: ``matthews_correlation`` (CoLA), ``accuracy`` and
``f1`` (MRPC, QQP; F1 of the positive class 1), ``pearson`` and ``spearmanr`` (STS-B), ``accuracy``
(the rest). MNLI is one task here; callers report its matched and mismatched validation accuracies
separately.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from balora.data.glue import UNLABELED, get_task

__all__ = [
    "classification_report_dict",
    "combined_score",
    "compute_glue_metrics",
    "main_metric",
    "make_compute_metrics",
]

_MAIN = {"cola": "matthews_correlation", "stsb": "pearson"}


def main_metric(task: str) -> str:
    """The headline metric of ``task`` (CoLA: MCC, STS-B: Pearson, else accuracy, as in the paper's tables)."""
    return _MAIN.get(get_task(task).name, "accuracy")


def combined_score(metrics: Mapping[str, float]) -> float:
    """Mean of the task's metric values (``transformers``' run_glue ``combined_score``), e.g. MRPC (acc + F1)/2."""
    if not metrics:
        raise ValueError("combined_score: no metric values given")
    return float(np.mean([float(v) for v in metrics.values()]))


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels/scores, got shape {arr.shape} "
                         "(take argmax over logits first, or use make_compute_metrics)")
    return arr


def compute_glue_metrics(task: str, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> dict[str, float]:
    """Compute the GLUE metrics of ``task`` from predicted labels (or scores for STS-B) and references.

    Raises:
        ValueError: lengths differ, the input is empty, or references hold the unlabeled value -1.
    """
    spec = get_task(task)
    preds = _as_1d("predictions", predictions)
    refs = _as_1d("references", references)
    if len(preds) != len(refs) or len(refs) == 0:
        raise ValueError(f"compute_glue_metrics({task!r}): {len(preds)} predictions for {len(refs)} references")
    if spec.is_regression:
        preds, refs = preds.astype(np.float64), refs.astype(np.float64)
        return {"pearson": float(stats.pearsonr(preds, refs)[0]), "spearmanr": float(stats.spearmanr(preds, refs)[0])}
    if np.any(refs == UNLABELED):
        raise ValueError(f"compute_glue_metrics({task!r}): references contain {UNLABELED} (an unlabeled test split)")
    preds, refs = preds.astype(np.int64), refs.astype(np.int64)
    if spec.name == "cola":
        return {"matthews_correlation": float(skm.matthews_corrcoef(refs, preds))}
    out = {"accuracy": float(skm.accuracy_score(refs, preds))}
    if spec.name in ("mrpc", "qqp"):
        out["f1"] = float(skm.f1_score(refs, preds, pos_label=1, zero_division=0))
    return out


def classification_report_dict(predictions: Sequence | np.ndarray, references: Sequence | np.ndarray,
                               num_labels: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the confusion matrix (rows = true class, columns = predicted).

    Every class ``0..num_labels-1`` gets an entry even if absent from both arrays (recall 0).
    """
    preds = _as_1d("predictions", predictions).astype(np.int64)
    refs = _as_1d("references", references).astype(np.int64)
    if len(preds) != len(refs) or len(refs) == 0:
        raise ValueError(f"classification_report_dict: {len(preds)} predictions for {len(refs)} references")
    labels = list(range(num_labels))
    outside = sorted(set(np.unique(np.concatenate([preds, refs])).tolist()) - set(labels))
    if outside:
        raise ValueError(f"classification_report_dict: labels {outside} outside 0..{num_labels - 1}")
    recall = skm.recall_score(refs, preds, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(refs, preds)),
        "macro_f1": float(skm.f1_score(refs, preds, labels=labels, average="macro", zero_division=0)),
        "per_class_recall": [float(r) for r in recall],
        "confusion_matrix": skm.confusion_matrix(refs, preds, labels=labels).tolist(),
    }


def make_compute_metrics(task: str) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer``: EvalPrediction -> GLUE metrics.

    Logits are reduced with argmax for classification and squeezed for regression (STS-B); when the
    model returns a tuple, its first element is taken as the logits.
    """
    spec = get_task(task)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = np.asarray(logits)
        preds = np.squeeze(logits, axis=-1) if spec.is_regression and logits.ndim == 2 else logits
        if not spec.is_regression:
            preds = np.argmax(logits, axis=-1)
        return compute_glue_metrics(spec.name, preds, labels)

    return compute_metrics
