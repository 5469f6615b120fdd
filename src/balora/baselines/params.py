"""Parameter counts: trainable/total, and the paper's LoRA #Params formula.

The formula sums ``r * (in + out)`` over the adapted linear layers. For a config, the model is built
on the ``meta`` device (no memory, no download) so the layer shapes come from transformers itself
instead of a hand-kept table per architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from balora.baselines.bitfit import DEFAULT_HEAD_NAMES, _in_head

__all__ = ["count_parameters", "lora_param_formula"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule: a target matches the full module name or a dotted suffix of it."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
        return int(module.weight.shape[0]), int(module.nf)
    return None


def _model_from_config(config: Any, include_head: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig

    if isinstance(config, Mapping):
        values = dict(config)
        if "model_type" not in values:
            raise ValueError("lora_param_formula: a config dict needs 'model_type' (e.g. 'deberta-v2')")
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"lora_param_formula: expected a model, a PretrainedConfig or a dict, got {type(config).__name__}")
    auto = AutoModelForSequenceClassification if include_head else AutoModel
    with torch.device("meta"):
        return auto.from_config(config)


def lora_param_formula(model_or_config: nn.Module | Any, r: int, target_modules: Sequence[str], *,
                       include_head: bool = False, head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> int:
    """The paper's #Params of LoRA: ``sum(r * (in_features + out_features))`` over adapted layers.

    Args:
        model_or_config: a model, a ``PretrainedConfig`` or a config dict with ``model_type``.
        r: LoRA rank.
        target_modules: module-name suffixes as in ``peft.LoraConfig.target_modules``.
        include_head: also count layers of the classification head (``head_names``); excluded by default.
        head_names: module names that make up the head.

    Raises:
        ValueError: ``r < 1`` or no linear layer matches ``target_modules``.
    """
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    model = model_or_config if isinstance(model_or_config, nn.Module) else _model_from_config(model_or_config, include_head)
    total, matched = 0, 0
    for name, module in model.named_modules():
        shape = _in_out(module)
        if shape is None or not _matches(name, target_modules):
            continue
        if not include_head and _in_head(name, head_names):
            continue
        total += r * (shape[0] + shape[1])
        matched += 1
    if matched == 0:
        raise ValueError(f"no linear layer of {type(model).__name__} matches target_modules {list(target_modules)}")
    return total
