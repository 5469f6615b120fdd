"""The one YAML loader: ``1e-3`` is a float in run configs and in both sweep configs (it was a string in sweeps)."""

import pytest

from balora.bench.nlg import NLGBenchOptions, nlg_sweep
from balora.bench.nlu import NLUBenchOptions, nlu_sweep
from balora.bench.sweep import load_options
from balora.config_io import load_yaml, parse_yaml


def test_exponent_without_dot_is_a_float():
    assert parse_yaml("1e-3") == pytest.approx(1e-3) and isinstance(parse_yaml("1e-3"), float)
    assert parse_yaml("5E+4") == 5e4
    assert parse_yaml("1.5") == 1.5 and parse_yaml("3") == 3 and parse_yaml("abc") == "abc"


def test_sweep_configs_read_exponents_as_floats(tmp_path):
    nlu = tmp_path / "nlu.yaml"
    nlu.write_text("bench: {models: [m], methods: [lora], tasks: [sst2], per_task: {sst2: {train.weight_decay: 1e-2}}}\n"
                   "train: {lr: 1e-3}\n")
    sweep = nlu_sweep(load_options(NLUBenchOptions, str(nlu), "bench"), str(nlu))
    assert isinstance(sweep.run["train"]["lr"], float) and sweep.run["train"]["lr"] == pytest.approx(1e-3)
    wd = sweep.per_value["data.train"]["glue:sst2"]["train.weight_decay"]
    assert isinstance(wd, float) and wd == pytest.approx(1e-2)
    nlg = tmp_path / "nlg.yaml"
    nlg.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl}\neval: [{task: gsm8k, data: g.jsonl}]\n"
                   "train: {lr: 2e-4}\n")
    sweep = nlg_sweep(load_options(NLGBenchOptions, str(nlg), "bench"), str(nlg))
    assert isinstance(sweep.run["train"]["lr"], float) and sweep.run["train"]["lr"] == pytest.approx(2e-4)


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml: expected a mapping"):
        load_yaml(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
