"""Correctness on the device the model lives on: the checks a GPU user runs with ``pytest -m cuda`` (through
scripts/gpu_check.sh). Each runs on the CPU too, so that the check itself is exercised on every machine.

* PiSSA's student at init and BA-LoRA's reference compute the original model's function (the consistency
  term is zero at step 0) in fp32 and bf16;
* the fused NLG terms match the reference formulas (values and the hidden-state gradient) in the model's dtype;
* a BA-LoRA training step in bf16 has finite loss and gradients, creates no tensor off the model's device and
  no fp32 copy of the output layer, and its fused and unfused losses agree.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from balora import regularizers as R
from balora.config import BALoRAConfig
from balora.fused import fused_lm_terms
from balora.methods import prepare_model
from balora.profiling import record_tensors
from balora.trainer import BALoRATrainer

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}  # relative to the largest logit / value


def _llama(device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype).eval()


def _batch(device: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                         "labels": labels}.items()}


def _prepared(model, cfg: BALoRAConfig):
    """``model`` with BA-LoRA adapters (train mode) and its objective."""
    prepared = prepare_model(model, "ba-lora", r=8, pissa_niter=4, config=cfg)
    return prepared.model.train(), prepared.objective()


def _trainer(model, objective, folder) -> BALoRATrainer:
    on_cuda = next(model.parameters()).device.type == "cuda"
    args = TrainingArguments(output_dir=str(folder), report_to=[], use_cpu=not on_cuda, save_strategy="no",
                             per_device_train_batch_size=2)
    trainer = BALoRATrainer(model=model, args=args, objective=objective)
    trainer.state.max_steps = 100
    return trainer


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_student_at_init_and_reference_compute_the_original_model(device, dtype, tmp_path):
    model = _llama(device, dtype)
    batch = _batch(device)
    fwd = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        original = model(**fwd).logits
    cfg = BALoRAConfig(task="nlg", lambda_consistency=1.0, lambda_diversity=0.0, lambda_svd=0.0)
    model, objective = _prepared(model, cfg)
    with torch.no_grad():
        student = model(**fwd).logits
    assert _rel(student, original) <= TOLERANCE[dtype]
    trainer = _trainer(model, objective, tmp_path)
    with torch.no_grad():
        trainer.compute_loss(model, batch)
    terms = trainer.term_means()
    # KL(reference || student) at step 0: zero when the reference pass reproduces the original model
    assert terms["consistency"] <= TOLERANCE[dtype] * terms["task"], terms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_terms_match_the_formulas_on_full_logits(device, dtype):
    g = torch.Generator().manual_seed(0)
    m, d, v = 300, 64, 3000
    w = (torch.randn(v, d, generator=g) / d**0.5).to(device, dtype)
    b = (0.1 * torch.randn(v, generator=g)).to(device, dtype)
    h0 = 2 * torch.randn(m, d, generator=g)
    hr = (h0 + 0.3 * torch.randn(m, d, generator=g)).to(device, dtype)
    h = h0.to(device, dtype).requires_grad_(True)
    t = torch.randint(0, v, (m,), generator=g).to(device)
    fused = fused_lm_terms(h, w, t, hr, b, 0.7, 0.3, 2.0, chunk_size=128)
    fused.loss.backward()
    h32 = h.detach().float().requires_grad_(True)
    z = (h32 @ w.float().T + b.float())[None]
    zr = (hr.float() @ w.float().T + b.float())[None]
    mask = torch.ones(1, m, dtype=torch.bool, device=device)
    ce = torch.nn.functional.cross_entropy(z[0], t)
    kl, ne = R.nlg_consistency(z, zr, mask, 2.0), R.nlg_diversity(z, mask)
    (ce + 0.7 * kl + 0.3 * ne).backward()
    tol = {torch.float32: 1e-3, torch.bfloat16: 3e-2}[dtype]
    for got, want in ((fused.task.detach(), ce), (fused.consistency.detach(), kl), (fused.diversity.detach(), ne)):
        assert abs(float(got - want)) <= tol * abs(float(want))
    assert float((h.grad.float() - h32.grad).norm() / h32.grad.norm()) <= tol
    assert (h.grad.dtype, h.grad.device) == (dtype, h.device)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_step_stays_on_the_device_and_in_the_dtype(device, tmp_path):
    batch = _batch(device)
    losses = {}
    for fused in ("auto", False):
        cfg = BALoRAConfig(task="nlg", fused_nlg=fused, svd_estimator="exact")
        model, objective = _prepared(_llama(device, torch.bfloat16), cfg)
        trainer = _trainer(model, objective, tmp_path)
        with torch.no_grad():
            losses[fused] = float(trainer.compute_loss(model, batch))
    model, objective = _prepared(_llama(device, torch.bfloat16),
                                 BALoRAConfig(task="nlg", fused_nlg="auto", svd_estimator="exact"))
    trainer = _trainer(model, objective, tmp_path)
    trainer.compute_loss(model, batch).backward()  # the once-per-run factorisation of the output layer
    model.zero_grad(set_to_none=True)
    head = tuple(model.get_output_embeddings().weight.shape)
    with record_tensors() as events:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    expected = str(next(model.parameters()).device)
    assert sorted({f"{e.op} on {e.device}" for e in events if e.device != expected}) == []
    assert [e.op for e in events if e.dtype == torch.float32 and e.shape in (head, head[::-1])] == []
    assert abs(losses["auto"] - losses[False]) <= 1e-2 * abs(losses[False])
