"""Training objectives: one small object per path, each computing ``(loss, outputs, terms)`` for a micro-batch.

* :class:`NLUObjective`: classification (and any model that returns ``loss``): the terms act on the
  ``(N, C)`` logits;
* :class:`RegressionObjective`: regression heads (C = 1): the terms act on the pooled head inputs;
* :class:`NLGObjective`: causal LMs from full ``(B, T, V)`` logits (:mod:`balora.regularizers`);
* :class:`FusedNLGObjective`: causal LMs from the final hidden states (:mod:`balora.fused`), falling back
  to :class:`NLGObjective` (with a logged reason) when the output layer is not a plain linear map.

Every method goes through them (baselines with all lambdas 0), so every method is normalised the same
way. :class:`BALoRATrainer` keeps the lambda schedule, the NaN policy (:class:`balora.trainer.TermGuard`,
passed in the :class:`StepContext`) and the logging.

Normalisation (docs/method.md, "Averaging over micro-batches and ranks"): with gradient accumulation A and
P data-parallel ranks, DDP averages gradients over ranks and Trainer sums micro-batch gradients. A term
that is a mean over items (examples for NLU, trained positions for NLG) is multiplied by
``P * n_local / N`` (:meth:`Normalizer.share`), N the items of the whole optimizer step over all
micro-batches and ranks: the sum over micro-batches and the rank average then give exactly the mean over
the N items, as one batch of B*A*P would. Batch statistics (covariance, SVD) are computed on the micro-batch
gathered over ranks; their weight is the micro-batch's share of the step's items
(:meth:`Normalizer.stat_share`), which is exactly 1 without accumulation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from . import regularizers as R
from .config import BALoRAConfig
from .distributed import all_reduce_sum, gather_rows, is_distributed
from .fused import FusedTerms, OutputFactor, fused_lm_terms
from .reference import ReferenceSpec, RngState, has_dropout

logger = logging.getLogger(__name__)

Weight = Union[float, torch.Tensor]
Terms = dict[str, tuple[torch.Tensor, Weight]]  # name -> (unweighted value, detached; weight in the step)


# ------------------------------------------------------------------------------------ normalisation
@dataclass
class Normalizer:
    """Item counts of one optimizer step (all micro-batches, all ranks); ``None`` = this micro-batch alone."""

    world: int = 1
    rows: Optional[torch.Tensor] = None  # examples
    tokens: Optional[torch.Tensor] = None  # trained positions (labels[:, 1:] != -100)

    @classmethod
    def for_batches(cls, batches: list, world: int, device: Any) -> "Normalizer":
        """Counts of the micro-batches Trainer prefetched for one optimizer step, summed over ranks (one
        all-reduce, no host synchronisation)."""
        rows, tokens = 0, torch.zeros((), dtype=torch.long, device=device)
        for batch in batches:
            rows += _rows(batch)
            labels = batch.get("labels") if hasattr(batch, "get") else None
            if torch.is_tensor(labels) and labels.dim() == 2:
                tokens = tokens + labels[:, 1:].ne(-100).sum().to(device)
        counts = torch.stack([torch.tensor(rows, device=device), tokens]).to(torch.float32)
        counts = all_reduce_sum(counts)
        return cls(world=world, rows=counts[0], tokens=counts[1])

    def share(self, local: Union[int, torch.Tensor], kind: str) -> Weight:
        """Weight of a mean over ``local`` items of this micro-batch: ``P * local / N`` (1 for a lone batch)."""
        total = getattr(self, kind)
        if total is None:
            return 1.0
        return self.world * local / total.clamp_min(1)

    def stat_share(self, rows: int, kind: str, gathered: bool) -> Weight:
        """Weight of a batch statistic over ``rows`` items (gathered over ranks, or this rank's only).

        Gathered: every rank computes the same term and its gradient reaches each rank's rows P times
        (all_gather's backward sums), which DDP's average divides back, so the weight is ``rows / N``.
        Per rank: ``P * rows / N``, as for a mean."""
        total = getattr(self, kind)
        if total is None:
            return 1.0
        return (1 if gathered else self.world) * rows / total.clamp_min(1)


def _rows(batch: Any) -> int:
    for key in ("input_ids", "labels", "inputs_embeds"):
        value = batch.get(key) if hasattr(batch, "get") else None
        if torch.is_tensor(value):
            return int(value.shape[0])
    first = next(v for v in batch.values() if torch.is_tensor(v))
    return int(first.shape[0])


@dataclass
class StepContext:
    """What an objective needs for one micro-batch besides the model and the inputs."""

    lambdas: tuple[float, float, float]
    norm: Normalizer
    guard: Any  # balora.trainer.TermGuard: compute(name, fn), keep_finite(values), flag(name, value)
    unwrapped: torch.nn.Module
    index: Optional[torch.Tensor] = None  # balora_index of the rows (cached reference, error messages)


def causal_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over trained positions, as transformers' ForCausalLMLoss computes it
    (fp32 logits, labels shifted left, -100 ignored); written out so it can be divided by the global count."""
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)
    return F.cross_entropy(logits.float().flatten(0, -2), shifted.flatten(), ignore_index=-100, reduction="sum")


def svd_term(small: torch.Tensor, cfg: BALoRAConfig) -> torch.Tensor:
    """NLG SVD term on the small factor ``H R^T`` of the logits (same singular values and Frobenius norm)."""
    s = R.singular_values(small, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter)
    norm = torch.linalg.matrix_norm(small) if cfg.svd_normalizer == "fro" else None
    # k is clipped against the logit matrix (M x V); V > d here, so min(M, d) bounds the rank.
    return -R.svd_share(s, R.effective_k(cfg.svd_top_k, *small.shape), denominator=norm)


def _without_labels(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "labels"}


def _gather(rows: torch.Tensor, cfg: BALoRAConfig) -> tuple[torch.Tensor, bool]:
    gathered = cfg.gather_batch_statistics and is_distributed()
    return (gather_rows(rows) if gathered else rows), gathered


# ------------------------------------------------------------------------------------------ objectives
class Objective:
    """One training path. ``__call__(model, inputs, ctx) -> (loss, outputs, terms)``."""

    name = "objective"

    def __init__(self, cfg: BALoRAConfig, reference: Optional[ReferenceSpec]) -> None:
        self.cfg = cfg
        self.reference = reference
        self._stochastic: dict[int, bool] = {}
        self._warned: set[str] = set()

    def __call__(self, model, inputs: dict, ctx: StepContext):  # pragma: no cover - interface
        raise NotImplementedError

    def rng_for_reference(self, unwrapped: torch.nn.Module, l1: float) -> Optional[RngState]:
        """The random state the student's forward starts from, when the reference must replay its dropout.

        None (reference in eval mode) when there is no consistency term, no dropout, a cached reference, or a
        reference that cannot draw the same random numbers (logged once)."""
        if not l1 or self.reference is None or not unwrapped.training:
            return None
        key = id(unwrapped)
        if key not in self._stochastic:
            self._stochastic[key] = has_dropout(unwrapped)
        if not self._stochastic[key]:
            return None
        if not self.reference.shares_dropout_masks(unwrapped):
            self.warn_once("masks", f"reference={self.reference.mode!r} cannot replay the student's dropout masks "
                                    "(adapter dropout > 0, or a cache): the reference runs without dropout and the "
                                    "consistency term includes dropout noise")
            return None
        param = next(unwrapped.parameters())
        return RngState(param.device)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


class NLUObjective(Objective):
    """Task loss + consistency (MSE of normalised logits), covariance and SVD terms on ``(N, C)`` logits."""

    name = "nlu"
    row_name = "logits"

    def student(self, model, unwrapped, inputs: dict) -> tuple[Any, torch.Tensor]:
        outputs = model(**inputs)
        return outputs, outputs.get("logits") if hasattr(outputs, "get") else None

    @torch.no_grad()
    def reference_rows(self, unwrapped, inputs: dict, ctx: StepContext, rng: Optional[RngState]) -> torch.Tensor:
        if self.reference.mode == "cached":
            return self.reference.lookup(self.row_name, ctx.index, inputs["input_ids"].device
                                         if "input_ids" in inputs else next(unwrapped.parameters()).device)
        return self.reference.forward(unwrapped, _without_labels(inputs), rng)["logits"].detach()

    def __call__(self, model, inputs: dict, ctx: StepContext):
        cfg, guard = self.cfg, ctx.guard
        l1, l2, l3 = ctx.lambdas
        rng = self.rng_for_reference(ctx.unwrapped, l1)
        outputs, z = self.student(model, ctx.unwrapped, inputs)
        task = outputs["loss"]
        n = _rows(inputs)
        w = ctx.norm.share(n, "rows")
        guard.flag("task", task)
        terms: Terms = {"task": (task.detach(), w)}
        total = task * w
        if not (l1 or l2 or l3):
            return total, outputs, terms
        values: dict[str, Optional[torch.Tensor]] = {}
        if l1:
            ref = self.reference_rows(ctx.unwrapped, inputs, ctx, rng)
            values["consistency"] = guard.compute("consistency", lambda: R.nlu_consistency(z, ref))
        zg, gathered = _gather(z, cfg) if (l2 or l3) else (z, False)
        if l2:
            values["diversity"] = guard.compute("diversity", lambda: R.nlu_diversity(zg))
        if l3:
            values["svd"] = guard.compute("svd", lambda: R.nlu_svd(zg, cfg.svd_top_k))
        kept = guard.keep_finite({k: v for k, v in values.items() if v is not None})
        stat_w = ctx.norm.stat_share(zg.shape[0], "rows", gathered)
        for name, lam, weight in (("consistency", l1, w), ("diversity", l2, stat_w), ("svd", l3, stat_w)):
            if name in kept:
                total = total + lam * weight * kept[name]
                terms[name] = (kept[name].detach(), weight)
        return total, outputs, terms


class RegressionObjective(NLUObjective):
    """Regression heads (C = 1): the three terms act on the pooled features fed to the head (docs/method.md section 2)."""

    name = "regression"
    row_name = "features"

    def student(self, model, unwrapped, inputs: dict):
        captured: list[torch.Tensor] = []
        hook = head_input_hook(unwrapped, captured)
        try:
            outputs = model(**inputs)
        finally:
            hook.remove()
        return outputs, pool(captured[-1], inputs)

    @torch.no_grad()
    def reference_rows(self, unwrapped, inputs: dict, ctx: StepContext, rng: Optional[RngState]) -> torch.Tensor:
        if self.reference.mode == "cached":
            return super().reference_rows(unwrapped, inputs, ctx, rng)
        captured: list[torch.Tensor] = []
        ref_inputs = _without_labels(inputs)

        def run(ref_model):
            hook = head_input_hook(ref_model, captured)
            try:
                ref_model(**ref_inputs)
            finally:
                hook.remove()

        if rng is None:
            with self.reference.activate(unwrapped) as ref_model:
                run(ref_model)
        else:
            with rng.replay(), self.reference.activate(unwrapped, train=True) as ref_model:
                run(ref_model)
        return pool(captured[-1], inputs).detach()

    @staticmethod
    def cache_rows(ref_model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled head inputs) of one batch: what :meth:`ReferenceSpec.fill` stores for regression."""
        captured: list[torch.Tensor] = []
        hook = head_input_hook(ref_model, captured)
        try:
            logits = ref_model(**inputs)["logits"]
        finally:
            hook.remove()
        return logits, pool(captured[-1], inputs)


class NLGObjective(Objective):
    """Causal LM from full logits: token-mean CE + KL to the reference + minus entropy + SVD term."""

    name = "nlg"

    def __call__(self, model, inputs: dict, ctx: StepContext):
        cfg, guard = self.cfg, ctx.guard
        l1, l2, l3 = ctx.lambdas
        labels = inputs["labels"]
        fwd = _without_labels(inputs)
        rng = self.rng_for_reference(ctx.unwrapped, l1)
        outputs = model(**fwd)
        logits = outputs["logits"]
        m = labels[:, 1:].ne(-100).sum()
        w = ctx.norm.share(m, "tokens")
        task = causal_ce_sum(logits, labels) / m.clamp_min(1)
        guard.flag("task", task)
        terms: Terms = {"task": (task.detach(), w)}
        total = task * w
        if l1 or l2 or l3:
            mask = R.shifted_label_mask(labels)
            values: dict[str, Optional[torch.Tensor]] = {}
            if l1:
                ref_logits = self.reference.forward(ctx.unwrapped, fwd, rng)["logits"]
                values["consistency"] = guard.compute(
                    "consistency", lambda: R.nlg_consistency(logits, ref_logits, mask, cfg.temperature))
            if l2:
                values["diversity"] = guard.compute("diversity", lambda: R.nlg_diversity(logits, mask, cfg.entropy_top_k))
            rows = None
            if l3:
                # Gathered before any check, so that every rank joins the collective (and its backward) even
                # when its own micro-batch has no trained position.
                rows, _ = _gather(logits[mask], cfg)
                ones = torch.ones(1, rows.shape[0], dtype=torch.bool, device=rows.device)
                values["svd"] = guard.compute("svd", lambda: R.nlg_svd(
                    rows[None], ones, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter,
                    cfg.svd_normalizer))
            kept = guard.keep_finite({k: v for k, v in values.items() if v is not None})
            gathered = cfg.gather_batch_statistics and is_distributed()
            stat_w = ctx.norm.stat_share(rows.shape[0], "tokens", gathered) if rows is not None else 0.0
            for name, lam, weight in (("consistency", l1, w), ("diversity", l2, w), ("svd", l3, stat_w)):
                if name in kept:
                    total = total + lam * weight * kept[name]
                    terms[name] = (kept[name].detach(), weight)
        outputs["loss"] = total
        return total, outputs, terms


@dataclass
class HeadCheck:
    """Whether the model's logits are ``scale * (W h + b)`` of its last hidden state (decided once per model)."""

    ok: bool
    scale: float = 1.0
    reason: str = ""


def static_head_check(model) -> HeadCheck:
    """What can be decided without a forward pass: a plain frozen linear output layer, no soft-capping."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return HeadCheck(False, reason=f"the output layer is {type(head).__name__}, not a plain nn.Linear")
    if head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        return HeadCheck(False, reason="the output layer is trained (the fused path needs it frozen)")
    if "adalora" in type(model).__module__:
        return HeadCheck(False, reason="AdaLoRA model")
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if softcap is not None:
        return HeadCheck(False, reason=f"logit soft-capping (final_logit_softcapping={softcap}) is not linear")
    return HeadCheck(True)


@torch.no_grad()
def measured_head_check(logits_last: torch.Tensor, hidden_last: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> HeadCheck:
    """Compare the model's own last-position logits with ``W h + b``: equal, a scalar multiple (Granite's
    ``logits_scaling``, Cohere's ``logit_scale``: applied to ``h`` and ``b``), or anything else (unfusable)."""
    lin = F.linear(hidden_last.float(), weight.float(), None if bias is None else bias.float())
    own = logits_last.float()
    if own.shape != lin.shape:
        return HeadCheck(False, reason=f"the model's logits {tuple(own.shape)} are not the output layer's {tuple(lin.shape)}")
    scale = (own * lin).sum() / (lin * lin).sum().clamp_min(1e-30)
    err = (own - scale * lin).abs().max() / own.abs().max().clamp_min(1e-30)
    scale_f, err_f = float(scale), float(err)  # once per model
    tol = 1e-4 if hidden_last.dtype == torch.float32 and weight.dtype == torch.float32 else 3e-2
    if not err_f <= tol:
        return HeadCheck(False, reason=f"the model's logits are not a linear map of its last hidden state "
                                       f"(relative difference {err_f:.3g} after the best scale {scale_f:.4g})")
    if abs(scale_f - 1.0) <= tol:
        return HeadCheck(True)
    return HeadCheck(True, scale=scale_f, reason=f"logits scaled by {scale_f:.6g} after the output layer")


class FusedNLGObjective(NLGObjective):
    """The NLG objective from the final hidden states (:func:`balora.fused.fused_lm_terms`): same values,
    no ``B x T x V`` logits. On the first step per model, the model's own last-position logits (free with
    ``logits_to_keep=1``) are compared with the output layer applied to the hidden state; a scalar scale is
    applied, anything else falls back to :class:`NLGObjective` with a logged reason."""

    name = "nlg-fused"

    def __init__(self, cfg: BALoRAConfig, reference: Optional[ReferenceSpec]) -> None:
        super().__init__(cfg, reference)
        self.factor = OutputFactor()
        self.checks: dict[int, HeadCheck] = {}

    def _fallback(self, unwrapped, check: HeadCheck) -> None:
        self.checks[id(unwrapped)] = check
        logger.warning("fused NLG path off for %s: %s; using the full-logits path", type(unwrapped).__name__, check.reason)

    def __call__(self, model, inputs: dict, ctx: StepContext):
        unwrapped = ctx.unwrapped
        check = self.checks.get(id(unwrapped))
        if check is None:
            static = static_head_check(unwrapped)
            if not static.ok:
                self._fallback(unwrapped, static)
                check = static
        if check is not None and not check.ok:
            return super().__call__(model, inputs, ctx)
        cfg, guard = self.cfg, ctx.guard
        l1, l2, l3 = ctx.lambdas
        labels = inputs["labels"]
        fwd = _without_labels(inputs)
        rng = self.rng_for_reference(unwrapped, l1)
        outputs = model(**fwd, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        head = unwrapped.get_output_embeddings()
        if check is None:
            check = measured_head_check(outputs.logits[:, -1], hidden[:, -1], head.weight, head.bias)
            if not check.ok:
                self._fallback(unwrapped, check)
                return super().__call__(model, inputs, ctx)
            self.checks[id(unwrapped)] = check
            if check.scale != 1.0:
                logger.info("fused NLG path: %s", check.reason)
        scale = check.scale
        weight, bias = head.weight, head.bias
        if scale != 1.0 and bias is not None:
            bias = bias.detach() * scale
        mask = R.shifted_label_mask(labels)
        h = hidden[mask]  # dynamic shape: the one synchronisation of the NLG paths
        m = h.shape[0]
        gathered = cfg.gather_batch_statistics and is_distributed()
        if m == 0 and not (l3 and gathered):
            for name, lam in zip(("consistency", "diversity", "svd"), ctx.lambdas):
                if lam:
                    guard.skip(name, "no trained positions in the batch")
            zero = hidden.sum() * 0.0
            outputs["loss"] = zero
            return zero, outputs, {"task": (zero.detach(), 0.0)}
        if scale != 1.0:
            h = h * scale
        targets = labels[:, 1:][mask[:, :-1]]
        ref_h = None
        if l1 and m:
            ref_out = self.reference.forward(unwrapped, fwd, rng, output_hidden_states=True, logits_to_keep=1)
            ref_h = ref_out.hidden_states[-1][mask] * scale if scale != 1.0 else ref_out.hidden_states[-1][mask]

        def fused(c1: float, c2: float):
            if m == 0:  # this rank has no trained position but joins the gathered SVD term below
                zero = hidden.sum() * 0.0
                return FusedTerms(loss=zero, task=zero.detach(), consistency=zero.detach(), diversity=zero.detach())
            return fused_lm_terms(h, weight, targets, ref_h if c1 else None, bias, c1, c2, cfg.temperature, None,
                                  cfg.chunk_size)

        terms_out = fused(l1, l2)
        values: dict[str, Optional[torch.Tensor]] = {}
        for name, lam, value in (("consistency", l1, terms_out.consistency), ("diversity", l2, terms_out.diversity)):
            if lam and m == 0:
                guard.skip(name, "no trained positions in the batch")
            elif lam:
                values[name] = value
        small = None
        if l3:  # gathered before any check: every rank joins the collective and its backward
            small, _ = _gather(self.factor.small_logits(h, weight, bias), cfg)
            values["svd"] = guard.compute("svd", lambda: svd_term(small, cfg))
        kept = guard.keep_finite({k: v for k, v in values.items() if v is not None})
        if m and ((l1 and "consistency" not in kept) or (l2 and "diversity" not in kept)):  # skip_term: without them
            terms_out = fused(l1 if "consistency" in kept else 0.0, l2 if "diversity" in kept else 0.0)
        w = ctx.norm.share(m, "tokens")
        guard.flag("task", terms_out.task)
        total = terms_out.loss * w  # task, KL and entropy are all means over the m positions
        terms: Terms = {"task": (terms_out.task, w)}
        for name in ("consistency", "diversity"):
            if name in kept:
                terms[name] = (kept[name], w)
        if "svd" in kept:
            stat_w = ctx.norm.stat_share(small.shape[0], "tokens", gathered)
            total = total + l3 * stat_w * kept["svd"]
            terms["svd"] = (kept["svd"].detach(), stat_w)
        outputs["loss"] = total
        return total, outputs, terms


# ------------------------------------------------------------------------------------------- helpers
def head_input_hook(model, sink: list):
    """Capture the input of the classification head (peft's modules_to_save wrapper or the bare head)."""
    for name in ("classifier", "score"):
        for mod_name, module in model.named_modules():
            if mod_name.split(".")[-1] == name:
                return module.register_forward_pre_hook(lambda m, args: sink.append(args[0]))
    raise ValueError("regression features: no 'classifier' or 'score' head found to hook")


def pool(features: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Head inputs are (N, H) for encoders; decoder classifiers see (N, T, H): take the last real token."""
    if features.dim() == 2:
        return features
    if features.dim() == 3 and "attention_mask" in inputs:
        last = inputs["attention_mask"].sum(1).long() - 1
        return features[torch.arange(features.shape[0], device=features.device), last]
    if features.dim() == 3:
        return features[:, -1]
    return features.flatten(1)


def make_objective(task: str, cfg: BALoRAConfig, reference: Optional[ReferenceSpec], regularized: bool,
                   model: torch.nn.Module) -> Objective:
    """Choose the objective once, from the task and the model."""
    if task == "nlg":
        from .fused import use_fused_nlg

        device = next((p.device for p in model.parameters()), None)
        if regularized and use_fused_nlg(cfg.fused_nlg, device):
            return FusedNLGObjective(cfg, reference)
        return NLGObjective(cfg, reference)
    regression = getattr(getattr(model, "config", None), "num_labels", None) == 1
    if regularized and regression and cfg.nlu_regression_features == "hidden":
        return RegressionObjective(cfg, reference)
    return NLUObjective(cfg, reference)


__all__ = ["Normalizer", "StepContext", "Objective", "NLUObjective", "RegressionObjective", "NLGObjective",
           "FusedNLGObjective", "HeadCheck", "make_objective", "causal_ce_sum", "svd_term", "head_input_hook", "pool"]
