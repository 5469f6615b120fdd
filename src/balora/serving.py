"""Serving an exported adapter: the checks vLLM applies when it loads a LoRA adapter, without vLLM.

vLLM (the optional generation backend) cannot be installed in balora's CPU environment: vLLM 0.33.0 requires
torch==2.14.0 and CUDA builds (checked with ``pip install --dry-run --no-deps vllm==0.33.0 --report``), while
balora pins torch 2.13 CPU. So the exported files are checked here against the rules vLLM's LoRA loader
applies (hand-written from vLLM's ``vllm/lora/peft_helper.py`` and ``vllm/lora/utils.py``; where vLLM is
installed, :func:`load_in_vllm` loads the adapter for real):

* ``adapter_config.json`` has ``r``, ``lora_alpha``, ``target_modules`` (PEFTHelper's required fields); no DoRA
  (``use_dora``), ``bias: none``, no ``modules_to_save`` (classification heads: vLLM serves generation LoRA);
* ``r`` fits the engine's ``--max-lora-rank`` (one of 1, 8, 16, 32, 64, 128, 256, 320, 512). A PiSSA export has
  rank ``2r`` (``[B, -B0] [A; A0]``): training with r = 8 serves under vLLM's default 16, r = 16 needs 32;
* ``rank_pattern`` / ``alpha_pattern`` are not read by vLLM (it uses one ``lora_alpha / r`` for all layers):
  an adapter with them would be served with wrong scalings;
* every tensor in ``adapter_model.safetensors`` is ``base_model.model.<module>.lora_A.weight`` or ``.lora_B.weight``
  (no adapter name inside the key, no other tensors), with ``lora_A`` of shape ``(r, in)`` and ``lora_B``
  ``(out, r)``;
* the adapted modules are ones the architecture's vLLM implementation exposes to LoRA (for Llama-family models:
  the attention and MLP projections; vLLM packs q/k/v and gate/up itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLLM_RANKS, vllm_rank_flag

# The LoRA-capable linear layers of vLLM's Llama / Mistral / Qwen2 implementations (by their HF names).
LLAMA_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def vllm_adapter_problems(adapter_dir: str | Path, max_lora_rank: int = 16,
                          supported_modules: Optional[tuple[str, ...]] = LLAMA_LORA_MODULES) -> list[str]:
    """What would make vLLM refuse (or mis-serve) the adapter in ``adapter_dir``; empty when it is servable."""
    from safetensors import safe_open

    folder = Path(adapter_dir)
    problems: list[str] = []
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        return [f"{folder}: needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"]
    config = json.loads(config_path.read_text())
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        problems.append(f"{ADAPTER_CONFIG}: missing required field(s) {missing}")
    if config.get("use_dora"):
        problems.append(f"{ADAPTER_CONFIG}: use_dora is true (vLLM does not support DoRA)")
    if config.get("bias", "none") != "none":
        problems.append(f"{ADAPTER_CONFIG}: bias {config['bias']!r} (vLLM needs 'none' unless bias_enabled)")
    if config.get("modules_to_save"):
        problems.append(f"{ADAPTER_CONFIG}: modules_to_save {config['modules_to_save']} (vLLM supports none)")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{ADAPTER_CONFIG}: {key} is set; vLLM ignores it and would scale every layer by "
                            "lora_alpha / r")
    r = config.get("r")
    if isinstance(r, int) and r > max_lora_rank:
        problems.append(f"{ADAPTER_CONFIG}: r = {r} is greater than max_lora_rank {max_lora_rank}: start vLLM with "
                        f"--max-lora-rank {vllm_rank_flag(r)}")
    if max_lora_rank not in VLLM_RANKS:
        problems.append(f"max_lora_rank {max_lora_rank} is not one of vLLM's {VLLM_RANKS}")
    modules = set()
    with safe_open(str(weights_path), framework="pt") as fh:
        for key in fh.keys():
            parts = key.split(".")
            if parts[:2] != ["base_model", "model"] or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
                problems.append(f"{ADAPTER_WEIGHTS}: {key!r} is not a LoRA weight vLLM can parse "
                                "(base_model.model.<module>.lora_A|lora_B.weight)")
                continue
            shape = fh.get_slice(key).get_shape()
            rank_dim = shape[0] if parts[-2] == "lora_A" else shape[1]
            if isinstance(r, int) and rank_dim != r:
                problems.append(f"{ADAPTER_WEIGHTS}: {key} has rank {rank_dim}, the config says r = {r}")
            modules.add(parts[-3])
    if supported_modules is not None:
        odd = sorted(modules - set(supported_modules))
        if odd:
            problems.append(f"adapted modules {odd} are not LoRA targets of vLLM's implementation "
                            f"(supported: {list(supported_modules)})")
    return problems


def load_in_vllm(base_model: str, adapter_dir: str | Path, max_lora_rank: int = 16):  # pragma: no cover - needs vLLM
    """Load ``adapter_dir`` on ``base_model`` in vLLM (where installed) and return (engine, LoRARequest)."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    engine = LLM(model=base_model, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    return engine, LoRARequest("balora", 1, str(adapter_dir))


__all__ = ["vllm_adapter_problems", "load_in_vllm", "LLAMA_LORA_MODULES"]
