"""One NLU run: load model and data, prepare the method, train with BALoRATrainer, evaluate, save.

Used by ``balora train`` (kind ``nlu``), ``balora demo`` and ``balora bench nlu``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import pipeline
from .common import build_trainer, finish_run
from .run_config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class NLUData:
    """Tokenisation-ready NLU splits and what the label space is."""

    splits: Any  # datasets.DatasetDict with 'train' and any of 'validation', 'test'
    text_columns: list[str]
    label_column: str = "label"
    num_labels: int = 2
    label_names: Optional[list[str]] = None
    regression: bool = False
    description: str = ""
    locate: dict = field(default_factory=dict)  # split -> RowLocator ("FILE: row N") for error messages


@dataclass
class NLUResult:
    run_dir: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    confidences: dict[str, np.ndarray] = field(default_factory=dict)  # classification: top-class probability
    log_history: list[dict] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    train_seconds: float = 0.0
    truncated: int = 0
    adapter_change: float = 0.0  # L2 norm of (trained - initial) trainable weights: was anything learnt?
    adapter_fingerprint: str = ""  # sha256 of the trained weights: do two runs differ?
    head: dict = field(default_factory=dict)  # pooling and head warm-up (what, cost in seconds, probe fit)
    injection: dict = field(default_factory=dict)  # injected label noise / imbalance (balora.data.noise.inject)


def load_nlu_data(cfg: RunConfig) -> NLUData:
    """Read the train/validation/test sources of ``cfg.data`` (local files or Hub names)."""
    import datasets

    from ..data.files import load_table_located, require_columns

    d = cfg.data
    if not d.train:
        raise ValueError("data.train is empty: give a local file or a Hub dataset name")
    if not d.text_columns:
        raise ValueError("data.text_columns is empty: name the one or two text columns")
    splits, where = {}, {}
    for split, source in (("train", d.train), ("validation", d.validation), ("test", d.test)):
        if not source:
            continue
        if Path(source).exists():
            ds, where[split] = load_table_located(source, split_name=split)
        else:
            name, _, config = source.partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
        require_columns(ds, [*d.text_columns, d.label_column], source)
        splits[split] = ds
    dd = datasets.DatasetDict(splits)
    return describe_labels(dd, d.text_columns, d.label_column, d.task_type, description=d.train, where=where)


def describe_labels(dd: Any, text_columns: list[str], label_column: str = "label", task_type: str = "auto",
                    description: str = "", where: Optional[dict] = None) -> NLUData:
    """Work out classes vs regression and map labels to ids (sorted names); every split is checked first.

    Bad data (an empty split, missing text or label, text where a number is expected, a non-finite target, a
    negative class id, a validation/test label the training labels do not have) is a ``ValueError`` naming
    the file, row, column and value (see :mod:`balora.data.validate`), before any model is loaded.
    """
    from ..data.validate import read_label_space

    dd, space = read_label_space(dd, text_columns, label_column, task_type, where)
    return NLUData(dd, text_columns, label_column, space.num_labels, space.label_names, space.regression,
                   description, dict(where or {}))


def tokenize_nlu(data: NLUData, tokenizer: Any, max_length: int, pair_encoding: str = "cross") -> tuple[Any, int]:
    """Tokenised splits (model columns + labels; ``balora_index`` on train) and the count of truncated rows.

    ``pair_encoding`` siamese (two text columns): each sentence is tokenised alone, the second into
    ``input_ids_b`` / ``attention_mask_b`` (balora.heads); a row counts as truncated when either sentence is."""
    from ..heads import SECOND_SUFFIX, check_pair_encoding

    siamese = check_pair_encoding(pair_encoding) == "siamese"
    if siamese and len(data.text_columns) != 2:
        raise ValueError(f"model.pair_encoding siamese needs two text columns (sentence pairs), got "
                         f"{data.text_columns}")
    truncated = 0

    def encode(batch: dict) -> dict:
        nonlocal truncated
        texts = [batch[c] for c in data.text_columns]
        if siamese:
            enc = tokenizer(texts[0], truncation=True, max_length=max_length)
            second = tokenizer(texts[1], truncation=True, max_length=max_length)
            for key in ("input_ids", "attention_mask"):
                enc[key + SECOND_SUFFIX] = second[key]
            enc.pop("token_type_ids", None)  # one segment each: the body's default (zeros)
            full = [max(len(a), len(b)) for a, b in zip(tokenizer(texts[0], truncation=False)["input_ids"],
                                                        tokenizer(texts[1], truncation=False)["input_ids"])]
            truncated += sum(n > max_length for n in full)
        else:
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
            full = tokenizer(*texts, truncation=False)["input_ids"]
            truncated += sum(len(f) > max_length for f in full)
        enc["labels"] = [float(v) for v in batch[data.label_column]] if data.regression else batch[data.label_column]
        return enc

    # An explicit fingerprint: otherwise datasets hashes `encode` with dill, tokenizer included, on every call
    # (seconds per run, most of the set-up time of a small run). Never read back from a cache file, which would
    # also skip `encode` and so the truncation count.
    import hashlib

    from ..peft_compat import dataset_fingerprint

    token = "|".join(map(str, (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                               max_length, data.text_columns, data.label_column, data.regression)
                           + (("siamese",) if siamese else ())))
    out = {}
    for split, ds in data.splits.items():
        fingerprint = hashlib.sha256(f"{dataset_fingerprint(ds, id(ds))}|{token}".encode()).hexdigest()[:16]
        enc = ds.map(encode, batched=True, remove_columns=list(ds.column_names), desc=f"tokenising {split}",
                     new_fingerprint=fingerprint, load_from_cache_file=False)
        if split == "train":
            enc = enc.add_column("balora_index", list(range(len(enc))))
        out[split] = enc
    if truncated:
        logger.warning("%d examples were longer than max_length=%d tokens and were truncated", truncated, max_length)
    return out, truncated


class PairCollator:
    """Pads a siamese batch (balora.heads): the first sentences and the second ones (``input_ids_b`` /
    ``attention_mask_b``) each to their own longest row, with ``DataCollatorWithPadding``."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        from ..heads import SECOND_SUFFIX

        self.pad, self.suffix = DataCollatorWithPadding(tokenizer), SECOND_SUFFIX

    def __call__(self, features: list[dict]) -> dict:
        first, second = [], []
        for row in features:
            row = dict(row)
            second.append({key: row.pop(key + self.suffix) for key in ("input_ids", "attention_mask")})
            first.append(row)
        batch, padded = self.pad(first), self.pad(second)
        for key in ("input_ids", "attention_mask"):
            batch[key + self.suffix] = padded[key]
        return batch


def top_class_confidence(logits: Any) -> np.ndarray:
    """Each row's top-class softmax probability (float64), the confidence the calibration error is computed from."""
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1).max(-1).values.numpy()


def nlu_collator(tokenizer: Any, pair_encoding: str = "cross") -> Any:
    """The batch collator of tokenize_nlu's output: padding, per sentence for siamese pairs."""
    from transformers import DataCollatorWithPadding

    return PairCollator(tokenizer) if pair_encoding == "siamese" else DataCollatorWithPadding(tokenizer)


def run_nlu(cfg: RunConfig, data: Optional[NLUData] = None, *, compute_metrics: Optional[Callable] = None,
            extra_callbacks: Optional[list] = None, save_adapter: bool = True) -> NLUResult:
    """Train and evaluate one NLU configuration; writes ``balora_run.json`` into ``cfg.train.output_dir``.

    The data (every split) and the settings are checked first; the run folder is created only then, with its
    record marked ``running``, and marked ``failed`` with the error if anything later raises.
    """
    from ..data.validate import LabelSpace, check_nlu_splits

    data = data or load_nlu_data(cfg)
    check_nlu_splits(data.splits, data.text_columns, data.label_column,  # also a caller-given label space
                     LabelSpace(data.num_labels, data.label_names, data.regression), data.locate)
    with pipeline.open_run(cfg, "validation" in data.splits) as run_dir:
        return _run_nlu(cfg, data, run_dir, compute_metrics=compute_metrics, extra_callbacks=extra_callbacks,
                        save_adapter=save_adapter)


def _run_nlu(cfg: RunConfig, data: NLUData, run_dir: Path, *, compute_metrics: Optional[Callable],
             extra_callbacks: Optional[list], save_adapter: bool) -> NLUResult:
    from transformers import set_seed

    from ..baselines.params import count_parameters
    from ..models import load_base_model, load_tokenizer

    set_seed(cfg.train.seed)
    if cfg.data.train_limit and len(data.splits["train"]) > cfg.data.train_limit:
        data.splits["train"] = _subsample(data.splits["train"], cfg.data.train_limit, cfg.train.seed, not data.regression)
    for split in ("validation", "test"):
        if cfg.data.eval_limit and split in data.splits and len(data.splits[split]) > cfg.data.eval_limit:
            data.splits[split] = _subsample(data.splits[split], cfg.data.eval_limit, 0, not data.regression)
    injection = _inject(cfg, data)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.gguf_file)
    encoded, truncated = tokenize_nlu(data, tokenizer, cfg.model.max_length, cfg.model.pair_encoding)
    model = load_base_model(cfg.model.name_or_path, "nlu", data.num_labels, cfg.model.dtype, cfg.model.gguf_file,
                            pad_token_id=tokenizer.pad_token_id,
                            problem_type="regression" if data.regression else "single_label_classification",
                            pooling=cfg.model.pooling, pair_encoding=cfg.model.pair_encoding)
    collator = nlu_collator(tokenizer, cfg.model.pair_encoding)
    # LP-FT warm start before prepare_model, so peft's frozen copy of the head (the reference's) is the warmed one.
    warmup = _warm_up_head(cfg, model, encoded["train"], collator)
    on_features = data.regression or cfg.regularizers.nlu_rows == "features"  # the terms act on the head inputs
    prepared = pipeline.prepare_method(cfg, model, len(encoded["train"]), run_dir, regression=on_features,
                                       train_data=(encoded["train"], collator))
    model = prepared.model
    metric_fn = compute_metrics or _default_metrics(data)
    trainer = build_trainer(cfg, model, encoded["train"], encoded.get("validation"), collator, tokenizer,
                            objective=prepared.objective(_filled_reference(cfg, prepared, encoded["train"], collator,
                                                                           on_features)),
                            compute_metrics=metric_fn, callbacks=extra_callbacks)
    if not cfg.train.progress:  # no per-log dict printing either (the caller shows its own progress)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    log_history, seconds = pipeline.train(cfg, trainer, run_dir)
    result = NLUResult(run_dir=str(run_dir), log_history=log_history, truncated=truncated, train_seconds=seconds,
                       head=warmup, injection=injection)
    result.trainable_params, result.total_params = count_parameters(model)
    result.adapter_change, result.adapter_fingerprint = weight_change(model, initial)
    # transformers 5 length-groups (and so shuffles) evaluation batches too when train_sampling_strategy is
    # group_by_length; the predictions must stay in row order for callers that align them with their rows.
    if getattr(trainer.args, "train_sampling_strategy", None) == "group_by_length":
        trainer.args.train_sampling_strategy = "random"
    for split in ("validation", "test"):
        if split not in encoded:
            continue
        logits, label_ids = predict_by_length(trainer, encoded[split].remove_columns(
            [c for c in ("balora_index",) if c in encoded[split].column_names]))
        result.predictions[split] = logits.squeeze(-1) if data.regression else logits.argmax(-1)
        result.references[split] = label_ids
        if not data.regression:
            result.confidences[split] = top_class_confidence(logits)
        result.metrics[split] = metric_fn(_EvalPrediction(logits, label_ids))
    if save_adapter:
        pipeline.save_adapter(model, run_dir)
    finish_run(cfg, run_dir, prepared, result.metrics, extra={"num_labels": data.num_labels, "label_names": data.label_names,
                                                           "truncated": truncated, "data": data.description or cfg.data.train,
                                                           "head": warmup, "injection": injection})
    return result


def _filled_reference(cfg: RunConfig, prepared: Any, train_ds: Any, collator: Any, regression: bool) -> Any:
    """The run's reference; a cached one (chosen by :func:`balora.reference.choose_reference`) filled once over the
    training set, with the pooled head inputs too for a regression head."""
    reference = prepared.reference
    if reference is None or reference.mode != "cached":
        return reference
    from ..objectives import RegressionObjective

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepared.model.to(device)
    return reference.fill(prepared.model, train_ds, collator, cfg.train.eval_batch_size, device,
                          features=RegressionObjective.cache_rows if regression else None)


def _inject(cfg: RunConfig, data: NLUData) -> dict:
    """Injected label noise / class imbalance on the training split only (balora.data.noise), recorded."""
    d = cfg.data
    if d.label_noise == 0 and d.imbalance_fraction == 1:
        return {}
    if data.regression:
        raise ValueError("data.label_noise / data.imbalance_fraction need class labels, not a regression target")
    from ..data.noise import inject

    seed = cfg.train.seed if d.injection_seed is None else d.injection_seed
    data.splits["train"], record = inject(data.splits["train"], num_classes=data.num_labels,
                                          label_column=data.label_column, noise=d.label_noise,
                                          noise_kind=d.label_noise_kind, imbalance_fraction=d.imbalance_fraction,
                                          imbalance_class=d.imbalance_class, seed=seed)
    return record


def _warm_up_head(cfg: RunConfig, model: Any, train_ds: Any, collator: Any) -> dict:
    """The head's pooling and, unless ``method.head_warmup`` is none (or the method trains no head), its
    linear-probe warm start (:func:`balora.training.head_warmup.warm_up_head`) on the training set."""
    from ..heads import PooledClassifier
    from ..peft_compat import dataset_fingerprint
    from .head_warmup import warm_up_head

    info: dict[str, Any] = {"pooling": model.pooling if isinstance(model, PooledClassifier) else "cls"}
    if cfg.method.head_warmup == "none":
        return {**info, "head_warmup": "none"}
    # On resume it runs again (deterministic): the checkpoint restores the trained head, but the frozen
    # step-0 head the consistency reference uses is rebuilt from this warm start.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    # Features depend on the frozen base, the pooling and the tokenised data only (not on the seed): runs of a
    # grid in one process (balora demo) share them. The dataset fingerprint covers data and tokenisation.
    fingerprint = dataset_fingerprint(train_ds)
    key = (cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.dtype, info["pooling"], fingerprint) if fingerprint else None
    info.update(warm_up_head(model, train_ds, collator, cfg.method.head_warmup, cfg.train.eval_batch_size,
                             cache_key=key))
    logger.info("head warm-up (%s): %.1f s, probe fit %s", cfg.method.head_warmup, info["head_warmup_seconds"],
                {k: v for k, v in info.items() if k.startswith("train_")})
    return info


def weight_change(model: Any, initial: dict[str, torch.Tensor]) -> tuple[float, str]:
    """L2 distance of the trainable weights from ``initial`` and a sha256 fingerprint of their values."""
    import hashlib

    digest = hashlib.sha256()
    total = 0.0
    for name, param in model.named_parameters():
        if name in initial:
            value = param.detach().float().cpu()
            total += float((value - initial[name].float().cpu()).pow(2).sum())
            digest.update(name.encode())
            digest.update(value.numpy().tobytes())
    return total**0.5, digest.hexdigest()


def predict_by_length(trainer: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """(logits, label ids) of ``dataset`` in its row order, predicted in batches of similar length.

    Trainer pads each evaluation batch to its longest row; sorted by length, a batch holds rows of about the same
    length and most of the padding (and its compute) goes away. The rows are put back in their order after.
    """
    from ..data.order import length_order

    order = length_order(dataset, longest_first=True)  # a too-large batch fails at once
    pred = trainer.predict(dataset.select(order))
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    back = np.argsort(order)
    return np.asarray(logits)[back], np.asarray(pred.label_ids)[back]


class _EvalPrediction:
    def __init__(self, predictions: Any, label_ids: Any) -> None:
        self.predictions, self.label_ids = predictions, label_ids


def _default_metrics(data: NLUData) -> Callable:
    from ..evaluation.nlu_metrics import classification_report_dict

    def metrics(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        refs = np.asarray(pred.label_ids)
        if data.regression:
            from scipy.stats import pearsonr, spearmanr

            p = np.asarray(logits).reshape(-1)
            return {"pearson": float(pearsonr(p, refs)[0]), "spearmanr": float(spearmanr(p, refs)[0])}
        report = classification_report_dict(np.asarray(logits).argmax(-1), refs, data.num_labels)
        return {k: v for k, v in _flatten(report).items() if isinstance(v, (int, float))}

    return metrics


def _flatten(report: dict, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}_"))
        elif isinstance(value, (list, tuple)) and value and not isinstance(value[0], (list, tuple)):
            out.update({f"{prefix}{key}_{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, (int, float)):
            out[f"{prefix}{key}"] = float(value)
    return out


def _subsample(ds: Any, n: int, seed: int, stratify: bool) -> Any:
    from ..data.assets import subsample

    return subsample(ds, n, seed=seed, stratify=stratify)
