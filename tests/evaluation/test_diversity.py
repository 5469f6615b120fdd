"""Output diversity: distinct-n and self-BLEU by hand, seeded sampling, and the eval option that records them."""

from __future__ import annotations

import json

import pytest
import torch

from balora.evaluation.diversity import distinct_n, diversity_rows, self_bleu, summarize_diversity
from balora.evaluation.generation import GenerationOptions, sample
from balora.evaluation.tasks import evaluate_model
from balora.training.run_config import EvalOptions
from tests.evaluation.test_generation import char_tokenizer, tiny_llama


def test_identical_samples_are_least_diverse():
    same = ["the cat sat down"] * 4  # 4 distinct unigrams, 3 distinct bigrams, repeated 4 times
    assert distinct_n(same, 1) == pytest.approx(4 / 16)
    assert distinct_n(same, 2) == pytest.approx(3 / 12)
    assert self_bleu(same) == pytest.approx(100.0)


def test_disjoint_samples_are_most_diverse():
    disjoint = ["a b c", "d e f", "g h i"]
    assert distinct_n(disjoint, 1) == 1.0 and distinct_n(disjoint, 2) == 1.0
    assert self_bleu(disjoint) == pytest.approx(0.0, abs=1e-9)


def test_partial_overlap_by_hand_and_edge_cases():
    # unigrams a b c d a b e f: 6 unique of 8; bigrams ab bc cd ab be ef: 5 unique of 6
    pair = ["a b c d", "a b e f"]
    assert distinct_n(pair, 1) == pytest.approx(6 / 8) and distinct_n(pair, 2) == pytest.approx(5 / 6)
    assert 0 < self_bleu(pair) < 100
    assert distinct_n(["x", "y"], 2) == 0.0  # no bigram at all
    with pytest.raises(ValueError, match="at least 2 samples"):
        self_bleu(["only one"])
    rows = diversity_rows([["a b", "a b"], ["a b", "c d"]])
    assert [r["distinct_1"] for r in rows] == [0.5, 1.0]
    summary = summarize_diversity(rows)
    assert summary["distinct_1"] == 0.75 and summary["n_prompts"] == 2
    assert summary["self_bleu"] == pytest.approx((100.0 + 0.0) / 2, abs=1e-6)


@pytest.fixture(scope="module")
def tiny():
    tok = char_tokenizer()
    torch.manual_seed(3)
    return tiny_llama(len(tok)).eval(), tok


def test_sampling_is_seeded_and_leaves_the_global_random_state(tiny):
    model, tok = tiny
    opts = GenerationOptions(max_new_tokens=8, batch_size=2, progress=False)
    prompts = ["abc", "hello", "xyz"]
    state = torch.get_rng_state()
    first = sample(model, tok, prompts, opts, samples=3, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(first) == 3 and all(len(s) == 3 for s in first)
    assert sample(model, tok, prompts, opts, samples=3, temperature=1.0, seed=7) == first
    assert sample(model, tok, prompts, opts, samples=3, temperature=1.0, seed=8) != first
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tok, prompts, opts, samples=2, temperature=0.0)


def test_evaluate_model_records_diversity(tiny, tmp_path):
    model, tok = tiny
    summary = evaluate_model("arithmetic", model, tok, "test:3:0", tmp_path, batch_size=3, max_new_tokens=6,
                             use_chat_template=False, progress=False, samples=2, temperature=1.0, sample_seed=5)
    div = summary["diversity"]
    assert (div["samples"], div["temperature"], div["seed"], div["n_prompts"]) == (2, 1.0, 5, 3)
    rows = [json.loads(line) for line in (tmp_path / "arithmetic_samples.jsonl").read_text().splitlines()]
    assert [len(r["samples"]) for r in rows] == [2, 2, 2]
    assert div["distinct_1"] == pytest.approx(sum(distinct_n(r["samples"], 1) for r in rows) / 3)
    assert div["self_bleu"] == pytest.approx(sum(self_bleu(r["samples"]) for r in rows) / 3)
    assert json.loads((tmp_path / "arithmetic_summary.json").read_text())["diversity"] == div


def test_eval_entry_sampling_options():
    ev = EvalOptions(task="arithmetic", data="test:50:0", samples=4, temperature=0.7)
    assert (ev.samples, ev.temperature, ev.sample_seed) == (4, 0.7, 0)
    with pytest.raises(ValueError, match="samples must be 0"):
        EvalOptions(task="arithmetic", data="test:5", samples=1)
    with pytest.raises(ValueError, match="samples must be 0"):
        EvalOptions(task="arithmetic", data="test:5", samples=2, temperature=0.0)
    with pytest.raises(ValueError, match="samples must be 0"):
        EvalOptions(task="retention", data="general:4", samples=2)
