"""Issue 10.4 / 10.5 through the CLI on a tiny local BERT: bad data or settings write nothing, a failed run is
marked failed (and resumable), config type errors name the field, and export never destroys a run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from balora.cli.main import main
from balora.training.run_config import load_config

from .test_train_export_cli import _write_data, tiny_model_dir  # noqa: F401  (fixture)


def _config(tmp_path, model_dir, run_dir, **train):
    config = {"kind": "nlu", "model": {"name_or_path": str(model_dir), "max_length": 16},
              "data": {"train": str(tmp_path / "train.csv"), "text_columns": ["text"]},
              "method": {"name": "ba-lora", "r": 4},
              "train": {"output_dir": str(run_dir), "batch_size": 8, "lr": 1e-2, "logging_steps": 1,
                        "progress": False, "max_steps": 2, **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_validation_label_writes_nothing(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    # Before: trained, then failed in the evaluation with "IndexError: Target 7 is out of bounds", leaving
    # initial_adapter/ and no run record.
    _write_data(tmp_path / "train.csv", 16, 0)
    train = (tmp_path / "train.csv").read_text()
    (tmp_path / "train.csv").write_text(train.replace(",pos", ",1").replace(",neg", ",0"))  # class ids 0, 1
    (tmp_path / "dev.csv").write_text("text,label\nthe cat,1\na dog,0\nit is,7\n")
    run_dir = tmp_path / "run"
    cfg = _config(tmp_path, tiny_model_dir, run_dir)
    assert main(["train", "--config", cfg, "--data.validation", str(tmp_path / "dev.csv")]) == 2
    err = capsys.readouterr().err
    assert "dev.csv: row 3, column 'label': label 7 is not a class id in 0..1" in err
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 may run on this GPU")
def test_bf16_on_cpu_fails_before_the_set_up(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    # Before: the PiSSA set-up ran and wrote initial_adapter/, then TrainingArguments refused bf16.
    _write_data(tmp_path / "train.csv", 16, 0)
    run_dir = tmp_path / "run"
    assert main(["train", "--config", _config(tmp_path, tiny_model_dir, run_dir), "--model.dtype", "bfloat16"]) == 2
    assert "model.dtype=bfloat16" in capsys.readouterr().err
    assert not run_dir.exists()


def test_config_type_and_range_errors_name_the_field():
    # Before: "'<=' not supported between instances of 'str' and 'int'" (no field named).
    with pytest.raises(ValueError, match=r"train\.lr must be a number, got 'fast'"):
        load_config(None, ["--train.lr", "fast"])
    with pytest.raises(ValueError, match=r"train\.batch_size must be an integer, got 2\.5"):
        load_config(None, ["--train.batch_size", "2.5"])
    with pytest.raises(ValueError, match=r"regularizers\.lambda_svd must be a number or empty, got 'high'"):
        load_config(None, ["--balora.lambda_svd", "high"])
    with pytest.raises(ValueError, match=r"method\.target_modules must be text or a list of text, got 3"):
        load_config(None, ["--method.target_modules", "3"])
    # Before: epochs 0 exited 0 with the untrained adapter.
    with pytest.raises(ValueError, match=r"train\.epochs must be a finite number > 0, got 0"):
        load_config(None, ["--train.epochs", "0"])
    with pytest.raises(ValueError, match=r"train\.max_steps must be >= 1, or -1"):
        load_config(None, ["--train.max_steps", "0"])
    assert load_config(None, ["--train.lr", "1"]).train.lr == 1.0  # an int is a fine float


class _Boom:
    """A TrainerCallback-like object that raises at the end of a given step."""

    def __init__(self, step):
        from transformers import TrainerCallback

        def on_step_end(cb, args, state, control, **kw):
            if state.global_step == step:
                raise RuntimeError(f"boom at step {step}")

        self.callback = type("Boom", (TrainerCallback,), {"on_step_end": on_step_end})()


def test_failed_run_is_marked_failed_refused_by_export_and_resumable(tmp_path, tiny_model_dir):  # noqa: F811
    from balora.training.nlu import run_nlu

    _write_data(tmp_path / "train.csv", 32, 0)
    run_dir = tmp_path / "run"
    cfg = load_config(_config(tmp_path, tiny_model_dir, run_dir, save_steps=1, max_steps=3))
    with pytest.raises(RuntimeError, match="boom at step 2"):
        run_nlu(cfg, extra_callbacks=[_Boom(2).callback])
    record = json.loads((run_dir / "balora_run.json").read_text())
    # Before: no record at all (a folder with initial_adapter/ and checkpoints that looked like a run).
    assert record["status"] == "failed" and "boom at step 2" in record["error"]
    assert (run_dir / "checkpoint-1").is_dir() and not (run_dir / "adapter").exists()
    with pytest.raises(ValueError, match="not a completed run: its record says status 'failed'"):
        from balora.export import export_adapter

        export_adapter(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cfg.train.resume = True
    other = load_config(_config(tmp_path, tiny_model_dir, run_dir, save_steps=1, max_steps=3), ["--method.r", "8"])
    other.train.resume = True
    with pytest.raises(ValueError, match=r"does not match the recorded run \(method\.r: run 4, now 8\)"):
        run_nlu(other)  # would load rank-4 checkpoint weights into a rank-8 model
    assert json.loads((run_dir / "balora_run.json").read_text())["status"] == "failed"
    run_nlu(cfg)  # continues from checkpoint-1
    state = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    record = json.loads((run_dir / "balora_run.json").read_text())
    assert record["status"] == "completed" and record["finished"]


@pytest.fixture
def finished_run(tmp_path, tiny_model_dir):  # noqa: F811
    _write_data(tmp_path / "train.csv", 16, 0)
    run_dir = tmp_path / "run"
    assert main(["train", "--config", _config(tmp_path, tiny_model_dir, run_dir)]) == 0
    return run_dir


def test_export_never_destroys_the_run(tmp_path, finished_run, capsys):
    run = finished_run
    before = {p: (run / p).read_bytes() for p in _files(run) if (run / p).is_file()}
    # Before: --out RUN deleted the run (exit 0), --out RUN/adapter replaced the trained adapter (exit 0).
    for force in ([], ["--force"]):  # --force replaces a non-empty folder, never the run or one inside/above it
        for out in (run, run / "adapter", run / "new", tmp_path):
            assert main(["export", str(run), "--out", str(out), *force]) == 2
            assert "the run folder" in capsys.readouterr().err
    assert {p: (run / p).read_bytes() for p in _files(run) if (run / p).is_file()} == before
    assert not (run / "new").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["export", str(run), "--out", str(other)]) == 2
    assert "not empty: pass --force" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"
    assert main(["export", str(run), "--out", str(other), "--force"]) == 0
    assert (other / "adapter_model.safetensors").is_file() and not (other / "notes.txt").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "fresh")]) == 0


def test_export_refuses_an_initial_adapter_of_another_run(tmp_path, finished_run, tiny_model_dir, capsys):  # noqa: F811
    # Before: an initial_adapter/ of rank 8 next to a rank-4 adapter was converted without a word.
    other = tmp_path / "run8"
    assert main(["train", "--config", _config(tmp_path, tiny_model_dir, other), "--method.r", "8"]) == 0
    shutil.rmtree(finished_run / "initial_adapter")
    shutil.copytree(other / "initial_adapter", finished_run / "initial_adapter")
    assert main(["export", str(finished_run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "initial adapter does not match the trained adapter" in err and "r: trained 4, initial 8" in err
    assert not (tmp_path / "out").exists()


def _snapshot(folder):
    return {p: (folder / p).read_bytes() for p in _files(folder) if (folder / p).is_file()}


def test_rerun_into_a_completed_run_is_refused_unless_overwrite(tmp_path, finished_run, tiny_model_dir, capsys):  # noqa: F811
    # Before: the rerun exited 0 and replaced the trained adapter.
    cfg = _config(tmp_path, tiny_model_dir, finished_run)
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert main(["train", "--config", cfg, "--train.seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{finished_run} holds a completed run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(finished_run) == before
    assert main(["train", "--config", cfg, "--train.seed", "1", "--overwrite"]) == 0
    adapter = "adapter/adapter_model.safetensors"
    assert (finished_run / adapter).read_bytes() != before[adapter]
    record = json.loads((finished_run / "balora_run.json").read_text())
    assert record["status"] == "completed" and record["config"]["train"]["seed"] == 1
    assert main(["train", "--config", cfg, "--resume", "--overwrite"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_a_folder_in_use_is_refused_while_the_first_training_succeeds(tmp_path, tiny_model_dir):  # noqa: F811
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import TrainerCallback

    import balora
    from balora.training.nlu import run_nlu

    _write_data(tmp_path / "train.csv", 16, 0)
    run_dir = tmp_path / "run"
    cfg_file = _config(tmp_path, tiny_model_dir, run_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(balora.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    second = []

    class StartAnother(TrainerCallback):  # a second process trains into the same folder while the first is at step 1
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                second.append(subprocess.run([sys.executable, "-m", "balora.cli.main", "train", "--config", cfg_file,
                                              "--overwrite"], capture_output=True, text=True, env=env, timeout=600))

    run_nlu(load_config(cfg_file), extra_callbacks=[StartAnother()])
    assert second[0].returncode == 2
    assert f"{run_dir}: in use by process {os.getpid()}" in second[0].stderr
    record = json.loads((run_dir / "balora_run.json").read_text())
    assert record["status"] == "completed" and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def _failed_run(tmp_path, model_dir, boom_step):
    from balora.training.nlu import run_nlu

    _write_data(tmp_path / "train.csv", 32, 0)
    run_dir = tmp_path / "run"
    cfg_file = _config(tmp_path, model_dir, run_dir, save_steps=1, max_steps=3)
    with pytest.raises(RuntimeError, match="boom"):
        run_nlu(load_config(cfg_file), extra_callbacks=[_Boom(boom_step).callback])
    return run_dir, cfg_file


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, tiny_model_dir, monkeypatch, caplog):  # noqa: F811
    import balora.training.pipeline as pipeline
    from balora.run_layout import checkpoint_problem
    from balora.training import common

    run_dir, cfg_file = _failed_run(tmp_path, tiny_model_dir, boom_step=3)
    assert [p.name for p in sorted(run_dir.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2"]
    _truncate(run_dir / "checkpoint-2" / "adapter_model.safetensors")  # a crash while saving
    chosen = []  # the checkpoint the Trainer is given

    def spy(folder):
        chosen.append(common.last_checkpoint(folder))
        return chosen[-1]

    monkeypatch.setattr(pipeline, "last_checkpoint", spy)
    # Before: a raw safetensors traceback ("incomplete metadata, file not fully covered").
    with caplog.at_level("WARNING"):
        assert main(["train", "--config", cfg_file, "--resume"]) == 0
    assert chosen == [str(run_dir / "checkpoint-1")]
    assert f"{run_dir / 'checkpoint-2'} is incomplete (adapter_model.safetensors:" in caplog.text
    assert "resuming from checkpoint-1 instead" in caplog.text
    assert checkpoint_problem(run_dir / "checkpoint-2") is None  # saved again, whole
    assert json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((run_dir / "balora_run.json").read_text())["status"] == "completed"


def test_resume_with_only_a_truncated_checkpoint_names_it_and_the_choices(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    run_dir, cfg_file = _failed_run(tmp_path, tiny_model_dir, boom_step=2)
    (run_dir / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": ')  # cut short
    record = (run_dir / "balora_run.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--config", cfg_file, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir}: cannot resume: no complete checkpoint (checkpoint-1: trainer_state.json:" in err
    assert f"delete {run_dir / 'checkpoint-1'} and run again with --resume" in err and "--overwrite" in err
    assert (run_dir / "balora_run.json").read_bytes() == record  # still the failed run's record
