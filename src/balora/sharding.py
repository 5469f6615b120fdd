"""Sharded training (FSDP, DeepSpeed ZeRO) and the PiSSA init.

PiSSA's SVD runs in :func:`balora.prepare_model`, before Trainer shards the model: every rank holds the full
weights it loaded, decomposes each adapted weight once, and FSDP / ZeRO then keeps 1/P of the residual base
and of the adapter on each rank. Nothing is gathered for the init (each rank already has the full weights;
cost: the SVD computed on every rank, and a full model in memory per rank until sharding, as for plain loading
without ``cpu_ram_efficient_loading`` / ``zero3_init_flag``, which balora's configs leave off for that reason).

Unlike DDP, which broadcasts rank 0's parameters when it wraps the model, FSDP2 and ZeRO keep each rank's own
shard of its own tensors: ranks whose PiSSA inits differ (the randomised ``pissa_niter`` SVD under different
seeds, different hardware or library versions) would silently train a model that is no decomposition of ``W``.
:func:`check_ranks_agree` compares a checksum of the adapters and the adapted base weights over ranks (two
scalars, one all-reduce pair, once at trainer start) and refuses such a start.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .distributed import is_distributed


@torch.no_grad()
def init_checksum(model: nn.Module) -> torch.Tensor:
    """``[sum, sum of squares, weighted sum]`` (float64) of the adapter weights (trained and reference copy) and the
    base weights of the adapted layers, in a fixed order."""
    total = torch.zeros(3, dtype=torch.float64)
    i = 0
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_" not in name and not name.endswith("base_layer.weight"):
            continue
        t = param.detach()
        t = t.dequantize() if hasattr(t, "dequantize") and type(t) not in (torch.Tensor, nn.Parameter) else t
        t = t.double().cpu()
        i += 1
        total += torch.stack([t.sum(), t.square().sum(), t.sum() * i])
    return total


def check_ranks_agree(model: nn.Module, sharded: bool = True, rtol: float = 1e-6) -> bool:
    """Whether the ranks' initial adapters / residual bases agree (see the module docstring). A collective: every
    rank must call it. When they differ: raise with ``sharded`` (FSDP, ZeRO), else warn (DDP broadcasts rank 0's
    weights when it wraps the model)."""
    if not is_distributed():
        return True
    import torch.distributed as dist

    local = init_checksum(model)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    hi, lo = local.to(device), local.clone().to(device)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    spread = (hi - lo).abs() / hi.abs().clamp_min(1e-30)
    if not bool((spread > rtol).any()):
        return True
    message = (f"rank {dist.get_rank()}: the initial adapters / PiSSA residual bases differ between ranks (relative "
               f"checksum spread {float(spread.max()):.3g}); sharded training (FSDP, ZeRO) would combine shards of "
               "different decompositions. Seed every rank the same before prepare_model (transformers.set_seed) when "
               "using pissa_niter, or use the exact SVD (pissa_niter unset)")
    if sharded:
        raise ValueError(message)
    logging.getLogger(__name__).warning("%s; DDP broadcasts rank 0's weights, so this run is consistent", message)
    return False


__all__ = ["init_checksum", "check_ranks_agree"]
