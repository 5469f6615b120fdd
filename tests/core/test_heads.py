"""Classifier pooling, the head's input (balora.heads, balora.pooling, balora.classifier_loading) and the
linear-probe warm start (balora.training.head_warmup) on tiny models built in code."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformers import DataCollatorWithPadding

from balora import prepare_model
from balora.classifier_loading import load_classifier, resolve_pooling, untrained_poolers
from balora.heads import PooledClassifier, pool
from balora.objectives import head_input_hook
from balora.objectives import pool as objective_rows
from balora.pooling import head_linear
from balora.reference import reference_mode
from balora.training.head_warmup import fit_linear_head, warm_up_head

from .tiny import nlu_batch, tiny_bert


def test_pool_mean_and_last_respect_the_mask_with_either_padding_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, left, "mean")[0], hidden[0, 2:].mean(0))
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "max")


def test_auto_pooling_reads_the_checkpoint(tmp_path):
    plain = tmp_path / "plain"
    tiny_bert().save_pretrained(plain)
    assert resolve_pooling(str(plain)) == "cls"
    st = tmp_path / "st"
    tiny_bert().bert.save_pretrained(st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert resolve_pooling(str(st)) == "mean" and resolve_pooling(str(st), "last") == "last"
    assert isinstance(load_classifier(str(st), 3), PooledClassifier)
    saved = tmp_path / "saved"
    load_classifier(str(st), 3, "last").save_pretrained(saved)
    assert resolve_pooling(str(saved)) == "last"  # a saved pooled classifier keeps its pooling
    with pytest.raises(ValueError, match="model.pooling"):
        resolve_pooling(str(st), "avg")


def test_untrained_pooler_is_detected_and_a_trained_one_is_not():
    model = tiny_bert()  # fresh init: bias 0, Gaussian weights
    assert untrained_poolers(model) == ["bert.pooler.dense"]
    with torch.no_grad():  # a trained-looking layer: one strong direction
        u = torch.randn(32, 1)
        model.bert.pooler.dense.weight.add_(u @ u.T * 0.5)
    assert untrained_poolers(model) == []
    with torch.no_grad():
        model.bert.pooler.dense.weight.normal_(0, 0.02)
        model.bert.pooler.dense.bias.fill_(0.01)
    assert untrained_poolers(model) == []  # a non-zero bias: trained


def test_fit_linear_head_reproduces_sklearn_probabilities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)) * np.array([1, 10, 0.1, 3, 1]) + 4
    for k in (2, 3):
        y = rng.integers(0, k, 120)
        x[np.arange(120), y] += 2.0
        w, b = fit_linear_head(x, y, k)
        ref = LogisticRegression(max_iter=2000, random_state=0).fit((x - x.mean(0)) / x.std(0), y)
        logits = x @ w.T + b
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.testing.assert_allclose(probs, ref.predict_proba((x - x.mean(0)) / x.std(0)), atol=1e-6)
    w, b = fit_linear_head(x, np.where(y == 2, 0, y), 3)  # class 2 absent: never predicted
    assert (w[2] == 0).all() and ((x @ w.T + b).argmax(1) != 2).all()


def test_probe_ignores_constant_feature_dimensions():
    """Mean-pooled MiniLM has dimensions whose spread across sentences is float noise (1e-32, 3e-9); dividing
    by it gave probe weights of 1e7 and logits that exploded at the first update. Such dimensions get weight 0,
    and the probe on the others is unchanged."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    informative = rng.normal(size=(200, 6)) + np.eye(3)[y] @ rng.normal(size=(3, 6))
    constant = 0.7 + rng.normal(size=(200, 2)) * np.array([1e-9, 1e-32])  # noise-level spread
    x = np.concatenate([informative[:, :3], constant, informative[:, 3:]], axis=1)
    w, b = fit_linear_head(x, y, 3, c=0.5)
    w_ref, b_ref = fit_linear_head(informative, y, 3, c=0.5)
    assert (w[:, 3:5] == 0).all() and np.abs(w).max() < 10
    np.testing.assert_allclose(x @ w.T + b, informative @ w_ref.T + b_ref, atol=1e-8)
    # a small shift of the constant dimensions (what training does to them) moves no logit
    shifted = x.copy()
    shifted[:, 3:5] += 1e-3
    np.testing.assert_allclose(shifted @ w.T + b, x @ w.T + b, atol=1e-12)


class _Rows(torch.utils.data.Dataset):
    """A minimal tokenised dataset with the column API warm_up_head uses."""

    def __init__(self, batch):
        self.rows = [{k: v[i].tolist() for k, v in batch.items()} for i in range(len(batch["labels"]))]
        self.column_names = list(batch) + ["balora_index"]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def select_columns(self, names):
        assert "balora_index" not in names
        return self


class _Tok:
    pad_token_id = 0
    padding_side = "right"

    def pad(self, rows, **kw):
        return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_warm_start_fits_the_head_and_becomes_the_consistency_reference(tmp_path, pooling):
    base = tmp_path / "base"
    tiny_bert().save_pretrained(base)
    torch.manual_seed(0)
    model = load_classifier(str(base), 3, pooling)
    batch = nlu_batch(n=48, num_labels=3)
    head = model.classifier
    random_head = head.weight.detach().clone()
    info = warm_up_head(model, _Rows(batch), DataCollatorWithPadding(_Tok()), batch_size=16)
    assert info["head_warmup"] == "logreg" and info["head_warmup_seconds"] > 0 and info["head_warmup_examples"] == 48
    assert not torch.equal(head.weight, random_head)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        warmed = model.eval()(**inputs).logits
    # The probe is better than chance on its own training rows (48 random rows, 32-d features: separable).
    assert (warmed.argmax(-1) == batch["labels"]).float().mean() > 0.6
    assert info["train_accuracy"] == pytest.approx(float((warmed.argmax(-1) == batch["labels"]).float().mean()))
    prepared = prepare_model(model, "ba-lora", r=4)
    peft_model = prepared.model
    with torch.no_grad():  # move the trained copy of head and adapters away from step 0
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        peft_model.eval()
        tuned = peft_model(**inputs).logits
        with reference_mode(peft_model, prepared.reference) as ref:
            reference = ref(**inputs).logits
    assert (tuned - warmed).abs().max() > 1e-3
    torch.testing.assert_close(reference, warmed, atol=1e-5, rtol=1e-5)  # pretrained body + warmed head


def test_pooled_classifier_trains_only_adapters_and_head_under_peft(tmp_path):
    base = tmp_path / "base"
    tiny_bert().bert.save_pretrained(base)
    model = prepare_model(load_classifier(str(base), 3, "mean"), "lora", r=4).model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier.modules_to_save" in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert not any("classifier.lora_" in n or "classifier.base_layer" in n for n in trainable)
    out = model(**nlu_batch())
    out.loss.backward()
    assert out.logits.shape == (8, 3)


def test_warm_up_features_are_cached_by_key(tmp_path):
    base = tmp_path / "base"
    tiny_bert().save_pretrained(base)
    batch = nlu_batch(n=24, num_labels=3)
    collator = DataCollatorWithPadding(_Tok())
    first = load_classifier(str(base), 3, "mean")
    a = warm_up_head(first, _Rows(batch), collator, cache_key=("k", str(base)))
    torch.manual_seed(5)  # a different random head: the features (head inputs) do not depend on it
    second = load_classifier(str(base), 3, "mean")
    b = warm_up_head(second, _Rows(batch), collator, cache_key=("k", str(base)))
    assert not a["head_warmup_features_cached"] and b["head_warmup_features_cached"]
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert warm_up_head(second, _Rows(batch), collator, method="none") == {"head_warmup": "none"}


def test_head_features_keep_row_order_when_batching_by_length(tmp_path):
    import datasets

    from balora.training.head_warmup import head_features

    base = tmp_path / "base"
    tiny_bert().save_pretrained(base)
    model = load_classifier(str(base), 3, "mean").eval()
    g = torch.Generator().manual_seed(0)
    lengths = [9, 3, 7, 2, 8, 5]
    rows = [{"input_ids": torch.randint(1, 64, (n,), generator=g).tolist(), "attention_mask": [1] * n, "labels": i % 3}
            for i, n in enumerate(lengths)]
    ds = datasets.Dataset.from_list(rows)
    feats, labels = head_features(model, ds, DataCollatorWithPadding(_Tok2()), batch_size=4)
    assert labels.tolist() == [r["labels"] for r in rows]
    for i, r in enumerate(rows):
        with torch.no_grad():
            hidden = model.body(input_ids=torch.tensor([r["input_ids"]]))[0]
        np.testing.assert_allclose(feats[i], hidden.mean(1)[0].numpy(), atol=1e-5)


class _Tok2:
    """Right-pads with id 0 (the collator's tokenizer.pad)."""

    pad_token_id = 0
    padding_side = "right"

    def pad(self, rows, **kw):
        n = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (n - len(r["input_ids"])) for r in rows]),
                "attention_mask": torch.tensor([r["attention_mask"] + [0] * (n - len(r["attention_mask"])) for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}


def test_probe_c_is_chosen_by_cross_validation():
    from balora.training.head_warmup import PROBE_CS, choose_c

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    noise_only = rng.normal(size=(300, 50))  # features unrelated to the labels: strongest regularisation
    assert choose_c(noise_only, y) == min(PROBE_CS)
    signal = noise_only.copy()
    signal[np.arange(300), y] += 5.0  # cleanly separable: weak regularisation wins
    assert choose_c(signal, y) >= 0.1
    assert choose_c(signal[:4], np.array([0, 1, 1, 2])) == 1.0  # a class with one example: no CV possible


def _tiny_roberta(num_labels: int = 1):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=40, num_labels=num_labels, pad_token_id=1, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return RobertaForSequenceClassification(cfg).eval()


def test_a_roberta_head_is_regularised_on_its_pooled_features_not_on_a_token():
    """RobertaForSequenceClassification's head is dense -> tanh -> out_proj on the <s> token: the regression terms
    must act on what out_proj receives (the pooled feature), for the student and for the reference pass, which
    runs peft's frozen original copy of the head."""
    model = prepare_model(_tiny_roberta(), "lora", r=4).model
    batch = nlu_batch(n=4, t=9, num_labels=1)
    batch["attention_mask"][0, -3:] = 0  # right padding in the first row
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for reference in (False, True):
        captured: list[torch.Tensor] = []
        hook = head_input_hook(model, captured)
        try:
            with torch.no_grad(), (model.disable_adapter() if reference else contextlib.nullcontext()):
                out = model(**inputs, output_hidden_states=True)
        finally:
            hook.remove()
        assert len(captured) == 1  # one copy of the head ran, and only that one was recorded
        rows = objective_rows(captured[0], inputs)
        head = model.base_model.model.classifier
        copy = head.original_module if reference else head.modules_to_save["default"]
        with torch.no_grad():
            pooled = torch.tanh(copy.dense(out.hidden_states[-1][:, 0]))
            assert torch.allclose(rows, pooled, atol=1e-6)
            assert torch.allclose(copy.out_proj(rows), out.logits, atol=1e-6)
            assert not torch.allclose(rows, out.hidden_states[-1][:, -1], atol=1e-3)  # not the last token's state
    hook = head_input_hook(model, captured := [])
    hook.remove()
    model(**inputs)
    assert captured == []  # remove() takes every hook off


def test_a_decoder_classifier_is_read_at_the_last_real_token_with_left_padding():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=3, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 64, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding: the last real token is the row's last position
    ids[1, 5:], mask[1, 5:] = 0, 0  # right padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    captured: list[torch.Tensor] = []
    hook = head_input_hook(model, captured)
    with torch.no_grad():
        logits = model(**inputs).logits
    hook.remove()
    assert captured[0].dim() == 3  # score is applied to every position
    rows = objective_rows(captured[0], inputs)
    assert torch.allclose(head_linear(model)(rows), logits, atol=1e-6)  # the rows transformers returns logits for


def test_head_linear_names_the_layer_the_probe_fits():
    roberta = _tiny_roberta(num_labels=3)
    assert head_linear(roberta) is roberta.classifier.out_proj
    bert = tiny_bert()
    assert head_linear(bert) is bert.classifier
    with pytest.raises(ValueError, match="no 'classifier' / 'score' head"):
        head_linear(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="expected one linear head layer"):
        head_linear(prepare_model(tiny_bert(), "lora", r=4).model)  # peft holds two copies: not an unwrapped model
