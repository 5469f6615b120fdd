"""Read tabular data files (CSV / TSV / JSON / JSONL / parquet) into a :class:`datasets.Dataset`.

pandas does the parsing; this module adds what research data loading usually lacks: the format is
chosen from the extension (or ``format=``), a folder of files is read file by file and concatenated,
and every problem is reported with the file, the 1-based data row and the column at fault. Rows are
never dropped: a row missing a required value is an error, not a silent skip.

Text columns are read with ``keep_default_na=False`` so a sentence such as ``"NA"`` or ``"null"``
stays a string, and an empty CSV field is the empty string; only truly absent values (the fields a
short CSV row lacks, a JSON record without the key, a JSON ``null``, a parquet null) count as missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

__all__ = ["SUPPORTED_FORMATS", "RowLocator", "load_table", "load_table_located", "read_frame", "require_columns"]

SUPPORTED_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
}
_MAX_REPORTED = 5


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in SUPPORTED_FORMATS.values():
            raise ValueError(f"format={fmt!r} is not supported; expected one of {sorted(set(SUPPORTED_FORMATS.values()))}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):  # pandas infers the compression
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in SUPPORTED_FORMATS:
        raise ValueError(
            f"{path}: unknown file extension {ext or '(none)'!r}; expected one of {sorted(SUPPORTED_FORMATS)} "
            "(or pass format=...)"
        )
    return SUPPORTED_FORMATS[ext]


def _read_json(path: Path, encoding: str) -> pd.DataFrame:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding) as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from err
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise ValueError(f"{path}: expected a JSON array of records or an object {{\"data\": [...]}}, got {type(obj).__name__}")
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: row {i + 1}: expected a JSON object (record), got {type(rec).__name__}")
    return pd.DataFrame.from_records(obj)


def _read_jsonl(path: Path, encoding: str) -> tuple[pd.DataFrame, list[int]]:
    """Parse line by line (pandas' JSONL errors do not say which line); returns rows and their line numbers."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    with opener(path, "rt", encoding=encoding) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # a blank line is not a record (e.g. a trailing newline)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: not valid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
            lines.append(lineno)
    return pd.DataFrame.from_records(records), lines


def read_frame(
    path: str | Path,
    *,
    format: str | None = None,
    quoting: int | None = None,
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    dtype: Any = None,
) -> tuple[pd.DataFrame, list[int] | None]:
    """Read one file into a DataFrame; also returns JSONL line numbers per row (``None`` for other formats).

    Args:
        format: ``"csv"``, ``"tsv"``, ``"json"``, ``"jsonl"`` or ``"parquet"``; default from the extension.
        quoting: CSV/TSV quoting mode (a ``csv.QUOTE_*`` constant). GLUE TSVs contain bare double
            quotes and must be read with ``csv.QUOTE_NONE``; files with quoted multi-line fields need
            the default (``None`` = ``csv.QUOTE_MINIMAL``).
        has_header: whether CSV/TSV files start with a header line.
        column_names: CSV/TSV column names (replace the header, or name a header-less file).
        encoding: text encoding; ``"utf-8-sig"`` strips a byte-order mark.
        dtype: passed to pandas (e.g. ``str`` to keep labels as written).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = _format_of(path, format)
    if fmt in ("csv", "tsv"):
        kwargs: dict[str, Any] = {
            "sep": "\t" if fmt == "tsv" else ",",
            "encoding": encoding,
            "keep_default_na": False,
            "header": 0 if has_header else None,
            "dtype": dtype,
            # The python engine leaves the fields of a too-short row missing (NaN) where the C engine
            # fills them with "" (indistinguishable from an empty field); it is ~2x slower, fine here.
            "engine": "python",
        }
        if quoting is not None:
            kwargs["quoting"] = quoting
        if column_names is not None:
            kwargs["names"] = list(column_names)
        try:
            frame = pd.read_csv(path, **kwargs)
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: could not parse as {fmt.upper()}: {err}") from err
        if column_names is not None and len(column_names) != frame.shape[1]:
            raise ValueError(f"{path}: {len(column_names)} column_names given for {frame.shape[1]} columns")
        return frame, None
    if fmt == "json":
        frame = _read_json(path, encoding)
    elif fmt == "jsonl":
        frame, lines = _read_jsonl(path, encoding)
        return (frame.astype(dtype) if dtype is not None else frame), lines
    else:
        frame = pd.read_parquet(path)
    if column_names is not None:
        raise ValueError(f"{path}: column_names only applies to CSV/TSV files")
    return (frame.astype(dtype) if dtype is not None else frame), None


def _check_rows(frame: pd.DataFrame, columns: Sequence[str], source: Path, lines: list[int] | None) -> None:
    """Raise on the first rows (up to a few) whose required value is missing."""
    for col in columns:
        missing = frame.index[frame[col].isna().to_numpy()]
        if len(missing) == 0:
            continue
        where = []
        for pos in list(missing[:_MAX_REPORTED]):
            row = int(pos) + 1
            where.append(f"row {row}" + (f" (line {lines[int(pos)]})" if lines is not None else ""))
        more = f" and {len(missing) - _MAX_REPORTED} more" if len(missing) > _MAX_REPORTED else ""
        raise ValueError(
            f"{source}: {', '.join(where)}{more}: column {col!r} is missing a value "
            f"(expected every row to have {col!r}; rows are never dropped silently)"
        )


def require_columns(ds: datasets.Dataset | pd.DataFrame, columns: Sequence[str], source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source``, the missing columns and the available ones."""
    available = list(ds.column_names if isinstance(ds, datasets.Dataset) else ds.columns)
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; available columns: {available}")


def _files_in(folder: Path, fmt: str | None) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
        and (fmt is not None or any(s.lower() in SUPPORTED_FORMATS for s in p.suffixes))
    )
    if not files:
        raise FileNotFoundError(f"{folder}: folder has no data files with extensions {sorted(SUPPORTED_FORMATS)}")
    return files


class RowLocator:
    """Where row ``i`` of a loaded table came from: ``"FILE: row N"`` (1-based data row, header not counted)
    plus ``(line L)`` for JSONL, across the files of a folder. ``source`` names the file or folder as a whole."""

    def __init__(self, source: str | Path, parts: Sequence[tuple[Path, int, list[int] | None]]) -> None:
        self.source = str(source)
        self.parts = list(parts)  # (file, number of rows, JSONL line numbers or None)

    def __call__(self, index: int) -> str:
        start = 0
        for file, n, lines in self.parts:
            if index < start + n:
                pos = index - start
                return f"{file}: row {pos + 1}" + (f" (line {lines[pos]})" if lines is not None else "")
            start += n
        return f"{self.source}: row {index + 1}"


def load_table(path: str | Path, **options: Any) -> datasets.Dataset:
    """Load a CSV / TSV / JSON / JSONL / parquet file, or a folder of such files, as a ``datasets.Dataset``:
    :func:`load_table_located` without the row locator (``options`` are its keyword arguments)."""
    return load_table_located(path, **options)[0]


def load_table_located(path: str | Path, *, split_name: str | None = None, columns: Sequence[str] | None = None,
                       **read_options: Any) -> tuple[datasets.Dataset, RowLocator]:
    """A CSV / TSV / JSON / JSONL / parquet file, or a folder of such files, as a ``datasets.Dataset``, and a
    :class:`RowLocator` naming the file and row of every row (for later checks).

    Args:
        path: a file, or a folder whose data files are read in name order and concatenated.
        split_name: recorded as the dataset's ``split`` (e.g. ``"train"``).
        columns: required columns; they must exist and have a value in every row, and only they are
            kept (in this order). ``None`` keeps every column and checks nothing.
        read_options: how each file is read, :func:`read_frame`'s keywords (``format``, ``quoting``,
            ``has_header``, ``column_names``, ``encoding``, ``dtype``).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown extension, unparsable file or JSONL line, missing column or value.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = _files_in(path, read_options.get("format")) if path.is_dir() else [path]
    frames = []
    parts: list[tuple[Path, int, list[int] | None]] = []
    for file in files:
        frame, lines = read_frame(file, **read_options)
        if columns is not None:
            require_columns(frame, columns, file)
            _check_rows(frame, columns, file, lines)
            frame = frame[list(columns)]
        frames.append(frame)
        parts.append((file, len(frame), lines))
    if len(frames) > 1:
        names = [list(f.columns) for f in frames]
        if any(n != names[0] for n in names[1:]):
            raise ValueError(f"{path}: files have different columns: {dict(zip([f.name for f in files], names))}")
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    split = datasets.NamedSplit(split_name) if split_name is not None else None
    return datasets.Dataset.from_pandas(frame, preserve_index=False, split=split), RowLocator(path, parts)
