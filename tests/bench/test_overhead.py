"""Smoke tests of the overhead/scaling benchmark machinery on tiny in-code models (no timing assertions)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from balora.bench.overhead import format_table, ratios, run_interleaved, static_mb, write_json
from balora.bench.overhead_cli import register
from balora.bench.overhead_settings import (nlg_batch, nlg_breakdown, nlg_variants, nlu_batch, nlu_breakdown,
                                            nlu_variants, pissa_init_times)

from ..core.tiny import tiny_bert, tiny_llama

REPO = Path(__file__).resolve().parents[2]


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
    assert all(r["median_cpu_s"] > 0 and r["static_mb"] > 0 and math.isfinite(r["peak_mb"]) for r in rows)
    bd = nlu_breakdown(by["ba-lora"], repeats=1)
    assert set(bd) == {"reference_pass", "consistency", "diversity", "svd"} and min(bd.values()) >= 0
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
    assert "ba-lora-unfused" in format_table(rows)
    bd = nlg_breakdown(by["ba-lora"], repeats=1)
    for key in ("reference_pass", "fused_ce", "fused_consistency", "fused_diversity", "svd_small_factor",
                "hf_full_logits_ce", "unfused_consistency", "unfused_diversity", "unfused_svd_randomized"):
        assert bd[key] >= 0


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


def test_cli_registers_overhead_and_pissa_init_times():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["overhead", "--settings", "nlg", "--steps", "2", "--baseline-unfused"])
    assert args.settings == ["nlg"] and args.steps == 2 and args.baseline_unfused and callable(args.func)
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
