"""The lm-eval task files under configs/lm_eval/arithmetic point at the problems balora generates and extract
answers the way balora's scorer does (read without lm-eval; lm-eval itself is checked when it is installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from balora.data.arithmetic import generate_split, parse_source
from balora.evaluation.tasks import ScoreContext, get_task

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "configs" / "lm_eval" / "arithmetic"
TASKS = {"arithmetic.yaml": "test:200:0", "arithmetic_ood.yaml": "ood:200:0"}


class _Loader(yaml.SafeLoader):
    """Reads lm-eval's ``!function module.name`` tags as plain strings."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _config(name: str) -> dict:
    return yaml.load((FOLDER / name).read_text(encoding="utf-8"), Loader=_Loader)


@pytest.mark.parametrize("name, source", TASKS.items())
def test_task_reads_the_generated_problems(name, source):
    config = _config(name)
    data = ROOT / config["dataset_kwargs"]["data_files"][config["test_split"]]
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert rows == generate_split(*parse_source(source))
    assert (config["output_type"], config["doc_to_text"], config["doc_to_target"]) == (
        "generate_until", "{{question}}", "{{gold}}")
    assert config["generation_kwargs"]["do_sample"] is False
    assert config["filter_list"][0]["filter"][0]["filter_fn"] == "!function utils.balora_extract"


def test_balora_filter_agrees_with_the_balora_scorer():
    spec = importlib.util.spec_from_file_location("lm_eval_arithmetic_utils", FOLDER / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    task = get_task("arithmetic")
    examples = task.load("test:20:0")
    completions = [ex["worked"] for ex in examples[:10]] + ["no idea", "The answer is 1,000."] + [
        f"The answer is {int(ex['gold']) + 1}." for ex in examples[12:]]
    filtered = utils.balora_extract([[c] for c in completions], examples)
    lm_eval_exact = [f[0] == ex["gold"] for f, ex in zip(filtered, examples)]
    balora = [s["correct"] for s in task.score(examples, completions, ScoreContext())]
    assert lm_eval_exact == balora
    assert sum(balora) == 10


def test_lm_eval_scores_the_gold_answers_100_percent_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.chdir(ROOT)  # the task's data_files are relative to the repository root
    examples = get_task("arithmetic").load("test:200:0")
    generations = tmp_path / "arithmetic_generations.jsonl"
    generations.write_text("".join(json.dumps({"id": ex["id"], "completion": ex["worked"]}) + "\n" for ex in examples))
    rows = _script("lm_eval_rescore").rescore(generations, "balora_arithmetic", FOLDER)
    assert {r["filter"] for r in rows} == {"balora-extract", "strict-match", "flexible-extract"}
    assert len(rows) == 3 * len(examples) and all(r["exact_match"] == 1 for r in rows)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crosscheck_counts_identical_generations_and_scorer_disagreements(tmp_path):
    examples = get_task("arithmetic").load("test:3:0")
    golds = [ex["gold"] for ex in examples]
    ours = [f"The answer is {golds[0]}.", "no number here", f"The answer is: {golds[2]}"]
    theirs = [ours[0], "still no number", ours[2]]
    (tmp_path / "balora.jsonl").write_text("".join(
        json.dumps({"id": ex["id"], "completion": c, "correct": i != 1}) + "\n"
        for i, (ex, c) in enumerate(zip(examples, ours))))
    strict = [golds[0], "[invalid]", "[invalid]"]  # a strict "The answer is N" regex misses the colon
    (tmp_path / "samples.jsonl").write_text("".join(
        json.dumps({"doc": {"id": ex["id"], "gold": ex["gold"]}, "filter": "strict-match", "resps": [[t]],
                    "filtered_resps": [s], "exact_match": float(s == ex["gold"])}) + "\n"
        for ex, t, s in zip(examples, theirs, strict)))
    result = _script("lm_eval_crosscheck").crosscheck(tmp_path / "samples.jsonl", tmp_path / "balora.jsonl")
    assert (result["n"], result["identical_generations"]) == (3, 2)
    assert result["balora_accuracy_on_lm_eval_generations"] == pytest.approx(2 / 3)
    row = result["lm_eval"]["strict-match"]
    assert row["accuracy"] == pytest.approx(1 / 3)
    assert [d["id"] for d in row["examples"]] == [examples[2]["id"]]
    assert row["examples"][0]["balora_extracted"] == golds[2]


def test_pilot_comparison_pairs_runs_with_the_base(tmp_path):
    ids = [f"p{i}" for i in range(40)]
    base = [i < 4 for i in range(40)]
    run = [i < 30 for i in range(40)]
    for name, ok in (("base", base), ("run", run)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": i, "correct": c}) + "\n" for i, c in zip(reversed(ids), reversed(ok))))
    result = _script("nlg_task_pilot").compare(tmp_path / "base.jsonl", [tmp_path / "run.jsonl"], n_boot=500)
    row = result["runs"][0]
    assert (result["base"]["accuracy"], row["accuracy"], row["wins"], row["losses"]) == (0.1, 0.75, 26, 0)
    assert row["minus_base"]["diff"] == pytest.approx(0.65) and row["minus_base"]["low"] > 0
