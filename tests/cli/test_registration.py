"""The CLI's one registration table, and the device a sweep measures peak memory on."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import balora.bench
import balora.cli
from balora.cli import main as cli_main


def test_every_command_module_is_in_the_table() -> None:
    """A command module (one exposing register) that the table does not list would be a dead command."""
    listed = {f.__module__ for f in cli_main.COMMANDS + cli_main.BENCH_KINDS}
    for pkg in (balora.cli, balora.bench):
        for info in pkgutil.iter_modules(pkg.__path__):
            name = f"{pkg.__name__}.{info.name}"
            if name == "balora.cli.main":
                continue
            if hasattr(importlib.import_module(name), "register"):
                assert name in listed, f"{name} has register() but is not in balora.cli.main.COMMANDS/BENCH_KINDS"
    commands = cli_main.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(commands) == ["demo", "train", "export", "eval", "bench", "report", "analyze"]


@pytest.mark.parametrize("cuda", [False, True])
def test_nlu_sweep_measures_memory_on_the_training_device(cuda: bool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`balora bench nlu` passed no device to run_grid, so on a GPU it recorded CPU RSS as peak memory. The grid
    runner is replaced by a fake that records what it was given (no training), and must have been called."""
    import torch

    import balora.bench.sweep as sweep

    seen: list[dict] = []

    def fake_run_grid(specs, run_fn, results, out_dir, **kwargs):
        seen.append({"specs": list(specs), **kwargs})
        return sweep.GridSummary()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(sweep, "run_grid", fake_run_grid)
    args = ["bench", "nlu", "--models", "m", "--methods", "lora", "--tasks", "rte", "--seeds", "1", "--results",
            str(tmp_path / "r.jsonl"), "--out-dir", str(tmp_path / "runs")]
    assert cli_main.main(args) == 0
    (call,) = seen
    assert call["device"] == ("cuda" if cuda else "cpu")
    assert [(s.method, s.task, s.seed) for s in call["specs"]] == [("lora", "rte", 0)]
