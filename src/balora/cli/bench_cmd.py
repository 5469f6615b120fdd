"""`balora bench <kind> ...`: resumable benchmark sweeps (one JSON line per finished run).

``balora bench nlu`` lives here. Further kinds plug in without touching this file: a module
``balora.bench.<kind>_cli`` (for now ``nlg_cli`` and ``overhead_cli`` are looked for) exposing
``register(bench_subparsers)`` is imported when present and adds its own sub-command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

# Optional sub-commands of `balora bench`, each a module exposing register(bench_subparsers).
PLUGINS = ("balora.bench.nlg_cli", "balora.bench.overhead_cli")

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
    "--ood-root": ("ood_root", {}),
    "--results": ("results", {}),
    "--out-dir": ("out_dir", {}),
    "--threads": ("threads", dict(type=int)),
    "--shard": ("shard", {}),
}
_NLU_SWITCHES = {"--ood": "ood", "--keep-adapters": "keep_adapters", "--progress": "progress"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark sweeps (bench nlu: GLUE grid -> results.jsonl, resumable)",
                       description="Run a grid of trainings, one at a time, appending one JSON line per finished "
                                   "run; runs already in the results file are skipped, so a killed sweep resumes. "
                                   "Tables and plots: balora report RESULTS.jsonl.")
    bench_sub = p.add_subparsers(dest="bench_kind", metavar="KIND")
    _register_nlu(bench_sub)
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(bench_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _register_nlu(bench_sub: argparse._SubParsersAction) -> None:
    from ..bench.nlu import NLUBenchConfig

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(NLUBenchConfig)}
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(NLUBenchConfig)}
    p = bench_sub.add_parser("nlu", help="GLUE grid: models x methods x tasks x seeds",
                             description="GLUE sweep with run_nlu. Flags override the --config YAML, which "
                                         "overrides the defaults shown; per-task settings go in its per_task "
                                         "section (see configs/nlu/).")
    p.add_argument("--config", help="YAML sweep file (keys = the long flags with _ for -, plus per_task)")
    for flag, (name, kw) in _NLU_FLAGS.items():
        p.add_argument(flag, dest=name, default=None, help=f"{helps[name]} (default: {defaults[name]})", **kw)
    for flag, name in _NLU_SWITCHES.items():
        p.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=helps[name])
    p.add_argument("--stop-on-error", action="store_true", help="stop the sweep at the first failing run")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")
    p.set_defaults(func=run_nlu_bench)


def run_nlu_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the GLUE grid and print the summary table of its results."""
    from ..bench.nlu import NLUBenchConfig, load_bench_config, make_nlu_run_fn, nlu_specs
    from ..bench.report import markdown_tables, summarize
    from ..bench.runner import done_keys, read_results, run_grid

    names = [f.name for f in dataclasses.fields(NLUBenchConfig)]
    cfg = load_bench_config(args.config, {n: getattr(args, n, None) for n in names})
    specs = nlu_specs(cfg)
    if args.dry_run:
        done = done_keys(cfg.results)
        todo = [s for s in specs if s.key() not in done]
        for s in todo:
            print(f"{s.model}\t{s.method}\t{s.task}\tseed {s.seed}")
        print(f"{len(todo)} of {len(specs)} runs to do ({cfg.results})")
        return 0
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    summary = run_grid(specs, make_nlu_run_fn(cfg), cfg.results, cfg.out_dir, keep_outputs=cfg.keep_adapters,
                       stop_on_error=args.stop_on_error)
    keys = {s.key() for s in nlu_specs(dataclasses.replace(cfg, shard="0/1"))}  # the whole grid, every shard
    records = [r for r in read_results(cfg.results) if r["key"] in keys]
    print(f"\n{len(summary.ran)} run(s) done, {len(summary.skipped)} already recorded, {len(summary.failed)} failed "
          f"in {summary.seconds / 60:.1f} min; results: {cfg.results}")
    if records:
        print(markdown_tables(summarize(records)))
    for spec, err in summary.failed:
        print(f"FAILED {spec.slug()}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0
