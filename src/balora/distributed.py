"""Batch-statistic terms under DDP: gather rows from every rank with gradients flowing.

The covariance and SVD terms are statistics of the whole batch. Under ``torchrun`` / ``accelerate
launch`` each rank sees only its shard, so with ``BALoRAConfig.gather_batch_statistics`` the rows are
gathered with ``torch.distributed.nn.functional.all_gather`` (differentiable: its backward sums each
rank's gradient into the owner of the rows). Every rank then computes the same global term; DDP's
gradient averaging divides the W copies back to exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (rows x ...) from all ranks in rank order, differentiably.

    Ranks may hold different numbers of rows: sizes are exchanged first, rows are zero-padded to the
    largest, gathered, and the padding is cut off again.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = all_gather(x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes_int)], dim=0)


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (in place; a no-op in one process). No host synchronisation."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
