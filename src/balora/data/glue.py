"""GLUE: one declarative spec per task, and a loader for the Hub, the original TSVs or parquet files.

All three sources give the same columns as the Hub's ``nyu-mll/glue``: the task's text columns,
``label`` (int class id with :class:`datasets.ClassLabel` names, or float32 for STS-B) and ``idx``.
Test splits carry ``label == -1`` (:data:`UNLABELED`); they are kept, and :func:`is_labeled` tells them
apart. Label strings in the TSVs are mapped through the spec; an unknown one is an error naming the
file, row and value.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from balora.data.files import read_frame, require_columns

__all__ = ["GLUE_TASKS", "TABLE_ORDER", "UNLABELED", "GlueTaskSpec", "get_task", "is_labeled", "load_glue"]

UNLABELED = -1
DEFAULT_HUB_NAME = "nyu-mll/glue"
_BINARY = {"0": 0, "1": 1}


@dataclass(frozen=True)
class GlueTaskSpec:
    """What a GLUE task looks like, in the Hub layout and in the original GLUE TSV files."""

    name: str = field(metadata={"help": "Hub config name (cola, sst2, ...)."})
    text_columns: tuple[str, ...] = field(metadata={"help": "Input text columns (one or a pair)."})
    num_labels: int = field(metadata={"help": "Number of classes; 1 means regression (STS-B)."})
    label_names: tuple[str, ...] = field(metadata={"help": "Class names by id (empty for regression)."})
    metrics: tuple[str, ...] = field(metadata={"help": "Metric names from compute_glue_metrics."})
    validation_splits: tuple[str, ...] = field(metadata={"help": "Hub split name(s) used for evaluation."})
    tsv_dir: str = field(metadata={"help": "Folder name in the original glue_data layout."})
    tsv_splits: dict[str, str] = field(metadata={"help": "Hub split name -> TSV file stem."})
    tsv_text_columns: tuple[str, ...] = field(metadata={"help": "TSV columns holding the texts (same order)."})
    tsv_label_column: str = field(metadata={"help": "TSV column holding the label (absent in test files)."})
    tsv_label_map: dict[str, int] | None = field(
        default=None, metadata={"help": "TSV label string -> class id; None parses floats (regression)."}
    )
    tsv_headerless: dict[str, tuple[str, ...]] = field(
        default_factory=dict, metadata={"help": "TSV file stem -> column names for files without a header."}
    )
    tsv_encoding: str = field(default="utf-8", metadata={"help": "TSV encoding (utf-8-sig for BOM files)."})

    @property
    def label(self) -> str:
        """The task's name as the GLUE release and the papers' tables write it (CoLA, SST-2, STS-B, ...)."""
        return self.tsv_dir

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a single float output)."""
        return self.num_labels == 1

    def features(self) -> datasets.Features:
        """The ``datasets`` features of a loaded split."""
        feats = {c: datasets.Value("string") for c in self.text_columns}
        feats["label"] = (
            datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.label_names))
        )
        feats["idx"] = datasets.Value("int32")
        return datasets.Features(feats)


_ENT2 = {"entailment": 0, "not_entailment": 1}
_COLA_COLS = ("source", "label", "original_label", "sentence")

GLUE_TASKS: dict[str, GlueTaskSpec] = {
    s.name: s
    for s in [
        GlueTaskSpec("cola", ("sentence",), 2, ("unacceptable", "acceptable"), ("matthews_correlation",),
                     ("validation",), "CoLA", {"train": "train", "validation": "dev", "test": "test"},
                     ("sentence",), "label", _BINARY, {"train": _COLA_COLS, "dev": _COLA_COLS}),
        GlueTaskSpec("sst2", ("sentence",), 2, ("negative", "positive"), ("accuracy",), ("validation",),
                     "SST-2", {"train": "train", "validation": "dev", "test": "test"},
                     ("sentence",), "label", _BINARY),
        GlueTaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"),
                     ("accuracy", "f1"), ("validation",), "MRPC",
                     {"train": "train", "validation": "dev", "test": "test"},
                     ("#1 String", "#2 String"), "Quality", _BINARY, tsv_encoding="utf-8-sig"),
        GlueTaskSpec("qqp", ("question1", "question2"), 2, ("not_duplicate", "duplicate"), ("accuracy", "f1"),
                     ("validation",), "QQP", {"train": "train", "validation": "dev", "test": "test"},
                     ("question1", "question2"), "is_duplicate", _BINARY),
        GlueTaskSpec("stsb", ("sentence1", "sentence2"), 1, (), ("pearson", "spearmanr"), ("validation",),
                     "STS-B", {"train": "train", "validation": "dev", "test": "test"},
                     ("sentence1", "sentence2"), "score", None),
        GlueTaskSpec("mnli", ("premise", "hypothesis"), 3, ("entailment", "neutral", "contradiction"),
                     ("accuracy",), ("validation_matched", "validation_mismatched"), "MNLI",
                     {"train": "train", "validation_matched": "dev_matched",
                      "validation_mismatched": "dev_mismatched", "test_matched": "test_matched",
                      "test_mismatched": "test_mismatched"},
                     ("sentence1", "sentence2"), "gold_label",
                     {"entailment": 0, "neutral": 1, "contradiction": 2}),
        GlueTaskSpec("qnli", ("question", "sentence"), 2, ("entailment", "not_entailment"), ("accuracy",),
                     ("validation",), "QNLI", {"train": "train", "validation": "dev", "test": "test"},
                     ("question", "sentence"), "label", _ENT2),
        GlueTaskSpec("rte", ("sentence1", "sentence2"), 2, ("entailment", "not_entailment"), ("accuracy",),
                     ("validation",), "RTE", {"train": "train", "validation": "dev", "test": "test"},
                     ("sentence1", "sentence2"), "label", _ENT2),
        GlueTaskSpec("wnli", ("sentence1", "sentence2"), 2, ("not_entailment", "entailment"), ("accuracy",),
                     ("validation",), "WNLI", {"train": "train", "validation": "dev", "test": "test"},
                     ("sentence1", "sentence2"), "label", _BINARY),
    ]
}

# The paper's column order (Table 2).
TABLE_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb", "wnli")


def get_task(task: str) -> GlueTaskSpec:
    """The spec of ``task`` (case-insensitive; ``sst-2``/``sts-b`` accepted)."""
    key = task.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def is_labeled(ds: datasets.Dataset) -> bool:
    """False for a split whose labels are all :data:`UNLABELED` (-1), such as GLUE test sets."""
    labels = np.asarray(ds["label"])
    return bool(len(labels)) and not bool(np.all(labels == UNLABELED))


def _finish(frame: pd.DataFrame, spec: GlueTaskSpec, split: str) -> datasets.Dataset:
    if "idx" not in frame.columns:
        frame = frame.assign(idx=np.arange(len(frame), dtype=np.int32))
    frame = frame[[*spec.text_columns, "label", "idx"]]
    return datasets.Dataset.from_pandas(
        frame, features=spec.features(), preserve_index=False, split=datasets.NamedSplit(split)
    )


def _map_labels(values: pd.Series, spec: GlueTaskSpec, source: Path) -> np.ndarray:
    """Map TSV label strings to ids (or floats); any unknown value is an error naming the row."""
    text = values.astype(str).str.strip()
    if spec.tsv_label_map is None:
        mapped = pd.to_numeric(text, errors="coerce").astype(np.float32)
        expected = "a number"
    else:
        mapped = text.map(spec.tsv_label_map)
        expected = f"one of {sorted(spec.tsv_label_map)}"
    bad = np.flatnonzero(mapped.isna().to_numpy() | values.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{source}: row {i + 1}: column {spec.tsv_label_column!r} has unknown label {values.iloc[i]!r} "
            f"(expected {expected})"
        )
    return mapped.to_numpy(dtype=np.float32 if spec.is_regression else np.int64)


def _load_tsv_split(path: Path, spec: GlueTaskSpec, split: str) -> datasets.Dataset:
    names = spec.tsv_headerless.get(path.stem)
    frame, _ = read_frame(
        path, format="tsv", quoting=csv.QUOTE_NONE, has_header=names is None, column_names=names,
        encoding=spec.tsv_encoding, dtype=str,
    )
    require_columns(frame, spec.tsv_text_columns, path)
    for col in spec.tsv_text_columns:
        bad = frame.index[frame[col].isna().to_numpy()]
        if len(bad):
            raise ValueError(f"{path}: row {int(bad[0]) + 1}: column {col!r} is missing a value (expected text)")
    out = pd.DataFrame(dict(zip(spec.text_columns, (frame[c] for c in spec.tsv_text_columns))))
    if spec.tsv_label_column in frame.columns:
        out["label"] = _map_labels(frame[spec.tsv_label_column], spec, path)
    else:  # GLUE test files have no label column: keep the rows, mark them unlabeled
        out["label"] = np.full(len(frame), UNLABELED, dtype=np.float32 if spec.is_regression else np.int64)
    return _finish(out, spec, split)


def _check_ids(frame: pd.DataFrame, spec: GlueTaskSpec, source: Path) -> None:
    if spec.is_regression:
        return
    allowed = set(range(spec.num_labels)) | {UNLABELED}
    labels = frame["label"].to_numpy()
    bad = np.flatnonzero(~np.isin(labels, list(allowed)))
    if len(bad):
        raise ValueError(
            f"{source}: row {int(bad[0]) + 1}: column 'label' has unknown label {labels[bad[0]]!r} "
            f"(expected one of {sorted(allowed)})"
        )


def _load_parquet_split(path: Path, spec: GlueTaskSpec, split: str) -> datasets.Dataset:
    frame, _ = read_frame(path, format="parquet")
    require_columns(frame, [*spec.text_columns, "label"], path)
    _check_ids(frame, spec, path)
    return _finish(frame, spec, split)


def _task_folder(root: Path, spec: GlueTaskSpec) -> Path:
    for cand in (root / spec.tsv_dir, root / spec.name, root / "glue_data" / spec.tsv_dir, root):
        if cand.is_dir() and (any(cand.glob("*.tsv")) or any(cand.glob("*.parquet"))):
            return cand
    raise FileNotFoundError(
        f"{root}: no GLUE files for {spec.name!r}; expected {root / spec.tsv_dir}/{{train,dev}}.tsv "
        f"(GLUE layout) or {root / spec.name}/{{train,validation}}.parquet (Hub parquet layout)"
    )


def _load_local(root: Path, spec: GlueTaskSpec) -> datasets.DatasetDict:
    folder = _task_folder(root, spec)
    splits: dict[str, datasets.Dataset] = {}
    parquet = sorted(folder.glob("*.parquet"))
    if parquet:
        for path in parquet:  # train.parquet or the Hub's train-00000-of-00001.parquet
            split = path.name.split("-")[0].removesuffix(".parquet")
            if split in splits:
                raise ValueError(f"{folder}: several parquet files for split {split!r}; shards are not supported")
            splits[split] = _load_parquet_split(path, spec, split)
    else:
        for split, stem in spec.tsv_splits.items():
            path = folder / f"{stem}.tsv"
            if path.is_file():
                splits[split] = _load_tsv_split(path, spec, split)
    if not splits:
        raise FileNotFoundError(f"{folder}: none of {[f'{s}.tsv' for s in spec.tsv_splits.values()]} found")
    order = list(spec.tsv_splits)
    return datasets.DatasetDict(
        {k: splits[k] for k in sorted(splits, key=lambda k: (order.index(k) if k in order else len(order), k))}
    )


def load_glue(task: str, source: str | os.PathLike = DEFAULT_HUB_NAME) -> datasets.DatasetDict:
    """Load every available split of a GLUE task.

    Args:
        task: ``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte`` or ``wnli``.
        source: a Hub dataset name (default ``nyu-mll/glue``, via ``datasets.load_dataset``), or a local
            folder: the original layout (``<source>/<TASK>/{train,dev,test}.tsv``, e.g. ``glue_data``)
            or the Hub parquet layout (``<source>/<task>/{train,validation,test}.parquet``). The task
            folder itself may also be given.

    Returns:
        A ``DatasetDict`` keyed by the Hub split names (``train``, ``validation``, ``test``; MNLI:
        ``validation_matched``/``validation_mismatched``), columns ``spec.text_columns + [label, idx]``.
        ``idx`` is the row position in the TSV file; the Hub's MRPC ``idx`` instead counts rows of
        ``msr_paraphrase_train.txt``, so only MRPC's ``idx`` differs between the two layouts.
    """
    spec = get_task(task)
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"GLUE source {path} is a file; expected a folder or a Hub dataset name")
        return _load_local(path, spec)
    text = os.fspath(source)
    if text.startswith((".", "/", "~")) or os.sep + os.sep in text or text.count("/") > 1:
        raise FileNotFoundError(f"GLUE source {text!r}: no such folder (and not a Hub dataset name)")
    loaded = datasets.load_dataset(text, spec.name)
    for split, ds in loaded.items():
        require_columns(ds, [*spec.text_columns, "label"], f"{text}/{spec.name}[{split}]")
    return loaded
