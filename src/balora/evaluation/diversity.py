"""Output diversity of sampled generations: distinct-n and self-BLEU, per prompt and averaged over prompts.

For every prompt the model draws ``k`` samples (:func:`balora.evaluation.generation.sample`, a fixed temperature
and seed). Per prompt:

- **distinct-n** (Li et al. 2016): unique n-grams / total n-grams, pooled over the prompt's ``k`` samples
  (whitespace tokens). ``k`` identical samples without repeated n-grams give ``1 / k``; samples sharing no n-gram
  give 1. A prompt whose samples hold no n-gram at all (all shorter than n tokens) scores 0.
- **self-BLEU** (Zhu et al. 2018, Texygen): the mean sentence BLEU (sacrebleu, 0-100, exponential smoothing,
  effective order) of each sample against the prompt's other samples as references. Identical samples give 100;
  samples sharing no token give 0. Lower = more diverse.

The study's figures are the means over prompts; the per-prompt values are what a paired comparison of two
models on the same prompts resamples.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["distinct_n", "self_bleu", "diversity_rows", "summarize_diversity"]


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = text.split()
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over ``samples`` (pooled); 0 when they hold no n-gram."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(samples: Sequence[str]) -> float:
    """Mean sentence BLEU (0-100) of every sample against the other samples; needs at least 2 samples."""
    from sacrebleu.metrics import BLEU

    if len(samples) < 2:
        raise ValueError(f"self_bleu needs at least 2 samples per prompt, got {len(samples)}")
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(s, [o for j, o in enumerate(samples) if j != i]).score
              for i, s in enumerate(samples)]
    return sum(scores) / len(scores)


def diversity_rows(samples_per_prompt: Sequence[Sequence[str]]) -> list[dict]:
    """Per prompt: ``distinct_1``, ``distinct_2`` and ``self_bleu`` of its samples."""
    return [{"distinct_1": distinct_n(s, 1), "distinct_2": distinct_n(s, 2), "self_bleu": self_bleu(s)}
            for s in samples_per_prompt]


def summarize_diversity(rows: Sequence[dict]) -> dict:
    """The means over prompts of :func:`diversity_rows`' values and the number of prompts."""
    if not rows:
        raise ValueError("summarize_diversity: no prompts")
    keys = ("distinct_1", "distinct_2", "self_bleu")
    return {**{k: sum(r[k] for r in rows) / len(rows) for k in keys}, "n_prompts": len(rows)}
