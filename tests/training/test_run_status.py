"""run_nlg on a tiny in-code Llama: bad instruction data or settings write nothing; a run's record goes running ->
completed, or failed with the error when anything raises after the set-up."""

from __future__ import annotations

import json
import re

import pytest
import torch

from balora.training.nlg import run_nlg
from balora.training.run_config import build_config
from tests.core.tiny import tiny_llama
from tests.evaluation.test_generation import char_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlg-status")
    tok = char_tokenizer()
    model = tiny_llama(seed=0, vocab=len(tok))
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = 0, 2, 1
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def _write(path, answers):
    path.write_text("".join(json.dumps({"question": f"q {i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    return path


def _cfg(model_dir, train, out, **train_opts):
    return build_config({
        "kind": "nlg", "model": {"name_or_path": str(model_dir), "max_length": 64},
        "data": {"train": str(train), "format": "gsm8k"}, "method": {"name": "ba-lora", "r": 4},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 3, "progress": False, "logging_steps": 1,
                  **train_opts}})


def test_bad_instruction_data_writes_nothing(tmp_path, model_dir):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"empty\.jsonl: no trainable example left of 3 record\(s\): 3 had an empty "
                                         r"response \(rows \[1, 2, 3\]\)"):
        run_nlg(_cfg(model_dir, _write(tmp_path / "empty.jsonl", ["", " ", ""]), out), [])
    (tmp_path / "none.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"none\.jsonl: no records"):
        run_nlg(_cfg(model_dir, tmp_path / "none.jsonl", out), [])
    assert not out.exists()  # before: the run folder was created before the data was read


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 / fp16 may run on this GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cpu_is_refused_before_the_set_up(tmp_path, model_dir, dtype):
    out = tmp_path / "run"
    cfg = _cfg(model_dir, _write(tmp_path / "t.jsonl", ["a\n#### 1"] * 3), out)
    cfg.model.dtype = dtype
    with pytest.raises(ValueError, match=f"model.dtype={dtype}"):
        run_nlg(cfg, [])
    # before: initial_adapter/ was written by the PiSSA set-up, then bf16 failed (fp16: at step 1, with a
    # misleading "non-finite gradient ... lower the learning rate")
    assert not out.exists()


def test_record_is_completed_or_failed(tmp_path, model_dir):
    from transformers import TrainerCallback

    train = _write(tmp_path / "t.jsonl", [f"{i}+1\n#### {i + 1}" for i in range(6)])

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            raise KeyboardInterrupt  # Ctrl-C mid-training

    failed = tmp_path / "failed"
    with pytest.raises(KeyboardInterrupt):
        run_nlg(_cfg(model_dir, train, failed), [], extra_callbacks=[Boom()])
    record = json.loads((failed / "balora_run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("KeyboardInterrupt")
    run_nlg(_cfg(model_dir, train, failed, resume=True), [])  # an interrupted run still resumes
    assert json.loads((failed / "balora_run.json").read_text())["status"] == "completed"
    done = tmp_path / "done"
    run_nlg(_cfg(model_dir, train, done), [])
    record = json.loads((done / "balora_run.json").read_text())
    assert record["status"] == "completed" and record["started"] <= record["finished"]


def test_rerun_into_a_completed_run_needs_overwrite(tmp_path, model_dir):
    from balora.run_layout import RunFolderError

    train = _write(tmp_path / "t.jsonl", [f"{i}+1\n#### {i + 1}" for i in range(6)])
    done = tmp_path / "done"
    run_nlg(_cfg(model_dir, train, done), [])
    adapter = done / "adapter" / "adapter_model.safetensors"
    trained = adapter.read_bytes()
    # Before: the Python API replaced the trained adapter without a word.
    with pytest.raises(RunFolderError, match=re.escape(f"{done} holds a completed run")):
        run_nlg(_cfg(model_dir, train, done, seed=1), [])
    assert adapter.read_bytes() == trained
    run_nlg(_cfg(model_dir, train, done, seed=1, overwrite=True), [])
    assert adapter.read_bytes() != trained
    assert json.loads((done / "balora_run.json").read_text())["status"] == "completed"


def test_total_and_warmup_steps_are_config_methods():
    """Derived values live on the config: steps from examples, batch, accumulation, processes; warm-up as transformers."""
    from transformers import TrainingArguments

    from balora.training.run_config import TrainConfig

    t = TrainConfig(epochs=2.5, batch_size=4, grad_accum=2, warmup_ratio=0.1)
    assert t.total_steps(33, world_size=1) == 13  # ceil(33 / 8) = 5 per epoch, ceil(12.5)
    assert t.total_steps(33, world_size=2) == 8   # ceil(33 / 16) = 3 per epoch, ceil(7.5)
    assert TrainConfig(max_steps=7).total_steps(10_000) == 7
    args = TrainingArguments(output_dir="unused", warmup_ratio=0.1) if "warmup_ratio" in TrainingArguments.__init__.__code__.co_varnames \
        else TrainingArguments(output_dir="unused", warmup_steps=0.1)
    for total in (1, 13, 99, 1000):
        assert t.warmup_steps(total) == args.get_warmup_steps(total)
