"""Siamese pair encoding (balora.heads, model.pair_encoding: siamese) on tiny models built in code: the head sees
(u, v, |u - v|, u * v), the tokenisation and padding keep the two sentences apart, a BA-LoRA run trains and predicts,
and the exported adapter reproduces the fine-tuned model on the original base."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import BertTokenizerFast

from balora import prepare_model
from balora.export import export_adapter
from balora.classifier_loading import load_classifier
from balora.heads import PooledClassifier, pool
from balora.run_layout import save_run_adapters
from balora.training.nlu import PairCollator, describe_labels, run_nlu, tokenize_nlu
from balora.training.run_config import build_config

from .tiny import nlu_batch, tiny_bert, train_few_steps

WORDS = "the a cat dog sat ran on under mat log big small red blue it is not".split()


def _pair_batch(n: int = 8, seed: int = 1) -> dict:
    batch = nlu_batch(n=n, seed=seed)
    second = nlu_batch(n=n, t=6, seed=seed + 1)
    batch["input_ids_b"], batch["attention_mask_b"] = second["input_ids"], second["attention_mask"]
    batch["attention_mask"][:3, -4:] = 0
    batch["attention_mask_b"][2:5, -2:] = 0
    return batch


def test_head_sees_u_v_difference_and_product(tmp_path):
    base = tmp_path / "base"
    tiny_bert().bert.save_pretrained(base)
    model = load_classifier(str(base), 3, "mean", pair_encoding="siamese").eval()
    assert isinstance(model, PooledClassifier) and model.classifier.in_features == 4 * 32
    batch = _pair_batch()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        u = pool(model.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0],
                 batch["attention_mask"], "mean")
        v = pool(model.body(input_ids=batch["input_ids_b"], attention_mask=batch["attention_mask_b"])[0],
                 batch["attention_mask_b"], "mean")
        expected = model.classifier(torch.cat([u, v, (u - v).abs(), u * v], -1))
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="input_ids_b"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cross = load_classifier(str(base), 3, "mean")
    assert cross.classifier.in_features == 32 and cross.pair_encoding == "cross"
    with pytest.raises(ValueError, match="cross-encoding"):
        cross(**{k: v for k, v in batch.items() if k != "labels"})
    with pytest.raises(ValueError, match="pair_encoding"):
        load_classifier(str(base), 3, "mean", pair_encoding="bi")


def _tiny_pair_model(tmp_path):
    folder = tmp_path / "tiny-bert"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    tiny_bert(num_labels=2).bert.save_pretrained(folder)
    return folder


def _pairs(n: int, seed: int) -> datasets.Dataset:
    g = np.random.default_rng(seed)
    out = {"a": [], "b": [], "label": []}
    for i in range(n):
        a = list(g.choice(WORDS, 2 + i % 7))
        same = bool(i % 2)
        b = a[: max(1, len(a) - 1)] if same else list(g.choice(WORDS, 1 + i % 3))
        out["a"].append(" ".join(a)), out["b"].append(" ".join(b)), out["label"].append(int(same))
    return datasets.Dataset.from_dict(out)


def test_tokenisation_and_padding_keep_the_sentences_apart(tmp_path):
    tok = BertTokenizerFast.from_pretrained(_tiny_pair_model(tmp_path))
    data = describe_labels(datasets.DatasetDict({"train": _pairs(12, 0)}), ["a", "b"], "label")
    encoded, truncated = tokenize_nlu(data, tok, 32, "siamese")
    row = encoded["train"][3]
    assert truncated == 0 and "token_type_ids" not in row
    assert tok.decode(row["input_ids"], skip_special_tokens=True) == data.splits["train"][3]["a"]
    assert tok.decode(row["input_ids_b"], skip_special_tokens=True) == data.splits["train"][3]["b"]
    rows = [encoded["train"][i] for i in range(6)]
    batch = PairCollator(tok)(rows)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids_b"].shape[1] == max(len(r["input_ids_b"]) for r in rows)
    assert batch["attention_mask_b"].sum(1).tolist() == [len(r["input_ids_b"]) for r in rows]
    assert batch["labels"].tolist() == [r["labels"] for r in rows]
    single = describe_labels(datasets.DatasetDict({"train": _pairs(4, 0)}), ["a"], "label")
    with pytest.raises(ValueError, match="two text columns"):
        tokenize_nlu(single, tok, 32, "siamese")


def test_balora_run_with_siamese_pairs_trains_and_predicts(tmp_path):
    folder = _tiny_pair_model(tmp_path)
    test = _pairs(40, 2)
    data = describe_labels(datasets.DatasetDict({"train": _pairs(48, 1), "test": test}), ["a", "b"], "label")
    cfg = build_config({"kind": "nlu", "model": {"name_or_path": str(folder), "max_length": 32, "pooling": "mean",
                                                 "pair_encoding": "siamese"},
                        "method": {"name": "ba-lora", "r": 2, "head_warmup": "logreg"},
                        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 8,
                                  "eval_batch_size": 16, "progress": False, "lr": 1e-3}})
    result = run_nlu(cfg, data)
    assert np.array_equal(result.references["test"], np.asarray(test["label"]))
    assert len(result.predictions["test"]) == 40 and result.adapter_change > 0
    assert result.head["head_warmup"] == "logreg" and result.head["head_warmup_examples"] == 48
    spec = json.loads(next((tmp_path / "run").rglob("balora_head.json")).read_text())
    assert spec["pair_encoding"] == "siamese" and spec["hidden_size"] == 4 * 32


def test_exported_siamese_adapter_reproduces_the_finetuned_model(tmp_path):
    base = tmp_path / "base"
    tiny_bert().bert.save_pretrained(base)
    batch = _pair_batch()
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = prepare_model(load_classifier(str(base), 3, "mean", pair_encoding="siamese"), "ba-lora", r=4).model
    save_run_adapters(model, run, initial=True)
    train_few_steps(model, batch)
    with torch.no_grad():
        tuned = model(**batch).logits
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({"method": "ba-lora", "base_model": str(base), "task_kind": "nlu",
                                                     "num_labels": 3, "metrics": {}}))
    out = export_adapter(run, tmp_path / "export", merge=True)
    assert json.loads((out / "balora_head.json").read_text())["pair_encoding"] == "siamese"
    assert "pair_encoding='siamese'" in (out / "README.md").read_text()  # the card says how to load it
    torch.manual_seed(1)
    original = load_classifier(str(base), 3, "mean", pair_encoding="siamese").eval()
    with torch.no_grad():
        before = original(**batch).logits
        exported = PeftModel.from_pretrained(original, str(out)).eval()(**batch).logits
        merged = load_classifier(str(out / "merged"), 3).eval()(**batch).logits  # pooling and pairing from the folder
    assert (tuned - before).abs().max() > 1e-3
    torch.testing.assert_close(exported, tuned, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, tuned, atol=1e-5, rtol=1e-5)


def test_bench_pair_encoding_per_task():
    """A GLUE sweep sets the pair encoding per task (model.pair_encoding in per_task); a bad value is named."""
    from balora.bench.nlu import NLUBenchOptions, glue_task_of, nlu_sweep
    from balora.bench.sweep import expand

    opts = NLUBenchOptions(models=["m"], methods=["lora"], tasks=["rte", "mrpc"], seeds=1,
                           per_task={"rte": {"model.pair_encoding": "siamese"}})
    rte, mrpc = expand(nlu_sweep(opts), task_fn=glue_task_of)
    assert rte.config.model.pair_encoding == "siamese" and mrpc.config.model.pair_encoding == "cross"
    with pytest.raises(ValueError, match="model.pair_encoding"):
        expand(nlu_sweep(opts, overrides=["--model.pair_encoding", "bi"]), task_fn=glue_task_of)
