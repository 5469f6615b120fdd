"""bench nlu's extra evaluation (dev sets beyond the first, OOD sets): predictions and confidences in row order."""

from __future__ import annotations

import numpy as np
import torch

from balora.bench.nlu import ExtraEval
from tests.core.tiny import nlu_batch, tiny_bert


def _rows(batch: dict) -> list[dict]:
    n = batch["input_ids"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_extra_eval_records_top_class_probability_per_row() -> None:
    model = tiny_bert(num_labels=3)
    batch = nlu_batch(n=7, num_labels=3)
    ev = ExtraEval({"ood/x": _rows(batch)}, lambda p, r: {"accuracy": float((p == r).mean())}, False, 3, None)
    ev.collator = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # no tokenizer needed
    model.train()
    ev._on_train_end(None, None, None, model=model)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.double()
    probs = torch.softmax(logits, -1)
    np.testing.assert_array_equal(ev.predictions["ood/x"], probs.argmax(-1).numpy())
    np.testing.assert_allclose(ev.confidences["ood/x"], probs.max(-1).values.numpy(), atol=1e-6)
    np.testing.assert_array_equal(ev.references["ood/x"], batch["labels"].numpy())


def test_extra_eval_regression_has_no_confidences() -> None:
    model = tiny_bert(num_labels=1)
    batch = nlu_batch(n=4, num_labels=1)
    batch["labels"] = batch["labels"].float()
    ev = ExtraEval({"validation": _rows(batch)}, lambda p, r: {}, True, 2, None)
    ev.collator = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    ev._on_train_end(None, None, None, model=model)
    assert ev.confidences == {} and ev.predictions["validation"].shape == (4,)
