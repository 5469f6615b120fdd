"""Quantised bases (QPiSSA): decompose the full-precision weight, quantise only the residual.

PiSSA's recipe for a quantised base (Meng et al., 2024, "QPiSSA"): run the PiSSA SVD on the FULL-precision
weight ``W = U S V^T``, put the principal part in the adapter ``(A0, B0)`` (kept in 16/32 bit, trained), and
quantise only the residual ``W_res = W - s B0 A0``. The model at step 0 computes ``Q(W_res) + s B0 A0``,
whose error ``||W - Q(W_res) - s B0 A0|| = ||W_res - Q(W_res)||`` is smaller than quantise-then-LoRA's
(QLoRA) ``||W - Q(W)||`` because the residual has the large singular values removed (smaller range, so a
finer quantisation grid). :func:`quantization_errors` measures both on a prepared model.

The pretrained reference (:mod:`balora.reference`, the frozen copy ``(A0, B0)`` switched in for a no-grad
pass) then computes ``Q(W_res) + s B0 A0``: the original model up to exactly that residual quantisation
error, nothing else (measured by :func:`reference_deviation`). For zero-initialised adapters (``lora``:
QLoRA) the reference is the disabled adapter, i.e. ``Q(W)``.

Quantisation is torchao's weight-only quantisation (``pip install 'balora[quant]'``; runs on CPU and CUDA):

* ``int8``: ``Int8WeightOnlyConfig`` (symmetric, one scale per output channel), int8 storage;
* ``int4``: ``IntxWeightOnlyConfig(torch.int4, PerGroup(group_size))`` (asymmetric, per group): the 4-bit
  error, but on CPU torchao stores the 4-bit values unpacked in int8 (no memory saving over ``int8``);
  on CUDA use bitsandbytes' NF4 (peft's QLoRA path) for 4-bit memory.

Only the base layers of the adapted linear layers are quantised (the residuals); embeddings, norms and the
output layer stay as loaded. The adapter and the reference copy stay in the model's float dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

SCHEMES = ("int8", "int4")


def _require_torchao():
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("quantised bases need torchao: pip install 'balora[quant]'") from err
    return quantize_


def quant_config(scheme: str, group_size: int = 128) -> Any:
    """The torchao config of a scheme (:data:`SCHEMES`)."""
    _require_torchao()
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if scheme == "int8":
        return Int8WeightOnlyConfig()
    if scheme == "int4":
        if group_size < 1:
            raise ValueError(f"quantize group_size must be >= 1, got {group_size}")
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise ValueError(f"quantize must be one of {', '.join(SCHEMES)} (or None); got {scheme!r}")


def adapted_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Linear]]:
    """``(name, lora_layer, base_linear)`` for every peft LoRA layer wrapping an ``nn.Linear``."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            if isinstance(base, nn.Linear):
                yield name, module, base


def quantize_base(model: nn.Module, scheme: str, group_size: int = 128) -> int:
    """Quantise, in place, the base weights of the adapted linear layers (PiSSA: the residuals).

    Call after the adapter (and the reference copy) exist: the PiSSA SVD must see the full-precision weight.
    Returns the number of layers quantised."""
    quantize_ = _require_torchao()
    config = quant_config(scheme, group_size)
    bases = {id(base) for _, _, base in adapted_linears(model)}
    if not bases:
        raise ValueError("quantize: the model has no peft LoRA layer on an nn.Linear (use a LoRA/PiSSA method)")
    for base in [m for m in model.modules() if id(m) in bases]:
        if base.in_features % (group_size if scheme == "int4" else 1):
            raise ValueError(f"quantize='int4': in_features {base.in_features} of a layer is not a multiple of "
                             f"group_size {group_size}")
    quantize_(model, config, filter_fn=lambda module, fqn: id(module) in bases)
    return len(bases)


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """A plain float copy of a (torchao-quantised or plain) weight."""
    if type(weight) in (torch.Tensor, nn.Parameter) or not hasattr(weight, "dequantize"):
        return weight.detach().clone()
    return weight.dequantize()


def quantize_tensor(weight: torch.Tensor, scheme: str, group_size: int = 128) -> torch.Tensor:
    """``Q(W)`` dequantised: the same quantisation applied to a standalone weight (for the comparisons)."""
    quantize_ = _require_torchao()
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
    quantize_(lin, quant_config(scheme, group_size))
    return dequantized(lin.weight).to(weight.dtype)


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage of a tensor, counting the inner tensors of a tensor subclass (torchao's qdata, scales)."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def base_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers that are not adapter weights (each tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if ".lora_" in name or id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t.data if isinstance(t, nn.Parameter) else t)
    return total


@dataclass
class QuantErrors:
    """Relative Frobenius errors summed over the adapted layers: ``sqrt(sum ||err||^2) / sqrt(sum ||W||^2)``."""

    qpissa: float  # ||W - (Q(W_res) + s B0 A0)||: the step-0 model and the reference of a QPiSSA run
    qlora: float  # ||W - Q(W)||: quantise-then-LoRA (zero-initialised adapter)
    layers: int

    @property
    def ratio(self) -> float:
        return self.qpissa / self.qlora if self.qlora else math.nan


@torch.no_grad()
def quantization_errors(model: nn.Module, originals: dict[str, torch.Tensor], scheme: str, group_size: int = 128,
                        adapter_name: Optional[str] = None) -> QuantErrors:
    """The PiSSA paper's comparison on a prepared, quantised model.

    ``originals`` maps the LoRA layer names of :func:`adapted_linears` to the full-precision weights ``W``
    (taken before :func:`balora.prepare_model`). The adapter used is the frozen reference copy ``(A0, B0)``
    when present, else ``adapter_name`` (default ``"default"``, call before training)."""
    from .reference import REFERENCE_ADAPTER

    err_q, err_l, norm = 0.0, 0.0, 0.0
    n = 0
    for name, layer, base in adapted_linears(model):
        if name not in originals:
            continue
        w = originals[name].float()
        adapter = adapter_name or (REFERENCE_ADAPTER if REFERENCE_ADAPTER in layer.lora_A else "default")
        delta = layer.scaling[adapter] * (layer.lora_B[adapter].weight.float() @ layer.lora_A[adapter].weight.float())
        err_q += float((w - dequantized(base.weight).float() - delta).square().sum())
        err_l += float((w - quantize_tensor(w, scheme, group_size).float()).square().sum())
        norm += float(w.square().sum())
        n += 1
    if n == 0:
        raise ValueError("quantization_errors: no adapted layer matches the original weights given")
    return QuantErrors(math.sqrt(err_q / norm), math.sqrt(err_l / norm), n)


def original_weights(model: nn.Module, target_names: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
    """Copies of the linear weights of a plain model, keyed as peft will name their LoRA layers
    (``base_model.model.<name>``), for :func:`quantization_errors`."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (target_names is None or name.split(".")[-1] in target_names):
            out[f"base_model.model.{name}"] = module.weight.detach().clone()
    return out


@torch.no_grad()
def reference_deviation(model: nn.Module, original: nn.Module, batch: dict, reference: Any) -> dict[str, float]:
    """How far the reference of a quantised run is from the full-precision original on ``batch``: the
    maximum absolute logit difference, relative to the original's largest logit, and the mean KL(P_orig || P_ref)
    over positions. ``reference``: the model's pretrained reference (``PreparedModel.reference``)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ref = reference.forward(model, inputs, None)["logits"].float()
    orig = original(**inputs).logits.float()
    kl = torch.nn.functional.kl_div(ref.log_softmax(-1), orig.log_softmax(-1), log_target=True, reduction="none")
    mask = inputs.get("attention_mask")
    per_pos = kl.sum(-1)
    mean_kl = float(per_pos[mask.bool()].mean()) if mask is not None else float(per_pos.mean())
    return {"max_abs_logit_diff": float((ref - orig).abs().max()),
            "rel_max_logit_diff": float((ref - orig).abs().max() / orig.abs().max()),
            "mean_kl": mean_kl}


__all__ = ["SCHEMES", "quant_config", "quantize_base", "quantize_tensor", "dequantized", "base_bytes",
           "tensor_bytes", "QuantErrors", "quantization_errors", "original_weights", "reference_deviation",
           "adapted_linears"]
