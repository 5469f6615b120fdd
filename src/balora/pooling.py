"""One sequence pooling and one way to find a classifier's head, for every part that needs them.

A classifier turns one feature vector per row into logits with its final layer. :func:`head_layers` finds
that layer (``classifier`` / ``score``; a RoBERTa-style head's ``out_proj``, after its dense -> tanh on the
first token) and :func:`hook_head_inputs` records its inputs: the pooled features the regularisers act on
for regression heads (balora.objectives), the probe of the LP-FT warm start fits, and the geometry analysis
captures (balora.training.capture). :func:`head_rows` makes them one row per example.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

HEAD_NAMES = ("classifier", "score")  # transformers' names of the classification head (encoders / decoders)


def pool(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], pooling: str) -> torch.Tensor:
    """(N, T, H) hidden states -> (N, H) under ``attention_mask`` (1 = real token) with ``pooling``:
    ``mean`` of the real tokens, the ``last`` real token (left or right padding alike) or the first (``cls``)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "last":
        # The position of the last 1 in each row: correct for left and right padding alike.
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = (positions * attention_mask.long()).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"pooling must be one of cls, mean, last; got {pooling!r}")


def head_rows(features: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The head's input as one row per example: (N, H) as given; (N, T, H), from a decoder classifier that
    scores every position, at each row's last real token (as transformers picks the logits to return)."""
    if features.dim() == 2:
        return features
    if features.dim() == 3:
        return pool(features, attention_mask, "last")
    raise ValueError(f"head input of shape {tuple(features.shape)}: expected (N, H) or (N, T, H)")


def head_layers(model: nn.Module) -> list[nn.Module]:
    """The final layer of the classifier head: the outermost ``classifier`` / ``score`` module, or the
    ``out_proj`` inside it (RoBERTa / ELECTRA style: dense -> tanh -> out_proj, whose input is the pooled
    feature, not the token sequence the head module receives). Under peft's ``modules_to_save`` the head has
    several copies (the frozen original and each adapter's): all are returned, since which one runs depends
    on the active adapter (the reference pass runs the original), and exactly one runs per forward pass."""
    modules = dict(model.named_modules())
    heads = [name for name in modules if name.rsplit(".", 1)[-1] in HEAD_NAMES]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no 'classifier' / 'score' head")
    top = min(heads, key=lambda name: name.count("."))
    inner = [m for name, m in modules.items() if name.startswith(top + ".") and name.endswith(".out_proj")]
    return inner or [modules[top]]


def head_linear(model: nn.Module) -> nn.Linear:
    """The one final linear layer of an unwrapped classifier (``classifier``, ``score`` or their ``out_proj``)."""
    layers = head_layers(model)
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        raise ValueError(f"{type(model).__name__}: expected one linear head layer, found "
                         f"{', '.join(type(m).__name__ for m in layers)}")
    return layers[0]


class HeadHooks:
    """Forward pre-hooks on :func:`head_layers`; ``remove()`` takes them all off."""

    def __init__(self, model: nn.Module, sink: list) -> None:
        self.handles = [m.register_forward_pre_hook(lambda module, args: sink.append(args[0]))
                        for m in head_layers(model)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def hook_head_inputs(model: nn.Module, sink: list) -> HeadHooks:
    """Append the input of the head's final layer to ``sink`` on every forward pass until ``remove()``."""
    return HeadHooks(model, sink)


@contextlib.contextmanager
def reading_head_inputs(model: nn.Module) -> Iterator[Callable[[dict], tuple[Any, torch.Tensor]]]:
    """``run(batch) -> (output, rows)``: ``model`` in eval mode without gradients on a batch (moved to the model's
    device), and the head's input as float CPU rows (:func:`head_rows`). Hooks and training mode restored on exit."""
    captured: list[torch.Tensor] = []
    hook = hook_head_inputs(model, captured)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def run(batch: dict) -> tuple[Any, torch.Tensor]:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            out = model(**batch)
        return out, head_rows(captured.pop(), batch.get("attention_mask")).detach().float().cpu()

    try:
        yield run
    finally:
        hook.remove()
        model.train(was_training)


__all__ = ["HEAD_NAMES", "pool", "head_rows", "head_layers", "head_linear", "hook_head_inputs", "HeadHooks",
           "reading_head_inputs"]
