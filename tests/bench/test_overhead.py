"""The overhead benchmark (benchmarks/overhead.py) and the GPU check (scripts/gpu_check.sh), run tiny on the
CPU: what they print and write, not how fast anything is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..core.tiny import tiny_bert, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def overhead():
    return _script("overhead")


def _quiet(_msg: str) -> None:
    pass


def test_three_methods_side_by_side_on_a_classifier_built_in_code(overhead):
    result = overhead.measure_setting(lambda: tiny_bert(num_labels=2), "nlu", batch=4, seq_len=8, r=4, steps=1,
                                      rounds=2, warmup=1, log=_quiet,
                                      targets={"ba-lora/pissa": {"time": 1e6}, "lora/pissa": {"peak_mem": 1e-6}})
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["lora", "pissa", "ba-lora"]
    assert all(r["step_ms"] > 0 and len(r["blocks_ms"]) == 2 and r["device"] == "cpu" for r in rows.values())
    # BA-LoRA holds a frozen copy of the initial adapter (its reference) on top of PiSSA's tensors
    assert rows["ba-lora"]["own_mb"] > rows["pissa"]["own_mb"]
    assert [(m["pair"], m["met"]) for m in result["targets"]] == [("ba-lora/pissa", True), ("lora/pissa", False)]
    table = overhead.format_result("tiny", result)
    assert "time / pissa" in table and "memory / pissa" in table
    assert "ba-lora/pissa    time      " in table and table.rstrip().endswith("MISSED")


def test_a_bf16_causal_lm_is_measured_in_its_dtype(overhead):
    result = overhead.measure_setting(lambda: tiny_llama().to(torch.bfloat16), "nlg", batch=2, seq_len=12, r=4,
                                      steps=1, rounds=1, warmup=0, log=_quiet)
    assert {r["dtype"] for r in result["rows"]} == {"torch.bfloat16"}
    assert set(result["ratios"]) >= {"ba-lora/pissa", "pissa/ba-lora", "lora/pissa"}


def test_the_script_runs_named_settings_and_writes_json(overhead, tmp_path, capsys):
    out = tmp_path / "sub" / "o.json"
    assert overhead.main(["smoke-nlu", "--steps", "1", "--rounds", "1", "--warmup", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["settings"]) == ["smoke-nlu"] and res["settings"]["smoke-nlu"]["setting"]["shape"] == "tiny-bert"
    assert "-- smoke-nlu --" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown setting 'nope'; known: .*smoke-nlu"):
        overhead.main(["nope", "--out", str(tmp_path / "x.json")])


def test_every_setting_names_a_shape_and_every_group_known_settings(overhead):
    from balora.config_io import load_yaml

    table = load_yaml(overhead.SETTINGS_FILE)
    assert {s["shape"] for s in table["settings"].values()} <= set(table["shapes"])
    assert {n for group in table["groups"].values() for n in group} <= set(table["settings"])
    # a named shape is a real transformers config: the published parameter count of the 1B Llama
    model = overhead.model_from_shape(table["shapes"]["llama-1b"], "nlg", "meta", torch.bfloat16)
    assert sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6 == pytest.approx(1235.8, abs=0.1)


def test_gpu_check_script_writes_the_benchmark_and_the_cuda_tests_into_one_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "GPU_CHECK_TESTS": str(REPO / "tests" / "core" / "test_cuda.py")}
    out = tmp_path / "g.json"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out), "--device", "cpu",
                           "--steps", "1", "--rounds", "1", "--warmup", "0", "smoke"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["benchmark_exit"] == 0 and res["pytest_exit"] == 0 and res["cuda_tests"]
    if torch.cuda.is_available():
        assert res["cuda_test_counts"]["failed"] == 0 and res["cuda_test_counts"]["passed"] > 0
    else:  # only the CUDA-marked tests were selected, and they skip without a device
        assert set(res["cuda_tests"].values()) == {"skipped"} and "cuda tests: 0 passed, 0 failed" in proc.stdout
    assert set(res["benchmark"]["settings"]) == {"smoke-nlg", "smoke-nlu"}
    nlg = [r["variant"] for r in res["benchmark"]["settings"]["smoke-nlg"]["rows"]]
    assert nlg == ["lora", "pissa", "ba-lora", "ba-lora-unfused"]  # the setting's own methods
    assert "-- smoke-nlg --" in proc.stdout and "time / pissa" in proc.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_models_and_batches_stay_on_the_gpu(overhead):
    result = overhead.measure_setting(lambda: tiny_llama().to("cuda", torch.bfloat16), "nlg", batch=2, seq_len=12,
                                      r=4, steps=2, rounds=1, warmup=1, log=_quiet)
    assert all(r["device"].startswith("cuda") and r["step_mb"] >= 0 for r in result["rows"])


def test_scaling_script_measures_small_sizes_and_extrapolates_large_ones(tmp_path):
    scaling = _script("scaling")
    points = [(16, 64, 8), (32, 64, 8), (4096, 2**30, 8)]  # the last one cannot fit: extrapolated
    rows = scaling.sweep(points, scaling.OPS, max_op_s=5.0, chunk=8, log=_quiet)
    assert len(rows) == len(points) * len(scaling.OPS)
    small = [r for r in rows if r["m"] <= 32]
    assert all(r["status"] == "measured" and r["seconds"] >= 0 for r in small)
    big = [r for r in rows if r["m"] == 4096 and r["op"] == "svd_exact_full"]
    assert big[0]["status"] == "skipped: memory" and big[0]["seconds"] > 0
    scaling.plot(rows, tmp_path / "s.png", base_m=16, base_v=64)
    assert (tmp_path / "s.png").stat().st_size > 1000
