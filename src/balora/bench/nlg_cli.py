"""``balora bench nlg``: fine-tune a causal LM with several methods and score it on generation benchmarks.

Example (the CPU run of docs/results/gsm8k_smollm2_cpu.md)::

    balora bench nlg --model DIR --methods lora pissa ba-lora --train ../shared/data/gsm8k/train.jsonl \\
        --train-limit 400 --max-steps 80 --eval-tasks gsm8k --eval-data ../shared/data/gsm8k/test.jsonl \\
        --eval-limit 120 --seeds 1 --base --results docs/results/gsm8k_smollm2_cpu.jsonl

One JSON line per finished run is appended to ``--results``; runs already there are skipped, so a killed
sweep resumes where it stopped. The table (paper Table 1 layout) is printed at the end; ``--report`` prints
it from the results file alone.
"""

from __future__ import annotations

import argparse

from .cli_args import add_config_flags, config_values, finish, print_todo, set_threads, sweep_device

# CLI flag -> (NLGBenchConfig field, argparse keywords); help texts come from the fields' metadata.
_FLAGS = {
    "--model": ("model", {}),
    "--methods": ("methods", dict(nargs="+")),
    "--train": ("train", {}),
    "--train-name": ("train_name", {}),
    "--train-format": ("train_format", {}),
    "--train-limit": ("train_limit", dict(type=int)),
    "--eval-tasks": ("eval_tasks", dict(nargs="+")),
    "--eval-data": ("eval_data", dict(nargs="+")),
    "--eval-limit": ("eval_limit", dict(type=int)),
    "--seeds": ("seeds", dict(type=int)),
    "--epochs": ("epochs", dict(type=float)),
    "--max-steps": ("max_steps", dict(type=int)),
    "--batch-size": ("batch_size", dict(type=int)),
    "--grad-accum": ("grad_accum", dict(type=int)),
    "--lr": ("lr", dict(type=float)),
    "--scheduler": ("scheduler", {}),
    "--warmup-ratio": ("warmup_ratio", dict(type=float)),
    "--r": ("r", dict(type=int)),
    "--alpha": ("alpha", dict(type=float)),
    "--pissa-niter": ("pissa_niter", dict(type=int)),
    "--max-length": ("max_length", dict(type=int)),
    "--dtype": ("dtype", dict(choices=("float32", "bfloat16", "float16"))),
    "--eval-batch-size": ("eval_batch_size", dict(type=int)),
    "--max-new-tokens": ("max_new_tokens", dict(type=int)),
    "--results": ("results", {}),
    "--out-dir": ("out_dir", {}),
    "--generations-dir": ("generations_dir", {}),
    "--threads": ("threads", dict(type=int)),
}
_ALIASES = {"--eval-tasks": ("--eval-task",)}
_SWITCHES = {"--base": "base", "--keep-adapters": "keep_adapters", "--progress": "progress"}


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``nlg`` to the sub-commands of ``balora bench``."""
    from .nlg import NLGBenchConfig

    p = bench_sub.add_parser("nlg", help="instruction tuning grid: methods x seeds, scored on GSM8K/MATH/code/MT-Bench",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML sweep file (keys = the long flags with _ for -)")
    add_config_flags(p, NLGBenchConfig, _FLAGS, _SWITCHES, _ALIASES)
    p.add_argument("--report", action="store_true", help="print the table from the results file and exit")
    p.set_defaults(func=run_nlg_bench)


def run_nlg_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the NLG grid and print its table."""
    from ..reports import markdown_report
    from .nlg import NLGBenchConfig, load_nlg_bench_config, make_nlg_run_fn, nlg_specs
    from .runner import read_results, run_grid

    cfg = load_nlg_bench_config(args.config, config_values(args, NLGBenchConfig))
    specs = nlg_specs(cfg)
    keys = {s.key() for s in specs}
    if args.report:
        print(markdown_report([r for r in read_results(cfg.results) if r["key"] in keys]))
        return 0
    if args.dry_run:
        return print_todo(specs, cfg.results)
    set_threads(cfg.threads)
    summary = run_grid(specs, make_nlg_run_fn(cfg), cfg.results, cfg.out_dir, keep_outputs=cfg.keep_adapters,
                       stop_on_error=args.stop_on_error, device=sweep_device())
    return finish(summary, cfg.results, keys, markdown_report)
