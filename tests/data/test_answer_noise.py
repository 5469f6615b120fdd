"""data.answer_noise: exactly round(rate * n) worked answers get another final number, seeded and consistent."""

from __future__ import annotations

import re

import datasets
import pytest

from balora.data.arithmetic import generate_split
from balora.data.noise import corrupt_answer, corrupt_answers
from balora.evaluation.math_answers import extract_gsm8k_answer, gsm8k_is_correct


def test_corrupt_answer_by_hand():
    assert corrupt_answer("14 - 5 = 9. The answer is 9.", 3) == "14 - 5 = 12. The answer is 12."
    # only the last step that produced the answer changes; an earlier '= 9' stays
    assert corrupt_answer("4 + 5 = 9. 9 * 1 = 9. The answer is 9.", -2) == "4 + 5 = 9. 9 * 1 = 7. The answer is 7."
    assert corrupt_answer("2 + 2 = 4\n#### 4", 5) == "2 + 2 = 9\n#### 9"
    assert corrupt_answer("3 - 1 = 2. The answer is 2.", -7) == "3 - 1 = 9. The answer is 9."  # never negative
    assert corrupt_answer("1 + 90 = 91. The answer is 91.", 1) == "1 + 90 = 92. The answer is 92."
    with pytest.raises(ValueError, match="row 3.*no final integer answer"):
        corrupt_answer("No number here.", 1, "row 3")


@pytest.fixture(scope="module")
def train():
    rows = generate_split("train", 200, 0)
    return datasets.Dataset.from_list([{"question": r["question"], "answer": r["answer"], "gold": r["gold"]}
                                       for r in rows])


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.33])
def test_exact_fraction_and_corrupted_answers_score_zero(train, rate):
    noisy, record = corrupt_answers(train, rate, seed=1)
    changed = [i for i, (a, b) in enumerate(zip(train["answer"], noisy["answer"])) if a != b]
    assert len(changed) == round(rate * len(train)) == record["corrupted"]
    assert record["noise_rate"] == pytest.approx(len(changed) / len(train))
    assert noisy["question"] == train["question"] and noisy["gold"] == train["gold"]
    for i in range(len(train)):
        answer, gold = noisy[i]["answer"], train[i]["gold"]
        assert gsm8k_is_correct(answer, gold) == (i not in changed)  # corrupted: scores 0 against the gold
        final = extract_gsm8k_answer(answer)
        assert re.search(rf"= {final}\. The answer is {final}\.$", answer)  # the worked text agrees with it


def test_seeded_and_zero_keeps_the_gold(train):
    a, rec_a = corrupt_answers(train, 0.2, seed=5)
    b, rec_b = corrupt_answers(train, 0.2, seed=5)
    c, rec_c = corrupt_answers(train, 0.2, seed=6)
    assert a["answer"] == b["answer"] and rec_a == rec_b
    assert a["answer"] != c["answer"] and rec_a["rows_sha256"] != rec_c["rows_sha256"]
    same, record = corrupt_answers(train, 0.0, seed=5)
    assert same is train and record == {"answer_noise": 0.0, "seed": 5, "n_train": 200, "corrupted": 0}
    with pytest.raises(ValueError, match="rate must be in"):
        corrupt_answers(train, 1.5, seed=0)
    with pytest.raises(ValueError, match="'answer' column"):
        corrupt_answers(train.remove_columns("answer"), 0.1, seed=0)
