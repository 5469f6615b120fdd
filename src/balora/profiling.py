"""Peak-memory and time measurement that works on CPU and GPU, for benchmarks and run records."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_mb: float = float("nan")  # GPU: peak allocated by torch; CPU: peak resident set size of the process
    device: str = "cpu"
    start_mb: float = float("nan")  # the same measure when the block started: peak_mb - start_mb is the block's own

    @property
    def transient_mb(self) -> float:
        """How far the block's peak rose above the memory in use when it started."""
        return self.peak_mb - self.start_mb


def _rss_hwm_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / scale / 1024


def _reset_rss_hwm() -> bool:
    """Linux lets a process reset its own peak-RSS mark (write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measure(device: str | torch.device = "cpu") -> Iterator[Measurement]:
    """Time and peak memory of the block. On CPU the peak is the process's resident set high-water mark
    since the block started (reset through /proc where Linux allows; otherwise since process start)."""
    m = Measurement(device=str(device))
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        m.start_mb = torch.cuda.memory_allocated() / 2**20
    else:
        # after a reset the high-water mark is the current RSS; without one it is the process's peak so far
        _reset_rss_hwm()
        m.start_mb = _rss_hwm_mb()
    start = time.perf_counter()
    try:
        yield m
    finally:
        if cuda:
            torch.cuda.synchronize()
            m.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            m.peak_mb = _rss_hwm_mb()
        m.seconds = time.perf_counter() - start


def tensors_mb(*modules_or_optimizers: torch.nn.Module | torch.optim.Optimizer) -> float:
    """MiB held by the parameters and buffers of modules and the state of optimizers (storages shared by
    several tensors counted once): a model's resident size, exact on every device."""
    seen: set[int] = set()
    total = 0
    for obj in modules_or_optimizers:
        if isinstance(obj, torch.optim.Optimizer):
            tensors = [v for state in obj.state.values() for v in state.values() if torch.is_tensor(v)]
        else:
            tensors = list(obj.parameters()) + list(obj.buffers())
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total / 2**20


@dataclass
class TensorEvent:
    """One tensor produced by an ATen op: the op's name, the output's device/dtype/shape and the
    dtypes and shapes of the op's tensor inputs."""

    op: str
    device: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    inputs: tuple[tuple[torch.dtype, tuple[int, ...]], ...]


@contextlib.contextmanager
def record_tensors() -> Iterator[list[TensorEvent]]:
    """Record every tensor the ATen ops in the block produce (forward and backward), with its device and
    dtype: the basis of the device-placement checks, which can then assert that a training
    step creates nothing on another device than the model's, or no fp32 copy of a low-precision matrix.

    Uses torch's ``TorchDispatchMode`` (through :mod:`balora.peft_compat`; the documented extension point for
    intercepting ATen calls; there is no public hook that sees every allocation) and is slow: for checks,
    never inside timed code.
    """
    from .peft_compat import torch_dispatch_mode, tree_leaves

    events: list[TensorEvent] = []

    class _Recorder(torch_dispatch_mode()):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = tuple((t.dtype, tuple(t.shape)) for t in tree_leaves((args, kwargs or {}))
                        if isinstance(t, torch.Tensor))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    events.append(TensorEvent(str(func), str(t.device), t.dtype, tuple(t.shape), ins))
            return out

    with _Recorder():
        yield events
