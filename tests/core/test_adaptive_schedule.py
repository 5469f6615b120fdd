"""schedule='adaptive': weights follow the term magnitudes (loss-share balancing), clipped; the loss uses them."""

from __future__ import annotations

import pytest
import torch

from balora.config import BALoRAConfig
from balora.schedules import AdaptiveLambdas, adaptive_factors, lambda_weights


def test_factors_keep_each_terms_share_of_the_task_loss():
    first = {"consistency": 0.2, "diversity": 1.0, "svd": 0.5}
    # consistency halved, diversity unchanged, svd doubled; task loss unchanged
    f = adaptive_factors(1.0, {"consistency": 0.1, "diversity": 1.0, "svd": 1.0}, 1.0, first, clip=10)
    assert f == pytest.approx((2.0, 1.0, 0.5))
    # task loss halves too: the shares are relative to it
    f = adaptive_factors(0.5, {"consistency": 0.1, "diversity": 1.0, "svd": 1.0}, 1.0, first, clip=10)
    assert f == pytest.approx((1.0, 0.5, 0.25))
    assert adaptive_factors(1.0, {"consistency": 1e-6}, 1.0, first, clip=3)[0] == pytest.approx(3.0)
    assert adaptive_factors(1.0, {}, 1.0, first, clip=3) == (1.0, 1.0, 1.0)


def _configured(cfg: BALoRAConfig) -> tuple[float, float, float]:
    return cfg.lambda_consistency, cfg.lambda_diversity, cfg.lambda_svd


def test_adaptive_lambdas_track_observed_values():
    cfg = BALoRAConfig(task="nlu", schedule="adaptive", adaptive_beta=0.0)
    l1, l2, l3 = _configured(cfg)
    ad = AdaptiveLambdas(cfg)
    assert ad.weights() == pytest.approx((l1, l2, l3))
    ad.observe({"task": torch.tensor(1.0), "consistency": torch.tensor(0.4), "svd": torch.tensor(-0.8)})
    assert ad.weights() == pytest.approx((l1, l2, l3))  # the first step sets the reference
    ad.observe({"task": torch.tensor(1.0), "consistency": torch.tensor(0.1), "svd": torch.tensor(-0.8)})
    # consistency shrank 4x at the same task loss: its weight grows 4x; the others keep theirs
    assert ad.weights() == pytest.approx((4 * l1, l2, l3))
    assert lambda_weights(cfg, 5, 10) == (l1, l2, l3)  # the schedule itself leaves the scaling to AdaptiveLambdas


def test_bad_adaptive_settings_are_named():
    with pytest.raises(ValueError, match="adaptive_beta"):
        BALoRAConfig(schedule="adaptive", adaptive_beta=1.0)
    with pytest.raises(ValueError, match="adaptive_clip"):
        BALoRAConfig(schedule="adaptive", adaptive_clip=0.5)


def test_trainer_loss_is_the_task_loss_plus_the_adaptively_weighted_terms(tmp_path):
    """After a few steps the adaptive weights differ from the configured ones, and the loss the trainer returns is
    task + sum(weight_i * term_i) with those weights, each term recomputed here from the logits of the student and
    of the pretrained model (PiSSA: the original model's function)."""
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from balora import prepare_model
    from balora import regularizers as R
    from balora.trainer import BALoRATrainer
    from tests.core.tiny import nlu_batch, tiny_bert

    cfg = BALoRAConfig(task="nlu", schedule="adaptive", adaptive_beta=0.0)
    batch = nlu_batch(n=16, num_labels=3)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    prepared = prepare_model(tiny_bert(3), "ba-lora", r=2, config=cfg)
    model = prepared.model
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, report_to=[],
                             logging_steps=1, learning_rate=1e-2, use_cpu=True, save_strategy="no")
    trainer = BALoRATrainer(model=model, objective=prepared.objective(), args=args, train_dataset=rows)
    trainer.train()
    weights = trainer.lambdas()
    assert weights != pytest.approx(_configured(cfg))  # the term magnitudes moved in training, so did the weights

    probe = nlu_batch(n=8, num_labels=3, seed=7)
    model.train()
    loss = trainer.compute_loss(model, probe)
    with torch.no_grad():
        logits = model(**probe).logits
        pretrained = tiny_bert(3)(**probe).logits
    task = F.cross_entropy(logits, probe["labels"])
    terms = (R.nlu_consistency(logits, pretrained), R.nlu_diversity(logits), R.nlu_svd(logits, cfg.svd_top_k))

    def total(lambdas):
        return float(task + sum(lam * term for lam, term in zip(lambdas, terms)))

    assert loss.item() == pytest.approx(total(weights), rel=1e-6, abs=1e-7)
    assert abs(total(weights) - total(_configured(cfg))) > 1e-4  # so the check above tells the weights apart
