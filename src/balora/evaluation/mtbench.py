"""MT-Bench first-turn single-answer grading with an LLM judge (FastChat ``llm_judge`` protocol).

The judge is any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp
server, TGI, ...), called with the standard library only (``urllib``). Configure it with
arguments or the environment variables ``BALORA_JUDGE_URL`` (base URL such as
``http://localhost:8000/v1``), ``BALORA_JUDGE_MODEL`` and, if the server needs one,
``BALORA_JUDGE_API_KEY``. Without a judge, :class:`JudgeNotConfigured` is raised: no score is
ever invented.

Prompts are FastChat's published ``judge_prompts.jsonl``: ``single-v1`` for general questions
and ``single-math-v1`` (with the GPT-4 reference answer) for the math, reasoning and coding
categories. The rating is parsed from ``[[8]]`` (FastChat also accepts ``[8]``).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from balora.evaluation.records import read_jsonl

NEED_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
ENV_URL, ENV_MODEL, ENV_KEY = "BALORA_JUDGE_URL", "BALORA_JUDGE_MODEL", "BALORA_JUDGE_API_KEY"


class JudgeNotConfigured(RuntimeError):
    """Raised when MT-Bench judging is requested but no judge endpoint/model is configured."""


@dataclass
class JudgeConfig:
    """Where and how to call the judge model."""

    url: str = field(metadata={"help": "Base URL of an OpenAI-compatible API (e.g. http://localhost:8000/v1) "
                                       "or the full .../chat/completions URL."})
    model: str = field(metadata={"help": "Judge model name sent in the request (FastChat used gpt-4)."})
    api_key: Optional[str] = field(default=None, metadata={"help": "Bearer token, if the server needs one."})
    temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (FastChat: 0)."})
    max_tokens: int = field(default=2048, metadata={"help": "Maximum tokens of the judge's reply."})
    timeout_s: float = field(default=120.0, metadata={"help": "HTTP timeout per request, seconds."})
    retries: int = field(default=3, metadata={"help": "Retries on connection errors and HTTP 429/5xx."})

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ValueError("model must be a non-empty judge model name")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    @classmethod
    def resolve(cls, url: Optional[str] = None, model: Optional[str] = None,
                api_key: Optional[str] = None, **kwargs) -> "JudgeConfig":
        """Build from arguments, falling back to the ``BALORA_JUDGE_*`` environment variables."""
        url = url or os.environ.get(ENV_URL)
        model = model or os.environ.get(ENV_MODEL)
        api_key = api_key or os.environ.get(ENV_KEY)
        if not url or not model:
            missing = [n for n, v in ((ENV_URL, url), (ENV_MODEL, model)) if not v]
            raise JudgeNotConfigured(
                "MT-Bench needs an LLM judge but none is configured (missing: " + ", ".join(missing) + "). "
                f"Set {ENV_URL} to an OpenAI-compatible base URL (e.g. https://api.openai.com/v1 or a local "
                f"vLLM server http://localhost:8000/v1), {ENV_MODEL} to the judge model (the paper protocol "
                f"uses gpt-4) and, if needed, {ENV_KEY}; or pass them as arguments.")
        return cls(url=url, model=model, api_key=api_key, **kwargs)


def load_judge_prompts(path: Union[str, Path]) -> dict[str, dict]:
    """FastChat ``judge_prompts.jsonl`` keyed by name; checks the two single-answer prompts exist."""
    prompts = {row["name"]: row for row in read_jsonl(path)}
    for name in ("single-v1", "single-math-v1"):
        if name not in prompts:
            raise ValueError(f"{path}: judge prompt {name!r} not found (have {sorted(prompts)})")
        for key in ("system_prompt", "prompt_template"):
            if key not in prompts[name]:
                raise ValueError(f"{path}: judge prompt {name!r} has no field {key!r}")
    return prompts


def load_questions(path: Union[str, Path]) -> list[dict]:
    """MT-Bench ``question.jsonl`` rows (``question_id``, ``category``, ``turns``)."""
    rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        for key in ("question_id", "category", "turns"):
            if key not in row:
                raise ValueError(f"{path}: row {i} has no field {key!r}")
    return rows


def load_reference_answers(path: Union[str, Path]) -> dict[int, str]:
    """First-turn reference answers from ``reference_answer/gpt-4.jsonl``, keyed by question id."""
    refs = {}
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            refs[int(row["question_id"])] = row["choices"][0]["turns"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"{path}: row {i} lacks question_id/choices[0].turns[0]") from exc
    return refs


def build_judge_messages(question: Mapping, answer: str, judge_prompts: Mapping[str, dict],
                         reference: Optional[str] = None) -> list[dict[str, str]]:
    """Chat messages for judging the first-turn ``answer`` to ``question``."""
    needs_ref = question["category"] in NEED_REFERENCE_CATEGORIES
    if needs_ref and reference is None:
        raise ValueError(f"question {question['question_id']} ({question['category']}) needs a reference answer")
    prompt = judge_prompts["single-math-v1" if needs_ref else "single-v1"]
    fields = {"question": question["turns"][0], "answer": answer}
    if needs_ref:
        fields["ref_answer_1"] = reference
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> Optional[float]:
    """Rating from the judge's reply (``[[8]]``, or ``[8]`` as a fallback); ``None`` if absent."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return float(match.group(1)) if match else None


def chat_completion(config: JudgeConfig, messages: Sequence[Mapping[str, str]]) -> str:
    """POST ``messages`` to the judge and return the reply text (retries transient failures)."""
    body = json.dumps({"model": config.model, "messages": list(messages), "temperature": config.temperature,
                       "max_tokens": config.max_tokens}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    last_error: Exception = RuntimeError("no attempt made")
    for attempt in range(config.retries + 1):
        request = urllib.request.Request(config.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
            try:
                return payload["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise ValueError(f"judge at {config.endpoint} returned an unexpected body: "
                                 f"{str(payload)[:300]}") from exc
        except urllib.error.HTTPError as exc:
            last_error = exc
            if exc.code != 429 and exc.code < 500:
                detail = exc.read().decode("utf-8", "replace")[:300]
                raise RuntimeError(f"judge at {config.endpoint} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last_error = exc
        if attempt < config.retries:
            time.sleep(min(2.0 ** attempt, 30.0))
    raise RuntimeError(f"judge at {config.endpoint} failed after {config.retries + 1} attempts: {last_error}")


def judge_first_turn(questions: Sequence[Mapping], answers: Sequence[str], config: JudgeConfig,
                     judge_prompts: Mapping[str, dict], references: Mapping[int, str]) -> list[dict]:
    """Judge each first-turn answer; returns per-question dicts with ``score`` (``None`` when the
    judge's reply had no rating) and the raw ``judgment``."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    out = []
    for question, answer in zip(questions, answers):
        qid = int(question["question_id"])
        messages = build_judge_messages(question, answer, judge_prompts, references.get(qid))
        judgment = chat_completion(config, messages)
        out.append({"question_id": qid, "category": question["category"], "score": parse_rating(judgment),
                    "judgment": judgment})
    return out


def summarize_scores(judged: Sequence[Mapping]) -> dict[str, float]:
    """Mean score overall and per category (unrated answers are counted in ``n_unrated``)."""
    rated = [j for j in judged if j["score"] is not None]
    summary: dict[str, float] = {"n_rated": len(rated), "n_unrated": len(judged) - len(rated)}
    if rated:
        summary["mean_score"] = sum(j["score"] for j in rated) / len(rated)
        for cat in sorted({j["category"] for j in rated}):
            scores = [j["score"] for j in rated if j["category"] == cat]
            summary[f"mean_score/{cat}"] = sum(scores) / len(scores)
    return summary
