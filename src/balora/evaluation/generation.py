"""Batched greedy generation (and seeded sampling, :func:`sample`) with transformers (optionally vLLM).

Prompt formatting (:func:`format_prompt`):

* ``use_chat_template="auto"`` (default): the tokenizer's chat template when it has one
  (one user turn, generation prompt added), otherwise :data:`PLAIN_TEMPLATE`;
* ``True``: the chat template (error if the tokenizer has none); ``False``: the raw prompt,
  for completion-style tasks such as HumanEval.

:data:`PLAIN_TEMPLATE` is the plain instruction layout of :mod:`balora.data.templates`
(``### Instruction:`` / ``### Response:``), the one balora's instruction tuning trains with, so a
fine-tuned base model without a chat template is prompted the way it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

from ..data.templates import PLAIN_INSTRUCTION_HEADER, PLAIN_RESPONSE_HEADER, PLAIN_TURN_SEPARATOR

# The plain template is the one balora's instruction tuning trains with (balora.data.templates), so a
# fine-tuned model without a chat template is prompted exactly the way it was trained.
PLAIN_TEMPLATE = f"{PLAIN_INSTRUCTION_HEADER}{{prompt}}{PLAIN_TURN_SEPARATOR}{PLAIN_RESPONSE_HEADER}"


@dataclass
class GenerationOptions:
    """Options of :func:`generate` (greedy decoding)."""

    max_new_tokens: int = field(default=512, metadata={"help": "Maximum number of generated tokens per prompt."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    stop_sequences: tuple[str, ...] = field(
        default=(), metadata={"help": "Strings that end a completion (generation stops; text is cut there)."})
    use_chat_template: Union[bool, str] = field(
        default="auto", metadata={"help": "'auto' (chat template if the tokenizer has one, else the plain "
                                          "Alpaca template), True, or False (raw prompt)."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Optional system message (chat template)."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.use_chat_template not in (True, False, "auto"):
            raise ValueError(f"use_chat_template must be True, False or 'auto', got {self.use_chat_template!r}")
        self.stop_sequences = tuple(self.stop_sequences)
        if any(not s for s in self.stop_sequences):
            raise ValueError(f"stop_sequences must be non-empty strings, got {self.stop_sequences!r}")


def format_prompt(tokenizer, prompt: str, use_chat_template: Union[bool, str] = "auto",  # noqa: ANN001
                  system_prompt: Optional[str] = None) -> str:
    """Text fed to the model for ``prompt`` (see the module docstring for the rules)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is True and not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
    if use_chat_template is False:
        return prompt
    if has_template:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system_prompt}{PLAIN_TURN_SEPARATOR}" if system_prompt else ""
    return prefix + PLAIN_TEMPLATE.format(prompt=prompt)


def truncate_at_stop(text: str, stop_sequences: Iterable[str]) -> str:
    """``text`` up to the earliest stop sequence (generation may overshoot within a batch)."""
    cut = len(text)
    for stop in stop_sequences:
        idx = text.find(stop)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut]


def generate(model, tokenizer, prompts: Sequence[str], options: Optional[GenerationOptions] = None) -> list[str]:  # noqa: ANN001
    """Greedy completions for already-formatted ``prompts`` (use :func:`format_prompt` first).

    Batches are left-padded; prompts are processed longest first to reduce padding and the
    outputs are returned in input order, cut at the stop sequences.
    """
    opts = options or GenerationOptions()
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return [texts[0] for texts in _run_batches(model, tokenizer, prompts, opts, greedy, 1)]


def sample(model, tokenizer, prompts: Sequence[str], options: Optional[GenerationOptions] = None, *,  # noqa: ANN001
           samples: int = 4, temperature: float = 0.7, seed: int = 0) -> list[list[str]]:
    """``samples`` sampled completions per formatted prompt (plain temperature sampling: no top-k / top-p cut).

    Seeded: the draws run under a forked torch random state seeded with ``seed`` (the caller's random state is
    left as it was), so the same model, prompts, batch size and seed give the same samples."""
    import torch

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    opts = options or GenerationOptions()
    kwargs = dict(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0, num_return_sequences=samples)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                               device_type="cuda" if device.type == "cuda" else "cpu"):
        torch.manual_seed(seed)
        return _run_batches(model, tokenizer, prompts, opts, kwargs, samples)


def _run_batches(model, tokenizer, prompts: Sequence[str], opts: GenerationOptions, decoding: dict,  # noqa: ANN001
                 per_prompt: int) -> list[list[str]]:
    """``per_prompt`` completions of every prompt with ``model.generate(**decoding)`` (left-padded batches,
    longest prompts first, outputs in input order, cut at the stop sequences)."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[str]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen_kwargs = dict(max_new_tokens=opts.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **decoding)
    if opts.stop_sequences:
        gen_kwargs.update(stop_strings=list(opts.stop_sequences), tokenizer=tokenizer)
    try:
        bar = tqdm(total=len(prompts), desc="generate", disable=not opts.progress)
        for start in range(0, len(order), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, text in enumerate(texts):  # generate returns a prompt's sequences next to each other
                outputs[idx[row // per_prompt]].append(truncate_at_stop(text, opts.stop_sequences))
            bar.update(len(idx))
        bar.close()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def vllm_available() -> bool:
    """Whether the optional ``vllm`` package can be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def generate_vllm(model_path: str, prompts: Sequence[str], options: Optional[GenerationOptions] = None,
                  adapter_path: Optional[str] = None, **llm_kwargs) -> list[str]:
    """Greedy completions with vLLM (only when ``vllm`` is installed: ``pip install balora[vllm]``).

    ``adapter_path`` is served as a LoRA adapter (merge PiSSA adapters first with balora's export).
    """
    if not vllm_available():
        raise ImportError("the vLLM backend needs the optional 'vllm' package (pip install vllm)")
    from vllm import LLM, SamplingParams

    opts = options or GenerationOptions()
    llm = LLM(model=model_path, enable_lora=adapter_path is not None, **llm_kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=opts.max_new_tokens, stop=list(opts.stop_sequences) or None)
    lora = None
    if adapter_path is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, adapter_path)
    results = llm.generate(list(prompts), params, lora_request=lora)
    return [truncate_at_stop(r.outputs[0].text, opts.stop_sequences) for r in results]
