"""Flags derived from a config dataclass: one per field, typed from the annotation, help from the metadata."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

import pytest

from balora._fields import help_field
from balora.cli.flags import add_dataclass_flags, given_values


@dataclass
class Options:
    names: list[str] = help_field("Names to use.", default_factory=lambda: ["a"])
    seeds: list[int] = help_field("Seeds.", default_factory=list)
    count: int = help_field("How many (100% of them).", default=3)
    rate: Optional[float] = help_field("A rate.", default=None)
    flag: bool = help_field("Switch it on.", default=False)
    table: dict = help_field("A YAML mapping.", default_factory=dict)
    entries: list = help_field("YAML items.", default_factory=list)
    out: str = field(default="x", metadata={"help": "Output folder.", "aliases": ("--o",)})
    hidden: int = 0  # no help text: no flag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataclass_flags(p, Options)
    return p


def test_flags_are_typed_and_only_given_values_are_returned() -> None:
    args = _parser().parse_args(["--names", "x", "y", "--seeds", "0", "2", "--rate", "1e-3", "--no-flag",
                                 "--table", "{rte: {train.lr: 1e-3}}", "--o", "dir", "--entries", "{task: a}", "3"])
    assert given_values(args, Options) == {"names": ["x", "y"], "seeds": [0, 2], "rate": 1e-3, "flag": False,
                                           "table": {"rte": {"train.lr": 1e-3}}, "out": "dir",
                                           "entries": [{"task": "a"}, 3]}
    assert given_values(_parser().parse_args([]), Options) == {}  # a config file's values are not overwritten
    assert Options(**given_values(_parser().parse_args(["--count", "5", "--flag"]), Options)).count == 5


def test_help_comes_from_the_field_and_bad_values_are_refused(capsys: pytest.CaptureFixture) -> None:
    p = _parser()
    text = p.format_help()
    assert "How many (100% of them). (default: 3)" in " ".join(text.split())
    assert "--hidden" not in text
    with pytest.raises(SystemExit):
        p.parse_args(["--count", "three"])
    assert "invalid int value: 'three'" in capsys.readouterr().err
