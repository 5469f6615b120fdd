"""`balora analyze KIND`: the paper's analyses as resumable sweeps with a report and plots.

The flags are the fields of :class:`balora.bench.analyses.AnalysisOptions` (over the config's ``analysis:``
section) plus the command's own (--config, --out, --threads, --report-only); run settings are ``--section.key
value`` overrides."""

from __future__ import annotations

import argparse
import shlex

from .flags import add_dataclass_flags, given_values


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.analyses import ANALYSES, AnalysisOptions

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
        k.add_argument("--report-only", action="store_true",
                       help="rewrite the report from every record in <out>/records.jsonl, run nothing")
        k.add_argument("--threads", type=int, help="torch CPU threads")
        add_dataclass_flags(k, AnalysisOptions)
        k.set_defaults(func=run, accepts_overrides=True)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from ..bench.analyses import AnalysisOptions, run_analysis

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = given_values(args, AnalysisOptions)
    parts = ["balora", "analyze", args.analysis]
    for flag, value in (("--config", args.config), ("--out", args.out), ("--threads", args.threads)):
        if value is not None:
            parts += [flag, str(value)]
    for name, value in options.items():
        parts += ["--" + name.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]
    overrides = list(getattr(args, "overrides", []) or [])
    command = " ".join(shlex.quote(p) for p in parts + overrides)  # what reproduces the run (report's command)
    out = run_analysis(args.analysis, args.config, overrides, out=args.out, options=options, command=command,
                       report_only=args.report_only)
    summary = out["summary"]
    if summary is not None:
        print(f"ran {len(summary.ran)}, skipped {len(summary.skipped)} (already recorded), failed {len(summary.failed)}")
    print(f"wrote {out['report']}")
    return 1 if summary is not None and summary.failed else 0
