"""GLUE sweeps: the grid (model x method x task x seed) of :func:`balora.training.nlu.run_nlu` runs.

:class:`NLUBenchConfig` holds the sweep (from ``balora bench nlu`` flags and/or a YAML file with a
``per_task`` section, see ``configs/nlu/``); :func:`nlu_specs` expands it into :class:`RunSpec` values and
:func:`make_nlu_run_fn` gives the per-run function :func:`balora.bench.runner.run_grid` calls.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


from .._fields import help_field
from ..config_io import load_flat_config
from .runner import RunFn, RunSpec

logger = logging.getLogger(__name__)

__all__ = ["NLUBenchConfig", "TASK_HPARAMS", "load_bench_config", "nlu_specs", "make_nlu_run_fn"]

# Settings that may differ per task (the per_task section) and that make a run's result differ.
TASK_HPARAMS = ("epochs", "max_steps", "batch_size", "lr", "warmup_ratio", "weight_decay", "alpha", "max_length",
                "train_limit", "eval_limit", "pooling", "head_warmup", "pair_encoding")


@dataclass
class NLUBenchConfig:
    """A GLUE sweep: which runs, with which settings (global, overridable per task), and where results go."""

    models: list[str] = help_field("Base models (Hub names or local folders).", default_factory=list)
    methods: list[str] = help_field("Methods (balora.methods.METHODS), e.g. lora pissa ba-lora.",
                               default_factory=lambda: ["lora", "pissa", "ba-lora"])
    tasks: list[str] = help_field("GLUE tasks (cola sst2 mrpc qqp stsb mnli qnli rte wnli).",
                             default_factory=lambda: ["rte", "mrpc", "cola", "stsb", "sst2"])
    seeds: int = help_field("Number of seeds per cell (seeds 0..N-1).", default=3)
    glue_dir: Optional[str] = help_field("Local GLUE folder (glue_data TSVs or Hub parquet layout); empty = the Hub.",
                                    default=None)
    ood: bool = help_field("Also evaluate each trained model on the locally available OOD sets of its task "
                      "(balora.data.ood.OOD_FOR_TASK; no further training).", default=False)
    ood_root: Optional[str] = help_field("Folder of the local OOD sets (default $BALORA_OOD_ROOT, else <glue-dir>/../ood).",
                                    default=None)
    epochs: float = help_field("Training epochs.", default=3.0)
    max_steps: int = help_field("Stop after this many steps (overrides epochs when > 0).", default=-1)
    batch_size: int = help_field("Training batch size.", default=32)
    eval_batch_size: int = help_field("Evaluation batch size.", default=128)
    lr: Optional[float] = help_field("Peak learning rate (AdamW, linear decay).", default=5e-4)
    warmup_ratio: float = help_field("Linear warm-up fraction of the steps.", default=0.0)
    weight_decay: float = help_field("AdamW weight decay.", default=0.0)
    r: int = help_field("Adapter rank.", default=8)
    alpha: Optional[float] = help_field("LoRA alpha (default: r).", default=None)
    target_modules: Any = help_field("Adapted modules ('all-linear' or a list of names).", default="all-linear")
    max_length: int = help_field("Maximum tokens per example.", default=128)
    pooling: str = help_field("Classifier pooling: auto (sentence-transformers folders -> mean, else the model's own head), "
                         "cls, mean or last (see balora.heads).", default="auto")
    pair_encoding: str = help_field("Sentence pairs: cross (one input) or siamese (each sentence alone, head on "
                                    "(u, v, |u - v|, u * v); see balora.heads). Recorded in a run's settings only "
                                    "when siamese, so cross runs keep their keys.", default="cross")
    head_warmup: str = help_field("Head warm start before the adapters train: logreg (linear probe on frozen features) "
                             "or none (random head).", default="logreg")
    train_limit: Optional[int] = help_field("Use at most this many training examples (seeded stratified subsample).",
                                       default=None)
    eval_limit: Optional[int] = help_field("Use at most this many evaluation examples (fixed subsample).", default=None)
    balora: dict = help_field("BALoRAConfig overrides for regularised methods (ba-lora, *+reg).", default_factory=dict)
    per_task: dict = help_field(f"Per-task overrides of {', '.join(TASK_HPARAMS)}: {{task: {{key: value}}}}.",
                           default_factory=dict)
    results: str = help_field("Results file (JSON Lines, one record per finished run; appended, resumable).",
                         default="results/glue.jsonl")
    out_dir: str = help_field("Parent folder of the per-run output folders.", default="runs/bench_nlu")
    keep_adapters: bool = help_field("Keep each finished run's folder (checkpoints, adapters).", default=False)
    threads: Optional[int] = help_field("torch CPU threads (torch.set_num_threads); empty = torch's default.", default=None)
    shard: str = help_field("Run only part of the grid, 'i/n' (runs whose grid index mod n equals i); several shards "
                       "may append to the same results file.", default="0/1")
    progress: bool = help_field("Show progress bars of the individual runs (the grid bar is always shown).",
                           default=False)

    def __post_init__(self) -> None:
        from ..data.glue import get_task
        from ..methods import parse_method

        for name in ("models", "methods", "tasks"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give at least one")
        for m in self.methods:
            parse_method(m)
        self.tasks = [get_task(t).name for t in self.tasks]
        for name in ("seeds", "batch_size", "eval_batch_size", "r", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        i, _, n = str(self.shard).partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ValueError(f"shard must be 'i/n' with 0 <= i < n, got {self.shard!r}")
        from ..heads import HEAD_WARMUPS, PAIR_ENCODINGS, POOLINGS

        for name, allowed in (("pooling", POOLINGS), ("head_warmup", HEAD_WARMUPS), ("pair_encoding", PAIR_ENCODINGS)):
            values = [getattr(self, name)] + [v[name] for v in (self.per_task or {}).values()
                                              if isinstance(v, Mapping) and name in v]
            for value in values:
                if value not in allowed:
                    raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for task, values in (self.per_task or {}).items():
            get_task(task)
            if not isinstance(values, Mapping):
                raise ValueError(f"per_task.{task} must be a mapping of settings, got {values!r}")
            bad = set(values) - set(TASK_HPARAMS)
            if bad:
                raise ValueError(f"per_task.{task}: unknown setting(s) {sorted(bad)}; allowed: {list(TASK_HPARAMS)}")
        self.per_task = {get_task(t).name: dict(v) for t, v in (self.per_task or {}).items()}

    def task_hparams(self, task: str) -> dict[str, Any]:
        """The settings of ``task``: the global ones with its ``per_task`` overrides applied."""
        values = {name: getattr(self, name) for name in TASK_HPARAMS}
        values.update(self.per_task.get(task, {}))
        if values["lr"] is None:
            raise ValueError(f"lr is not set for task {task!r} (a paper config leaves it empty where the paper's "
                             f"text lost the number): pass --lr or set per_task.{task}.lr")
        if values["alpha"] is None:
            values["alpha"] = self.r
        if values["pair_encoding"] == "cross":  # the default, absent from run keys written before it existed
            del values["pair_encoding"]
        return values


def load_bench_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> NLUBenchConfig:
    """Read a sweep YAML (keys = :class:`NLUBenchConfig` fields) and apply ``overrides`` (None values ignored)."""
    return load_flat_config(NLUBenchConfig, path, overrides)


def _is_regularised(method: str) -> bool:
    from ..methods import parse_method

    base, reg = parse_method(method)
    return reg or base == "ba-lora"


def nlu_specs(cfg: NLUBenchConfig) -> list[RunSpec]:
    """The grid in run order (model, seed, task, method), keeping shard ``i/n``'s share."""
    specs = []
    for model in cfg.models:
        for seed in range(cfg.seeds):  # seed-major: a sweep stopped early still has whole tables for its seeds
            for task in cfg.tasks:
                hp = cfg.task_hparams(task)
                for method in cfg.methods:
                    extra = {"r": cfg.r, "target_modules": cfg.target_modules}
                    if _is_regularised(method):
                        extra["balora"] = dict(cfg.balora)
                    specs.append(RunSpec(model, method, task, seed, {**hp, **extra}))
    i, n = (int(x) for x in cfg.shard.split("/"))
    return [s for k, s in enumerate(specs) if k % n == i]


def _ood_root(cfg: NLUBenchConfig) -> Optional[Path]:
    if cfg.ood_root:
        return Path(cfg.ood_root)
    if os.environ.get("BALORA_OOD_ROOT"):
        return Path(os.environ["BALORA_OOD_ROOT"])
    if cfg.glue_dir:
        for cand in (Path(cfg.glue_dir).parent / "ood", Path(cfg.glue_dir).parent.parent / "ood"):
            if cand.is_dir():
                return cand
    return None


def available_ood(task: str, root: Optional[Path]) -> tuple[list[str], list[str]]:
    """(sets of ``task`` whose files are present under ``root``, sets that are not: Hub-only or missing)."""
    from ..data.ood import OOD_FOR_TASK, get_ood

    have, missing = [], []
    for name in OOD_FOR_TASK.get(task, []):
        spec = get_ood(name)
        ok = bool(spec.files) and root is not None and all((root / f).is_file() for f in spec.files)
        (have if ok else missing).append(name)
    return have, missing


class ExtraEval:
    """Trainer callback: after training, predict on extra tokenised sets (MNLI mismatched, OOD sets).

    run_nlu does not hand back the trained model, so the evaluation runs inside the trainer's
    ``on_train_end``; the results land in ``self.results`` (set name -> metrics).
    """

    def __init__(self, sets: Mapping[str, Any], metric_fn: Any, regression: bool, batch_size: int, tokenizer: Any,
                 pair_encoding: str = "cross"):
        from transformers import TrainerCallback

        from ..training.nlu import nlu_collator

        self.sets, self.metric_fn, self.regression, self.batch_size = sets, metric_fn, regression, batch_size
        self.collator = nlu_collator(tokenizer, pair_encoding)
        self.results: dict[str, dict[str, float]] = {}
        self.predictions: dict[str, Any] = {}  # set name -> per-example predictions (row order)
        self.references: dict[str, Any] = {}
        # Subclassing at call time keeps transformers out of this module's import.
        self.callback = type("ExtraEvalCallback", (TrainerCallback,), {"on_train_end": self._on_train_end})()

    def _on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import numpy as np
        import torch
        from torch.utils.data import DataLoader

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for name, ds in self.sets.items():
                preds, refs = [], []
                loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator)
                with torch.no_grad():
                    for batch in loader:
                        refs.append(batch.pop("labels").numpy())
                        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
                        preds.append(logits[:, 0] if self.regression else logits.argmax(-1))
                self.predictions[name], self.references[name] = np.concatenate(preds), np.concatenate(refs)
                self.results[name] = self.metric_fn(self.predictions[name], self.references[name])
        finally:
            model.train(was_training)


def make_nlu_run_fn(cfg: NLUBenchConfig) -> RunFn:
    """The per-run function of a GLUE sweep: train with run_nlu, evaluate on the dev set(s) and OOD sets."""
    import datasets

    from ..data.assets import subsample
    from ..data.glue import get_task, load_glue
    from ..data.ood import load_ood
    from ..evaluation.nlu_metrics import compute_glue_metrics, make_compute_metrics
    from ..models import load_tokenizer
    from ..training.nlu import NLUData, run_nlu, tokenize_nlu
    from ..training.run_config import build_config

    glue_cache: dict[str, Any] = {}
    ood_root = _ood_root(cfg)

    def run(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
        task = get_task(spec.task)
        hp = spec.hparams
        pair_encoding = hp.get("pair_encoding", "cross")  # absent from the keys of cross runs (task_hparams)
        if task.name not in glue_cache:
            glue_cache[task.name] = load_glue(task.name, cfg.glue_dir or "nyu-mll/glue")
        dd = glue_cache[task.name]
        main_split, *other_splits = task.validation_splits
        for split in ("train", main_split, *other_splits):
            if split not in dd:
                raise ValueError(f"GLUE {task.name}: split {split!r} not found (have {sorted(dd)})")
        # run_nlu evaluates 'validation' after every epoch and again at the end, 'test' only at the end; the
        # sweep needs the final numbers only, so the dev set goes in the 'test' slot (evaluated once).
        splits = datasets.DatasetDict({"train": dd["train"], "test": dd[main_split]})
        # The GLUE spec knows the label space; no need to scan the labels (describe_labels) for it.
        data = NLUData(splits, list(task.text_columns), "label", task.num_labels, list(task.label_names) or None,
                       task.is_regression, f"GLUE {task.name}")
        extras: dict[str, Any] = {}
        for split in other_splits:  # MNLI mismatched
            extras[split] = dd[split]
        ood_missing: list[str] = []
        if cfg.ood:
            names, ood_missing = available_ood(task.name, ood_root)
            for name in names:
                extras[f"ood/{name}"] = load_ood(name, ood_root, task=task.name)
        if hp.get("eval_limit"):
            extras = {k: subsample(v, hp["eval_limit"], seed=0, stratify=not task.is_regression) if len(v) > hp["eval_limit"]
                      else v for k, v in extras.items()}
        callback, extra_callbacks = None, None
        if extras:
            tokenizer = load_tokenizer(spec.model, None)
            extra_data = NLUData(datasets.DatasetDict(extras), list(task.text_columns), "label", data.num_labels,
                                 data.label_names, data.regression)
            encoded, _ = tokenize_nlu(extra_data, tokenizer, hp["max_length"], pair_encoding)
            callback = ExtraEval(encoded, lambda p, r: compute_glue_metrics(task.name, p, r), task.is_regression,
                                 cfg.eval_batch_size, tokenizer, pair_encoding)
            extra_callbacks = [callback.callback]
        run_cfg = build_config({
            "kind": "nlu",
            "model": {"name_or_path": spec.model, "max_length": hp["max_length"], "pooling": hp.get("pooling", "auto"),
                      "pair_encoding": pair_encoding},
            "data": {"train": f"glue:{task.name}", "text_columns": list(task.text_columns),
                     "train_limit": hp["train_limit"], "eval_limit": hp["eval_limit"]},
            "method": {"name": spec.method, "r": hp["r"], "alpha": hp["alpha"], "target_modules": hp["target_modules"],
                       "head_warmup": hp.get("head_warmup", "logreg")},
            "balora": dict(hp.get("balora", {})),
            "train": {"output_dir": str(run_dir), "epochs": hp["epochs"], "max_steps": hp["max_steps"],
                      "batch_size": hp["batch_size"], "eval_batch_size": cfg.eval_batch_size, "lr": hp["lr"],
                      "warmup_ratio": hp["warmup_ratio"], "weight_decay": hp["weight_decay"], "seed": spec.seed,
                      "progress": cfg.progress, "logging_steps": 50},
        }, source=f"bench run {spec.slug()}")
        result = run_nlu(run_cfg, data, compute_metrics=make_compute_metrics(task.name),
                         extra_callbacks=extra_callbacks, save_adapter=cfg.keep_adapters)
        metrics = {main_split: result.metrics["test"]}
        ood = {}
        for name, values in (callback.results if callback else {}).items():
            if name.startswith("ood/"):
                ood[name[4:]] = values
            else:
                metrics[name] = values
        # Per-example dev / OOD predictions (row order of the evaluated set, so runs on the same set pair up for
        # paired tests) and, for classifiers, the count of each predicted class (a one-class run = collapsed).
        preds, refs = {main_split: result.predictions.get("test")}, {main_split: result.references.get("test")}
        preds.update(callback.predictions if callback else {})
        refs.update(callback.references if callback else {})
        predictions = {k: _as_list(v, task.is_regression) for k, v in preds.items() if v is not None}
        references = {k: _as_list(v, task.is_regression) for k, v in refs.items() if v is not None}
        train_loss = next((e["train_loss"] for e in reversed(result.log_history) if "train_loss" in e), None)
        config = run_cfg.to_dict()
        config["train"].pop("output_dir", None)
        return {"metrics": metrics, "ood": ood, "ood_unavailable": ood_missing if cfg.ood else [],
                "trainable_params": result.trainable_params, "total_params": result.total_params,
                "train_seconds": round(result.train_seconds, 3), "train_loss": train_loss,
                "train_examples": len(data.splits["train"]), "eval_examples": len(data.splits["test"]),
                "truncated_examples": result.truncated, "head": result.head, "config": config,
                "predictions": predictions, "references": references,
                "prediction_counts": {} if task.is_regression else
                {k: _class_counts(v, task.num_labels) for k, v in predictions.items()}}

    return run


def _as_list(values: Any, regression: bool) -> list:
    """Predictions as a JSON-friendly list: class ids, or regression scores rounded to 4 decimals."""
    import numpy as np

    arr = np.asarray(values).reshape(-1)
    return [round(float(v), 4) for v in arr] if regression else [int(v) for v in arr]


def _class_counts(preds: list, num_labels: int) -> list[int]:
    """How often each class id 0..num_labels-1 was predicted."""
    counts = [0] * num_labels
    for p in preds:
        counts[p] += 1
    return counts
