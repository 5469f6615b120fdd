"""Training objectives: the loss component :class:`balora.BALoRATrainer` runs, one small object per path, each
computing ``(loss, outputs, terms)`` for a micro-batch.

* :class:`NLUObjective`: classification (and any model that returns ``loss``): the terms act on the ``(N, C)`` logits;
* :class:`RegressionObjective`: regression heads (C = 1): the terms act on the pooled head inputs;
* :class:`NLGObjective`: causal LMs from full ``(B, T, V)`` logits (:mod:`balora.regularizers`);
* :class:`FusedNLGObjective`: causal LMs from the final hidden states (:mod:`balora.fused`), falling back to
  :class:`NLGObjective` (with a logged reason) when the output layer is not a plain linear map.

:func:`make_objective` chooses one, once, from the regulariser settings (a :class:`~balora.config.BALoRAConfig`, or
none: the task loss alone), the pretrained reference and the model; :meth:`balora.methods.PreparedModel.objective`
calls it. Every method goes through them (baselines with all lambdas 0), so every method is normalised the same way
(:class:`balora.distributed.Normalizer`). The trainer keeps the lambda schedule, the NaN policy
(:class:`balora.trainer.TermGuard`, passed in the :class:`StepContext`) and the logging.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from . import regularizers as R
from .config import BALoRAConfig
from .distributed import Normalizer, gather_rows, is_distributed, rows_of
from .fused import (FusedTerms, HeadCheck, OutputFactor, fused_lm_terms, measured_head_check, static_head_check,
                    svd_term)
from .pooling import head_rows, hook_head_inputs
from .reference import ReferenceSpec, RngState, has_dropout

logger = logging.getLogger(__name__)

Weight = Union[float, torch.Tensor]
Terms = dict[str, tuple[torch.Tensor, Weight]]  # name -> (unweighted value, detached; weight in the step)


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


def _without_labels(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "labels"}


def _gather(rows: torch.Tensor, cfg: BALoRAConfig) -> tuple[torch.Tensor, bool]:
    gathered = cfg.gather_batch_statistics and is_distributed()
    return (gather_rows(rows) if gathered else rows), gathered


def add_terms(total: torch.Tensor, terms: Terms, kept: dict[str, torch.Tensor],
              weighted: tuple[tuple[str, float, Weight], ...]) -> torch.Tensor:
    """The one place the regularisers join the loss: ``total + lambda * weight * value`` for each kept term (in
    the order given), each recorded in ``terms`` (unweighted, detached) for the logs."""
    for name, lam, weight in weighted:
        if name in kept:
            total = total + lam * weight * kept[name]
            terms[name] = (kept[name].detach(), weight)
    return total


# ------------------------------------------------------------------------------------------ objectives
class Objective:
    """One training path, ``__call__(model, inputs, ctx) -> (loss, outputs, terms)``: ``cfg`` the regulariser settings,
    ``reference`` the pretrained reference, ``regularized`` whether the terms are on (else only the task loss)."""

    name = "objective"

    def __init__(self, cfg: BALoRAConfig, reference: Optional[ReferenceSpec], regularized: bool = True) -> None:
        self.cfg = cfg
        self.reference = reference
        self.regularized = regularized
        self._stochastic: dict[int, bool] = {}
        self._warned: set[str] = set()

    def __call__(self, model, inputs: dict, ctx: StepContext):  # pragma: no cover - interface
        raise NotImplementedError

    def to(self, device: Any) -> "Objective":
        """Move what the objective holds (a separately held reference model) to the student's device."""
        if self.reference is not None:
            self.reference.to(device)
        return self

    def compute(self, ctx: StepContext, **fns) -> dict[str, Optional[torch.Tensor]]:
        """The terms whose lambda is on, in the order given, each computed under the NaN policy."""
        lambdas = dict(zip(("consistency", "diversity", "svd"), ctx.lambdas))
        return {name: ctx.guard.compute(name, fn) for name, fn in fns.items() if lambdas[name]}

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

    constant_terms: tuple[str, ...] = ()  # terms that cannot train on this head (skipped; said once at start-up)

    def consistency(self, z: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The formula's form: T^2 KL of softened class distributions, else (and on feature rows) normalised MSE."""
        if self.cfg.nlu_consistency == "kl" and self.row_name == "logits":
            return R.nlu_consistency_kl(z, ref, self.cfg.temperature)
        return R.nlu_consistency(z, ref)

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
        cfg = self.cfg
        l1, l2, l3 = ctx.lambdas
        rng = self.rng_for_reference(ctx.unwrapped, l1)
        outputs, z = self.student(model, ctx.unwrapped, inputs)
        task = outputs["loss"]
        w = ctx.norm.share(rows_of(inputs), "rows")
        ctx.guard.flag("task", task)
        terms: Terms = {"task": (task.detach(), w)}
        total = task * w
        if not (l1 or l2 or l3):
            return total, outputs, terms
        ref = self.reference_rows(ctx.unwrapped, inputs, ctx, rng) if l1 else None
        zg, gathered = _gather(z, cfg) if (l2 or l3) else (z, False)
        fns = dict(consistency=lambda: self.consistency(z, ref), diversity=lambda: R.nlu_diversity(zg),
                   svd=lambda: R.nlu_svd(zg, cfg.svd_top_k, cfg.svd_clip_k))
        values = self.compute(ctx, **{k: f for k, f in fns.items() if k not in self.constant_terms})
        kept = ctx.guard.keep_finite({k: v for k, v in values.items() if v is not None})
        stat_w = ctx.norm.stat_share(zg.shape[0], "rows", gathered)
        total = add_terms(total, terms, kept, (("consistency", l1, w), ("diversity", l2, stat_w), ("svd", l3, stat_w)))
        return total, outputs, terms


class RegressionObjective(NLUObjective):
    """The terms on the pooled head inputs: regression heads (C = 1; docs/method.md section 2), nlu_rows=features."""

    name = "regression"
    row_name = "features"

    def student(self, model, unwrapped, inputs: dict):
        return _with_head_inputs(unwrapped, model, inputs, inputs)

    @torch.no_grad()
    def reference_rows(self, unwrapped, inputs: dict, ctx: StepContext, rng: Optional[RngState]) -> torch.Tensor:
        if self.reference.mode == "cached":
            return super().reference_rows(unwrapped, inputs, ctx, rng)
        with rng.replay() if rng is not None else contextlib.nullcontext(), \
                self.reference.activate(unwrapped, train=rng is not None) as ref_model:
            _, rows = _with_head_inputs(ref_model, ref_model, inputs, _without_labels(inputs))
        return rows.detach()

    @staticmethod
    def cache_rows(ref_model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled head inputs) of one batch: what :meth:`ReferenceSpec.fill` stores for regression."""
        outputs, rows = _with_head_inputs(ref_model, ref_model, inputs, inputs)
        return outputs["logits"], rows


def _with_head_inputs(hooked, model, inputs: dict, fwd: dict) -> tuple[Any, torch.Tensor]:
    """``model(**fwd)`` and the pooled input of ``hooked``'s classification head during that call."""
    captured: list[torch.Tensor] = []
    hook = head_input_hook(hooked, captured)
    try:
        outputs = model(**fwd)
    finally:
        hook.remove()
    return outputs, pool(captured[-1], inputs)


class NLGObjective(Objective):
    """Causal LM from full logits: token-mean CE + KL to the reference + minus entropy + SVD term."""

    name = "nlg"

    def __call__(self, model, inputs: dict, ctx: StepContext):
        cfg = self.cfg
        l1, l2, l3 = ctx.lambdas
        labels = inputs["labels"]
        fwd = _without_labels(inputs)
        rng = self.rng_for_reference(ctx.unwrapped, l1)
        outputs = model(**fwd)
        logits = outputs["logits"]
        m = labels[:, 1:].ne(-100).sum()
        w = ctx.norm.share(m, "tokens")
        task = causal_ce_sum(logits, labels) / m.clamp_min(1)
        ctx.guard.flag("task", task)
        terms: Terms = {"task": (task.detach(), w)}
        total = task * w
        if l1 or l2 or l3:
            mask = R.shifted_label_mask(labels)
            ref_logits = self.reference.forward(ctx.unwrapped, fwd, rng)["logits"] if l1 else None
            # Gathered before any check, so that every rank joins the collective (and its backward) even when its
            # own micro-batch has no trained position.
            rows, gathered = _gather(logits[mask], cfg) if l3 else (None, False)
            values = self.compute(
                ctx, consistency=lambda: R.nlg_consistency(logits, ref_logits, mask, cfg.temperature),
                diversity=lambda: R.nlg_diversity(logits, mask, cfg.entropy_top_k),
                svd=lambda: R.nlg_svd(rows[None], torch.ones(1, rows.shape[0], dtype=torch.bool, device=rows.device),
                                      cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter,
                                      cfg.svd_normalizer))
            kept = ctx.guard.keep_finite({k: v for k, v in values.items() if v is not None})
            stat_w = ctx.norm.stat_share(rows.shape[0], "tokens", gathered) if rows is not None else 0.0
            total = add_terms(total, terms, kept, (("consistency", l1, w), ("diversity", l2, w), ("svd", l3, stat_w)))
        outputs["loss"] = total
        return total, outputs, terms


class FusedNLGObjective(NLGObjective):
    """The NLG objective from the final hidden states (:func:`balora.fused.fused_lm_terms`): same values,
    no ``B x T x V`` logits. On the first step per model, the model's own last-position logits (free with
    ``logits_to_keep=1``) are compared with the output layer applied to the hidden state; a scalar scale is
    applied, anything else falls back to :class:`NLGObjective` with a logged reason."""

    name = "nlg-fused"

    def __init__(self, cfg: BALoRAConfig, reference: Optional[ReferenceSpec], regularized: bool = True) -> None:
        super().__init__(cfg, reference, regularized)
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
        for name, lam in (("consistency", l1), ("diversity", l2)):
            if lam and m == 0:
                guard.skip(name, "no trained positions in the batch")
        # The SVD factor is gathered before any check: every rank joins the collective and its backward.
        small = _gather(self.factor.small_logits(h, weight, bias), cfg)[0] if l3 else None
        live = {"consistency": lambda: terms_out.consistency, "diversity": lambda: terms_out.diversity} if m else {}
        values = self.compute(ctx, **live, svd=lambda: svd_term(small, cfg))
        kept = guard.keep_finite({k: v for k, v in values.items() if v is not None})
        if m and ((l1 and "consistency" not in kept) or (l2 and "diversity" not in kept)):  # skip_term: without them
            terms_out = fused(l1 if "consistency" in kept else 0.0, l2 if "diversity" in kept else 0.0)
        w = ctx.norm.share(m, "tokens")
        guard.flag("task", terms_out.task)
        total = terms_out.loss * w  # task, KL and entropy are all means over the m positions: already in the loss
        terms: Terms = {"task": (terms_out.task, w)}
        terms.update({name: (kept[name], w) for name in ("consistency", "diversity") if name in kept})
        stat_w = ctx.norm.stat_share(small.shape[0], "tokens", gathered) if small is not None else 0.0
        total = add_terms(total, terms, kept, (("svd", l3, stat_w),))
        outputs["loss"] = total
        return total, outputs, terms


# ------------------------------------------------------------------------------------------- helpers
head_input_hook = hook_head_inputs  # (model, sink): the input of the head's final layer (balora.pooling)


def pool(features: torch.Tensor, inputs: dict) -> torch.Tensor:
    """One row per example of the head's input (balora.pooling.head_rows)."""
    return head_rows(features, inputs.get("attention_mask"))


def make_objective(model: torch.nn.Module, cfg: Optional[BALoRAConfig] = None,
                   reference: Optional[ReferenceSpec] = None) -> Objective:
    """The objective of ``model``, chosen once: with ``cfg`` the BA-LoRA terms (on ``reference``, which a cached
    reference must have filled); without, the task loss alone (normalised as every method's)."""
    if cfg is None:
        from .methods import infer_task_type  # (methods imports this module)

        task = "nlg" if infer_task_type(model) == "CAUSAL_LM" else "nlu"
        return (NLGObjective if task == "nlg" else NLUObjective)(BALoRAConfig(task=task), None, regularized=False)
    if reference is None:
        raise ValueError("regularised training needs the pretrained reference: use the objective of a model prepared "
                         "by balora.prepare_model (prepared.objective())")
    if reference.mode == "cached" and cfg.task == "nlg":
        raise ValueError("reference='cached' stores per-example NLU outputs; it is not available for NLG "
                         "(task 'nlg'): use reference='auto'")
    if not reference.ready:
        raise ValueError("reference='cached' needs its cache filled before training: "
                         "reference.fill(model, train_dataset, collator, batch_size, device), then "
                         "prepared.objective(filled) (balora train does this for NLU)")
    if cfg.task == "nlg":
        from .fused import use_fused_nlg

        device = next((p.device for p in model.parameters()), None)
        fused = use_fused_nlg(cfg.fused_nlg, device) and not cfg.entropy_top_k  # fused: full-vocabulary entropy only
        return (FusedNLGObjective if fused else NLGObjective)(cfg, reference)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels != 1 and cfg.nlu_rows == "logits":
        objective = NLUObjective(cfg, reference)
        if cfg.lambda_svd and num_labels and R.svd_term_is_constant(cfg.svd_top_k, num_labels, cfg.svd_clip_k):
            logger.warning("the NLU SVD term is the constant -1 with svd_top_k=%d >= %d classes (svd_clip_k=false, as "
                           "in formula %r): it trains nothing and is skipped; svd_clip_k=true clips k to C - 1",
                           cfg.svd_top_k, num_labels, cfg.formula)
            objective.constant_terms = ("svd",)
        return objective
    if num_labels == 1 and cfg.nlu_regression_features == "skip":
        logger.warning("regression head (C = 1): BA-LoRA terms skipped (nlu_regression_features=skip)")
        return NLUObjective(cfg, reference, regularized=False)
    return RegressionObjective(cfg, reference)


__all__ = ["Normalizer", "StepContext", "Objective", "NLUObjective", "RegressionObjective", "NLGObjective",
           "FusedNLGObjective", "make_objective", "add_terms", "causal_ce_sum", "svd_term", "head_input_hook", "pool"]
