"""Classifier heads: the pooled classifier (an ``AutoModel`` body, masked pooling and a linear head) and its
saved format; the pooling and pair-encoding choices.

``pooling`` (RunConfig ``model.pooling``; ``auto`` is resolved by :mod:`balora.classifier_loading`):

* ``cls``: the checkpoint's own ``AutoModelForSequenceClassification`` head, unchanged (BERT-like
  encoders: first-token pooler + classifier; decoder classifiers: last real token + ``score``).
* ``mean``: mean of the last hidden states under the attention mask, then a linear ``classifier``
  (how sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained).
* ``last``: the last real (non-pad) token's last hidden state, then a linear ``classifier``
  (left or right padding).

``mean`` / ``last`` build a :class:`PooledClassifier`: the ``AutoModel`` body plus a head module named
``classifier`` so that peft (task ``SEQ_CLS``) trains it through ``modules_to_save`` and the BA-LoRA
reference falls back to its frozen step-0 copy, exactly as for the stock heads. It is a plain
``nn.Module`` rather than a ``PreTrainedModel`` subclass: transformers' model registry, weight init and
tying machinery are not needed for one linear layer, and the body stays a stock model. On disk a merged
pooled classifier is the body's ``save_pretrained`` folder plus ``balora_head.safetensors`` (the head) and
``balora_head.json`` (pooling, labels); an adapter folder carries only ``balora_head.json`` (the head's
weights are in the adapter, as peft saves ``modules_to_save``).

``pair_encoding`` (RunConfig ``model.pair_encoding``, sentence-pair tasks): ``cross`` feeds both sentences as one
input (``[CLS] a [SEP] b [SEP]``), the checkpoint's usual way; ``siamese`` encodes each sentence alone with the same
body (u, v: the pooled vectors) and gives the head ``(u, v, |u - v|, u * v)``, the Sentence-BERT classifier
(Reimers & Gurevych 2019). Bi-encoders such as all-MiniLM-L6-v2 were trained that way: on RTE its frozen cross
features probe at 50.5 % dev accuracy, the siamese ones at 59.2 % (majority 52.7 %;
benchmarks/pair_encoding_probe.py). The second sentence travels as ``input_ids_b`` / ``attention_mask_b``
(:data:`SECOND_SUFFIX`); siamese always builds a :class:`PooledClassifier`.

``head_warmup`` (RunConfig ``method.head_warmup``, :data:`HEAD_WARMUPS`): the LP-FT linear-probe warm start of
the head, :mod:`balora.training.head_warmup`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .pooling import pool

POOLINGS = ("auto", "cls", "mean", "last")
HEAD_WARMUPS = ("none", "logreg")
PAIR_ENCODINGS = ("cross", "siamese")
SECOND_SUFFIX = "_b"  # siamese: the second sentence's input_ids_b / attention_mask_b



def check_pair_encoding(value: str, name: str = "pair_encoding") -> str:
    """``value`` if it is one of :data:`PAIR_ENCODINGS`, else a ValueError naming ``name`` and the value."""
    if value not in PAIR_ENCODINGS:
        raise ValueError(f"{name} must be one of {', '.join(PAIR_ENCODINGS)}, got {value!r}")
    return value


HEAD_SPEC = "balora_head.json"
HEAD_WEIGHTS = "balora_head.safetensors"
_FORMAT = 1


class PooledClassifier(nn.Module):
    """``AutoModel`` body + masked pooling + a linear ``classifier`` (the ``*ForSequenceClassification`` API)."""

    def __init__(self, body: nn.Module, pooling: str, num_labels: int, problem_type: Optional[str] = None,
                 pair_encoding: str = "cross") -> None:
        super().__init__()
        if pooling not in ("mean", "last", "cls"):
            raise ValueError(f"PooledClassifier pooling must be mean, last or cls, got {pooling!r}")
        check_pair_encoding(pair_encoding)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.body = body
        if getattr(body, "pooler", None) is not None:
            body.pooler = None  # the first-token pooler is unused here: no dead adapters in it
        self.pooling = pooling
        self.pair_encoding = pair_encoding
        self.config = body.config
        self.name_or_path = getattr(body, "name_or_path", "")  # peft records it as base_model_name_or_path
        self.config.num_labels = num_labels
        self.config.problem_type = problem_type or ("regression" if num_labels == 1 else "single_label_classification")
        hidden = self.config.hidden_size * (4 if pair_encoding == "siamese" else 1)
        self.classifier = nn.Linear(hidden, num_labels, dtype=next(body.parameters()).dtype)
        std = getattr(self.config, "initializer_range", 0.02)
        with torch.no_grad():  # as transformers initialises its classification heads
            self.classifier.weight.normal_(0.0, std)
            self.classifier.bias.zero_()

    @property
    def num_labels(self) -> int:
        return self.classifier.out_features

    def get_input_embeddings(self) -> nn.Module:
        return self.body.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                input_ids_b=None, attention_mask_b=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        body_kwargs = {k: v for k, v in dict(input_ids=input_ids, attention_mask=attention_mask,
                                             token_type_ids=token_type_ids, position_ids=position_ids,
                                             inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                                             output_hidden_states=output_hidden_states).items() if v is not None}
        out = self.body(**body_kwargs, **kwargs)
        features = pool(out[0], attention_mask, self.pooling)
        if self.pair_encoding == "siamese":
            if input_ids_b is None:
                raise ValueError("a siamese pair classifier needs the second sentence as input_ids_b / "
                                 "attention_mask_b (tokenise with model.pair_encoding: siamese)")
            u = features
            v = pool(self.body(input_ids=input_ids_b, attention_mask=attention_mask_b, **kwargs)[0], attention_mask_b,
                     self.pooling)
            features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        elif input_ids_b is not None:
            raise ValueError("input_ids_b given to a cross-encoding classifier (pair_encoding cross)")
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(out, "hidden_states", None),
                                        attentions=getattr(out, "attentions", None))

    def spec(self) -> dict:
        return {"format": _FORMAT, "pooling": self.pooling, "num_labels": self.num_labels,
                "problem_type": self.config.problem_type, "hidden_size": self.classifier.in_features,
                "pair_encoding": self.pair_encoding}

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """The body's ``save_pretrained`` folder + the head's weights and pooling description."""
        save_pooled_classifier(self, folder, **kwargs)


def linear_targets(model: nn.Module) -> list[str]:
    """peft ``target_modules`` equal to "all-linear" for a :class:`PooledClassifier`: every linear layer of
    the body by its leaf name, never the head. (peft excludes the head of "all-linear" only for
    ``PreTrainedModel`` instances, so it is resolved here.)"""
    names = {name.rsplit(".", 1)[-1] for name, module in model.body.named_modules() if isinstance(module, nn.Linear)}
    names.discard("classifier")
    return sorted(names)


def write_head_spec(model: Any, folder: str | Path) -> Optional[Path]:
    """Write ``balora_head.json`` into ``folder`` when ``model`` (or its peft base) is a PooledClassifier."""
    from .atomic import write_json_atomic

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PooledClassifier):
        return None
    return write_json_atomic(Path(folder) / HEAD_SPEC, base.spec())


def read_head_spec(folder: str | Path) -> Optional[dict]:
    """The ``balora_head.json`` of ``folder`` (None when absent); a malformed one is an error naming it."""
    path = Path(folder).expanduser() / HEAD_SPEC
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(spec, dict) or spec.get("pooling") not in ("mean", "last", "cls"):
        raise ValueError(f"{path}: expected an object with 'pooling' in mean/last/cls, got {spec!r:.200}")
    spec.setdefault("pair_encoding", "cross")  # written before siamese heads existed
    check_pair_encoding(spec["pair_encoding"], f"{path}: 'pair_encoding'")
    return spec


def save_pooled_classifier(model: PooledClassifier, folder: str | Path, **kwargs: Any) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    model.body.save_pretrained(str(folder), **kwargs)
    head = {k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(head, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
    write_head_spec(model, folder)


def load_pooled_classifier(name_or_path: str, pooling: str, num_labels: int, dtype: Any = torch.float32,
                           problem_type: Optional[str] = None, pair_encoding: str = "cross",
                           **kwargs: Any) -> PooledClassifier:
    """Body from ``name_or_path`` (``AutoModel``) + a new head; a folder saved by this module gets its head back."""
    from transformers import AutoModel

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the body may lack (unused) pooler weights: not worth a warning
    try:
        body = AutoModel.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    model = PooledClassifier(body, pooling, num_labels, problem_type, pair_encoding)
    weights = Path(name_or_path).expanduser() / HEAD_WEIGHTS
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
        try:
            model.classifier.load_state_dict({k: v.to(model.classifier.weight.dtype) for k, v in state.items()})
        except RuntimeError as err:
            raise ValueError(f"{weights}: head does not fit {num_labels} labels x hidden "
                             f"{model.classifier.in_features} ({err})") from err
    return model


__all__ = ["POOLINGS", "HEAD_WARMUPS", "PAIR_ENCODINGS", "SECOND_SUFFIX", "HEAD_SPEC", "HEAD_WEIGHTS",
           "check_pair_encoding", "pool", "PooledClassifier", "linear_targets", "write_head_spec", "read_head_spec",
           "save_pooled_classifier", "load_pooled_classifier"]
