"""One NLG run: instruction data with response-only labels, prepare the method, train, evaluate, save.

Used by ``balora train`` (kind ``nlg``) and ``balora bench nlg``. The stages around the
data, model and evaluation are :mod:`balora.training.pipeline`'s, shared with :func:`balora.training.nlu.run_nlu`:

1. tokenizer + causal LM (fp32 unless ``model.dtype`` says otherwise);
2. :func:`balora.data.instruct.build_instruct_dataset` (loss on responses only; truncated examples are
   counted and reported in :class:`NLGResult` and ``balora_run.json``);
3. :func:`balora.training.pipeline.prepare_method` with the NLG :class:`~balora.config.BALoRAConfig`
   ``cfg.regularizers``; PiSSA-like inits save their step-0 adapter first (needed to export for the original base);
4. :class:`~balora.trainer.BALoRATrainer` with the prepared objective and
   :class:`~balora.data.instruct.DataCollatorForResponseOnly`;
5. optional held-out loss on ``data.validation`` (plain token-level cross-entropy, no regularisers, so the
   methods are comparable) and generation benchmarks (:func:`balora.evaluation.tasks.evaluate_model`);
6. the adapter and ``balora_run.json``.

Generation benchmarks are described by :class:`EvalOptions`. They come from an explicit ``evals`` argument,
from a top-level ``eval`` section of the YAML (:func:`load_nlg_config`), or from the shorthand
``data.test: "gsm8k:/path/test.jsonl"`` (several joined with ``,``), which works with ``balora train`` today.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from . import pipeline
from .common import build_trainer, finish_run
from .run_config import EvalOptions, RunConfig, parse_eval_section  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


@dataclass
class NLGResult:
    """What :func:`run_nlg` did: metrics per split/benchmark, the training log, sizes, times, data stats."""

    run_dir: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split or task -> metric -> value
    log_history: list[dict] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    instruct: dict = field(default_factory=dict)  # InstructStats of the training data, as a dict
    validation_instruct: Optional[dict] = None
    truncated: int = 0
    evals: dict[str, dict] = field(default_factory=dict)  # task -> evaluate_model summary
    heldout_examples: dict[str, dict] = field(default_factory=dict)  # split -> {"nll": [...], "tokens": [...]}
    answer_noise: dict = field(default_factory=dict)  # data.answer_noise's record (balora.data.noise.corrupt_answers)


def evals_from_test(cfg: RunConfig) -> list[EvalOptions]:
    """The ``data.test`` shorthand ``"task:data[,task:data]"`` (limit = data.eval_limit, batch = train.eval_batch_size).

    Returns [] when ``data.test`` is empty or is not in that form (then it is read as instruction data
    and its loss is reported).
    """
    from ..evaluation.tasks import TASKS

    if not cfg.data.test:
        return []
    items = [s.strip() for s in cfg.data.test.split(",") if s.strip()]
    parsed = [item.split(":", 1) for item in items]
    if not all(len(p) == 2 and p[0] in TASKS for p in parsed):
        if any(len(p) == 2 and p[0] in TASKS for p in parsed):
            raise ValueError(f"data.test {cfg.data.test!r}: mixes benchmark entries 'task:data' with other data; "
                             f"use only 'task:data' entries (tasks: {sorted(TASKS)})")
        return []
    return [EvalOptions(task=t, data=d, limit=cfg.data.eval_limit, batch_size=cfg.train.eval_batch_size)
            for t, d in parsed]


def load_nlg_config(path: Optional[str], overrides: Optional[list[str]] = None) -> tuple[RunConfig, list[EvalOptions]]:
    """:func:`balora.training.run_config.load_config` and the run's ``eval`` benchmarks (kept for callers)."""
    from .run_config import load_config

    cfg = load_config(path, overrides)
    return cfg, list(cfg.eval)


def run_nlg(cfg: RunConfig, evals: Optional[Sequence[EvalOptions]] = None, *, extra_callbacks: Optional[list] = None,
            save_adapter: bool = True) -> NLGResult:
    """Train one NLG configuration and evaluate it; writes ``balora_run.json`` into ``cfg.train.output_dir``.

    Args:
        cfg: the run (``kind`` should be ``nlg``; ``data.train`` in any :mod:`balora.data.templates` format).
        evals: generation benchmarks after training; ``None`` = the ``data.test`` shorthand
            (:func:`evals_from_test`), ``[]`` = none.
        extra_callbacks: more ``transformers.TrainerCallback`` objects.
        save_adapter: save ``RUN_DIR/adapter`` (export it with :func:`balora.export.export_adapter`).
    """
    from transformers import set_seed

    from ..data.instruct import build_instruct_dataset
    from ..models import load_tokenizer

    if cfg.kind != "nlg":
        raise ValueError(f"run_nlg needs kind 'nlg', got {cfg.kind!r}")
    if not cfg.data.train:
        raise ValueError("data.train is empty: give a local instruction file or a Hub dataset name[:split]")
    shorthand = evals_from_test(cfg)
    evals = list((cfg.eval or shorthand) if evals is None else evals)
    test_as_data = cfg.data.test if cfg.data.test and not shorthand else None  # instruction data: report its loss
    set_seed(cfg.train.seed)

    model_path = os.path.expanduser(cfg.model.name_or_path)  # YAML configs may say ~/...
    tokenizer = load_tokenizer(model_path, cfg.model.gguf_file)
    build = dict(max_length=cfg.model.max_length, format=cfg.data.format, seed=cfg.train.seed, on_empty="drop")
    train_source, noise = answer_noise(cfg)
    train_ds, stats = build_instruct_dataset(train_source, tokenizer, limit=None if noise else cfg.data.train_limit,
                                             **build)
    if noise:
        stats.source = cfg.data.train
    held_out = {}
    for split, source in (("validation", cfg.data.validation), ("test", test_as_data)):
        if source:
            held_out[split] = build_instruct_dataset(source, tokenizer, limit=cfg.data.eval_limit, **build)
    # The data is read and checked (build_instruct_dataset names file/row of a bad record) and the settings can
    # run here: only now is the run folder created, marked running, and marked failed if anything later raises.
    with pipeline.open_run(cfg, False) as run_dir:
        return _run_nlg(cfg, evals, run_dir, model_path, tokenizer, train_ds, stats, held_out,
                        extra_callbacks=extra_callbacks, save_adapter=save_adapter, noise=noise)


def answer_noise(cfg: RunConfig) -> tuple[Any, dict]:
    """The training data with ``data.answer_noise`` of its final answers made wrong (seeded by
    ``data.injection_seed``, else ``train.seed``; :func:`balora.data.noise.corrupt_answers`) and the record of it;
    ``(data.train, {})`` without noise. The subsample of ``data.train_limit`` is drawn first, as without noise."""
    if not cfg.data.answer_noise:
        return cfg.data.train, {}
    from ..data.instruct import load_instruct_source
    from ..data.noise import corrupt_answers

    ds, _, rows = load_instruct_source(cfg.data.train, limit=cfg.data.train_limit, seed=cfg.train.seed)
    seed = cfg.train.seed if cfg.data.injection_seed is None else cfg.data.injection_seed
    return corrupt_answers(ds.select(rows), cfg.data.answer_noise, seed)


def _run_nlg(cfg: RunConfig, evals: list[EvalOptions], run_dir: Path, model_path: str, tokenizer: Any, train_ds: Any,
             stats: Any, held_out: dict, *, extra_callbacks: Optional[list], save_adapter: bool,
             noise: dict) -> NLGResult:
    from ..baselines.params import count_parameters
    from ..data.instruct import DataCollatorForResponseOnly
    from ..models import load_base_model

    model = load_base_model(model_path, "nlg", dtype=cfg.model.dtype, gguf_file=cfg.model.gguf_file)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # generation pads with it
    collator = DataCollatorForResponseOnly(tokenizer)
    prepared = pipeline.prepare_method(cfg, model, len(train_ds), run_dir, train_data=(train_ds, collator))
    model = prepared.model
    trainer = build_trainer(cfg, model, train_ds, None, collator, tokenizer, objective=prepared.objective(),
                            callbacks=extra_callbacks)
    log_history, seconds = pipeline.train(cfg, trainer, run_dir)
    result = NLGResult(run_dir=str(run_dir), log_history=log_history, train_seconds=seconds,
                       instruct=dataclasses.asdict(stats), truncated=stats.n_truncated, answer_noise=noise)
    result.trainable_params, result.total_params = count_parameters(model)
    train_logs = [h for h in result.log_history if "train_loss" in h]
    if train_logs:
        result.metrics["train"] = {"loss": float(train_logs[-1]["train_loss"])}
    if save_adapter:
        pipeline.save_adapter(model, run_dir)

    def record(status: str) -> None:
        finish_run(cfg, run_dir, prepared, result.metrics, status=status, extra={
            "data": stats.source, "instruct": result.instruct, "truncated": result.truncated,
            "held_out_instruct": {k: dataclasses.asdict(s) for k, (_, s) in held_out.items()},
            "evals": result.evals, "answer_noise": noise, "train_seconds": round(result.train_seconds, 2),
            "eval_seconds": round(result.eval_seconds, 2), "trainable_params": result.trainable_params})

    record("running")  # a crash during evaluation keeps the training record (then marked failed)
    start = time.perf_counter()
    for split, (ds, _) in held_out.items():
        result.heldout_examples[split] = {}
        result.metrics[split] = heldout_loss(model, ds, collator, cfg.train.eval_batch_size,
                                             per_example=result.heldout_examples[split])
    if held_out:
        result.validation_instruct = dataclasses.asdict(held_out[next(iter(held_out))][1])
    device = next(model.parameters()).device

    def original() -> Any:  # the pretrained model, loaded afresh (retention compares with it)
        return load_base_model(model_path, "nlg", dtype=cfg.model.dtype, gguf_file=cfg.model.gguf_file).to(device)

    for ev in evals:
        summary = evaluate_generation(model, tokenizer, ev, run_dir / "eval", progress=cfg.train.progress, base=original)
        result.evals[ev.task] = summary
        result.metrics[ev.task] = {k: float(v) for k, v in summary.items() if k != "max_new_tokens"
                                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        result.metrics[ev.task].update({f"diversity_{k}": float(v) for k, v in summary.get("diversity", {}).items()
                                        if k in ("distinct_1", "distinct_2", "self_bleu")})
    result.eval_seconds = time.perf_counter() - start
    record("completed")
    return result


def evaluate_generation(model: Any, tokenizer: Any, ev: EvalOptions, out_dir: Union[str, Path],
                        progress: bool = True, base: Optional[Callable[[], Any]] = None) -> dict:
    """Run one benchmark with :func:`balora.evaluation.tasks.evaluate_model` (with ``ev.samples``, also the output
    diversity of sampled completions), or ``retention`` against the pretrained model ``base()`` returns (a fresh
    load of the original: for PiSSA-like inits the disabled adapter is the residual, not the original);
    returns its summary."""
    from ..evaluation.retention import RETENTION_TASK, evaluate_retention
    from ..evaluation.tasks import evaluate_model

    if ev.task == RETENTION_TASK:
        if base is None:
            raise ValueError("the retention benchmark needs the pretrained model to compare with (base)")
        return evaluate_retention(model, base(), tokenizer, ev.data, out_dir, limit=ev.limit,
                                  batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, progress=progress)
    return evaluate_model(ev.task, model, tokenizer, ev.data, out_dir, limit=ev.limit, batch_size=ev.batch_size,
                          max_new_tokens=ev.max_new_tokens, progress=progress, samples=ev.samples,
                          temperature=ev.temperature, sample_seed=ev.sample_seed)


@torch.no_grad()
def heldout_loss(model: Any, dataset: Any, collator: Any, batch_size: int,
                 per_example: Optional[dict] = None) -> dict[str, float]:
    """Token-weighted cross-entropy (and perplexity) on response tokens, without the BA-LoRA terms.

    ``per_example``, when given, receives each example's NLL sum (``nll``) and response-token count (``tokens``),
    in row order: what a paired bootstrap over examples needs."""
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                    ignore_index=-100, reduction="none").view(targets.shape).sum(1)
            tokens = (targets != -100).sum(1)
            total += float(nll.sum())
            count += int(tokens.sum())
            if per_example is not None:
                per_example.setdefault("nll", []).extend(nll.tolist())
                per_example.setdefault("tokens", []).extend(tokens.tolist())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("held-out data has no response tokens to score")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(count)}
