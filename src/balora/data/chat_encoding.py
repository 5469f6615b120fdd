"""Chat encoding for instruction tuning: token ids and response-only labels of a conversation.

  * the tokenizer's chat template when it has one (``apply_chat_template``). The boundary of each
    assistant turn is found by rendering the prompt so far with ``add_generation_prompt=True`` and
    the conversation up to and including that turn, and checking that the first is a token prefix of
    the second (and that of the full conversation). If the tokenizer breaks that prefix property (a
    merge across the prompt/response boundary), the rendered *text* is cut at the same boundaries,
    each piece is tokenised separately and the pieces are concatenated (counted in
    ``InstructStats.n_boundary_fallback``). If EOS does not appear in the last assistant turn as the
    template renders it, EOS is appended and trained so the model learns to stop.
  * otherwise the plain template of :func:`balora.data.templates.plain_segments`
    (``### Instruction:\\n...\\n\\n### Response:\\n``), each piece tokenised separately, EOS appended
    (and trained) after every assistant turn, the tokenizer's own leading special tokens (e.g. BOS)
    in front. :func:`encode_prompt` gives the identical prompt ids for generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from balora.data.templates import Message, plain_segments

IGNORE_INDEX = -100


def _ids(encoding: Any) -> list[int]:
    ids = encoding["input_ids"] if not isinstance(encoding, list) else encoding
    return [int(i) for i in ids]


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts in front of a text (e.g. BOS); empty for GPT-2-style ones."""
    with_special = _ids(tokenizer("x", add_special_tokens=True))
    without = _ids(tokenizer("x", add_special_tokens=False))
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return with_special[:start]
    return []


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (then it is used for training and prompting)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render_ids(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return _ids(out)


def _render_text(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _tokenize_segments(tokenizer: Any, segments: Sequence[tuple[str, bool]], prefix: list[int],
                       eos_after_trained: int | None) -> tuple[list[int], list[int]]:
    ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    for text, trained in segments:
        piece = _ids(tokenizer(text, add_special_tokens=False)) if text else []
        if trained and eos_after_trained is not None:
            piece.append(eos_after_trained)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def _encode_chat(tokenizer: Any, messages: Sequence[Message], where: str) -> tuple[list[int], list[int], bool]:
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    full = _render_ids(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i in assistant_at:
        prompt = _render_ids(tokenizer, messages[:i], True)
        upto = full if i == len(messages) - 1 else _render_ids(tokenizer, messages[:i + 1], False)
        if upto[:len(prompt)] != prompt or full[:len(upto)] != upto or len(upto) <= len(prompt):
            break
        spans.append((len(prompt), len(upto)))
    fallback = len(spans) != len(assistant_at)
    if not fallback:
        ids, labels = full, [IGNORE_INDEX] * len(full)
        for start, end in spans:
            labels[start:end] = full[start:end]
    else:
        # Token prefix property broken: cut the rendered text at the same boundaries and tokenise the
        # pieces separately (the model then sees exactly the prompt ids it gets at generation time).
        text = _render_text(tokenizer, messages, False)
        segments: list[tuple[str, bool]] = []
        cursor = 0
        for i in assistant_at:
            prompt_t = _render_text(tokenizer, messages[:i], True)
            upto_t = text if i == len(messages) - 1 else _render_text(tokenizer, messages[:i + 1], False)
            if not (upto_t.startswith(prompt_t) and text.startswith(upto_t) and len(prompt_t) >= cursor):
                raise ValueError(
                    f"{where}: the chat template does not render the conversation as prompt + response "
                    f"(turn {i}: the prompt rendered with add_generation_prompt=True is not a prefix of the "
                    "conversation), so the response tokens cannot be located; use a template without "
                    "history rewriting or the plain template (tokenizer.chat_template = None)"
                )
            segments += [(text[cursor:len(prompt_t)], False), (upto_t[len(prompt_t):], True)]
            cursor = len(upto_t)
        ids, labels = _tokenize_segments(tokenizer, segments, [], None)
    # The last assistant turn reaches the end of the rendering; make sure it closes with EOS.
    eos = tokenizer.eos_token_id
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    if eos is not None and eos not in ids[start:]:
        ids, labels = ids + [eos], labels + [eos]
    return ids, labels, fallback


def encode_messages(tokenizer: Any, messages: Sequence[Message], *, use_chat_template: bool | None = None,
                    where: str = "<example>") -> tuple[list[int], list[int], bool]:
    """Tokenise one conversation; return ``(input_ids, labels, used_boundary_fallback)``.

    ``labels`` equal ``input_ids`` on assistant tokens (+ their end-of-turn/EOS) and -100 elsewhere.
    ``use_chat_template=None`` uses the tokenizer's chat template when it has one.
    """
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if use_chat_template:
        return _encode_chat(tokenizer, messages, where)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...) before building data")
    ids, labels = _tokenize_segments(tokenizer, plain_segments(messages), _special_prefix(tokenizer),
                                     tokenizer.eos_token_id)
    return ids, labels, False


def encode_prompt(tokenizer: Any, messages: Sequence[Message], *, use_chat_template: bool | None = None) -> list[int]:
    """The prompt ids for generation, identical to the prompt tokens used in training.

    ``messages`` end with a user turn; the assistant header (generation prompt) is appended.
    """
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if use_chat_template:
        return _render_ids(tokenizer, messages, True)
    ids, _ = _tokenize_segments(tokenizer, plain_segments(messages), _special_prefix(tokenizer), None)
    return ids
