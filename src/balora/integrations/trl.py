"""BA-LoRA inside ``trl.SFTTrainer``: ``BALoRASFTTrainer(BALoRATrainer, SFTTrainer)``.

SFTTrainer keeps everything it does before the loss (dataset preparation from text, ``messages`` or
prompt/completion rows through the tokenizer's chat template, completion-only and assistant-only label masks,
packing with ``position_ids``, padding-free batches, its collator, metrics, model card tags). The training
loss is :class:`balora.BALoRATrainer`'s (the :mod:`balora.objectives` objects), so the logged terms are the
same as a plain ``BALoRATrainer`` on the same batches (tested). The class is the two trainers combined by
Python's method resolution order (``BALoRASFTTrainer -> BALoRATrainer -> SFTTrainer -> Trainer``): no code of
either is copied. What SFTTrainer does differently and how it is handled:

* **label masks**: SFTTrainer's collator writes ``-100`` into ``labels`` for prompt / non-assistant tokens and
  for the first token of every packed sequence; the objectives train exactly the positions
  ``labels[:, 1:] != -100`` (the task loss, KL, entropy and the SVD rows all use that mask);
* **packing / padding-free** (``packing=True`` with the ``bfd`` strategy, or ``padding_free=True``): one row
  holding several sequences, ``position_ids`` restarting at 0 and no ``attention_mask``; the inputs (with the
  position ids) go unchanged to the student and to the reference pass, so transformers builds the same
  block-diagonal mask for both;
* **num_items_in_batch**: SFTTrainer divides its summed token loss by Trainer's count of trained tokens over
  the step's micro-batches (and ranks); BALoRATrainer counts the same positions once per optimizer step
  (:class:`balora.objectives.Normalizer`, over all ranks) and ignores the argument: the task loss is the same
  token mean (tested with all lambdas 0 against SFTTrainer's own loss);
* **no logits**: SFTTrainer's default loss runs the model with ``fused_lm_head=True``, which returns
  per-token log-probabilities and no logits. BA-LoRA needs the distributions (KL, entropy, SVD), so training
  steps run the balora objective on the model's normal forward (``fused_lm_head`` off; balora's own fused path
  works from the last hidden states). Evaluation keeps SFTTrainer's loss and metrics unchanged;
* ``compute_loss_func``, ``label_smoothing_factor`` and ``loss_type="dft"`` change the task loss and are
  refused (as by BALoRATrainer), as is a ``peft_config``: prepare the model with :func:`balora.prepare_model`
  (the PiSSA init and the reference adapter must exist before the trainer starts).

Training logs keep SFTTrainer's ``num_tokens``; its ``entropy`` / ``mean_token_accuracy`` come from the fused
head and are logged in evaluation only (the BA-LoRA diversity term ``loss_diversity`` is minus the entropy).
"""

from __future__ import annotations

from typing import Any

try:
    from trl import SFTTrainer
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("balora.integrations.trl needs TRL: pip install 'balora[trl]'") from err

from ..peft_compat import add_sft_tokens
from ..trainer import BALoRATrainer


class BALoRASFTTrainer(BALoRATrainer, SFTTrainer):
    """``trl.SFTTrainer`` whose training loss is BA-LoRA's.

    Use as SFTTrainer, with a model and its objective from :func:`balora.prepare_model` (``method="ba-lora"`` or
    any ``+reg`` / baseline method)::

        prepared = balora.prepare_model(AutoModelForCausalLM.from_pretrained(path), "ba-lora", r=8)
        trainer = BALoRASFTTrainer(model=prepared.model, objective=prepared.objective(),
                                   args=SFTConfig(..., packing=True), train_dataset=ds, processing_class=tokenizer)

    The extra argument is BALoRATrainer's ``objective``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("peft_config") is not None:
            raise ValueError("BALoRASFTTrainer takes a model prepared by balora.prepare_model (PiSSA init and the "
                             "reference adapter are set up there), not a peft_config")
        sft_args = kwargs.get("args")
        if sft_args is not None and getattr(sft_args, "loss_type", "nll") != "nll":
            raise ValueError(f"SFTConfig.loss_type={sft_args.loss_type!r} changes the task loss; BA-LoRA trains "
                             "the token-mean cross-entropy (loss_type='nll')")
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        if not model.training:  # evaluation: SFTTrainer's own loss and metrics
            inputs = {k: v for k, v in inputs.items() if k != "balora_index"}
            return SFTTrainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        inputs["use_cache"] = False  # as SFTTrainer: no KV cache in training
        self._count_tokens(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch, **kwargs)

    def _count_tokens(self, inputs: dict) -> None:
        """SFTTrainer's ``num_tokens`` log (input tokens seen, over all ranks), as its compute_loss keeps it."""
        import torch

        if "attention_mask" in inputs and inputs["attention_mask"] is not None:
            local = inputs["attention_mask"].sum()
        elif "position_ids" in inputs:
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        else:
            local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
        add_sft_tokens(self, self.accelerator.gather_for_metrics(local.reshape(1)).sum().item())


__all__ = ["BALoRASFTTrainer"]
