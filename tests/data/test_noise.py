"""Injected label noise and class imbalance hit their rates exactly, are seeded, and touch only what they say."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from balora.data.noise import flip_class_dependent, flip_symmetric, imbalance_indices, inject, minority_class

LABELS = np.repeat(np.arange(3), [50, 30, 20])  # n = 100, class 2 is the minority


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.4])
def test_symmetric_flips_exactly_the_rate_to_other_classes(rate):
    noisy = flip_symmetric(LABELS, rate, 3, seed=7)
    assert (noisy != LABELS).sum() == round(rate * LABELS.size)
    assert noisy.min() >= 0 and noisy.max() <= 2
    assert np.array_equal(noisy, flip_symmetric(LABELS, rate, 3, seed=7))  # seeded
    if rate:
        assert not np.array_equal(noisy, flip_symmetric(LABELS, rate, 3, seed=8))


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.4])
def test_class_dependent_flips_the_rate_within_each_class_to_the_next_class(rate):
    noisy = flip_class_dependent(LABELS, rate, 3, seed=0)
    for c, n_c in enumerate((50, 30, 20)):
        moved = (LABELS == c) & (noisy != LABELS)
        assert moved.sum() == round(rate * n_c)
        assert set(noisy[moved]) <= {(c + 1) % 3}


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.05])
def test_imbalance_keeps_exactly_the_fraction_of_the_minority_only(fraction):
    assert minority_class(LABELS, 3) == 2
    keep = imbalance_indices(LABELS, 2, fraction, seed=3)
    kept = LABELS[keep]
    assert (kept == 2).sum() == max(1, round(fraction * 20))
    assert (kept == 0).sum() == 50 and (kept == 1).sum() == 30
    assert np.all(np.diff(keep) > 0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="rate must be in"):
        flip_symmetric(LABELS, 1.5, 3, 0)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        flip_symmetric(LABELS, 0.1, 2, 0)
    with pytest.raises(ValueError, match="fraction"):
        imbalance_indices(LABELS, 2, 0.0, 0)


def test_inject_records_what_it_did_and_leaves_the_input_alone():
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(100)], "label": LABELS.tolist()})
    out, record = inject(ds, num_classes=3, noise=0.2, noise_kind="symmetric", imbalance_fraction=0.5, seed=1)
    assert ds["label"] == LABELS.tolist()
    assert record["minority_before"] == 20 and record["minority_after"] == 10 and record["minority_ratio"] == 0.5
    assert record["n_train"] == len(out) == 90
    assert record["flipped"] == round(0.2 * 90) and record["noise_rate"] == pytest.approx(18 / 90)
    texts = out["text"]  # the rows are the kept ones, in their order, with only labels changed
    assert len(set(texts)) == 90
    same, _ = inject(ds, num_classes=3, noise=0.0)
    assert same is ds
