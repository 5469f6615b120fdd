"""Non-peft baselines: BitFit, Houlsby / Pfeiffer bottleneck adapters, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from balora.baselines.bitfit import apply_bitfit
from balora.baselines.bottleneck import BottleneckAdapter, BottleneckConfig, WithAdapter, apply_houlsby, apply_pfeiffer
from balora.baselines.params import count_parameters, lora_param_formula


def tiny_bert():
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0)
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_llama():
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32, num_labels=3, pad_token_id=0)
    return LlamaForSequenceClassification(cfg).eval()


def tiny_roberta():
    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, num_labels=3)
    return RobertaForSequenceClassification(cfg).eval()


def tiny_deberta():
    cfg = DebertaV2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=32, num_labels=3, relative_attention=True,
                          pos_att_type=["p2c", "c2p"], position_biased_input=False)
    return DebertaV2ForSequenceClassification(cfg).eval()


IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
LABELS = torch.tensor([0, 2])


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("build", [tiny_bert, tiny_roberta, tiny_deberta, tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
def test_adapters_keep_outputs_at_init_and_train_only_adapters_and_head(build, method):
    model = build()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply = apply_houlsby if method == "houlsby" else apply_pfeiffer
    # silu, not ReLU: with 4 hidden units on a random tiny model a ReLU unit set can be dead for every
    # token, which would make the "every adapter learns" check below depend on the seed
    apply(model, bottleneck_dim=4, activation="silu")
    wrapped = [m for m in model.modules() if isinstance(m, WithAdapter)]
    assert len(wrapped) == 2 * (2 if method == "houlsby" else 1)  # 2 layers; Houlsby: attention + FFN
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, before)

    names = trainable_names(model)
    head = "score" if isinstance(model, (GPT2ForSequenceClassification, LlamaForSequenceClassification)) else "classifier"
    assert names and all(".adapter." in n or n.startswith(head + ".") for n in names)
    assert any(n.startswith(head + ".") for n in names)

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # step 1 moves `up` (zero-initialised); step 2 then also reaches `down`
        opt.zero_grad()
        model(input_ids=IDS, labels=LABELS).loss.backward()
        assert all((p.grad is None) != p.requires_grad for p in model.parameters())
        opt.step()
    for m in wrapped:
        assert m.adapter.up.weight.abs().sum() > 0 and m.adapter.down.weight.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n.replace(".base_layer", "")]), n


def test_bottleneck_size_from_reduction_factor_and_config_errors():
    model = apply_pfeiffer(tiny_bert(), reduction_factor=8)
    adapter = next(m.adapter for m in model.modules() if isinstance(m, WithAdapter))
    assert (adapter.down.in_features, adapter.down.out_features) == (32, 4)
    assert BottleneckConfig(bottleneck_dim=5).size_for(768) == 5  # a fixed size wins over the layer width
    assert BottleneckConfig(reduction_factor=64).size_for(32) == 1  # never below one unit
    with pytest.raises(ValueError, match="not both"):
        BottleneckConfig(bottleneck_dim=4, reduction_factor=8)
    with pytest.raises(ValueError, match="activation must be one of"):
        BottleneckConfig(activation="swishy")
    with pytest.raises(ValueError, match="no output projections matched"):
        apply_houlsby(nn.Sequential(nn.Linear(4, 4)), 2, train_head=False)


def test_adapter_is_identity_at_init():
    adapter = BottleneckAdapter(6, 2)
    x = torch.randn(3, 6)
    assert torch.equal(adapter(x), x)


def test_bitfit_trains_biases_and_head():
    model = apply_bitfit(tiny_bert())
    expected = {n for n, _ in model.named_parameters() if n.endswith(".bias") or n.startswith("classifier.")}
    assert trainable_names(model) == expected
    assert "classifier.weight" in expected and "bert.embeddings.word_embeddings.weight" not in expected
    no_head = apply_bitfit(tiny_bert(), train_head=False)
    assert trainable_names(no_head) == {n for n, _ in no_head.named_parameters() if n.endswith(".bias")}
    with pytest.raises(ValueError, match="no head parameters found"):
        apply_bitfit(tiny_bert(), head_names=("nonexistent",))


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # (3*4+4) + (4*2+2) = 16 + 10
    model[0].requires_grad_(False)
    assert count_parameters(model) == (10, 26)


DEBERTA_TARGETS = ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
                   "output.dense"]


def test_lora_formula_on_small_models():
    # tiny BERT, r=2 on query/value: 2 layers * 2 modules * 2 * (32 + 32)
    assert lora_param_formula(tiny_bert(), 2, ["query", "value"]) == 2 * 2 * 2 * 64
    # the head is excluded unless asked: classifier is 32 -> 3
    assert lora_param_formula(tiny_bert(), 2, ["classifier"], include_head=True) == 2 * (32 + 3)
    with pytest.raises(ValueError, match="matches target_modules"):
        lora_param_formula(tiny_bert(), 2, ["classifier"])


def test_lora_r8_deberta_v3_base_is_1_33m_by_formula_and_by_peft():
    from peft import LoraConfig, get_peft_model

    shape = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                 pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_biased_input=False)
    # per layer: 4 * 8*(768+768) + 8*(768+3072) + 8*(3072+768) = 110,592; times 12 layers
    expected = 12 * (4 * 8 * (768 + 768) + 2 * 8 * (768 + 3072))
    assert expected == 1_327_104
    assert lora_param_formula({"model_type": "deberta-v2", "vocab_size": 128, **shape}, 8, DEBERTA_TARGETS) == expected

    model = DebertaV2Model(DebertaV2Config(vocab_size=128, **shape))
    assert lora_param_formula(model, 8, DEBERTA_TARGETS) == expected
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=DEBERTA_TARGETS))
    assert count_parameters(peft_model)[0] == expected
