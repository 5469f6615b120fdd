"""The one YAML loader: ``1e-3`` is a float in run configs and in both sweep configs (it was a string in sweeps)."""

import pytest

from balora.bench.nlg import load_nlg_bench_config
from balora.bench.nlu import load_bench_config
from balora.config_io import load_yaml, parse_yaml


def test_exponent_without_dot_is_a_float():
    assert parse_yaml("1e-3") == pytest.approx(1e-3) and isinstance(parse_yaml("1e-3"), float)
    assert parse_yaml("5E+4") == 5e4
    assert parse_yaml("1.5") == 1.5 and parse_yaml("3") == 3 and parse_yaml("abc") == "abc"


def test_sweep_configs_read_exponents_as_floats(tmp_path):
    nlu = tmp_path / "nlu.yaml"
    nlu.write_text("models: [m]\nmethods: [lora]\ntasks: [sst2]\nlr: 1e-3\nweight_decay: 1e-2\n"
                   "per_task: {sst2: {lr: 5e-4}}\n")
    cfg = load_bench_config(str(nlu))
    assert isinstance(cfg.lr, float) and cfg.lr == pytest.approx(1e-3)
    assert isinstance(cfg.weight_decay, float) and cfg.weight_decay == pytest.approx(1e-2)
    assert cfg.task_hparams("sst2")["lr"] == pytest.approx(5e-4)
    nlg = tmp_path / "nlg.yaml"
    nlg.write_text("model: m\ntrain: t.jsonl\neval_tasks: [gsm8k]\neval_data: [g.jsonl]\nlr: 2e-4\n")
    cfg = load_nlg_bench_config(str(nlg))
    assert isinstance(cfg.lr, float) and cfg.lr == pytest.approx(2e-4)


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
