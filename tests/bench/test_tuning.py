"""Tuning on the sweep runner: per-method selection on a carved, stratified, seeded validation split, then the
chosen setting run with every seed; records show the grid, the validation score per value and the choice."""

from __future__ import annotations

import math

import pytest

from balora.bench.runner import read_results
from balora.bench.sweep import SweepConfig, result_keys, run_sweep
from balora.bench.tuning import TuneConfig, carve_validation, choose, selection_data

BASE = {"kind": "nlu", "model": {"name_or_path": "m"}, "data": {"train": "t.csv", "text_columns": ["text"]}}
BEST = {"lora": 1e-3, "ba-lora": 1e-2}  # where each method's validation score peaks in the fake


def test_selection_per_method_then_final_runs_with_the_choice(tmp_path):
    seen = []

    def cell_fn(cell, run_dir):
        seen.append((cell.phase, cell.config.method.name, cell.config.train.lr, cell.config.train.seed, cell.holdout))
        if cell.phase == "select":  # the validation score: best at the method's own rate
            score = -abs(math.log10(cell.config.train.lr) - math.log10(BEST[cell.config.method.name]))
            return {"validation": {"accuracy": score + 0.01 * cell.config.train.seed}}
        return {"metrics": {"test": {"accuracy": 0.5}}}

    sweep = SweepConfig(run=BASE, grid={"method.name": ["lora", "ba-lora"], "train.seed": [0, 1, 2]},
                        tune={"grid": {"train.lr": [1e-4, 1e-3, 1e-2]}, "metric": "validation.accuracy",
                              "seeds": [0, 1], "fraction": 0.25, "split_seed": 7},
                        results=str(tmp_path / "r.jsonl"), out_dir=str(tmp_path / "runs"))
    summary = run_sweep(sweep, cell_fn, progress=False, stop_on_error=True)
    assert len(summary.ran) == 2 * 3 * 2 + 2 * 3  # selection: methods x rates x selection seeds; then 6 finals
    select = [s for s in seen if s[0] == "select"]
    assert all(h == {"fraction": 0.25, "seed": 7} for *_, h in select)
    finals = [s for s in seen if s[0] == "final"]
    assert {(m, lr, seed) for _, m, lr, seed, _ in finals} == {(m, BEST[m], s) for m in BEST for s in (0, 1, 2)}
    records = [r for r in read_results(sweep.results) if "tuning" in r]
    assert len(records) == 6
    assert result_keys(summary, []) == {r["key"] for r in records}  # what a report covers: the final runs
    lora = next(r for r in records if r["method"] == "lora")["tuning"]
    assert lora["choice"] == {"train.lr": 1e-3} and lora["grid"] == {"train.lr": [1e-4, 1e-3, 1e-2]}
    assert [v["values"]["train.lr"] for v in lora["validation"]] == [1e-4, 1e-3, 1e-2]
    assert lora["validation"][1]["per_seed"] == [0.0, 0.01] and lora["split"]["seed"] == 7
    again = run_sweep(sweep, cell_fn, progress=False)
    assert not again.ran and len(again.skipped) == 18  # resumable: selection and final runs are recorded


def test_choice_and_config_errors():
    assert choose([{}, {}, {}], [[0.25, 0.5], [0.5, 0.5], [0.25, 0.75]]) == 1  # mean; ties -> the first
    assert choose([{}, {}], [[1.2], [0.9]], higher_is_better=False) == 1  # a loss
    with pytest.raises(ValueError, match="tune.grid.train.lr must be a non-empty list"):
        TuneConfig(grid={"train.lr": 1e-3})
    with pytest.raises(ValueError, match="fraction must be in"):
        TuneConfig(fraction=1.0)
    with pytest.raises(ValueError, match=r"sweep.tune.grid.train.learning_rate: unknown field"):
        SweepConfig(run=BASE, tune={"grid": {"train.learning_rate": [1e-3]}})
    with pytest.raises(ValueError, match=r"sweep.tune: unknown option\(s\) \['grids'\]"):
        SweepConfig(run=BASE, tune={"grids": {}})


def test_carved_validation_is_stratified_seeded_disjoint_and_replaces_the_test_set():
    import datasets

    from balora.bench.sweep import Cell
    from balora.training.nlu import NLUData

    labels = [0] * 60 + [1] * 30 + [2] * 10
    train = datasets.Dataset.from_dict({"text": [f"s{i}" for i in range(100)], "label": labels})
    keep, held, record = carve_validation(train, 0.2, seed=3)
    assert record == {"fraction": 0.2, "seed": 3, "stratified": True, "n_train": 80, "n_validation": 20,
                      "validation_label_counts": [12, 6, 2]}
    assert not set(keep["text"]) & set(held["text"]) and len(set(keep["text"]) | set(held["text"])) == 100
    assert list(carve_validation(train, 0.2, seed=3)[1]["text"]) == list(held["text"])
    assert list(carve_validation(train, 0.2, seed=4)[1]["text"]) != list(held["text"])
    test = datasets.Dataset.from_dict({"text": ["t"], "label": [0]})
    data = NLUData(datasets.DatasetDict({"train": train, "test": test}), ["text"], num_labels=3)
    cell = Cell(None, "", {}, None, "select", {"fraction": 0.2, "seed": 3})
    carved = selection_data(cell, data)
    assert set(carved.splits) == {"train", "test"} and list(carved.splits["test"]["text"]) == list(held["text"])
    assert "t" not in list(carved.splits["test"]["text"]) + list(carved.splits["train"]["text"])  # test never seen
    assert selection_data(Cell(None, "", {}, None), data) is data
    assert list(carved.splits["train"]["label"]) == list(keep["label"])
