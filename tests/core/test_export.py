"""Exported adapters on the ORIGINAL base reproduce the fine-tuned model (PiSSA converted to plain LoRA)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from balora import prepare_model
from balora.export import export_adapter, save_run_adapters

from .tiny import nlu_batch, tiny_bert


def _train_few_steps(model, batch, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["ba-lora", "lora", "dora+reg"])
def test_exported_adapter_reproduces_finetuned_logits_on_original_base(tmp_path, method):
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    batch = nlu_batch()
    run = tmp_path / "run"
    run.mkdir()
    model = prepare_model(AutoModelForSequenceClassification.from_pretrained(base_dir), method, r=4)
    if method == "ba-lora":
        save_run_adapters(model, run, initial=True)
    _train_few_steps(model, batch)
    with torch.no_grad():
        tuned = model(**batch).logits
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({"method": method, "base_model": str(base_dir), "task_kind": "nlu",
                                                     "num_labels": 3, "metrics": {"validation_accuracy": 0.5}}))
    out = export_adapter(run, tmp_path / "export", merge=True)

    original = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = original(**batch).logits
    loaded = PeftModel.from_pretrained(original, str(out)).eval()
    with torch.no_grad():
        exported = loaded(**batch).logits
    assert (tuned - before).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(exported, tuned, atol=1e-5)
    config = json.loads((out / "adapter_config.json").read_text())
    if method == "ba-lora":
        assert config["r"] == 8 and config["init_lora_weights"] is True  # rank 2r plain LoRA
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, tuned, atol=1e-5)
    card = (out / "README.md").read_text()
    assert method in card and "validation_accuracy" in card


def test_export_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        export_adapter(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
