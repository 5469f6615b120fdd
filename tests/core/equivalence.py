"""Shared by test_equivalence.py and equivalence_worker.py: train a tiny model with BALoRATrainer under a
given split of the same 8-example batch (per-device batch x accumulation x processes) and return the
logged losses and the trained weights."""

from __future__ import annotations

import os

import torch
from transformers import TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model

from .tiny import tiny_bert, tiny_llama

STEPS = 3
# (per-device batch, accumulation) for one optimizer step of 8 examples on 1 or 2 processes
SPLITS = {"single": (8, 1), "accumulated": (2, 4), "ddp": (4, 1), "ddp-accumulated": (2, 2)}
LAMBDAS = {
    "zero": dict(lambda_consistency=0.0, lambda_diversity=0.0, lambda_svd=0.0),
    "items": dict(lambda_diversity=0.0, lambda_svd=0.0),  # NLU: consistency only (a mean over examples)
    "tokens": dict(lambda_svd=0.0),  # NLG: KL and entropy (means over trained positions)
    "default": {},
}
CASES = [  # (task, method, lambdas, fused)
    ("nlu", "lora", "zero", True), ("nlu", "pissa", "zero", True), ("nlu", "full", "zero", True),
    ("nlu", "ba-lora", "zero", True), ("nlu", "ba-lora", "items", True), ("nlu", "lora+reg", "items", True),
    ("nlu", "ba-lora", "default", True),
    ("nlg", "pissa", "zero", True), ("nlg", "lora", "zero", True), ("nlg", "ba-lora", "zero", True),
    ("nlg", "ba-lora", "zero", False), ("nlg", "ba-lora", "tokens", True), ("nlg", "ba-lora", "tokens", False),
    ("nlg", "ba-lora", "default", True), ("nlg", "ba-lora", "default", False),
    # nlg0: rows 0-3 train no token, so one rank (or micro-batch) has no trained position at all; it must
    # still join the gathered SVD term (and its backward) and add nothing else.
    ("nlg0", "ba-lora", "zero", True), ("nlg0", "ba-lora", "default", True), ("nlg0", "ba-lora", "default", False),
]

# launched under FSDP by test_fsdp.py (fsdp_worker.py): the full-logits and the fused NLG paths
FSDP_CASES = [("nlg", "pissa", "zero", False), ("nlg", "ba-lora", "tokens", False), ("nlg", "ba-lora", "default", False),
              ("nlg", "ba-lora", "default", True)]


def rows(task: str) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(8):
        if task == "nlu":
            out.append({"input_ids": torch.randint(1, 64, (10,), generator=g),
                        "attention_mask": torch.ones(10, dtype=torch.long), "labels": torch.randint(0, 3, (), generator=g)})
        else:  # ragged: pairs of rows with 1 or 10 trained tokens
            ids = torch.randint(1, 96, (12,), generator=g)
            labels = ids.clone()
            labels[: 10 if (i // 2) % 2 == 0 else 1] = -100
            if task == "nlg0" and i < 4:
                labels[:] = -100
            out.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": labels})
    return out


class Rows(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def train(task: str, method: str, lambdas: str, fused: bool, split: str, out_dir: str) -> dict:
    batch, accumulation = SPLITS[split]
    model = tiny_bert() if task == "nlu" else tiny_llama()
    regularized = method == "ba-lora" or method.endswith("+reg")
    cfg = BALoRAConfig(task=task[:3], fused_nlg=fused, svd_estimator="exact", **LAMBDAS[lambdas]) if regularized else None
    prepared = prepare_model(model, method, r=4, config=cfg)
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                             learning_rate=0.5, optim="sgd", max_steps=STEPS, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", seed=0, disable_tqdm=True, lr_scheduler_type="constant", max_grad_norm=0.0,
                             ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    data = Rows(rows(task) * STEPS)
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, train_dataset=data)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(data)  # same rows per step
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    params = sorted((n, p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    sharded = any(hasattr(p, "full_tensor") for _, p in params)  # FSDP2: DTensor shards, gathered to compare
    weights = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten() for _, p in params])
    return {"loss": [h["loss"] for h in logs], "weights": weights.tolist(), "sharded": sharded,
            "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
            "terms": {k: [h[k] for h in logs if k in h] for k in ("loss_consistency", "loss_diversity", "loss_svd")}}
