"""The run pipeline shared by NLU and NLG runs: prepare, train, evaluate, record.

:func:`balora.training.nlu.run_nlu` and :func:`balora.training.nlg.run_nlg` differ only in their data, model
head and evaluation; the stages around them are here, in the order a run goes through them:

1. :func:`open_run`: the settings are checked (after the caller checked its data), the run folder is created with
   its record marked ``running``, and marked ``failed`` with the error if anything later raises;
2. :func:`prepare_method`: the method is put on the loaded model (adapter init seeded so a resume rebuilds it),
   the pretrained reference is chosen once, and a residual init's step-0 adapter is saved (needed to export for the
   original base); the caller hands ``prepared.objective()`` to the trainer;
3. :func:`train`: the Trainer runs (from the last checkpoint with ``train.resume``);
4. :func:`save_adapter` and :func:`balora.training.common.finish_run`: the adapter and the run record.

The run folder's file names live in :mod:`balora.run_layout`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

from ..run_layout import save_run_adapters
from .common import check_runtime, last_checkpoint, mark_failure, peft_extra_kwargs, start_run
from .run_config import RunConfig


@contextlib.contextmanager
def open_run(cfg: RunConfig, has_eval: bool) -> Iterator[Path]:
    """Check the settings, create the run folder (record ``running``) and mark it ``failed`` on any error.

    The folder's lock is held for the whole run (:func:`balora.run_layout.hold_run_dir`): a second training into
    it fails at once, and so does one into a folder holding a completed run (see
    :func:`balora.training.common.start_run`).
    """
    from ..run_layout import hold_run_dir

    check_runtime(cfg, has_eval)
    with hold_run_dir(cfg.train.output_dir) as run_dir:
        start_run(cfg, run_dir)
        with mark_failure(run_dir):
            yield run_dir


def prepare_method(cfg: RunConfig, model: Any, n_train: int, run_dir: Path, regression: bool = False,
                   train_data: Any = None) -> Any:
    """:func:`balora.methods.prepare_model` with the run's method and regulariser settings and the reference
    :func:`balora.reference.choose_reference` decides for the run (``regression``: an NLU regression target); saves a
    residual init's step-0 adapter. Returns the :class:`~balora.methods.PreparedModel`.

    ``train_data``: ``(train dataset, collator)``; the data-driven inits (corda, eva, lora-ga) draw
    ``method.init_batches`` batches of ``train.batch_size`` from it, seeded with ``train.seed``.
    """
    import torch

    from ..inits import needs_data, sample_batches
    from ..methods import parse_method, prepare_model
    from ..reference import choose_reference, init_modifies_base

    m, t = cfg.method, cfg.train
    base_method, regularized = parse_method(m.name)
    reference = None
    if regularized:  # decided on the loaded model, before the adapter (and its dropout) is added
        reference = choose_reference(cfg.regularizers.reference, cfg.kind, model=model, epochs=t.epochs,
                                     max_steps=t.max_steps, cache_from_epochs=t.cached_reference_epochs,
                                     regression=regression)
    init_batches = None
    if needs_data(base_method) and train_data is not None:
        init_batches = sample_batches(*train_data, m.init_batches, t.batch_size, t.seed)
    torch.manual_seed(t.seed)  # the adapter init (and pissa_niter's sketch) is reproducible on resume
    prepared = prepare_model(model, m.name, r=m.r, alpha=m.alpha, target_modules=m.target_modules, dropout=m.dropout,
                             pissa_niter=m.pissa_niter, config=cfg.regularizers, reference=reference,
                             quantize=m.quantize, quantize_group_size=m.quantize_group_size, init_batches=init_batches,
                             **peft_extra_kwargs(m.name, t.total_steps(n_train)))
    model = prepared.model
    if getattr(model, "peft_config", None) and init_modifies_base(model.peft_config["default"]):
        save_run_adapters(model, run_dir, initial=True)
    return prepared


def train(cfg: RunConfig, trainer: Any, run_dir: Path) -> tuple[list[dict], float]:
    """Run the Trainer (resuming from the last checkpoint with ``train.resume``): (log history, seconds)."""
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_checkpoint(run_dir) if cfg.train.resume else None)
    return list(trainer.state.log_history), time.perf_counter() - start


def save_adapter(model: Any, run_dir: Path) -> None:
    """Save the trained adapter into ``RUN_DIR/adapter`` (a method without one, e.g. full fine-tuning: nothing)."""
    if getattr(model, "peft_config", None):
        save_run_adapters(model, run_dir, initial=False)
