"""The reference object: chosen once, filled once (cached), refused where it cannot work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import BertTokenizerFast, TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model
from balora.reference import ReferenceSpec

from .tiny import nlu_batch, tiny_bert, tiny_llama

WORDS = "the a cat dog sat ran on under mat log big small red blue it is not".split()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_cached_reference_for_pissa_is_filled_through_the_adapter_switch(tmp_path):
    original = tiny_bert()
    batch = nlu_batch(n=6)
    with torch.no_grad():
        expected = original(**{k: v for k, v in batch.items() if k != "labels"}).logits
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4, reference="cached")
    pm, spec = prepared.model, prepared.reference
    assert spec.mode == "cached" and spec.live is not None and spec.live.mode == "adapter" and not spec.ready
    with pytest.raises(ValueError, match="needs its cache filled"):
        prepared.objective()
    data = _Rows({**batch, "balora_index": torch.arange(6)})
    filled = spec.fill(pm, data, _collate, 4, torch.device("cpu"))
    assert filled.ready and filled.mode == "cached"
    got = filled.lookup("logits", torch.arange(6), torch.device("cpu"))
    assert torch.allclose(got, expected, atol=1e-5)  # the ORIGINAL model's logits, not the residual base's
    trainer = BALoRATrainer(model=pm, objective=prepared.objective(filled),
                            args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    pm.train()
    trainer.compute_loss(pm, {**batch, "balora_index": torch.arange(6)})
    assert float(trainer._sums["consistency"]) == pytest.approx(0.0, abs=1e-10)


def test_cached_reference_is_refused_for_nlg_with_a_clear_message():
    with pytest.raises(ValueError, match="not available for NLG"):
        prepare_model(tiny_llama(), "ba-lora", r=4, config=BALoRAConfig(task="nlg", reference="cached"))
    prepared = prepare_model(tiny_llama(), "ba-lora", r=4, config=BALoRAConfig(task="nlg"))
    cached = ReferenceSpec(mode="cached", live=prepared.reference)
    with pytest.raises(ValueError, match="not available for NLG"):
        prepared.objective(cached)


def _tiny_run(tmp_path, regression, regularizers, train):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    folder = tmp_path / "tiny-bert"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    tiny_bert(num_labels=1 if regression else 2).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    lines = ["text,label"]
    for i in range(24):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (6,), generator=g)]
        label = f"{(i % 5) * 0.5:.1f}" if regression else ("pos" if "cat" in words else "neg")
        lines.append(f"{' '.join(words)},{label}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    config = {"kind": "nlu", "model": {"name_or_path": str(folder), "max_length": 16},
              "data": {"train": str(tmp_path / "train.csv"), "text_columns": ["text"]},
              "method": {"name": "ba-lora", "r": 4}, "regularizers": regularizers,
              "train": {"output_dir": str(run_dir), "batch_size": 8, "lr": 1e-2, "logging_steps": 1,
                        "progress": False, "save_steps": 0, **train}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "cfg.yaml", run_dir


def _count_fills(monkeypatch) -> list:
    filled = []
    fill = ReferenceSpec.fill

    def counted(self, *args, **kwargs):
        filled.append(self.mode)
        return fill(self, *args, **kwargs)

    monkeypatch.setattr(ReferenceSpec, "fill", counted)
    return filled


@pytest.mark.parametrize("regression", [False, True])
def test_balora_train_with_reference_cached_from_the_config(tmp_path, regression, monkeypatch):
    from balora.cli.main import main

    filled = _count_fills(monkeypatch)
    cfg, run_dir = _tiny_run(tmp_path, regression, {"reference": "cached"}, {"max_steps": 3})
    assert main(["train", "--config", str(cfg)]) == 0
    record = json.loads((run_dir / "balora_run.json").read_text())
    assert record["method"] == "ba-lora" and record["regularizers"]["reference"] == "cached"
    assert filled == ["cached"]  # filled once, before training


@pytest.mark.parametrize("epochs,cached", [(2.0, True), (1.0, False)])
def test_a_long_nlu_run_switches_to_the_cache_by_itself(tmp_path, monkeypatch, epochs, cached):
    from balora.cli.main import main

    filled = _count_fills(monkeypatch)
    cfg, _ = _tiny_run(tmp_path, False, {}, {"epochs": epochs, "cached_reference_epochs": 2.0})
    assert main(["train", "--config", str(cfg)]) == 0
    assert filled == (["cached"] if cached else [])
