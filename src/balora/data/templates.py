"""Instruction-data formats: detection and normalisation into chat messages, and the plain prompt template.

Every supported record format is normalised to one list of ``{"role", "content"}`` messages that ends
with an ``assistant`` turn. Single-turn formats give ``[system?, user, assistant]``; multi-turn formats
(ShareGPT ``conversations``, OpenAI-style ``messages``) keep every turn, and **every assistant turn is
trained** (its tokens get labels), while system/user/tool turns are prompt (label -100).

Known formats (``format=`` names) and the columns that identify them, in detection order:

=====================  ==========================================  ===============================
name                   columns                                     examples
=====================  ==========================================  ===============================
``messages``           messages: [{"role", "content"}, ...]        OpenAI / TRL conversational
``sharegpt``           conversations: [{"from", "value"}, ...]     WizardLM evol-instruct V2, ShareGPT
``alpaca``             instruction, output (+ optional input)      Alpaca, Code Alpaca, WizardLM 70k
``metamath``           query, response                             MetaMathQA
``codefeedback``       query, answer                               CodeFeedback-Filtered-Instruction
``gsm8k``              question, answer ("#### n" kept in answer)  GSM8K
``prompt_completion``  prompt, completion                          plain prompt/completion pairs
=====================  ==========================================  ===============================

An optional ``system`` column (string) in the single-turn formats becomes a leading system message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Message = dict[str, str]

#: The plain template used when the tokenizer has no chat template (Alpaca-style headers).
PLAIN_INSTRUCTION_HEADER = "### Instruction:\n"
PLAIN_RESPONSE_HEADER = "### Response:\n"
PLAIN_TURN_SEPARATOR = "\n\n"

# name -> (required columns, optional columns, short description); order = detection priority.
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "messages": (("messages",), (), 'messages: [{"role", "content"}]'),
    "sharegpt": (("conversations",), (), 'conversations: [{"from", "value"}]'),
    "alpaca": (("instruction", "output"), ("input", "system"), "instruction, output[, input]"),
    "metamath": (("query", "response"), ("system",), "query, response"),
    "codefeedback": (("query", "answer"), ("system",), "query, answer"),
    "gsm8k": (("question", "answer"), ("system",), "question, answer"),
    "prompt_completion": (("prompt", "completion"), ("system",), "prompt, completion"),
}

_SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}


class EmptyResponseError(ValueError):
    """A record whose response (or an assistant turn) is empty; a ValueError naming file, row and field."""


def known_formats_text() -> str:
    """One line listing the known format names and the columns that identify each."""
    return "; ".join(f"{name} ({desc})" for name, (_, _, desc) in FORMATS.items())


def detect_format(columns: Sequence[str], source: str = "<data>") -> str:
    """Return the format name whose required columns are all present (first match in detection order).

    Raises ValueError listing the columns seen and the known formats when none matches.
    """
    cols = set(columns)
    for name, (required, _, _) in FORMATS.items():
        if all(c in cols for c in required):
            return name
    raise ValueError(
        f"{source}: cannot detect the instruction format from the columns {sorted(cols)}. "
        f"Known formats: {known_formats_text()}. Rename the columns or pass format=<name>."
    )


def check_format(format: str, columns: Sequence[str], source: str = "<data>") -> None:
    """Raise ValueError if ``format`` is unknown or its required columns are missing."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not a known instruction format; known: {known_formats_text()}")
    missing = [c for c in FORMATS[format][0] if c not in set(columns)]
    if missing:
        raise ValueError(
            f"{source}: format={format!r} needs the column(s) {missing}, but the data has {sorted(columns)}"
        )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any, where: str, field: str, required: bool, response: bool = False) -> str:
    """Validate a text field: a non-empty string when required, a string or missing otherwise."""
    if _is_missing(value):
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}: {value!r:.80}")
    if required and not value.strip():
        error = EmptyResponseError if response else ValueError
        raise error(f"{where}: field {field!r} is empty (an instruction example needs a non-empty {field})")
    return value


def _single_turn(system: str, prompt: str, response: str) -> list[Message]:
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": response})
    return messages


def _conversation(turns: Any, where: str, field: str, role_key: str, content_key: str) -> list[Message]:
    if not isinstance(turns, Sequence) or isinstance(turns, str) or len(turns) == 0:
        raise ValueError(f"{where}: field {field!r} must be a non-empty list of turns, got {turns!r:.80}")
    messages: list[Message] = []
    for t, turn in enumerate(turns):
        at = f"{where}, {field}[{t}]"
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            raise ValueError(f"{at}: expected a dict with keys {role_key!r} and {content_key!r}, got {turn!r:.80}")
        role = turn[role_key]
        if field == "conversations":
            if not isinstance(role, str) or role.lower() not in _SHAREGPT_ROLES:
                raise ValueError(f"{at}: unknown speaker {role!r}; expected one of {sorted(_SHAREGPT_ROLES)}")
            role = _SHAREGPT_ROLES[role.lower()]
        elif not isinstance(role, str) or not role:
            raise ValueError(f"{at}: {role_key!r} must be a non-empty string, got {role!r}")
        content = _text(turn[content_key], at, content_key, required=role == "assistant", response=True)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: the conversation has no assistant turn, so nothing would be trained")
    if messages[-1]["role"] != "assistant":
        raise ValueError(
            f"{where}: the conversation ends with a {messages[-1]['role']!r} turn after the last assistant "
            "turn; such trailing turns would never be trained (remove them from the data)"
        )
    return messages


def normalize_record(record: Mapping[str, Any], format: str, where: str) -> list[Message]:
    """Normalise one record of ``format`` into messages ending with an assistant turn.

    ``where`` (e.g. ``"train.jsonl, row 12"``) prefixes every error message. Empty responses raise
    :class:`EmptyResponseError` (a ValueError); they are never dropped silently.
    """
    if format == "messages":
        return _conversation(record["messages"], where, "messages", "role", "content")
    if format == "sharegpt":
        return _conversation(record["conversations"], where, "conversations", "from", "value")
    system = _text(record.get("system"), where, "system", required=False)
    if format == "alpaca":
        instruction = _text(record["instruction"], where, "instruction", required=True)
        extra = _text(record.get("input"), where, "input", required=False)
        # Alpaca's optional input is appended to the instruction as a second paragraph.
        prompt = f"{instruction}{PLAIN_TURN_SEPARATOR}{extra}" if extra.strip() else instruction
        response = _text(record["output"], where, "output", required=True, response=True)
        return _single_turn(system, prompt, response)
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not a known instruction format; known: {known_formats_text()}")
    prompt_field, response_field = FORMATS[format][0]
    prompt = _text(record[prompt_field], where, prompt_field, required=True)
    response = _text(record[response_field], where, response_field, required=True, response=True)
    return _single_turn(system, prompt, response)


def plain_segments(messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """Render messages with the plain template as ``(text, trained)`` segments.

    Layout (documented, stable; generation must prompt with the same text)::

        {system}\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}<eos>\\n\\n### Instruction:\\n...

    Assistant content segments are ``trained=True``; the caller appends EOS after each of them.
    A conversation that ends with a user turn (a generation prompt) ends with the response header.
    """
    segments: list[tuple[str, bool]] = []
    for i, message in enumerate(messages):
        sep = PLAIN_TURN_SEPARATOR if i > 0 else ""
        role, content = message["role"], message["content"]
        if role == "assistant":
            if i == 0 or messages[i - 1]["role"] in ("assistant", "system"):
                segments.append((f"{sep}{PLAIN_RESPONSE_HEADER}", False))
            segments.append((content, True))
        elif role == "system":
            segments.append((f"{sep}{content}", False))
        else:
            text = f"{sep}{PLAIN_INSTRUCTION_HEADER}{content}"
            if i + 1 == len(messages) or messages[i + 1]["role"] == "assistant":
                text += f"{PLAIN_TURN_SEPARATOR}{PLAIN_RESPONSE_HEADER}"
            segments.append((text, False))
    return segments
