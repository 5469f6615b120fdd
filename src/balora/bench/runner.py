"""A resumable grid of runs: one JSON line per finished run, appended so a killed sweep loses at most the
run in flight.

The grid runner knows nothing about NLU or NLG: it takes :class:`RunSpec` values and a per-run function
(``run_fn(spec, run_dir) -> dict``) and owns the bookkeeping around them: skipping runs already in the
results file, timing and peak memory (:func:`balora.profiling.measure`), package versions and git commit,
the per-run output folder (deleted after a finished run unless asked to keep it) and a progress bar.

The results file is JSON Lines. A record is written with a single ``os.write`` on an ``O_APPEND`` file
descriptor followed by ``fsync``: POSIX appends of one buffer land as a unit at the end of the file, so
two sweeps (``--shard 0/2`` and ``--shard 1/2``) may share a file, and a crash can leave at most one
unterminated last line. :func:`read_results` warns about such a line (file and line number) and ignores
it, so the run it belonged to is done again; :func:`repair_results` removes it before a sweep resumes.
(The json/jsonlines libraries offer no crash-safe append, hence this small hand-written layer.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

logger = logging.getLogger(__name__)

__all__ = ["RunSpec", "GridSummary", "append_record", "read_results", "repair_results", "done_keys", "run_grid",
           "TruncatedLineWarning"]


class TruncatedLineWarning(UserWarning):
    """The results file ends with an unterminated line (a write interrupted by a crash)."""


@dataclass(frozen=True)
class RunSpec:
    """One cell of a grid: what is trained, and every setting that makes its result differ."""

    model: str = field(metadata={"help": "Base model name or folder."})
    method: str = field(metadata={"help": "Adapter method (balora.methods.METHODS)."})
    task: str = field(metadata={"help": "Task name (e.g. a GLUE task)."})
    seed: int = field(metadata={"help": "Training seed."})
    hparams: Mapping[str, Any] = field(default_factory=dict,
                                       metadata={"help": "Settings that change the result (epochs, lr, r, ...)."})

    def key(self) -> str:
        """Canonical identity of the run: equal keys mean the same experiment (used to skip done runs)."""
        return json.dumps({"model": self.model, "method": self.method, "task": self.task, "seed": int(self.seed),
                           "hparams": dict(self.hparams)}, sort_keys=True, default=str)

    def slug(self) -> str:
        """A folder name for the run's outputs."""
        model = Path(self.model.rstrip("/")).name or "model"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}__{self.method}__{self.task}")
        return f"{safe}__s{self.seed}"


@dataclass
class GridSummary:
    """What a call to :func:`run_grid` did."""

    ran: list[dict] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ results file
def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line: one ``os.write`` of the whole line on an ``O_APPEND`` fd, then fsync."""
    line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    if b"\n" in line[:-1]:  # json.dumps escapes newlines in strings; this guards a future change of options
        raise ValueError("append_record: the JSON encoding of the record contains a newline")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # regular files do not do partial writes short of a full disk
            raise OSError(f"{path}: wrote {written} of {len(line)} bytes (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path: str | os.PathLike) -> list[dict]:
    """All records of a results file (missing file: empty list).

    An unterminated, unparsable last line (an interrupted write) is ignored with a
    :class:`TruncatedLineWarning` naming the file and line. Any other bad line is an error naming both.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last = number == len(lines)  # no newline after it
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if is_last:
                warnings.warn(f"{path}: line {number} is truncated (an interrupted write, {len(raw)} bytes); "
                              "ignored, its run will be done again", TruncatedLineWarning, stacklevel=2)
                continue
            raise ValueError(f"{path}: line {number}: not valid JSON ({err}); expected one record per line") from err
        if not isinstance(record, dict) or "key" not in record:
            raise ValueError(f"{path}: line {number}: expected a JSON object with a 'key' field, got "
                             f"{type(record).__name__}{'' if not isinstance(record, dict) else ' without key'}")
        records.append(record)
    return records


def repair_results(path: str | os.PathLike) -> bool:
    """Drop an unterminated last line (atomic rewrite); True if the file was changed.

    Call it before appending to a file that may end in a truncated line, so that the next record does not
    get glued to the fragment. Not safe while another process appends to the same file.
    """
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    fragment = data[len(keep):]
    try:
        json.loads(fragment.decode("utf-8"))
        keep = data + b"\n"  # a complete record that only lacks its newline: keep it
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s: removing a truncated last line (line %d, %d bytes) left by an interrupted write",
                       path, keep.count(b"\n") + 1, len(fragment))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(keep)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return True


def done_keys(path: str | os.PathLike) -> set[str]:
    """Keys of the runs recorded in ``path``."""
    return {r["key"] for r in read_results(path)}


# ------------------------------------------------------------------------------------------------ grid
RunFn = Callable[[RunSpec, Path], Mapping[str, Any]]


def run_grid(specs: Iterable[RunSpec], run_fn: RunFn, results: str | os.PathLike, out_dir: str | os.PathLike, *,
             keep_outputs: bool = False, progress: bool = True, stop_on_error: bool = False,
             device: str = "cpu") -> GridSummary:
    """Run every spec not yet in ``results``, one at a time, appending one record per finished run.

    Args:
        specs: the grid; duplicates (same key) are run once.
        run_fn: ``run_fn(spec, run_dir)`` trains and evaluates one run and returns the record's payload
            (e.g. ``{"metrics": {...}, "trainable_params": ...}``); it may write anything into ``run_dir``.
        results: JSON Lines file; created if missing, a truncated last line is removed first.
        out_dir: parent of the per-run folders (``out_dir/<spec.slug()>``).
        keep_outputs: keep each finished run's folder (checkpoints, adapters); deleted by default.
        progress: show a tqdm bar over the grid.
        stop_on_error: re-raise a failing run's exception; by default it is logged, counted in
            ``GridSummary.failed`` and the sweep goes on (nothing is recorded, so a rerun retries it).
        device: where peak memory is measured (``cpu``: process peak RSS; ``cuda``: torch peak allocated).
    """
    from tqdm.auto import tqdm

    from ..profiling import measure
    from ..training.common import git_commit, versions

    start = time.perf_counter()
    repair_results(results)
    done = done_keys(results)
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key(), spec)
    summary = GridSummary()
    todo = []
    for key, spec in unique.items():
        (summary.skipped if key in done else todo).append(spec)
    if summary.skipped:
        logger.info("%s: %d of %d runs already recorded; skipping them", results, len(summary.skipped), len(unique))
    env = {"versions": versions(), "git_commit": git_commit()}
    bar = tqdm(todo, desc="grid", unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(f"{spec.method} {spec.task} s{spec.seed}")
        run_dir = Path(out_dir) / spec.slug()
        try:
            with measure(device) as m:
                payload = dict(run_fn(spec, run_dir))
        except Exception as err:  # noqa: BLE001 - a sweep survives one bad run; the error is reported
            if stop_on_error:
                raise
            logger.exception("run %s failed", spec.slug())
            summary.failed.append((spec, f"{type(err).__name__}: {err}"))
            continue
        record = {"key": spec.key(), "model": spec.model, "method": spec.method, "task": spec.task,
                  "seed": int(spec.seed), "hparams": dict(spec.hparams), **payload,
                  "wall_seconds": round(m.seconds, 3), "peak_memory_mb": round(m.peak_mb, 1),
                  "memory_kind": "cuda_peak_allocated" if str(device).startswith("cuda") else "cpu_peak_rss",
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **env}
        append_record(results, record)
        summary.ran.append(record)
        if not keep_outputs and run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
