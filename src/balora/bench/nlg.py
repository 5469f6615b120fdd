"""NLG sweeps: fine-tune a causal LM with several methods and seeds, score each on generation benchmarks.

A sweep over the run config (:mod:`balora.bench.sweep`; defaults :data:`RUN_DEFAULTS`, the file's run sections,
``--section.key value`` overrides, e.g. ``--model.name_or_path DIR --data.train FILE``) crossed over
:class:`NLGBenchOptions`' methods x seeds, plus the untrained base model with ``base``. The benchmarks are the run
config's ``eval`` section (or ``--evals``). :func:`nlg_sweep` builds the sweep, :func:`nlg_cells` its cells,
:func:`make_nlg_cell_fn` the per-run function, and :func:`balora.reports.nlg.nlg_table` renders the records in the
layout of the paper's Table 1.

A record's payload: ``scores`` (task -> headline metric), ``n`` (task -> problems scored), ``metric``
(task -> metric name), ``score``/``n_primary`` (the first task), ``train_loss``, ``train_seconds``,
``eval_seconds``, ``trainable_params``, ``truncated``, the instruction-data counts, ``answer_noise`` (its record),
and when measured ``diversity`` (task -> distinct-n / self-BLEU of sampled completions and the sampling settings)
and ``retention`` (KL to the pretrained model on general prompts). With a ``tune`` section, selection runs are
scored on ``sweep.tune.evals`` (validation benchmarks), never on the eval section (:func:`selection_evals`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


from .._fields import help_field
from .runner import RunSpec
from .sweep import Cell, SweepConfig, expand, load_sweep

__all__ = ["NLGBenchOptions", "RUN_DEFAULTS", "nlg_sweep", "nlg_cells", "make_nlg_cell_fn", "train_label"]

#: The run settings of an NLG sweep unless its file or ``--section.key value`` overrides say otherwise.
RUN_DEFAULTS: dict = {
    "kind": "nlg",
    "model": {"max_length": 256},
    "train": {"epochs": 1.0, "batch_size": 4, "lr": 2e-4, "scheduler": "cosine", "warmup_ratio": 0.03,
              "logging_steps": 10, "progress": False},
}


@dataclass
class NLGBenchOptions:
    """What an NLG sweep crosses, what it scores and where the generations go (run settings: the run config)."""

    methods: list[str] = help_field("Methods (balora.methods.METHODS), e.g. lora pissa ba-lora: the method.name axis.",
                                    default_factory=lambda: ["lora", "pissa", "ba-lora"])
    seeds: int = help_field("Number of seeds per method (seeds 0..N-1): the train.seed axis.", default=1)
    base: bool = help_field("Also score the untrained base model (method 'base').", default=False)
    evals: list = help_field("Generation benchmarks, each a YAML mapping of the eval section's fields, e.g. "
                             "'{task: gsm8k, data: test.jsonl, limit: 120}'; replaces the run config's eval section.",
                             default_factory=list)
    train_name: Optional[str] = help_field("Label of the training set in records and tables (default: from "
                                           "data.train).", default=None)
    generations_dir: Optional[str] = help_field(
        "Folder that keeps every run's scored generations (<folder>/<run>__<config digest>/: <task>_generations.jsonl, "
        "<task>_summary.json and the per-example diversity / retention files) for auditing, also when the run "
        "folder is deleted; empty = <results file without its .jsonl>_generations next to the results file; 'none' "
        "= do not keep them.", default=None)
    threads: Optional[int] = help_field("torch CPU threads (torch.set_num_threads); empty = torch's default.",
                                        default=None)

    def __post_init__(self) -> None:
        from ..methods import parse_method

        if not self.methods and not self.base:
            raise ValueError("methods is empty and base is off: nothing to run")
        for m in self.methods:
            parse_method(m)
        if int(self.seeds) < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not all(isinstance(e, Mapping) for e in self.evals):
            raise ValueError(f"evals: each entry must be a mapping such as {{task: gsm8k, data: FILE}}, got {self.evals!r}")

    def generations_path(self, results: str) -> Optional[Path]:
        """Where the scored generations are kept (see ``generations_dir``); None when they are not kept."""
        if self.generations_dir and self.generations_dir.lower() == "none":
            return None
        if self.generations_dir:
            return Path(self.generations_dir)
        return Path(results).with_name(f"{Path(results).stem}_generations")


def train_label(opts: NLGBenchOptions, train: str) -> str:
    """``train_name``, else ``<folder>-<stem>`` of a local file, else the Hub name."""
    if opts.train_name:
        return opts.train_name
    p = Path(train)
    if p.exists():
        return f"{p.parent.name}-{p.name.split('.')[0]}" if p.parent.name else p.name.split(".")[0]
    return train


def nlg_sweep(opts: NLGBenchOptions, path: Optional[str] = None, overrides: Optional[list[str]] = None,
              sweep: Optional[Mapping[str, Any]] = None) -> SweepConfig:
    """The NLG sweep: the run config of ``path`` (over :data:`RUN_DEFAULTS`) with ``overrides`` and ``evals``,
    crossed over seeds x methods (seed-major, so seed 0 finishes first)."""
    out = load_sweep(path, overrides, run_defaults=RUN_DEFAULTS, defaults={
        "grid": {"train.seed": list(range(int(opts.seeds))), "method.name": list(opts.methods)},
        "results": "results/nlg.jsonl", "out_dir": "runs/bench_nlg"})
    if opts.evals:
        out.run["eval"] = [dict(e) for e in opts.evals]
    for key, value in (sweep or {}).items():
        setattr(out, key, value)
    out.__post_init__()
    for name, what in (("model", "name_or_path"), ("data", "train")):
        if not (out.run.get(name) or {}).get(what):
            raise ValueError(f"{name}.{what} is empty: give --{name}.{what} or set it in the config file")
    if not out.run.get("eval"):
        raise ValueError("no benchmark to score: give --evals '{task: gsm8k, data: FILE}' or an eval section")
    return out


def nlg_cells(opts: NLGBenchOptions, sweep: SweepConfig) -> list[Cell]:
    """The sweep's cells, the untrained base model (with ``base``) first; the base cell's key holds the
    benchmarks only (it does not depend on training settings)."""
    from ..training.run_config import build_config

    label = train_label(opts, sweep.run["data"]["train"])
    cells = expand(sweep, task_fn=lambda cfg: label) if opts.methods else []
    if opts.base:
        if sweep.tune:
            raise ValueError("bench.base with a sweep.tune section: the untrained base model has nothing to tune; "
                             "score it with a separate sweep without tune (or set base: false)")
        cfg = build_config(copy.deepcopy(sweep.run), "bench nlg base")
        evals = json.dumps(cfg.identity()["eval"], sort_keys=True, default=str)  # stable across config versions
        digest = hashlib.sha256(f"{cfg.model.name_or_path}|{cfg.model.dtype}|{evals}".encode()).hexdigest()[:16]
        spec = RunSpec(cfg.model.name_or_path, "base", label, 0, {"variant": "base", "config": digest})
        cells.insert(0, Cell(cfg, "base", {}, spec))
    return cells


def make_nlg_cell_fn(opts: NLGBenchOptions, results: str, keep_adapters: bool = False) -> Any:
    """The per-run function: score the base model, or train with run_nlg and score the result."""
    import dataclasses

    from ..training.nlg import evaluate_generation, run_nlg

    generations = opts.generations_path(results)

    def run(cell: Cell, run_dir: Path) -> dict[str, Any]:
        payload = _run(cell, run_dir)
        if generations is not None:
            # slug (model, method, task, seed) + the resolved config's digest: variants, noise levels and tuning
            # runs of one method and seed keep their files apart
            folder = f"{cell.spec.slug()}__{cell.spec.hparams['config']}"
            payload["generations"] = keep_generations(run_dir / "eval", generations / folder)
        return payload

    def _run(cell: Cell, run_dir: Path) -> dict[str, Any]:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = cell.config
        progress = cfg.train.progress
        if cell.variant == "base":
            from ..models import load_base_model, load_tokenizer

            tokenizer = load_tokenizer(cfg.model.name_or_path)
            model = load_base_model(cfg.model.name_or_path, "nlg", dtype=cfg.model.dtype)
            summaries = {ev.task: evaluate_generation(model, tokenizer, ev, run_dir / "eval", progress=progress,
                                                      base=lambda: model) for ev in cfg.eval}
            return _payload(summaries, {"eval_seconds": round(sum(s["seconds"] for s in summaries.values()), 2)})
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(run_dir)))
        result = run_nlg(run_cfg, selection_evals(cell), save_adapter=keep_adapters)
        losses = [{"step": e["step"], "loss": e["loss"], **{k: v for k, v in e.items() if k.startswith("loss_")}}
                  for e in result.log_history if "loss" in e]
        return _payload(result.evals, {
            "train_loss": result.metrics.get("train", {}).get("loss"), "loss_curve": losses,
            "train_seconds": round(result.train_seconds, 2), "eval_seconds": round(result.eval_seconds, 2),
            "trainable_params": result.trainable_params, "truncated": result.truncated,
            "instruct": {k: v for k, v in result.instruct.items() if k.startswith("n_")},
            "answer_noise": result.answer_noise})

    return run


def selection_evals(cell: Cell) -> list:
    """The benchmarks a cell scores, its config's ``eval`` section; for a tuning selection run these are the tune
    section's validation benchmarks (``sweep.tune.evals``: generation tasks have validation data of their own, the
    training split is not carved, the test benchmarks never select anything)."""
    if cell.phase == "select" and not (cell.holdout or {}).get("evals"):
        raise ValueError("tuning an NLG sweep needs sweep.tune.evals: the validation benchmarks that score each "
                         "selection run (e.g. [{task: arithmetic, data: 'validation:50:0'}])")
    return list(cell.config.eval)


def keep_generations(eval_dir: Path, dest: Path) -> str:
    """Copy a run's ``*_generations.jsonl`` and ``*_summary.json`` from ``eval_dir`` to ``dest`` (each copy atomic);
    returns ``dest`` as a string for the run record."""
    from ..atomic import atomic_write

    patterns = ("*_generations.jsonl", "*_summary.json", "*_samples.jsonl", "*_examples.jsonl")
    files = sorted(p for pattern in patterns for p in eval_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{eval_dir}: no generations to keep (expected <task>_generations.jsonl)")
    for src in files:
        atomic_write(dest / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return str(dest)


def _payload(summaries: Mapping[str, dict], extra: dict) -> dict[str, Any]:
    scores = {t: s[s["metric"]] for t, s in summaries.items()}
    first = next(iter(summaries), None)
    measures = {"diversity": {t: s["diversity"] for t, s in summaries.items() if "diversity" in s},
                "retention": {t: {k: s[k] for k in ("kl", "tuned_nll", "base_nll", "tokens", "n", "data",
                                                    "max_new_tokens")} for t, s in summaries.items() if t == "retention"}}
    return {"scores": scores, "n": {t: s["n"] for t, s in summaries.items()},
            "metric": {t: s["metric"] for t, s in summaries.items()},
            "score": scores.get(first), "n_primary": summaries[first]["n"] if first else None,
            **{k: v for k, v in measures.items() if v}, **extra}

