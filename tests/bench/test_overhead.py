"""Tests of the overhead/scaling benchmark machinery on tiny in-code models (no timing assertions: the
checks are on how numbers are derived, where tensors live, and that every piece runs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from balora.bench.overhead import (format_table, make_trainer, mark_targets, ratio_table, ratios, run_interleaved,
                                   static_mb, timed_step, write_json)
from balora.bench.overhead_cli import main as overhead_main
from balora.bench.overhead_cli import register
from balora.bench.overhead_settings import (MODEL_CONFIGS, config_loader, nlg_batch, nlg_breakdown, nlg_variants,
                                            nlu_batch, nlu_breakdown, nlu_variants, pissa_init_times)

from ..core.tiny import tiny_bert, tiny_llama

REPO = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _quiet(_msg: str) -> None:
    pass


def test_nlu_variants_cached_reference_matches_on_the_fly_and_runs_interleaved():
    batch = nlu_batch(vocab=64, batch=6, seq_len=8, num_labels=3)
    variants = nlu_variants(lambda: tiny_bert(num_labels=3), batch, r=4)
    assert [v.name for v in variants] == ["lora", "pissa", "ba-lora", "ba-lora-cached"]
    by = {v.name: v for v in variants}
    with torch.no_grad():  # same init, same batch: the cached teacher gives the same loss as the live one
        live = by["ba-lora"].loss_fn(by["ba-lora"].model, batch)
        cached = by["ba-lora-cached"].loss_fn(by["ba-lora-cached"].model, batch)
        plain = by["pissa"].loss_fn(by["pissa"].model, batch)
    assert cached.item() == pytest.approx(live.item(), rel=1e-5)
    assert live.item() != pytest.approx(plain.item(), rel=1e-6)  # the regularisers are really on
    rows = run_interleaved(variants, steps=2, warmup=1, log=_quiet)
    assert [r["steps"] for r in rows] == [2, 2, 2, 2]
    for v, r in zip(variants, rows):  # the summary is the median of what was recorded, per variant
        assert r["median_s"] == statistics.median(v.times) and r["median_cpu_s"] == statistics.median(v.cpu_times)
        assert r["peak_mb"] == pytest.approx(v.static_mb + statistics.median(v.step_mb))
        assert v.static_mb == pytest.approx(static_mb(v.model, v.optimizer))
    assert all(r["median_cpu_s"] > 0 and r["static_mb"] > 0 and math.isfinite(r["peak_mb"]) for r in rows)
    bd = nlu_breakdown(by["ba-lora"], repeats=1)
    assert set(bd) == {"reference_pass", "consistency", "diversity", "svd"}
    assert all(math.isfinite(x) for x in bd.values()) and bd["reference_pass"] > 0
    assert "reference_pass" not in nlu_breakdown(by["ba-lora-cached"], repeats=1)


def test_nlg_fused_variants_match_their_unfused_twins_at_step0():
    batch = nlg_batch(vocab=96, batch=2, seq_len=12, prompt_len=3)
    assert int((batch["labels"][:, 1:] != -100).sum()) == 2 * (12 - 3)
    names = ("lora", "pissa", "pissa-fused-ce", "ba-lora", "ba-lora-unfused")
    variants = nlg_variants(tiny_llama, batch, r=4, pissa_niter=None, which=names, chunk_size=5)
    by = {v.name: v for v in variants}
    with torch.no_grad():
        loss = {n: by[n].loss_fn(by[n].model, batch).item() for n in names}
    assert loss["pissa-fused-ce"] == pytest.approx(loss["pissa"], rel=1e-5)
    assert loss["lora"] == pytest.approx(loss["pissa"], rel=1e-5)  # both compute the pretrained function
    # BA-LoRA differs from PiSSA by the weighted terms; fused and unfused differ only by the random sketch
    assert loss["ba-lora"] != pytest.approx(loss["pissa"], abs=1e-6)
    assert loss["ba-lora"] == pytest.approx(loss["ba-lora-unfused"], abs=5e-4)
    rows = run_interleaved(variants, steps=1, warmup=0, log=_quiet)
    rat = ratios(rows, [("ba-lora", "pissa"), ("pissa", "lora"), ("ba-lora", "missing")])
    assert set(rat) == {"ba-lora/pissa", "pissa/lora"}
    med = {r["variant"]: r for r in rows}
    assert rat["ba-lora/pissa"]["time"] == med["ba-lora"]["median_s"] / med["pissa"]["median_s"]
    assert rat["ba-lora/pissa"]["peak_mem"] == med["ba-lora"]["peak_mb"] / med["pissa"]["peak_mb"]
    table = {t["variant"]: t for t in ratio_table(rows, "pissa", cpu_time=True)}
    assert table["pissa"]["time_ratio"] == 1.0 and table["pissa"]["mem_ratio"] == 1.0
    assert table["ba-lora"]["time_ratio"] == rat["ba-lora/pissa"]["cpu_time"]
    assert table["ba-lora"]["step_ms"] == 1000 * med["ba-lora"]["median_cpu_s"]
    assert "ba-lora-unfused" in format_table(rows)
    bd = nlg_breakdown(by["ba-lora"], repeats=1)
    assert set(bd) == {"reference_pass", "fused_ce", "fused_consistency", "fused_diversity", "svd_small_factor",
                       "hf_full_logits_ce", "unfused_consistency", "unfused_diversity", "unfused_svd_randomized"}
    assert all(math.isfinite(x) for x in bd.values()) and bd["fused_ce"] > 0 and bd["reference_pass"] > 0


def test_ratios_and_static_bytes_by_hand(tmp_path):
    rows = [{"variant": "a", "median_s": 3.0, "median_cpu_s": 2.0, "peak_mb": 110.0},
            {"variant": "b", "median_s": 2.0, "median_cpu_s": 1.0, "peak_mb": 100.0}]
    assert ratios(rows, [("a", "b")]) == {"a/b": {"time": 1.5, "cpu_time": 2.0, "peak_mem": 1.1}}
    model = torch.nn.Linear(256, 512)  # 256*512 + 512 floats
    opt = torch.optim.AdamW(model.parameters())
    assert static_mb(model, opt) == pytest.approx((256 * 512 + 512) * 4 / 2**20)
    model(torch.ones(1, 256)).sum().backward()
    opt.step()  # AdamW adds exp_avg and exp_avg_sq (and a scalar step) per parameter
    assert static_mb(model, opt) == pytest.approx(3 * (256 * 512 + 512) * 4 / 2**20, rel=1e-3)
    path = write_json(tmp_path / "sub" / "r.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_mark_targets_compares_the_measured_ratio_with_the_limit():
    rat = {"ba-lora/pissa": {"time": 1.6, "cpu_time": 1.3, "peak_mem": 1.0}}
    marks = mark_targets(rat, {"ba-lora/pissa": {"time": 1.5, "peak_mem": 1.02}, "x/pissa": {"time": 1.0}})
    assert [(m["metric"], m["value"], m["met"]) for m in marks] == [("time", 1.6, False), ("peak_mem", 1.0, True)]
    cpu = mark_targets(rat, {"ba-lora/pissa": {"time": 1.4}}, time_key="cpu_time")
    assert [(m["metric"], m["value"], m["met"]) for m in cpu] == [("cpu_time", 1.3, True)]


def test_models_and_batches_are_built_on_the_requested_device_and_dtype():
    # meta: nothing is computed, but a tensor made without the device would land on the CPU
    model = config_loader("tiny-nlg", "meta", torch.bfloat16)()
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}
    nlu = config_loader("tiny-nlu", "meta", torch.float16)()
    assert {(p.device.type, p.dtype) for p in nlu.parameters()} == {("meta", torch.float16)}
    for batch in (nlg_batch(96, 2, 8, device="meta"), nlu_batch(96, 2, 8, device="meta")):
        assert {t.device.type for t in batch.values()} == {"meta"}
    # same generator on every device: the CPU batch is the one the GPU run sees
    assert torch.equal(nlg_batch(96, 2, 8)["input_ids"], nlg_batch(96, 2, 8, device="cpu")["input_ids"])
    # the named shapes are the published ones: parameter counts of the real models (built on meta: no memory)
    published = {"llama-1b": 1235.8, "llama-8b": 8030.3, "smollm2": 134.5, "deberta-v3-base": 184.4, "bert-base": 109.5}
    for name, millions in published.items():
        params = {id(p): p for p in config_loader(name, "meta", torch.bfloat16)().parameters()}.values()
        assert sum(p.numel() for p in params) / 1e6 == pytest.approx(millions, abs=0.1), name
    assert MODEL_CONFIGS["llama-1b"][1]().tie_word_embeddings and not MODEL_CONFIGS["llama-8b"][1]().tie_word_embeddings


def test_trainer_follows_the_model_device_and_a_step_reports_transient_memory():
    batch = nlg_batch(512, 2, 12)
    (variant,) = nlg_variants(config_loader("tiny-nlg"), batch, r=4, pissa_niter=None, which=("ba-lora",))
    trainer = make_trainer(variant.model, variant.objective)
    assert trainer.args.device.type == "cpu"  # use_cpu follows the model, not torch.cuda.is_available()
    seconds, cpu, step_mb, process_mb, loss = timed_step(variant)
    assert seconds > 0 and cpu > 0 and math.isfinite(step_mb) and process_mb > 0
    assert loss.device == batch["input_ids"].device and loss.requires_grad is False and torch.isfinite(loss)


def test_suite_runs_end_to_end_on_cpu_with_tiny_models(tmp_path):
    out = tmp_path / "suite.json"
    rc = overhead_main(["--suite", "--device", "cpu", "--model-config", "tiny", "--steps", "1", "--warmup", "0",
                        "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and all(c["passed"] for c in res["checks"].values()), res["checks"]
    assert set(res["settings"]) == {"nlg-llama-1b", "nlg-llama-8b", "nlu-deberta-v3-base", "nlu-bert-base"}
    assert {"reference_logits_fp32", "reference_logits_bf16", "fused_terms_fp32", "fused_terms_bf16",
            "training_step_bf16"} <= set(res["checks"])
    for name, r in res["settings"].items():
        med = {row["variant"]: row for row in r["rows"]}
        for t in r["ratio_table"]:  # the table is derived from the recorded medians
            assert t["time_ratio"] == pytest.approx(med[t["variant"]]["median_s"] / med["pissa"]["median_s"])
            assert t["mem_ratio"] == pytest.approx(med[t["variant"]]["peak_mb"] / med["pissa"]["peak_mb"])
        for m in r["targets"]:
            assert m["met"] == (m["value"] <= m["target"])
            assert m["value"] == r["ratios"][m["pair"]][m["metric"]]
        for p in r["placement"].values():  # batches live where the model lives
            assert p["batch"] == [p["model"]] == ["cpu"]
    assert res["settings"]["nlg-llama-1b"]["placement"]["ba-lora"]["dtype"] == "torch.bfloat16"
    assert res["settings"]["nlu-bert-base"]["placement"]["pissa"]["dtype"] == "torch.float32"
    assert {m["setting"] for m in res["targets"]} == set(res["settings"])


def test_gpu_check_script_runs_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "g.json"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--model-config", "tiny",
                           "--steps", "1", "--warmup", "0", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| setting | variant | step ms | peak GiB | time / PiSSA | memory / PiSSA |" in proc.stdout
    assert "check training_step_bf16       PASS" in proc.stdout
    assert json.loads(out.read_text())["meta"]["device"] == "cpu"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_cuda_benchmark_runs_with_breakdown_on_the_gpu(dtype, tmp_path):
    """Issue 15's bugs: a device mismatch at step 1, the breakdown's CPU buffer filled with CUDA rows."""
    out = tmp_path / "o.json"
    rc = overhead_main(["--device", "cuda", "--dtype", dtype, "--model-config", "tiny", "--settings", "nlg", "nlu",
                        "--steps", "1", "--warmup", "1", "--baseline-unfused", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["meta"]["device"] == "cuda" and "breakdown" in res["nlg"]
    assert all(row["median_s"] > 0 and row["step_mb"] >= 0 for row in res["nlg"]["rows"])


@pytest.mark.cuda
@needs_cuda
def test_cuda_suite_checks_pass_on_tiny_models(tmp_path):
    out = tmp_path / "s.json"
    rc = overhead_main(["--suite", "--device", "cuda", "--model-config", "tiny", "--steps", "1", "--warmup", "1",
                        "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and all(c["passed"] for c in res["checks"].values()), res["checks"]
    assert all(p["batch"] == [p["model"]] and p["model"].startswith("cuda")
               for r in res["settings"].values() for p in r["placement"].values())


def test_cli_registers_overhead_and_pissa_init_times():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["overhead", "--settings", "nlg", "--steps", "2", "--baseline-unfused", "--device",
                              "cuda", "--dtype", "bf16", "--model-config", "llama-1b", "deberta-v3-base"])
    assert args.settings == ["nlg"] and args.steps == 2 and args.baseline_unfused and callable(args.func)
    assert (args.device, args.dtype, args.model_config) == ("cuda", "bf16", ["llama-1b", "deberta-v3-base"])
    times = pissa_init_times(tiny_llama, r=4, niters=(None, 2))
    assert set(times) == {"exact", "niter_2"} and min(times.values()) > 0


def test_scaling_script_measures_small_sizes_and_extrapolates_large_ones(tmp_path):
    spec = importlib.util.spec_from_file_location("balora_scaling", REPO / "benchmarks" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    points = [(16, 64, 8), (32, 64, 8), (4096, 2**30, 8)]  # the last one cannot fit: extrapolated
    rows = scaling.sweep(points, scaling.OPS, max_op_s=5.0, chunk=8, log=_quiet)
    assert len(rows) == len(points) * len(scaling.OPS)
    small = [r for r in rows if r["m"] <= 32]
    assert all(r["status"] == "measured" and r["seconds"] >= 0 for r in small)
    big = [r for r in rows if r["m"] == 4096 and r["op"] == "svd_exact_full"]
    assert big[0]["status"] == "skipped: memory" and big[0]["seconds"] > 0
    scaling.plot(rows, tmp_path / "s.png", base_m=16, base_v=64)
    assert (tmp_path / "s.png").stat().st_size > 1000
