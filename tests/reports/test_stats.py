"""Paired bootstrap of a metric difference, collapse flag and majority baseline (balora.reports.stats)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from balora.reports.stats import collapsed, macro_f1, majority_baseline, paired_bootstrap


def test_hand_checkable_cases():
    ref = np.array([0, 1, 2, 0, 1, 2])
    right, wrong = ref.copy(), (ref + 1) % 3
    d = paired_bootstrap(np.stack([right, right]), np.stack([wrong, wrong]), ref, n_boot=200)
    assert (d.diff, d.low, d.high, d.within_noise) == (1.0, 1.0, 1.0, False)  # A always right, B always wrong
    same = paired_bootstrap(right, right, ref, "macro_f1", n_boot=200)
    assert (same.diff, same.low, same.high, same.within_noise) == (0.0, 0.0, 0.0, True)
    # A right on 4 of 6, B on 2 of 6: point difference 1/3 exactly.
    a = np.array([0, 1, 2, 0, 0, 0])
    b = np.array([0, 1, 0, 1, 0, 0])
    assert paired_bootstrap(a, b, ref, n_boot=50).diff == pytest.approx(4 / 6 - 2 / 6)


def test_interval_matches_the_normal_approximation_of_paired_differences():
    rng = np.random.default_rng(0)
    n = 4000
    ref = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.70, ref, (ref + 1) % 3)
    b = np.where(rng.random(n) < 0.67, ref, (ref + 2) % 3)
    d = paired_bootstrap(a, b, ref, n_boot=2000, seed=1)
    per_example = (a == ref).astype(float) - (b == ref)
    half = 1.96 * per_example.std(ddof=1) / np.sqrt(n)
    assert d.diff == pytest.approx(per_example.mean())
    assert d.low == pytest.approx(per_example.mean() - half, abs=0.004)
    assert d.high == pytest.approx(per_example.mean() + half, abs=0.004)


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(0)
    n = 1000
    ref = rng.integers(0, 2, n)
    # B is fixed; A is much better on one seed and worse on another: seeds, not examples, carry the doubt.
    b = np.stack([np.where(rng.random(n) < 0.7, ref, 1 - ref) for _ in range(3)])
    a = np.stack([np.where(rng.random(n) < p, ref, 1 - ref) for p in (0.9, 0.6, 0.75)])
    examples_only = paired_bootstrap(a, b, ref, n_boot=500, resample_seeds=False)
    both = paired_bootstrap(a, b, ref, n_boot=500, resample_seeds=True)
    assert both.high - both.low > 2 * (examples_only.high - examples_only.low)


def test_macro_f1_matches_sklearn_including_absent_classes():
    rng = np.random.default_rng(3)
    for _ in range(5):
        ref = rng.integers(0, 4, 50)
        pred = rng.integers(0, 3, 50)  # class 3 never predicted
        assert macro_f1(pred, ref) == pytest.approx(f1_score(ref, pred, average="macro"))
    assert macro_f1(np.zeros(10, int), np.r_[np.zeros(5, int), np.ones(5, int)]) == pytest.approx(
        f1_score(np.r_[np.zeros(5, int), np.ones(5, int)], np.zeros(10, int), average="macro"))


def test_collapse_and_majority_baseline():
    assert collapsed(np.array([2, 2, 2])) and not collapsed(np.array([2, 2, 1]))
    base = majority_baseline(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 2]), num_classes=3)
    assert base["class"] == 1 and base["accuracy"] == 0.25
    assert base["macro_f1"] == pytest.approx(f1_score([1, 0, 0, 2], [1, 1, 1, 1], average="macro"))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((3, 5)), np.zeros(5))


def test_paired_ece_bootstrap_matches_per_run_ece():
    from balora.reports.measures import expected_calibration_error
    from balora.reports.stats import _ece_rows, paired_ece_bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    eces, confs, corrects = [], [], []
    for sharp in (0.5, 3.0):  # two "methods": a flat and an over-confident one
        logits = rng.normal(size=(2, 200, 3)) * sharp
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        eces.append(np.mean([expected_calibration_error(p, labels) for p in probs]))
        confs.append(probs.max(-1))
        corrects.append(probs.argmax(-1) == labels)
        assert np.allclose(_ece_rows(probs.max(-1), (probs.argmax(-1) == labels).astype(float)),
                           [expected_calibration_error(p, labels) for p in probs])
    d = paired_ece_bootstrap(confs[0], corrects[0], confs[1], corrects[1], n_boot=300)
    assert abs(d.diff - (eces[0] - eces[1])) < 1e-12
    assert d.low <= d.diff <= d.high and d.n_seeds == 2 and d.n_examples == 200
    assert not d.within_noise and d.diff < 0  # random-label logits: the sharper method is far worse calibrated
    same = paired_ece_bootstrap(confs[0], corrects[0], confs[0], corrects[0], n_boot=50)
    assert same.diff == 0 and same.low == 0 == same.high
