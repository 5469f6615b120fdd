"""`balora bench <kind> ...`: resumable benchmark sweeps (one JSON line per finished run).

``balora bench nlu`` lives here; the kinds (nlu, nlg, overhead) are listed in ``balora.cli.main.BENCH_KINDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Sequence

from ..bench.cli_args import add_config_flags, config_values, finish, print_todo, set_threads, sweep_device

# CLI flag -> NLUBenchConfig field, for the flags whose help text is the field's metadata (written once there).
_NLU_FLAGS = {
    "--models": ("models", dict(nargs="+")),
    "--methods": ("methods", dict(nargs="+")),
    "--tasks": ("tasks", dict(nargs="+")),
    "--seeds": ("seeds", dict(type=int)),
    "--glue-dir": ("glue_dir", {}),
    "--train-limit": ("train_limit", dict(type=int)),
    "--eval-limit": ("eval_limit", dict(type=int)),
    "--epochs": ("epochs", dict(type=float)),
    "--max-steps": ("max_steps", dict(type=int)),
    "--batch-size": ("batch_size", dict(type=int)),
    "--eval-batch-size": ("eval_batch_size", dict(type=int)),
    "--lr": ("lr", dict(type=float)),
    "--warmup-ratio": ("warmup_ratio", dict(type=float)),
    "--r": ("r", dict(type=int)),
    "--alpha": ("alpha", dict(type=float)),
    "--max-length": ("max_length", dict(type=int)),
    "--pooling": ("pooling", dict(choices=["auto", "cls", "mean", "last"])),
    "--head-warmup": ("head_warmup", dict(choices=["logreg", "none"])),
    "--pair-encoding": ("pair_encoding", dict(choices=["cross", "siamese"])),
    "--ood-root": ("ood_root", {}),
    "--results": ("results", {}),
    "--out-dir": ("out_dir", {}),
    "--threads": ("threads", dict(type=int)),
    "--shard": ("shard", {}),
}
_NLU_SWITCHES = {"--ood": "ood", "--keep-adapters": "keep_adapters", "--progress": "progress"}


def register(sub: argparse._SubParsersAction, kinds: Sequence[Callable[[Any], Any]] = ()) -> None:
    """Add `balora bench`; each of ``kinds`` (``register(bench_subparsers)``) adds one `balora bench KIND`."""
    p = sub.add_parser("bench", help="benchmark sweeps (bench nlu: GLUE grid -> results.jsonl, resumable)",
                       description="Run a grid of trainings, one at a time, appending one JSON line per finished "
                                   "run; runs already in the results file are skipped, so a killed sweep resumes. "
                                   "Tables and plots: balora report RESULTS.jsonl.")
    bench_sub = p.add_subparsers(dest="bench_kind", metavar="KIND")
    for register_kind in kinds:
        register_kind(bench_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def register_nlu(bench_sub: argparse._SubParsersAction) -> None:
    from ..bench.nlu import NLUBenchConfig

    p = bench_sub.add_parser("nlu", help="GLUE grid: models x methods x tasks x seeds",
                             description="GLUE sweep with run_nlu. Flags override the --config YAML, which "
                                         "overrides the defaults shown; per-task settings go in its per_task "
                                         "section (see configs/nlu/).")
    p.add_argument("--config", help="YAML sweep file (keys = the long flags with _ for -, plus per_task)")
    add_config_flags(p, NLUBenchConfig, _NLU_FLAGS, _NLU_SWITCHES)
    p.set_defaults(func=run_nlu_bench)


def run_nlu_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the GLUE grid and print the summary table of its results."""
    from ..bench.nlu import NLUBenchConfig, load_bench_config, make_nlu_run_fn, nlu_specs
    from ..reports import markdown_report
    from ..bench.runner import run_grid

    cfg = load_bench_config(args.config, config_values(args, NLUBenchConfig))
    specs = nlu_specs(cfg)
    if args.dry_run:
        return print_todo(specs, cfg.results)
    set_threads(cfg.threads)
    summary = run_grid(specs, make_nlu_run_fn(cfg), cfg.results, cfg.out_dir, keep_outputs=cfg.keep_adapters,
                       stop_on_error=args.stop_on_error, device=sweep_device())
    keys = {s.key() for s in nlu_specs(dataclasses.replace(cfg, shard="0/1"))}  # the whole grid, every shard
    return finish(summary, cfg.results, keys, markdown_report)
