"""`balora train` and `balora export` with the rival inits (OLoRA; LoRA-GA and EVA from training batches)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from balora.cli.main import main

from . import test_train_export_cli as tiny_cli

tiny_model_dir = tiny_cli.tiny_model_dir  # the tiny local BERT + tokenizer fixture


@pytest.mark.parametrize("method", ["olora", "lora-ga+reg", "eva"])
def test_train_and_export_a_rival_init(tmp_path, tiny_model_dir, monkeypatch, method):
    import balora.training.pipeline as pipeline

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tok(["the cat sat on the mat", "a dog ran"], return_tensors="pt", padding=True)
    fine_tuned, prepare_calls = [], []
    train, prepare = pipeline.train, pipeline.prepare_method

    def train_and_capture(cfg, trainer, run_dir):
        out = train(cfg, trainer, run_dir)
        with torch.no_grad():
            fine_tuned.append(trainer.model.eval()(**batch).logits)
        return out

    def prepare_and_record(cfg, model, *args, **kwargs):
        prepare_calls.append(kwargs.get("train_data") is not None)
        return prepare(cfg, model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train", train_and_capture)
    monkeypatch.setattr(pipeline, "prepare_method", prepare_and_record)
    tiny_cli._write_data(tmp_path / "train.csv", 48, 0)
    tiny_cli._write_data(tmp_path / "dev.csv", 16, 1)
    run_dir = tmp_path / "run"
    config = {"kind": "nlu", "model": {"name_or_path": str(tiny_model_dir), "max_length": 16},
              "data": {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "dev.csv"),
                       "text_columns": ["text"]},
              "method": {"name": method, "r": 4, "init_batches": 2},
              "train": {"output_dir": str(run_dir), "batch_size": 8, "lr": 1e-2, "max_steps": 3, "progress": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 0
    assert prepare_calls == [True]  # the run hands its training data to the init
    record = json.loads((run_dir / "balora_run.json").read_text())
    assert record["method"] == method and "validation_accuracy" in record["metrics"]
    assert (run_dir / "initial_adapter").is_dir() == (method != "eva")  # residual inits keep A0, B0

    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    original = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    exported = PeftModel.from_pretrained(original, str(tmp_path / "export")).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, fine_tuned[-1], atol=1e-5, rtol=1e-4)
