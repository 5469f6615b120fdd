"""Pins the two private peft attributes balora.peft_compat writes: they are what peft's public properties read."""

from __future__ import annotations

import torch

from balora import peft_compat, prepare_model
from balora.reference import REFERENCE_ADAPTER

from .tiny import nlu_batch, tiny_bert


def test_switch_attributes_are_what_peft_reads_and_are_restored():
    pm = prepare_model(tiny_bert(), "ba-lora", r=4).model
    layers = list(peft_compat.adapter_layers(pm))
    assert layers, "peft's BaseTunerLayer / AuxiliaryTrainingWrapper classes moved"
    for layer in layers:
        assert hasattr(layer, peft_compat.ACTIVE_ADAPTER_ATTR) and hasattr(layer, peft_compat.DISABLE_ADAPTERS_ATTR)
    saved = peft_compat.save_switch(layers)
    grads = {n: p.requires_grad for n, p in pm.named_parameters()}
    for layer in layers:
        peft_compat.activate_adapter(layer, REFERENCE_ADAPTER)
        assert layer.active_adapters == [REFERENCE_ADAPTER]  # peft's public property
        peft_compat.disable_adapters(layer)
        assert layer.disable_adapters is True
    with torch.no_grad():  # disabled: the residual base (PiSSA), i.e. not the prepared model's function
        disabled = pm(**nlu_batch()).logits
    peft_compat.restore_switch(saved)
    assert all(layer.active_adapters == ["default"] and layer.disable_adapters is False for layer in layers)
    assert {n: p.requires_grad for n, p in pm.named_parameters()} == grads
    with torch.no_grad():
        assert not torch.allclose(pm(**nlu_batch()).logits, disabled)


def test_pyproject_bounds_peft_to_the_tested_range():
    import re
    from pathlib import Path

    import peft

    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    spec = re.search(r'"peft>=([\d.]+),<([\d.]+)"', text)
    assert spec, "pyproject.toml must bound peft from above (peft_compat touches private attributes)"
    low, high = (tuple(int(x) for x in v.split(".")) for v in spec.groups())
    installed = tuple(int(x) for x in peft.__version__.split(".")[:2])
    assert low <= installed < high
