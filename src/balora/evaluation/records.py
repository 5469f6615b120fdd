"""Reading benchmark files: JSON lines (optionally gzipped) and required-field checks with clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable, Mapping, Union


def read_jsonl(path: Union[str, Path]) -> list[dict]:
    """Rows of a ``.jsonl`` (or ``.jsonl.gz``) file; blank lines skipped, a bad line names file and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {exc}") from exc
    return rows


def require_fields(row: Mapping, fields: Iterable[str], where: str) -> None:
    """Raise ValueError naming ``where`` and the missing fields of ``row``."""
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; found {sorted(row)}")
