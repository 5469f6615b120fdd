"""Row orders of tokenised datasets."""

from __future__ import annotations

from typing import Any

import numpy as np


def length_order(dataset: Any, longest_first: bool = False) -> np.ndarray:
    """Row indices of a tokenised ``dataset`` sorted by ``input_ids`` length (stable): batches taken in this order
    pad little. ``np.argsort(order)`` puts results back in row order."""
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths if longest_first else lengths, kind="stable")

