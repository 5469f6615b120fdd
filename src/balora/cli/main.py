"""The `balora` command: one sub-command per module in this package (each exposes register())."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional

# Sub-command modules, in the order `balora --help` lists them. A module missing from an install
# (an optional part) is skipped rather than breaking the whole command.
SUBCOMMANDS = ("demo", "train", "export", "eval_cmd", "bench_cmd", "report_cmd", "analyze")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="balora",
        description="BA-LoRA: bias-alleviating low-rank adaptation (PiSSA adapters + consistency, diversity "
                    "and SVD regularisers) on peft and transformers.",
    )
    parser.add_argument("--version", action="version", version=f"balora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"balora.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"balora.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as err:
        if args.verbose:
            raise
        print(f"balora {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
