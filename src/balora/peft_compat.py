"""The only place balora touches peft, transformers and trl internals (private attributes, per-layer containers).

The per-layer adapter switch of the reference pass:

peft's public ``set_adapter()`` / ``disable_adapter()`` also flip ``requires_grad`` on adapter weights,
which is fragile inside a training step (optimizer state, DDP's reducer). The reference pass therefore
sets two per-layer attributes of peft's ``BaseTunerLayer`` / ``AuxiliaryTrainingWrapper`` directly and
restores them on exit. peft documents them only through read-only properties (``active_adapters``,
``disable_adapters``); ``tests/core/test_peft_compat.py`` pins that writing them is what those properties
read, and pyproject.toml bounds peft to the tested range (0.14 <= peft < 0.22; tested with 0.21.2).

Also here: copying one LoRA adapter's weights into another (the reference copy), the adapters' dropout modules,
Trainer's kept input columns, a GGUF model's quantizer and trl SFTTrainer's token count.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import nn

ACTIVE_ADAPTER_ATTR = "_active_adapter"
DISABLE_ADAPTERS_ATTR = "_disable_adapters"

LayerState = tuple[nn.Module, object, bool]


def adapter_layers(model: nn.Module) -> Iterator[nn.Module]:
    """peft's tuner layers and ``modules_to_save`` wrappers: everything that switches between adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            yield module


def save_switch(layers: Sequence[nn.Module]) -> list[LayerState]:
    return [(m, getattr(m, ACTIVE_ADAPTER_ATTR), getattr(m, DISABLE_ADAPTERS_ATTR)) for m in layers]


def restore_switch(saved: Sequence[LayerState]) -> None:
    for module, active, disabled in saved:
        setattr(module, ACTIVE_ADAPTER_ATTR, active)
        setattr(module, DISABLE_ADAPTERS_ATTR, disabled)


def activate_adapter(layer: nn.Module, name: str) -> None:
    """Make ``name`` the only active adapter of ``layer`` without touching ``requires_grad``."""
    setattr(layer, ACTIVE_ADAPTER_ATTR, [name])


def disable_adapters(layer: nn.Module) -> None:
    """The layer computes its base function; ``requires_grad`` is left alone."""
    setattr(layer, DISABLE_ADAPTERS_ATTR, True)


def resolve_all_linear(peft_config: object, model: nn.Module) -> object:
    """``peft_config`` with ``target_modules="all-linear"`` replaced by the module names ``get_peft_model`` picks.

    peft's CorDA and LoRA-GA preprocessors run before ``get_peft_model`` and need the names; peft resolves the
    shorthand only inside ``get_peft_model`` (``tuners_utils._maybe_include_all_linear_layers``, private).
    """
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    return _maybe_include_all_linear_layers(peft_config, model)


@torch.no_grad()
def copy_lora_adapter(model: nn.Module, source: str, target: str) -> int:
    """Copy LoRA adapter ``source``'s A, B and scaling into adapter ``target`` in every layer holding both; the
    number of layers copied."""
    from peft.tuners.lora import LoraLayer

    copied = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and source in module.lora_A and target in module.lora_A:
            module.lora_A[target].weight.copy_(module.lora_A[source].weight)
            module.lora_B[target].weight.copy_(module.lora_B[source].weight)
            module.scaling[target] = module.scaling[source]
            copied += 1
    return copied


def adapter_dropouts(model: nn.Module, adapter_name: str) -> Iterator[Any]:
    """The dropout entries of ``adapter_name`` in every tuner layer (LoRA's ``lora_dropout``, LoHa's ``rank_dropout``
    and ``module_dropout``): a dropout module or a rate."""
    for layer in adapter_layers(model):
        for attr in ("lora_dropout", "rank_dropout", "module_dropout"):
            container = getattr(layer, attr, None)
            if isinstance(container, (nn.ModuleDict, dict)) and adapter_name in container:
                yield container[adapter_name]


def keep_input_column(trainer: Any, column: str) -> None:
    """Keep ``column`` in the batches of ``trainer`` under ``remove_unused_columns=True`` (which keeps only the
    model's forward arguments). Trainer has no public hook: its signature-column list is extended."""
    original = trainer._set_signature_columns_if_needed

    def with_column() -> None:
        original()
        if trainer._signature_columns is not None and column not in trainer._signature_columns:
            trainer._signature_columns = [*trainer._signature_columns, column]

    trainer._set_signature_columns_if_needed = with_column


def drop_quantizer(model: nn.Module) -> None:
    """A dequantised (GGUF) model is a plain float model from here on: forget its quantizer and quantization
    config, so that saving, peft and Trainer treat it as one."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def add_sft_tokens(trainer: Any, total: int) -> None:
    """Add ``total`` input tokens (over all ranks) to trl SFTTrainer's ``num_tokens`` log, as its own compute_loss
    keeps it (private counters: trl has no public hook)."""
    trainer._total_train_tokens += total // trainer._tp_size
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]
