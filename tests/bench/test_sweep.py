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


def test_per_value_settings_and_shards(tmp_path):
    sweep = SweepConfig(run=BASE, grid={"train.seed": [0, 1], "data.train": ["a.csv", "b.csv"]},
                        per_value={"data.train": {"b.csv": {"train.epochs": 2, "method": {"r": 4}}}})
    cells = expand(sweep)
    b = [c for c in cells if c.config.data.train == "b.csv"]
    a = [c for c in cells if c.config.data.train == "a.csv"]
    assert all(c.config.train.epochs == 2 and c.config.method.r == 4 for c in b)
    assert all(c.config.train.epochs == 1 and c.config.method.r == 8 for c in a)
    assert len({c.spec.key() for c in cells}) == 4
    shards = [expand(SweepConfig(**{**sweep.__dict__, "shard": f"{i}/3"})) for i in range(3)]
    assert [len(s) for s in shards] == [2, 1, 1]
    assert sorted(c.spec.key() for s in shards for c in s) == sorted(c.spec.key() for c in cells)
    with pytest.raises(ValueError, match=r"sweep.per_value.data.train.b.csv.train.epoch: unknown field 'epoch'"):
        SweepConfig(run=BASE, per_value={"data.train": {"b.csv": {"train.epoch": 2}}})
    with pytest.raises(ValueError, match="shard must be 'i/n'"):
        SweepConfig(run=BASE, shard="3/3")


def test_options_come_from_their_section_with_command_line_values_on_top(tmp_path):
    from dataclasses import dataclass

    from balora._fields import help_field
    from balora.bench.sweep import load_options

    @dataclass
    class Opts:
        size: int = help_field("Size.", default=1)
        name: str = help_field("Name.", default="n")

        def __post_init__(self):
            if self.size < 1:
                raise ValueError(f"size must be >= 1, got {self.size}")

    path = tmp_path / "s.yaml"
    path.write_text("kind: nlu\nbench: {size: 5, name: file}\nsweep: {grid: {train.seed: [0]}}\n")
    assert load_options(Opts, str(path), "bench", {"name": "flag"}) == Opts(5, "flag")
    assert load_options(Opts, None, "bench") == Opts()
    assert load_sweep(str(path)).run == {"kind": "nlu"}  # the options section is not a run setting
    path.write_text("bench: {size: 0}\n")
    with pytest.raises(ValueError, match=r"s.yaml: bench: size must be >= 1, got 0"):
        load_options(Opts, str(path), "bench")
    path.write_text("bench: {sise: 2}\n")
    with pytest.raises(ValueError, match=r"s.yaml: bench: unknown option\(s\) \['sise'\]"):
        load_options(Opts, str(path), "bench")



def test_every_record_says_which_formula_version_its_regularisers_used(tmp_path):
    sweep = SweepConfig(run=BASE, variants={"lora": {}, "v5": {"method.name": "ba-lora"},
                                            "iclr": {"method.name": "ba-lora", "regularizers.formula": "iclr2026"},
                                            "dora+reg": {"method.name": "dora+reg",
                                                         "regularizers.formula": "iclr2026"}},
                        results=str(tmp_path / "r.jsonl"), out_dir=str(tmp_path / "runs"))
    run_sweep(sweep, fake, progress=False)
    formulas = {r["variant"]: r["formula"] for r in read_results(tmp_path / "r.jsonl")}
    assert formulas == {"lora": None, "v5": "v5", "iclr": "iclr2026", "dora+reg": "iclr2026"}
