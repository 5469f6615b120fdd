"""Instruction-tuning data: response-only labels, counted truncation, optional packing.

The paper fine-tunes on MetaMathQA, CodeFeedback and WizardLM-Evol-Instruct with the loss on the
response tokens only. :func:`build_instruct_dataset` loads a local file or a Hub dataset, normalises
each record into chat messages (:mod:`balora.data.templates`), tokenises it and sets ``labels = -100``
on every system/user/prompt token (and, in the collator, on padding); assistant tokens and the
end-of-turn/EOS that closes them are trained. In multi-turn conversations **every assistant turn is
trained**.

Templates: the tokenizer's chat template when it has one, else a plain instruction/response template; how the
prompt/response boundary is found is described in :mod:`balora.data.chat_encoding`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from balora.data import arithmetic
from balora.data.chat_encoding import IGNORE_INDEX, encode_messages, encode_prompt, has_chat_template
from balora.data.files import SUPPORTED_FORMATS, load_table
from balora.data.templates import (
    EmptyResponseError,
    Message,
    check_format,
    detect_format,
    normalize_record,
    plain_segments,
)

logger = logging.getLogger(__name__)

TRUNCATION_POLICIES = ("truncate", "drop", "error")


@dataclass
class InstructStats:
    """What :func:`build_instruct_dataset` did; ``n_truncated``/``n_response_lost``/``n_dropped`` are never silent."""

    source: str
    format: str
    template: str  # "chat_template" or "plain"
    max_length: int
    truncation: str
    n_records: int = 0  # records read (after ``limit``)
    n_examples: int = 0  # examples kept in the dataset
    n_sequences: int = 0  # dataset rows (fewer than n_examples when packing)
    n_truncated: int = 0  # examples longer than max_length (truncated, dropped or refused per policy)
    n_response_lost: int = 0  # of those, examples with no trained token left in the first max_length
    n_dropped: int = 0  # examples removed: over-long under "drop", or left without trained tokens
    n_empty_dropped: int = 0  # records with an empty response skipped under on_empty="drop"
    n_boundary_fallback: int = 0  # examples tokenised piecewise (chat template broke the prefix property)
    n_tokens: int = 0  # tokens kept, padding excluded
    n_trained_tokens: int = 0  # tokens with a label (not -100)

    def summary(self) -> str:
        """A one-line human-readable summary (used in logs and warnings)."""
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


def pack_examples(examples: Sequence[tuple[list[int], list[int]]], max_length: int,
                  position_ids: bool = True) -> dict[str, list[list[int]]]:
    """Greedily concatenate ``(input_ids, labels)`` examples, in order, into sequences of at most ``max_length``.

    Examples are never split. The first token of each packed example is labelled -100, so no token is
    trained to predict across a boundary. With ``position_ids=True`` positions restart at 0 for every
    example (what padding-free/flash-attention kernels use to keep examples apart; with eager/sdpa
    attention, tokens still attend to earlier examples in the same row).
    """
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    if position_ids:
        out["position_ids"] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    cur_pos: list[int] = []

    def flush() -> None:
        if cur_ids:
            out["input_ids"].append(list(cur_ids))
            out["attention_mask"].append([1] * len(cur_ids))
            out["labels"].append(list(cur_labels))
            if position_ids:
                out["position_ids"].append(list(cur_pos))
            cur_ids.clear(), cur_labels.clear(), cur_pos.clear()

    for ids, labels in examples:
        if len(ids) > max_length:
            raise ValueError(f"pack_examples: an example has {len(ids)} tokens > max_length={max_length}")
        if len(cur_ids) + len(ids) > max_length:
            flush()
        cur_ids += ids
        cur_labels += [IGNORE_INDEX] + list(labels[1:])
        cur_pos += list(range(len(ids)))
    flush()
    return out


def load_instruct_source(
    source: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[datasets.Dataset, str, list[int]]:
    """Load a local file or folder (json/jsonl/parquet/csv/tsv), a Hub dataset ``"name"`` / ``"name:split"``, or
    generated word problems ``"arithmetic:<split>[:n[:seed]]"`` (:mod:`balora.data.arithmetic`).

    Returns ``(dataset, display_name, row_indices)``: ``row_indices`` are the 0-based row numbers of the
    selected rows, all rows or a seeded random subset of ``limit`` rows kept in file order.
    """
    path = Path(source)
    if arithmetic.is_source(str(source)):  # generated word problems, "arithmetic:<split>[:n[:seed]]"
        ds, name = datasets.Dataset.from_list(arithmetic.load_source(str(source))), str(source)
    elif path.exists():
        ds, name = load_table(path, split_name="train"), str(path)
    elif path.suffix.lower() in SUPPORTED_FORMATS:
        raise FileNotFoundError(f"{source}: no such data file")
    else:  # a Hub dataset; needs network access (or the local datasets cache)
        hub_name, _, split = str(source).partition(":")
        ds, name = datasets.load_dataset(hub_name, split=split or "train"), str(source)
    indices = list(range(len(ds)))
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
        if limit < len(ds):
            indices = sorted(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False).tolist())
    return ds, name, indices


def build_instruct_dataset(
    source: str | Path | datasets.Dataset,
    tokenizer: Any,
    max_length: int,
    format: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    packing: bool = False,
    truncation: str = "truncate",
    *,
    packing_position_ids: bool = True,
    use_chat_template: bool | None = None,
    on_empty: str = "error",
) -> tuple[datasets.Dataset, InstructStats]:
    """Build a causal-LM instruction dataset with response-only labels.

    Args:
        source: a local file/folder, a Hub dataset ``"name"`` or ``"name:split"``, or a ``datasets.Dataset``.
        tokenizer: a transformers tokenizer; its chat template is used when it has one.
        max_length: the longest sequence kept (tokens).
        format: one of :data:`balora.data.templates.FORMATS`; ``None`` detects it from the columns.
        limit: use a seeded random subset of this many rows (kept in file order); ``None`` = all rows.
        seed: seed of that subset.
        packing: concatenate examples into rows of at most ``max_length`` (:func:`pack_examples`).
        truncation: what to do with examples longer than ``max_length``: ``"truncate"`` keeps their
            first ``max_length`` tokens (counted; an example left with no trained token is dropped,
            counted and warned about, since it carries no signal), ``"drop"`` removes them (counted,
            warned), ``"error"`` raises ValueError naming the rows.
        packing_position_ids: with ``packing``, add ``position_ids`` restarting at 0 per example.
        use_chat_template: force (True) or forbid (False) the chat template; None = when present.
        on_empty: a record with an empty response raises ValueError naming file/row/field (``"error"``,
            the default) or is skipped, counted in ``n_empty_dropped`` and warned about (``"drop"``).

    Returns:
        ``(dataset, stats)``: columns ``input_ids``, ``attention_mask``, ``labels`` (+ ``position_ids``
        when packing with position ids), unpadded; pad with :class:`DataCollatorForResponseOnly`.
    """
    if on_empty not in ("error", "drop"):
        raise ValueError(f"on_empty={on_empty!r} is not one of ('error', 'drop')")
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation={truncation!r} is not one of {TRUNCATION_POLICIES}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if isinstance(source, datasets.Dataset):
        ds, name = source, "<dataset>"
        indices = list(range(len(ds)))
        if limit is not None and limit < len(ds):
            indices = sorted(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False).tolist())
    else:
        ds, name, indices = load_instruct_source(source, limit=limit, seed=seed)
    if len(ds) == 0:
        raise ValueError(f"{name}: no records (an empty file or split); expected instruction records")
    if format is None:
        format = detect_format(ds.column_names, name)
    check_format(format, ds.column_names, name)
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    stats = InstructStats(source=name, format=format, template="chat_template" if use_chat_template else "plain",
                          max_length=max_length, truncation=truncation, n_records=len(indices))

    kept: list[tuple[list[int], list[int]]] = []
    too_long: list[str] = []
    empty_rows: list[int] = []
    for row, record in zip(indices, ds.select(indices)):
        where = f"{name}, row {row + 1}"
        try:
            messages = normalize_record(record, format, where)
        except EmptyResponseError as err:
            if on_empty == "error":
                raise ValueError(f"{err} (pass on_empty='drop' to skip such records, counted)") from None
            stats.n_empty_dropped += 1
            empty_rows.append(row + 1)
            continue
        ids, labels, fallback = encode_messages(tokenizer, messages, use_chat_template=use_chat_template, where=where)
        stats.n_boundary_fallback += int(fallback)
        if len(ids) > max_length:
            stats.n_truncated += 1
            lost = all(lab == IGNORE_INDEX for lab in labels[:max_length])
            stats.n_response_lost += int(lost)
            too_long.append(f"row {row + 1} ({len(ids)} tokens)")
            if truncation == "drop" or (truncation == "truncate" and lost):
                stats.n_dropped += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
        kept.append((ids, labels))

    if too_long and truncation == "error":
        raise ValueError(
            f"{name}: {len(too_long)} example(s) longer than max_length={max_length}: {', '.join(too_long[:5])}"
            f"{' ...' if len(too_long) > 5 else ''}; raise max_length or use truncation='truncate' or 'drop'"
        )
    if truncation == "truncate" and stats.n_truncated > stats.n_response_lost:
        warnings.warn(f"{name}: truncated {stats.n_truncated - stats.n_response_lost} of {stats.n_records} "
                      f"examples to max_length={max_length} tokens", stacklevel=2)
    if stats.n_dropped:
        warnings.warn(
            f"{name}: dropped {stats.n_dropped} of {stats.n_records} examples (truncation={truncation!r}, "
            f"max_length={max_length}; {stats.n_response_lost} had no response token within max_length)",
            stacklevel=2,
        )
    if empty_rows:
        warnings.warn(f"{name}: skipped {len(empty_rows)} record(s) with an empty response (on_empty='drop'): "
                      f"rows {empty_rows[:10]}{' ...' if len(empty_rows) > 10 else ''}", stacklevel=2)
    if not kept:
        why = [f"{stats.n_empty_dropped} had an empty response (rows {empty_rows[:10]})" if empty_rows else "",
               f"{stats.n_dropped} lost every response token to truncation at max_length={max_length}"
               if stats.n_dropped else ""]
        raise ValueError(f"{name}: no trainable example left of {stats.n_records} record(s): "
                         f"{'; '.join(w for w in why if w)} ({stats.summary()})")
    stats.n_examples = len(kept)
    if packing:
        columns = pack_examples(kept, max_length, position_ids=packing_position_ids)
    else:
        columns = {"input_ids": [i for i, _ in kept], "attention_mask": [[1] * len(i) for i, _ in kept],
                   "labels": [lab for _, lab in kept]}
    stats.n_sequences = len(columns["input_ids"])
    stats.n_tokens = sum(len(ids) for ids in columns["input_ids"])
    stats.n_trained_tokens = sum(lab != IGNORE_INDEX for labels in columns["labels"] for lab in labels)
    logger.info("instruction data: %s", stats.summary())
    return datasets.Dataset.from_dict(columns), stats


@dataclass
class DataCollatorForResponseOnly:
    """Right-pad a batch: ``input_ids`` with the pad id, ``attention_mask`` with 0, ``labels`` with -100.

    Written here rather than reusing ``DataCollatorForSeq2Seq`` because that relies on
    ``tokenizer.pad`` (which follows ``tokenizer.padding_side``, often "left" for generation, and does
    not pad ``position_ids``). The pad id is ``pad_token_id``, else the tokenizer's pad token, else its
    EOS (harmless: padded positions are masked and labelled -100).
    """

    tokenizer: Any = None
    pad_token_id: int | None = None
    label_pad_token_id: int = IGNORE_INDEX
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None and self.tokenizer is not None:
            self.pad_token_id = self.tokenizer.pad_token_id
            if self.pad_token_id is None:
                self.pad_token_id = self.tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("pad_token_id: give one, or a tokenizer with a pad or eos token")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of examples (lists or 1-D tensors) into a dict of (B, T) long tensors."""
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": self.label_pad_token_id,
                      "position_ids": 0}
        batch: dict[str, torch.Tensor] = {}
        for key, pad in pad_values.items():
            if key not in features[0]:
                continue
            rows = [list(map(int, f[key])) for f in features]
            batch[key] = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features], dtype=torch.long)
        return batch
