"""The registered ``arithmetic`` benchmark: gold answers score 100 %, malformed or wrong answers 0."""

from __future__ import annotations

import pytest

from balora.evaluation.tasks import ScoreContext, get_task

TASK = get_task("arithmetic")


@pytest.mark.parametrize("split", ["test", "ood"])
def test_gold_worked_answers_score_100_percent(split):
    examples = TASK.load(f"{split}:100:2")
    scores = TASK.score(examples, [ex["worked"] for ex in examples], ScoreContext())
    assert [s["correct"] for s in scores] == [True] * len(examples)
    assert [s["extracted"] for s in scores] == [ex["gold"] for ex in examples]


def test_malformed_and_wrong_answers_score_0():
    ex = TASK.load("test:1")[0]
    wrong = str(int(ex["gold"]) + 1)
    completions = ["", "I cannot solve this.", "The answer is twelve.", f"The answer is {wrong}.",
                   f"{ex['gold']} + 1 = {wrong}. The answer is {wrong}."]
    scores = TASK.score([ex] * len(completions), completions, ScoreContext())
    assert [s["score"] for s in scores] == [0.0] * len(completions)


def test_answer_forms_that_count():
    ex = TASK.load("test:1")[0]
    gold = ex["gold"]
    completions = [f"The answer is {gold}.", f"So the total is {gold}", f"The answer is: {gold}.0", f"#### {gold}"]
    assert [s["correct"] for s in TASK.score([ex] * 4, completions, ScoreContext())] == [True] * 4


def test_prompt_is_the_question_alone():
    ex = TASK.load("ood:1")[0]
    assert TASK.build_prompt(ex) == ex["question"]


def test_pilot_and_sweep_configs_name_the_generated_sets():
    from pathlib import Path

    from balora.bench.nlg import NLGBenchOptions, nlg_sweep
    from balora.bench.sweep import load_options
    from balora.training.run_config import build_config, load_config

    configs = Path(__file__).resolve().parents[2] / "configs" / "nlg"
    run = load_config(str(configs / "smollm2_arithmetic_cpu.yaml"), [])
    assert (run.kind, run.data.train) == ("nlg", "arithmetic:train:4000:0")
    assert [(e.task, e.data) for e in run.eval] == [("arithmetic", "test:100:0"), ("arithmetic-ood", "ood:100:0")]
    path = str(configs / "smollm2_arithmetic_bench.yaml")
    opts = load_options(NLGBenchOptions, path, "bench")
    bench = build_config(nlg_sweep(opts, path).run, path)
    assert bench.eval == run.eval  # the same generated test sets, read the same way
    for section in ("model", "data"):  # the same model and training data (the pilot also has a validation set)
        pilot, swept = getattr(run, section).__dict__, getattr(bench, section).__dict__
        assert {k: v for k, v in swept.items() if k != "validation"} == {k: v for k, v in pilot.items() if k != "validation"}
    skip = {"output_dir", "seed", "progress"}  # per run in the sweep; bars are off in a sweep
    assert {k: v for k, v in bench.train.__dict__.items() if k not in skip} == \
        {k: v for k, v in run.train.__dict__.items() if k not in skip}
    for e in run.eval:
        assert len(get_task(e.task).load(e.data)) == 100
