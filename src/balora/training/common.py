"""Pieces shared by the NLU and NLG runs: TrainingArguments from a RunConfig, checkpoints, run records.

The run record ``balora_run.json`` carries a ``status``: :func:`start_run` writes ``"running"`` once the data
and settings have been checked and before the model is set up, :func:`mark_failure` turns it into ``"failed"``
with the error when anything raises (including Ctrl-C), and :func:`finish_run` writes ``"completed"`` at the
end. So a run folder is either absent (bad data or settings are reported before it is created), marked
failed, or complete; ``balora export`` refuses anything but a completed run, and ``--resume`` continues a
failed or interrupted run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

from ..run_layout import read_record, write_record
from .run_config import RunConfig


def peft_extra_kwargs(method: str, total_steps: int) -> dict:
    """AdaLoRA needs the number of training steps for its rank-allocation budget."""
    return {"total_step": total_steps} if method.split("+")[0] == "adalora" else {}


def training_arguments(cfg: RunConfig, has_eval: bool) -> Any:
    """TrainingArguments from a RunConfig, for transformers 4.x and 5.x (keywords it lacks are dropped)."""
    import inspect

    from transformers import TrainingArguments

    t = cfg.train
    wanted = dict(
        output_dir=t.output_dir,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=t.scheduler,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_dir=str(Path(t.output_dir) / "tb"),
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        eval_strategy="epoch" if has_eval else "no",
        report_to=["tensorboard"] if t.tensorboard else [],
        disable_tqdm=not t.progress,
        remove_unused_columns=False,  # keeps balora_index (cached teacher logits) in the batches
        bf16=cfg.model.dtype == "bfloat16",
        fp16=cfg.model.dtype == "float16",
        dataloader_num_workers=0,
        dataloader_pin_memory=_cuda_available(),
        group_by_length=t.group_by_length,
    )
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    if "warmup_ratio" in accepted:  # transformers 4.x
        wanted["warmup_ratio"], wanted["warmup_steps"] = t.warmup_ratio, 0
    if "train_sampling_strategy" in accepted:  # transformers 5 spells group_by_length this way
        wanted["train_sampling_strategy"] = "group_by_length" if t.group_by_length else "random"
    if t.tensorboard and "logging_dir" not in accepted:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(t.output_dir) / "tb"))
    return TrainingArguments(**{k: v for k, v in wanted.items() if k in accepted})


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_trainer(cfg: RunConfig, model: Any, train_ds: Any, eval_ds: Optional[Any], collator: Any, tokenizer: Any,
                  objective: Any = None, compute_metrics: Any = None, callbacks: Optional[list] = None) -> Any:
    """The run's :class:`~balora.trainer.BALoRATrainer`, handed its ``objective`` (``PreparedModel.objective()``)."""
    from ..trainer import BALoRATrainer

    return BALoRATrainer(
        model=model,
        args=training_arguments(cfg, eval_ds is not None),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        objective=objective,
    )


def last_checkpoint(run_dir: Path) -> Optional[str]:
    """The newest complete ``checkpoint-N`` folder of a run, or None (a fresh start).

    A newer checkpoint cut short by a crash while saving is skipped with a warning that names it; when no
    checkpoint is complete, :func:`resume_point` raises.
    """
    import logging

    chosen, skipped = resume_point(run_dir)
    for folder, why in skipped:
        logging.getLogger(__name__).warning(
            "%s is incomplete (%s; a crash while saving it?): resuming from %s instead", folder, why, chosen.name)
    return str(chosen) if chosen is not None else None


def resume_point(run_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """(the newest complete checkpoint of ``run_dir`` or None when it has none, the newer incomplete ones with
    what is wrong); a :class:`~balora.run_layout.RunFolderError` naming them and the choices when there are
    checkpoints and none is complete."""
    from ..run_layout import RunFolderError, checkpoint_problem, checkpoints

    skipped = []
    for folder in checkpoints(run_dir):
        why = checkpoint_problem(folder)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    if skipped:
        named = "; ".join(f"{folder.name}: {why}" for folder, why in skipped)
        raise RunFolderError(
            f"{run_dir}: cannot resume: no complete checkpoint ({named}; a crash while saving?). Choices: delete "
            f"{', '.join(str(folder) for folder, _ in skipped)} and run again with --resume (train.resume), which "
            f"then starts from step 0 in this folder; or --overwrite (train.overwrite) to discard this run and "
            f"start over; or train into another output_dir")
    return None, []


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("balora", "torch", "transformers", "peft", "datasets", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[3]
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_runtime(cfg: RunConfig, has_eval: bool) -> None:
    """Settings the machine cannot run (bf16 or fp16 on a CPU), reported before anything is set up or written.

    transformers' own TrainingArguments check is the authority for bf16 (without a bf16-capable device it fails
    there); building the arguments is cheap and writes nothing. fp16 mixed precision needs a CUDA device: transformers
    accepts it on a CPU, where the first step then fails with a non-finite gradient.
    """
    if cfg.model.dtype == "float16" and not _cuda_available():
        raise ValueError("the training settings cannot run here (model.dtype=float16): float16 training needs a CUDA "
                         "GPU; on a CPU use model.dtype float32 (or bfloat16 where the CPU supports it)")
    try:
        training_arguments(cfg, has_eval)
    except ValueError as err:
        raise ValueError(f"the training settings cannot run here (model.dtype={cfg.model.dtype}): {err}") from err


def start_run(cfg: RunConfig, run_dir: Path) -> Path:
    """Create the run folder and write its record with ``status: "running"`` and this process's id (atomically).

    Call it holding the folder's lock (:func:`balora.run_layout.hold_run_dir`), so the checks here and the
    writes after them are one training's. A folder holding a completed run (or a trained adapter) is refused
    unless ``train.resume`` continues it or ``train.overwrite`` first removes it (:func:`check_not_finished`);
    ``train.resume`` needs a complete checkpoint when there are any (:func:`resume_point`).
    """
    import logging

    from ..run_layout import clear_run

    run_dir = Path(run_dir)
    previous = read_record(run_dir)
    if cfg.train.resume and cfg.train.overwrite:
        raise ValueError(f"{run_dir}: train.resume continues the run and train.overwrite discards it: choose one")
    if cfg.train.resume:
        check_resumable(cfg, previous, run_dir)
        resume_point(run_dir)
    elif cfg.train.overwrite:
        removed = clear_run(run_dir)
        if removed:
            logging.getLogger(__name__).warning("%s: train.overwrite: removed the previous run's %s", run_dir,
                                                ", ".join(removed))
        previous = {}
    else:
        check_not_finished(previous, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "running", "started": _now(), "method": cfg.method.name, "base_model": cfg.model.name_or_path,
              "task_kind": cfg.kind, "config": cfg.to_dict(), "versions": versions(), "git_commit": git_commit(),
              "pid": os.getpid(), "host": platform.node()}
    if cfg.train.resume and previous.get("status"):
        record["resumed_from_status"] = previous["status"]
    return write_record(run_dir, record)


def check_not_finished(previous: dict, run_dir: Path) -> None:
    """Refuse to train afresh into a folder that holds a completed run or a trained adapter: it would be replaced.
    A failed or interrupted run's folder may be trained into afresh, as before."""
    from ..run_layout import RunFolderError, adapter_dir

    adapter = adapter_dir(run_dir)
    if previous.get("status") == "completed" or adapter.is_dir():
        what = "a completed run" if previous.get("status") == "completed" else f"a trained adapter ({adapter})"
        raise RunFolderError(
            f"{run_dir} holds {what}; training into it again would replace it. Pass --resume (train.resume) to "
            f"continue it from its last checkpoint, --overwrite (train.overwrite) to replace it, or train into "
            f"another output_dir")


def check_resumable(cfg: RunConfig, previous: dict, run_dir: Path) -> None:
    """``--resume`` continues the run recorded in ``run_dir`` (running, failed or completed) from its last
    checkpoint; a config that changes what the checkpoint holds (kind, base model, method, adapter) is refused
    rather than loaded into a different model."""
    old = previous.get("config")
    if not old:
        return  # nothing recorded: a fresh start (or a run from before run records had a config)
    new = cfg.to_dict()
    diffs = [f"{section}.{key}: run {old.get(section, {}).get(key)!r}, now {new[section][key]!r}"
             for section, keys in (("model", ("name_or_path", "gguf_file")),
                                   ("method", ("name", "r", "alpha", "target_modules")))
             for key in keys if old.get(section, {}).get(key) != new[section][key]]
    if old.get("kind") != new["kind"]:
        diffs.insert(0, f"kind: run {old.get('kind')!r}, now {new['kind']!r}")
    if diffs:
        raise ValueError(f"{run_dir}: --resume with a config that does not match the recorded run "
                         f"({'; '.join(diffs)}); resume with the run's own config or train into a new output_dir")


@contextlib.contextmanager
def mark_failure(run_dir: Path) -> Iterator[None]:
    """On any exception (Ctrl-C too) set the record's status to ``"failed"`` with the error, then re-raise."""
    try:
        yield
    except BaseException as err:
        record = read_record(run_dir)
        record.update(status="failed", failed=_now(), error=f"{type(err).__name__}: {err}"[:2000])
        try:
            write_record(run_dir, record)
        except OSError:
            pass  # the original error matters more than the record
        raise


def finish_run(cfg: RunConfig, run_dir: Path, prepared: Any, metrics: dict, extra: Optional[dict] = None,
               status: str = "completed") -> Path:
    """Write ``balora_run.json`` (atomically): what ran, on what, with which settings, the metrics and ``status``
    (``"completed"``; NLG writes ``"running"`` after training and ``"completed"`` after its evaluations).
    ``prepared``: the :class:`~balora.methods.PreparedModel` (its regulariser settings are recorded)."""
    m = cfg.method
    flat_metrics = {f"{split}_{k}": v for split, values in metrics.items() for k, v in values.items()
                    if isinstance(v, (int, float))}
    started = read_record(run_dir).get("started")
    record = {
        "status": status,
        "started": started,
        "finished": _now() if status == "completed" else None,
        "method": cfg.method.name,
        "base_model": cfg.model.name_or_path,
        "task_kind": cfg.kind,
        "regularizers": prepared.config.to_dict() if prepared.config is not None else None,
        "adapter": {"r": m.r, "alpha": m.alpha or m.r, "target_modules": m.target_modules, "pissa_niter": m.pissa_niter,
                    **({"quantize": m.quantize, "quantize_group_size": m.quantize_group_size} if m.quantize else {})},
        "training": {k: v for k, v in cfg.to_dict()["train"].items() if k not in ("output_dir", "progress")},
        "metrics": flat_metrics,
        "config": cfg.to_dict(),
        "versions": versions(),
        "git_commit": git_commit(),
        **(extra or {}),
    }
    return write_record(run_dir, record)
