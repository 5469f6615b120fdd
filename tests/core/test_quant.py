"""QPiSSA (balora.quant): PiSSA on the full-precision weight, only the residual quantised (torchao)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchao", reason="torchao not installed (pip install 'balora[quant]')")

from peft import PeftModel  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from balora import BALoRAConfig, BALoRATrainer, prepare_model  # noqa: E402
from balora.export import export_adapter  # noqa: E402
from balora.run_layout import save_run_adapters  # noqa: E402
from balora.quant import (adapted_linears, base_bytes, original_weights, quantization_errors,  # noqa: E402
                          reference_deviation)

from .tiny import nlg_batch, tiny_llama  # noqa: E402


def llm_like_llama(seed: int = 0) -> LlamaForCausalLM:
    """The tiny Llama with pretrained-like linear weights: a few dominant directions plus small noise (real LLM
    weights have a decaying spectrum; random init has a flat one, where PiSSA removes little range)."""
    model = tiny_llama(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.model.modules():
            if isinstance(module, torch.nn.Linear):
                out, inp = module.weight.shape
                low = torch.randn(out, 4, generator=g) @ torch.randn(4, inp, generator=g)
                module.weight.copy_(0.3 * low / 4 + 0.02 * torch.randn(out, inp, generator=g))
    return model


def _cfg():
    return BALoRAConfig(task="nlg", lambda_consistency=1.0, svd_estimator="exact", svd_top_k=2)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_qpissa_quantises_only_the_residual_and_beats_quantise_then_lora(scheme):
    original = llm_like_llama()
    weights = original_weights(original)
    prepared = prepare_model(llm_like_llama(), "ba-lora", r=4, config=_cfg(), quantize=scheme, quantize_group_size=32)
    model = prepared.model
    layers = list(adapted_linears(model))
    assert layers and all(type(base.weight).__module__.startswith("torchao") for _, _, base in layers)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and "balora_reference" not in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if ".lora_" in n)  # adapter stays float
    errors = quantization_errors(model, weights, scheme, group_size=32)
    assert errors.layers == len(layers)
    assert 0 < errors.qpissa < 0.5 * errors.qlora, errors  # the principal part is not quantised
    # the reference is the original model up to the residual's quantisation error: closer than the reference of
    # quantise-then-LoRA (lora+reg on the quantised base: the disabled adapter, Q(W))
    batch = nlg_batch()
    dev = reference_deviation(model, original.eval(), batch, prepared.reference)
    qlora = prepare_model(llm_like_llama(), "lora+reg", r=4, config=_cfg(), quantize=scheme, quantize_group_size=32)
    dev_qlora = reference_deviation(qlora.model, original.eval(), batch, qlora.reference)
    assert 0 < dev["rel_max_logit_diff"] < dev_qlora["rel_max_logit_diff"], (dev, dev_qlora)
    assert 0 < dev["mean_kl"] < dev_qlora["mean_kl"], (dev, dev_qlora)
    fp = prepare_model(llm_like_llama(), "ba-lora", r=4, config=_cfg()).model
    assert base_bytes(model) < 0.5 * base_bytes(fp)  # int8 storage (int4 is stored unpacked in int8 on CPU)


def test_qpissa_trains_with_the_reference_exact_at_step_zero(tmp_path):
    from transformers import TrainingArguments
    from datasets import Dataset

    prepared = prepare_model(llm_like_llama(), "ba-lora", r=4, config=_cfg(), quantize="int8")
    model = prepared.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "balora_reference" in n}
    base = next(base for _, _, base in adapted_linears(model))
    qdata = base.weight.qdata.clone()
    batch = nlg_batch()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=3, learning_rate=1e-2,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=args, train_dataset=Dataset.from_dict({"i": [0, 1, 2]}),
                            data_collator=lambda rows: {k: v.clone() for k, v in batch.items()})
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_task" in h]
    assert logs[0]["loss_consistency"] == pytest.approx(0.0, abs=1e-6)  # student = reference at step 0
    assert logs[-1]["loss_consistency"] > 0
    assert torch.equal(base.weight.qdata, qdata)  # the quantised residual is frozen
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_qpissa_run_exports_a_plain_adapter_for_the_original_base(tmp_path):
    base_dir = tmp_path / "base"
    llm_like_llama().save_pretrained(base_dir)
    batch = nlg_batch()
    run = tmp_path / "run"
    run.mkdir()
    fp_tuned = prepare_model(LlamaForCausalLM.from_pretrained(base_dir), "ba-lora", r=4, config=_cfg()).model
    model = prepare_model(LlamaForCausalLM.from_pretrained(base_dir), "ba-lora", r=4, config=_cfg(), quantize="int8").model
    save_run_adapters(model, run, initial=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({"method": "ba-lora", "base_model": str(base_dir),
                                                     "task_kind": "nlg", "status": "completed",
                                                     "adapter": {"r": 4, "quantize": "int8"}}))
    out = export_adapter(run, tmp_path / "export")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), str(out)).eval()
    # exact: the exported adapter on the full-precision base is the full-precision PiSSA model with the trained
    # adapter (W_res + s B A); the quantised run differs from it by the residual's quantisation error only
    with torch.no_grad():
        for (n, p), (n2, p2) in zip(fp_tuned.named_parameters(), model.named_parameters()):
            if ".lora_" in n:
                p.copy_(p2)
        fp_tuned.eval()
        exported, exact, quantised = loaded(**batch).logits, fp_tuned(**batch).logits, model(**batch).logits
    assert torch.allclose(exported, exact, atol=1e-5)
    assert (exported - quantised).abs().max() < 0.01 * quantised.abs().max()


def test_quantize_refusals():
    with pytest.raises(ValueError, match="int8"):
        prepare_model(tiny_llama(), "ba-lora", r=4, quantize="fp3")
    with pytest.raises(ValueError, match="lora and pissa"):
        prepare_model(tiny_llama(), "dora", r=4, quantize="int8")
