"""The demo's scoring, comparisons, tables and report on synthetic predictions (no training, no downloads)."""

from __future__ import annotations

import numpy as np

from balora.reports.multiemo import compare, format_runs, format_table, score_run, summarize, write_report
from balora.reports.scoring import majority_baseline


def _results(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["negative", "neutral", "positive", "ambivalent"]
    domains = np.array(["hotels"] * 80 + ["medicine"] * 40 + ["reviews"] * 40)
    refs = rng.integers(0, 4, len(domains))
    train = np.array([0] * 50 + [1] * 20 + [2] * 25 + [3] * 5)
    runs = []
    for method, quality in (("lora", 0.7), ("ba-lora", 0.75), ("pissa", None)):
        for seed in (0, 1, 2):
            if quality is None:
                pred = np.zeros_like(refs)  # pissa collapses to the majority class
            else:
                pred = np.where(rng.random(len(refs)) < quality, refs, rng.integers(0, 4, len(refs)))
            runs.append({"method": method, "seed": seed, **score_run(pred, refs, domains, "hotels", 4, 3),
                         "predictions": pred.tolist(), "train_seconds": 1.0, "head": {"pooling": "mean"},
                         "log_history": [{"step": 1, "loss": 1.0, "loss_task": 1.0}]})
    ind = domains == "hotels"
    results = {"config": {"r": 8, "alpha": 16, "seeds": [0, 1, 2], "epochs": 1, "batch_size": 16, "lr": 1e-3,
                          "max_length": 64, "threads": 1, "head_warmup": "logreg", "n_boot": 200},
               "data": {"name": "synthetic", "labels": labels, "train_domain": "hotels", "minority_class": "ambivalent",
                        "train_size": 100, "test_size": 80, "ood_sizes": {"medicine": 40, "reviews": 40},
                        "train_label_counts": np.bincount(train).tolist(),
                        "test_label_counts": np.bincount(refs[ind], minlength=4).tolist(),
                        "test_labels": refs.tolist(), "test_domains": domains.tolist()},
               "majority": {"in_domain": majority_baseline(train, refs[ind], 4), "ood": majority_baseline(train, refs[~ind], 4)},
               "model": {"name": "tiny"}, "runs": runs, "machine": {"cpus": 2}, "wall_seconds": 3.0}
    results["summary"] = summarize(runs, labels)
    results["comparisons"] = compare(results, n_boot=200)
    return results


def test_collapsed_runs_are_flagged_in_tables_and_report(tmp_path):
    results = _results(tmp_path)
    assert results["summary"]["pissa"]["collapsed"] == 3 and results["summary"]["lora"]["collapsed"] == 0
    runs_table = format_runs(results)
    assert runs_table.count("COLLAPSED") == 3
    assert "majority macro-F1" in runs_table
    table = format_table(results)
    assert "| pissa   | 3/3" in table and f"macro-F1 (majority {results['majority']['in_domain']['macro_f1']:.3f})" in table
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "COLLAPSED" in report and ("within noise" in report or "better" in report)
    for name in ("run_scores.png", "paired_differences.png", "per_class_recall.png", "confusion_matrices.png",
                 "loss_terms.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_comparisons_are_paired_and_point_the_right_way(tmp_path):
    results = _results(tmp_path)
    by = {(c["a"], c["b"], c["scope"], c["metric"]): c for c in results["comparisons"]}
    assert ("ba-lora", "lora", "in-domain", "macro_f1") in by and ("pissa", "lora", "out-of-domain", "accuracy") in by
    # A collapsed PiSSA is clearly worse than LoRA in macro-F1: the interval excludes 0.
    worse = by[("pissa", "lora", "in-domain", "macro_f1")]
    assert worse["high"] < 0 and not worse["within_noise"]
    for c in results["comparisons"]:
        assert c["low"] <= c["diff"] <= c["high"] and c["n_seeds"] == 3


def test_anchor_report_pairs_the_two_configurations(tmp_path):
    import pytest

    from balora.reports.multiemo import anchor_report

    warmed, random = _results(tmp_path), _results(tmp_path)
    anchor_report(warmed, random, tmp_path / "anchors.md", n_boot=100)
    text = (tmp_path / "anchors.md").read_text()
    assert "logreg (warmed head)" in text and "none (random head)" in text
    assert "+0.000 [+0.000, +0.000]" in text  # identical predictions: no difference
    random["data"]["test_labels"] = random["data"]["test_labels"][::-1]
    with pytest.raises(ValueError, match="different test sets"):
        anchor_report(warmed, random, tmp_path / "x.md")
