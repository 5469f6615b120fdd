"""Retention: KL(base || tuned) on the response tokens of general prompts, by hand and on tiny models."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from balora.evaluation.retention import GENERAL_PROMPTS, evaluate_retention, load_prompts, per_token, token_kl
from tests.evaluation.test_generation import char_tokenizer, tiny_llama

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] + ':' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'a:' }}{% endif %}")


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are the same row at every position."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, input_ids, attention_mask=None):  # noqa: ANN001
        logits = self.row.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": logits})()


def test_token_kl_by_hand():
    # base p = (1/2, 1/2); tuned q = (3/4, 1/4): KL(p || q) = 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3) per token
    base, tuned = FixedLogits([0.0, 0.0]), FixedLogits([math.log(3.0), 0.0])
    batch = {"input_ids": torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, -100, 0, 1], [-100, 0, -100, -100]])}  # 2 and 1 response tokens
    sums = token_kl(tuned, base, batch)
    per = 0.5 * math.log(4 / 3)
    assert sums["kl"].tolist() == pytest.approx([2 * per, per])
    assert sums["tokens"].tolist() == [2, 1]
    # NLL of the targets: row 0 targets 0 then 1: tuned -ln(3/4) - ln(1/4), base 2 ln 2
    assert sums["tuned_nll"][0].item() == pytest.approx(-math.log(0.75) - math.log(0.25))
    assert sums["base_nll"].tolist() == pytest.approx([2 * math.log(2), math.log(2)])
    assert token_kl(base, base, batch)["kl"].tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def tiny():
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    return tiny_llama(len(tok)).eval(), tok


def test_unchanged_model_has_zero_kl_and_a_perturbed_one_the_hand_computed_kl(tiny, tmp_path):
    base, tok = tiny
    same = evaluate_retention(copy.deepcopy(base), base, tok, "general:3", tmp_path / "same", batch_size=2,
                              max_new_tokens=6, progress=False)
    assert same["kl"] == pytest.approx(0.0, abs=1e-7) and same["n"] == 3
    assert same["tuned_nll"] == pytest.approx(same["base_nll"])

    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight.add_(0.5 * torch.randn_like(tuned.lm_head.weight))
    moved = evaluate_retention(tuned, base, tok, "general:3", tmp_path / "moved", batch_size=2, max_new_tokens=6,
                               progress=False)
    rows = [json.loads(line) for line in (tmp_path / "moved" / "retention_examples.jsonl").read_text().splitlines()]
    # the same base responses (greedy) in both evaluations
    assert [r["response"] for r in rows] == [json.loads(line)["response"] for line in
                                             (tmp_path / "same" / "retention_examples.jsonl").read_text().splitlines()]
    # by hand: every response token's KL with torch's kl_div, one conversation at a time
    from balora.data.chat_encoding import encode_messages

    total, count = 0.0, 0
    for r in rows:
        ids, labels, _ = encode_messages(tok, [{"role": "user", "content": r["prompt"]},
                                               {"role": "assistant", "content": r["response"]}])
        x = torch.tensor([ids])
        with torch.no_grad():
            lb = torch.log_softmax(base(input_ids=x).logits[0, :-1], -1)
            lt = torch.log_softmax(tuned(input_ids=x).logits[0, :-1], -1)
        keep = torch.tensor(labels[1:]) != -100
        kl = torch.nn.functional.kl_div(lt, lb, log_target=True, reduction="none").sum(-1)[keep]
        assert r["kl"] == pytest.approx(kl.sum().item(), rel=1e-4) and r["tokens"] == int(keep.sum())
        total, count = total + kl.sum().item(), count + int(keep.sum())
    assert moved["kl"] == pytest.approx(total / count, rel=1e-4) and moved["kl"] > 1e-3
    assert per_token(rows, "kl") == pytest.approx([r["kl"] / r["tokens"] for r in rows])
    assert json.loads((tmp_path / "moved" / "retention_summary.json").read_text())["kl"] == moved["kl"]


def test_pissa_base_is_the_original_not_the_residual(tiny, tmp_path):
    """Right after a PiSSA init the model equals the original (KL 0); its disabled adapter is the residual."""
    from peft import LoraConfig, get_peft_model

    base, tok = tiny
    pissa = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj",
                                                                                             "lm_head"],
                                                          init_lora_weights="pissa"))
    kw = dict(batch_size=2, max_new_tokens=6, progress=False)
    assert evaluate_retention(pissa, base, tok, "general:2", tmp_path / "a", **kw)["kl"] == pytest.approx(0, abs=1e-5)
    with pissa.disable_adapter():
        residual = evaluate_retention(base, copy.deepcopy(pissa), tok, "general:2", tmp_path / "b", **kw)["kl"]
    assert residual > 1e-3


def test_prompt_sources(tmp_path):
    rows = load_prompts("general:3")
    assert [r["prompt"] for r in rows] == list(GENERAL_PROMPTS[:3]) and all(r["response"] is None for r in rows)
    assert len(load_prompts("general")) == len(GENERAL_PROMPTS)
    for bad in ("general:0", "general:x", f"general:{len(GENERAL_PROMPTS) + 1}", "wiki:3"):
        with pytest.raises(ValueError, match="general"):
            load_prompts(bad)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="row 2: no 'prompt'"):
        load_prompts(str(path))
    path.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    assert load_prompts(str(path)) == [{"id": 0, "prompt": "Hi?", "response": "Hello."}]
