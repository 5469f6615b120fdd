"""Atomic file output: every file balora writes appears whole or not at all.

One helper, :func:`atomic_write`, writes through a temporary file in the destination folder and renames it onto
the destination (``os.replace``, atomic on POSIX and Windows within one file system); if writing fails the
temporary file is removed and any earlier version of the destination is left untouched. The JSON / JSON Lines /
text writers below are thin conveniences on top of it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temporary path next to ``path``, unique per process and call, always ending in ``.tmp`` (so
    leftovers are easy to find). Writers that infer the format from the extension, such as matplotlib's savefig,
    must be given the format explicitly."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path`` (parents created), then rename it onto ``path``.

    On any exception, including KeyboardInterrupt, the temporary file is removed and the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: PathLike, obj: object, default: Optional[Callable] = None) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; ``default`` as in :func:`json.dump`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=default) + "\n")


def write_jsonl_atomic(path: PathLike, records: Iterable[Mapping]) -> Path:
    """Write ``records`` as JSON Lines (one object per line) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    return atomic_write(path, write)
