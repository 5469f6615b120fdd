"""Exported adapters on the ORIGINAL base reproduce the fine-tuned model (PiSSA converted to plain LoRA)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from balora import prepare_model
from balora.export import export_adapter
from balora.run_layout import save_run_adapters
from balora.classifier_loading import load_classifier

from .tiny import nlu_batch, tiny_bert, train_few_steps


@pytest.mark.parametrize("method,pooling", [("ba-lora", "cls"), ("lora", "cls"), ("dora+reg", "cls"),
                                            ("ba-lora", "mean"), ("lora", "last")])
def test_exported_adapter_reproduces_finetuned_logits_on_original_base(tmp_path, method, pooling):
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    batch = nlu_batch()
    batch["attention_mask"][:3, -4:] = 0  # padded rows: mean / last pooling must respect the mask
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = prepare_model(load_classifier(str(base_dir), 3, pooling), method, r=4).model
    if method == "ba-lora":
        save_run_adapters(model, run, initial=True)
    train_few_steps(model, batch)
    with torch.no_grad():
        tuned = model(**batch).logits
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({"method": method, "base_model": str(base_dir), "task_kind": "nlu",
                                                     "num_labels": 3, "metrics": {"validation_accuracy": 0.5}}))
    out = export_adapter(run, tmp_path / "export", merge=True)

    torch.manual_seed(1)  # a different random head: the exported one must come from the adapter
    original = load_classifier(str(base_dir), 3, pooling).eval()
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
    assert (out / "balora_head.json").is_file() == (pooling != "cls")
    # The merged folder reloads with its pooling (auto reads balora_head.json; cls is the stock class).
    merged = (AutoModelForSequenceClassification.from_pretrained(out / "merged") if pooling == "cls"
              else load_classifier(str(out / "merged"), 3)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, tuned, atol=1e-5)
    card = (out / "README.md").read_text()
    assert method in card and "validation_accuracy" in card


def test_export_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        export_adapter(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
