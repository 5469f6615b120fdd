"""The generated arithmetic word problems: seeded, recorded, correct worked answers, disjoint splits."""

from __future__ import annotations

import json
import operator
import re

import pytest

from balora.data import arithmetic
from balora.data.instruct import load_instruct_source

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")


def test_same_arguments_same_problems_and_the_seed_is_recorded():
    a, b = arithmetic.generate_split("test", 30, seed=3), arithmetic.generate_split("test", 30, seed=3)
    assert a == b
    assert {(r["seed"], r["generator_version"], r["split"]) for r in a} == {(3, arithmetic.GENERATOR_VERSION, "test")}
    other = arithmetic.generate_split("test", 30, seed=4)
    assert {r["question"] for r in a} != {r["question"] for r in other}
    # A larger draw starts with the smaller one: sizes can grow without changing the first problems.
    assert arithmetic.generate_split("test", 40, seed=3)[:30] == a


@pytest.mark.parametrize("split", arithmetic.SPLITS)
def test_every_worked_step_is_right_and_ends_with_the_gold(split):
    for row in arithmetic.generate_split(split, 150, seed=1):
        steps = STEP.findall(row["answer"])
        assert steps, row
        for x, op, y, z in steps:
            assert OPS[op](int(x), int(y)) == int(z), row["answer"]
        assert row["answer"].endswith(f"The answer is {row['gold']}.")
        assert steps[-1][3] == row["gold"]
        assert len({q["question"] for q in arithmetic.generate_split(split, 150, seed=1)}) == 150


def test_splits_never_share_a_question_whatever_the_seed_or_size():
    train = {r["question"] for seed in (0, 1) for r in arithmetic.generate_split("train", 3000, seed=seed)}
    for split in ("validation", "test", "ood"):
        held_out = {r["question"] for r in arithmetic.generate_split(split, 300, seed=0)}
        assert not train & held_out, split
    # The out-of-domain templates are not the in-domain story (whose question always ends the same way).
    assert all(q.endswith("have now?") for q in train)
    assert not any(r["question"].endswith("have now?") for r in arithmetic.generate_split("ood", 300))
    assert all(arithmetic.hash_split(r["question"]) == "validation"
               for r in arithmetic.generate_split("validation", 50))


@pytest.mark.parametrize("source, expected", [
    ("arithmetic:test", ("test", None, 0)), ("ood:50", ("ood", 50, 0)), ("arithmetic:train:4000:2", ("train", 4000, 2)),
])
def test_parse_source(source, expected):
    assert arithmetic.parse_source(source) == expected


@pytest.mark.parametrize("source", ["arithmetic:dev", "arithmetic:test:ten", "arithmetic:test:1:2:3", "arithmetic:"])
def test_bad_source_is_named(source):
    with pytest.raises(ValueError, match="arithmetic data source"):
        arithmetic.parse_source(source)


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="positive integer"):
        arithmetic.generate_split("test", 0)


def test_instruction_source_reads_generated_problems():
    ds, name, rows = load_instruct_source("arithmetic:train:40:0")
    assert (len(ds), name, rows) == (40, "arithmetic:train:40:0", list(range(40)))
    assert ds[0]["answer"] == arithmetic.generate_split("train", 40, 0)[0]["answer"]


def test_load_problems_reads_llm_adapters_files_and_names_bad_rows(tmp_path):
    good = tmp_path / "AddSub.json"
    good.write_text(json.dumps([{"instruction": "Tom has 3 cats and gets 2 more. How many now?", "input": "",
                                 "output": "3 + 2 = 5. The answer is 5.", "answer": "5.0"}]))
    assert arithmetic.load_problems(str(good)) == [{
        "id": 0, "question": "Tom has 3 cats and gets 2 more. How many now?", "answer": "5.0", "gold": "5.0",
        "worked": "3 + 2 = 5. The answer is 5."}]
    bad = tmp_path / "AQuA.json"
    bad.write_text(json.dumps([{"instruction": "q1", "answer": "3"}, {"instruction": "q2", "answer": "C"}]))
    with pytest.raises(ValueError, match=r"AQuA.json, row 2: the answer 'C' is not a number"):
        arithmetic.load_problems(str(bad))
    generated = arithmetic.load_problems("arithmetic:ood:5:1")
    assert [r["answer"] for r in generated] == [r["gold"] for r in arithmetic.generate_split("ood", 5, 1)]
