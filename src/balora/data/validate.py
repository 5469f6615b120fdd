"""Check NLU splits before anything is trained: every split, every row, named by file, row, column and value.

A bad label found by the loss (``IndexError: Target -1 is out of bounds``), by the optimiser (an all-NaN
adapter after a NaN regression target) or after training (a validation label the model has no output for)
costs a run and says nothing about where the data is wrong. :func:`read_label_space` reads the label column
of all splits once, decides classification vs regression, converts the labels to what the model needs and
reports every kind of problem with its location; :func:`check_nlu_splits` re-checks a label space given by
the caller (GLUE specs, the demo) against the data.

Rows are located with a :class:`~balora.data.files.RowLocator` per split (``"FILE: row N"``, 1-based data row,
header not counted; ``(line L)`` for JSONL) when the split was read from local files, else ``"split S: row N"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["LabelSpace", "check_nlu_splits", "read_label_space"]

_MAX_REPORTED = 5
Locate = Callable[[int], str]
_MISSING = object()


@dataclass
class LabelSpace:
    """What the labels of the training split say: classes (ids 0..n-1 and their names) or regression."""

    num_labels: int
    label_names: Optional[list[str]]
    regression: bool


def _locator(where: Optional[Mapping[str, Locate]], split: str) -> Locate:
    if where and split in where:
        return where[split]
    return lambda i: f"split {split!r}: row {i + 1}"


def _source(where: Optional[Mapping[str, Locate]], split: str) -> str:
    loc = (where or {}).get(split)
    return getattr(loc, "source", None) or f"split {split!r}"


def _raise(problems: list[str], what: str) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise ValueError(f"{what}:\n  " + "\n  ".join(problems[:_MAX_REPORTED]) + more)


def _parse(value: Any) -> tuple[str, Any]:
    """``(kind, value)`` with kind ``missing``, ``int``, ``float`` or ``str`` (numeric text is read as a number)."""
    if value is None:
        return "missing", None
    if isinstance(value, bool):
        return "int", int(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return ("missing", None) if math.isnan(value) else ("float", value)
    text = str(value).strip()
    if not text:
        return "missing", None
    try:
        return "int", int(text)
    except ValueError:
        pass
    try:
        return "float", float(text)
    except ValueError:
        return "str", str(value)


def _column(ds: Any, column: str) -> list:
    """The column as Python values, through Arrow (row-wise access through datasets is ~50x slower)."""
    if not len(ds):
        return []
    values = ds.with_format("arrow")[column]
    return values.to_pylist()


def check_not_empty(splits: Mapping[str, Any], where: Optional[Mapping[str, Locate]] = None) -> None:
    """A split without rows (e.g. a header-only CSV) is an error naming its source."""
    for split, ds in splits.items():
        if len(ds) == 0:
            raise ValueError(f"{_source(where, split)}: the {split} split has no data rows (expected at least one "
                             f"row after the header)")


def check_text_columns(splits: Mapping[str, Any], text_columns: Sequence[str],
                       where: Optional[Mapping[str, Locate]] = None) -> None:
    """Every text value is present and is text (a number or null where a sentence is expected is an error)."""
    for split, ds in splits.items():
        loc = _locator(where, split)
        problems = []
        for column in text_columns:
            for i, value in enumerate(_column(ds, column)):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    problems.append(f"{loc(i)}, column {column!r}: missing value (expected text)")
                elif not isinstance(value, str):
                    problems.append(f"{loc(i)}, column {column!r}: value {value!r} is a "
                                    f"{type(value).__name__} (expected text)")
        _raise(problems, f"{_source(where, split)}: bad text in the {split} split")


def _mode(train_kinds: set[str], is_float_column: bool, task_type: str) -> str:
    """``regression``, ``ids`` (integer class ids) or ``names`` (class names as text) from the training labels."""
    if task_type == "regression":
        return "regression"
    if task_type == "auto" and ("float" in train_kinds or is_float_column):
        return "regression"
    if "str" in train_kinds:
        return "names"
    return "ids"


def read_label_space(splits: Any, text_columns: Sequence[str], label_column: str = "label", task_type: str = "auto",
                     where: Optional[Mapping[str, Locate]] = None) -> tuple[Any, LabelSpace]:
    """Check and convert the labels of every split; returns the (converted) splits and the label space.

    Classification labels become ids ``0..n-1`` (integers as written; text labels in sorted name order),
    regression labels become floats. Raises ``ValueError`` naming file, row, column, value and what was
    expected for: a missing label, text where a number is expected, a non-finite number, a negative class
    id, an integer-valued class expected but a fraction found, and a validation/test label that is not
    among the training labels (the model would have no output for it).
    """
    check_not_empty(splits, where)
    check_text_columns(splits, text_columns, where)
    train = splits["train"]
    feature = train.features.get(label_column)
    names = getattr(feature, "names", None)
    if names is not None:  # a ClassLabel: the label space is known
        space = LabelSpace(len(names), list(names), False)
        check_nlu_splits(splits, [], label_column, space, where)
        return splits, space
    dtype = str(getattr(feature, "dtype", ""))
    parsed = {split: [_parse(v) for v in _column(ds, label_column)] for split, ds in splits.items()}
    for split, values in parsed.items():
        loc = _locator(where, split)
        _raise([f"{loc(i)}, column {label_column!r}: missing label" for i, (k, _) in enumerate(values)
                if k == "missing"],
               f"{_source(where, split)}: missing labels in the {split} split (every row needs a label; rows "
               "are never dropped silently)")
    train_kinds = {k for k, _ in parsed["train"]}
    mode = _mode(train_kinds, dtype.startswith(("float", "double")), task_type)
    converted: dict[str, list] = {}
    if mode == "regression":
        for split, values in parsed.items():
            loc = _locator(where, split)
            problems = []
            raw = _column(splits[split], label_column)
            for i, (kind, value) in enumerate(values):
                value = raw[i] if kind == "str" or not math.isfinite(float(value)) else value  # as written
                if kind == "str":
                    problems.append(f"{loc(i)}, column {label_column!r}: value {value!r} (expected a number: "
                                    "the task is regression)")
                elif not math.isfinite(float(values[i][1])):
                    problems.append(f"{loc(i)}, column {label_column!r}: value {value!r} (expected a finite number)")
            _raise(problems, f"{_source(where, split)}: bad regression labels in the {split} split")
            converted[split] = [float(v) for _, v in values]
        space = LabelSpace(1, None, True)
    elif mode == "ids":
        train_values = parsed["train"]
        loc = _locator(where, "train")
        problems = []
        for i, (kind, value) in enumerate(train_values):
            if kind == "float" and not float(value).is_integer():  # also inf
                problems.append(f"{loc(i)}, column {label_column!r}: value {value!r} (expected an integer class "
                                "id >= 0 or a class name; use data.task_type regression for numeric targets)")
            elif int(value) < 0:
                problems.append(f"{loc(i)}, column {label_column!r}: value {value!r} (expected a class id >= 0)")
        _raise(problems, f"{_source(where, 'train')}: bad class labels in the train split")
        n = max(int(v) for _, v in train_values) + 1
        space = LabelSpace(n, [str(i) for i in range(n)], False)
        for split, values in parsed.items():
            converted[split] = [int(v) if k != "str" and float(v).is_integer() else v for k, v in values]
        check_nlu_splits({s: None for s in splits}, [], label_column, space, where, labels=converted)
    else:
        label_names = sorted({str(v) for _, v in parsed["train"]})
        mapping = {name: i for i, name in enumerate(label_names)}
        for split, values in parsed.items():
            loc = _locator(where, split)
            raw = _column(splits[split], label_column)
            _raise([f"{loc(i)}, column {label_column!r}: label {str(v)!r} is not among the training labels "
                    f"{label_names}" for i, v in enumerate(raw) if str(v) not in mapping],
                   f"{_source(where, split)}: unknown labels in the {split} split")
            converted[split] = [mapping[str(v)] for v in raw]
        space = LabelSpace(len(label_names), label_names, False)
    out = {}
    for split, ds in splits.items():
        # A new column: writing ints or floats into an existing text column would keep its text type.
        out[split] = ds.remove_columns(label_column).add_column(label_column, converted[split])
    return splits.__class__(out), space


def check_nlu_splits(splits: Mapping[str, Any], text_columns: Sequence[str], label_column: str, space: LabelSpace,
                     where: Optional[Mapping[str, Locate]] = None, labels: Optional[Mapping[str, list]] = None) -> None:
    """Check every split against a known label space: class ids in ``0..num_labels-1``, or finite numbers.

    ``labels`` gives the label values per split when they are not (yet) in ``splits``.
    """
    if labels is None:
        check_not_empty(splits, where)
        check_text_columns(splits, text_columns, where)
    n = space.num_labels
    for split in splits:
        values = labels[split] if labels is not None else _column(splits[split], label_column)
        loc = _locator(where, split)
        problems = []
        for i, value in enumerate(values):
            kind, v = _parse(value)
            if kind == "missing":
                problems.append(f"{loc(i)}, column {label_column!r}: missing label")
            elif space.regression:
                if kind == "str" or not math.isfinite(float(v)):
                    problems.append(f"{loc(i)}, column {label_column!r}: value {value!r} (expected a finite number)")
            elif kind != "int" or not 0 <= v < n:
                shown = f"{space.label_names}" if space.label_names and space.label_names != [str(j) for j in range(n)] else ""
                problems.append(f"{loc(i)}, column {label_column!r}: label {value!r} is not a class id in 0..{n - 1}"
                                + (f" {shown}" if shown else "") + f" (the model has {n} outputs"
                                + (", the training labels decide them" if split != "train" else "") + ")")
        _raise(problems, f"{_source(where, split)}: bad labels in the {split} split")
