"""Side-by-side step cost of LoRA, PiSSA and BA-LoRA (issue 6), in one process on the same batches.

Every variant is a separately prepared copy of the same model with its own AdamW optimizer and a
:class:`balora.BALoRATrainer`; one measured step is ``compute_loss`` (the real code path: plain methods
go through transformers' standard ``model(**inputs).loss`` on full logits) + ``backward`` + ``step``.
After warm-up the variants are run in turn, the order rotating every round, so that load from other
processes on a shared machine hits all of them alike; medians are reported.

Devices (issue 15): the variants' models and batches live on one device (``cpu`` or ``cuda``), in one
dtype. Time on CUDA is CUDA-event time from the step's start to its end (the step is synchronised only
at its end, as a training loop's logging would); on CPU it is ``time.perf_counter`` wall time (no
synchronisation needed) and process CPU time next to it.

Memory: all variants live in one process, so a process-wide peak counts every model. Each variant's peak
is therefore reported as its own static bytes (parameters, buffers, reference adapter, optimizer state,
counted from the tensors) plus the step's transient peak above what was allocated right before it:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` before the step, ``max_memory_allocated() -
  memory_allocated()`` (torch's allocator: exact for tensors, excludes the caching slack);
* CPU: peak RSS during the step (reset through ``/proc/self/clear_refs``) minus RSS right before it,
  after ``malloc_trim`` has returned freed heap pages. This is a process-wide high-water mark (torch
  offers no CPU allocator statistics): anything else the process allocates meanwhile counts, and pages
  the allocator keeps from earlier steps do not; treat it as +-a few percent.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..atomic import write_json_atomic
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
    times: list[float] = field(default_factory=list)  # seconds: CUDA-event time on CUDA, wall time on CPU
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds (robust to other load)
    step_mb: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    static_mb: float = 0.0
    objective: Optional[Any] = None  # the trainer's loss component (its reference and regulariser settings)
    notes: str = ""

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def step(self) -> torch.Tensor:
        """One optimizer step (forward + backward + AdamW); returns the detached loss (no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def summary(self) -> dict[str, Any]:
        med = statistics.median(self.times) if self.times else float("nan")
        spread = (max(self.times) - min(self.times)) / med if len(self.times) > 1 else 0.0
        step_mb = statistics.median(self.step_mb) if self.step_mb else float("nan")
        cpu = statistics.median(self.cpu_times) if self.cpu_times else float("nan")
        return {"variant": self.name, "median_s": med, "median_cpu_s": cpu, "min_s": min(self.times, default=float("nan")),
                "max_s": max(self.times, default=float("nan")), "spread": spread, "steps": len(self.times),
                "static_mb": self.static_mb, "step_mb": step_mb, "peak_mb": self.static_mb + step_mb,
                "process_peak_rss_mb": max(self.rss_mb, default=float("nan")), "notes": self.notes}


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (the benchmark keeps a model on one device)."""
    return next(model.parameters()).device


def _is_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


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


def make_trainer(model: torch.nn.Module, objective: Optional[Any] = None) -> BALoRATrainer:
    """A BALoRATrainer used only for its ``compute_loss`` (no dataset, no logging)."""
    from transformers import TrainingArguments

    # use_cpu follows the model: Trainer would otherwise move a CPU model to an available GPU while the
    # batches stay on the CPU (the device mismatch of issue 15).
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="balora-bench-"), report_to=[],
                             use_cpu=not _is_cuda(model_device(model)), save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=1)
    trainer = BALoRATrainer(model=model, args=args, objective=objective)
    trainer.state.max_steps = 1000
    return trainer


def trainer_loss(trainer: BALoRATrainer) -> StepFn:
    def fn(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return trainer.compute_loss(model, batch)
    return fn


def build_variant(name: str, prepared: Any, batch: Batch, lr: float = 1e-4, loss_fn: Optional[StepFn] = None,
                  reference: Optional[ReferenceSpec] = None, notes: str = "") -> Variant:
    """Wrap a prepare_model result: AdamW on its trainable parameters and the trainer's compute_loss with its
    objective (on ``reference``, e.g. a filled cache, instead of the prepared one)."""
    model, objective = prepared.model, prepared.objective(reference)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if loss_fn is None:
        loss_fn = trainer_loss(make_trainer(model, objective))
    return Variant(name, model, optimizer, loss_fn, batch, notes=notes, objective=objective)


def timed_step(v: Variant) -> tuple[float, float, float, float, torch.Tensor]:
    """One measured step of ``v``: (seconds, process CPU seconds, transient peak MiB above the memory in
    use before the step, process-wide peak MiB (CPU: RSS high-water mark; CUDA: torch's peak), loss)."""
    if _is_cuda(v.device):
        torch.cuda.synchronize(v.device)
        torch.cuda.reset_peak_memory_stats(v.device)
        before = torch.cuda.memory_allocated(v.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cpu0 = time.process_time()
        start.record()
        loss = v.step()
        end.record()
        end.synchronize()
        cpu = time.process_time() - cpu0
        peak = torch.cuda.max_memory_allocated(v.device)
        return start.elapsed_time(end) / 1000, cpu, (peak - before) / 2**20, peak / 2**20, loss
    _trim_heap()
    before_mb = _current_rss_mb()
    cpu0 = time.process_time()
    with measure("cpu") as m:
        loss = v.step()
    return m.seconds, time.process_time() - cpu0, m.peak_mb - before_mb, m.peak_mb, loss


def run_interleaved(variants: list[Variant], steps: int, warmup: int = 1, device: Optional[str] = None,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Warm up every variant, then ``steps`` rounds of one measured step each, order rotating.

    ``device`` is accepted for compatibility; the device is each variant's model's."""
    for v in variants:
        for _ in range(warmup):
            v.step()
        v.static_mb = static_mb(v.model, v.optimizer)
    for i in range(steps):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            seconds, cpu, step_mb, process_mb, loss = timed_step(v)
            v.times.append(seconds)
            v.cpu_times.append(cpu)
            v.step_mb.append(step_mb)
            v.rss_mb.append(process_mb)
            log(f"  round {i + 1}/{steps} {v.name:<22} time {seconds:7.3f} s  cpu {cpu:7.3f} s  "
                f"step {step_mb:6.0f} MiB  loss {float(loss):.4f}")
    return [v.summary() for v in variants]


def time_op(fn: Callable[[], Any], repeats: int = 3, device: Any = "cpu") -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one untimed call).

    CUDA: CUDA-event time, synchronised after each call (kernels run asynchronously: host time alone
    would measure the launches). CPU: process CPU time, which on a shared machine is barely affected by
    other processes (with one intra-op thread it equals the compute time)."""
    fn()
    times = []
    cuda = _is_cuda(device)
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start_s = time.process_time()
            fn()
            times.append(time.process_time() - start_s)
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
    head = (f"{'variant':<24}{'time s':>9}{'min':>8}{'max':>8}{'cpu s':>9}"
            f"{'static MiB':>12}{'step MiB':>10}{'peak MiB':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<24}{r['median_s']:>9.3f}{r['min_s']:>8.2f}{r['max_s']:>8.2f}{r['median_cpu_s']:>9.3f}"
                     f"{r['static_mb']:>12.0f}{r['step_mb']:>10.0f}{r['peak_mb']:>10.0f}")
    return "\n".join(lines)


def ratio_table(rows: list[dict[str, Any]], base: str = "pissa", cpu_time: bool = False) -> list[dict[str, Any]]:
    """Issue 15's layout: per variant step ms, peak MiB, time / ``base`` and memory / ``base``, all from the
    recorded medians (``cpu_time``: the ratio of process CPU time, the steadier one on a shared CPU)."""
    by = {r["variant"]: r for r in rows}
    ref = by.get(base)
    key = "median_cpu_s" if cpu_time else "median_s"
    out = []
    for r in rows:
        out.append({"variant": r["variant"], "step_ms": 1000 * r[key], "peak_mb": r["peak_mb"],
                    "time_ratio": r[key] / ref[key] if ref else float("nan"),
                    "mem_ratio": r["peak_mb"] / ref["peak_mb"] if ref else float("nan")})
    return out


def format_ratio_table(table: list[dict[str, Any]], base: str = "pissa", title: str = "") -> str:
    head = f"{'variant':<24}{'step ms':>10}{'peak MiB':>11}{'time / ' + base:>16}{'memory / ' + base:>18}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for t in table:
        lines.append(f"{t['variant']:<24}{t['step_ms']:>10.1f}{t['peak_mb']:>11.0f}{t['time_ratio']:>16.3f}"
                     f"{t['mem_ratio']:>18.3f}")
    return "\n".join(lines)


def mark_targets(rat: dict[str, dict[str, float]], targets: dict[str, dict[str, float]],
                 time_key: str = "time") -> list[dict[str, Any]]:
    """``[{pair, metric, value, target, met}]`` for every target whose pair was measured.

    ``targets`` maps "A/B" to {"time": max ratio, "peak_mem": max ratio}; ``time_key`` chooses which
    measured time ratio a "time" target reads ("time" or "cpu_time")."""
    out = []
    for pair, limits in targets.items():
        if pair not in rat:
            continue
        for metric, limit in limits.items():
            value = rat[pair][time_key if metric == "time" else metric]
            out.append({"pair": pair, "metric": time_key if metric == "time" else metric, "value": value,
                        "target": limit, "met": bool(value <= limit)})
    return out


def format_targets(marks: list[dict[str, Any]]) -> str:
    return "\n".join(f"  target {m['pair']:<22} {m['metric']:<9} {m['value']:6.3f}x <= {m['target']:.2f}x  "
                     f"{'met' if m['met'] else 'MISSED'}" for m in marks)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (balora.atomic: temp file + rename; parents created)."""
    return write_json_atomic(path, payload, default=str)


def use_cached_reference(prepared: Any, batches: list[Batch]) -> ReferenceSpec:
    """The cached reference of a prepare_model result: a TeacherCache filled with the reference logits of every
    example (indexed by ``balora_index``), as :func:`balora.training.nlu.run_nlu` fills it."""
    cache = TeacherCache()
    model, spec = prepared.model, prepared.reference
    size = sum(int(b["balora_index"].numel()) for b in batches)
    for b in batches:
        inputs = {k: v for k, v in b.items() if k not in ("labels", "balora_index")}
        cache.put("logits", b["balora_index"], reference_outputs(model, spec, **inputs)["logits"], size)
    return ReferenceSpec(mode="cached", adapter_name=spec.adapter_name, cache=cache)


__all__ = ["Variant", "model_device", "timed_step", "ratio_table", "format_ratio_table", "mark_targets",
           "format_targets", "build_variant", "make_trainer", "run_interleaved", "time_op", "ratios",
           "format_table", "write_json", "use_cached_reference", "static_mb", "prepare_model"]


def run_meta(args: Any) -> dict[str, Any]:
    """What the results were measured on, and how memory was measured (device-dependent)."""
    meta: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
                            "machine": platform.processor() or platform.machine(), "device": args.device,
                            "dtype": args.dtype, "loadavg_start": os.getloadavg(), "argv": sys.argv}
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        meta["fp32_matmul_precision"] = torch.get_float32_matmul_precision()
        meta["memory_method"] = ("own static tensor bytes + torch.cuda max_memory_allocated - memory_allocated "
                                 "during the step (reset_peak_memory_stats before it)")
        meta["time_method"] = "CUDA events around the step, synchronised at its end"
    else:
        meta["memory_method"] = ("own static tensor bytes + the step's process-wide RSS high-water mark above "
                                 "the RSS before it (after malloc_trim): process-wide, approximate")
        meta["time_method"] = "perf_counter wall time and process CPU time (ratios use CPU time)"
    return meta
