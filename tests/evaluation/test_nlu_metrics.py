"""balora.evaluation.nlu_metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from balora.evaluation.nlu_metrics import (
    classification_report_dict,
    combined_score,
    compute_glue_metrics,
    main_metric,
    make_compute_metrics,
)

PREDS = [1, 1, 0, 0, 1, 0]
REFS = [1, 0, 0, 0, 1, 1]
# By hand: TP = 2 (rows 0, 4), FP = 1 (row 1), TN = 2 (rows 2, 3), FN = 1 (row 5).
TP, FP, TN, FN = 2, 1, 2, 1


def test_cola_matthews():
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # = 1/3
    assert compute_glue_metrics("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(mcc)}


def test_mrpc_accuracy_f1_and_combined():
    out = compute_glue_metrics("mrpc", PREDS, REFS)
    acc, f1 = (TP + TN) / 6, 2 * TP / (2 * TP + FP + FN)
    assert out == {"accuracy": pytest.approx(acc), "f1": pytest.approx(f1)}
    assert combined_score(out) == pytest.approx((acc + f1) / 2)
    assert compute_glue_metrics("rte", PREDS, REFS) == {"accuracy": pytest.approx(acc)}


def test_stsb_pearson_spearman():
    preds, refs = [1.0, 2.0, 3.0, 10.0], [1.0, 3.0, 2.0, 4.0]
    # deviations from the means (4 and 2.5): (-3,-2,-1,6) and (-1.5,.5,-.5,1.5)
    pearson = (4.5 - 1.0 + 0.5 + 9.0) / math.sqrt(50 * 5)
    # ranks: (1,2,3,4) and (1,3,2,4): the same data as the Pearson of (1,2,3,4) vs (1,3,2,4) = 4/5
    spearman = 4 / 5
    out = compute_glue_metrics("stsb", preds, refs)
    assert out == {"pearson": pytest.approx(pearson), "spearmanr": pytest.approx(spearman)}


def test_main_metric():
    assert [main_metric(t) for t in ("cola", "stsb", "mrpc", "mnli", "sst-2")] == [
        "matthews_correlation", "pearson", "accuracy", "accuracy", "accuracy"]


def test_input_errors():
    with pytest.raises(ValueError, match="5 predictions for 6 references"):
        compute_glue_metrics("rte", PREDS[:5], REFS)
    with pytest.raises(ValueError, match="unlabeled"):
        compute_glue_metrics("rte", [0, 1], [-1, -1])
    with pytest.raises(ValueError, match="1-D"):
        compute_glue_metrics("rte", np.zeros((2, 2)), [0, 1])


def test_classification_report_dict():
    preds, refs = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    rep = classification_report_dict(preds, refs, num_labels=4)
    assert rep["confusion_matrix"] == [[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert rep["per_class_recall"] == pytest.approx([1 / 2, 1 / 2, 1.0, 0.0])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 * p * r / (p + r) for p, r in [(1 / 2, 1 / 2), (1.0, 1 / 2), (2 / 3, 1.0)]] + [0.0]
    assert rep["macro_f1"] == pytest.approx(sum(f1) / 4)
    with pytest.raises(ValueError, match=r"labels \[5\] outside 0..3"):
        classification_report_dict([5], [0], num_labels=4)


def test_make_compute_metrics_argmax_and_squeeze():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0], [0.3, 0.2]])  # argmax 1, 0, 1, 0
    fn = make_compute_metrics("mrpc")
    out = fn(EvalPrediction(predictions=(logits, np.zeros(1)), label_ids=np.array([1, 0, 0, 0])))
    assert out == {"accuracy": pytest.approx(3 / 4), "f1": pytest.approx(2 / 3)}
    reg = make_compute_metrics("stsb")(EvalPrediction(predictions=np.array([[1.0], [2.0], [3.0], [4.0]]),
                                                      label_ids=np.array([1.0, 3.0, 2.0, 4.0])))
    assert reg["pearson"] == pytest.approx(0.8) and reg["spearmanr"] == pytest.approx(0.8)
