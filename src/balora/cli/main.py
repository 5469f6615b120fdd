"""The `balora` command. Every sub-command is registered here, in :data:`COMMANDS` (and the kinds of `balora bench`
in :data:`BENCH_KINDS`), the way litgpt's ``PARSER_DATA`` lists its commands: explicit imports, so a missing or
broken command module is an import error, never a silently absent command."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Optional

# transformers imports torchao when it is installed (balora's quant/test extras); torchao then warns about each
# CUDA-only kernel library it cannot load on a CPU machine and torch about its enum registrations. Harmless, and
# noise on every command: set before the command modules (and through them transformers) are imported.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from . import analyze, bench_cmd, demo_cmd, eval_cmd, export, report_cmd, train

Register = Callable[[Any], Any]  # register(subparsers) adds one sub-command

# `balora COMMAND`, in the order `balora --help` lists them.
COMMANDS: tuple[Register, ...] = (demo_cmd.register, train.register, export.register, eval_cmd.register,
                                  bench_cmd.register, report_cmd.register, analyze.register)
# `balora bench KIND`.
BENCH_KINDS: tuple[Register, ...] = (bench_cmd.register_nlu, bench_cmd.register_nlg)


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
    for register in COMMANDS:
        if register is bench_cmd.register:
            bench_cmd.register(sub, BENCH_KINDS)
        else:
            register(sub)
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
