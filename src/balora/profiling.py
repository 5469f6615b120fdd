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
    else:
        _reset_rss_hwm()
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
