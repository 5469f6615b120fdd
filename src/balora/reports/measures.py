"""Numbers of the analyses that do not depend on a picture: calibration, per-class recall, feature geometry.

ECE is hand-written (scikit-learn has only the reliability curve, ``calibration_curve``, for binary problems);
silhouette and k-NN come from scikit-learn.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["softmax", "expected_calibration_error", "per_class_recall", "classification_scores", "knn_accuracy",
           "geometry_scores"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: sum over equal-width confidence bins of |accuracy - confidence| * share."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, pred = probs.max(-1), probs.argmax(-1)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        member = which == b
        if member.any():
            total += member.mean() * abs(correct[member].mean() - conf[member].mean())
    return float(total)


def per_class_recall(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[Optional[float]]:
    """Recall of every class (None for a class absent from ``labels``)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    out: list[Optional[float]] = []
    for c in range(num_classes):
        member = labels == c
        out.append(float((pred[member] == c).mean()) if member.any() else None)
    return out


def classification_scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """accuracy, macro_f1, per-class recall (recall_<c>), ece and whether every prediction is one class."""
    from .stats import collapsed, macro_f1

    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    pred = logits.argmax(-1)
    out: dict[str, Any] = {"accuracy": float((pred == labels).mean()), "macro_f1": macro_f1(pred, labels, num_classes),
                           "ece": expected_calibration_error(softmax(logits), labels), "collapsed": float(collapsed(pred))}
    for c, r in enumerate(per_class_recall(pred, labels, num_classes)):
        if r is not None:
            out[f"recall_{c}"] = r
    return out


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (Euclidean; each point's neighbours exclude itself; ties -> lowest class)."""
    from sklearn.neighbors import NearestNeighbors

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels).astype(np.int64)
    k = min(k, len(x) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    neighbours = []
    for i, row in enumerate(idx):  # drop the point itself (it may not come first when there are duplicates)
        row = [j for j in row if j != i][:k]
        neighbours.append(row)
    votes = np.stack([np.bincount(y[row], minlength=y.max() + 1) for row in neighbours])
    return float((votes.argmax(1) == y).mean())


def geometry_scores(features: np.ndarray, labels: np.ndarray, pred: Optional[np.ndarray], num_classes: int,
                    k: int = 5) -> dict[str, Any]:
    """silhouette (scikit-learn, Euclidean, true labels as clusters), k-NN accuracy and per-class recall."""
    from sklearn.metrics import silhouette_score

    y = np.asarray(labels).astype(np.int64)
    out: dict[str, Any] = {"silhouette": float(silhouette_score(features, y)) if len(set(y.tolist())) > 1 else None,
                           "knn_accuracy": knn_accuracy(features, y, k)}
    if pred is not None:
        out["recall"] = per_class_recall(pred, y, num_classes)
        out["accuracy"] = float((np.asarray(pred) == y).mean())
    return out
