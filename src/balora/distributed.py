"""Batch-statistic terms under DDP (gather rows from every rank with gradients flowing) and the step's item counts.

The covariance and SVD terms are statistics of the whole batch. Under ``torchrun`` / ``accelerate
launch`` each rank sees only its shard, so with ``BALoRAConfig.gather_batch_statistics`` the rows are
gathered with ``torch.distributed.nn.functional.all_gather`` (differentiable: its backward sums each
rank's gradient into the owner of the rows). Every rank then computes the same global term; DDP's
gradient averaging divides the W copies back to exactly the single-process gradient.

Normalisation (docs/method.md, "Averaging over micro-batches and ranks"): with gradient accumulation A and P
data-parallel ranks, DDP averages gradients over ranks and Trainer sums micro-batch gradients. A term that is a mean
over items (examples for NLU, trained positions for NLG) is multiplied by ``P * n_local / N``
(:meth:`Normalizer.share`), N the items of the whole optimizer step over all micro-batches and ranks: the sum over
micro-batches and the rank average then give exactly the mean over the N items, as one batch of B*A*P would. Batch
statistics (covariance, SVD) are computed on the micro-batch gathered over ranks; their weight is the micro-batch's
share of the step's items (:meth:`Normalizer.stat_share`), which is exactly 1 without accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

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


# ------------------------------------------------------------------------------------ normalisation
@dataclass
class Normalizer:
    """Item counts of one optimizer step (all micro-batches, all ranks); ``None`` = this micro-batch alone."""

    world: int = 1
    rows: Optional[torch.Tensor] = None  # examples
    tokens: Optional[torch.Tensor] = None  # trained positions (labels[:, 1:] != -100)

    @classmethod
    def for_batches(cls, batches: list, world: int, device: Any) -> "Normalizer":
        """Counts of the micro-batches Trainer prefetched for one optimizer step, summed over ranks (one
        all-reduce, no host synchronisation)."""
        rows, tokens = 0, torch.zeros((), dtype=torch.long, device=device)
        for batch in batches:
            rows += rows_of(batch)
            labels = batch.get("labels") if hasattr(batch, "get") else None
            if torch.is_tensor(labels) and labels.dim() == 2:
                tokens = tokens + labels[:, 1:].ne(-100).sum().to(device)
        counts = torch.stack([torch.tensor(rows, device=device), tokens]).to(torch.float32)
        counts = all_reduce_sum(counts)
        return cls(world=world, rows=counts[0], tokens=counts[1])

    def share(self, local: Union[int, torch.Tensor], kind: str) -> Union[float, torch.Tensor]:
        """Weight of a mean over ``local`` items of this micro-batch: ``P * local / N`` (1 for a lone batch)."""
        total = getattr(self, kind)
        if total is None:
            return 1.0
        return self.world * local / total.clamp_min(1)

    def stat_share(self, rows: int, kind: str, gathered: bool) -> Union[float, torch.Tensor]:
        """Weight of a batch statistic over ``rows`` items (gathered over ranks, or this rank's only).

        Gathered: every rank computes the same term and its gradient reaches each rank's rows P times
        (all_gather's backward sums), which DDP's average divides back, so the weight is ``rows / N``.
        Per rank: ``P * rows / N``, as for a mean."""
        total = getattr(self, kind)
        if total is None:
            return 1.0
        return (1 if gathered else self.world) * rows / total.clamp_min(1)


def rows_of(batch: Any) -> int:
    """Examples in a batch (the first dimension of its inputs)."""
    for key in ("input_ids", "labels", "inputs_embeds"):
        value = batch.get(key) if hasattr(batch, "get") else None
        if torch.is_tensor(value):
            return int(value.shape[0])
    first = next(v for v in batch.values() if torch.is_tensor(v))
    return int(first.shape[0])
