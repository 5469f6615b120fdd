"""The two published versions of the terms (BALoRAConfig.formula: 'v5' and 'iclr2026'), each form against a value
computed by hand (plain arithmetic on Python floats, no torch helper of the same kind)."""

from __future__ import annotations

import math

import pytest
import torch

from balora import regularizers as R
from balora.config import BALoRAConfig
from balora.schedules import lambda_weights


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def test_nlu_consistency_kl_hand_value():
    zf = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zp = [[2.0, 0.0, 0.0], [0.5, 0.5, 1.0]]
    t = 2.0
    kls = []
    for rf, rp in zip(zf, zp):
        p, q = _softmax(rp, t), _softmax(rf, t)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    expected = t * t * sum(kls) / len(kls)
    got = R.nlu_consistency_kl(torch.tensor(zf), torch.tensor(zp), temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Same distributions: 0; the teacher gets no gradient, the student does.
    assert R.nlu_consistency_kl(torch.tensor(zp), torch.tensor(zp), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor(zf, requires_grad=True)
    teacher = torch.tensor(zp, requires_grad=True)
    R.nlu_consistency_kl(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_nlu_consistency_kl_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        R.nlu_consistency_kl(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        R.nlu_consistency_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_nlg_topk_entropy_hand_value():
    row = [3.0, 1.0, 0.0, -1.0, 0.5]
    logits = torch.tensor([[row, [9.0] * 5]])  # second position is not trained
    mask = torch.tensor([[True, False]])
    p = _softmax([3.0, 1.0])  # the top-2 logits, renormalised
    expected_top2 = sum(pi * math.log(pi) for pi in p)  # minus the entropy
    full = _softmax(row)
    expected_full = sum(pi * math.log(pi) for pi in full)
    assert R.nlg_diversity(logits, mask, top_k=2).item() == pytest.approx(expected_top2, rel=1e-6)
    for everything in (None, 0):  # None and 0 both mean the whole vocabulary
        assert R.nlg_diversity(logits, mask, top_k=everything).item() == pytest.approx(expected_full, rel=1e-6)


def test_nlg_svd_frobenius_normaliser_hand_value():
    # Rows orthogonal: singular values 5, 2, 0 (row norms); Frobenius norm sqrt(25 + 4) = sqrt(29).
    z = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    fro = R.nlg_svd(z, mask, k=1, estimator="exact", normalizer="fro")
    total = R.nlg_svd(z, mask, k=1, estimator="exact", normalizer="sum")
    assert fro.item() == pytest.approx(-5.0 / math.sqrt(29.0), rel=1e-6)
    assert total.item() == pytest.approx(-5.0 / 7.0, rel=1e-6)


def test_nlu_svd_unclipped_is_the_constant_minus_one_when_k_covers_every_class():
    z = torch.randn(8, 2, requires_grad=True)
    value = R.nlu_svd(z, k=5, clip_k=False)  # the authors' NLU setting: k = 5, C = 2
    assert value.item() == pytest.approx(-1.0, abs=1e-6)
    value.backward()
    assert z.grad.abs().max().item() < 1e-6  # trains nothing
    assert R.svd_term_is_constant(5, 2, clip_k=False) and R.svd_term_is_constant(5, 1, clip_k=True)
    assert not R.svd_term_is_constant(5, 2, clip_k=True) and not R.svd_term_is_constant(5, 6, clip_k=False)
    clipped = R.nlu_svd(z.detach(), k=5, clip_k=True)  # k -> min(N, C) - 1 = 1: the share of s1
    s = torch.linalg.svdvals(z.detach())
    assert clipped.item() == pytest.approx(-(s[0] / s.sum()).item(), rel=1e-6)


def test_formula_fills_only_the_fields_left_empty():
    v5, new = BALoRAConfig(task="nlu"), BALoRAConfig(task="nlu", formula="iclr2026")
    assert (v5.nlu_consistency, v5.schedule, v5.svd_clip_k) == ("mse", "constant", True)
    assert (new.nlu_consistency, new.temperature, new.schedule, new.svd_clip_k) == ("kl", 2.0, "authors", False)
    nlg = BALoRAConfig(task="nlg", formula="iclr2026")
    assert (nlg.entropy_top_k, nlg.svd_normalizer) == (20, "fro")
    mixed = BALoRAConfig(task="nlg", formula="iclr2026", entropy_top_k=0, schedule="constant", temperature=1.5)
    assert (mixed.entropy_top_k, mixed.schedule, mixed.temperature, mixed.svd_normalizer) == (0, "constant", 1.5, "fro")
    # A resolved config round-trips through its dict (what a run record stores) unchanged.
    assert BALoRAConfig(**mixed.to_dict()) == mixed


@pytest.mark.parametrize("field, value", [("formula", "v7"), ("nlu_consistency", "kl2"), ("svd_clip_k", "yes"),
                                          ("entropy_top_k", 1), ("temperature", 0.0)])
def test_bad_formula_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BALoRAConfig(task="nlg", **{field: value})


def test_authors_schedule_hand_values():
    cfg = BALoRAConfig(task="nlu", formula="iclr2026", lambda_consistency=1.0, lambda_diversity=2.0, lambda_svd=4.0)
    assert lambda_weights(cfg, 0, 100) == pytest.approx((1.0, 0.0, 0.0))
    assert lambda_weights(cfg, 50, 100) == pytest.approx((0.1 + 0.9 * 0.5, 2.0, 4.0))  # cosine at 1/2 = 0.5
    assert lambda_weights(cfg, 20, 100)[1:] == pytest.approx((0.0, 0.0))  # off for the first 20%
    assert lambda_weights(cfg, 22, 100)[1:] == pytest.approx((2.0 * 0.4, 4.0 * 0.4))  # 2 of the 5 ramp points
    assert lambda_weights(cfg, 100, 100) == pytest.approx((0.1, 2.0, 4.0))  # l1 ends at 0.1 x l1
    v5 = BALoRAConfig(task="nlu", lambda_consistency=1.0, lambda_diversity=2.0, lambda_svd=4.0)
    assert lambda_weights(v5, 50, 100) == (1.0, 2.0, 4.0)


def _trained_briefly(cfg: BALoRAConfig, tmp_path, num_labels: int = 3):
    """A ba-lora classifier after 2 steps (student != reference), its trainer, and the pretrained model."""
    from transformers import TrainingArguments

    from balora import prepare_model
    from balora.trainer import BALoRATrainer
    from tests.core.tiny import nlu_batch, tiny_bert

    batch = nlu_batch(n=8, num_labels=num_labels)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    prepared = prepare_model(tiny_bert(num_labels), "ba-lora", r=2, config=cfg)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
                             learning_rate=1e-2, use_cpu=True, save_strategy="no")
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, train_dataset=rows)
    trainer.train()
    return prepared.model, trainer, tiny_bert(num_labels)


def test_iclr2026_nlu_loss_is_task_plus_kl_plus_diversity_and_skips_the_constant_svd_term(tmp_path, caplog):
    import torch.nn.functional as F

    from tests.core.tiny import nlu_batch

    cfg = BALoRAConfig(task="nlu", formula="iclr2026", schedule="constant")  # k = 5 >= 3 classes, unclipped
    with caplog.at_level("WARNING", logger="balora.objectives"):
        model, trainer, pretrained = _trained_briefly(cfg, tmp_path)
    assert sum("SVD term is the constant -1" in r.getMessage() for r in caplog.records) == 1  # said once, at start
    probe = nlu_batch(n=8, num_labels=3, seed=7)
    model.train()
    loss = trainer.compute_loss(model, probe)
    with torch.no_grad():
        z, ref = model(**probe).logits, pretrained(**probe).logits
    expected = (F.cross_entropy(z, probe["labels"]) + cfg.lambda_consistency * R.nlu_consistency_kl(z, ref, 2.0)
                + cfg.lambda_diversity * R.nlu_diversity(z))
    assert R.nlu_consistency_kl(z, ref, 2.0).item() > 1e-6  # the student moved: the KL term is really in there
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_v5_nlu_loss_uses_the_mse_form_and_the_clipped_svd_term(tmp_path):
    import torch.nn.functional as F

    from tests.core.tiny import nlu_batch

    cfg = BALoRAConfig(task="nlu")
    model, trainer, pretrained = _trained_briefly(cfg, tmp_path)
    probe = nlu_batch(n=8, num_labels=3, seed=7)
    model.train()
    loss = trainer.compute_loss(model, probe)
    with torch.no_grad():
        z, ref = model(**probe).logits, pretrained(**probe).logits
    expected = (F.cross_entropy(z, probe["labels"]) + cfg.lambda_consistency * R.nlu_consistency(z, ref)
                + cfg.lambda_diversity * R.nlu_diversity(z) + cfg.lambda_svd * R.nlu_svd(z, cfg.svd_top_k))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_top_k_entropy_runs_on_the_full_logits_path():
    from balora import prepare_model
    from balora.objectives import FusedNLGObjective, NLGObjective
    from tests.core.tiny import tiny_llama

    objective = prepare_model(tiny_llama(), "ba-lora", r=2, config=BALoRAConfig(task="nlg", formula="iclr2026")).objective()
    assert type(objective) is NLGObjective  # the fused path computes the full-vocabulary entropy only
    v5 = prepare_model(tiny_llama(), "ba-lora", r=2, config=BALoRAConfig(task="nlg")).objective()
    assert type(v5) is FusedNLGObjective
    with pytest.raises(ValueError, match="fused_nlg=True"):
        BALoRAConfig(task="nlg", formula="iclr2026", fused_nlg=True)
