"""Side-by-side step cost of LoRA, PiSSA and BA-LoRA (issue 6), in one process on the same batches.

Every variant is a separately prepared copy of the same model with its own AdamW optimizer and a
:class:`balora.BALoRATrainer`; one measured step is ``compute_loss`` (the real code path: plain methods
go through transformers' standard ``model(**inputs).loss`` on full logits) + ``backward`` + ``step``.
After warm-up the variants are run in turn, the order rotating every round, so that load from other
processes on a shared machine hits all of them alike; medians are reported.

Memory on CPU: all variants live in one process, so the process's peak RSS (``measure()``) counts every
model. Each variant's peak is therefore reported as its own static bytes (parameters, reference adapter,
optimizer state) plus the step's transient peak (peak RSS during the step minus RSS right before it,
after ``malloc_trim`` has returned freed heap pages to the system). On CUDA ``measure()`` gives torch's
peak allocation directly.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config import BALoRAConfig
from ..methods import prepare_model
from ..profiling import measure
from ..reference import ReferenceSpec, TeacherCache, reference_outputs
from ..trainer import BALoRATrainer

Batch = dict[str, torch.Tensor]
StepFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass
class Variant:
    """One method prepared for training: model, optimizer and the loss call of one step."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: StepFn
    batch: Batch
    times: list[float] = field(default_factory=list)  # wall seconds
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds (robust to other load)
    step_mb: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    static_mb: float = 0.0
    notes: str = ""

    def step(self) -> float:
        """One optimizer step (forward + backward + AdamW); returns the loss value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def summary(self) -> dict[str, Any]:
        med = statistics.median(self.times) if self.times else float("nan")
        spread = (max(self.times) - min(self.times)) / med if len(self.times) > 1 else 0.0
        step_mb = statistics.median(self.step_mb) if self.step_mb else float("nan")
        cpu = statistics.median(self.cpu_times) if self.cpu_times else float("nan")
        return {"variant": self.name, "median_s": med, "median_cpu_s": cpu, "min_s": min(self.times, default=float("nan")),
                "max_s": max(self.times, default=float("nan")), "spread": spread, "steps": len(self.times),
                "static_mb": self.static_mb, "step_mb": step_mb, "peak_mb": self.static_mb + step_mb,
                "process_peak_rss_mb": max(self.rss_mb, default=float("nan")), "notes": self.notes}


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so RSS before a step is close to the live bytes."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the transient peak is then an underestimate
        pass


def _current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def static_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Parameters + buffers of ``model`` + optimizer state, in MiB (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    tensors = list(model.parameters()) + list(model.buffers())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total / 2**20


def make_trainer(model: torch.nn.Module, balora_config: Optional[BALoRAConfig] = None,
                 teacher_cache: Optional[TeacherCache] = None) -> BALoRATrainer:
    """A BALoRATrainer used only for its ``compute_loss`` (no dataset, no logging)."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="balora-bench-"), report_to=[],
                             use_cpu=not torch.cuda.is_available(), save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=1)
    trainer = BALoRATrainer(model=model, args=args, balora_config=balora_config, teacher_cache=teacher_cache)
    trainer.state.max_steps = 1000
    return trainer


def trainer_loss(trainer: BALoRATrainer) -> StepFn:
    def fn(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return trainer.compute_loss(model, batch)
    return fn


def build_variant(name: str, model: torch.nn.Module, batch: Batch, lr: float = 1e-4,
                  loss_fn: Optional[StepFn] = None, balora_config: Optional[BALoRAConfig] = None,
                  teacher_cache: Optional[TeacherCache] = None, notes: str = "") -> Variant:
    """Wrap a prepared model: AdamW on its trainable parameters and the trainer's compute_loss."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if loss_fn is None:
        loss_fn = trainer_loss(make_trainer(model, balora_config, teacher_cache))
    return Variant(name, model, optimizer, loss_fn, batch, notes=notes)


def run_interleaved(variants: list[Variant], steps: int, warmup: int = 1, device: str = "cpu",
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Warm up every variant, then ``steps`` rounds of one measured step each, order rotating."""
    for v in variants:
        for _ in range(warmup):
            v.step()
        v.static_mb = static_mb(v.model, v.optimizer)
    for i in range(steps):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            _trim_heap()
            before = _current_rss_mb() if device == "cpu" else 0.0
            cpu0 = time.process_time()
            with measure(device) as m:
                loss = v.step()
            v.cpu_times.append(time.process_time() - cpu0)
            v.times.append(m.seconds)
            v.rss_mb.append(m.peak_mb)
            v.step_mb.append(m.peak_mb - before if device == "cpu" else m.peak_mb - v.static_mb)
            log(f"  round {i + 1}/{steps} {v.name:<22} wall {m.seconds:7.3f} s  cpu {v.cpu_times[-1]:7.3f} s  "
                f"step {v.step_mb[-1]:6.0f} MiB  loss {loss:.4f}")
    return [v.summary() for v in variants]


def time_op(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median process CPU seconds of ``fn()`` over ``repeats`` calls (after one untimed call).

    CPU time, not wall time: on a shared machine it is barely affected by other processes (with one
    intra-op thread it equals the compute time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def ratios(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """``{"A/B": {"time": .., "peak_mem": ..}}`` for the (A, B) pairs present in ``rows``."""
    by = {r["variant"]: r for r in rows}
    out = {}
    for a, b in pairs:
        if a in by and b in by:
            out[f"{a}/{b}"] = {"time": by[a]["median_s"] / by[b]["median_s"],
                               "cpu_time": by[a]["median_cpu_s"] / by[b]["median_cpu_s"],
                               "peak_mem": by[a]["peak_mb"] / by[b]["peak_mb"]}
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'variant':<24}{'wall s':>9}{'min':>8}{'max':>8}{'cpu s':>9}"
            f"{'static MiB':>12}{'step MiB':>10}{'peak MiB':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<24}{r['median_s']:>9.3f}{r['min_s']:>8.2f}{r['max_s']:>8.2f}{r['median_cpu_s']:>9.3f}"
                     f"{r['static_mb']:>12.0f}{r['step_mb']:>10.0f}{r['peak_mb']:>10.0f}")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
    return path


def use_cached_reference(model: torch.nn.Module, batches: list[Batch]) -> TeacherCache:
    """Fill a TeacherCache with the reference logits of every example (indexed by ``balora_index``) and
    switch ``model`` to ``reference='cached'``, as :func:`balora.training.nlu.run_nlu` does."""
    cache = TeacherCache()
    spec = model.balora.reference
    size = sum(int(b["balora_index"].numel()) for b in batches)
    for b in batches:
        inputs = {k: v for k, v in b.items() if k not in ("labels", "balora_index")}
        cache.put("logits", b["balora_index"], reference_outputs(model, spec, **inputs)["logits"], size)
    model.balora.reference = ReferenceSpec(mode="cached", adapter_name=spec.adapter_name)
    return cache


__all__ = ["Variant", "build_variant", "make_trainer", "run_interleaved", "time_op", "ratios",
           "format_table", "write_json", "use_cached_reference", "static_mb", "prepare_model"]
