"""BitFit (Ben Zaken et al., 2022): train only the bias terms (and the task head).

Not in peft, and a few lines of ``requires_grad`` switching, so it is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["DEFAULT_HEAD_NAMES", "apply_bitfit", "set_head_trainable"]

#: Module names of sequence-classification heads in transformers (BERT/DeBERTa ``classifier``,
#: RoBERTa ``classifier.dense``/``classifier.out_proj``, GPT-2/Llama ``score``). DeBERTa-v2/v3's
#: ``pooler`` is newly initialised when such a checkpoint is loaded; add ``"pooler"`` to train it too.
DEFAULT_HEAD_NAMES: tuple[str, ...] = ("classifier", "score")


def _in_head(param_name: str, head_names: Sequence[str]) -> bool:
    parts = param_name.split(".")
    return any(h in parts or param_name.startswith(h + ".") for h in head_names)


def set_head_trainable(model: nn.Module, head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> int:
    """Make every parameter under a module named in ``head_names`` trainable; returns how many tensors.

    A name matches a dotted component of the parameter name (``classifier`` matches
    ``classifier.out_proj.weight`` and ``base_model.model.classifier.weight``) or a dotted prefix.

    Raises:
        ValueError: no parameter matched (pass ``train_head=False`` for a model without a head).
    """
    count = 0
    for name, param in model.named_parameters():
        if _in_head(name, head_names):
            param.requires_grad_(True)
            count += 1
    if count == 0:
        raise ValueError(
            f"no head parameters found under module names {list(head_names)}; pass head_names=... "
            "for this model, or train_head=False for a model without a task head"
        )
    return count


def apply_bitfit(model: nn.Module, train_head: bool = True, *,
                 head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> nn.Module:
    """Freeze ``model`` in place except its bias parameters (and, if ``train_head``, the head).

    Returns:
        The same model, for chaining.

    Raises:
        ValueError: the model has no bias parameters, or ``train_head`` and no head was found.
    """
    n_bias = 0
    for name, param in model.named_parameters():
        is_bias = name == "bias" or name.endswith(".bias")
        param.requires_grad_(is_bias)
        n_bias += int(is_bias)
    if n_bias == 0:
        raise ValueError(f"{type(model).__name__} has no bias parameters; BitFit would train nothing")
    if train_head:
        set_head_trainable(model, head_names)
    return model
