"""The sweep runner: run config + grid axes + variants over any RunConfig field, resumable records, keys that
change when any result-changing setting changes."""

from __future__ import annotations

import pytest

from balora.bench.runner import read_results
from balora.bench.sweep import SweepConfig, expand, load_sweep, run_sweep, set_path

BASE = {"kind": "nlu", "model": {"name_or_path": "m"}, "data": {"train": "t.csv", "text_columns": ["text"]},
        "method": {"name": "lora"}}


def fake(cell, run_dir):
    return {"metrics": {"test": {"accuracy": cell.config.method.r / 10}}}


def test_grid_times_variants_and_every_field_is_applied(tmp_path):
    sweep = SweepConfig(run=BASE, grid={"method.r": [2, 4], "train.seed": [0, 1]},
                        variants={"plain": {}, "no svd": {"method.name": "ba-lora", "balora.lambda_svd": 0.0,
                                                          "data.label_noise": 0.2}},
                        results=str(tmp_path / "r.jsonl"), out_dir=str(tmp_path / "runs"))
    cells = expand(sweep)
    assert len(cells) == 8
    nosvd = [c for c in cells if c.variant == "no svd"]
    assert {(c.config.method.r, c.config.train.seed) for c in nosvd} == {(2, 0), (2, 1), (4, 0), (4, 1)}
    assert all(c.config.regularizers.lambda_svd == 0.0 and c.config.data.label_noise == 0.2 for c in nosvd)
    assert {c.label for c in cells} == {"plain r=2", "plain r=4", "no svd r=2", "no svd r=4"}
    assert len({c.spec.key() for c in cells}) == 8
    assert set_path({"a": {"b": 1}}, "a.c", 2) == {"a": {"b": 1, "c": 2}}


def test_resumes_and_reruns_when_a_base_setting_or_extra_key_changes(tmp_path):
    kw = dict(grid={"method.r": [2, 4]}, results=str(tmp_path / "r.jsonl"), out_dir=str(tmp_path / "runs"))
    first = run_sweep(SweepConfig(run=BASE, **kw), fake, progress=False)
    assert len(first.ran) == 2
    again = run_sweep(SweepConfig(run=BASE, **kw), fake, progress=False)
    assert not again.ran and len(again.skipped) == 2
    changed = run_sweep(SweepConfig(run=set_path(BASE, "train.lr", 1e-3), **kw), fake, progress=False)
    assert len(changed.ran) == 2  # a different base config is a different experiment
    extra = run_sweep(SweepConfig(run=BASE, key_extra={"train_size": 5}, **kw), fake, progress=False)
    assert len(extra.ran) == 2
    records = read_results(tmp_path / "r.jsonl")
    assert len(records) == 6 and {r["label"] for r in records} == {"r=2", "r=4"}
    assert records[0]["axes"] == {"method.r": 2} and records[0]["metrics"]["test"]["accuracy"] == 0.2


def test_bad_axes_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown section 'methods'"):
        SweepConfig(run=BASE, grid={"methods.r": [1]})
    with pytest.raises(ValueError, match="must be a non-empty list"):
        SweepConfig(run=BASE, grid={"method.r": 4})
    with pytest.raises(ValueError, match="variant='x'.*data.label_noise must be in"):
        expand(SweepConfig(run=BASE, variants={"x": {"data.label_noise": 2.0}}))
    path = tmp_path / "s.yaml"
    path.write_text("kind: nlu\nmodel: {name_or_path: m}\nsweep: {grids: {}}\n")
    with pytest.raises(ValueError, match="unknown sweep option"):
        load_sweep(str(path))
    path.write_text("kind: nlu\nmodel: {name_or_path: m}\ndata: {train: t, text_columns: [text]}\n"
                    "train: {lr: 1e-3}\nsweep: {grid: {train.seed: [0, 1]}}\n")
    sweep = load_sweep(str(path), ["--method.r", "16"])
    cells = expand(sweep)
    assert [c.config.train.lr for c in cells] == [1e-3, 1e-3] and cells[0].config.method.r == 16  # 1e-3 a float
