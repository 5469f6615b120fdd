"""EvalOptions: one benchmark a run scores after training (a run config's ``eval`` entries), and their parser.

Generation benchmarks (:mod:`balora.evaluation.tasks`), optionally with sampled completions for output diversity
(``samples``, :mod:`balora.evaluation.diversity`), and ``retention`` (:mod:`balora.evaluation.retention`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .._fields import help_field
from .field_types import check_types


@dataclass
class EvalOptions:
    """One generation benchmark run after training (see :mod:`balora.evaluation.tasks`)."""

    task: str = help_field("Benchmark: gsm8k, math, math500, humaneval, mbpp, mt-bench, arithmetic, arithmetic-ood, "
                           "or retention (KL to the pretrained model on general prompts, balora.evaluation.retention).",
                           default="gsm8k")
    data: str = help_field("Its data: a local file/folder or a Hub dataset name (see balora.evaluation.tasks); for "
                           "retention 'general[:n]' (packaged prompts) or a file of prompts.", default="")
    limit: Optional[int] = help_field("Evaluate only the first N problems (all when empty).", default=None)
    batch_size: int = help_field("Prompts per generate() call (greedy decoding).", default=8)
    max_new_tokens: int = help_field("Maximum generated tokens per problem.", default=512)
    samples: int = help_field("Output diversity: also draw this many sampled completions per problem and record "
                              "distinct-1/2 and self-BLEU (balora.evaluation.diversity); 0 = greedy only.", default=0)
    temperature: float = help_field("Sampling temperature of those samples.", default=0.7)
    sample_seed: int = help_field("Seed of those samples (recorded with them).", default=0)

    def __post_init__(self) -> None:
        check_types(self, "eval")
        from ..evaluation.retention import RETENTION_TASK
        from ..evaluation.tasks import TASKS

        if self.task not in TASKS and self.task != RETENTION_TASK:
            raise ValueError(f"eval.task must be one of {sorted([*TASKS, RETENTION_TASK])}, got {self.task!r}")
        sampling = self.samples > 0
        if self.samples < 0 or self.samples == 1 or (sampling and (self.task == RETENTION_TASK or self.temperature <= 0)):
            raise ValueError(f"eval.samples must be 0 (greedy only) or >= 2 (self-BLEU compares samples) with "
                             f"temperature > 0, not for retention; got {self.samples} at {self.temperature} ({self.task})")
        if not self.data:
            raise ValueError(f"eval.data is empty for task {self.task!r}: give a local file/folder or a Hub name")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"eval.limit must be an integer >= 1 or empty, got {self.limit!r}")
        for name in ("batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"eval.{name} must be an integer >= 1, got {value!r}")


def parse_eval_section(raw: Any, source: str = "<config>") -> list[EvalOptions]:
    """``eval:`` as one mapping or a list of mappings -> EvalOptions; unknown keys name the source."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    known = {f.name for f in dataclasses.fields(EvalOptions)}
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: eval entry {i} must be a mapping with keys {sorted(known)}, got {item!r}")
        bad = set(item) - known
        if bad:
            raise ValueError(f"{source}: unknown eval option(s) {sorted(bad)} in entry {i}; known: {sorted(known)}")
        out.append(EvalOptions(**item))
    return out
