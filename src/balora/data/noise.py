"""Injected label noise and class imbalance (analysis ``noise``): pure, seeded functions.

Every function takes integer labels and a seed and returns new labels or kept row indices, and hits its rate
*exactly* (``round(rate * n)`` rows, not a Bernoulli draw per row), so that a run's record states precisely
how much noise it was trained on:

- :func:`flip_symmetric`: ``round(rate * n)`` rows, chosen uniformly, each moved to a uniformly drawn *other*
  class (the usual "symmetric" noise; every wrong class equally likely).
- :func:`flip_class_dependent`: in every class ``c``, ``round(rate * n_c)`` rows moved to class ``(c + 1) mod
  C`` ("pair flipping", the standard class-dependent noise of Han et al. 2018 / Patrini et al. 2017: the
  confusion is concentrated on one neighbour, which a model can learn, unlike symmetric noise).
- :func:`imbalance_indices`: the rows kept when the minority class is subsampled to ``round(fraction * n_min)``
  rows (at least one); every other class is kept whole.

:func:`inject` applies them to a ``datasets.Dataset`` (imbalance first, then noise on what is left) and
returns a record of what it did (seed, counts, the achieved rates) that the run stores with its results.

:func:`corrupt_answers` is the same for worked answers of instruction data (``data.answer_noise``): exactly
``round(rate * n)`` rows get a different final number, with the worked text kept consistent with it.
numpy's ``default_rng`` is the only randomness: hand-written because no library offers exact-rate injection.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

import numpy as np

__all__ = ["NOISE_KINDS", "flip_symmetric", "flip_class_dependent", "imbalance_indices", "minority_class", "inject",
           "corrupt_answer", "corrupt_answers"]

NOISE_KINDS = ("symmetric", "class_dependent")


def _check(labels: Any, num_classes: int, rate: float, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be a 1-D array of class ids, got dtype {y.dtype} shape {y.shape}")
    if num_classes < 2:
        raise ValueError(f"{name}: needs at least 2 classes, got num_classes={num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: labels must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    if not 0 <= rate <= 1:
        raise ValueError(f"{name}: rate must be in [0, 1], got {rate}")
    return y.astype(np.int64)


def flip_symmetric(labels: Any, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Labels with exactly ``round(rate * n)`` rows moved to a uniformly drawn different class."""
    y = _check(labels, num_classes, rate, "flip_symmetric")
    rng = np.random.default_rng(seed)
    n_flip = int(round(rate * y.size))
    out = y.copy()
    rows = rng.choice(y.size, size=n_flip, replace=False)
    shift = rng.integers(1, num_classes, size=n_flip)  # 1..C-1: never the same class
    out[rows] = (y[rows] + shift) % num_classes
    return out


def flip_class_dependent(labels: Any, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Labels with exactly ``round(rate * n_c)`` rows of every class ``c`` moved to ``(c + 1) mod C``."""
    y = _check(labels, num_classes, rate, "flip_class_dependent")
    rng = np.random.default_rng(seed)
    out = y.copy()
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        rows = rng.choice(members, size=int(round(rate * members.size)), replace=False)
        out[rows] = (c + 1) % num_classes
    return out


def minority_class(labels: Any, num_classes: int) -> int:
    """The least frequent class present in ``labels`` (lowest id on ties)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = np.flatnonzero(counts > 0)
    if present.size == 0:
        raise ValueError("minority_class: no labels")
    return int(present[np.argmin(counts[present])])


def imbalance_indices(labels: Any, cls: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices keeping every row except all but ``max(1, round(fraction * n_cls))`` rows of ``cls``."""
    y = np.asarray(labels, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ValueError(f"imbalance_indices: fraction must be in (0, 1], got {fraction}")
    members = np.flatnonzero(y == cls)
    if members.size == 0:
        raise ValueError(f"imbalance_indices: class {cls} has no rows")
    keep_n = max(1, int(round(fraction * members.size)))
    kept = np.random.default_rng(seed).choice(members, size=keep_n, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(y != cls), kept]))


def inject(dataset: Any, *, num_classes: int, label_column: str = "label", noise: float = 0.0,
           noise_kind: str = "symmetric", imbalance_fraction: float = 1.0, imbalance_class: Optional[int] = None,
           seed: int = 0) -> tuple[Any, dict]:
    """Apply class imbalance, then label noise, to a ``datasets.Dataset``; returns ``(dataset, record)``.

    The record holds the settings, the seed, the class counts before and after, and the achieved noise
    rate (``flipped / n``) and minority ratio (``kept / original``), so a run states exactly what it saw.
    The input dataset is not modified. With ``noise == 0`` and ``imbalance_fraction == 1`` it is returned as is.
    """
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"inject: noise_kind must be one of {NOISE_KINDS}, got {noise_kind!r}")
    record: dict[str, Any] = {"noise": float(noise), "noise_kind": noise_kind, "imbalance_fraction": float(imbalance_fraction),
                              "seed": int(seed)}
    if noise == 0 and imbalance_fraction == 1:
        return dataset, record
    y = np.asarray(dataset.with_format("numpy")[label_column]).astype(np.int64)
    record["counts_before"] = np.bincount(y, minlength=num_classes).tolist()
    if imbalance_fraction != 1:
        cls = minority_class(y, num_classes) if imbalance_class is None else int(imbalance_class)
        keep = imbalance_indices(y, cls, imbalance_fraction, seed)
        before = int((y == cls).sum())
        dataset, y = dataset.select(keep), y[keep]
        record.update(imbalance_class=cls, minority_before=before, minority_after=int((y == cls).sum()),
                      minority_ratio=int((y == cls).sum()) / before)
    if noise:
        flip = flip_symmetric if noise_kind == "symmetric" else flip_class_dependent
        noisy = flip(y, noise, num_classes, seed + 1)  # a different stream from the imbalance draw
        record.update(flipped=int((noisy != y).sum()), noise_rate=float((noisy != y).mean()))
        column = dataset.features[label_column] if hasattr(dataset, "features") else None
        dataset = dataset.remove_columns(label_column).add_column(label_column, noisy.tolist())
        if column is not None:
            dataset = dataset.cast_column(label_column, column)
        y = noisy
    record["counts_after"] = np.bincount(y, minlength=num_classes).tolist()
    record["n_train"] = int(y.size)
    return dataset, record


# The final number of a worked answer: "... The answer is 42." (balora.data.arithmetic) or GSM8K's "#### 42".
_FINAL = re.compile(r"(The answer is:?\s*|####\s*)(-?\d[\d,]*)(\.?\s*)$")


def corrupt_answer(answer: str, offset: int, where: str = "answer") -> str:
    """``answer`` with its final number N replaced by ``N + offset`` (``N + |offset|`` if that is negative), both in
    the closing ``The answer is N.`` / ``#### N`` and in the last ``= N`` of the worked steps (the last step becomes
    wrong, so the text still agrees with its answer)."""
    match = _FINAL.search(answer)
    if match is None or offset == 0:
        raise ValueError(f"{where}: no final integer answer ('The answer is N.' or '#### N') to corrupt in {answer!r}"
                         if match is None else "corrupt_answer: offset must not be 0")
    gold = int(match[2].replace(",", ""))
    wrong = gold + offset if gold + offset >= 0 else gold + abs(offset)
    work = answer[:match.start()]
    steps = list(re.finditer(rf"=\s*{re.escape(match[2])}\b", work))
    if steps:
        last = steps[-1]
        work = f"{work[:last.start()]}= {wrong}{work[last.end():]}"
    return f"{work}{match[1]}{wrong}{match[3]}"


def corrupt_answers(dataset: Any, rate: float, seed: int, column: str = "answer") -> tuple[Any, dict]:
    """A ``datasets.Dataset`` whose ``column`` has exactly ``round(rate * n)`` rows made wrong by
    :func:`corrupt_answer` (rows drawn uniformly, offsets uniform in -10..-1, 1..10), and the record of it (rate,
    seed, counts, a SHA-256 of the corrupted row numbers). ``rate == 0`` returns the dataset unchanged."""
    if not 0 <= rate <= 1:
        raise ValueError(f"corrupt_answers: rate must be in [0, 1], got {rate}")
    record: dict[str, Any] = {"answer_noise": float(rate), "seed": int(seed), "n_train": len(dataset)}
    if rate == 0:
        return dataset, {**record, "corrupted": 0}
    if column not in dataset.column_names:
        raise ValueError(f"data.answer_noise needs an {column!r} column of worked answers; the training data has "
                         f"{dataset.column_names}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=int(round(rate * len(dataset))), replace=False))
    offsets = rng.integers(1, 11, size=rows.size) * rng.choice([-1, 1], size=rows.size)
    answers = list(dataset[column])
    for row, offset in zip(rows.tolist(), offsets.tolist()):
        answers[row] = corrupt_answer(answers[row], offset, f"training data row {row + 1}, field {column!r}")
    out = dataset.remove_columns(column).add_column(column, answers)
    digest = hashlib.sha256(",".join(map(str, rows.tolist())).encode()).hexdigest()
    return out, {**record, "corrupted": int(rows.size), "noise_rate": rows.size / len(dataset), "rows_sha256": digest}
