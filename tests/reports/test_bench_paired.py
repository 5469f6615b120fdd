"""balora report --paired: paired differences, collapse counts and constant baselines from hand-made predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sst
from sklearn.metrics import f1_score, matthews_corrcoef

from balora.bench.runner import RunSpec
from balora.reports.bench_paired import METRIC_FN, constant_baseline, paired_page
from balora.reports.scoring import is_collapsed, paired_bootstrap

# RTE dev of 10 examples, 7 of class 1 (majority accuracy 70.00). Per seed:
#   lora   : right on all 10                         -> 100.00
#   pissa  : seed 0 right on 8, seed 1 right on 9      -> 80.00 / 90.00
#   ba-lora: class 1 everywhere (collapsed)            -> 70.00, not above the constant baseline
REF = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
PRED = {("lora", 0): REF, ("lora", 1): REF,
        ("pissa", 0): [0, 0, 1, 1, 1, 1, 1, 0, 0, 0], ("pissa", 1): [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        ("ba-lora", 0): [1] * 10, ("ba-lora", 1): [1] * 10}


def _record(method: str, seed: int, ref: list = REF) -> dict:
    spec = RunSpec("tiny-bert", method, "rte", seed, {"lr": 1e-3})
    pred = PRED[(method, seed)]
    return {"key": spec.key(), "model": "tiny-bert", "method": method, "task": "rte", "seed": seed,
            "hparams": {"lr": 1e-3}, "metrics": {"validation": {"accuracy": float(np.mean(np.equal(pred, ref)))}},
            "trainable_params": 1000, "wall_seconds": 10.0 + seed, "train_seconds": 5.0,
            "head": {"head_warmup_seconds": 0.5},
            "predictions": {"validation": pred, "ood/sick": pred}, "references": {"validation": ref, "ood/sick": ref}}


def _rows(page: str, start: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith(start)]


def test_vectorised_metrics_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    p, r = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert METRIC_FN["accuracy"](p, r) == pytest.approx(np.mean(p == r))
    assert METRIC_FN["f1"](p, r) == pytest.approx(f1_score(r, p))
    assert METRIC_FN["matthews_correlation"](p, r) == pytest.approx(matthews_corrcoef(r, p))
    x, y = rng.normal(size=200), rng.normal(size=200)
    assert METRIC_FN["pearson"](x, y) == pytest.approx(sst.pearsonr(x, y)[0])
    assert METRIC_FN["pearson"](np.ones(5), np.arange(5.0)) == 0.0  # constant prediction: no correlation


def test_collapse_and_constant_baseline():
    ref = np.array(REF)
    assert is_collapsed(np.ones(10), ref, regression=False)
    assert not is_collapsed(ref, ref, regression=False)
    assert is_collapsed(np.full(10, 2.5) + 1e-3 * np.arange(10), np.arange(10.0), regression=True)
    assert constant_baseline(ref, "accuracy", False) == pytest.approx(0.7)
    assert constant_baseline(ref, "f1", False) == pytest.approx(2 * 7 / (10 + 7))  # always class 1
    assert constant_baseline(ref, "matthews_correlation", False) == 0.0


def test_page_holds_scores_collapse_counts_and_paired_differences():
    records = [_record(m, s) for m in ("lora", "pissa", "ba-lora") for s in (0, 1)]
    page = paired_page([("glue_tiny.jsonl", records)], n_boot=200)
    # methods in table order; lora 100 ± 0, pissa 85 ± 7.07, ba-lora 70 (collapsed twice, never above 70)
    assert _rows(page, "| rte dev |")[0] == ("| rte dev | accuracy | 70.00 | 100.00 ± 0.00 (n=2) | 85.00 ± 7.07 (n=2) | "
                                             "70.00 ± 0.00 (n=2) | 0/0/2 | 2/2/0 |")
    diffs = _rows(page, "| rte dev | ")[1:]
    assert [d.split(" | ")[1] for d in diffs] == ["pissa - lora", "ba-lora - lora", "ba-lora - pissa"]
    # pissa - lora: per seed -20, -10; mean -15; the t interval over two seeds is -15 +- t(0.975, 1) * 5
    half = sst.t.ppf(0.975, 1) * np.std([-20, -10], ddof=1) / np.sqrt(2)
    assert f"| -20.00, -10.00 | -15.00 [{-15 - half:+.2f}, {-15 + half:+.2f}] |" in diffs[0]
    assert diffs[0].split(" | ")[3].startswith("-15.00 [")
    # ba-lora - lora: -30 per seed; the bootstrap column is paired_bootstrap's over both seeds' rows
    boot = paired_bootstrap(np.ones((2, 10), int), np.array([REF, REF]), np.array(REF), metric=METRIC_FN["accuracy"],
                            n_boot=200, seed=0)
    assert f"| 2 | -30.00 [{100 * boot.low:+.2f}, {100 * boot.high:+.2f}]" in diffs[1]
    assert "| -30.00, -30.00 | -30.00 [-30.00, -30.00] |" in diffs[1]
    assert _rows(page, "| rte→sick |") and _rows(page, "| glue_tiny | rte | lora | 2 | 10 | 5 | 0.5 |")


def test_unpairable_runs_and_missing_predictions_are_named():
    records = [_record("lora", 0), _record("pissa", 0, ref=[0] * 10)]
    with pytest.raises(ValueError, match="reference labels differ between runs of pissa and lora"):
        paired_page([("x.jsonl", records)], n_boot=50)
    bare = {k: v for k, v in _record("lora", 0).items() if k not in ("predictions", "references")}
    with pytest.raises(ValueError, match="no record holds per-example predictions"):
        paired_page([("x.jsonl", [bare])])


def test_report_cli_writes_the_paired_page(tmp_path: Path, capsys: pytest.CaptureFixture):
    from balora.cli.main import main

    path = tmp_path / "glue_tiny.jsonl"
    path.write_text("".join(json.dumps(_record(m, s)) + "\n" for m in ("lora", "ba-lora") for s in (0, 1)))
    assert main(["report", str(path), "--out", str(tmp_path / "o"), "--no-plot", "--paired", "--n-boot", "100"]) == 0
    page = (tmp_path / "o" / "glue_tiny_paired.md").read_text()
    assert "Generated by `balora report --paired` from `glue_tiny.jsonl`." in page
    assert "| rte dev | ba-lora - lora | 2 | -30.00 [" in page and "| rte dev | pissa" not in page
