"""GLUE sweeps: the grid (model x seed x task x method) of :func:`balora.training.nlu.run_nlu` runs, as a sweep
over the run config (:mod:`balora.bench.sweep`).

A GLUE sweep file is a run config (``model``, ``data``, ``method``, ``balora``, ``train`` sections; defaults
:data:`RUN_DEFAULTS`), a ``bench:`` section of :class:`NLUBenchOptions` (the models, methods, tasks and seeds
the grid crosses, the GLUE and OOD folders, per-task settings) and an optional ``sweep:`` section (results file,
output folder, shard, ``tune``: per-method selection on a hold-out of the training split, see
:mod:`balora.bench.tuning`). :func:`nlu_sweep` builds the sweep (tasks become the ``data.train`` axis ``glue:<task>``,
per-task settings its ``per_value`` entries) and :func:`make_nlu_cell_fn` the per-run function. See configs/nlu/.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


from .._fields import help_field
from .sweep import Cell, SweepConfig, flatten, load_sweep
from .tuning import selection_data

logger = logging.getLogger(__name__)

__all__ = ["NLUBenchOptions", "RUN_DEFAULTS", "nlu_sweep", "glue_task_of", "make_nlu_cell_fn"]

#: The run settings of a GLUE sweep unless its file or ``--section.key value`` overrides say otherwise.
RUN_DEFAULTS: dict = {
    "kind": "nlu",
    "model": {"max_length": 128},
    "train": {"epochs": 3.0, "batch_size": 32, "eval_batch_size": 128, "lr": 5e-4, "logging_steps": 50,
              "progress": False},
}


@dataclass
class NLUBenchOptions:
    """What a GLUE sweep crosses and where its data live (its run settings are the run config's)."""

    models: list[str] = help_field("Base models (Hub names or local folders): the model.name_or_path axis; empty = "
                                   "the run config's model.name_or_path.", default_factory=list)
    methods: list[str] = help_field("Methods (balora.methods.METHODS), e.g. lora pissa ba-lora: the method.name axis.",
                                    default_factory=lambda: ["lora", "pissa", "ba-lora"])
    tasks: list[str] = help_field("GLUE tasks (cola sst2 mrpc qqp stsb mnli qnli rte wnli): the data.train axis "
                                  "(glue:<task>).", default_factory=lambda: ["rte", "mrpc", "cola", "stsb", "sst2"])
    seeds: int = help_field("Number of seeds per cell (seeds 0..N-1): the train.seed axis.", default=3)
    per_task: dict = help_field("Per-task run settings: {task: {section.field: value}}, e.g. "
                                "{rte: {train.epochs: 2, data.train_limit: 300}}.", default_factory=dict)
    glue_dir: Optional[str] = help_field("Local GLUE folder (glue_data TSVs or Hub parquet layout); empty = the Hub.",
                                         default=None)
    ood: bool = help_field("Also evaluate each trained model on the locally available OOD sets of its task "
                           "(balora.data.ood.OOD_FOR_TASK; no further training).", default=False)
    ood_root: Optional[str] = help_field("Folder of the local OOD sets (default $BALORA_OOD_ROOT, else "
                                         "<glue-dir>/../ood).", default=None)
    threads: Optional[int] = help_field("torch CPU threads (torch.set_num_threads); empty = torch's default.",
                                        default=None)

    def __post_init__(self) -> None:
        from ..data.glue import get_task
        from ..methods import parse_method

        for name in ("methods", "tasks"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give at least one")
        for m in self.methods:
            parse_method(m)
        self.tasks = [get_task(t).name for t in self.tasks]
        if int(self.seeds) < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not isinstance(self.per_task, Mapping):
            raise ValueError(f"per_task must be a mapping of task -> settings, got {self.per_task!r}")
        for task, values in self.per_task.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"per_task.{task} must be a mapping of section.field -> value, got {values!r}")
        self.per_task = {get_task(t).name: flatten(v) for t, v in self.per_task.items()}


def glue_task_of(cfg: Any) -> str:
    """The GLUE task of a cell's run config (``data.train: glue:<task>``)."""
    return str(cfg.data.train).removeprefix("glue:")


def nlu_sweep(opts: NLUBenchOptions, path: Optional[str] = None, overrides: Optional[list[str]] = None,
              sweep: Optional[Mapping[str, Any]] = None) -> SweepConfig:
    """The GLUE sweep: the run config of ``path`` (over :data:`RUN_DEFAULTS`) with ``overrides``, crossed over
    models x seeds x tasks x methods (seed-major: a sweep stopped early still has whole tables for its seeds),
    per-task settings applied; ``sweep``: values of the sweep section given on the command line."""
    grid: dict[str, list] = {}
    if opts.models:
        grid["model.name_or_path"] = list(opts.models)
    grid["train.seed"] = list(range(int(opts.seeds)))
    grid["data.train"] = [f"glue:{t}" for t in opts.tasks]
    grid["method.name"] = list(opts.methods)
    defaults = {"grid": grid, "results": "results/glue.jsonl", "out_dir": "runs/bench_nlu",
                "per_value": {"data.train": {f"glue:{t}": v for t, v in opts.per_task.items()}}}
    out = load_sweep(path, overrides, run_defaults=RUN_DEFAULTS, defaults=defaults)
    for key, value in (sweep or {}).items():
        setattr(out, key, value)
    out.__post_init__()
    if not opts.models and not (out.run.get("model") or {}).get("name_or_path"):
        raise ValueError("no model: give --models or model.name_or_path")
    return out


def _ood_root(cfg: NLUBenchOptions) -> Optional[Path]:
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
        self.confidences: dict[str, Any] = {}  # classification: top-class softmax probability (for the ECE)
        # Subclassing at call time keeps transformers out of this module's import.
        self.callback = type("ExtraEvalCallback", (TrainerCallback,), {"on_train_end": self._on_train_end})()

    def _on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import numpy as np
        import torch
        from torch.utils.data import DataLoader

        from ..training.nlu import top_class_confidence

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for name, ds in self.sets.items():
                preds, refs, confs = [], [], []
                loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator)
                with torch.no_grad():
                    for batch in loader:
                        refs.append(batch.pop("labels").numpy())
                        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
                        preds.append(logits[:, 0] if self.regression else logits.argmax(-1))
                        if not self.regression:
                            confs.append(top_class_confidence(logits))
                self.predictions[name], self.references[name] = np.concatenate(preds), np.concatenate(refs)
                if confs:
                    self.confidences[name] = np.concatenate(confs)
                self.results[name] = self.metric_fn(self.predictions[name], self.references[name])
        finally:
            model.train(was_training)


def make_nlu_cell_fn(opts: NLUBenchOptions, keep_adapters: bool = False) -> Any:
    """The per-run function of a GLUE sweep: train with run_nlu, evaluate on the dev set(s) and OOD sets."""
    import dataclasses

    import datasets
    import numpy as np

    from ..data.assets import subsample
    from ..data.glue import get_task, load_glue
    from ..data.ood import load_ood
    from ..evaluation.nlu_metrics import compute_glue_metrics, make_compute_metrics
    from ..models import load_tokenizer
    from ..training.nlu import NLUData, run_nlu, tokenize_nlu

    glue_cache: dict[str, Any] = {}
    ood_root = _ood_root(opts)

    def run(cell: Cell, run_dir: Path) -> dict[str, Any]:
        cfg = cell.config
        task = get_task(glue_task_of(cfg))
        pair_encoding, eval_limit = cfg.model.pair_encoding, cfg.data.eval_limit
        if task.name not in glue_cache:
            glue_cache[task.name] = load_glue(task.name, opts.glue_dir or "nyu-mll/glue")
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
        data = selection_data(cell, data)  # a tuning run: trained and scored on a hold-out of the training split
        selecting = cell.phase == "select"
        extras: dict[str, Any] = {}
        for split in [] if selecting else other_splits:  # MNLI mismatched
            extras[split] = dd[split]
        ood_missing: list[str] = []
        if opts.ood and not selecting:
            names, ood_missing = available_ood(task.name, ood_root)
            for name in names:
                extras[f"ood/{name}"] = load_ood(name, ood_root, task=task.name)
        if eval_limit:
            extras = {k: subsample(v, eval_limit, seed=0, stratify=not task.is_regression) if len(v) > eval_limit
                      else v for k, v in extras.items()}
        callback, extra_callbacks = None, None
        if extras:
            tokenizer = load_tokenizer(cfg.model.name_or_path, None)
            extra_data = NLUData(datasets.DatasetDict(extras), list(task.text_columns), "label", data.num_labels,
                                 data.label_names, data.regression)
            encoded, _ = tokenize_nlu(extra_data, tokenizer, cfg.model.max_length, pair_encoding)
            callback = ExtraEval(encoded, lambda p, r: compute_glue_metrics(task.name, p, r), task.is_regression,
                                 cfg.train.eval_batch_size, tokenizer, pair_encoding)
            extra_callbacks = [callback.callback]
        run_cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, text_columns=list(task.text_columns)),
            train=dataclasses.replace(cfg.train, output_dir=str(run_dir)))
        result = run_nlu(run_cfg, data, compute_metrics=make_compute_metrics(task.name),
                         extra_callbacks=extra_callbacks, save_adapter=keep_adapters)
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
        confs = {main_split: result.confidences.get("test"), **(callback.confidences if callback else {})}
        confidences = {k: [round(float(c), 6) for c in np.asarray(v).reshape(-1)] for k, v in confs.items()
                       if v is not None}
        train_loss = next((e["train_loss"] for e in reversed(result.log_history) if "train_loss" in e), None)
        config = run_cfg.to_dict()
        config["train"].pop("output_dir", None)
        return {"metrics": metrics, "ood": ood, "ood_unavailable": ood_missing if opts.ood else [],
                "trainable_params": result.trainable_params, "total_params": result.total_params,
                "train_seconds": round(result.train_seconds, 3), "train_loss": train_loss,
                "train_examples": len(data.splits["train"]), "eval_examples": len(data.splits["test"]),
                "truncated_examples": result.truncated, "head": result.head, "config": config,
                "predictions": predictions, "references": references, "confidences": confidences,
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
