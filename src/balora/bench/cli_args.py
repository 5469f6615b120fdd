"""Shared pieces of the `balora bench <kind>` sub-commands: flags from a config dataclass, dry runs, summaries."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Mapping, Optional, Sequence


def add_config_flags(p: argparse.ArgumentParser, cls: type, flags: Mapping[str, tuple[str, dict]],
                     switches: Mapping[str, str], aliases: Optional[Mapping[str, Sequence[str]]] = None) -> None:
    """One flag per config field; the help text is the field's metadata (written once, there)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def default(name: str) -> object:
        f = fields[name]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]

    for flag, (name, kw) in flags.items():
        p.add_argument(flag, *(aliases or {}).get(flag, ()), dest=name, default=None,
                       help=f"{fields[name].metadata['help']} (default: {default(name)})", **kw)
    for flag, name in switches.items():
        p.add_argument(flag, dest=name, action="store_const", const=True, default=None,
                       help=fields[name].metadata["help"])
    p.add_argument("--stop-on-error", action="store_true", help="stop the sweep at the first failing run")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")


def config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flag values (None = not given) for every field of ``cls``."""
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}


def print_todo(specs: Sequence[Any], results: str) -> int:
    """The dry run: list the runs not yet in the results file."""
    from .runner import done_keys

    done = done_keys(results)
    todo = [s for s in specs if s.key() not in done]
    for s in todo:
        print(f"{s.model}\t{s.method}\t{s.task}\tseed {s.seed}")
    print(f"{len(todo)} of {len(specs)} runs to do ({results})")
    return 0


def set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def sweep_device() -> str:
    """Where a sweep's runs train (the Trainer picks CUDA when there is one), so where peak memory is measured."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def finish(summary: Any, results: str, keys: set, table: Callable[[list[dict]], str]) -> int:
    """Print the sweep's counts and the table of its recorded runs; exit code 1 if any run failed."""
    from .runner import read_results

    records = [r for r in read_results(results) if r["key"] in keys]
    print(f"\n{len(summary.ran)} run(s) done, {len(summary.skipped)} already recorded, {len(summary.failed)} failed "
          f"in {summary.seconds / 60:.1f} min; results: {results}")
    if records:
        print(table(records))
    for spec, err in summary.failed:
        print(f"FAILED {spec.slug()}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0
