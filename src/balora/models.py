"""The one model loader: base models and tokenizers from a Hub name or a local folder (optionally a GGUF file in
it), used by training, export, the evaluation CLI and the overhead benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gguf_kwargs(name_or_path: str, gguf_file: Optional[str]) -> dict:
    return {"gguf_file": gguf_file} if gguf_file else {}


def load_tokenizer(name_or_path: str, gguf_file: Optional[str] = None, padding_side: str = "right") -> Any:
    """Tokenizer with a pad token (the EOS token when the model has none, as for GPT-2 and Llama)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **_gguf_kwargs(name_or_path, gguf_file))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"{name_or_path}: tokenizer has neither a pad nor an EOS token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_base_model(name_or_path: str, kind: str, num_labels: Optional[int] = None,
                    dtype: Union[str, torch.dtype] = "float32",
                    gguf_file: Optional[str] = None, pad_token_id: Optional[int] = None,
                    problem_type: Optional[str] = None, pooling: str = "auto",
                    pair_encoding: Optional[str] = None) -> Any:
    """A sequence classifier (kind ``nlu``; ``pooling``, see :mod:`balora.heads`) or ``AutoModelForCausalLM`` (``nlg``).

    ``dtype``: a name in :data:`DTYPES`, ``"auto"`` (the checkpoint's) or a ``torch.dtype``.
    """
    from transformers import AutoModelForCausalLM

    if not name_or_path:
        raise ValueError("model.name_or_path is empty: give a Hugging Face model name or a local model folder")
    local = Path(name_or_path)
    if name_or_path.startswith((".", "/", "~")) and not local.expanduser().exists():
        raise FileNotFoundError(f"model folder {local} does not exist")
    if isinstance(dtype, str) and dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype != "auto" else dtype
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **_gguf_kwargs(name_or_path, gguf_file)}
    if kind == "nlu":
        if num_labels is None:
            raise ValueError("num_labels is needed for a sequence-classification model")
        from .classifier_loading import load_classifier

        model = load_classifier(name_or_path, num_labels, pooling, problem_type=problem_type,
                                pair_encoding=pair_encoding, **kwargs)
        if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = pad_token_id  # decoder classifiers find the last real token with it
    elif kind == "nlg":
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    else:
        raise ValueError(f"kind must be 'nlu' or 'nlg', got {kind!r}")
    if gguf_file:  # a dequantised GGUF model is a plain float model from here on
        from .peft_compat import drop_hf_quantizer

        drop_hf_quantizer(model)
    return model
