"""``balora eval``: generate with a (fine-tuned) causal LM on a benchmark and score it.

Example::

    balora eval --task gsm8k --model meta-llama/Llama-2-7b-hf --adapter runs/ba-lora \\
        --data ../shared/data/gsm8k/test.jsonl --limit 100 --out runs/eval
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

TASK_CHOICES = ("gsm8k", "math", "math500", "humaneval", "mbpp", "mt-bench")


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to ``subparsers`` and return its parser."""
    p = subparsers.add_parser("eval", help="Evaluate a model (+ adapter) on GSM8K, MATH, HumanEval, MBPP or MT-Bench.",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASK_CHOICES, help="Benchmark to run.")
    p.add_argument("--model", required=True, help="Base model folder or Hub name.")
    p.add_argument("--adapter", default=None, help="peft adapter folder to load on top of --model.")
    p.add_argument("--data", required=True,
                   help="Benchmark data: local file/folder (e.g. gsm8k/test.jsonl, HumanEval.jsonl.gz, the MT-Bench "
                        "folder) or a Hub dataset name.")
    p.add_argument("--limit", type=int, default=None, help="Evaluate only the first N examples.")
    p.add_argument("--batch-size", type=int, default=8, help="Prompts per generation batch.")
    p.add_argument("--max-new-tokens", type=int, default=512, help="Maximum generated tokens per prompt.")
    p.add_argument("--chat-template", choices=("auto", "yes", "no"), default=None,
                   help="Use the tokenizer's chat template (default: task default; 'auto' = when present).")
    p.add_argument("--out", default="eval_out", help="Output folder for generations JSONL and summary JSON.")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="Weights dtype when loading the model.")
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm"),
                   help="Generation backend (vllm only when the optional package is installed).")
    p.add_argument("--timeout", type=float, default=10.0, help="Per-sample time limit for code execution (s).")
    p.add_argument("--workers", type=int, default=2, help="Parallel code-execution workers.")
    p.add_argument("--judge-url", default=None, help="MT-Bench judge base URL (or env BALORA_JUDGE_URL).")
    p.add_argument("--judge-model", default=None, help="MT-Bench judge model (or env BALORA_JUDGE_MODEL).")
    p.set_defaults(func=run)
    return p


def load_model_and_tokenizer(model_name: str, adapter: Optional[str], device: str, dtype: str):  # noqa: ANN201
    """Load a causal LM + tokenizer with transformers, and the peft adapter when given."""
    import torch
    from transformers import AutoTokenizer

    from ..models import load_base_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(adapter if adapter and _has_tokenizer(adapter) else model_name)
    model = load_base_model(model_name, "nlg", dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval(), tokenizer


def _has_tokenizer(folder: str) -> bool:
    from pathlib import Path

    return (Path(folder) / "tokenizer_config.json").is_file()


def format_summary(summary: dict) -> str:
    """A two-column text table of the summary."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in summary.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the process exit code."""
    from balora.evaluation.mtbench import JudgeConfig, JudgeNotConfigured
    from balora.evaluation.tasks import evaluate_model

    judge = None
    if args.task == "mt-bench":
        try:
            judge = JudgeConfig.resolve(url=args.judge_url, model=args.judge_model)
        except JudgeNotConfigured as exc:
            print(f"balora eval: {exc}", file=sys.stderr)
            return 2
    template = {None: None, "auto": "auto", "yes": True, "no": False}[args.chat_template]
    if args.backend == "vllm":
        from transformers import AutoTokenizer

        model, tokenizer = args.model, AutoTokenizer.from_pretrained(args.model)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model, args.adapter, args.device, args.dtype)
    summary = evaluate_model(
        args.task, model, tokenizer, args.data, args.out, limit=args.limit, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, use_chat_template=template, timeout_s=args.timeout,
        workers=args.workers, judge=judge, backend=args.backend, adapter_path=args.adapter,
    )
    print(format_summary(summary))
    return 0
