"""Classifier heads: how a sequence is pooled into one vector, and a linear-probe warm start of the head.

``pooling`` (RunConfig ``model.pooling``):

* ``cls``: the checkpoint's own ``AutoModelForSequenceClassification`` head, unchanged (BERT-like
  encoders: first-token pooler + classifier; decoder classifiers: last real token + ``score``).
* ``mean``: mean of the last hidden states under the attention mask, then a linear ``classifier``
  (how sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained).
* ``last``: the last real (non-pad) token's last hidden state, then a linear ``classifier``
  (left or right padding).
* ``auto``: read the checkpoint: a folder saved by :func:`save_pooled_classifier` keeps its pooling; a
  sentence-transformers folder (``modules.json`` with a ``Pooling`` module) gets its pooling mode; anything
  else gets ``cls``. When ``cls`` is used and the checkpoint's pooler layer looks untrained (bias exactly 0
  and a spectrum at the random-matrix edge, as in all-MiniLM-L6-v2), a warning says so.

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

``head_warmup`` (RunConfig ``method.head_warmup``): ``logreg`` fits the head alone on the frozen
model's pooled features of the training set (scikit-learn ``LogisticRegression``, its L2 strength C
chosen by 3-fold cross-validation from :data:`PROBE_CS`; ``Ridge`` for regression) and copies the solution into the head before the adapters are added (LP-FT, Kumar et al.
2022). Done before :func:`balora.prepare_model`, peft's frozen copy of the head, which the consistency
term's reference uses, is the warmed head.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------------------ pooling
def pool(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], pooling: str) -> torch.Tensor:
    """(N, T, H) hidden states -> (N, H) under ``attention_mask`` (1 = real token) with ``pooling``."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "last":
        # The position of the last 1 in each row: correct for left and right padding alike.
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = (positions * attention_mask.long()).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"pooling must be one of cls, mean, last; got {pooling!r}")


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


# ------------------------------------------------------------------------------------ auto pooling
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


# -------------------------------------------------------------------------------------- warm start
def head_linear(model: nn.Module) -> nn.Linear:
    """The final linear layer of a classifier (``classifier``, ``score``, or their ``out_proj``)."""
    for name in ("classifier", "score"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj  # RoBERTa-style: dense + tanh + out_proj; the probe fits out_proj
    raise ValueError(f"head_warmup: {type(model).__name__} has no linear 'classifier' / 'score' head to warm up")


def length_order(dataset: Any, longest_first: bool = False) -> np.ndarray:
    """Row indices of a tokenised ``dataset`` sorted by ``input_ids`` length (stable): batches taken in this order
    pad little. ``np.argsort(order)`` puts results back in row order."""
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths if longest_first else lengths, kind="stable")


@torch.no_grad()
def head_features(model: nn.Module, dataset: Any, collator: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of the final head layer for every row of a tokenised ``dataset`` (eval mode, no grad), and labels."""
    from torch.utils.data import DataLoader

    linear = head_linear(model)
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels = []
    keep = [c for c in dataset.column_names if c not in ("balora_index",)]
    rows = dataset.select_columns(keep)
    # In length order (batches pad to their longest row: much less padding), put back in row order below.
    order = np.arange(len(rows))
    if "input_ids" in keep and hasattr(rows, "select"):
        order = length_order(rows)
        rows = rows.select(order)
    try:
        loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator)
        for batch in loader:
            labels.append(batch.pop("labels").cpu())
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        hook.remove()
        model.train(was_training)
    feats = torch.cat(captured)
    if feats.dim() == 3:  # decoder classifiers apply the head to every position: take the last real token
        raise ValueError("head_warmup: the head sees per-token features; use model.pooling: last")
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


#: Frozen-feature cache of :func:`warm_up_head` (``cache_key`` -> features, labels), kept for the process:
#: a grid of runs on the same base model and training set (``balora demo``) extracts the features once.
_FEATURES: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
_FEATURES_MAX = 4


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
    cached = cache_key is not None and cache_key in _FEATURES
    if cached:
        features, labels, fitted = _FEATURES[cache_key]
    else:
        features, labels = head_features(model, dataset, collator, batch_size)
        fitted = {}
        if cache_key is not None:
            while len(_FEATURES) >= _FEATURES_MAX:
                _FEATURES.pop(next(iter(_FEATURES)))
            _FEATURES[cache_key] = (features, labels, fitted)
    extracted = time.perf_counter() - start
    linear = head_linear(model)
    # The probe is a function of the training features only (fixed CV split), so it is cached with them.
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
