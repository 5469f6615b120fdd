"""BALoRATrainer: transformers.Trainer whose compute_loss adds the weighted BA-LoRA terms.

Thin glue: the terms come from :mod:`balora.regularizers` (or their fused NLG twin in
:mod:`balora.fused`), the pretrained outputs from :mod:`balora.reference`, the weights from
:mod:`balora.schedules`. Each term is averaged between logging steps and logged as ``loss_task``,
``loss_consistency``, ``loss_diversity``, ``loss_svd`` (unweighted values) wherever Trainer logs go
(console, TensorBoard, ``trainer_state.json``).

Fallbacks (documented, logged, never a silent NaN):

* a batch-statistic term on a batch of one row (covariance, SVD) or a batch without trained positions:
  the term is 0 for that step and ``balora_skipped_<term>`` counts it in the logs;
* a NaN/inf term: ``BALoRAConfig.nan_policy`` = ``error`` raises naming the term, ``skip_term`` drops it
  for the step and counts it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from . import regularizers as R
from .config import BALoRAConfig
from .distributed import gather_rows
from .fused import OutputFactor, fused_lm_terms
from .reference import ReferenceSpec, TeacherCache, reference_mode
from .schedules import lambda_weights

logger = logging.getLogger(__name__)
TERMS = ("task", "consistency", "diversity", "svd")


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank allocation needs the gradients: call it before each optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: D401
        base = getattr(model, "base_model", None)
        if base is not None and hasattr(base, "update_and_allocate"):
            base.update_and_allocate(state.global_step)


class BALoRATrainer(Trainer):
    """Trainer for any model prepared by :func:`balora.prepare_model`.

    Args (besides Trainer's):
        balora_config: overrides the config attached by prepare_model.
        teacher_cache: per-example reference outputs (NLU, ``reference="cached"``); batches must then
            carry a ``balora_index`` column (:func:`balora.training.nlu` adds it).
    """

    def __init__(self, *args: Any, balora_config: Optional[BALoRAConfig] = None,
                 teacher_cache: Optional[TeacherCache] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        info = getattr(self.model, "balora", None)
        self.regularized = bool(info and info.regularized) or balora_config is not None
        self.balora_config = balora_config or (info.balora if info is not None else None) or BALoRAConfig()
        self.reference_spec: Optional[ReferenceSpec] = info.reference if info is not None else None
        if self.regularized and self.reference_spec is None:
            raise ValueError("regularised training needs a model prepared by balora.prepare_model (no reference)")
        self.teacher_cache = teacher_cache
        if self.reference_spec is not None and self.reference_spec.mode == "cached" and teacher_cache is None:
            raise ValueError("reference='cached' needs teacher_cache=TeacherCache() filled before training")
        if self.regularized:
            # Our total loss is a per-micro-batch mean (the regularisers are batch means too): let Trainer
            # divide it by the gradient-accumulation steps, rather than assume num_items_in_batch scaling.
            self.model_accepts_loss_kwargs = False
            self.loss_is_scaled_for_ga = False
        if info is not None and info.base_method == "adalora":
            self.add_callback(AdaLoraCallback())
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._factor = OutputFactor()
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        inputs = dict(inputs)
        index = inputs.pop("balora_index", None)
        if not self.regularized or not model.training:  # evaluation: the task loss alone, no reference pass
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            self._record("task", loss)
            return (loss, outputs) if return_outputs else loss
        cfg = self.balora_config
        l1, l2, l3 = lambda_weights(cfg, self.state.global_step, self.state.max_steps)
        if cfg.task == "nlg":
            loss, outputs, terms = self._nlg_loss(model, inputs, l1, l2, l3)
        else:
            loss, outputs, terms = self._nlu_loss(model, inputs, index, l1, l2, l3)
        for name, value in terms.items():
            self._record(name, value)
        return (loss, outputs) if return_outputs else loss

    def _nlu_loss(self, model, inputs, index, l1, l2, l3):
        cfg = self.balora_config
        unwrapped = self.accelerator.unwrap_model(model)
        regression = getattr(getattr(unwrapped, "config", None), "num_labels", None) == 1
        if regression and cfg.nlu_regression_features == "skip":
            self._warn_once("regression", "regression head (C = 1): BA-LoRA terms skipped (nlu_regression_features=skip)")
            outputs = model(**inputs)
            return outputs["loss"], outputs, {"task": outputs["loss"]}
        # Regression (C = 1): all three terms act on the pooled features fed to the head (METHOD.md 2).
        captured: list[torch.Tensor] = []
        hook = _head_input_hook(unwrapped, captured) if regression else None
        try:
            outputs = model(**inputs)
        finally:
            if hook is not None:
                hook.remove()
        task = outputs["loss"]
        z = _pool(captured[-1], inputs) if regression else outputs["logits"]
        terms: dict[str, torch.Tensor] = {"task": task}
        total = task
        if l1:
            ref = self._nlu_reference(unwrapped, inputs, index, regression)
            total = total + l1 * self._checked("consistency", R.nlu_consistency(z, ref), terms)
        zg = gather_rows(z) if cfg.gather_batch_statistics else z
        if l2:
            total = total + l2 * self._guarded("diversity", lambda: R.nlu_diversity(zg), terms)
        if l3:
            total = total + l3 * self._guarded("svd", lambda: R.nlu_svd(zg, cfg.svd_top_k), terms)
        return total, outputs, terms

    @torch.no_grad()
    def _nlu_reference(self, unwrapped, inputs, index, use_features):
        """Reference logits (or pooled head inputs for regression) of the original model, no grad."""
        spec = self.reference_spec
        name = "features" if use_features else "logits"
        if spec.mode == "cached":
            if index is None:
                raise ValueError("reference='cached' needs a 'balora_index' column in every batch")
            return self.teacher_cache.lookup(name, index, self.args.device)
        ref_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with reference_mode(unwrapped, spec) as ref_model:
            if not use_features:
                return ref_model(**ref_inputs)["logits"].detach()
            captured: list[torch.Tensor] = []
            hook = _head_input_hook(ref_model, captured)
            try:
                ref_model(**ref_inputs)
            finally:
                hook.remove()
            return _pool(captured[-1], inputs).detach()

    def _nlg_loss(self, model, inputs, l1, l2, l3):
        cfg = self.balora_config
        labels = inputs["labels"]
        mask = R.shifted_label_mask(labels)
        unwrapped = self.accelerator.unwrap_model(model)
        if cfg.fused_nlg and _fusable(unwrapped):
            return self._nlg_fused(model, unwrapped, inputs, mask, l1, l2, l3)
        outputs = model(**inputs)
        task = outputs["loss"]
        logits = outputs["logits"]
        terms: dict[str, torch.Tensor] = {"task": task}
        total = task
        if mask.sum() == 0:
            self._skip_all("no trained positions in the batch")
            return total, outputs, terms
        if l1:
            with torch.no_grad(), reference_mode(unwrapped, self.reference_spec) as ref_model:
                ref_logits = ref_model(**{k: v for k, v in inputs.items() if k != "labels"})["logits"]
            total = total + l1 * self._checked("consistency", R.nlg_consistency(logits, ref_logits, mask, cfg.temperature), terms)
        if l2:
            total = total + l2 * self._checked("diversity", R.nlg_diversity(logits, mask, cfg.entropy_top_k), terms)
        if l3:
            rows = R.select_positions(logits, mask)
            rows = gather_rows(rows) if cfg.gather_batch_statistics else rows
            total = total + l3 * self._guarded("svd", lambda: R.nlg_svd(
                rows[None], torch.ones(1, rows.shape[0], dtype=torch.bool, device=rows.device), cfg.svd_top_k,
                cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter, cfg.svd_normalizer), terms)
        return total, outputs, terms

    def _nlg_fused(self, model, unwrapped, inputs, mask, l1, l2, l3):
        cfg = self.balora_config
        fwd = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**fwd, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        head = unwrapped.get_output_embeddings()
        if mask.sum() == 0:
            self._skip_all("no trained positions in the batch")
            zero = hidden.sum() * 0.0
            return zero, outputs, {"task": zero.detach()}
        h = hidden[mask]
        targets = inputs["labels"][:, 1:][mask[:, :-1]]
        ref_h = None
        if l1:
            with torch.no_grad(), reference_mode(unwrapped, self.reference_spec) as ref_model:
                ref_h = ref_model(**fwd, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][mask]
        fused = fused_lm_terms(h, head.weight, targets, ref_h, head.bias, l1, l2, cfg.temperature, None, cfg.chunk_size)
        terms: dict[str, torch.Tensor] = {"task": fused.task}
        if l1:
            self._checked("consistency", fused.consistency, terms)
        if l2:
            self._checked("diversity", fused.diversity, terms)
        total = fused.loss
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite NLG loss {total.item()} (task {fused.task.item()})")
        if l3:
            small = self._factor.small_logits(h, head.weight, head.bias)
            small = gather_rows(small) if cfg.gather_batch_statistics else small
            total = total + l3 * self._guarded("svd", lambda: _svd_term(small, cfg), terms)
        outputs["loss"] = total
        return total, outputs, terms

    # ------------------------------------------------------------------ bookkeeping
    def _guarded(self, name: str, fn, terms: dict) -> torch.Tensor:
        try:
            value = fn()
        except R.DegenerateBatchError as err:
            self._counts[f"balora_skipped_{name}"] += 1
            self._warn_once(name, f"{name} term skipped for a degenerate batch: {err}")
            return torch.zeros((), device=self.args.device)
        return self._checked(name, value, terms)

    def _checked(self, name: str, value: torch.Tensor, terms: dict) -> torch.Tensor:
        if not torch.isfinite(value):
            if self.balora_config.nan_policy == "error":
                raise FloatingPointError(f"BA-LoRA {name} term is {value.item()} (non-finite) at step {self.state.global_step}")
            self._counts[f"balora_skipped_{name}"] += 1
            self._warn_once(f"nan_{name}", f"non-finite {name} term dropped for this step (nan_policy=skip_term)")
            return torch.zeros((), device=value.device)
        terms[name] = value
        return value

    def _skip_all(self, why: str) -> None:
        for name in TERMS[1:]:
            self._counts[f"balora_skipped_{name}"] += 1
        self._warn_once("empty", f"regularisers skipped: {why}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _record(self, name: str, value: torch.Tensor) -> None:
        if not self.model.training:
            return
        self._sums[name] += float(value.detach().float().item())
        self._counts[name] += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log: attach the averaged terms since the last one
            for name in TERMS:
                if self._counts.get(name):
                    logs[f"loss_{name}"] = float(f"{self._sums[name] / self._counts[name]:.7g}")
            for key, count in self._counts.items():
                if key.startswith("balora_skipped_") and count:
                    logs[key] = count
            self._sums.clear()
            self._counts.clear()
        super().log(logs, *args, **kwargs)


def _svd_term(small: torch.Tensor, cfg: BALoRAConfig) -> torch.Tensor:
    s = R.singular_values(small, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter)
    norm = torch.linalg.matrix_norm(small) if cfg.svd_normalizer == "fro" else None
    # k is clipped against the logit matrix (M x V); V > d here, so min(M, d) bounds the rank.
    return -R.svd_share(s, R.effective_k(cfg.svd_top_k, *small.shape), denominator=norm)


def _fusable(model) -> bool:
    """The fused NLG path needs a plain, frozen linear output layer and no logit soft-capping."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.requires_grad:
        return False
    config = getattr(model, "config", None)
    return getattr(config, "final_logit_softcapping", None) is None and "adalora" not in type(model).__module__


def _head_input_hook(model, sink: list):
    """Capture the input of the classification head (peft's modules_to_save wrapper or the bare head)."""
    for name in ("classifier", "score"):
        for mod_name, module in model.named_modules():
            if mod_name.split(".")[-1] == name:
                return module.register_forward_pre_hook(lambda m, args: sink.append(args[0]))
    raise ValueError("regression features: no 'classifier' or 'score' head found to hook")


def _pool(features: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Head inputs are (N, H) for encoders; decoder classifiers see (N, T, H): take the last real token."""
    if features.dim() == 2:
        return features
    if features.dim() == 3 and "attention_mask" in inputs:
        last = inputs["attention_mask"].sum(1).long() - 1
        return features[torch.arange(features.shape[0], device=features.device), last]
    if features.dim() == 3:
        return features[:, -1]
    return features.flatten(1)
