"""Numeric contracts of prepare_model and the pretrained reference on tiny models built in code."""

from __future__ import annotations

import pytest
import torch

from balora import BALoRAConfig, prepare_model
from balora.methods import parse_method
from balora.reference import REFERENCE_ADAPTER, reference_mode

from .tiny import nlg_batch, nlu_batch, tiny_bert, tiny_llama, train_few_steps


@pytest.mark.parametrize("factory,batch", [(tiny_bert, nlu_batch), (tiny_llama, nlg_batch)])
@pytest.mark.parametrize("init", [None, 4])
def test_pissa_init_keeps_outputs_and_reference_equals_original(factory, batch, init):
    model, inputs = factory(), batch()
    with torch.no_grad():
        original = model(**inputs).logits
    prepared = prepare_model(model, "ba-lora", r=4, pissa_niter=init)
    pm = prepared.model.eval()
    with torch.no_grad():
        initial = pm(**inputs).logits
        with reference_mode(pm, prepared.reference) as ref:
            reference = ref(**inputs).logits
        with pm.disable_adapter():
            residual = pm(**inputs).logits
    assert torch.allclose(initial, original, atol=1e-5)
    assert torch.allclose(reference, original, atol=1e-5)
    # The trap: disabling a PiSSA adapter gives the residual model, not the original.
    assert (residual - original).abs().max() > 1e-3


def test_reference_adapter_is_frozen_and_switch_leaves_flags_alone():
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    pm = prepared.model
    flags = {n: p.requires_grad for n, p in pm.named_parameters()}
    assert not any(v for n, v in flags.items() if REFERENCE_ADAPTER in n)
    assert any(v for n, v in flags.items() if "lora_A.default" in n)
    with reference_mode(pm, prepared.reference):
        assert {n: p.requires_grad for n, p in pm.named_parameters()} == flags
    assert {n: p.requires_grad for n, p in pm.named_parameters()} == flags
    assert pm.training  # restored mode


def test_reference_stays_original_after_training_steps():
    model, inputs = tiny_bert(), nlu_batch()
    with torch.no_grad():
        original = model(**inputs).logits
    prepared = prepare_model(model, "ba-lora", r=4)
    pm = prepared.model
    train_few_steps(pm, inputs, steps=3, lr=1e-2)
    with torch.no_grad():
        moved = pm(**inputs).logits
        with reference_mode(pm, prepared.reference) as ref:
            reference = ref(**inputs).logits
    assert (moved - original).abs().max() > 1e-3
    assert torch.allclose(reference, original, atol=1e-5)


@pytest.mark.parametrize("method", ["lora+reg", "dora+reg", "loha+reg"])
def test_zero_init_methods_use_disabled_adapter_as_reference(method):
    model, inputs = tiny_bert(), nlu_batch()
    with torch.no_grad():
        original = model(**inputs).logits
    prepared = prepare_model(model, method, r=4)
    pm = prepared.model
    assert prepared.reference.mode == "disable"
    with torch.no_grad(), reference_mode(pm, prepared.reference) as ref:
        assert torch.allclose(ref(**inputs).logits, original, atol=1e-5)


def test_reference_model_mode_holds_original_copy():
    model, inputs = tiny_bert(), nlu_batch()
    with torch.no_grad():
        original = model(**inputs).logits
    prepared = prepare_model(model, "ba-lora", r=4, reference="model")
    pm = prepared.model
    with torch.no_grad(), reference_mode(pm, prepared.reference) as ref:
        assert torch.allclose(ref(**inputs).logits, original, atol=1e-6)


def test_methods_and_config_validation():
    assert parse_method("ba-lora") == ("pissa", True)
    assert parse_method("DoRA+reg") == ("dora", True)
    with pytest.raises(ValueError, match="method must be one of"):
        parse_method("qlora")
    with pytest.raises(ValueError, match="lambda_svd"):
        BALoRAConfig(lambda_svd=-1)
    with pytest.raises(ValueError, match="svd_estimator"):
        BALoRAConfig(task="nlg", svd_estimator="fast")
    with pytest.raises(ValueError, match="task"):
        BALoRAConfig(task="vision")
    # None resolves to the task's default (the values: tests/test_docs.py, against docs/method.md); a value given wins
    nlg, nlu = BALoRAConfig(task="nlg"), BALoRAConfig(task="nlu")
    assert nlg.lambda_consistency != nlu.lambda_consistency and nlg.svd_top_k != nlu.svd_top_k
    mixed = BALoRAConfig(task="nlg", lambda_svd=0.5, svd_top_k=3)
    assert (mixed.lambda_consistency, mixed.lambda_diversity, mixed.lambda_svd, mixed.svd_top_k) == (
        nlg.lambda_consistency, nlg.lambda_diversity, 0.5, 3)
    with pytest.raises(ValueError, match="reference='disable' is wrong"):
        prepare_model(tiny_bert(), "ba-lora", r=4, reference="disable")


def test_prepare_model_returns_its_settings_apart_from_the_module():
    cfg = BALoRAConfig(lambda_consistency=0.4)
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4, config=cfg)
    assert prepared.config is cfg and prepared.info.regularized and prepared.info.base_method == "pissa"
    assert prepared.reference.mode == "adapter"
    assert not hasattr(prepared.model, "balora")  # nothing rides on the module
    objective = prepared.objective()
    assert objective.cfg is cfg and objective.reference is prepared.reference and objective.regularized
    plain = prepare_model(tiny_bert(), "lora", r=4, config=cfg)
    assert plain.config is None and plain.reference is None and not plain.objective().regularized


def test_choose_reference_is_the_one_decision():
    from balora.reference import choose_reference

    long_run = dict(epochs=3.0, cache_from_epochs=2.0)
    assert choose_reference("auto", "nlu", model=tiny_bert(), **long_run) == "cached"
    assert choose_reference("auto", "nlu", model=tiny_bert(), epochs=1.0, cache_from_epochs=2.0) == "auto"
    assert choose_reference("auto", "nlu", model=tiny_bert(), max_steps=10, **long_run) == "auto"
    assert choose_reference("auto", "nlu", model=tiny_bert(), regression=True, **long_run) == "auto"
    assert choose_reference("auto", "nlu", model=tiny_bert(), epochs=3.0, cache_from_epochs=0.0) == "auto"
    dropout = tiny_bert()
    dropout.bert.embeddings.dropout.p = 0.1  # a cache cannot replay the student's dropout masks
    assert choose_reference("auto", "nlu", model=dropout, **long_run) == "auto"
    assert choose_reference("model", "nlu", model=tiny_bert(), **long_run) == "model"
    with pytest.raises(ValueError, match="not available for NLG"):
        choose_reference("cached", "nlg")
    with pytest.raises(ValueError, match="unknown reference mode 'teacher'"):
        choose_reference("teacher", "nlu")
