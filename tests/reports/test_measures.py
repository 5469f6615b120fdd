"""Geometry and calibration numbers against scikit-learn / by hand on fixed features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from balora.reports.measures import classification_scores, expected_calibration_error, geometry_scores, knn_accuracy


def features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 4)) + y[:, None] * np.array([1.5, 0, 0, 0])
    return x, y


def test_knn_and_silhouette_match_scikit_learn():
    x, y = features()
    loo = cross_val_predict(KNeighborsClassifier(n_neighbors=5), x, y, cv=LeaveOneOut())
    assert knn_accuracy(x, y, k=5) == pytest.approx((loo == y).mean())
    pred = np.where(np.arange(60) % 7 == 0, 0, y)
    scores = geometry_scores(x, y, pred, 3)
    assert scores["silhouette"] == pytest.approx(silhouette_score(x, y))
    assert scores["recall"] == pytest.approx([1.0, ((pred == 1) & (y == 1)).sum() / 20, ((pred == 2) & (y == 2)).sum() / 20])


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins (15 equal): 0.9 -> acc 0.5 vs 0.9 (share 0.5); 0.6 -> 1 vs 0.6 (0.25); 0.7 -> 1 vs 0.7 (0.25)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)
    s = classification_scores(np.log(probs), labels, 2)
    assert s["accuracy"] == 0.75 and s["recall_1"] == 0.5 and s["collapsed"] == 0.0
    assert classification_scores(np.array([[1.0, 0.0]] * 4), labels, 2)["collapsed"] == 1.0
