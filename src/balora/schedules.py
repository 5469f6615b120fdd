"""Lambda schedules: the weights of the three terms as a function of training progress."""

from __future__ import annotations

import math
from typing import Optional

from .config import BALoRAConfig


AUTHORS_L1_FLOOR = 0.1  # the authors' code: lambda1 decays to 0.1 x lambda1 (final_l1 = 0.1 * initial_l1)


def lambda_weights(cfg: BALoRAConfig, step: int, total_steps: int) -> tuple[float, float, float]:
    """(l1, l2, l3) at ``step`` of ``total_steps``.

    ``constant``: the configured values. ``authors`` (the authors' code): l1 decays with a cosine from
    its value to ``AUTHORS_L1_FLOOR`` (0.1) times its value over training; l2 and l3 are 0 for the first 20%
    of steps, then ramp linearly to their value over the next 5%. ``adaptive``: the configured values; the trainer's
    :class:`AdaptiveLambdas` rescales them from the observed term sizes.
    """
    l1, l2, l3 = cfg.lambda_consistency, cfg.lambda_diversity, cfg.lambda_svd
    if cfg.schedule in ("constant", "adaptive") or total_steps <= 0:  # adaptive: AdaptiveLambdas scales these
        return l1, l2, l3
    progress = min(max(step / total_steps, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    ramp = min(max((progress - 0.20) / 0.05, 0.0), 1.0)
    return l1 * (AUTHORS_L1_FLOOR + (1.0 - AUTHORS_L1_FLOOR) * cosine), l2 * ramp, l3 * ramp


TERM_NAMES = ("consistency", "diversity", "svd")


def adaptive_factors(task: float, terms: dict[str, float], task0: float, terms0: dict[str, float],
                     clip: float) -> tuple[float, float, float]:
    """Multipliers of (l1, l2, l3) that keep each term's size relative to the task loss at its first-step ratio.

    ``task``/``terms`` are the current moving averages of the magnitudes |L_task|, |L_i|; ``task0``/``terms0``
    the first observed ones. factor_i = (|L_i|0 / |L_i|) * (|L_task| / |L_task|0), clipped to [1/clip, clip]:
    a term that shrinks while the task loss does not gets proportionally more weight, and vice versa, so the
    balance the configured lambdas set at the start is kept as the magnitudes drift. A term not observed yet
    (or of size 0) keeps factor 1.
    """
    out = []
    for name in TERM_NAMES:
        cur, first = terms.get(name), terms0.get(name)
        if not cur or not first or not task0:
            out.append(1.0)
            continue
        factor = (first / cur) * (task / task0)
        out.append(float(min(max(factor, 1.0 / clip), clip)))
    return out[0], out[1], out[2]


class AdaptiveLambdas:
    """``schedule: adaptive``: loss-share balancing of the three terms (beyond the paper).

    The paper's future work is automatic weighting of the terms. Uncertainty weighting (Kendall et al. 2018)
    needs extra trainable parameters in the optimiser and GradNorm (Chen et al. 2018) extra backward passes per
    term; this scheme uses only the term values the trainer already computes: moving averages (decay
    ``adaptive_beta``) of |L_task| and |L_i| and :func:`adaptive_factors`. The configured lambdas set the
    intended balance at the first step; the weights then follow the magnitudes, within ``adaptive_clip``.

    Cost: reading the averages back costs one host synchronisation per optimizer step (the constant and
    authors schedules cost none). The averages are updated from detached values: no gradient flows into the
    weights.
    """

    def __init__(self, cfg: BALoRAConfig) -> None:
        self.cfg = cfg
        self._ema: dict[str, object] = {}
        self._first: Optional[dict[str, float]] = None
        self._factors = (1.0, 1.0, 1.0)
        self._dirty = False

    def observe(self, values: dict) -> None:
        """Fold the detached term values of one micro-batch (``{"task": t, "consistency": c, ...}``) in."""
        beta = self.cfg.adaptive_beta
        for name, value in values.items():
            mag = value.detach().float().abs() if hasattr(value, "detach") else abs(float(value))
            self._ema[name] = mag if name not in self._ema else beta * self._ema[name] + (1 - beta) * mag
        self._dirty = True

    def factors(self) -> tuple[float, float, float]:
        """Current multipliers (one host sync when new values were observed since the last call)."""
        if self._dirty and "task" in self._ema:
            names = ["task", *[n for n in TERM_NAMES if n in self._ema]]
            import torch

            values = [self._ema[n] for n in names]
            if any(hasattr(v, "detach") for v in values):
                values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()).cpu() if not
                                      hasattr(v, "detach") else v.reshape(()) for v in values]).tolist()
            current = dict(zip(names, (float(v) for v in values)))
            if self._first is None or any(n not in self._first for n in current):
                self._first = {**current, **(self._first or {})}
            terms = {n: current[n] for n in TERM_NAMES if n in current}
            first_terms = {n: self._first[n] for n in TERM_NAMES if n in self._first}
            self._factors = adaptive_factors(current["task"], terms, self._first["task"], first_terms,
                                             self.cfg.adaptive_clip)
            self._dirty = False
        return self._factors

    def weights(self) -> tuple[float, float, float]:
        """(l1, l2, l3): the configured lambdas times :meth:`factors`."""
        f = self.factors()
        return (self.cfg.lambda_consistency * f[0], self.cfg.lambda_diversity * f[1], self.cfg.lambda_svd * f[2])
