"""LP-FT warm start of a classifier head (RunConfig ``method.head_warmup``, Kumar et al. 2022).

``logreg`` fits the head alone on the frozen model's pooled features of the training set (scikit-learn
``LogisticRegression``, its L2 strength C chosen by 3-fold cross-validation from :data:`PROBE_CS`; ``Ridge``
for regression) and copies the solution into the head's final linear layer (:func:`balora.pooling.head_linear`)
before the adapters are added. Done before :func:`balora.prepare_model`, peft's frozen copy of the head, which
the consistency term's reference uses, is the warmed head.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.order import length_order
from ..heads import HEAD_WARMUPS
from ..pooling import head_linear, reading_head_inputs

logger = logging.getLogger(__name__)


def head_features(model: nn.Module, dataset: Any, collator: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of the final head layer for every row of a tokenised ``dataset`` (eval mode, no grad), and labels."""
    from torch.utils.data import DataLoader

    features: list[torch.Tensor] = []
    labels = []
    keep = [c for c in dataset.column_names if c not in ("balora_index",)]
    rows = dataset.select_columns(keep)
    # In length order (batches pad to their longest row: much less padding), put back in row order below.
    order = np.arange(len(rows))
    if "input_ids" in keep and hasattr(rows, "select"):
        order = length_order(rows)
        rows = rows.select(order)
    with reading_head_inputs(model) as run:
        for batch in DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator):
            labels.append(batch.pop("labels").cpu())
            features.append(run(batch)[1])
    feats = torch.cat(features)
    back = np.argsort(order)
    return feats.numpy().astype(np.float64)[back], torch.cat(labels).numpy()[back]


#: L2 strengths tried by the probe's cross-validation (scikit-learn's C, on standardised features). An
#: unregularised probe fits a small training set perfectly and hands fine-tuning over-confident logits
#: (MiniLM on 1,024 MultiEmo sentences: C = 1 fits 100% of the training set, logits up to 28, and scores
#: worse on held-out data than C = 0.01).
PROBE_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


#: A feature whose spread is under this fraction of the median feature's spread is treated as constant.
CONSTANT_FEATURE_RATIO = 1e-3


def standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, std, keep): the features standardised per dimension, over the dimensions ``keep`` that vary.

    A (near-)constant dimension is dropped rather than divided by its spread: mean-pooled all-MiniLM-L6-v2 has
    dimensions with standard deviations of 1e-32 and 3e-9 across sentences, and a probe fitted on their
    standardised float noise and folded back into the raw scale (W / std) got weights of 1e7, so that the
    first update of the body made the logits explode (full fine-tuning: loss 0.24 -> 4,793 after one step).
    """
    features = np.asarray(features, dtype=np.float64)
    mu, sd = features.mean(0), features.std(0)
    keep = sd > max(1e-12, CONSTANT_FEATURE_RATIO * float(np.median(sd)))
    if not keep.any():  # nothing varies (a degenerate toy input): centre only, never divide by noise
        keep[:] = True
        sd = np.ones_like(sd)
    return (features[:, keep] - mu[keep]) / sd[keep], mu, sd, keep


def choose_c(features: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 3) -> float:
    """The probe's C by stratified k-fold cross-validation (log-loss) on the training features."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels.astype(np.int64))
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        return 1.0  # a class with one example: nothing to cross-validate on
    z, _, _, _ = standardise(features)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.8 announces parameter and attribute renames
        warnings.simplefilter("ignore", FutureWarning)
        fit = LogisticRegressionCV(Cs=list(PROBE_CS), cv=cv, scoring="neg_log_loss", max_iter=2000).fit(z, labels)
    return float(np.atleast_1d(fit.C_)[0])


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_labels: int, c: float = 1.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weight (num_labels, H) and bias (num_labels,) of a linear probe on ``features``.

    Classification: multinomial ``LogisticRegression`` (L2, ``C=c``) on standardised features (constant
    dimensions dropped, :func:`standardise`), folded back into the raw feature scale, so ``softmax(W x + b)`` is the probe's probabilities. Two classes get the
    symmetric two-logit form of the binary solution; a class absent from ``labels`` gets weight 0 and a
    bias 10 below the lowest other bias. Regression (``num_labels == 1``): ``Ridge(alpha=1/c)``.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    z, mu, sd, keep = standardise(features)
    if num_labels == 1:
        reg = Ridge(alpha=1.0 / c).fit(z, labels.astype(np.float64))
        w = np.asarray(reg.coef_, dtype=np.float64).reshape(1, -1)
        b = np.array([float(reg.intercept_)])
    else:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, labels.astype(np.int64))
        coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
        if coef.shape[0] == 1:  # binary: p(class 1) = sigmoid(w z + b) = softmax([-w/2, w/2] z + [-b/2, b/2])
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        w = np.zeros((num_labels, z.shape[1]))
        b = np.full(num_labels, intercept.min() - 10.0)
        for row, cls in enumerate(clf.classes_.astype(int)):
            w[cls], b[cls] = coef[row], intercept[row]
    # Undo the standardisation: W (x - mu) / sd + b = (W / sd) x + (b - (W / sd) mu); constant dimensions get 0.
    w_raw = np.zeros((w.shape[0], features.shape[1]))
    w_raw[:, keep] = w / sd[keep]
    return w_raw, b - w_raw[:, keep] @ mu[keep]


@dataclass
class _Probe:
    """Frozen features of one training set, their labels, and the probes fitted on them: (num_labels, method) ->
    (C, weight, bias). The probe is a function of the training features only (fixed CV split)."""

    features: np.ndarray
    labels: np.ndarray
    fitted: dict[tuple[int, str], tuple[float, np.ndarray, np.ndarray]] = field(default_factory=dict)


#: Frozen-feature cache of :func:`warm_up_head` (``cache_key`` -> :class:`_Probe`), kept for the process: a grid
#: of runs on the same base model and training set (``balora demo``) extracts the features once.
_PROBES: dict[Any, _Probe] = {}
_PROBES_MAX = 4


def warm_up_head(model: nn.Module, dataset: Any, collator: Any, method: str = "logreg", batch_size: int = 64,
                 cache_key: Any = None) -> dict:
    """Fit the head alone on frozen features of ``dataset`` and copy it in; returns what it did and cost.

    The probe is deterministic (fixed cross-validation split): the same for every training seed.
    ``cache_key`` (hashable; None = no caching) must identify the frozen base weights, the pooling and the
    tokenised dataset (e.g. model path, pooling, dtype, dataset fingerprint): features are reused for it.
    """
    if method not in HEAD_WARMUPS:
        raise ValueError(f"method.head_warmup must be one of {', '.join(HEAD_WARMUPS)}; got {method!r}")
    if method == "none":
        return {"head_warmup": "none"}
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    cached = cache_key is not None and cache_key in _PROBES
    if cached:
        probe = _PROBES[cache_key]
    else:
        probe = _Probe(*head_features(model, dataset, collator, batch_size))
        if cache_key is not None:
            while len(_PROBES) >= _PROBES_MAX:
                _PROBES.pop(next(iter(_PROBES)))
            _PROBES[cache_key] = probe
    features, labels, fitted = probe.features, probe.labels, probe.fitted
    extracted = time.perf_counter() - start
    linear = head_linear(model)
    # One BLAS thread: the matrices are small, and a multi-threaded BLAS on a busy machine made the
    # cross-validated fit 20x slower (7 s vs 0.3 s for 1,024 x 384 features).
    if (linear.out_features, method) not in fitted:
        with threadpool_limits(limits=1):
            c = 1.0 if linear.out_features == 1 else choose_c(features, labels, seed=0)
            fitted[(linear.out_features, method)] = (c, *fit_linear_head(features, labels, linear.out_features, c=c))
    c, w, b = fitted[(linear.out_features, method)]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(w, dtype=linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(torch.as_tensor(b, dtype=linear.bias.dtype))
        else:
            logger.warning("head_warmup: the head has no bias; the probe's intercept is dropped")
    logits = features @ w.T + b
    if linear.out_features == 1:
        fit = {"train_r2": float(1 - ((logits[:, 0] - labels) ** 2).sum() / max(((labels - labels.mean()) ** 2).sum(), 1e-12))}
    else:
        fit = {"train_accuracy": float((logits.argmax(1) == labels).mean())}
    return {"head_warmup": method, "head_warmup_seconds": time.perf_counter() - start,
            "head_warmup_feature_seconds": extracted, "head_warmup_features_cached": cached, "head_warmup_c": c,
            "head_warmup_examples": int(len(labels)), **fit}


__all__ = ["head_features", "PROBE_CS", "CONSTANT_FEATURE_RATIO", "standardise", "choose_c", "fit_linear_head",
           "warm_up_head"]
