"""The fused NLG path computes the model's own logits for every causal-LM family transformers
ships that balora supports (tiny random configs), or falls back to the full-logits path with a reason."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers as T
from transformers import TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model

from .tiny import nlg_batch

COMMON = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
FAMILIES = {  # name -> (config class, model class, extra config); what the head does after W h
    "Llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "Mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "Qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "Gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "Gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}),  # soft-capping: falls back
    "Granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),  # logits / 4
    "Cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),  # logits * 0.25
    "Phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "Olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
    "GPT2": ("GPT2Config", "GPT2LMHeadModel", None),  # tied output layer
}


def _args(out_dir):
    return TrainingArguments(output_dir=str(out_dir), use_cpu=True, report_to=[])


def build(name: str):
    cfg_cls, model_cls, extra = FAMILIES[name]
    if extra is None:
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        cfg = getattr(T, cfg_cls)(**COMMON, **extra)
    torch.manual_seed(0)
    return getattr(T, model_cls)(cfg).eval()


def _trainer_terms(name, fused, l1, out_dir):
    cfg = BALoRAConfig(task="nlg", fused_nlg=fused, lambda_consistency=l1, lambda_diversity=0.0, lambda_svd=0.0)
    prepared = prepare_model(build(name), "lora+reg", r=4, config=cfg)
    model = prepared.model
    with torch.no_grad():  # move the adapter so that the KL is not 0
        g = torch.Generator().manual_seed(1)
        for pname, p in model.named_parameters():
            if p.requires_grad and "lora_B" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    batch = nlg_batch(vocab=100)
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(out_dir))
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        own = model(**batch).loss  # the model's own head and loss
    return loss.item(), own.item(), {k: float(v) for k, v in trainer._sums.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fused_task_loss_is_the_models_own_and_kl_matches_unfused(name, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="balora.objectives"):
        fused_loss, own, _ = _trainer_terms(name, True, 0.0, tmp_path)
    assert fused_loss == pytest.approx(own, rel=1e-5)
    if name == "Gemma2":
        assert "soft-capping" in caplog.text  # the reason of the fallback is logged
    _, _, fused_terms = _trainer_terms(name, True, 1.0, tmp_path)
    _, _, plain_terms = _trainer_terms(name, False, 1.0, tmp_path)
    assert fused_terms["consistency"] > 1e-4
    assert fused_terms["consistency"] == pytest.approx(plain_terms["consistency"], rel=1e-4)
    assert fused_terms["task"] == pytest.approx(own, rel=1e-5)


def test_an_unknown_post_head_transform_falls_back_with_a_reason(caplog, tmp_path):
    prepared = prepare_model(build("Llama"), "lora+reg", r=4, config=BALoRAConfig(
        task="nlg", lambda_consistency=0.0, lambda_diversity=0.0, lambda_svd=0.0))
    pm = prepared.model
    base = pm.base_model.model
    forward = base.forward

    def squashed(*args, **kwargs):  # logits that are not a (scaled) linear map of the last hidden state
        out = forward(*args, **kwargs)
        out.logits = torch.tanh(out.logits) * 3
        return out

    base.forward = squashed
    batch = nlg_batch(vocab=100)
    trainer = BALoRATrainer(model=pm, objective=prepared.objective(), args=_args(tmp_path))
    pm.train()
    with caplog.at_level(logging.WARNING, logger="balora.objectives"):
        loss = trainer.compute_loss(pm, batch)
    assert "not a linear map" in caplog.text
    with torch.no_grad():
        logits = pm(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixed_precision_keeps_the_fused_path(caplog, tmp_path):
    """Under bf16 autocast (fp32 weights, as Trainer's and TRL's bf16=True run), the model's own logits are
    computed in bf16: the first-step head check must judge them at bf16 tolerance and keep the fused path."""
    cfg = BALoRAConfig(task="nlg", fused_nlg=True)
    prepared = prepare_model(build("Llama"), "ba-lora", r=4, config=cfg)
    model = prepared.model
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path))
    model.train()
    with caplog.at_level(logging.WARNING), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.compute_loss(model, nlg_batch(vocab=100))
    assert torch.isfinite(loss)
    assert "fused NLG path off" not in caplog.text
    checks = list(trainer.objective.checks.values())
    assert checks and all(c.ok for c in checks)
