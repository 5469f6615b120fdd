"""The verdict page: final runs only, hand-checkable paired differences, both record kinds, the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balora.reports.stats import ece
from balora.reports.verdict import normalise, task_verdict, verdict_page

REF = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])


def analysis_record(variant, seed, pred, phase="final", conf=None, lr=1e-3, formula=None, method=None):
    conf = np.full(len(pred), 0.8) if conf is None else conf
    tuning = {"grid": {"train.lr": [1e-4, 1e-3]}, "choice": {"train.lr": lr},
              "validation": [{"values": {"train.lr": 1e-4}, "score": 0.4}, {"values": {"train.lr": 1e-3}, "score": 0.5}]}
    return {"variant": variant, "method": method or variant, "seed": seed, "phase": phase, "formula": formula,
            "test_predictions": list(map(int, pred)), "test_references": REF.tolist(),
            "test_confidences": list(map(float, conf)), "num_labels": 4, "minority_class": 3,
            "step_seconds": 0.5, "peak_memory_mb": 100.0, **({"tuning": tuning} if phase == "final" else {})}


def test_selection_runs_are_left_out_and_differences_match_a_hand_computation():
    pissa = [REF.copy(), np.where(REF == 3, 0, REF)]            # seed 0 perfect, seed 1 misses every class-3 row
    bal = [np.where(REF == 2, 1, REF), REF.copy()]               # seed 0 misses class 2, seed 1 perfect
    records = [analysis_record("pissa", s, p) for s, p in enumerate(pissa)]
    records += [analysis_record("ba-lora v5", s, p, formula="v5", method="ba-lora") for s, p in enumerate(bal)]
    records += [analysis_record("pissa", 0, np.zeros(10, int), phase="select")]  # must not count
    tv = task_verdict("toy", records, n_boot=200)
    assert tv.metric == "macro_f1" and sorted(tv.runs["pissa"]) == [0, 1]
    comp = {(c["variant"], c["vs"], c["measure"]): c for c in tv.comparisons}
    # minority (class 3) recall: pissa (1 + 0) / 2, ba-lora (1 + 1) / 2 -> +0.5
    assert comp[("ba-lora v5", "pissa", "minority_recall")]["diff"] == pytest.approx(0.5)
    from sklearn.metrics import f1_score

    def mf1(p):
        return f1_score(REF, p, average="macro")
    expected = np.mean([mf1(p) for p in bal]) - np.mean([mf1(p) for p in pissa])
    assert comp[("ba-lora v5", "pissa", "macro_f1")]["diff"] == pytest.approx(expected)
    assert comp[("ba-lora v5", "pissa", "ece")]["diff"] == pytest.approx(
        np.mean([ece(np.full(10, 0.8), p == REF) for p in bal]) - np.mean([ece(np.full(10, 0.8), p == REF)
                                                                           for p in pissa]))
    assert not any(c["vs"] == "lora" for c in tv.comparisons)  # no lora runs: no lora comparisons


def test_ece_of_one_run_by_hand():
    # two bins: 0.9 (2 rows, 1 correct) and 0.3 (2 rows, both wrong): 0.5 * |0.5 - 0.9| + 0.5 * |0 - 0.3|
    assert ece(np.array([0.9, 0.9, 0.3, 0.3]), np.array([1, 0, 0, 0])) == pytest.approx(0.35)


def bench_record(variant, seed, dev, ood, regression=False):
    preds = {"validation": dev[0], "ood/amazon": ood[0][:3], "ood/mr": ood[0][3:]}  # as bench nlu writes them
    refs = {"validation": dev[1], "ood/amazon": ood[1][:3], "ood/mr": ood[1][3:]}
    rec = {"variant": variant, "method": variant, "seed": seed, "metrics": {"validation": {}},
           "ood": {"amazon": {}, "mr": {}}, "predictions": preds, "references": refs, "train_seconds": 6.4,
           "train_examples": 32, "config": {"train": {"batch_size": 16, "epochs": 2, "lr": 3e-4}}}
    if not regression:
        rec["confidences"] = {k: [0.7] * len(v) for k, v in preds.items()}
    return rec


def test_bench_records_pool_the_ood_sets_and_regression_uses_pearson(tmp_path):
    dev_ref, ood_ref = [0, 1, 1, 0], [1, 0, 1, 1, 0]
    recs = [bench_record("lora", 0, ([0, 1, 1, 0], dev_ref), ([1, 0, 1, 1, 0], ood_ref)),
            bench_record("pissa", 0, ([0, 1, 0, 0], dev_ref), ([1, 1, 1, 1, 1], ood_ref))]
    run = normalise(recs[0])
    assert run.step_seconds == pytest.approx(6.4 / 4) and run.lr == 3e-4 and run.sets["ood"][0].shape == (5,)
    tv = task_verdict("sst2", recs, n_boot=100)
    comp = {(c["measure"], c["set"]): c for c in tv.comparisons if c["variant"] == "lora"}
    assert tv.metric == "accuracy"
    assert comp[("accuracy", "in-domain")]["diff"] == pytest.approx(0.25)
    assert comp[("accuracy", "ood")]["diff"] == pytest.approx(1.0 - 0.6)

    ref = [0.1, 0.5, 0.9, 0.3]
    reg = [bench_record("lora", 0, ([0.2, 0.4, 0.8, 0.3], ref), ([0.1] * 5, [0.2] * 5), regression=True),
           bench_record("pissa", 0, ([0.3, 0.3, 0.3, 0.31], ref), ([0.1] * 5, [0.2] * 5), regression=True)]
    for r in reg:
        r.pop("ood")
    tv = task_verdict("stsb", reg, n_boot=100)
    assert tv.metric == "pearson"
    c = next(c for c in tv.comparisons if c["variant"] == "lora" and c["measure"] == "pearson")
    assert c["diff"] == pytest.approx(np.corrcoef([0.2, 0.4, 0.8, 0.3], ref)[0, 1]
                                      - np.corrcoef([0.3, 0.3, 0.3, 0.31], ref)[0, 1])
    page = verdict_page([("stsb", reg)], tmp_path, n_boot=50)
    text = page.read_text()
    assert "| pissa | – | 3e-4 |" in text and "1 / 1" in text  # pissa's flat predictions: collapsed


def test_page_and_plot_and_cli_errors(tmp_path, capsys):
    from balora.cli.main import main

    records = [analysis_record(v, s, REF, lr=lr) for v, lr in (("pissa", 1e-4), ("lora", 1e-3)) for s in (0, 1)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", **r}) + "\n" for i, r in enumerate(records)))
    assert main(["report", "--verdict", f"toy={path}", "--out", str(tmp_path / "v"), "--n-boot", "50"]) == 0
    text = (tmp_path / "v" / "verdict.md").read_text()
    assert "| pissa | – | 1e-4 | 0.400 |" in text and f"balora report --verdict toy={path} --out" in text and (tmp_path / "v" / "verdict_lr.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["report", "--verdict", str(path), "--out", str(tmp_path / "v")]) == 2
    assert "expected NAME=RECORDS" in capsys.readouterr().err
    assert main(["report", "--verdict", f"toy={tmp_path / 'missing.jsonl'}", "--out", str(tmp_path / "v")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no final"):
        task_verdict("toy", [analysis_record("pissa", 0, REF, phase="select")])
