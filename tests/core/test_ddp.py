"""Two CPU processes (torchrun, gloo): the global-batch terms equal the single-process ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, mode: str) -> dict:
    out = tmp_path / f"ddp-{mode}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), str(out), mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_loss_and_gradients_equal_single_process_on_the_global_batch(tmp_path):
    result = _launch(tmp_path, "gather")
    assert result["world"] == 2
    assert result["ddp_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    assert result["max_grad_diff"] <= 1e-5 * max(1.0, result["grad_scale"])


@pytest.mark.slow
def test_per_rank_statistics_differ_from_global(tmp_path):
    # The documented alternative (gather_batch_statistics=False) computes the batch terms per rank.
    result = _launch(tmp_path, "per-rank")
    assert abs(result["ddp_loss"] - result["single_loss"]) > 1e-6
