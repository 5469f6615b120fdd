"""BALoRATrainer: transformers.Trainer whose compute_loss runs a :mod:`balora.objectives` object.

Thin glue: the objective it is handed (``objective=``, from :meth:`balora.methods.PreparedModel.objective`; without
one, the task loss alone) computes the loss and the terms
(:mod:`balora.regularizers`, :mod:`balora.fused`), the reference object (:mod:`balora.reference`) gives
the pretrained outputs, :mod:`balora.schedules` the weights. The trainer keeps the lambda schedule, the NaN
policy (:class:`TermGuard`) and the logging: each term is averaged between logging steps and logged as
``loss_task``, ``loss_consistency``, ``loss_diversity``, ``loss_svd`` (unweighted values) wherever
Trainer logs go (console, TensorBoard, ``trainer_state.json``). Term values stay on the device and are
read once per log.

Every method (baselines included) is normalised by the objectives over the whole optimizer step (all
micro-batches, all ranks), so batch B x accumulation A on P processes trains like one batch of B*A*P
(docs/method.md, "Averaging over micro-batches and ranks").

Fallbacks and faults (documented, logged, never a silent NaN):

* a batch-statistic term on a batch of one row (covariance, SVD) or a batch without trained positions:
  the term is 0 for that step and ``balora_skipped_<term>`` counts it in the logs;
* a NaN/inf regulariser: ``BALoRAConfig.nan_policy`` = ``error`` stops the run naming the term,
  ``skip_term`` drops it for the step (also when computing it fails, e.g. an SVD that does not converge)
  and counts it;
* a non-finite task loss or gradient stops the run before the optimizer step applies it, naming the step
  and the examples (``balora_index``); checkpoints saved so far stay intact. The check is one host
  synchronisation per optimizer step.
"""

from __future__ import annotations

import collections
import logging
from collections import defaultdict
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from . import peft_compat
from . import regularizers as R
from .distributed import Normalizer, all_reduce_sum, world_size
from .objectives import Objective, StepContext, make_objective
from .schedules import AdaptiveLambdas, lambda_weights

logger = logging.getLogger(__name__)
TERMS = ("task", "consistency", "diversity", "svd")


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank allocation needs the gradients: call it before each optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: D401
        base = getattr(model, "base_model", None)
        if base is not None and hasattr(base, "update_and_allocate"):
            base.update_and_allocate(state.global_step)


class TermGuard:
    """The NaN policy, in one place: what a failing or non-finite term does.

    * ``compute(name, fn)``: a degenerate batch skips the term (always, counted); any other failure skips
      it under ``skip_term`` and raises naming the term under ``error``;
    * ``keep_finite(values)``: under ``skip_term`` one host synchronisation per micro-batch decides which
      terms are finite and drops the others; under ``error`` nothing is synchronised, the finiteness flags
      are kept on the device for :meth:`check`;
    * ``check(model, step)``: before each optimizer step, one synchronisation reads the flags of the step's
      micro-batches and the finiteness of the gradient norm; anything non-finite raises
      ``FloatingPointError`` naming the step, the term and the examples.
    """

    def __init__(self, policy: str, accumulation: int = 1) -> None:
        self.policy = policy
        self.skipped: dict[str, int] = defaultdict(int)
        self._micro: collections.deque = collections.deque(maxlen=max(1, accumulation))
        self._warned: set[str] = set()
        self.step = 0

    def begin(self, index: Optional[torch.Tensor]) -> None:
        self._micro.append((index, []))

    def flag(self, name: str, value: torch.Tensor) -> None:
        if not self._micro:
            self.begin(None)
        self._micro[-1][1].append((name, torch.isfinite(value.detach()).all()))

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] += 1
        self.warn_once(name + why[:20], f"BA-LoRA {name} term skipped for this step: {why}")

    def compute(self, name: str, fn) -> Optional[torch.Tensor]:
        try:
            return fn()
        except R.DegenerateBatchError as err:
            self.skip(name, f"degenerate batch ({err})")
            return None
        except (RuntimeError, ValueError, ArithmeticError) as err:  # e.g. torch.linalg.LinAlgError from an SVD
            if self.policy == "skip_term":
                self.skip(name, f"computing it failed ({type(err).__name__}: {err}; nan_policy=skip_term)")
                return None
            raise FloatingPointError(f"BA-LoRA {name} term failed at step {self.step} ({type(err).__name__}: {err}); "
                                     "nan_policy='skip_term' drops such a term for the step") from err

    def keep_finite(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not values:
            return values
        if self.policy != "skip_term":
            for name, value in values.items():
                self.flag(name, value)
            return values
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in values.values()]).tolist()
        kept = {}
        for (name, value), ok in zip(values.items(), finite):
            if ok:
                kept[name] = value
            else:
                self.skip(name, "non-finite value (nan_policy=skip_term)")
        return kept

    def check(self, model: torch.nn.Module, step: int) -> None:
        """Raise before the optimizer step if a task loss, a term or the gradient is non-finite."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flags = [torch.isfinite(torch.nn.utils.get_total_norm(grads))] if grads else []
        names: list[tuple[int, str]] = [(-1, "gradient")] if grads else []
        for j, (_, micro) in enumerate(self._micro):
            for name, ok in micro:
                flags.append(ok.to(flags[0].device) if flags else ok)
                names.append((j, name))
        if not flags:
            return
        ok_all = torch.stack(flags)
        if bool(ok_all.all()):  # the one synchronisation per optimizer step
            self._micro.clear()
            return
        bad = [names[i] for i, ok in enumerate(ok_all.tolist()) if not ok]
        first = next((b for b in bad if b[0] >= 0), bad[0])
        micro = len(self._micro)
        def ids(indices: list) -> str:
            if any(i is None for i in indices) or not indices:
                return "examples unknown (the batches carry no 'balora_index' column)"
            return f"examples balora_index {torch.cat([i.flatten() for i in indices]).tolist()}"

        if first[0] >= 0:
            where = f" in micro-batch {first[0] + 1} of {micro} ({ids([self._micro[first[0]][0]])})"
        else:
            where = f" ({ids([index for index, _ in self._micro])} in this step)"
        terms = sorted({name for _, name in bad if name != "gradient"})
        if first[1] == "task":
            what = "non-finite task loss"
            hint = "check these examples' labels and inputs (a NaN or out-of-range label?)"
        elif terms:
            what = f"BA-LoRA {' and '.join(terms)} term is non-finite"
            hint = "nan_policy='skip_term' drops a non-finite regulariser for the step"
        else:
            what = "non-finite gradient"
            hint = "lower the learning rate or check the data"
        self._micro.clear()
        raise FloatingPointError(f"{what} at optimizer step {step}{where}; the update was not applied and the "
                                 f"checkpoints saved so far are intact: {hint}")

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


class _StepGuard(TrainerCallback):
    """Runs :meth:`TermGuard.check` before each optimizer step; drops the step's item counts after it."""

    def __init__(self, trainer: "BALoRATrainer") -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainer.guard.check(model if model is not None else self.trainer.model, state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.end_step()


class BALoRATrainer(Trainer):
    """Trainer whose loss is a :mod:`balora.objectives` objective (any model: prepared or a plain transformers one).

    Args (besides Trainer's):
        objective: the loss component, built once from the settings: ``prepared.objective()`` of a
            :func:`balora.prepare_model` result (a cached reference filled first and passed to it). Default: the
            task loss alone, normalised as every method's.
    """

    # The objectives normalise every term over the whole optimizer step themselves (all micro-batches and
    # ranks): Trainer must neither divide by the accumulation steps nor pass num_items_in_batch to the model.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, objective: Optional[Objective] = None, **kwargs: Any) -> None:
        from .methods import PreparedModel

        if isinstance(kwargs.get("model", args[0] if args else None), PreparedModel):
            raise TypeError("BALoRATrainer takes the module and its objective: "
                            "BALoRATrainer(model=prepared.model, objective=prepared.objective(), ...)")
        super().__init__(*args, **kwargs)
        if self.label_smoother is not None or self.compute_loss_func is not None:
            raise ValueError("BALoRATrainer computes the loss in balora.objectives (normalised over micro-batches "
                             "and ranks): label_smoothing_factor and compute_loss_func are not supported")
        self.model_accepts_loss_kwargs = False
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.objective = (objective if objective is not None else make_objective(unwrapped)).to(self.args.device)
        cfg = self.objective.cfg
        self.guard = TermGuard(cfg.nan_policy, self.args.gradient_accumulation_steps)
        self.add_callback(_StepGuard(self))
        if hasattr(getattr(unwrapped, "base_model", None), "update_and_allocate"):  # AdaLoRA
            self.add_callback(AdaLoraCallback())
        # remove_unused_columns=True (Trainer's default) keeps only the model's forward arguments: keep the example
        # index too (cached reference, error messages naming examples).
        peft_compat.keep_input_column(self, "balora_index")
        self._norm: Optional[Normalizer] = None
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, torch.Tensor] = {}
        self.adaptive = AdaptiveLambdas(cfg) if cfg.schedule == "adaptive" else None

    def train(self, *args: Any, **kwargs: Any):
        """Trainer.train; with several processes, first check that the ranks' PiSSA inits agree (collective: every
        rank calls train). FSDP / ZeRO shard each rank's own tensors, so a disagreement is refused there; DDP
        broadcasts rank 0's weights, so it only warns (:mod:`balora.sharding`)."""
        if world_size() > 1:
            from .sharding import check_ranks_agree

            check_ranks_agree(self.accelerator.unwrap_model(self.model),
                              sharded=bool(self.is_fsdp_enabled or self.is_deepspeed_enabled))
        return super().train(*args, **kwargs)

    # ------------------------------------------------------------------ loss
    def end_step(self) -> None:
        """Forget the finished optimizer step's item counts (the next step's micro-batches set their own)."""
        self._norm = None

    def lambdas(self) -> tuple[float, float, float]:
        if not self.objective.regularized:
            return 0.0, 0.0, 0.0
        if self.adaptive is not None:
            return self.adaptive.weights()
        return lambda_weights(self.objective.cfg, self.state.global_step, self.state.max_steps)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Trainer's prefetch of one optimizer step's micro-batches; also counts their items over all ranks."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._norm = Normalizer.for_batches(batches, world_size(), device) if batches else None
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        inputs = dict(inputs)
        index = inputs.pop("balora_index", None)
        if not model.training:  # evaluation: the task loss alone, no reference pass
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        self.guard.step = self.state.global_step + 1
        self.guard.begin(index)
        ctx = StepContext(self.lambdas(), self._norm or Normalizer(), self.guard,
                          self.accelerator.unwrap_model(model), index)
        loss, outputs, terms = self.objective(model, inputs, ctx)
        for name, (value, weight) in terms.items():
            self._record(name, value, weight)
        if self.adaptive is not None:
            self.adaptive.observe({name: value for name, (value, _) in terms.items()})
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ logging
    def _record(self, name: str, value: torch.Tensor, weight) -> None:
        weighted = value.detach().float() * weight
        self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
        w = torch.as_tensor(weight, dtype=torch.float32, device=weighted.device)
        self._weights[name] = self._weights[name] + w if name in self._weights else w

    def term_means(self, reduce: bool = False) -> dict[str, float]:
        """Weighted means of the terms since the last log (over ranks with ``reduce``): one synchronisation.

        Always all four terms in a fixed order, so that ranks that skipped a term still join the reduction."""
        present = [n for n in TERMS if n in self._sums]
        if not present and not reduce:
            return {}
        device = self._sums[present[0]].device if present else self.args.device
        zero = torch.zeros((), dtype=torch.float32, device=device)
        stacked = torch.stack([self._sums.get(n, zero).reshape(()).to(device) for n in TERMS]
                              + [self._weights.get(n, zero).reshape(()).to(device) for n in TERMS])
        if reduce:
            stacked = all_reduce_sum(stacked)
        values = stacked.tolist()
        k = len(TERMS)
        return {n: values[i] / values[k + i] for i, n in enumerate(TERMS) if values[k + i] > 0}

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log (every rank calls it): attach the averaged terms since the last one
            for name, value in self.term_means(reduce=True).items():
                logs[f"loss_{name}"] = float(f"{value:.7g}")
            for name, count in self.guard.skipped.items():
                if count:
                    logs[f"balora_skipped_{name}"] = count
            self._sums.clear()
            self._weights.clear()
            self.guard.skipped.clear()
        super().log(logs, *args, **kwargs)


__all__ = ["BALoRATrainer", "TermGuard", "AdaLoraCallback", "TERMS"]
