"""Generation + scoring end to end with a tiny in-code Llama and a character-level tokenizer."""

from __future__ import annotations

import json
import string

import pytest
import torch

from balora.evaluation.generation import (
    PLAIN_TEMPLATE,
    GenerationOptions,
    format_prompt,
    generate,
    truncate_at_stop,
)
from balora.evaluation.tasks import evaluate_model

QUESTIONS = [
    ("Tom has 2 apples and buys 2 more. How many apples?", "2 + 2 = 4\n#### 4", " 2+2=4. The answer is 4."),
    ("Ann had 9 pens and lost 2. How many pens?", "9 - 2 = 7\n#### 7", " 9-2=7. The answer is 7."),
    ("Bob reads 3 pages then 2 pages. How many pages?", "3 + 2 = 5\n#### 5", " 3+2=6. The answer is 6."),
]


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast built in code (no downloads)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in string.ascii_letters + string.digits + string.punctuation + " \n":
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def memorised():
    """Tiny model overfitted to answer the three questions with the completions above."""
    torch.manual_seed(0)
    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    texts = [q + c + "</s>" for q, _, c in QUESTIONS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2, f"tiny model did not memorise (loss {loss.item():.3f})"
    return model.eval(), tok


def test_generate_cuts_at_stop_and_keeps_order(memorised):
    model, tok = memorised
    prompts = [q for q, _, _ in QUESTIONS]
    opts = GenerationOptions(max_new_tokens=40, batch_size=2, stop_sequences=("The answer",), progress=False)
    outs = generate(model, tok, prompts, opts)
    assert outs == [" 2+2=4. ", " 9-2=7. ", " 3+2=6. "]
    assert tok.padding_side == "right"  # restored after left-padded generation


def test_evaluate_model_gsm8k_end_to_end(memorised, tmp_path):
    model, tok = memorised
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in QUESTIONS))
    summary = evaluate_model("gsm8k", model, tok, data, tmp_path / "out", batch_size=2, max_new_tokens=40,
                             use_chat_template=False, progress=False)
    assert summary["n"] == 3 and summary["accuracy"] == pytest.approx(2 / 3)
    rows = [json.loads(line) for line in (tmp_path / "out" / "gsm8k_generations.jsonl").read_text().splitlines()]
    assert [r["extracted"] for r in rows] == ["4", "7", "6"]
    assert [r["correct"] for r in rows] == [True, True, False]
    assert rows[0]["prompt"] == QUESTIONS[0][0] and rows[0]["gold"] == "4"
    saved = json.loads((tmp_path / "out" / "gsm8k_summary.json").read_text())
    assert saved["accuracy"] == pytest.approx(2 / 3)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_format_prompt_plain_and_chat_template():
    tok = char_tokenizer()
    assert format_prompt(tok, "Q?") == PLAIN_TEMPLATE.format(prompt="Q?")
    assert format_prompt(tok, "Q?", use_chat_template=False) == "Q?"
    with pytest.raises(ValueError, match="no chat_template"):
        format_prompt(tok, "Q?", use_chat_template=True)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert format_prompt(tok, "Q?", system_prompt="S") == "<system>S<user>Q?<assistant>"


def test_truncate_and_options_validation(tmp_path):
    assert truncate_at_stop("abc\ndef x\nclass y", ["\nclass ", "\ndef "]) == "abc"
    assert truncate_at_stop("abc", []) == "abc"
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationOptions(max_new_tokens=0)
    with pytest.raises(ValueError, match="use_chat_template"):
        GenerationOptions(use_chat_template="maybe")


def test_eval_cli_with_saved_model_and_adapter(memorised, tmp_path, capsys):
    import argparse

    from peft import LoraConfig, get_peft_model

    from balora.cli import eval_cmd

    model, tok = memorised
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(tiny_llama(len(tok)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")  # LoRA B = 0: outputs equal the base model's
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in QUESTIONS))
    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--task", "gsm8k", "--model", str(tmp_path / "base"), "--adapter",
                              str(tmp_path / "adapter"), "--data", str(data), "--limit", "2", "--chat-template",
                              "no", "--max-new-tokens", "40", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "1.0000" in out
    assert json.loads((tmp_path / "o" / "gsm8k_summary.json").read_text())["n"] == 2


def test_plain_prompt_is_the_training_layout():
    """Without a chat template, evaluation prompts exactly the text instruction tuning trained on."""
    from types import SimpleNamespace

    from balora.data.templates import plain_segments

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
                {"role": "assistant", "content": "5"}]
    prompt_part = "".join(text for text, trained in plain_segments(messages) if not trained)
    no_template = SimpleNamespace(chat_template=None)
    assert format_prompt(no_template, "What is 2+3?", system_prompt="Be brief.") == prompt_part
