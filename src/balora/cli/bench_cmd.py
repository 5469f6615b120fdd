"""`balora bench nlu` / `balora bench nlg`: resumable benchmark sweeps over the run config (one JSON line per
finished run); the kinds are listed in ``balora.cli.main.BENCH_KINDS``.

Each kind's flags come from its options dataclass (:class:`balora.bench.nlu.NLUBenchOptions`,
:class:`balora.bench.nlg.NLGBenchOptions`) and from the sweep's results / output / shard fields
(:class:`balora.bench.sweep.SweepConfig`); run settings are ``--section.key value`` overrides
(``--train.lr 1e-3 --method.r 16``) of the ``--config`` file's run sections. Example (the CPU run of
docs/results/gsm8k_smollm2_cpu.md)::

    balora bench nlg --model.name_or_path DIR --methods lora pissa ba-lora --data.train train.jsonl \\
        --data.train_limit 400 --train.max_steps 80 --evals '{task: gsm8k, data: test.jsonl, limit: 120}' \\
        --seeds 1 --base --results docs/results/gsm8k_smollm2_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .flags import add_dataclass_flags, given_values

#: The SweepConfig fields a bench command takes as flags.
SWEEP_FLAGS = ("results", "out_dir", "keep_outputs", "shard")


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


def _common_flags(p: argparse.ArgumentParser, options: type) -> None:
    from ..bench.sweep import SweepConfig

    p.add_argument("--config", help="YAML sweep file: run config sections, a bench: section (the options below) "
                                    "and an optional sweep: section")
    add_dataclass_flags(p, options)
    add_dataclass_flags(p, SweepConfig, skip=set(f for f in SweepConfig.__dataclass_fields__) - set(SWEEP_FLAGS))
    p.add_argument("--stop-on-error", action="store_true", help="stop the sweep at the first failing run")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")


def register_nlu(bench_sub: argparse._SubParsersAction) -> None:
    from ..bench.nlu import NLUBenchOptions

    p = bench_sub.add_parser("nlu", help="GLUE grid: models x methods x tasks x seeds",
                             description="GLUE sweep with run_nlu. Flags override the --config file's bench: section; "
                                         "run settings are --section.key value (e.g. --train.lr 1e-3); per-task "
                                         "settings go in per_task (see configs/nlu/).")
    _common_flags(p, NLUBenchOptions)
    p.set_defaults(func=run_nlu_bench, accepts_overrides=True)


def register_nlg(bench_sub: argparse._SubParsersAction) -> None:
    from ..bench.nlg import NLGBenchOptions

    p = bench_sub.add_parser("nlg", help="instruction tuning grid: methods x seeds, scored on GSM8K/MATH/code/MT-Bench",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_flags(p, NLGBenchOptions)
    p.add_argument("--report", action="store_true", help="print the table from the results file and exit")
    p.set_defaults(func=run_nlg_bench, accepts_overrides=True)


def _sweep_values(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in SWEEP_FLAGS and v is not None}


def run_nlu_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the GLUE grid and print the summary table of its results."""
    import dataclasses

    from ..bench.nlu import NLUBenchOptions, glue_task_of, make_nlu_cell_fn, nlu_sweep
    from ..bench.sweep import expand, load_options, result_keys, run_sweep
    from ..reports import markdown_report

    opts = load_options(NLUBenchOptions, args.config, "bench", given_values(args, NLUBenchOptions))
    sweep = nlu_sweep(opts, args.config, args.overrides, _sweep_values(args))
    cells = expand(sweep, task_fn=glue_task_of)
    if args.dry_run:
        return print_todo([c.spec for c in cells], sweep.results)
    set_threads(opts.threads)
    summary = run_sweep(sweep, make_nlu_cell_fn(opts, sweep.keep_outputs), stop_on_error=args.stop_on_error,
                        cells=cells, subdir=False)
    keys = result_keys(summary, expand(dataclasses.replace(sweep, shard="0/1"), task_fn=glue_task_of))
    return finish(summary, sweep.results, keys, markdown_report)  # the whole grid, every shard (untuned)


def run_nlg_bench(args: argparse.Namespace) -> int:
    """Run (or resume) the NLG grid and print its table."""
    from ..bench.nlg import NLGBenchOptions, make_nlg_cell_fn, nlg_cells, nlg_sweep
    from ..bench.runner import read_results
    from ..bench.sweep import load_options, result_keys, run_sweep
    from ..reports import markdown_report

    opts = load_options(NLGBenchOptions, args.config, "bench", given_values(args, NLGBenchOptions))
    sweep = nlg_sweep(opts, args.config, args.overrides, _sweep_values(args))
    cells = nlg_cells(opts, sweep)
    keys = {c.spec.key() for c in cells}
    if args.report:
        print(markdown_report([r for r in read_results(sweep.results) if r["key"] in keys]))
        return 0
    if args.dry_run:
        return print_todo([c.spec for c in cells], sweep.results)
    set_threads(opts.threads)
    summary = run_sweep(sweep, make_nlg_cell_fn(opts, sweep.results, sweep.keep_outputs),
                        stop_on_error=args.stop_on_error, cells=cells, subdir=False)
    return finish(summary, sweep.results, result_keys(summary, cells), markdown_report)


def print_todo(specs: Sequence[Any], results: str) -> int:
    """The dry run: list the runs not yet in the results file."""
    from ..bench.runner import done_keys

    done = done_keys(results)
    todo = [s for s in specs if s.key() not in done]
    for s in todo:
        print(f"{s.model}\t{s.method}\t{s.task}\tseed {s.seed}")
    print(f"{len(todo)} of {len(specs)} runs to do ({results})")
    return 0


def set_threads(threads: Any) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def finish(summary: Any, results: str, keys: set, table: Callable[[list[dict]], str]) -> int:
    """Print the sweep's counts and the table of its recorded runs; exit code 1 if any run failed."""
    from ..bench.runner import read_results

    records = [r for r in read_results(results) if r["key"] in keys]
    print(f"\n{len(summary.ran)} run(s) done, {len(summary.skipped)} already recorded, {len(summary.failed)} failed "
          f"in {summary.seconds / 60:.1f} min; results: {results}")
    if records:
        print(table(records))
    for spec, err in summary.failed:
        print(f"FAILED {spec.slug()}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0
