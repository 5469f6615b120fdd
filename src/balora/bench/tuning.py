"""Tuning as a step of a sweep: select any run-config field per method on a validation split carved from the
training data, then run the chosen setting with every seed of the sweep and test it once.

A sweep's ``tune`` section (:class:`TuneConfig`) names the fields searched (``grid``), the seeds of the selection
runs, the carved fraction and its seed, and the score compared (a dotted path into a cell's payload). For every
group of cells that differ only in the seed (one method, variant and setting), :func:`run_tuned`:

1. runs the *selection* cells: the group's config with each grid point, each selection seed, marked
   ``phase="select"``; their cell function trains on the training split minus a stratified, seeded hold-out
   (:func:`carve_validation`, through :func:`selection_data`) and scores on that hold-out only; the test set is
   never seen;
2. picks the grid point with the best mean score (ties: the first in grid order);
3. runs the group's cells with the chosen values (``phase="final"``): trained on the whole training split and
   tested once. Each final record holds ``tuning``: the grid, the validation score per grid point (mean and per
   seed), the choice and the split (fraction, seed, sizes).

An NLG sweep's generation tasks have validation data of their own (e.g. ``arithmetic:validation``): with
``evals`` the selection runs train on the whole training split and are scored on those benchmarks instead of a
carved hold-out (:func:`balora.bench.nlg.selection_evals`). ``select_with`` fixes fields in the selection runs only
(select on clean data, train the final runs with injected noise): groups that differ only in those fields then
share one selection.

Selection and final runs are records of the same resumable results file (the phase and the grid point are part
of their keys), so a killed tuning resumes too.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .._fields import help_field
from .runner import GridSummary, RunSpec

__all__ = ["TuneConfig", "carve_validation", "selection_data", "run_tuned", "choose"]


@dataclass
class TuneConfig:
    """What a sweep selects per method, on which held-out data, by which score."""

    grid: dict = help_field("Fields searched: dotted RunConfig field -> list of values (their cross product), e.g. "
                            "{train.lr: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}; empty = no tuning.", default_factory=dict)
    metric: str = help_field("Score compared: a dotted path into a selection run's payload (e.g. "
                             "metrics.test.macro_f1).", default="metrics.test.accuracy")
    higher_is_better: bool = help_field("Whether a larger score is the better one (false for a loss).", default=True)
    fraction: float = help_field("Share of the training split held out for the selection (stratified).", default=0.2)
    split_seed: int = help_field("Seed of the held-out draw (recorded with every tuned run).", default=0)
    seeds: list = help_field("Training seeds of the selection runs (the score is their mean).",
                             default_factory=lambda: [0])
    evals: list = help_field("NLG: the validation benchmarks that score a selection run instead of carving the "
                             "training split (eval entries, e.g. [{task: arithmetic, data: 'validation:50:0'}]); "
                             "fraction is then unused. Empty = carve (NLU).", default_factory=list)
    select_with: dict = help_field("Fields set in the selection runs only, e.g. {data.answer_noise: 0.0}: select on "
                                   "clean data, train the final runs on noisy data; the selection runs are then shared "
                                   "by every value of those fields (and by sweeps writing the same results file).",
                                   default_factory=dict)

    def __post_init__(self) -> None:
        from .sweep import check_grid

        check_grid(self.grid, "sweep.tune.grid")
        if not 0 < self.fraction < 1:
            raise ValueError(f"sweep.tune.fraction must be in (0, 1), got {self.fraction}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"sweep.tune.seeds must be a non-empty list of integers, got {self.seeds!r}")
        if not isinstance(self.select_with, dict):
            raise ValueError(f"sweep.tune.select_with must be a mapping of field -> value, got {self.select_with!r}")
        check_grid({k: [v] for k, v in self.select_with.items()}, "sweep.tune.select_with")
        if self.evals:
            from ..training.run_config import parse_eval_section

            parse_eval_section(self.evals, "sweep.tune.evals")  # checked before anything runs

    def holdout(self) -> dict:
        """What a selection run is scored on: the validation benchmarks, else the carved split."""
        return {"evals": list(self.evals)} if self.evals else {"fraction": self.fraction, "seed": self.split_seed}

    def points(self) -> list[dict]:
        """The grid points in order, each ``{field: value}``."""
        axes = list(self.grid)
        return [dict(zip(axes, values)) for values in itertools.product(*(self.grid[a] for a in axes))]


def carve_validation(train: Any, fraction: float, seed: int, label_column: str = "label",
                     stratify: bool = True) -> tuple[Any, Any, dict]:
    """(training part, held-out part, record) of a ``datasets.Dataset``: a seeded hold-out of ``fraction`` of the
    rows, stratified by label (scikit-learn's ``train_test_split``); both parts keep the original row order."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(train.with_format("arrow")[label_column].to_numpy()) if stratify else None
    keep, held = train_test_split(np.arange(len(train)), test_size=fraction, random_state=seed, stratify=labels)
    keep, held = np.sort(keep), np.sort(held)
    record = {"fraction": fraction, "seed": seed, "stratified": bool(stratify), "n_train": int(len(keep)),
              "n_validation": int(len(held))}
    if labels is not None:
        record["validation_label_counts"] = np.unique(labels[held], return_counts=True)[1].tolist()
    return train.select(keep), train.select(held), record


def selection_data(cell: Any, data: Any) -> Any:
    """The data a cell trains and scores on: for a selection cell an NLUData whose ``train`` is the training
    split minus the hold-out and whose ``test`` is the hold-out (nothing else); a final cell's data unchanged."""
    holdout = cell.holdout
    if cell.phase != "select" or holdout is None:
        return data
    if "evals" in holdout:
        raise ValueError("sweep.tune.evals (validation benchmarks) is for NLG sweeps; an NLU sweep carves its "
                         "validation split from the training data (sweep.tune.fraction)")
    import datasets

    train, held, _ = carve_validation(data.splits["train"], holdout["fraction"], holdout["seed"], data.label_column,
                                      stratify=not data.regression)
    return dataclasses.replace(data, splits=datasets.DatasetDict({"train": train, "test": held}), locate={})


def _score(payload: Mapping[str, Any], path: str) -> float:
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"tuning: the selection run's payload has no {path!r} (missing {part!r}); set "
                             "sweep.tune.metric to a dotted path of its scores")
        node = node[part]
    return float(node)


def choose(points: list[dict], scores: list[list[float]], higher_is_better: bool = True) -> int:
    """Index of the best grid point by mean score over its selection seeds (ties: the first)."""
    means = [float(np.mean(s)) for s in scores]
    best = max(means) if higher_is_better else min(means)
    return means.index(best)


def run_tuned(tune: TuneConfig, cell_fn: Callable, cells: list, run: Callable[..., GridSummary],
              results: Callable[[], list[dict]]) -> GridSummary:
    """Selection, choice and final runs of ``cells`` (see the module docstring). ``run(cells, fn)`` runs cells
    through the sweep runner; ``results()`` reads the results file."""
    from ..training.run_config import build_config
    from .sweep import Cell, _digest, set_path

    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c.variant, tuple((k, repr(v)) for k, v in c.axes.items() if k != "train.seed")), []).append(c)
    points = tune.points()
    holdout = tune.holdout()
    select: list = []
    plan: dict[tuple, list[list]] = {}
    for gkey, members in groups.items():
        base = members[0]
        plan[gkey] = []
        for point in points:
            row = []
            for seed in tune.seeds:
                raw = copy.deepcopy(base.config.identity())  # round-trips through build_config
                for path, value in {**point, **tune.select_with, "train.seed": seed}.items():
                    raw = set_path(raw, path, value)
                if tune.evals:  # scored on the validation benchmarks: they are its eval section
                    raw["eval"] = [dict(e) for e in tune.evals]
                cfg = build_config(raw, f"tuning {base.label} {point}")
                # Without the select_with fields in the key, the groups that differ only there share these runs.
                hp = {**{k: v for k, v in base.spec.hparams.items() if k not in tune.select_with}, "config": _digest(cfg),
                      "phase": "select", "tune_point": point, "holdout": holdout}
                axes = {**{k: v for k, v in base.axes.items() if k not in tune.select_with}, "train.seed": seed}
                cell = Cell(cfg, base.variant, axes,
                            RunSpec(base.spec.model, base.spec.method, base.spec.task, seed, hp), "select", holdout)
                row.append(cell)
                select.append(cell)
            plan[gkey].append(row)
    first = run(list({c.spec.key(): c for c in select}.values()), cell_fn)  # each shared selection run once
    by_key = {r["key"]: r for r in results()}
    finals: list = []
    for gkey, members in groups.items():
        scores = [[_score(by_key[c.spec.key()], tune.metric) for c in row if c.spec.key() in by_key]
                  for row in plan[gkey]]
        if any(not s for s in scores):
            raise RuntimeError(f"tuning {members[0].label}: a selection run failed; rerun to retry it")
        best = choose(points, scores, tune.higher_is_better)
        record = {"grid": dict(tune.grid), "metric": tune.metric, "higher_is_better": tune.higher_is_better,
                  "validation": [{"values": p, "score": float(np.mean(s)), "per_seed": s}
                                 for p, s in zip(points, scores)],
                  "choice": points[best], "split": {**holdout, "stratified": True} if "fraction" in holdout else holdout,
                  "selection_seeds": tune.seeds, **({"select_with": dict(tune.select_with)} if tune.select_with else {})}
        for c in members:
            raw = copy.deepcopy(c.config.identity())
            for path, value in points[best].items():
                raw = set_path(raw, path, value)
            cfg = build_config(raw, f"tuned {c.label}")
            hp = {**c.spec.hparams, "config": _digest(cfg), "phase": "final", "tuned": points[best]}
            finals.append(Cell(cfg, c.variant, c.axes, dataclasses.replace(c.spec, hparams=hp), tuning=record))

    def final_fn(cell: Any, run_dir: Any) -> dict:
        return {**cell_fn(cell, run_dir), "tuning": cell.tuning}

    second = run(finals, final_fn)
    return GridSummary(ran=first.ran + second.ran, skipped=first.skipped + second.skipped,
                       failed=first.failed + second.failed, seconds=first.seconds + second.seconds)
