"""The only place balora touches peft internals: the per-layer adapter switch of the reference pass.

peft's public ``set_adapter()`` / ``disable_adapter()`` also flip ``requires_grad`` on adapter weights,
which is fragile inside a training step (optimizer state, DDP's reducer). The reference pass therefore
sets two per-layer attributes of peft's ``BaseTunerLayer`` / ``AuxiliaryTrainingWrapper`` directly and
restores them on exit. peft documents them only through read-only properties (``active_adapters``,
``disable_adapters``); ``tests/core/test_peft_compat.py`` pins that writing them is what those properties
read, and pyproject.toml bounds peft to the tested range (0.14 <= peft < 0.22; tested with 0.21.2).
"""

from __future__ import annotations

from typing import Iterator, Sequence

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
