"""run_nlu returns test predictions in row order, also with group_by_length (transformers 5 length-groups
evaluation batches as well), and records the head's pooling and warm start."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from transformers import BertTokenizerFast

from balora.training.nlu import describe_labels, run_nlu
from balora.training.run_config import build_config

from tests.core.tiny import tiny_bert

WORDS = "the a cat dog sat ran on under mat log big small red blue it is not".split()


def test_predictions_stay_in_row_order_with_group_by_length(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    folder = tmp_path / "tiny-bert"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    tiny_bert(num_labels=2).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)

    def rows(n):
        out = {"text": [], "label": []}
        for i in range(n):  # lengths vary a lot, so length grouping reorders
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (1 + (7 * i) % 23,), generator=g)]
            out["text"].append(" ".join(words))
            out["label"].append(int("cat" in words))
        return datasets.Dataset.from_dict(out)

    test = rows(300)
    data = describe_labels(datasets.DatasetDict({"train": rows(32), "test": test}), ["text"], "label")
    cfg = build_config({"kind": "nlu", "model": {"name_or_path": str(folder), "max_length": 32},
                        "method": {"name": "lora", "r": 2, "head_warmup": "logreg"},
                        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 8,
                                  "eval_batch_size": 16, "group_by_length": True, "progress": False, "lr": 1e-3}})
    result = run_nlu(cfg, data, save_adapter=False)
    assert np.array_equal(result.references["test"], np.asarray(test["label"]))
    assert result.head["pooling"] == "cls" and result.head["head_warmup"] == "logreg"
    assert result.head["head_warmup_examples"] == 32 and result.head["head_warmup_seconds"] > 0


def test_predict_by_length_sorts_batches_and_restores_row_order():
    from types import SimpleNamespace

    from balora.training.nlu import predict_by_length

    lengths = [3, 9, 1, 5, 9, 2, 7]
    ds = datasets.Dataset.from_dict({"input_ids": [[i] * n for i, n in enumerate(lengths)], "labels": list(range(7))})
    seen = []

    class Trainer:
        def predict(self, dataset):  # logits = (row id, length): tells where each row went
            seen.append([len(x) for x in dataset["input_ids"]])
            logits = np.array([[ids[0], len(ids)] for ids in dataset["input_ids"]], dtype=float)
            return SimpleNamespace(predictions=logits, label_ids=np.asarray(dataset["labels"]))

    logits, labels = predict_by_length(Trainer(), ds)
    assert seen == [sorted(lengths, reverse=True)]  # predicted longest first
    assert logits[:, 0].tolist() == list(range(7)) and logits[:, 1].tolist() == lengths
    assert labels.tolist() == list(range(7))
