"""Launched by test_ddp.py with torchrun (2 CPU processes, gloo).

Each rank trains on its half of a global batch with BALoRATrainer.compute_loss under DDP; rank 0 also
computes the single-process loss and gradients on the whole batch and writes both to a JSON file.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from balora import BALoRAConfig, BALoRATrainer, prepare_model  # noqa: E402
from tests.core.tiny import nlu_batch, tiny_bert  # noqa: E402


def build(gather: bool):
    cfg = BALoRAConfig(lambda_consistency=0.3, lambda_diversity=0.5, lambda_svd=0.4, svd_top_k=1,
                       gather_batch_statistics=gather)
    prepared = prepare_model(tiny_bert(seed=0), "ba-lora", r=4, config=cfg)
    model = prepared.model
    # Move away from the initialisation so every term has a gradient.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.train()
    return model, prepared.objective()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def main(out_path: str, gather: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    args = TrainingArguments(output_dir=os.path.dirname(out_path), use_cpu=True, report_to=[], disable_tqdm=True)
    full = nlu_batch(n=8)
    shard = {k: v.chunk(world)[rank] for k, v in full.items()}
    model, objective = build(gather)
    ddp = DDP(model)
    trainer = BALoRATrainer(model=model, objective=objective, args=args)
    loss = trainer.compute_loss(ddp, shard)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    dist_grads = grads(model)
    if rank == 0:
        single, objective = build(gather=False)  # one process, whole batch: nothing to gather (and no collective)
        single_loss = BALoRATrainer(model=single, objective=objective, args=args).compute_loss(single, full)
        single_loss.backward()
        single_grads = grads(single)
        diff = max((dist_grads[n] - single_grads[n]).abs().max().item() for n in single_grads)
        scale = max(g.abs().max().item() for g in single_grads.values())
        with open(out_path, "w") as fh:
            json.dump({"ddp_loss": mean_loss.item(), "single_loss": single_loss.item(),
                       "max_grad_diff": diff, "grad_scale": scale, "world": world}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "gather")
