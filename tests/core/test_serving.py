"""Handing over an exported adapter: the Hugging Face model card (--push-ready), peft loading, and vLLM's adapter
format rules (balora.serving; vLLM itself needs torch 2.14 + CUDA and is not installed here)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from balora import prepare_model
from balora.cli.main import main
from balora.export import export_adapter
from balora.run_layout import save_run_adapters
from balora.serving import vllm_adapter_problems

from .tiny import nlg_batch, tiny_llama, train_few_steps

HUB_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
METRICS = {"test_accuracy": 0.5, "validation_loss": 1.25}


def _run(tmp_path, method="ba-lora", r=4):
    base_dir = tmp_path / "base"
    if not base_dir.is_dir():
        tiny_llama().save_pretrained(base_dir)
    run = tmp_path / f"run-{method}-{r}"
    run.mkdir()
    model = prepare_model(LlamaForCausalLM.from_pretrained(base_dir), method, r=r).model
    if method == "ba-lora":
        save_run_adapters(model, run, initial=True)
    batch = nlg_batch()
    train_few_steps(model, batch, steps=2)
    with torch.no_grad():
        tuned = model(**batch).logits
    save_run_adapters(model, run, initial=False)
    (run / "balora_run.json").write_text(json.dumps({
        "status": "completed", "method": method, "base_model": str(base_dir), "task_kind": "nlg",
        "data": "tiny in-code rows", "adapter": {"r": r}, "training": {"lr": 0.02, "max_steps": 2},
        "metrics": METRICS, "balora": {"lambda_consistency": 0.025}}))
    return run, base_dir, tuned


def test_push_ready_card_is_a_valid_hub_card_with_the_runs_metrics(tmp_path):
    from huggingface_hub import ModelCard

    run, base_dir, tuned = _run(tmp_path)
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--push-ready", "--base-model", HUB_BASE,
                 "--dataset", "meta-math/MetaMathQA"]) == 0
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "peft" and data.base_model == HUB_BASE
    assert data.datasets == ["meta-math/MetaMathQA"] and "balora" in data.tags and "ba-lora" in data.tags
    results = {(e.dataset_split, e.metric_type): e.metric_value for e in data.eval_results}
    assert results == {("test", "accuracy"): 0.5, ("validation", "loss"): 1.25}
    assert "lr: 0.02" in card.text and "lambda_consistency = 0.025" in card.text
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_BASE
    assert json.loads((out / "balora_run.json").read_text())["metrics"] == METRICS
    # the adapter still loads in peft on the original weights and reproduces the fine-tuned model
    loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**nlg_batch()).logits, tuned, atol=1e-5)


def test_push_ready_refuses_a_local_base_before_writing(tmp_path):
    run, _, _ = _run(tmp_path)
    with pytest.raises(ValueError, match="not a Hugging Face Hub id"):
        export_adapter(run, tmp_path / "export", push_ready=True)
    assert not (tmp_path / "export").exists()
    # without --push-ready the local folder is fine (and the card is still in the Hub format)
    out = export_adapter(run, tmp_path / "export")
    assert (out / "README.md").read_text().startswith("---\n")


def test_exported_pissa_adapter_meets_vllm_format_rules(tmp_path):
    run, _, _ = _run(tmp_path, r=4)
    out = export_adapter(run, tmp_path / "export")
    assert vllm_adapter_problems(out, max_lora_rank=16) == []
    # the PiSSA export doubles the rank: r = 16 trains, 32 is served
    run16, _, _ = _run(tmp_path, r=16)
    out16 = export_adapter(run16, tmp_path / "export16")
    problems = vllm_adapter_problems(out16, max_lora_rank=16)
    assert len(problems) == 1 and "--max-lora-rank 32" in problems[0]
    assert vllm_adapter_problems(out16, max_lora_rank=32) == []


def test_vllm_rules_name_what_vllm_refuses(tmp_path):
    run, _, _ = _run(tmp_path, method="dora+reg")
    out = export_adapter(run, tmp_path / "export")
    assert any("DoRA" in p for p in vllm_adapter_problems(out))
    from safetensors.torch import load_file, save_file

    state = load_file(str(out / "adapter_model.safetensors"))
    key = next(iter(state))
    state[key.replace(".weight", ".default.weight")] = state.pop(key)  # an adapter name inside the key
    save_file(state, str(out / "adapter_model.safetensors"))
    assert any("not a LoRA weight vLLM can parse" in p for p in vllm_adapter_problems(out))


def test_loads_in_vllm(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installable here: vllm 0.33.0 requires torch==2.14.0 and CUDA "
                                       "(balora's CPU environment pins torch 2.13); the format rules are tested above")
    from balora.serving import load_in_vllm  # pragma: no cover - needs vLLM + CUDA

    run, base_dir, _ = _run(tmp_path)
    out = export_adapter(run, tmp_path / "export")
    engine, request = load_in_vllm(str(base_dir), out)
    assert engine.generate(["w1 w2"], lora_request=request)
