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
import dataclasses
import sys

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
    "--threads": ("threads", dict(type=int)),
}
_ALIASES = {"--eval-tasks": ("--eval-task",)}
_SWITCHES = {"--base": "base", "--keep-adapters": "keep_adapters", "--progress": "progress"}


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``nlg`` to the sub-commands of ``balora bench``."""
    from .nlg import NLGBenchConfig

    fields = {f.name: f for f in dataclasses.fields(NLGBenchConfig)}

    def default(name: str) -> object:
        f = fields[name]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    p = bench_sub.add_parser("nlg", help="instruction tuning grid: methods x seeds, scored on GSM8K/MATH/code/MT-Bench",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML sweep file (keys = the long flags with _ for -)")
    for flag, (name, kw) in _FLAGS.items():
        p.add_argument(flag, *_ALIASES.get(flag, ()), dest=name, default=None, help=f"{fields[name].metadata['help']} (default: {default(name)})",
                       **kw)
    for flag, name in _SWITCHES.items():
        p.add_argument(flag, dest=name, action="store_const", const=True, default=None,
                       help=fields[name].metadata["help"])
    p.add_argument("--stop-on-error", action="store_true", help="stop the sweep at the first failing run")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")
    p.add_argument("--report", action="store_true", help="print the table from the results file and exit")
    p.set_defaults(func=run_nlg_bench)


def run_nlg_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the NLG grid and print its table."""
    from .nlg import NLGBenchConfig, load_nlg_bench_config, make_nlg_run_fn, nlg_specs, nlg_table
    from .runner import done_keys, read_results, run_grid

    names = [f.name for f in dataclasses.fields(NLGBenchConfig)]
    cfg = load_nlg_bench_config(args.config, {n: getattr(args, n, None) for n in names})
    specs = nlg_specs(cfg)
    keys = {s.key() for s in specs}
    if args.dry_run or args.report:
        if args.report:
            print(nlg_table([r for r in read_results(cfg.results) if r["key"] in keys]))
            return 0
        done = done_keys(cfg.results)
        todo = [s for s in specs if s.key() not in done]
        for s in todo:
            print(f"{s.model}\t{s.method}\t{s.task}\tseed {s.seed}")
        print(f"{len(todo)} of {len(specs)} runs to do ({cfg.results})")
        return 0
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    summary = run_grid(specs, make_nlg_run_fn(cfg), cfg.results, cfg.out_dir, keep_outputs=cfg.keep_adapters,
                       stop_on_error=args.stop_on_error, device=device)
    records = [r for r in read_results(cfg.results) if r["key"] in keys]
    print(f"\n{len(summary.ran)} run(s) done, {len(summary.skipped)} already recorded, {len(summary.failed)} failed "
          f"in {summary.seconds / 60:.1f} min; results: {cfg.results}")
    if records:
        print(nlg_table(records))
    for spec, err in summary.failed:
        print(f"FAILED {spec.slug()}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0
