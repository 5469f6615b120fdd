"""Numerical faults: a clear error naming the step and the examples,
nothing applied; nan_policy='skip_term' skips any non-finite or failing term, fused path included."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback

from balora import BALoRAConfig, BALoRATrainer, prepare_model
from balora import regularizers as R
from balora.reference import REFERENCE_ADAPTER

from .tiny import nlg_batch, nlu_batch, tiny_bert, tiny_llama


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _trainer(prepared, data, tmp_path, **kw):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, **kw)
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, train_dataset=data)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(data)
    trainer.remove_callback(PrinterCallback)
    return trainer


@pytest.mark.parametrize("method", ["ba-lora", "pissa"])
def test_nan_label_stops_before_the_update_naming_step_and_examples(method, tmp_path):
    batch = nlu_batch(n=8, num_labels=1)
    batch["labels"][5] = float("nan")
    batch["balora_index"] = torch.arange(8)
    prepared = prepare_model(tiny_bert(num_labels=1), method, r=4)
    model = prepared.model
    trainer = _trainer(prepared, _Rows(batch), tmp_path)
    after_step1 = {}

    class Snapshot(PrinterCallback):
        def on_step_end(self, args, state, control, **kw):
            after_step1.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    trainer.add_callback(Snapshot())
    with pytest.raises(FloatingPointError, match=r"non-finite task loss at optimizer step 2 .*balora_index \[4, 5, 6, 7\]"):
        trainer.train()
    # Nothing non-finite was applied: the weights are those after step 1 (PiSSA used to log loss 0.0 while its
    # weights became NaN; BA-LoRA reported a 'consistency term is nan' one step later).
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.isfinite(param).all()
            assert torch.equal(param.detach(), after_step1[name])


def test_skip_term_drops_a_failing_svd_instead_of_crashing(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(R, "nlu_svd", broken)
    cfg = BALoRAConfig(nan_policy="skip_term")
    trainer = _trainer(prepare_model(tiny_bert(), "ba-lora", r=4, config=cfg), _Rows(nlu_batch(n=8)), tmp_path)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_task" in h]
    assert len(logs) == 2 and all(h["balora_skipped_svd"] == 1 and "loss_svd" not in h for h in logs)
    with pytest.raises(FloatingPointError, match="svd term failed"):  # the default policy names the term
        _trainer(prepare_model(tiny_bert(), "ba-lora", r=4), _Rows(nlu_batch(n=8)), tmp_path).train()


@pytest.mark.parametrize("fused", [True, False])
def test_skip_term_drops_a_nan_consistency_in_the_nlg_paths(fused, tmp_path):
    batch = nlg_batch()
    cfg = BALoRAConfig(task="nlg", nan_policy="skip_term", fused_nlg=fused, lambda_svd=0.0)
    prepared = prepare_model(tiny_llama(), "ba-lora", r=4, config=cfg)
    model = prepared.model
    with torch.no_grad():  # a broken reference: every reference logit is NaN
        for name, p in model.named_parameters():
            if REFERENCE_ADAPTER in name and "lora_A" in name:
                p.fill_(float("nan"))
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=args)
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert trainer.guard.skipped["consistency"] == 1 and "consistency" not in trainer._sums
    prepared_plain = prepare_model(tiny_llama(), "ba-lora", r=4, config=BALoRAConfig(
        task="nlg", fused_nlg=fused, lambda_svd=0.0, lambda_consistency=0.0))
    plain = prepared_plain.model
    expected = BALoRATrainer(model=plain, objective=prepared_plain.objective(), args=args)
    plain.train()
    assert loss.item() == pytest.approx(expected.compute_loss(plain, batch).item(), rel=1e-5)
    trainer.guard.check(model, 1)  # nothing left to raise


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_step(tmp_path):
    prepared = prepare_model(tiny_bert(), "pissa", r=4)
    model = prepared.model
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=args)
    model.train()
    loss = trainer.compute_loss(model, {**nlu_batch(), "balora_index": torch.arange(8)})
    loss.backward()
    next(p for p in model.parameters() if p.grad is not None).grad[0] = float("inf")
    assert torch.isfinite(loss)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at optimizer step 7 .*balora_index \[0, 1"):
        trainer.guard.check(model, 7)
