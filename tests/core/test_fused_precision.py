"""The fused NLG terms in low precision and their device/dtype placement.

The fused path must run its vocabulary matmuls in the model's dtype (no per-step fp32 copy of the output
layer), keep every tensor on the model's device, and still match the reference formulas within the
precision of that dtype. Device placement is checked on the ``meta`` device: a tensor created without the
input's device would land on the CPU and be recorded (or fail to combine) there.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from balora import regularizers as R
from balora.config import BALoRAConfig
from balora.fused import compute_dtype, fused_lm_terms, use_fused_nlg
from balora.methods import prepare_model
from balora.profiling import record_tensors
from balora.trainer import BALoRATrainer

from .tiny import nlg_batch, tiny_llama

M, D, V = 37, 24, 300  # D differs from every chunk height (8, 16 stacked, 5, 10)


def _inputs(dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(V, D, generator=g) / D**0.5).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(V, generator=g)).to(device=device, dtype=dtype)
    h = 2 * torch.randn(M, D, generator=g)
    hr = (h + 0.3 * torch.randn(M, D, generator=g)).to(device=device, dtype=dtype)
    h = h.to(device=device, dtype=dtype)
    t = torch.randint(0, V, (M,), generator=g).to(device)
    return w, b, h, hr, t


def _reference(h, w, b, hr, t, l1, l2, temp):
    """The reference formulas in fp32 on the fp32 upcast of the same (low-precision) values."""
    h = h.detach().float().requires_grad_(True)
    z = (h @ w.float().T + b.float())[None]
    zr = (hr.float() @ w.float().T + b.float())[None]
    mask = torch.ones(1, M, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(z[0], t)
    kl = R.nlg_consistency(z, zr, mask, temp)
    neg_ent = R.nlg_diversity(z, mask)
    (ce + l1 * kl + l2 * neg_ent).backward()
    return ce.item(), kl.item(), neg_ent.item(), h.grad


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_bf16_fused_terms_match_the_formulas_within_bf16_precision(temp):
    w, b, h, hr, t = _inputs(torch.bfloat16)
    h.requires_grad_(True)
    l1, l2 = 0.7, 0.3
    fused = fused_lm_terms(h, w, t, hr, b, l1, l2, temp, chunk_size=8)
    fused.loss.backward()
    ce, kl, neg_ent, grad = _reference(h, w, b, hr, t, l1, l2, temp)
    assert fused.loss.dtype == torch.float32  # sums and log-sum-exp in fp32
    assert h.grad.dtype == torch.bfloat16 and torch.isfinite(h.grad.float()).all()
    # bf16 logits carry ~2^-8 relative rounding: the terms agree to about 1e-2
    assert fused.task.item() == pytest.approx(ce, rel=1e-2)
    assert fused.consistency.item() == pytest.approx(kl, rel=5e-2, abs=5e-3)
    assert fused.diversity.item() == pytest.approx(neg_ent, rel=1e-2)
    rel_err = (h.grad.float() - grad).norm() / grad.norm()
    assert rel_err < 3e-2


def test_fused_path_keeps_the_inputs_device_and_runs_matmuls_in_their_dtype():
    w, b, h, hr, t = _inputs(torch.bfloat16, device="meta")
    h.requires_grad_(True)
    with record_tensors() as events:
        fused = fused_lm_terms(h, w, t, hr, b, 0.5, 0.1, 2.0, chunk_size=8)
        fused.loss.backward()
    assert events
    # nothing is created on another device than the inputs' (a bare torch.zeros(...) would be 'cpu')
    stray = {(e.op, e.device) for e in events if e.device != "meta"}
    assert not stray, stray
    # no fp32 (or any other) copy of the V x d output layer
    weight_copies = [e.op for e in events if e.shape in ((V, D), (D, V)) and e.dtype != torch.bfloat16]
    assert not weight_copies, weight_copies
    # the vocabulary matmuls (the ones touching the V x d layer) run in bf16
    vocab_mm = [e for e in events if ("mm" in e.op or "linear" in e.op)
                and any(s in ((V, D), (D, V)) for _, s in e.inputs)]
    assert vocab_mm and all(dt == torch.bfloat16 for e in vocab_mm for dt, _ in e.inputs), vocab_mm
    assert h.grad.device.type == "meta" and h.grad.dtype == torch.bfloat16


def test_compute_dtype_and_auto_choice():
    bf, f32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    assert compute_dtype(bf, bf) == torch.bfloat16 and compute_dtype(f32, bf) == torch.float32
    assert use_fused_nlg(True) and not use_fused_nlg(False) and use_fused_nlg("auto", "cuda")
    with pytest.raises(ValueError, match="'sometimes'"):
        use_fused_nlg("sometimes")
    with pytest.raises(ValueError, match="fused_nlg.*'yes'"):
        BALoRAConfig(task="nlg", fused_nlg="yes")
    assert BALoRAConfig(task="nlg", fused_nlg=False).fused_nlg is False


def test_bf16_training_step_makes_no_fp32_copy_of_the_output_layer(tmp_path):
    """One BA-LoRA step of a bf16 model through BALoRATrainer.compute_loss: finite bf16 gradients, and
    no float32 tensor of the output layer's shape is produced (the old fused path copied it every step)."""
    model = tiny_llama().to(torch.bfloat16)
    cfg = BALoRAConfig(task="nlg", fused_nlg="auto", svd_estimator="exact")
    prepared = prepare_model(model, "ba-lora", r=4, config=cfg)
    model = prepared.model
    model.train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=args)
    batch = nlg_batch()
    trainer.compute_loss(model, batch).backward()  # first step: the once-per-run QR of the output layer
    model.zero_grad(set_to_none=True)
    head = model.get_output_embeddings().weight
    with record_tensors() as events:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    assert torch.isfinite(loss)
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    # (peft keeps the adapter weights in fp32 by default: gradients follow their parameters)
    assert params and all(p.grad.dtype == p.dtype and torch.isfinite(p.grad).all() for p in params)
    shape = tuple(head.shape)
    copies = [e.op for e in events if e.dtype == torch.float32 and e.shape in (shape, shape[::-1])]
    assert not copies, copies
    assert {e.device for e in events} == {"cpu"}


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_topk_teacher_terms_match_their_formula_and_the_exact_kl_at_full_k(temp):
    from balora.fused import teacher_topk, topk_kl_reference

    w, b, h, hr, t = _inputs(torch.float32)
    l1, l2 = 0.7, 0.3
    for k in (5, V):
        top = teacher_topk(hr, w, k, b, temp, chunk_size=8)
        assert top.indices.shape == (M, k) and top.indices.dtype == torch.int32
        hk = h.clone().requires_grad_(True)
        fused = fused_lm_terms(hk, w, t, None, b, l1, l2, temp, chunk_size=8, ref_topk=top)
        fused.loss.backward()
        # the same objective written plainly on full logits, differentiated by autograd
        h2 = h.clone().requires_grad_(True)
        z = h2 @ w.T + b
        mask = torch.ones(1, M, dtype=torch.bool)
        kl = topk_kl_reference(z, top, temp)
        ce = torch.nn.functional.cross_entropy(z, t)
        (ce + l1 * kl + l2 * R.nlg_diversity(z[None], mask)).backward()
        assert fused.consistency.item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-6)
        assert torch.allclose(hk.grad, h2.grad, atol=1e-5)
        if k == V:  # nothing left in the tail: the exact KL and its gradient
            exact = fused_lm_terms(h.clone().requires_grad_(True), w, t, hr, b, l1, l2, temp, chunk_size=8)
            assert fused.consistency.item() == pytest.approx(exact.consistency.item(), rel=1e-4)
        else:  # the coarsened KL is a lower bound of the exact one
            exact_kl = R.nlg_consistency(z[None].detach(), (hr @ w.T + b)[None], mask, temp)
            assert kl.item() <= exact_kl.item() + 1e-6
    with pytest.raises(ValueError, match="either"):
        fused_lm_terms(h, w, t, hr, b, l1, ref_topk=top)


def test_fused_terms_under_cpu_autocast_run_the_matmuls_in_bf16_with_one_cast_of_the_layer():
    """Mixed precision (fp32 weights, autocast bf16): the fused path follows autocast's dtype, casts the
    output layer once per call (not per chunk) and still returns fp32 values and an fp32 gradient."""
    w, b, h, hr, t = _inputs(torch.float32)
    h.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16), record_tensors() as events:
        fused = fused_lm_terms(h, w, t, hr, b, 0.7, 0.3, 1.0, chunk_size=8)
    fused.loss.backward()
    casts = [e for e in events if e.shape == (V, D) and e.dtype == torch.bfloat16]
    assert len(casts) == 1, [e.op for e in casts]
    vocab_mm = [e for e in events if "mm" in e.op and any(s in ((V, D), (D, V)) for _, s in e.inputs)]
    assert vocab_mm and all(dt == torch.bfloat16 for e in vocab_mm for dt, _ in e.inputs)
    ce, kl, neg_ent, grad = _reference(h, w, b, hr, t, 0.7, 0.3, 1.0)
    assert h.grad.dtype == torch.float32 and fused.loss.dtype == torch.float32
    assert fused.task.item() == pytest.approx(ce, rel=1e-2)
    assert fused.consistency.item() == pytest.approx(kl, rel=5e-2, abs=5e-3)
    assert ((h.grad - grad).norm() / grad.norm()).item() < 3e-2
