"""Tiny models built in code (no downloads) for the core tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def tiny_bert(num_labels: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0, vocab: int = 96) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def nlu_batch(n: int = 8, t: int = 10, num_labels: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    if num_labels == 1:
        labels = torch.rand(n, generator=g) * 5
    return {"input_ids": torch.randint(1, 64, (n, t), generator=g), "attention_mask": torch.ones(n, t, dtype=torch.long),
            "labels": labels}


def nlg_batch(b: int = 3, t: int = 12, vocab: int = 96, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens are not trained
    labels[0, -2:] = -100  # padding at the end of the first row
    att = torch.ones(b, t, dtype=torch.long)
    att[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def train_few_steps(model, batch: dict, steps: int = 3, lr: float = 2e-2):
    """A few AdamW steps on the trainable parameters with ``batch``; returns the model in eval mode."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()
