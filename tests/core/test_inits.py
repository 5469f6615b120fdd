"""Numeric contracts of the rival inits (OLoRA, MiLoRA, CorDA, EVA, LoRA-GA) on tiny models built in code."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from balora import prepare_model
from balora import inits
from balora import regularizers as R
from balora.export import export_adapter
from balora.classifier_loading import load_classifier
from balora.methods import METHODS, parse_method
from balora.reference import init_modifies_base, reference_mode
from balora.run_layout import save_run_adapters

from .tiny import nlg_batch, nlu_batch, tiny_bert, tiny_llama, train_few_steps

RESIDUAL = ("olora", "milora", "corda", "lora-ga")  # the base becomes W - s B0 A0
MODELS = [(tiny_bert, nlu_batch), (tiny_llama, nlg_batch)]


def _prepare(model, method: str, batch_fn, **kwargs):
    """prepare_model with two training batches (other seeds than the test batch) for the data-driven inits: the
    PreparedModel."""
    base = parse_method(method)[0]
    if base == "corda":
        pytest.importorskip("attr", reason="peft 0.21's CorDA module imports attrs (balora's pyproject lists it)")
    batches = [batch_fn(seed=s) for s in (2, 3)] if inits.needs_data(base) else None
    return prepare_model(model, method, r=4, init_batches=batches, **kwargs)


def _lora_layers(pm):
    prefix = "base_model.model."
    for name, module in pm.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            yield name.removeprefix(prefix), module


def test_every_init_is_a_method_with_and_without_reg():
    for name in inits.INIT_METHODS:
        assert parse_method(name) == (name, False)
        assert parse_method(f"{name}+reg") == (name, True)
        assert {name, f"{name}+reg"} <= set(METHODS)


@pytest.mark.parametrize("factory,batch", MODELS)
@pytest.mark.parametrize("method", inits.INIT_METHODS)
def test_step0_keeps_the_pretrained_function(factory, batch, method):
    original, inputs = factory(), batch()
    weights = {n: m.weight.detach().clone() for n, m in original.named_modules() if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        expected = original(**inputs).logits
    pm = _prepare(factory(), method, batch).model.eval()
    with torch.no_grad():
        assert torch.allclose(pm(**inputs).logits, expected, atol=1e-5)
    moved = 0.0
    layers = list(_lora_layers(pm))
    assert layers
    for name, layer in layers:
        base = layer.get_base_layer().weight
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if method in RESIDUAL:  # W_res + s B A = W
            assert torch.allclose(base + layer.scaling["default"] * B @ A, weights[name], atol=1e-5)
            moved = max(moved, (base - weights[name]).abs().max().item())
        else:  # EVA: A from the activations, B = 0, the base untouched
            assert torch.count_nonzero(B) == 0 and torch.count_nonzero(A) > 0
            assert torch.equal(base, weights[name])
    assert init_modifies_base(pm.peft_config["default"]) == (method in RESIDUAL)
    if method in RESIDUAL:
        assert moved > 1e-6  # the base really changed (LoRA-GA moves little: its B A is the small gradient)


@pytest.mark.parametrize("factory,batch", MODELS)
@pytest.mark.parametrize("method", inits.INIT_METHODS)
def test_reg_reference_is_the_original_and_consistency_zero_at_step0(factory, batch, method):
    inputs = batch()
    with torch.no_grad():
        expected = factory()(**inputs).logits
    prepared = _prepare(factory(), f"{method}+reg", batch)
    pm, spec = prepared.model.eval(), prepared.reference
    assert spec.mode == ("adapter" if method in RESIDUAL else "disable")
    with torch.no_grad():
        student = pm(**inputs).logits
        with reference_mode(pm, spec) as ref:
            teacher = ref(**inputs).logits
    assert torch.allclose(teacher, expected, atol=1e-5)
    if factory is tiny_bert:
        consistency = R.nlu_consistency(student, teacher)
    else:
        consistency = R.nlg_consistency(student, teacher, R.shifted_label_mask(inputs["labels"]))
    assert consistency.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("method", inits.INIT_METHODS)
def test_it_trains_and_the_reference_stays_original(method):
    inputs = nlu_batch()
    with torch.no_grad():
        expected = tiny_bert()(**inputs).logits
    prepared = _prepare(tiny_bert(), f"{method}+reg", nlu_batch)
    pm = prepared.model
    with torch.no_grad():
        before = pm.eval()(**inputs).loss.item()
    train_few_steps(pm, inputs, steps=3, lr=1e-2)
    with torch.no_grad():
        after = pm(**inputs).loss.item()
        with reference_mode(pm, prepared.reference) as ref:
            teacher = ref(**inputs).logits
    assert after < before - 1e-3
    assert torch.allclose(teacher, expected, atol=1e-5)


@pytest.mark.parametrize("method", inits.INIT_METHODS)
def test_export_on_the_original_base_reproduces_the_finetuned_model(tmp_path, method):
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    batch = nlu_batch()
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = _prepare(load_classifier(str(base_dir), 3, "cls"), method, nlu_batch).model
    if init_modifies_base(model.peft_config["default"]):  # as balora train does (training.pipeline)
        save_run_adapters(model, run, initial=True)
    train_few_steps(model, batch)
    with torch.no_grad():
        tuned = model(**batch).logits
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({"method": method, "base_model": str(base_dir),
                                                     "task_kind": "nlu", "num_labels": 3}))
    out = export_adapter(run, tmp_path / "export")

    torch.manual_seed(1)  # a different random head: the exported one must come from the adapter
    original = load_classifier(str(base_dir), 3, "cls").eval()
    with torch.no_grad():
        before = original(**batch).logits
        exported = PeftModel.from_pretrained(original, str(out)).eval()(**batch).logits
    assert (tuned - before).abs().max() > 1e-3
    assert torch.allclose(exported, tuned, atol=1e-5)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True or method == "eva"  # residual inits: a plain rank-2r LoRA
    if method in RESIDUAL:
        assert config["r"] == 8


@pytest.mark.parametrize("method", inits.DATA_DRIVEN)
def test_data_driven_init_without_data_is_a_clear_error(method):
    with pytest.raises(ValueError, match=f"method {method!r} initialises its adapter from the training data"):
        prepare_model(tiny_bert(), method, r=4)
    with pytest.raises(ValueError, match="got no batches"):
        prepare_model(tiny_bert(), f"{method}+reg", r=4, init_batches=[])


def test_milora_adapter_holds_the_smallest_singular_triplets():
    original = tiny_llama()
    pm = _prepare(tiny_llama(), "milora", nlg_batch).model
    for name, layer in _lora_layers(pm):
        W = original.get_submodule(name).weight.detach()
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        expected = torch.linalg.svdvals(W)[-4:]
        assert torch.allclose(torch.linalg.svdvals(delta.detach())[:4], expected, atol=1e-5)


def test_sample_batches_are_seeded_and_drop_non_model_columns():
    rows = [{"input_ids": torch.tensor([i, i + 1]), "labels": torch.tensor(i % 2), "balora_index": torch.tensor(i)}
            for i in range(20)]

    def collate(items):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}

    first = inits.sample_batches(rows, collate, 3, 4, seed=0)
    again = inits.sample_batches(rows, collate, 3, 4, seed=0)
    other = inits.sample_batches(rows, collate, 3, 4, seed=1)
    assert len(first) == 3 and all(set(b) == {"input_ids", "labels"} for b in first)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))
    with pytest.raises(ValueError, match="initialisation batches must be >= 1"):
        inits.sample_batches(rows, collate, 0, 4, seed=0)


def test_eva_that_does_not_converge_stops_with_an_error(monkeypatch):
    monkeypatch.setattr(inits, "EVA_MAX_PASSES", 0)
    with pytest.raises(RuntimeError, match="did not converge"):
        _prepare(tiny_bert(), "eva", nlu_batch)


def test_corda_without_peft_corda_module_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft.tuners.lora.corda", None)  # as when its `import attr` fails
    with pytest.raises(ImportError, match="method 'corda' needs the attrs package"):
        prepare_model(tiny_bert(), "corda", r=4, init_batches=[nlu_batch()])
