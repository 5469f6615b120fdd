"""The trainer and objectives read no tensor on the host per micro-batch (term values stay
on the device until a log; NaN checks happen once per optimizer step)."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model

from .tiny import nlg_batch, nlu_batch, tiny_bert, tiny_llama


@pytest.fixture
def balora_syncs(monkeypatch):
    """Counts .item() / .tolist() / bool() / float() / int() of tensors called from balora's own modules."""
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("balora"):
                calls.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


@pytest.mark.parametrize("task,fused", [("nlu", True), ("nlg", True), ("nlg", False)])
def test_no_host_sync_per_micro_batch(task, fused, balora_syncs, tmp_path):
    if task == "nlu":
        model, batch, cfg = tiny_bert(), nlu_batch(), BALoRAConfig()
    else:
        model, batch, cfg = tiny_llama(), nlg_batch(), BALoRAConfig(task="nlg", fused_nlg=fused)
    prepared = prepare_model(model, "ba-lora", r=4, config=cfg)
    pm = prepared.model
    trainer = BALoRATrainer(model=pm, objective=prepared.objective(),
                            args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    pm.train()
    trainer.compute_loss(pm, batch).backward()  # the first step also checks the output layer once (fused)
    balora_syncs.clear()
    for _ in range(2):
        trainer.compute_loss(pm, batch).backward()
    assert balora_syncs == []
    trainer.guard.check(pm, 1)  # the one read per optimizer step
    assert len(balora_syncs) == 1
