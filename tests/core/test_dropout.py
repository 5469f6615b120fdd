"""With dropout in the model, the consistency term is exactly 0 at step 0 in training mode (the
reference replays the student's dropout masks), and the reference pass leaves the random stream alone."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model

from .tiny import nlg_batch, nlu_batch



def bert_with_dropout(num_labels=3):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=num_labels, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))


def llama_with_dropout():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        attention_dropout=0.1, tie_word_embeddings=False))


def _args(out_dir):
    return TrainingArguments(output_dir=str(out_dir), use_cpu=True, report_to=[])


def _consistency(prepared, batch, out_dir):
    model = prepared.model
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(out_dir))
    model.train()
    torch.manual_seed(1)
    trainer.compute_loss(model, batch)
    return float(trainer._sums["consistency"]), torch.get_rng_state()


@pytest.mark.parametrize("num_labels", [3, 1])
def test_nlu_consistency_is_zero_at_step0_with_dropout(num_labels, tmp_path):
    cfg = BALoRAConfig(lambda_consistency=1.0)
    prepared = prepare_model(bert_with_dropout(num_labels), "ba-lora", r=4, config=cfg)
    value, rng_after = _consistency(prepared, nlu_batch(num_labels=num_labels), tmp_path)
    assert value == 0.0
    # The reference pass replays the student's random numbers and gives them back: the training stream
    # continues exactly as without a consistency term.
    prepared_plain = prepare_model(bert_with_dropout(num_labels), "ba-lora", r=4,
                                   config=BALoRAConfig(lambda_consistency=0.0))
    plain = prepared_plain.model
    plain_trainer = BALoRATrainer(model=plain, objective=prepared_plain.objective(), args=_args(tmp_path))
    plain.train()
    torch.manual_seed(1)
    plain_trainer.compute_loss(plain, nlu_batch(num_labels=num_labels))
    assert torch.equal(rng_after, torch.get_rng_state())
    # Later it measures the adapter's change under identical noise: non-zero once the adapter moved.
    with torch.no_grad():
        for name, p in prepared.model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.add_(0.1)
    assert _consistency(prepared, nlu_batch(num_labels=num_labels), tmp_path)[0] > 1e-6


@pytest.mark.parametrize("fused", [True, False])
def test_nlg_consistency_is_zero_at_step0_with_attention_dropout(fused, tmp_path):
    cfg = BALoRAConfig(task="nlg", lambda_consistency=1.0, lambda_diversity=0.0, lambda_svd=0.0, fused_nlg=fused)
    prepared = prepare_model(llama_with_dropout(), "ba-lora", r=4, config=cfg)
    assert _consistency(prepared, nlg_batch(), tmp_path)[0] == 0.0


def test_a_reference_that_cannot_share_masks_says_so(caplog, tmp_path):
    # Zero-init LoRA with adapter dropout: the disabled adapter draws fewer random numbers than the student.
    prepared = prepare_model(bert_with_dropout(), "lora+reg", r=4, dropout=0.1,
                             config=BALoRAConfig(lambda_consistency=1.0))
    with caplog.at_level(logging.WARNING, logger="balora.objectives"):
        value, _ = _consistency(prepared, nlu_batch(), tmp_path)
    assert "cannot replay the student's dropout masks" in caplog.text
    assert value > 0.0
