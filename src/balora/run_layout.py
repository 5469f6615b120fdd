"""The run folder: the one place that names its files, imported by training (which writes it) and export (which
reads it), so neither imports the other.

::

    RUN_DIR/balora_run.json   the run record: status, method, base model, data, hyperparameters, metrics
    RUN_DIR/adapter/          trained adapter (peft format; for PiSSA, relative to the residual base)
    RUN_DIR/initial_adapter/  the adapter at step 0 (A0, B0), residual inits only (see reference.init_modifies_base)
    RUN_DIR/checkpoint-N/     transformers Trainer checkpoints (``--resume`` continues from the last complete one)
    RUN_DIR/balora_run.lock   locked (flock) by the training writing the folder, for the whole run

Folders are written whole: built in a temporary folder next to the destination and renamed onto it
(:func:`replace_dir`); single files go through :mod:`balora.atomic`. One training at a time writes a run folder
(:func:`hold_run_dir`); a Trainer checkpoint cut short by a crash while saving is recognised by
:func:`checkpoint_problem` without loading it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .atomic import write_json_atomic, write_text_atomic

RUN_RECORD = "balora_run.json"
ADAPTER_DIR = "adapter"
INITIAL_ADAPTER_DIR = "initial_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_SPEC = "balora_head.json"  # balora.heads.HEAD_SPEC: pooling of a mean/last-pooled classifier head
MODEL_CARD = "README.md"
RUN_LOCK = "balora_run.lock"  # stays after the run: removing a lock file races with a process about to lock it


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: in use by another training, holding a completed run, or holding
    no complete checkpoint to resume from. The message names the folder and the ways out."""


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


@contextlib.contextmanager
def hold_run_dir(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Create ``run_dir`` and hold its lock (``RUN_LOCK``, an flock through :mod:`filelock`) until the block ends.

    A folder locked by another training (in this process or another) is refused at once with a
    :class:`RunFolderError` naming the process its record says is running it. The lock is the operating system's,
    so a training that dies (even killed) releases it.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        record = read_record(run_dir)
        by = (f" by process {record['pid']} on {record.get('host') or 'this machine'} (started {record.get('started')})"
              if record.get("status") == "running" and record.get("pid") else " by another process")
        raise RunFolderError(f"{run_dir}: in use{by}: another training is writing this run folder; wait for it to "
                             f"finish, or train into another output_dir") from None
    try:
        yield run_dir
    finally:
        lock.release()


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The Trainer's ``checkpoint-N`` folders of ``run_dir``, newest (largest N) first.

    Written here because transformers offers only the newest (``get_last_checkpoint``); its sorted list is a
    private Trainer method.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    pattern = re.compile(rf"^{re.escape(PREFIX_CHECKPOINT_DIR)}-(\d+)$")
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := pattern.match(p.name))] \
        if run_dir.is_dir() else []
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why the Trainer checkpoint ``folder`` cannot be resumed from (a file cut short by a crash while saving), or
    None when it is complete.

    Cheap, nothing is loaded: safetensors' ``safe_open`` reads the header and checks that the file covers every
    tensor it lists; a ``torch.save`` file (a zip archive since torch 1.6) must end with its zip directory; JSON
    files (``trainer_state.json`` must be there) must parse.
    """
    from safetensors import SafetensorError, safe_open
    from transformers.trainer import TRAINER_STATE_NAME

    if not (folder / TRAINER_STATE_NAME).is_file():
        return f"no {TRAINER_STATE_NAME}"
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
                return f"{path.name}: cut short (no zip directory at its end)"
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            return f"{path.name}: {err}"
    return None


def clear_run(run_dir: str | os.PathLike) -> list[str]:
    """Remove what a training wrote into ``run_dir`` (record, adapters, checkpoints); other files stay. Returns
    the names removed."""
    run_dir = Path(run_dir)
    removed = []
    for path in [record_path(run_dir), adapter_dir(run_dir), adapter_dir(run_dir, initial=True), *checkpoints(run_dir)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed
