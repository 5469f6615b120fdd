"""The pretrained reference: the ORIGINAL model's outputs, exact and cheap (METHOD.md section 5).

With PiSSA the frozen base weights are the residual ``W_res = W - s B0 A0``; disabling the adapter gives
``W_res``, not ``W``. The default reference therefore keeps a frozen copy ``(A0, B0)`` of the initial
adapter as a second adapter and switches to it for a no-grad pass: ``W_res + s B0 A0 = W``, no second
model in memory. For zero-initialised adapters (plain LoRA, DoRA, LoHa, AdaLoRA) disabling the adapter
is exact. The classification head (a peft ``modules_to_save`` wrapper) falls back to its frozen
original, i.e. the head as it was at step 0.

The switch writes peft's per-layer ``_active_adapter`` / ``_disable_adapters`` attributes directly
instead of calling ``set_adapter()`` / ``disable_adapter()``: those public calls also flip
``requires_grad`` on adapter weights, which is fragile inside a training step (optimizer state, DDP's
reducer). Only these two attributes are touched and both are restored on exit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

REFERENCE_ADAPTER = "balora_reference"
# Initialisations that move part of the pretrained weight into the adapter (the base becomes a residual).
_RESIDUAL_INITS = ("pissa", "olora", "corda", "eva", "loftq")


@dataclass
class ReferenceSpec:
    """How the reference is computed for a prepared model."""

    mode: str  # "adapter" | "disable" | "model" | "cached"
    adapter_name: str = "default"
    reference_adapter: str = REFERENCE_ADAPTER
    model: Optional[nn.Module] = None  # only for mode="model"


def _tuner_layers(model: nn.Module) -> Iterator[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            yield module


def init_modifies_base(peft_config: Any) -> bool:
    """True when the adapter's initialisation rewrote the base weights (PiSSA, OLoRA, ...)."""
    init = getattr(peft_config, "init_lora_weights", True)
    return isinstance(init, str) and init.lower().startswith(_RESIDUAL_INITS)


def add_reference_adapter(model: nn.Module, adapter_name: str = "default") -> ReferenceSpec:
    """Add a frozen copy of ``adapter_name``'s current (initial) weights as :data:`REFERENCE_ADAPTER`.

    The copy is added with a *plain* init (re-running the PiSSA init on the already residual base would
    silently change the model), then the initial A0, B0 are copied in and frozen. ``requires_grad`` of the
    trained adapter is left exactly as it was.
    """
    import copy

    from peft.tuners.lora import LoraLayer

    config = copy.deepcopy(model.peft_config[adapter_name])
    config.init_lora_weights = True
    config.modules_to_save = None
    if getattr(config, "use_dora", False):
        raise ValueError("a reference adapter copy is not supported for DoRA with a residual init")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.add_adapter(REFERENCE_ADAPTER, config)
    copied = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and adapter_name in module.lora_A and REFERENCE_ADAPTER in module.lora_A:
                module.lora_A[REFERENCE_ADAPTER].weight.copy_(module.lora_A[adapter_name].weight)
                module.lora_B[REFERENCE_ADAPTER].weight.copy_(module.lora_B[adapter_name].weight)
                module.scaling[REFERENCE_ADAPTER] = module.scaling[adapter_name]
                copied += 1
    if copied == 0:
        raise RuntimeError(f"no LoRA layer of adapter {adapter_name!r} found to copy into the reference")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable and REFERENCE_ADAPTER not in name)
    # Keep the trained adapter the active one, without set_adapter() (which would flip requires_grad).
    for module in _tuner_layers(model):
        module._active_adapter = [adapter_name]
    return ReferenceSpec(mode="adapter", adapter_name=adapter_name)


@contextlib.contextmanager
def reference_mode(model: nn.Module, spec: ReferenceSpec) -> Iterator[nn.Module]:
    """Inside the block, ``model`` computes the ORIGINAL pretrained function (in eval mode, no dropout).

    Yields the module to call: ``model`` itself, or the held original model for ``mode="model"``.
    """
    if spec.mode == "model":
        if spec.model is None:
            raise ValueError("ReferenceSpec(mode='model') needs the original model")
        yield spec.model
        return
    if spec.mode not in ("adapter", "disable"):
        raise ValueError(f"reference_mode cannot switch a model to reference mode {spec.mode!r}")
    layers = list(_tuner_layers(model))
    saved = [(m, m._active_adapter, m._disable_adapters) for m in layers]
    was_training = model.training
    try:
        for m in layers:
            if spec.mode == "adapter":
                m._active_adapter = [spec.reference_adapter]
            else:
                m._disable_adapters = True
        model.eval()
        yield model
    finally:
        for m, active, disabled in saved:
            m._active_adapter = active
            m._disable_adapters = disabled
        model.train(was_training)


def reference_spec_for(model: nn.Module, mode: str = "auto", adapter_name: str = "default") -> ReferenceSpec:
    """Choose and set up the reference for a freshly prepared peft model (before any training step)."""
    peft_config = getattr(model, "peft_config", {}).get(adapter_name)
    if mode == "auto":
        mode = "adapter" if peft_config is not None and init_modifies_base(peft_config) else "disable"
    if mode == "adapter":
        if peft_config is None or not init_modifies_base(peft_config):
            return ReferenceSpec(mode="disable", adapter_name=adapter_name)
        return add_reference_adapter(model, adapter_name)
    if mode in ("disable", "cached"):
        if mode == "disable" and peft_config is not None and init_modifies_base(peft_config):
            raise ValueError(
                "reference='disable' is wrong for a residual initialisation "
                f"({peft_config.init_lora_weights!r}): the base is W - BA. Use 'auto' or 'adapter'."
            )
        return ReferenceSpec(mode=mode, adapter_name=adapter_name)
    raise ValueError(f"unknown reference mode {mode!r}; expected auto, adapter, disable, cached or model")


@torch.no_grad()
def reference_outputs(model: nn.Module, spec: ReferenceSpec, **inputs: Any) -> Any:
    """One no-grad forward pass of the original pretrained function on ``inputs``."""
    with reference_mode(model, spec) as ref:
        return ref(**inputs)


class TeacherCache:
    """Per-example teacher outputs (NLU logits, and pooled features for regression), filled once.

    Rows are addressed by an integer example index carried in the batch (``balora_index``).
    :func:`balora.training.nlu.fill_teacher_cache` runs the reference over the training set before
    training and ``put``\ s the rows; ``lookup`` returns the rows of a batch.
    """

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.values else next(iter(self.values.values())).shape[0]

    def put(self, name: str, index: torch.Tensor, rows: torch.Tensor, size: int) -> None:
        store = self.values.get(name)
        if store is None:
            store = torch.full((size, *rows.shape[1:]), float("nan"), dtype=torch.float32)
            self.values[name] = store
        store[index.cpu()] = rows.detach().float().cpu()

    def lookup(self, name: str, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        if name not in self.values:
            raise KeyError(f"teacher cache has no {name!r} (fill it before training)")
        store = self.values[name]
        idx = index.cpu()
        outside = idx[(idx < 0) | (idx >= store.shape[0])]
        if outside.numel():
            raise KeyError(f"teacher cache has no entry for example index {outside.tolist()[:5]} "
                           f"(it holds {store.shape[0]} examples; was the cache filled from this data?)")
        rows = store[idx]
        if torch.isnan(rows).any():
            missing = index[torch.isnan(rows).flatten(1).any(1).to(index.device)].tolist()[:5]
            raise KeyError(f"teacher cache has no entry for example index {missing} (was the cache filled from this data?)")
        return rows.to(device)
