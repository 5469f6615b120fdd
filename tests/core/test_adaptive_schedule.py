"""schedule='adaptive': weights follow the term magnitudes (loss-share balancing), clipped, and train end to end."""

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


def test_adaptive_lambdas_track_observed_values():
    cfg = BALoRAConfig(task="nlu", schedule="adaptive", adaptive_beta=0.0)
    ad = AdaptiveLambdas(cfg)
    assert ad.weights() == pytest.approx((0.15, 0.03, 0.03))
    ad.observe({"task": torch.tensor(1.0), "consistency": torch.tensor(0.4), "svd": torch.tensor(-0.8)})
    assert ad.weights() == pytest.approx((0.15, 0.03, 0.03))  # the first step sets the reference
    ad.observe({"task": torch.tensor(1.0), "consistency": torch.tensor(0.1), "svd": torch.tensor(-0.8)})
    assert ad.weights() == pytest.approx((0.6, 0.03, 0.03))
    assert lambda_weights(cfg, 5, 10) == (0.15, 0.03, 0.03)


def test_bad_adaptive_settings_are_named():
    with pytest.raises(ValueError, match="adaptive_beta"):
        BALoRAConfig(schedule="adaptive", adaptive_beta=1.0)
    with pytest.raises(ValueError, match="adaptive_clip"):
        BALoRAConfig(schedule="adaptive", adaptive_clip=0.5)


def test_trainer_uses_the_adaptive_weights(tmp_path):
    from transformers import TrainingArguments

    from balora import prepare_model
    from balora.trainer import BALoRATrainer
    from tests.core.tiny import nlu_batch, tiny_bert

    batch = nlu_batch(n=16, num_labels=3)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    model = prepare_model(tiny_bert(3), "ba-lora", r=2, balora=BALoRAConfig(task="nlu", schedule="adaptive",
                                                                             adaptive_beta=0.0))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, report_to=[],
                             logging_steps=1, learning_rate=1e-2, use_cpu=True, save_strategy="no")
    trainer = BALoRATrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert trainer.adaptive is not None and trainer.adaptive._first is not None
    assert trainer.lambdas() != (0.15, 0.03, 0.03)  # the magnitudes moved during training, so did the weights
