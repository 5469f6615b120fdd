"""The run folder: the one place that names its files, imported by training (which writes it) and export (which
reads it), so neither imports the other.

::

    RUN_DIR/balora_run.json   the run record: status, method, base model, data, hyperparameters, metrics
    RUN_DIR/adapter/          trained adapter (peft format; for PiSSA, relative to the residual base)
    RUN_DIR/initial_adapter/  the adapter at step 0 (A0, B0), residual inits only (see reference.init_modifies_base)
    RUN_DIR/checkpoint-N/     transformers Trainer checkpoints (``--resume`` continues from the last one)

Folders are written whole: built in a temporary folder next to the destination and renamed onto it
(:func:`replace_dir`); single files go through :mod:`balora.atomic`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic, write_text_atomic

RUN_RECORD = "balora_run.json"
ADAPTER_DIR = "adapter"
INITIAL_ADAPTER_DIR = "initial_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_SPEC = "balora_head.json"  # balora.heads.HEAD_SPEC: pooling of a mean/last-pooled classifier head
MODEL_CARD = "README.md"


def adapter_dir(run_dir: str | os.PathLike, initial: bool = False) -> Path:
    """``RUN_DIR/adapter`` or (``initial``) ``RUN_DIR/initial_adapter``."""
    return Path(run_dir) / (INITIAL_ADAPTER_DIR if initial else ADAPTER_DIR)


def record_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_RECORD


def read_record(run_dir: str | os.PathLike) -> dict:
    """The run record of ``run_dir``, ``{}`` when there is none (or it is unreadable)."""
    try:
        return json.loads(record_path(run_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_record_strict(run_dir: str | os.PathLike) -> dict:
    """The run record, ``{}`` when there is none; an unreadable record is an error naming the file."""
    path = record_path(run_dir)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def write_record(run_dir: str | os.PathLike, record: dict) -> Path:
    """Write the run record atomically."""
    return write_json_atomic(record_path(run_dir), record, default=str)


def save_run_adapters(model: Any, run_dir: str | os.PathLike, *, initial: bool) -> Path:
    """Save the trained adapter (``initial=False``) or the step-0 adapter (``initial=True``) of ``model``."""
    out = adapter_dir(run_dir, initial)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tmp-adapter-"))
    try:
        model.save_pretrained(str(tmp), selected_adapters=["default"])
        from .heads import write_head_spec

        write_head_spec(model, tmp)  # a mean/last-pooled head: how to rebuild the base it belongs to
        if initial:  # peft's convention for an initial adapter: loadable with a plain init
            edit_json(tmp / ADAPTER_CONFIG, {"init_lora_weights": True})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def edit_json(path: Path, updates: dict) -> None:
    """Update keys of a JSON object file (atomically)."""
    data = json.loads(path.read_text())
    data.update(updates)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temporary folder into place (the old one, if any, is removed only after)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
