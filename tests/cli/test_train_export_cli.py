"""`balora train` from a YAML file with overrides, `--resume`, then `balora export`, on a tiny local model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast

from balora.cli.main import main
from balora.training.run_config import load_config, parse_overrides

from ..core.tiny import tiny_bert

WORDS = "the a cat dog sat ran on under mat log big small red blue it is not".split()


@pytest.fixture
def tiny_model_dir(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    folder = tmp_path / "tiny-bert"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    tiny_bert(num_labels=2).save_pretrained(folder)
    return folder


def _write_data(path, n, seed):
    g = torch.Generator().manual_seed(seed)
    lines = ["text,label"]
    for _ in range(n):
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=g)]
        lines.append(f"{' '.join(words)},{'pos' if 'cat' in words else 'neg'}")
    path.write_text("\n".join(lines) + "\n")


def test_train_resume_and_export(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import balora.training.pipeline as pipeline

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tok(["the cat sat on the mat", "a dog ran"], return_tensors="pt", padding=True)
    fine_tuned = []  # the fine-tuned model's logits on `batch`, right after each training call
    train = pipeline.train

    def train_and_capture(cfg, trainer, run_dir):
        out = train(cfg, trainer, run_dir)
        model = trainer.model
        with torch.no_grad():
            fine_tuned.append(model.eval()(**{k: v.to(model.device) for k, v in batch.items()}).logits.cpu())
        model.train()
        return out

    monkeypatch.setattr(pipeline, "train", train_and_capture)
    _write_data(tmp_path / "train.csv", 48, 0)
    _write_data(tmp_path / "dev.csv", 16, 1)
    run_dir = tmp_path / "run"
    config = {"kind": "nlu", "model": {"name_or_path": str(tiny_model_dir), "max_length": 16},
              "data": {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "dev.csv"),
                       "text_columns": ["text"]},
              "method": {"name": "ba-lora", "r": 4},
              "train": {"output_dir": str(run_dir), "batch_size": 8, "lr": 1e-2, "logging_steps": 2,
                        "progress": False, "save_steps": 3}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--train.max_steps", "3"]) == 0
    assert (run_dir / "checkpoint-3").is_dir()
    # Resume: continues from checkpoint-3 to step 6 instead of starting again.
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--train.max_steps", "6", "--resume"]) == 0
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert any("loss_svd" in h for h in state["log_history"])
    record = json.loads((run_dir / "balora_run.json").read_text())
    assert record["method"] == "ba-lora" and "validation_accuracy" in record["metrics"]
    assert record["label_names"] == ["neg", "pos"]
    assert "validation:" in capsys.readouterr().out

    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    original = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    exported = PeftModel.from_pretrained(original, str(tmp_path / "export")).eval()
    card = (tmp_path / "export" / "README.md").read_text()
    assert "ba-lora" in card and str(tiny_model_dir) in card
    with torch.no_grad():
        assert torch.isfinite(exported(**batch).logits).all()
        # the exported plain-LoRA adapter on the ORIGINAL base reproduces the fine-tuned (PiSSA, residual base) model
        torch.testing.assert_close(exported(**batch).logits, fine_tuned[-1], atol=1e-5, rtol=1e-4)
        with exported.disable_adapter():
            untrained = exported(**batch).logits
    assert len(fine_tuned) == 2 and (fine_tuned[-1] - untrained).abs().max() > 1e-3  # training changed the model


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="unknown train option"):
        load_config(None, ["--train.epoch", "3"])
    with pytest.raises(ValueError, match="method must be one of"):
        load_config(None, ["--method.name", "qlora"])
    with pytest.raises(ValueError, match="lambda_svd"):
        load_config(None, ["--balora.lambda_svd", "-1"])
    with pytest.raises(ValueError, match="expected --section.key value"):
        parse_overrides(["epochs", "3"])
    assert parse_overrides(["--method.target_modules", "[query, value]", "--train.lr=1e-3"]) == {
        "method": {"target_modules": ["query", "value"]}, "train": {"lr": 1e-3}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
