"""Sweeps whose configs are the run config plus grid axes: any :class:`~balora.training.run_config.RunConfig`
field (``balora.lambda_consistency``, ``method.r``, ``method.name``, ``train.seed``, ``data.label_noise``, ...)
can be an axis.

A sweep YAML is a run config (sections ``kind``, ``model``, ``data``, ``method``, ``balora``, ``train``) plus a
``sweep`` section::

    sweep:
      grid: {method.name: [lora, pissa, ba-lora], train.seed: [0, 1, 2]}   # the cross product
      variants:                                                             # named sets of overrides,
        w/o svd: {method.name: ba-lora, balora.lambda_svd: 0}               # each crossed with the grid
      results: results/my_sweep.jsonl
      out_dir: runs/my_sweep

Every cell is a fully validated RunConfig (bad values are reported naming the variant and the axis before
anything runs). The cells run through :func:`balora.bench.runner.run_grid`, so the records are the same
crash-safe, resumable JSON Lines as ``balora bench nlu`` / ``bench nlg`` (which build their own specs on the same
runner). A record's key holds the variant, the axis values and a digest of the whole resolved run config, so a
changed base setting is a new run, not a skipped one.

Every experiment command is such a sweep plus a cell function: ``balora bench nlu`` (GLUE tasks as a
``data.train`` axis), ``balora bench nlg``, ``balora analyze`` and ``balora demo``. ``per_value`` sets fields for
the cells where an axis has a given value (the per-task settings of a GLUE sweep), ``shard`` splits the cells
between processes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .runner import GridSummary, RunSpec, run_grid

logger = logging.getLogger(__name__)

__all__ = ["SweepConfig", "Cell", "set_path", "expand", "load_sweep", "run_sweep", "SWEEP_KEYS", "sweep_device",
           "flatten", "load_options", "OPTION_SECTIONS", "result_keys", "check_grid"]


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}, "method.r": 4}`` -> ``{"train.lr": 1e-3, "method.r": 4}`` (dotted leaves)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _get_path(raw: Mapping[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def sweep_device() -> str:
    """Where a sweep's runs train (the Trainer picks CUDA when there is one), so where peak memory is measured."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class SweepConfig:
    """A base run config and the axes that vary around it."""

    run: dict = _help("The base run config as a nested mapping (sections of RunConfig).", default_factory=dict)
    grid: dict = _help("Axes: dotted RunConfig field -> list of values; the sweep is their cross product.",
                       default_factory=dict)
    variants: dict = _help("Named sets of dotted overrides ({name: {field: value}}), each crossed with the grid; "
                           "empty = one unnamed variant.", default_factory=dict)
    results: str = _help("Results file (JSON Lines, one record per finished run; appended, resumable).",
                         default="results/sweep.jsonl")
    out_dir: str = _help("Parent folder of the per-run output folders.", default="runs/sweep")
    task: str = _help("Task name stored in the records (default: the training data's file stem).", default="")
    keep_outputs: bool = _help("Keep each finished run's folder (checkpoints, adapters).", default=False)
    key_extra: dict = _help("Settings outside the run config that change the results (e.g. an analysis's data "
                            "options); part of every run's key, so changing them is a new run.", default_factory=dict)
    per_value: dict = _help("Fields set where an axis has a given value: {axis: {value: {field: value}}}, e.g. "
                            "{data.train: {'glue:rte': {train.epochs: 2}}} (applied after the grid point).",
                            default_factory=dict)
    shard: str = _help("Run only part of the cells, 'i/n' (cells whose index mod n equals i); several shards may "
                       "append to the same results file.", default="0/1")
    tune: dict = _help("Select fields per method on a validation split carved from the training data before the "
                       "runs (balora.bench.tuning.TuneConfig: grid, metric, fraction, split_seed, seeds); empty = "
                       "no tuning.", default_factory=dict)

    def __post_init__(self) -> None:
        check_grid(self.grid, "sweep.grid")
        if not isinstance(self.variants, Mapping):
            raise ValueError(f"sweep.variants must be a mapping of name -> overrides, got {self.variants!r}")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, Mapping):
                raise ValueError(f"sweep.variants.{name} must be a mapping of field -> value, got {overrides!r}")
            for path in overrides:
                _check_path(path, f"sweep.variants.{name}.{path}")
        if not isinstance(self.per_value, Mapping):
            raise ValueError(f"sweep.per_value must be a mapping of axis -> {{value: overrides}}, got {self.per_value!r}")
        for axis, table in self.per_value.items():
            _check_path(axis, f"sweep.per_value.{axis}")
            if not isinstance(table, Mapping):
                raise ValueError(f"sweep.per_value.{axis} must be a mapping of value -> overrides, got {table!r}")
            for value, overrides in table.items():
                if not isinstance(overrides, Mapping):
                    raise ValueError(f"sweep.per_value.{axis}.{value} must be a mapping of field -> value, "
                                     f"got {overrides!r}")
                for path in flatten(overrides):
                    _check_path(path, f"sweep.per_value.{axis}.{value}.{path}")
        i, _, n = str(self.shard).partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ValueError(f"sweep.shard must be 'i/n' with 0 <= i < n, got {self.shard!r}")
        self.tune_config()  # validated before anything runs

    def tune_config(self) -> Any:
        """The ``tune`` section as a :class:`balora.bench.tuning.TuneConfig` (None when empty)."""
        from .tuning import TuneConfig

        if not self.tune:
            return None
        if not isinstance(self.tune, Mapping):
            raise ValueError(f"sweep.tune must be a mapping of TuneConfig fields, got {self.tune!r}")
        known = {f.name for f in dataclasses.fields(TuneConfig)}
        bad = set(self.tune) - known
        if bad:
            raise ValueError(f"sweep.tune: unknown option(s) {sorted(bad)}; known: {sorted(known)}")
        return TuneConfig(**self.tune)


def check_grid(grid: Any, where: str) -> None:
    """A grid is a mapping of known dotted RunConfig fields to non-empty lists of values; errors name ``where``."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"{where} must be a mapping of field -> list of values, got {grid!r}")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.{axis} must be a non-empty list of values, got {values!r}")
        _check_path(axis, f"{where}.{axis}")


SWEEP_KEYS = {f.name for f in dataclasses.fields(SweepConfig)} - {"run"}


@dataclass
class Cell:
    """One run of a sweep: its validated config, the variant and axis values that made it, and its RunSpec."""

    config: Any  # RunConfig
    variant: str
    axes: dict
    spec: RunSpec
    phase: str = "final"  # "select": a tuning run, trained and scored on the carved split (balora.bench.tuning)
    holdout: Optional[dict] = None  # the carved validation split of a selection run: {fraction, seed}
    tuning: Optional[dict] = None  # a tuned final run: the grid, validation scores and choice

    @property
    def label(self) -> str:
        """Readable name without the seed: the variant and the non-seed axis values."""
        parts = [self.variant] if self.variant else []
        parts += [str(v) if k == "method.name" else f"{k.split('.')[-1]}={v}" for k, v in self.axes.items()
                  if k != "train.seed"]
        return " ".join(parts) or self.config.method.name


def _check_path(path: str, where: str) -> None:
    from ..training.run_config import REGULARIZERS, SECTIONS, canonical_path, regularizer_fields

    if path == "kind":
        return
    section, _, name = canonical_path(path).partition(".")  # a former section name (balora.x) is still read
    known = (regularizer_fields() if section == REGULARIZERS
             else {f.name for f in dataclasses.fields(SECTIONS[section])} if section in SECTIONS else None)
    if known is None:
        raise ValueError(f"{where}: unknown section {section!r}; expected one of "
                         f"{', '.join([REGULARIZERS, *SECTIONS])} (as section.field)")
    if name not in known:
        raise ValueError(f"{where}: unknown field {name!r} of section {section!r}; known: {sorted(known)}")


def set_path(raw: dict, path: str, value: Any) -> dict:
    """A copy of the nested mapping ``raw`` with the dotted ``path`` set to ``value``."""
    from ..training.run_config import set_dotted

    out = copy.deepcopy(raw)
    set_dotted(out, path, value)
    return out


def _digest(cfg: Any) -> str:
    """A digest of every setting that changes a run's result: the run config in its stable identity form
    (RunConfig.identity(): old records keep their keys), without the output folder, display and resume/overwrite
    options."""
    values = cfg.identity()  # stable across config versions: old records keep their keys
    values["train"] = {k: v for k, v in values["train"].items() if k not in ("output_dir", "progress", "resume", "overwrite")}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand(sweep: SweepConfig, task_fn: Optional[Callable[[Any], str]] = None) -> list[Cell]:
    """Every (variant x grid point) cell of the sweep's shard, validated; a bad value names the variant and axis.

    ``task_fn(config) -> str`` names a cell's task in its record (default: ``sweep.task``, else the training
    data's file stem)."""
    from ..training.run_config import build_config

    variants = dict(sweep.variants) or {"": {}}
    axes = list(sweep.grid)
    cells = []
    for name, overrides in variants.items():
        for values in itertools.product(*(sweep.grid[a] for a in axes)):
            raw = copy.deepcopy(sweep.run)
            point = dict(zip(axes, values))
            for path, value in {**overrides, **point}.items():
                raw = set_path(raw, path, value)
            for axis, table in sweep.per_value.items():
                value = _get_path(raw, axis)
                hit = table.get(value, table.get(str(value), {})) if isinstance(value, (str, int, float)) else {}
                for path, v in flatten(hit).items():
                    raw = set_path(raw, path, v)
            where = f"sweep cell variant={name!r} " + " ".join(f"{k}={v!r}" for k, v in point.items())
            try:
                cfg = build_config(raw, where)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: {err}") from err
            task = (task_fn(cfg) if task_fn else
                    sweep.task or (Path(cfg.data.train).stem if cfg.data.train else "task"))
            hparams = {"variant": name, **{k: v for k, v in point.items() if k != "train.seed"}, "config": _digest(cfg)}
            if sweep.key_extra:
                hparams["extra"] = dict(sweep.key_extra)
            spec = RunSpec(model=cfg.model.name_or_path, method=cfg.method.name, task=task, seed=cfg.train.seed,
                           hparams=hparams)
            cells.append(Cell(cfg, name, point, spec))
    i, n = (int(x) for x in sweep.shard.split("/"))
    return [c for k, c in enumerate(cells) if k % n == i]


#: Top-level sections of a sweep file that hold a command's own options (read by :func:`load_options`), not run
#: settings: ``analysis`` (balora analyze), ``bench`` (balora bench nlu / nlg), ``demo`` (balora demo).
OPTION_SECTIONS = ("analysis", "bench", "demo")


def load_sweep(path: Optional[str], overrides: Optional[list[str]] = None, *, defaults: Optional[dict] = None,
               run_defaults: Optional[dict] = None) -> SweepConfig:
    """A sweep from a YAML file (run config sections + ``sweep:``), ``--section.key value`` overrides of the base
    run, ``run_defaults`` under the file's run sections (a command's own defaults) and ``defaults`` for the sweep
    section (an analysis's own grid); the file's ``sweep:`` keys win over ``defaults``."""
    from ..config_io import load_yaml
    from ..training.run_config import merge, parse_overrides

    raw = load_yaml(path) if path else {}
    sweep_raw = raw.pop("sweep", None) or {}
    for section in OPTION_SECTIONS:
        raw.pop(section, None)
    if not isinstance(sweep_raw, Mapping):
        raise ValueError(f"{path}: 'sweep' must be a mapping with keys {sorted(SWEEP_KEYS)}")
    bad = set(sweep_raw) - SWEEP_KEYS
    if bad:
        raise ValueError(f"{path}: unknown sweep option(s) {sorted(bad)}; known: {sorted(SWEEP_KEYS)}")
    run = merge(merge(copy.deepcopy(run_defaults or {}), raw), parse_overrides(overrides or []))
    return SweepConfig(run=run, **{**(defaults or {}), **sweep_raw})


def load_options(cls: type, path: Optional[str], section: str, given: Optional[Mapping[str, Any]] = None) -> Any:
    """A command's options dataclass ``cls`` from the ``section`` of the YAML file ``path`` (if any) with the
    command-line values ``given`` on top; an unknown key or a bad value is an error naming the file and section."""
    from ..config_io import load_yaml

    raw = (load_yaml(path).get(section) or {}) if path else {}
    where = f"{path}: {section}" if path else "<command line>"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping of {cls.__name__} fields, got {raw!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(raw) - known
    if bad:
        raise ValueError(f"{where}: unknown option(s) {sorted(bad)}; known: {sorted(known)}")
    try:
        return cls(**{**raw, **(given or {})})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


CellFn = Callable[[Cell, Path], Mapping[str, Any]]


def result_keys(summary: GridSummary, cells: list[Cell]) -> set[str]:
    """Keys of the records a sweep's report covers: its cells', or after tuning the final runs' (their keys hold
    the chosen values), never the selection runs'."""
    if not any(r.get("phase") for r in summary.ran) and not any(s.hparams.get("phase") for s in summary.skipped):
        return {c.spec.key() for c in cells}
    return ({r["key"] for r in summary.ran if r.get("phase") != "select"}
            | {s.key() for s in summary.skipped if s.hparams.get("phase") != "select"})


def formula_of(cfg: Any) -> Optional[str]:
    """The regularisers' formula version (v5 | iclr2026) of a run config whose method trains them, else None."""
    from ..methods import parse_method

    return cfg.regularizers.formula if parse_method(cfg.method.name)[1] else None


def run_sweep(sweep: SweepConfig, cell_fn: CellFn, *, progress: bool = True, stop_on_error: bool = False,
              device: Optional[str] = None, cells: Optional[list[Cell]] = None,
              subdir: bool = True) -> GridSummary:
    """Run every cell not yet recorded in ``sweep.results`` with ``cell_fn(cell, run_dir) -> payload``; with a
    ``tune`` section, first select its fields per method on carved validation data (:mod:`balora.bench.tuning`).

    The record is the runner's (key, model, method, task, seed, hparams, timing, peak memory, versions) plus the
    payload plus ``variant``, ``label`` and ``axes``. ``device``: where peak memory is measured (default: where
    the runs train, :func:`sweep_device`). ``subdir``: give each resolved config its own folder under the run's
    folder (variants of one method and seed share ``RunSpec.slug()``).
    """
    cells = cells if cells is not None else expand(sweep)

    def run(todo: list[Cell], fn: CellFn) -> GridSummary:
        by_key = {c.spec.key(): c for c in todo}

        def run_fn(spec: RunSpec, run_dir: Path) -> Mapping[str, Any]:
            cell = by_key[spec.key()]
            # RunSpec.slug() (model, method, task, seed) is shared by the variants of one method and seed: one
            # sub-folder per resolved config keeps kept outputs apart.
            payload = dict(fn(cell, run_dir / str(spec.hparams["config"]) if subdir else run_dir))
            tuned = {"phase": cell.phase} if cell.phase != "final" or cell.tuning else {}
            return {"variant": cell.variant, "label": cell.label, "axes": cell.axes, **tuned,
                    "formula": formula_of(cell.config), **payload}

        return run_grid([c.spec for c in todo], run_fn, sweep.results, sweep.out_dir, keep_outputs=sweep.keep_outputs,
                        progress=progress, stop_on_error=stop_on_error, device=device or sweep_device())

    tune = sweep.tune_config()
    if tune is None or not tune.grid:
        return run(cells, cell_fn)
    from .runner import read_results
    from .tuning import run_tuned

    return run_tuned(tune, cell_fn, cells, run, lambda: read_results(sweep.results))
