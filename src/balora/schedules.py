"""Lambda schedules: the weights of the three terms as a function of training progress."""

from __future__ import annotations

import math

from .config import BALoRAConfig


def lambda_weights(cfg: BALoRAConfig, step: int, total_steps: int) -> tuple[float, float, float]:
    """(l1, l2, l3) at ``step`` of ``total_steps``.

    ``constant``: the configured values. ``authors`` (the authors' code): l1 decays with a cosine from
    its value to 0 over training; l2 and l3 are 0 for the first 20% of steps, then ramp linearly to
    their value over the next 5%.
    """
    l1, l2, l3 = cfg.lambda_consistency, cfg.lambda_diversity, cfg.lambda_svd
    if cfg.schedule == "constant" or total_steps <= 0:
        return l1, l2, l3
    progress = min(max(step / total_steps, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    ramp = min(max((progress - 0.20) / 0.05, 0.0), 1.0)
    return l1 * cosine, l2 * ramp, l3 * ramp
