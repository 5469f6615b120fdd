"""BALoRATrainer on tiny models: loss composition, logging, fallbacks, fused NLG path."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

from balora import BALoRAConfig, BALoRATrainer, prepare_model
from balora import regularizers as R
from balora.fused import OutputFactor, fused_lm_terms
from balora.reference import reference_mode

from .tiny import nlg_batch, nlu_batch, tiny_bert, tiny_llama


class ListDataset(Dataset):
    def __init__(self, batch: dict):
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=5e-3, max_steps=4,
                logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _train_loss(prepared, batch, tmp_path):
    trainer = BALoRATrainer(model=prepared.model, args=_args(tmp_path), objective=prepared.objective())
    prepared.model.train()
    return trainer.compute_loss(prepared.model, batch)


def test_all_lambdas_zero_equals_plain_pissa(tmp_path):
    batch = nlu_batch()
    plain = prepare_model(tiny_bert(), "pissa", r=4)
    reg = prepare_model(tiny_bert(), "ba-lora", r=4,
                        config=BALoRAConfig(lambda_consistency=0, lambda_diversity=0, lambda_svd=0))
    plain_loss = _train_loss(plain, batch, tmp_path)
    reg_loss = _train_loss(reg, batch, tmp_path)
    assert reg_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)


def test_nlu_loss_is_task_plus_weighted_terms_and_consistency_zero_at_step0(tmp_path):
    batch = nlu_batch()
    cfg = BALoRAConfig(lambda_consistency=0.5, lambda_diversity=0.2, lambda_svd=0.3, svd_top_k=1)
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4, config=cfg)
    model = prepared.model
    model.train()
    with torch.no_grad():
        out = model(**batch)
        expected = (out.loss + 0.5 * 0.0 + 0.2 * R.nlu_diversity(out.logits) + 0.3 * R.nlu_svd(out.logits, 1))
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path))
    loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer._sums["consistency"] == pytest.approx(0.0, abs=1e-10)


def test_training_logs_each_term_and_consistency_grows(tmp_path):
    data = ListDataset(nlu_batch(n=16))
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    model = prepared.model
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path, max_steps=6), train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_task" in h]
    assert len(logs) == 6
    for key in ("loss_task", "loss_consistency", "loss_diversity", "loss_svd"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in logs)
    assert logs[0]["loss_consistency"] == pytest.approx(0.0, abs=1e-10)
    assert logs[-1]["loss_consistency"] > 1e-6
    assert all(h["loss_svd"] < 0 for h in logs)


def test_batch_of_one_skips_batch_terms_with_a_logged_count(tmp_path):
    data = ListDataset(nlu_batch(n=3))
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    model = prepared.model
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path, per_device_train_batch_size=1, max_steps=2), train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_task" in h]
    assert all(h.get("balora_skipped_diversity") == 1 and h.get("balora_skipped_svd") == 1 for h in logs)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)


def test_nan_term_raises_naming_the_term(monkeypatch, tmp_path):
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    model = prepared.model
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path))
    monkeypatch.setattr(R, "nlu_diversity", lambda z: z.sum() * float("nan"))
    model.train()
    trainer.compute_loss(model, nlu_batch()).backward()
    # Checked once per optimizer step (before it), not per term: no host synchronisation per micro-batch.
    with pytest.raises(FloatingPointError, match="diversity"):
        trainer.guard.check(model, 1)


def test_regression_head_uses_pooled_features(tmp_path):
    """The regression objective's loss is MSE + the three terms on the pooled features fed to the head (the
    BERT pooler output here), against the pretrained model's features: checked against a hand computation."""
    batch = nlu_batch(num_labels=1)
    cfg = BALoRAConfig(lambda_consistency=0.5, lambda_diversity=0.2, lambda_svd=0.3, svd_top_k=2)
    prepared = prepare_model(tiny_bert(num_labels=1), "ba-lora", r=4, config=cfg)
    model = prepared.model
    with torch.no_grad():  # move the adapter away from its init, so the consistency term is not 0
        for name, param in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                param.add_(0.05 * torch.randn_like(param))
    loss = _train_loss(prepared, batch, tmp_path)
    assert torch.isfinite(loss)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        out = model(**batch)
        features = model.base_model.model.bert(**inputs).pooler_output  # the classifier's input
        ref_features = tiny_bert(num_labels=1).bert(**inputs).pooler_output  # the pretrained model's
        mse = torch.nn.functional.mse_loss(out.logits.squeeze(-1), batch["labels"])
        consistency = R.nlu_consistency(features, ref_features)
        expected = (mse + 0.5 * consistency + 0.2 * R.nlu_diversity(features) + 0.3 * R.nlu_svd(features, 2))
    assert consistency > 0
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    # on the (N, 1) outputs the terms would be degenerate (no covariance, SVD share -1): the features matter
    on_logits = mse + 0.2 * R.nlu_diversity(out.logits) + 0.3 * R.nlu_svd(out.logits, 2)
    assert abs(float(on_logits) - float(expected)) > 1e-3
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fused_nlg_terms_equal_reference_formulas():
    torch.manual_seed(0)
    m, d, v = 13, 8, 50
    weight = torch.randn(v, d)
    bias = torch.randn(v)
    h = torch.randn(m, d, dtype=torch.float64).float().requires_grad_(True)
    hr = torch.randn(m, d)
    targets = torch.randint(0, v, (m,))
    l1, l2, temp = 0.7, 0.3, 2.0
    fused = fused_lm_terms(h, weight, targets, hr, bias, l1, l2, temp, chunk_size=5)
    fused.loss.backward()
    g_fused = h.grad.clone()
    h.grad = None
    logits = (h @ weight.T + bias)[None]
    ref_logits = (hr @ weight.T + bias)[None]
    mask = torch.ones(1, m, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits[0], targets)
    kl = R.nlg_consistency(logits, ref_logits, mask, temp)
    neg_ent = R.nlg_diversity(logits, mask)
    total = ce + l1 * kl + l2 * neg_ent
    total.backward()
    assert fused.task.item() == pytest.approx(ce.item(), rel=1e-5)
    assert fused.consistency.item() == pytest.approx(kl.item(), rel=1e-4)
    assert fused.diversity.item() == pytest.approx(neg_ent.item(), rel=1e-5)
    assert torch.allclose(g_fused, h.grad, atol=1e-5)
    # The small factor has the logits' singular values and Frobenius norm.
    small = OutputFactor().small_logits(h.detach(), weight, bias)
    s_small, s_full = torch.linalg.svdvals(small), torch.linalg.svdvals(logits[0].detach())
    assert small.shape == (m, d + 1)  # rank <= d + 1 (the bias adds one)
    assert torch.allclose(s_small, s_full[: d + 1], rtol=1e-4, atol=1e-4)
    assert s_full[d + 1:].abs().max() < 1e-3
    assert torch.linalg.matrix_norm(small).item() == pytest.approx(torch.linalg.matrix_norm(logits[0]).item(), rel=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_nlg_trainer_loss_matches_formulas(fused, tmp_path):
    batch = nlg_batch()
    cfg = BALoRAConfig(task="nlg", lambda_consistency=0.5, lambda_diversity=0.1, lambda_svd=0.2, svd_top_k=2,
                       svd_estimator="exact", fused_nlg=fused)
    prepared = prepare_model(tiny_llama(), "ba-lora", r=4, config=cfg)
    model = prepared.model
    model.train()
    with torch.no_grad():
        out = model(**batch)
        with reference_mode(model, prepared.reference) as ref:
            ref_logits = ref(**{k: v for k, v in batch.items() if k != "labels"}).logits
        mask = R.shifted_label_mask(batch["labels"])
        expected = (out.loss + 0.5 * R.nlg_consistency(out.logits, ref_logits, mask)
                    + 0.1 * R.nlg_diversity(out.logits, mask) + 0.2 * R.nlg_svd(out.logits, mask, 2, estimator="exact"))
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=_args(tmp_path))
    loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert trainer._sums["consistency"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad and p.grad is not None)


def test_nlg_lambdas_zero_equals_plain_causal_lm_loss(tmp_path):
    batch = nlg_batch()
    plain = prepare_model(tiny_llama(), "pissa", r=4)
    reg = prepare_model(tiny_llama(), "ba-lora", r=4, config=BALoRAConfig(
        task="nlg", lambda_consistency=0, lambda_diversity=0, lambda_svd=0))
    assert _train_loss(reg, batch, tmp_path).item() == pytest.approx(_train_loss(plain, batch, tmp_path).item(), rel=1e-5)


def test_cached_teacher_logits_give_the_same_loss_as_the_live_reference(tmp_path):
    from dataclasses import replace

    from balora.reference import TeacherCache

    batch = nlu_batch(n=8)
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    live = prepared.model
    with torch.no_grad():  # move off the initialisation so the consistency term is non-zero
        for p in live.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    live.train()
    live_loss = BALoRATrainer(model=live, objective=prepared.objective(), args=_args(tmp_path)).compute_loss(live, batch)

    cache = TeacherCache()
    index = torch.arange(8)
    with torch.no_grad(), reference_mode(live, prepared.reference) as ref:
        cache.put("logits", index, ref(**{k: v for k, v in batch.items() if k != "labels"}).logits, 8)
    cached = replace(prepared.reference, mode="cached", cache=cache)
    trainer = BALoRATrainer(model=live, objective=prepared.objective(cached), args=_args(tmp_path))
    cached_loss = trainer.compute_loss(live, {**batch, "balora_index": index})
    assert cached_loss.item() == pytest.approx(live_loss.item(), rel=1e-6)
    assert trainer._sums["consistency"] > 1e-6
    with pytest.raises(KeyError, match="no entry for example index"):
        trainer.compute_loss(live, {**batch, "balora_index": index + 100})


def test_the_trainer_takes_the_objective_not_the_prepared_result(tmp_path):
    prepared = prepare_model(tiny_bert(), "ba-lora", r=4)
    with pytest.raises(TypeError, match=r"model=prepared.model, objective=prepared.objective\(\)"):
        BALoRATrainer(model=prepared, args=_args(tmp_path))
    plain = BALoRATrainer(model=tiny_bert(), args=_args(tmp_path))  # no regularisers: the task loss alone
    assert not plain.objective.regularized and plain.lambdas() == (0.0, 0.0, 0.0)
    batch = nlu_batch()
    plain.model.train()
    with torch.no_grad():
        expected = plain.model(**batch).loss
    assert plain.compute_loss(plain.model, batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_classification_terms_on_pooled_features_with_nlu_rows_features(tmp_path):
    """nlu_rows='features' moves a classifier's three terms from its (N, C) logits to the pooled features fed to the
    head (N, H): cross-entropy + consistency (normalised MSE) + covariance + SVD on the features, by hand."""
    batch = nlu_batch(num_labels=3)
    cfg = BALoRAConfig(lambda_consistency=0.5, lambda_diversity=0.2, lambda_svd=0.3, svd_top_k=2, nlu_rows="features")
    prepared = prepare_model(tiny_bert(num_labels=3), "ba-lora", r=4, config=cfg)
    model = prepared.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                param.add_(0.05 * torch.randn_like(param))
    loss = _train_loss(prepared, batch, tmp_path)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        out = model(**batch)
        features = model.base_model.model.bert(**inputs).pooler_output
        ref_features = tiny_bert(num_labels=3).bert(**inputs).pooler_output
        ce = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
        expected = (ce + 0.5 * R.nlu_consistency(features, ref_features) + 0.2 * R.nlu_diversity(features)
                    + 0.3 * R.nlu_svd(features, 2))
        on_logits = prepare_model(tiny_bert(num_labels=3), "ba-lora", r=4,
                                  config=BALoRAConfig(lambda_consistency=0.5, lambda_diversity=0.2, lambda_svd=0.3,
                                                      svd_top_k=2)).objective()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert type(on_logits).__name__ == "NLUObjective" and type(prepared.objective()).__name__ == "RegressionObjective"
    with pytest.raises(ValueError, match="nlu_rows"):
        BALoRAConfig(nlu_rows="pooled")
