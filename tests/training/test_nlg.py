"""run_nlg end to end on a tiny in-code Llama: train -> generate -> score, export for the original base, bench grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from balora.bench.nlg import NLGBenchOptions, make_nlg_cell_fn, nlg_cells, nlg_sweep
from balora.bench.sweep import run_sweep
from balora.reports.nlg import nlg_table
from balora.bench.runner import read_results
from balora.training.nlg import EvalOptions, evals_from_test, load_nlg_config, parse_eval_section, run_nlg
from balora.training.run_config import build_config
from tests.core.tiny import tiny_llama
from tests.evaluation.test_generation import char_tokenizer

# Role letter + ':' per turn; the same template renders the training examples and the evaluation prompts.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] + ':' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'a:' }}{% endif %}")
PROBLEMS = [("Tom has 2 apples and buys 2 more. How many?", "2+2=4\n#### 4"),
            ("Ann had 9 pens and lost 2. How many?", "9-2=7\n#### 7"),
            ("Bob reads 3 then 5 pages. How many?", "3+5=8\n#### 8")]
LONG = ("Count the sheep: " + "one sheep, " * 4, "1+1+1+1=4, and then once more the same long sum\n#### 4")
MAX_LENGTH = 96


def memorise(model, tok, steps: int = 200) -> None:
    """Fully fine-tune ``model`` until greedy decoding answers PROBLEMS (chat template, response-only labels)."""
    from balora.data.instruct import DataCollatorForResponseOnly, encode_messages

    rows = []
    for q, a in PROBLEMS:
        ids, labels, _ = encode_messages(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        rows.append({"input_ids": ids, "labels": labels})
    batch = DataCollatorForResponseOnly(tok)(rows)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"tiny model did not memorise (loss {loss.item():.3f})"
    model.eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny Llama that has memorised PROBLEMS, its char tokenizer with a chat template, train/test JSONL."""
    root = tmp_path_factory.mktemp("nlg")
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = tiny_llama(seed=0, vocab=len(tok))
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = 0, 2, 1
    model.config.max_position_embeddings = 256  # rotary positions are computed on the fly; this only silences a warning
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    memorise(model, tok)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in [*PROBLEMS * 4, LONG]))
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    return {"model": root / "model", "train": train, "test": test, "root": root}


def nlg_config(assets: dict[str, Path], method: str, out: Path, steps: int = 8) -> object:
    return build_config({
        "kind": "nlg",
        "model": {"name_or_path": str(assets["model"]), "max_length": MAX_LENGTH},
        "data": {"train": str(assets["train"]), "format": "gsm8k", "test": f"gsm8k:{assets['test']}"},
        "method": {"name": method, "r": 8, "alpha": 16},
        "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 13, "eval_batch_size": 3, "lr": 1e-3,
                  "scheduler": "constant", "logging_steps": 2, "progress": False, "seed": 0},
    })


class CaptureLogits:
    """TrainerCallback-like object: the fine-tuned model's logits on ``inputs`` at the end of training."""

    def __init__(self, inputs: torch.Tensor) -> None:
        from transformers import TrainerCallback

        self.inputs, self.logits = inputs, None
        self.callback = type("Capture", (TrainerCallback,), {"on_train_end": self._end})()

    def _end(self, args, state, control, model=None, **kwargs) -> None:
        with torch.no_grad():
            self.logits = model.eval()(input_ids=self.inputs).logits.clone()


@pytest.mark.parametrize("method", ["ba-lora", "lora"])
def test_train_generate_score_and_export(assets, tmp_path, method) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from balora.export import export_adapter

    cfg = nlg_config(assets, method, tmp_path / "run")
    probe = torch.tensor([[1, 5, 9, 14, 20, 33, 40, 41]])
    capture = CaptureLogits(probe)
    result = run_nlg(cfg, extra_callbacks=[capture.callback])  # evals from the data.test shorthand

    # the base model has memorised the three problems and a few small steps keep them: 3 / 3 correct
    logged = [e["loss"] for e in result.log_history if "loss" in e]
    assert logged[-1] < logged[0]  # (the unseen LONG example dominates the loss)
    assert result.metrics["gsm8k"]["accuracy"] == 1.0 and result.metrics["gsm8k"]["n"] == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "gsm8k_generations.jsonl").read_text().splitlines()]
    assert [r["extracted"] for r in rows] == ["4", "7", "8"]
    # truncation is counted: only the long example exceeds MAX_LENGTH characters (= tokens here)
    assert result.truncated == 1 and result.instruct["n_truncated"] == 1 and result.instruct["n_examples"] == 13
    record = json.loads((tmp_path / "run" / "balora_run.json").read_text())
    assert record["truncated"] == 1 and record["metrics"]["gsm8k_accuracy"] == 1.0
    assert record["instruct"]["n_trained_tokens"] == result.instruct["n_trained_tokens"] > 0
    if method == "ba-lora":
        assert any("loss_consistency" in e for e in result.log_history)
        assert (tmp_path / "run" / "initial_adapter").is_dir()

    # the exported plain-LoRA adapter on a fresh ORIGINAL model gives the fine-tuned logits
    export_adapter(tmp_path / "run", tmp_path / "export")
    original = AutoModelForCausalLM.from_pretrained(assets["model"]).eval()
    with torch.no_grad():
        before = original(input_ids=probe).logits
        loaded = PeftModel.from_pretrained(original, str(tmp_path / "export")).eval()
        after = loaded(input_ids=probe).logits
    torch.testing.assert_close(after, capture.logits, atol=1e-4, rtol=1e-4)
    assert (after - before).abs().max() > 1e-3  # training changed the model


def test_eval_options_and_sections(assets, tmp_path) -> None:
    cfg = nlg_config(assets, "lora", tmp_path)
    (ev,) = evals_from_test(cfg)
    assert (ev.task, ev.data, ev.batch_size) == ("gsm8k", str(assets["test"]), 3)
    cfg.data.test = f"gsm8k:{assets['test']},math:some/folder"
    assert [e.task for e in evals_from_test(cfg)] == ["gsm8k", "math"]
    cfg.data.test = str(assets["test"])  # plain instruction data: its loss is reported instead
    assert evals_from_test(cfg) == []
    with pytest.raises(ValueError, match="eval.task"):
        EvalOptions(task="gsm9k", data="x")
    with pytest.raises(ValueError, match="eval.max_new_tokens"):
        EvalOptions(task="gsm8k", data="x", max_new_tokens=0)
    with pytest.raises(ValueError, match=r"unknown eval option\(s\) \['limt'\] in entry 1"):
        parse_eval_section([{"task": "gsm8k", "data": "x"}, {"task": "math", "data": "y", "limt": 3}], "f.yaml")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(f"kind: nlg\nmodel: {{name_or_path: m}}\ndata: {{train: t}}\n"
                         f"eval: {{task: gsm8k, data: {assets['test']}, limit: 2}}\n")
    run_cfg, evals = load_nlg_config(str(yaml_path), ["--eval.max_new_tokens", "64"])
    assert run_cfg.kind == "nlg" and evals == [EvalOptions("gsm8k", str(assets["test"]), 2, 8, 64)]


def test_validation_loss_is_plain_cross_entropy(assets, tmp_path) -> None:
    """Held-out loss equals the model's own mean token loss on the response tokens."""
    from balora.data.instruct import DataCollatorForResponseOnly, build_instruct_dataset
    from balora.models import load_tokenizer
    from balora.training.nlg import heldout_loss

    tok = load_tokenizer(str(assets["model"]))
    ds, _ = build_instruct_dataset(str(assets["test"]), tok, MAX_LENGTH, format="gsm8k")
    model = tiny_llama(seed=0, vocab=len(tok))
    batch = DataCollatorForResponseOnly(tok)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        expected = model(**batch).loss.item()  # mean over all response tokens of the batch
    got = heldout_loss(model, ds, DataCollatorForResponseOnly(tok), batch_size=2)
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["tokens"] == sum((torch.tensor(ds[i]["labels"][1:]) != -100).sum().item() for i in range(len(ds)))


def test_bench_grid_appends_resumes_and_tabulates(assets, tmp_path) -> None:
    opts = NLGBenchOptions(methods=["lora"], base=True,
                           evals=[{"task": "gsm8k", "data": str(assets["test"]), "batch_size": 3, "max_new_tokens": 16}])
    overrides = ["--model.name_or_path", str(assets["model"]), "--data.train", str(assets["train"]), "--data.format",
                 "gsm8k", "--train.max_steps", "3", "--train.lr", "1e-3", f"--model.max_length={MAX_LENGTH}"]
    sweep = nlg_sweep(opts, None, overrides, {"results": str(tmp_path / "res.jsonl"), "out_dir": str(tmp_path / "runs")})
    cells = nlg_cells(opts, sweep)
    assert [c.spec.method for c in cells] == ["base", "lora"]
    # The base model's key holds only what scores it: a training setting does not make it a new run.
    lr2 = nlg_cells(opts, nlg_sweep(opts, None, overrides + ["--train.lr", "2e-3"]))
    assert lr2[0].spec.key() == cells[0].spec.key() and lr2[1].spec.key() != cells[1].spec.key()
    first = run_sweep(sweep, make_nlg_cell_fn(opts, sweep.results), progress=False, stop_on_error=True, cells=cells,
                      subdir=False)
    assert len(first.ran) == 2
    records = read_results(sweep.results)
    assert [r["method"] for r in records] == ["base", "lora"]
    assert all(r["n"] == {"gsm8k": 3} for r in records) and records[0]["score"] == 1.0  # memorised base
    assert records[1]["trainable_params"] > 0 and records[1]["truncated"] == 1 and records[1]["wall_seconds"] > 0
    # The run folders are gone (no keep_adapters), but every score stays auditable from the kept generations.
    assert not any((tmp_path / "runs").iterdir())
    for r in records:
        kept = Path(r["generations"])
        assert kept.parent == tmp_path / "res_generations"
        rows = [json.loads(line) for line in (kept / "gsm8k_generations.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and sum(row["correct"] for row in rows) / 3 == r["score"]
        assert json.loads((kept / "gsm8k_summary.json").read_text())["n"] == 3
    again = run_sweep(sweep, make_nlg_cell_fn(opts, sweep.results), progress=False, cells=cells)
    assert not again.ran and len(again.skipped) == 2 and len(read_results(sweep.results)) == 2
    table = nlg_table(records)
    score = records[1]["score"]
    se = (score * (1 - score) / 3) ** 0.5
    assert "| Method | GSM8K | n | seeds | wall (min) | #Params |" in table
    assert "| base | 100.0 ± 0.0 | 3 | 1 |" in table
    assert f"| lora | {score * 100:.1f} ± {se * 100:.1f} | 3 | 1 |" in table
    with pytest.raises(ValueError, match="no benchmark to score"):
        nlg_sweep(NLGBenchOptions(), None, ["--model.name_or_path", "m", "--data.train", "t"])


def test_bench_nlg_cli_dry_run_lists_the_grid(assets, tmp_path, capsys) -> None:
    from balora.cli.main import main

    evals = f"{{task: gsm8k, data: {assets['test']}}}"
    args = ["bench", "nlg", "--model.name_or_path", str(assets["model"]), "--data.train", str(assets["train"]),
            "--methods", "lora", "ba-lora", "--base", "--evals", evals, "--seeds", "2",
            "--results", str(tmp_path / "r.jsonl"), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in out[:-1]] == ["base", "lora", "ba-lora", "lora", "ba-lora"]
    assert out[-1].startswith("5 of 5 runs to do")
    no_data = [a for a in args if a not in ("--evals", evals)]
    assert main(no_data) == 2  # no benchmark: a clear error (ValueError -> exit code 2), not a traceback
    assert "no benchmark to score" in capsys.readouterr().err
