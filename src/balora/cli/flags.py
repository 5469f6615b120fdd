"""Command-line flags derived from a config dataclass: one ``--field-name`` per field, typed from its annotation, its
help text the field's metadata (written once, there). Every command's options (``balora demo``, ``balora bench
nlu`` / ``nlg``, ``balora analyze``) are declared as dataclasses and get their flags here; run settings
(RunConfig fields) are never flags of their own: they are ``--section.key value`` overrides.

Hand-written on argparse rather than jsonargparse: the commands are argparse sub-parsers already, and the
mapping needed (scalars, optional scalars, lists, booleans, YAML mappings) is a few lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable, Union

from ..config_io import parse_yaml

__all__ = ["add_dataclass_flags", "given_values"]


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _argparse_kwargs(tp: Any) -> dict[str, Any]:
    tp = _unwrap_optional(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is list or tp is list:
        (item,) = typing.get_args(tp) or (Any,)  # a bare list: each item is YAML text
        return {"nargs": "+", "type": item if item in (int, float, str) else parse_yaml}
    if tp in (int, float, str):
        return {"type": tp}
    return {"type": parse_yaml}  # mappings and free-form values: YAML text (e.g. '{rte: {train.lr: 1e-3}}')


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """Add ``--field-name`` (plus the field's ``metadata["aliases"]``) for every field of ``cls`` with a help text.

    Every flag defaults to None (not given), so a config file's value is only replaced by a flag the user gave;
    the help shows the dataclass default.
    """
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        names = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        text = f"{f.metadata['help']} (default: {_default(f)})".replace("%", "%%")
        parser.add_argument(*names, dest=f.name, default=None, help=text, **_argparse_kwargs(hints[f.name]))


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of ``cls``'s fields that were given on the command line (None = not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
