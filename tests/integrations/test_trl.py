"""BA-LoRA inside trl.SFTTrainer (balora.integrations.trl): its dataset path (chat template, completion-only
masks, packing with position ids) feeds the balora objective, and the logged terms equal a plain
BALoRATrainer's on the same batches."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL not installed (pip install 'balora[trl]')")

from datasets import Dataset  # noqa: E402
from transformers import PreTrainedTokenizerFast, TrainingArguments  # noqa: E402

from balora import BALoRAConfig, BALoRATrainer, prepare_model  # noqa: E402
from balora.integrations.trl import BALoRASFTTrainer  # noqa: E402
from tests.core.tiny import tiny_llama  # noqa: E402

WORDS = [f"w{i}" for i in range(80)]
# {% generation %} marks the assistant tokens for SFTConfig(assistant_only_loss=True)
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<assistant> {% generation %}{{ m['content'] }} "
            "</s>{% endgeneration %} {% else %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny Llama's 96 ids, with a chat template (built in code)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>", "<system>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


def conversations(n: int = 12, seed: int = 0, messages: bool = False) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def words(k):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist())

    rows = [{"prompt": [{"role": "user", "content": words(int(torch.randint(2, 6, (1,), generator=g)))}],
             "completion": [{"role": "assistant", "content": words(int(torch.randint(2, 7, (1,), generator=g)))}]}
            for _ in range(n)]
    if messages:  # whole conversations, trained on the assistant turns only
        return Dataset.from_list([{"messages": r["prompt"] + r["completion"]} for r in rows])
    return Dataset.from_list(rows)


def _prepared(method="ba-lora", cfg=None):
    return prepare_model(tiny_llama(), method, r=4, config=cfg or BALoRAConfig(task="nlg", lambda_consistency=1.0,
                                                                                lambda_diversity=0.5, lambda_svd=0.5,
                                                                                svd_top_k=2, svd_estimator="exact"))


def _sft_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0,
                dataloader_num_workers=0, max_length=32, dataset_num_proc=None, disable_tqdm=True,
                bf16=False)  # TRL defaults to bf16 autocast; the plain run is fp32
    base.update(kw)
    return trl.SFTConfig(**base)


class Recorder:
    """Wraps a collator, keeping the batches it produced (in order)."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        return batch


class Replay:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __call__(self, features):
        batch = self.batches[self.i]
        self.i += 1
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}


def _train_logs(trainer):
    trainer.train()
    return [h for h in trainer.state.log_history if "loss_task" in h]


def _sft(tmp_path, messages=False, **kw):
    tok = tiny_tokenizer()
    prepared = _prepared()
    trainer = BALoRASFTTrainer(model=prepared.model, objective=prepared.objective(), args=_sft_args(tmp_path, **kw),
                               train_dataset=conversations(messages=messages), processing_class=tok)
    rec = Recorder(trainer.data_collator)
    trainer.data_collator = rec
    logs = _train_logs(trainer)
    return trainer, rec.batches, logs


def _plain(tmp_path, batches, steps):
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=1, max_steps=steps,
                             learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             seed=0, remove_unused_columns=False, disable_tqdm=True)
    prepared = _prepared()
    trainer = BALoRATrainer(model=prepared.model, objective=prepared.objective(), args=args, train_dataset=Dataset.from_dict({"i": list(range(steps))}),
                            data_collator=Replay(batches))
    return _train_logs(trainer)


def _assert_same_terms(sft_logs, plain_logs):
    assert len(sft_logs) == len(plain_logs) == 3
    for a, b in zip(sft_logs, plain_logs):
        for key in ("loss", "loss_task", "loss_consistency", "loss_diversity", "loss_svd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)


@pytest.mark.parametrize("packing,messages", [(False, False), (True, False), (False, True)],
                         ids=["prompt-completion", "packed", "assistant-only"])
def test_sft_trainer_terms_equal_plain_balora_trainer(tmp_path, packing, messages):
    extra = dict(packing=True, packing_strategy="bfd", max_length=24) if packing else {}
    if messages:
        extra["assistant_only_loss"] = True
    trainer, batches, sft_logs = _sft(tmp_path, messages=messages, **extra)
    first = batches[0]
    labels = first["labels"]
    # completion-only loss: the prompt tokens (and, packed, every sequence's first token) are not trained
    assert (labels == -100).any() and (labels != -100).any()
    assert (labels[:, :2] == -100).all() and (first["input_ids"][:, 0] == 4).all()  # the <user> turn is not trained
    if packing:
        assert "position_ids" in first and first["input_ids"].shape[0] == 1
        assert (first["position_ids"][0] == 0).sum() > 1  # several sequences in one row
        assert "attention_mask" not in first
    else:
        assert "attention_mask" in first
    assert sft_logs[0]["loss_consistency"] == pytest.approx(0.0, abs=1e-5)  # reference = the pretrained model
    assert sft_logs[-1]["loss_consistency"] > 0  # and the adapter moved away from it
    assert all(h["num_tokens"] > 0 for h in sft_logs)
    _assert_same_terms(sft_logs, _plain(tmp_path, batches[:3], 3))


def test_lambdas_zero_gives_sft_trainers_own_loss(tmp_path):
    """The task loss is SFTTrainer's token mean (its num_items_in_batch normalisation), accumulation included."""
    cfg = BALoRAConfig(task="nlg", lambda_consistency=0.0, lambda_diversity=0.0, lambda_svd=0.0)
    tok = tiny_tokenizer()
    kw = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    prepared = _prepared(cfg=cfg)
    ours = BALoRASFTTrainer(model=prepared.model, objective=prepared.objective(), args=_sft_args(tmp_path, **kw),
                            train_dataset=conversations(), processing_class=tok)
    theirs = trl.SFTTrainer(model=_prepared(cfg=cfg).model, args=_sft_args(tmp_path / "b", **kw),
                            train_dataset=conversations(), processing_class=tok)
    ours.train()
    theirs.train()
    a = [h["loss"] for h in ours.state.log_history if "loss" in h]
    b = [h["loss"] for h in theirs.state.log_history if "loss" in h]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)
    # evaluation is SFTTrainer's own (loss and metrics)
    ev_a, ev_b = ours.evaluate(conversations(n=4, seed=5)), theirs.evaluate(conversations(n=4, seed=5))
    assert ev_a["eval_loss"] == pytest.approx(ev_b["eval_loss"], rel=1e-5)
    assert ev_a["eval_mean_token_accuracy"] == pytest.approx(ev_b["eval_mean_token_accuracy"])


def test_refuses_what_changes_the_task_loss(tmp_path):
    import peft

    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="prepare_model"):
        BALoRASFTTrainer(model=tiny_llama(), args=_sft_args(tmp_path), train_dataset=conversations(),
                         processing_class=tok, peft_config=peft.LoraConfig(r=2))
    with pytest.raises(ValueError, match="loss_type"):
        BALoRASFTTrainer(model=_prepared().model, args=_sft_args(tmp_path, loss_type="dft"), train_dataset=conversations(),
                         processing_class=tok)
