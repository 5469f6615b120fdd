"""GLUE-X-style out-of-domain (OOD) test sets, declared per data set and shaped like an in-domain task.

Each :class:`OODSpec` says where a set lives (files under a root folder, or a Hub name), which columns
hold the texts and the label, and how raw label values map to canonical names (``negative`` /
``positive`` for sentiment; ``entailment`` / ``neutral`` / ``contradiction`` / ``not_entailment`` for
NLI). :func:`load_ood` renames the texts to the in-domain task's text columns and maps the names onto
that task's label ids: a 3-class NLI set evaluated for RTE/QNLI folds neutral and contradiction into
``not_entailment``; a 2-class set cannot be mapped onto MNLI's three classes (an error). An unknown
raw label is an error naming the file, row and value. The only rows ever removed are those a spec
declares unlabeled (SNLI's ``-1`` = no annotator majority), and their count is logged.

The local sets (Amazon reviews by Blitzer et al., airline, MR, CR, SICK) are read from ``root``
(the data pack's ``ood`` folder, or ``$BALORA_OOD_ROOT``); IMDB, Yelp, SciTail, HANS and SNLI come
from the Hugging Face Hub. GLUE-X's QNLI OOD set (a NewsQA reformulation) is not available; SICK,
SciTail and HANS pairs are used for QNLI-style 2-class models instead, as (question, sentence).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from balora.data.files import read_frame, require_columns
from balora.data.glue import GlueTaskSpec, get_task

__all__ = ["OOD_FOR_TASK", "OOD_SETS", "OODSpec", "get_ood", "load_ood"]

logger = logging.getLogger(__name__)
_SENT = {"0": "negative", "1": "positive"}
_NLI3 = {"0": "entailment", "1": "neutral", "2": "contradiction"}


@dataclass(frozen=True)
class OODSpec:
    """Where an OOD set lives and how to read its texts and labels."""

    name: str = field(metadata={"help": "Name passed to load_ood."})
    default_task: str = field(metadata={"help": "In-domain GLUE task whose columns/labels it gets by default."})
    text_columns: tuple[str, ...] = field(metadata={"help": "Source columns holding the text(s)."})
    label_column: str = field(metadata={"help": "Source column holding the label."})
    label_map: dict[str, str] = field(metadata={"help": "Raw label (as a string) -> canonical label name."})
    files: tuple[str, ...] = field(default=(), metadata={"help": "File paths under root, concatenated."})
    has_header: bool = field(default=True, metadata={"help": "Whether the files have a header line."})
    column_names: tuple[str, ...] | None = field(default=None, metadata={"help": "Names for header-less files."})
    quoting: int | None = field(default=None, metadata={"help": "csv.QUOTE_* mode (None = quoted fields)."})
    hub_name: str | None = field(default=None, metadata={"help": "Hub dataset name when not a local file."})
    hub_config: str | None = field(default=None, metadata={"help": "Hub config name."})
    hub_split: str = field(default="test", metadata={"help": "Hub split to evaluate on."})
    unlabeled_values: tuple[str, ...] = field(
        default=(), metadata={"help": "Raw labels meaning 'no gold label'; such rows are removed and counted."}
    )

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.hub_name):
            raise ValueError(f"OODSpec {self.name!r}: give exactly one of files or hub_name")


def _amazon(domain: str) -> OODSpec:
    return OODSpec(f"amazon_{domain}" if domain != "airline" else "airline", "sst2", ("sentence",), "label", _SENT,
                   files=(f"amazon_blitzer/{domain}/test-labeled.tsv",))


OOD_SETS: dict[str, OODSpec] = {
    s.name: s
    for s in [
        *(_amazon(d) for d in ("books", "dvd", "electronics", "kitchen", "airline")),
        OODSpec("mr", "sst2", ("sentence",), "label", _SENT, files=("mr/train.tsv", "mr/dev.tsv"),
                has_header=False, column_names=("label", "sentence"), quoting=csv.QUOTE_NONE),
        OODSpec("cr", "sst2", ("sentence",), "label", _SENT, files=("cr/train.tsv", "cr/dev.tsv"),
                has_header=False, column_names=("label", "sentence"), quoting=csv.QUOTE_NONE),
        OODSpec("sick", "mnli", ("sentence_A", "sentence_B"), "entailment_label",
                {"ENTAILMENT": "entailment", "NEUTRAL": "neutral", "CONTRADICTION": "contradiction"},
                files=("sick/SICK.txt",), quoting=csv.QUOTE_NONE),
        OODSpec("imdb", "sst2", ("text",), "label", _SENT, hub_name="stanfordnlp/imdb"),
        OODSpec("yelp", "sst2", ("text",), "label", _SENT, hub_name="fancyzhx/yelp_polarity"),
        OODSpec("scitail", "rte", ("premise", "hypothesis"), "label",
                {"entails": "entailment", "neutral": "not_entailment"},
                hub_name="allenai/scitail", hub_config="tsv_format"),
        OODSpec("hans", "rte", ("premise", "hypothesis"), "label", {"0": "entailment", "1": "not_entailment"},
                hub_name="jhu-cogsci/hans", hub_split="validation"),
        OODSpec("snli", "mnli", ("premise", "hypothesis"), "label", _NLI3, hub_name="stanfordnlp/snli",
                unlabeled_values=("-1",)),
    ]
}

OOD_FOR_TASK: dict[str, list[str]] = {
    "sst2": ["amazon_books", "amazon_dvd", "amazon_electronics", "amazon_kitchen", "airline", "mr", "cr",
             "imdb", "yelp"],
    "rte": ["sick", "scitail", "hans"],
    "mnli": ["sick", "snli"],
    "qnli": ["sick", "scitail", "hans"],
}


def get_ood(name: str) -> OODSpec:
    """The spec of OOD set ``name``."""
    if name not in OOD_SETS:
        raise ValueError(f"unknown OOD set {name!r}; expected one of {sorted(OOD_SETS)}")
    return OOD_SETS[name]


def _label_ids(spec: OODSpec, task: GlueTaskSpec) -> dict[str, int]:
    """Raw label -> the task's class id, checking every canonical name has a counterpart."""
    names = list(task.label_names)
    out = {}
    for raw, canon in spec.label_map.items():
        if canon in names:
            out[raw] = names.index(canon)
        elif canon in ("neutral", "contradiction") and "not_entailment" in names:
            out[raw] = names.index("not_entailment")
        else:
            raise ValueError(
                f"OOD set {spec.name!r}: label {canon!r} has no counterpart among task {task.name!r} labels {names}"
            )
    return out


def _convert(frame: pd.DataFrame, spec: OODSpec, task: GlueTaskSpec, ids: dict[str, int], source: str) -> pd.DataFrame:
    require_columns(frame, [*spec.text_columns, spec.label_column], source)
    raw = frame[spec.label_column].astype(str).str.strip().to_numpy()
    keep = ~np.isin(raw, list(spec.unlabeled_values))
    labels = np.empty(len(raw), dtype=np.int64)
    for i in np.flatnonzero(keep):
        if raw[i] not in ids:
            raise ValueError(
                f"{source}: row {i + 1}: column {spec.label_column!r} has unknown label "
                f"{frame[spec.label_column].iloc[i]!r} (expected one of {sorted(ids)})"
            )
        labels[i] = ids[raw[i]]
    for col in spec.text_columns:
        bad = np.flatnonzero(frame[col].isna().to_numpy() & keep)
        if len(bad):
            raise ValueError(f"{source}: row {int(bad[0]) + 1}: column {col!r} is missing a value (expected text)")
    if not keep.all():
        logger.warning("%s: removed %d rows without a gold label (%s)", source, int((~keep).sum()), spec.unlabeled_values)
    out = {new: frame[old].to_numpy()[keep] for new, old in zip(task.text_columns, spec.text_columns)}
    out["label"] = labels[keep]
    return pd.DataFrame(out)


def load_ood(name: str, root: str | os.PathLike | None = None, *, task: str | None = None) -> datasets.Dataset:
    """Load OOD set ``name`` with the text columns and label ids of ``task`` (default: the set's own task).

    Args:
        name: a key of :data:`OOD_SETS` (see :data:`OOD_FOR_TASK` for the sets per in-domain task).
        root: folder holding the local sets (``amazon_blitzer/``, ``mr/``, ``cr/``, ``sick/``); default
            ``$BALORA_OOD_ROOT``. Not needed for Hub sets.
        task: in-domain GLUE task (``sst2``, ``rte``, ``qnli``, ``mnli``...) to shape the set for.

    Returns:
        A ``Dataset`` with columns ``task.text_columns + ["label"]`` (``ClassLabel`` of the task's names).
    """
    spec = get_ood(name)
    tspec = get_task(task or spec.default_task)
    if tspec.is_regression or len(tspec.text_columns) != len(spec.text_columns):
        raise ValueError(
            f"OOD set {name!r} has {len(spec.text_columns)} text column(s) and cannot be shaped for task "
            f"{tspec.name!r} ({tspec.text_columns}, num_labels={tspec.num_labels})"
        )
    ids = _label_ids(spec, tspec)
    frames = []
    if spec.files:
        root = root if root is not None else os.environ.get("BALORA_OOD_ROOT")
        if root is None:
            raise ValueError(f"OOD set {name!r} is read from local files {spec.files}: pass root=<folder> "
                             "or set BALORA_OOD_ROOT")
        for rel in spec.files:
            path = Path(root) / rel
            frame, _ = read_frame(path, format="tsv", quoting=spec.quoting, has_header=spec.has_header,
                                  column_names=spec.column_names, dtype=str)
            frames.append(_convert(frame, spec, tspec, ids, str(path)))
    else:
        ds = datasets.load_dataset(spec.hub_name, spec.hub_config, split=spec.hub_split)
        frames.append(_convert(ds.to_pandas(), spec, tspec, ids, f"{spec.hub_name}[{spec.hub_split}]"))
    frame = pd.concat(frames, ignore_index=True)
    features = datasets.Features(
        {**{c: datasets.Value("string") for c in tspec.text_columns},
         "label": datasets.ClassLabel(names=list(tspec.label_names))}
    )
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False,
                                        split=datasets.NamedSplit("test"))
