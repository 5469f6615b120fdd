"""Loading a sequence classifier with the right pooling: ``model.pooling: auto`` read from the checkpoint.

``auto``: a folder saved as a pooled classifier (``balora_head.json``) keeps its pooling; a sentence-transformers
folder (``modules.json`` with a ``Pooling`` module) gets its pooling mode; anything else gets ``cls`` (the
checkpoint's own head). When ``cls`` is used and the checkpoint's pooler layer looks untrained (bias exactly 0
and a spectrum at the random-matrix edge, as in all-MiniLM-L6-v2), a warning says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .heads import POOLINGS, check_pair_encoding, load_pooled_classifier, read_head_spec

logger = logging.getLogger(__name__)


def resolve_pooling(name_or_path: str, pooling: str = "auto") -> str:
    """``auto`` -> the checkpoint's pooling (see the module text); an explicit choice is returned as is."""
    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if pooling != "auto":
        return pooling
    folder = Path(name_or_path).expanduser()
    spec = read_head_spec(folder) if folder.is_dir() else None
    if spec is not None:
        return spec["pooling"]
    st = sentence_transformers_pooling(folder) if folder.is_dir() else None
    return st or "cls"


def sentence_transformers_pooling(folder: Path) -> Optional[str]:
    """``mean`` / ``cls`` / ``last`` from a sentence-transformers folder's Pooling module, else None."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        pooling_dir = next(m["path"] for m in modules if str(m.get("type", "")).endswith("models.Pooling"))
        cfg = json.loads((folder / pooling_dir / "config.json").read_text())
    except (StopIteration, OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s: unreadable sentence-transformers pooling config (%s); using the model's own head",
                       modules_file, err)
        return None
    if cfg.get("pooling_mode_mean_tokens") or cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        return "mean"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    logger.warning("%s: pooling mode %s has no equivalent here; using mean pooling", folder, cfg)
    return "mean"


def untrained_poolers(model: nn.Module, slack: float = 1.1) -> list[str]:
    """Names of ``pooler`` linear layers that look untrained: bias exactly 0 and a top singular value no
    larger than ``slack`` x the random-matrix edge ``std * (sqrt(m) + sqrt(n))`` (trained layers sit far
    above it; all-MiniLM-L6-v2's ``pooler.dense``: 0.352 vs edge 0.357)."""
    found = []
    for name, module in model.named_modules():
        if "pooler" not in name or not isinstance(module, nn.Linear) or module.bias is None:
            continue
        w = module.weight.detach().float()
        if bool((module.bias.detach() == 0).all()):
            edge = float(w.std()) * (w.shape[0] ** 0.5 + w.shape[1] ** 0.5)
            if float(torch.linalg.matrix_norm(w, ord=2)) <= slack * edge:
                found.append(name)
    return found


def load_classifier(name_or_path: str, num_labels: int, pooling: str = "auto", dtype: Any = torch.float32,
                    problem_type: Optional[str] = None, pair_encoding: Optional[str] = None,
                    **kwargs: Any) -> nn.Module:
    """A sequence classifier with the resolved ``pooling`` and ``pair_encoding`` (see the module text;
    ``pair_encoding`` None = a saved pooled classifier's own, else cross)."""
    from transformers import AutoModelForSequenceClassification

    if pair_encoding is None:
        folder = Path(name_or_path).expanduser()
        spec = read_head_spec(folder) if folder.is_dir() else None
        pair_encoding = spec["pair_encoding"] if spec else "cross"
    check_pair_encoding(pair_encoding, "model.pair_encoding")
    resolved = resolve_pooling(name_or_path, pooling)
    if resolved in ("mean", "last") or pair_encoding == "siamese":
        return load_pooled_classifier(name_or_path, resolved, num_labels, dtype, problem_type, pair_encoding,
                                      **kwargs)
    extra = {"problem_type": problem_type} if problem_type else {}
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, dtype=dtype,
                                                               **extra, **kwargs)
    bad = untrained_poolers(model)
    if bad:
        logger.warning("%s: pooler layer(s) %s look untrained (zero bias, random spectrum): the 'cls' head starts "
                       "from noise; consider model.pooling: mean%s", name_or_path, ", ".join(bad),
                       " (set by auto for sentence-transformers folders)" if pooling == "cls" else "")
    return model


__all__ = ["resolve_pooling", "sentence_transformers_pooling", "untrained_poolers", "load_classifier"]
