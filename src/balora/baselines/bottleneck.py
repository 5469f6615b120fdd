"""Houlsby (HAdapter) and Pfeiffer (PAdapter) bottleneck adapters, hand-written.

AdapterHub's ``adapters`` package would provide these, but it pins transformers 4.x and conflicts
with the transformers 5 this project uses; peft has no bottleneck adapters. So they are small
``nn.Module`` s here, inserted by wrapping a transformer layer's output projection:

* Houlsby et al. (2019): an adapter after the attention output projection and one after the FFN
  output projection, both inside the residual branch (before the residual add / layer norm).
* Pfeiffer et al. (2021): one adapter after the FFN output projection.

Wrapped projections: BERT / RoBERTa / DeBERTa-v2 ``*.attention.output.dense`` and ``*.output.dense``,
GPT-2 ``attn.c_proj`` and ``mlp.c_proj``, Llama-style ``self_attn.o_proj`` and ``mlp.down_proj``. The
adapter acts on the projection's output before the model's own dropout. Its up-projection starts at
zero, so at initialisation the model computes exactly what it did before. All other weights are
frozen except the task head. The wrapped layer keeps the original under ``base_layer`` (as peft
does), so re-apply the same function before loading a saved state dict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from balora.baselines.bitfit import DEFAULT_HEAD_NAMES, set_head_trainable

__all__ = ["BottleneckAdapter", "BottleneckConfig", "WithAdapter", "apply_houlsby", "apply_pfeiffer"]

#: Attention output projections (regexes matched against full module names).
ATTN_OUTPUT_PATTERNS: tuple[str, ...] = (r"(^|\.)attention\.output\.dense$", r"(^|\.)attn\.c_proj$",
                                         r"(^|\.)self_attn\.o_proj$")
#: FFN output projections.
FFN_OUTPUT_PATTERNS: tuple[str, ...] = (r"(^|\.)layer\.\d+\.output\.dense$", r"(^|\.)mlp\.c_proj$",
                                        r"(^|\.)mlp\.down_proj$")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class BottleneckConfig:
    """Size and placement of bottleneck adapters."""

    bottleneck_dim: int | None = field(
        default=None, metadata={"help": "Adapter hidden size; exclusive with reduction_factor."})
    reduction_factor: float | None = field(
        default=None, metadata={"help": "hidden_size / bottleneck size (default 16 when neither is set)."})
    activation: str = field(default="relu", metadata={"help": f"Non-linearity: one of {sorted(_ACTIVATIONS)}."})
    placement: str = field(default="houlsby", metadata={"help": "'houlsby' (attention + FFN) or 'pfeiffer' (FFN)."})

    def __post_init__(self) -> None:
        if self.bottleneck_dim is not None and self.reduction_factor is not None:
            raise ValueError("give bottleneck_dim or reduction_factor, not both "
                             f"(bottleneck_dim={self.bottleneck_dim}, reduction_factor={self.reduction_factor})")
        if self.bottleneck_dim is None and self.reduction_factor is None:
            self.reduction_factor = 16
        if self.bottleneck_dim is not None and self.bottleneck_dim < 1:
            raise ValueError(f"bottleneck_dim must be >= 1, got {self.bottleneck_dim}")
        if self.reduction_factor is not None and self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.placement not in ("houlsby", "pfeiffer"):
            raise ValueError(f"placement must be 'houlsby' or 'pfeiffer', got {self.placement!r}")

    def size_for(self, hidden: int) -> int:
        """Bottleneck size for a layer of width ``hidden``."""
        if self.bottleneck_dim is not None:
            return self.bottleneck_dim
        return max(1, int(hidden // self.reduction_factor))


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with ``up`` zero-initialised (identity at init)."""

    def __init__(self, hidden: int, bottleneck: int, activation: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class WithAdapter(nn.Module):
    """A projection followed by a bottleneck adapter; exposes the base ``weight``/``bias``."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.base_layer(*args, **kwargs))


def _out_features(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if hasattr(module, "nf"):  # transformers' GPT-2 Conv1D: weight is (in, out)
        return int(module.nf)
    raise TypeError(f"{name}: cannot insert an adapter after a {type(module).__name__}; expected nn.Linear or Conv1D")


def _insert(model: nn.Module, patterns: Sequence[str], config: BottleneckConfig) -> list[str]:
    regexes = [re.compile(p) for p in patterns]
    targets = [(n, m) for n, m in model.named_modules()
               if any(r.search(n) for r in regexes) and not isinstance(m, WithAdapter) and ".base_layer" not in n]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        hidden = _out_features(module, name)
        ref = module.weight
        adapter = BottleneckAdapter(hidden, config.size_for(hidden), config.activation).to(ref.device, ref.dtype)
        setattr(parent, child, WithAdapter(module, adapter))
    return [n for n, _ in targets]


def _apply(model: nn.Module, config: BottleneckConfig, head_names: Sequence[str], train_head: bool,
           attn_patterns: Sequence[str], ffn_patterns: Sequence[str]) -> nn.Module:
    patterns = list(ffn_patterns) + (list(attn_patterns) if config.placement == "houlsby" else [])
    for param in model.parameters():
        param.requires_grad_(False)
    wrapped = _insert(model, patterns, config)
    if not wrapped:
        sample = [n for n, _ in model.named_modules()][:12]
        raise ValueError(f"no output projections matched {patterns} in {type(model).__name__}; "
                         f"module names start with {sample}")
    for module in model.modules():
        if isinstance(module, WithAdapter):
            module.adapter.requires_grad_(True)
    if train_head:
        set_head_trainable(model, head_names)
    return model


def apply_houlsby(model: nn.Module, bottleneck_dim: int | None = None, *, reduction_factor: float | None = None,
                  activation: str = "silu", head_names: Sequence[str] = DEFAULT_HEAD_NAMES, train_head: bool = True,
                  attn_patterns: Sequence[str] = ATTN_OUTPUT_PATTERNS,
                  ffn_patterns: Sequence[str] = FFN_OUTPUT_PATTERNS) -> nn.Module:
    """Insert Houlsby adapters (after attention and FFN outputs) in place; only adapters + head train.

    Args:
        model: a transformers model (BERT/RoBERTa/DeBERTa-v2, GPT-2, Llama-style) or any module whose
            output projections match ``attn_patterns`` / ``ffn_patterns``.
        bottleneck_dim: adapter hidden size; or ``reduction_factor`` (hidden / bottleneck, default 16).
        activation: ``relu``, ``gelu``, ``tanh`` or ``silu`` (defaults follow AdapterHub: Houlsby swish,
            Pfeiffer ReLU).
        head_names: modules of the task head kept trainable (see ``DEFAULT_HEAD_NAMES``).
        train_head: set False for a model without a head.

    Returns:
        The same model.
    """
    config = BottleneckConfig(bottleneck_dim, reduction_factor, activation, "houlsby")
    return _apply(model, config, head_names, train_head, attn_patterns, ffn_patterns)


def apply_pfeiffer(model: nn.Module, bottleneck_dim: int | None = None, *, reduction_factor: float | None = None,
                   activation: str = "relu", head_names: Sequence[str] = DEFAULT_HEAD_NAMES, train_head: bool = True,
                   ffn_patterns: Sequence[str] = FFN_OUTPUT_PATTERNS) -> nn.Module:
    """Insert Pfeiffer adapters (after each FFN output) in place; only adapters + head train.

    Arguments as in :func:`apply_houlsby`.
    """
    config = BottleneckConfig(bottleneck_dim, reduction_factor, activation, "pfeiffer")
    return _apply(model, config, head_names, train_head, (), ffn_patterns)
