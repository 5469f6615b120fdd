"""`balora analyze KIND`: the paper's analyses as resumable sweeps with a report and plots."""

from __future__ import annotations

import argparse
import shlex


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.analyses import ANALYSES

    p = sub.add_parser("analyze", help="ablation, adapters, rank, lambda, geometry, noise, cost, adaptive analyses",
                       description="Run one analysis as a sweep around a run config (the file's run sections plus "
                                   "optional 'analysis:' and 'sweep:' sections; see docs/analyses.md and "
                                   "configs/analyses/). Records are appended to <out>/records.jsonl (a rerun skips "
                                   "finished runs); <out>/report.md holds the command, tables, paired bootstrap "
                                   "intervals, collapse flags and plots.")
    kinds = p.add_subparsers(dest="analysis", metavar="KIND")
    for name, text in ANALYSES.items():
        k = kinds.add_parser(name, help=text.replace("%", "%%"), description=text.replace("%", "%%"))
        k.add_argument("--config", help="YAML: run config sections + optional analysis: and sweep: sections")
        k.add_argument("--out", help="output folder (default results/analyses/<kind>)")
        k.add_argument("--seeds", type=int, nargs="+", help="seeds (overrides analysis.seeds)")
        k.add_argument("--report-only", action="store_true", help="rewrite the report from the records, run nothing")
        k.add_argument("--threads", type=int, help="torch CPU threads")
        k.set_defaults(func=run, accepts_overrides=True)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from ..bench.analyses import run_analysis

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    parts = ["balora", "analyze", args.analysis]
    for flag, value in (("--config", args.config), ("--out", args.out), ("--threads", args.threads)):
        if value is not None:
            parts += [flag, str(value)]
    if args.seeds:
        parts += ["--seeds", *map(str, args.seeds)]
    overrides = list(getattr(args, "overrides", []) or [])
    command = " ".join(shlex.quote(p) for p in parts + overrides)  # what reproduces the run (report's command)
    out = run_analysis(args.analysis, args.config, overrides, out=args.out,
                       seeds=args.seeds, command=command, report_only=args.report_only)
    summary = out["summary"]
    if summary is not None:
        print(f"ran {len(summary.ran)}, skipped {len(summary.skipped)} (already recorded), failed {len(summary.failed)}")
    print(f"wrote {out['report']}")
    return 1 if summary is not None and summary.failed else 0
