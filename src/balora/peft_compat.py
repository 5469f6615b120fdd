"""The only place balora touches library internals (names starting with ``_`` in peft, transformers, torch,
datasets); ``tests/test_private_access.py`` fails on such access anywhere else.

peft's per-layer adapter switch of the reference pass: peft's public ``set_adapter()`` / ``disable_adapter()``
also flip ``requires_grad`` on adapter weights, which is fragile inside a training step (optimizer state, DDP's
reducer). The reference pass therefore sets two per-layer attributes of peft's ``BaseTunerLayer`` /
``AuxiliaryTrainingWrapper`` directly and restores them on exit. peft documents them only through read-only
properties (``active_adapters``, ``disable_adapters``); ``tests/core/test_peft_compat.py`` pins that writing them
is what those properties read, and pyproject.toml bounds peft to the tested range (0.14 <= peft < 0.22; tested
with 0.21.2).

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


def drop_hf_quantizer(model: nn.Module) -> nn.Module:
    """Forget how a dequantised checkpoint (e.g. GGUF) was quantised, so that it saves and trains as the plain
    float model it now is. transformers keeps the loader's quantizer on the model (``hf_quantizer``, set by
    ``from_pretrained``) and its settings in ``config.quantization_config``; ``save_pretrained`` would
    otherwise write the quantisation settings back."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def tensor_version(tensor: torch.Tensor) -> int:
    """torch's counter of in-place changes of ``tensor`` (autograd's ``_version``; torch has no public accessor):
    a cache keyed on it notices that a weight was overwritten in place."""
    return tensor._version


def torch_dispatch_mode() -> type:
    """torch's ``TorchDispatchMode``: the documented extension point that sees every ATen call, in a private module."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def tree_leaves(tree: Any) -> list:
    """The leaves of nested lists / tuples / dicts, as torch flattens an op's arguments (``torch.utils._pytree``)."""
    from torch.utils._pytree import tree_leaves as leaves

    return leaves(tree)


def dataset_fingerprint(dataset: Any, default: Any = None) -> Any:
    """The fingerprint ``datasets`` gives a dataset's content and transforms (only held privately), or ``default``
    for an object without one."""
    return getattr(dataset, "_fingerprint", default)


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


def add_sft_tokens(trainer: Any, total: int) -> None:
    """Add ``total`` input tokens (over all ranks) to trl SFTTrainer's ``num_tokens`` log, as its own compute_loss
    keeps it (private counters: trl has no public hook)."""
    trainer._total_train_tokens += total // trainer._tp_size
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]
