"""balora: Bias-Alleviating Low-Rank Adaptation (BA-LoRA) on peft and transformers.

Public API::

    from balora import BALoRAConfig, prepare_model, BALoRATrainer, regularizers
    from balora import export_adapter          # PiSSA -> plain LoRA for the original base, merge

    prepared = prepare_model(model, "ba-lora", r=8, config=BALoRAConfig(...))   # a PreparedModel
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, ...)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BALoRAConfig": ("balora.config", "BALoRAConfig"),
    "prepare_model": ("balora.methods", "prepare_model"),
    "PreparedModel": ("balora.methods", "PreparedModel"),
    "METHODS": ("balora.methods", "METHODS"),
    "BALoRATrainer": ("balora.trainer", "BALoRATrainer"),
    "TeacherCache": ("balora.reference", "TeacherCache"),
    "reference_mode": ("balora.reference", "reference_mode"),
    "export_adapter": ("balora.export", "export_adapter"),
    "regularizers": ("balora.regularizers", None),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import balora` (and the CLI's --help) stays fast; torch/transformers load on first use.
    if name not in _LAZY:
        raise AttributeError(f"module 'balora' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
