"""The grid runner: crash-safe appends, resume, truncated last lines, failures; the GLUE grid and CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path

import pytest

from balora.bench import runner
from balora.bench.nlu import NLUBenchOptions, glue_task_of, nlu_sweep
from balora.bench.sweep import expand, load_options
from balora.bench.runner import RunSpec, TruncatedLineWarning, append_record, read_results, run_grid

REPO = Path(__file__).resolve().parents[2]


def _specs(n_seeds: int = 2, tasks=("rte", "cola")) -> list[RunSpec]:
    return [RunSpec("m", meth, t, s, {"lr": 1e-3}) for t in tasks for s in range(n_seeds) for meth in ("lora", "pissa")]


class FakeRun:
    """Stands in for a training run: records its calls, writes an 'adapter' into the run folder."""

    def __init__(self, fail_on: tuple = ()):
        self.calls: list[RunSpec] = []
        self.fail_on = fail_on

    def __call__(self, spec: RunSpec, run_dir: Path) -> dict:
        self.calls.append(spec)
        if (spec.method, spec.task, spec.seed) in self.fail_on:
            raise RuntimeError("diverged")
        run_dir.mkdir(parents=True)
        (run_dir / "adapter.bin").write_bytes(b"x" * 10)
        return {"metrics": {"validation": {"accuracy": 0.5 + spec.seed / 10}}, "trainable_params": 123}


def test_appends_one_line_per_run_and_deletes_outputs(tmp_path: Path) -> None:
    results, fake = tmp_path / "r.jsonl", FakeRun()
    summary = run_grid(_specs(), fake, results, tmp_path / "runs", progress=False)
    lines = results.read_text().splitlines()
    assert len(lines) == 8 == len(fake.calls) == len(summary.ran)
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == [s.key() for s in _specs()]
    first = records[0]
    assert first["metrics"]["validation"]["accuracy"] == 0.5 and first["trainable_params"] == 123
    assert first["wall_seconds"] >= 0 and first["peak_memory_mb"] > 0
    assert first["versions"]["torch"] and "git_commit" in first and first["hparams"] == {"lr": 1e-3}
    assert not any((tmp_path / "runs").glob("*/adapter.bin"))  # finished runs' outputs are deleted


def test_keep_outputs(tmp_path: Path) -> None:
    run_grid(_specs(1, ("rte",)), FakeRun(), tmp_path / "r.jsonl", tmp_path / "runs", keep_outputs=True, progress=False)
    assert len(list((tmp_path / "runs").glob("*/adapter.bin"))) == 2


def test_resume_skips_recorded_runs(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    run_grid(_specs(1), FakeRun(), results, tmp_path / "runs", progress=False)
    fake = FakeRun()
    summary = run_grid(_specs(2), fake, results, tmp_path / "runs", progress=False)
    assert {(s.task, s.seed) for s in fake.calls} == {("rte", 1), ("cola", 1)}
    assert len(summary.skipped) == 4 and len(fake.calls) == 4
    assert len(read_results(results)) == 8
    # different hyperparameters are a different experiment: nothing is skipped
    other = [RunSpec(s.model, s.method, s.task, s.seed, {"lr": 5e-4}) for s in _specs(1)]
    fake = FakeRun()
    run_grid(other, fake, results, tmp_path / "runs", progress=False)
    assert len(fake.calls) == 4


def test_single_os_write_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(runner.os, "write", spy)
    record = {"key": "k", "text": "two\nlines", "value": 1.5}
    append_record(tmp_path / "r.jsonl", record)
    assert len(writes) == 1 and writes[0].endswith(b"\n") and writes[0].count(b"\n") == 1
    assert read_results(tmp_path / "r.jsonl") == [record]


def test_truncated_last_line_warns_and_run_is_redone(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    specs = _specs(1, ("rte",))
    run_grid(specs, FakeRun(), results, tmp_path / "runs", progress=False)
    full = results.read_bytes()
    lines = full.splitlines(keepends=True)
    results.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the second write
    with pytest.warns(TruncatedLineWarning, match=re.escape(f"{results}: line 2 is truncated")):
        assert [r["key"] for r in read_results(results)] == [specs[0].key()]
    fake = FakeRun()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the runner repairs the file first: no warning, no glued lines
        run_grid(specs, fake, results, tmp_path / "runs", progress=False)
    assert fake.calls == [specs[1]]
    assert [json.loads(line)["key"] for line in results.read_text().splitlines()] == [s.key() for s in specs]


def test_bad_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text('{"key": "a"}\n{"key": \n{"key": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{results}: line 2: not valid JSON")):
        read_results(results)
    results.write_text('{"key": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        read_results(results)


def test_failed_run_is_reported_not_recorded(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    fake = FakeRun(fail_on=(("pissa", "rte", 0),))
    summary = run_grid(_specs(1, ("rte",)), fake, results, tmp_path / "runs", progress=False)
    assert len(summary.ran) == 1 and summary.failed[0][0].method == "pissa" and "diverged" in summary.failed[0][1]
    assert len(read_results(results)) == 1
    with pytest.raises(RuntimeError, match="diverged"):
        run_grid(_specs(1, ("rte",)), FakeRun(fail_on=(("pissa", "rte", 0),)), results, tmp_path / "runs",
                 progress=False, stop_on_error=True)


# ------------------------------------------------------------------------------------------ GLUE grid
def _nlu(path=None, overrides=(), **opts):
    sweep = nlu_sweep(NLUBenchOptions(**{"models": ["m"], **opts}), path, list(overrides))
    return sweep, expand(sweep, task_fn=glue_task_of)


def test_nlu_grid_order_overrides_and_shards() -> None:
    sweep, cells = _nlu(overrides=["--train.lr", "1e-3", "--balora.lambda_svd", "0.1"], methods=["lora", "ba-lora"],
                        tasks=["RTE", "sst-2"], seeds=2,
                        per_task={"rte": {"train.epochs": 20, "data": {"train_limit": 100}}})
    assert len(cells) == 8 and [c.config.train.seed for c in cells] == [0] * 4 + [1] * 4
    assert [c.spec.task for c in cells[:4]] == ["rte", "rte", "sst2", "sst2"]
    rte = next(c for c in cells if c.spec.task == "rte" and c.spec.method == "lora")
    sst = next(c for c in cells if c.spec.task == "sst2" and c.spec.method == "ba-lora")
    assert rte.config.train.epochs == 20 and rte.config.data.train_limit == 100 and rte.config.train.lr == 1e-3
    assert sst.config.train.epochs == 3.0 and sst.config.data.train_limit is None
    assert sst.config.regularizers.lambda_svd == 0.1
    # Every cell is its own run (the seed is part of the key); changing a setting makes new runs.
    _, other = _nlu(overrides=["--train.lr", "1e-3", "--balora.lambda_svd", "0.5"], methods=["lora", "ba-lora"],
                    tasks=["RTE", "sst-2"], seeds=2, per_task={"rte": {"train.epochs": 20, "data.train_limit": 100}})
    assert len({c.spec.key() for c in cells}) == 8
    assert not {c.spec.key() for c in cells if c.spec.method == "ba-lora"} & {c.spec.key() for c in other}
    shards = [expand(dataclasses.replace(sweep, shard=f"{i}/3"), task_fn=glue_task_of) for i in range(3)]
    assert sorted(c.spec.key() for part in shards for c in part) == sorted(c.spec.key() for c in cells)


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["lora", "qlora"]}, "method must be one of"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"tasks": ["squad"]}, "unknown GLUE task 'squad'"),
    ({"per_task": {"rte": 3}}, "per_task.rte must be a mapping"),
])
def test_nlu_options_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NLUBenchOptions(**{"models": ["m"], **kwargs})


def test_nlu_sweep_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"per_value.data.train.glue:rte.train.optimizer: unknown field 'optimizer'"):
        _nlu(per_task={"rte": {"train.optimizer": "sgd"}})
    with pytest.raises(ValueError, match="no model"):
        nlu_sweep(NLUBenchOptions(), None, [])
    with pytest.raises(ValueError, match="train.lr must be"):
        _nlu(overrides=["--train.lr", "fast"])


def test_paper_configs_load(tmp_path: Path) -> None:
    paths = sorted((REPO / "configs" / "nlu").glob("*.yaml"))
    assert paths
    for path in paths:
        opts = load_options(NLUBenchOptions, str(path), "bench", {"models": ["m"]})
        try:
            sweep, cells = _nlu(str(path), **opts.__dict__)
        except ValueError as err:  # where the paper's text lost the learning rate
            assert "train.lr must be a number" in str(err), path
            sweep, cells = _nlu(str(path), ["--train.lr", "1e-4"], **opts.__dict__)
        assert cells and {c.spec.task for c in cells} == set(opts.tasks)
        for c in cells:
            assert c.config.method.r == 8 and c.config.train.epochs > 0 and c.config.train.batch_size in (16, 32)
            assert (c.config.method.alpha or c.config.method.r) in (8, 16)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bench: {models: [m], learning_rate: 0.1}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: bench: unknown option\(s\) \['learning_rate'\]"):
        load_options(NLUBenchOptions, str(bad), "bench")


def test_bench_cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from balora.cli.main import main

    results = tmp_path / "r.jsonl"
    args = ["bench", "nlu", "--models", "m", "--methods", "lora", "--tasks", "rte", "mrpc", "--seeds", "2",
            "--results", str(results), "--dry-run", "--train.lr", "1e-3"]
    assert main(args) == 0
    assert "4 of 4 runs to do" in capsys.readouterr().out
    _, cells = _nlu(overrides=["--train.lr", "1e-3"], methods=["lora"], tasks=["rte", "mrpc"], seeds=2)
    append_record(results, {"key": cells[0].spec.key()})
    assert main(args) == 0
    assert "3 of 4 runs to do" in capsys.readouterr().out
    assert main(args[:-1] + ["2e-3"]) == 0  # another learning rate: other runs
    assert "4 of 4 runs to do" in capsys.readouterr().out
    assert main(args[:-2] + ["--train.lr", "-1"]) == 2
    assert "train.lr must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared_data
def test_bench_nlu_end_to_end_minilm(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from balora.cli.main import main
    from balora.data.assets import minilm_path

    try:
        model = str(minilm_path())
    except ImportError as err:
        pytest.skip(str(err))
    results = tmp_path / "r.jsonl"
    args = ["bench", "nlu", "--models", model, "--methods", "lora", "--tasks", "rte", "--seeds", "1",
            "--data.train_limit", "32", "--data.eval_limit", "32", "--train.max_steps", "2", "--train.batch_size", "8",
            "--glue-dir", str(shared_data / "glue" / "glue_data"), "--ood", "--results", str(results),
            "--out-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    (record,) = read_results(results)
    assert record["train_examples"] == 32 and record["eval_examples"] == 32
    assert 0 <= record["metrics"]["validation"]["accuracy"] <= 1
    assert set(record["ood"]) == {"sick"} and set(record["ood_unavailable"]) == {"scitail", "hans"}
    assert record["trainable_params"] > 0 and record["config"]["train"]["max_steps"] == 2
    # Per-example predictions and references of the dev and OOD sets, for paired tests and collapse counts.
    preds, refs = record["predictions"], record["references"]
    assert set(preds) == set(refs) == {"validation", "ood/sick"} and len(preds["validation"]) == 32
    acc = sum(p == r for p, r in zip(preds["validation"], refs["validation"])) / 32
    assert acc == pytest.approx(record["metrics"]["validation"]["accuracy"])
    assert record["prediction_counts"]["validation"] == [preds["validation"].count(c) for c in (0, 1)]
    assert "| lora |" in capsys.readouterr().out
    assert not any((tmp_path / "runs").iterdir())
    assert main(args) == 0  # resumed: nothing left to do
    assert len(read_results(results)) == 1


def test_nlu_record_helpers() -> None:
    import numpy as np

    from balora.bench.nlu import _as_list, _class_counts

    assert _as_list(np.array([1, 0, 1]), regression=False) == [1, 0, 1]
    assert _as_list(np.array([[0.123456], [2.0]]), regression=True) == [0.1235, 2.0]
    assert _class_counts([2, 2, 0], 3) == [1, 0, 2]
