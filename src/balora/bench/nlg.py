"""NLG sweeps: fine-tune a causal LM with several methods and seeds, score each on generation benchmarks.

:class:`NLGBenchConfig` holds the sweep (``balora bench nlg`` flags and/or a YAML of the same keys);
:func:`nlg_specs` expands it into :class:`~balora.bench.runner.RunSpec` values (plus the untrained base model
with ``base``), :func:`make_nlg_run_fn` gives the per-run function that
:func:`balora.bench.runner.run_grid` calls (JSON Lines append, resume, time and peak memory), and
:func:`balora.reports.nlg.nlg_table` renders the records in the layout of the paper's Table 1.

A record's payload: ``scores`` (task -> headline metric), ``n`` (task -> problems scored), ``metric``
(task -> metric name), ``score``/``n_primary`` (the first task), ``train_loss``, ``train_seconds``,
``eval_seconds``, ``trainable_params``, ``truncated`` and the instruction-data counts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


from .._fields import help_field
from ..config_io import load_flat_config
from .runner import RunFn, RunSpec

__all__ = ["NLGBenchConfig", "load_nlg_bench_config", "nlg_specs", "make_nlg_run_fn"]

# Settings of a trained run that change its result (part of the run's key).
TRAIN_HPARAMS = ("train", "train_format", "train_limit", "epochs", "max_steps", "batch_size", "grad_accum", "lr",
                 "scheduler", "warmup_ratio", "weight_decay", "r", "alpha", "target_modules", "pissa_niter", "max_length",
                 "dtype",
                 "balora")
EVAL_HPARAMS = ("eval_tasks", "eval_data", "eval_limit", "max_new_tokens")


@dataclass
class NLGBenchConfig:
    """An NLG sweep: one base model, methods x seeds, trained on one instruction set, scored on benchmarks."""

    model: str = help_field("Base causal LM (Hub name or local folder).", default="")
    methods: list[str] = help_field("Methods (balora.methods.METHODS), e.g. lora pissa ba-lora.",
                               default_factory=lambda: ["lora", "pissa", "ba-lora"])
    train: str = help_field("Instruction data: a local file or a Hub dataset 'name[:split]'.", default="")
    train_name: Optional[str] = help_field("Label of the training set in records and tables (default: from --train).",
                                      default=None)
    train_format: Optional[str] = help_field("Instruction format (balora.data.templates.FORMATS); detected when empty.",
                                        default=None)
    train_limit: Optional[int] = help_field("Use a seeded random subset of this many training examples.", default=None)
    eval_tasks: list[str] = help_field("Benchmarks after training: gsm8k math math500 humaneval mbpp mt-bench.",
                                  default_factory=lambda: ["gsm8k"])
    eval_data: list[str] = help_field("Data of each benchmark, in the order of --eval-tasks (file/folder or Hub name).",
                                 default_factory=list)
    eval_limit: Optional[int] = help_field("Score only the first N problems of each benchmark.", default=None)
    seeds: int = help_field("Number of seeds per method (seeds 0..N-1).", default=1)
    base: bool = help_field("Also score the untrained base model (method 'base').", default=False)
    epochs: float = help_field("Training epochs.", default=1.0)
    max_steps: int = help_field("Stop after this many optimizer steps (overrides epochs when > 0).", default=-1)
    batch_size: int = help_field("Per-device training batch size.", default=4)
    grad_accum: int = help_field("Gradient accumulation steps (effective batch = batch_size x grad_accum).", default=1)
    lr: float = help_field("Peak learning rate (AdamW).", default=2e-4)
    scheduler: str = help_field("Learning-rate schedule (transformers name).", default="cosine")
    warmup_ratio: float = help_field("Linear warm-up fraction of the steps.", default=0.03)
    weight_decay: float = help_field("AdamW weight decay.", default=0.0)
    r: int = help_field("Adapter rank.", default=8)
    alpha: Optional[float] = help_field("LoRA alpha (default: r).", default=None)
    target_modules: Any = help_field("Adapted modules ('all-linear' or a list of names).", default="all-linear")
    pissa_niter: Optional[int] = help_field("PiSSA-like inits: randomised SVD with this many subspace iterations "
                                       "(peft pissa_niter_K); exact SVD when empty.", default=None)
    max_length: int = help_field("Maximum tokens per training example (longer ones are truncated and counted).",
                            default=256)
    dtype: str = help_field("Model dtype: float32, bfloat16 or float16.", default="float32")
    eval_batch_size: int = help_field("Prompts per generate() call.", default=16)
    max_new_tokens: int = help_field("Maximum generated tokens per problem (greedy).", default=256)
    balora: dict = help_field("BALoRAConfig overrides for regularised methods (ba-lora, *+reg).", default_factory=dict)
    results: str = help_field("Results file (JSON Lines, one record per finished run; appended, resumable).",
                         default="results/nlg.jsonl")
    out_dir: str = help_field("Parent folder of the per-run output folders.", default="runs/bench_nlg")
    keep_adapters: bool = help_field("Keep each finished run's folder (adapters, generations).", default=False)
    generations_dir: Optional[str] = help_field(
        "Folder that keeps every run's scored generations (<folder>/<run>/<task>_generations.jsonl and "
        "<task>_summary.json) for auditing, also when the run folder is deleted; empty = <results file without "
        "its .jsonl>_generations next to the results file; 'none' = do not keep them.", default=None)
    threads: Optional[int] = help_field("torch CPU threads (torch.set_num_threads); empty = torch's default.", default=None)
    progress: bool = help_field("Show progress bars of training and generation.", default=False)

    def __post_init__(self) -> None:
        from ..evaluation.tasks import TASKS
        from ..methods import parse_method

        for name in ("model", "train"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give {'a base model' if name == 'model' else 'training data'}")
        if not self.methods and not self.base:
            raise ValueError("methods is empty and base is off: nothing to run")
        for m in self.methods:
            parse_method(m)
        bad = [t for t in self.eval_tasks if t not in TASKS]
        if bad:
            raise ValueError(f"eval_tasks: unknown {bad}; choose from {sorted(TASKS)}")
        if len(self.eval_data) != len(self.eval_tasks):
            raise ValueError(f"eval_data has {len(self.eval_data)} entries for {len(self.eval_tasks)} eval_tasks "
                             f"{self.eval_tasks}: give one data path per task, in the same order")
        for name in ("seeds", "batch_size", "grad_accum", "r", "max_length", "eval_batch_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or empty, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.alpha is None:
            self.alpha = float(self.r)
        self.model = os.path.expanduser(self.model)

    @property
    def generations_path(self) -> Optional[Path]:
        """Where the scored generations are kept (see ``generations_dir``); None when they are not kept."""
        if self.generations_dir and self.generations_dir.lower() == "none":
            return None
        if self.generations_dir:
            return Path(self.generations_dir)
        results = Path(self.results)
        return results.with_name(f"{results.stem}_generations")

    @property
    def train_label(self) -> str:
        """``train_name``, else ``<folder>-<stem>`` of a local file, else the Hub name."""
        if self.train_name:
            return self.train_name
        p = Path(self.train)
        if p.exists():
            return f"{p.parent.name}-{p.name.split('.')[0]}" if p.parent.name else p.name.split(".")[0]
        return self.train


def load_nlg_bench_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> NLGBenchConfig:
    """Read a sweep YAML (keys = :class:`NLGBenchConfig` fields) and apply ``overrides`` (None values ignored)."""
    return load_flat_config(NLGBenchConfig, path, overrides)


def nlg_specs(cfg: NLGBenchConfig) -> list[RunSpec]:
    """The grid: the base model (with ``base``) first, then seeds x methods (seed-major, so seed 0 finishes first)."""
    evals = {name: getattr(cfg, name) for name in EVAL_HPARAMS}
    specs = []
    if cfg.base:
        specs.append(RunSpec(cfg.model, "base", cfg.train_label, 0, evals))
    for seed in range(cfg.seeds):
        for method in cfg.methods:
            hp = {name: getattr(cfg, name) for name in TRAIN_HPARAMS}
            if not _is_regularised(method):
                hp.pop("balora")
            specs.append(RunSpec(cfg.model, method, cfg.train_label, seed, {**hp, **evals}))
    return specs


def _is_regularised(method: str) -> bool:
    from ..methods import parse_method

    return parse_method(method)[1]


def make_nlg_run_fn(cfg: NLGBenchConfig) -> RunFn:
    """The per-run function: score the base model, or train with run_nlg and score the result."""
    from ..training.nlg import EvalOptions, evaluate_generation, run_nlg
    from ..training.run_config import build_config

    def evals() -> list[EvalOptions]:
        return [EvalOptions(task=t, data=d, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
                            max_new_tokens=cfg.max_new_tokens) for t, d in zip(cfg.eval_tasks, cfg.eval_data)]

    def run(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
        payload = _run(spec, run_dir)
        if cfg.generations_path is not None:
            payload["generations"] = keep_generations(run_dir / "eval", cfg.generations_path / spec.slug())
        return payload

    def _run(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
        run_dir.mkdir(parents=True, exist_ok=True)
        if spec.method == "base":
            from ..models import load_base_model, load_tokenizer

            tokenizer = load_tokenizer(spec.model)
            model = load_base_model(spec.model, "nlg", dtype=cfg.dtype)
            summaries = {ev.task: evaluate_generation(model, tokenizer, ev, run_dir / "eval", progress=cfg.progress)
                         for ev in evals()}
            return _payload(summaries, {"eval_seconds": round(sum(s["seconds"] for s in summaries.values()), 2)})
        hp = spec.hparams
        run_cfg = build_config({
            "kind": "nlg",
            "model": {"name_or_path": spec.model, "max_length": hp["max_length"], "dtype": hp["dtype"]},
            "data": {"train": hp["train"], "format": hp["train_format"], "train_limit": hp["train_limit"]},
            "method": {"name": spec.method, "r": hp["r"], "alpha": hp["alpha"], "target_modules": hp["target_modules"],
                       "pissa_niter": hp["pissa_niter"]},
            "balora": dict(hp.get("balora", {})),
            "train": {"output_dir": str(run_dir), "epochs": hp["epochs"], "max_steps": hp["max_steps"],
                      "batch_size": hp["batch_size"], "grad_accum": hp["grad_accum"], "lr": hp["lr"],
                      "scheduler": hp["scheduler"], "warmup_ratio": hp["warmup_ratio"],
                      "weight_decay": hp["weight_decay"], "eval_batch_size": cfg.eval_batch_size, "seed": spec.seed,
                      "progress": cfg.progress, "logging_steps": 10},
        }, source=f"bench run {spec.slug()}")
        result = run_nlg(run_cfg, evals(), save_adapter=cfg.keep_adapters)
        losses = [{"step": e["step"], "loss": e["loss"], **{k: v for k, v in e.items() if k.startswith("loss_")}}
                  for e in result.log_history if "loss" in e]
        return _payload(result.evals, {
            "train_loss": result.metrics.get("train", {}).get("loss"), "loss_curve": losses,
            "train_seconds": round(result.train_seconds, 2), "eval_seconds": round(result.eval_seconds, 2),
            "trainable_params": result.trainable_params, "truncated": result.truncated,
            "instruct": {k: v for k, v in result.instruct.items() if k.startswith("n_")}})

    return run


def keep_generations(eval_dir: Path, dest: Path) -> str:
    """Copy a run's ``*_generations.jsonl`` and ``*_summary.json`` from ``eval_dir`` to ``dest`` (each copy atomic);
    returns ``dest`` as a string for the run record."""
    from ..atomic import atomic_write

    files = sorted(p for pattern in ("*_generations.jsonl", "*_summary.json") for p in eval_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{eval_dir}: no generations to keep (expected <task>_generations.jsonl)")
    for src in files:
        atomic_write(dest / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return str(dest)


def _payload(summaries: Mapping[str, dict], extra: dict) -> dict[str, Any]:
    scores = {t: s[s["metric"]] for t, s in summaries.items()}
    first = next(iter(summaries), None)
    return {"scores": scores, "n": {t: s["n"] for t, s in summaries.items()},
            "metric": {t: s["metric"] for t, s in summaries.items()},
            "score": scores.get(first), "n_primary": summaries[first]["n"] if first else None, **extra}


# ---------------------------------------------------------------------------------------------- table
