"""FeatureCapture: penultimate features (the classifier head's input) of a fixed evaluation subset at chosen steps.

A TrainerCallback, so it works for any run of :func:`balora.training.nlu.run_nlu` (``extra_callbacks``). At
step 0 (before the first update), at every step in ``steps`` and at the end of training it runs the model in
eval mode over the subset, with forward pre-hooks on the head's final layer (:func:`balora.pooling.head_layers`),
and keeps the features (one row per text, :func:`balora.pooling.head_rows`), the logits' argmax and the labels.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from ..pooling import reading_head_inputs

__all__ = ["FeatureCapture"]


class FeatureCapture(TrainerCallback):
    """Capture head-input features of ``texts`` at ``steps`` (and 0 and the last step) during training."""

    def __init__(self, texts: Sequence, labels: Sequence[int], num_labels: int, steps: Sequence[int] = (),
                 max_length: int = 128, batch_size: int = 64) -> None:
        self.texts = list(texts)  # str, or (str, str) pairs
        self.labels = np.asarray(labels).astype(np.int64)
        self.num_labels = num_labels
        self.steps = sorted({int(s) for s in steps})
        self.max_length = max_length
        self.batch_size = batch_size
        self.captured: dict[int, dict[str, np.ndarray]] = {}

    @torch.no_grad()
    def capture(self, model: torch.nn.Module, tokenizer: Any, step: int) -> None:
        if step in self.captured:
            return
        feats: list[torch.Tensor] = []
        preds = []
        with reading_head_inputs(model) as run:
            for i in range(0, len(self.texts), self.batch_size):
                chunk = self.texts[i:i + self.batch_size]
                if chunk and isinstance(chunk[0], (tuple, list)):
                    enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk], truncation=True,
                                    max_length=self.max_length, padding=True, return_tensors="pt")
                else:
                    enc = tokenizer(list(chunk), truncation=True, max_length=self.max_length, padding=True,
                                    return_tensors="pt")
                enc.pop("token_type_ids", None) if "token_type_ids" not in _forward_args(model) else None
                out, rows = run(enc)
                preds.append(out.logits.argmax(-1).cpu())
                feats.append(rows)
        x = torch.cat(feats)
        self.captured[step] = {"features": x.numpy(), "pred": torch.cat(preds).numpy(), "labels": self.labels}

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.capture(model, processing_class, 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step in self.steps:
            self.capture(model, processing_class, state.global_step)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.capture(model, processing_class, state.global_step)


def _forward_args(model: torch.nn.Module) -> set:
    import inspect

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(target.forward).parameters)
    except (TypeError, ValueError):
        return set()
