"""FeatureCapture: penultimate features (the classifier head's input) of a fixed evaluation subset at chosen steps.

A TrainerCallback, so it works for any run of :func:`balora.training.nlu.run_nlu` (``extra_callbacks``). At
step 0 (before the first update), at every step in ``steps`` and at the end of training it runs the model in
eval mode over the subset, with a forward pre-hook on the head's final linear layer (peft's trainable copy
when the head is in ``modules_to_save``), and keeps the features, the logits' argmax and the labels.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

__all__ = ["FeatureCapture", "head_input_module"]


def head_input_module(model: torch.nn.Module, num_labels: int) -> torch.nn.Module:
    """The module whose input is the penultimate feature: a RoBERTa-style head's ``out_proj`` (peft's active copy,
    not ``original_module``), else the top ``classifier`` / ``score`` module itself (for peft a
    ``ModulesToSaveWrapper``, whose input is the same feature and which may not call its inner Linear)."""
    mods = dict(model.named_modules())
    outs = [n for n, m in mods.items() if n.endswith("out_proj") and ("classifier" in n or "score" in n)
            and "original_module" not in n and isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if outs:
        return mods[outs[-1]]
    heads = [n for n in mods if n.split(".")[-1] in ("classifier", "score")]
    if not heads:
        raise ValueError(f"FeatureCapture: no 'classifier' / 'score' head in {type(model).__name__}")
    return mods[min(heads, key=len)]


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
        head = head_input_module(model, self.num_labels)
        feats: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda m, args: feats.append(args[0].detach().float().cpu()))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        preds = []
        try:
            for i in range(0, len(self.texts), self.batch_size):
                chunk = self.texts[i:i + self.batch_size]
                if chunk and isinstance(chunk[0], (tuple, list)):
                    enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk], truncation=True,
                                    max_length=self.max_length, padding=True, return_tensors="pt")
                else:
                    enc = tokenizer(list(chunk), truncation=True, max_length=self.max_length, padding=True,
                                    return_tensors="pt")
                enc.pop("token_type_ids", None) if "token_type_ids" not in _forward_args(model) else None
                out = model(**{k: v.to(device) for k, v in enc.items()})
                preds.append(out.logits.argmax(-1).cpu())
        finally:
            hook.remove()
            model.train(was_training)
        x = torch.cat(feats)
        if x.dim() != 2:
            raise ValueError("FeatureCapture: the head sees per-token features; use model.pooling: last")
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
