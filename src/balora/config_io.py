"""The one YAML loader: run configs, sweep configs and ``--section.key value`` overrides all parse through here.

PyYAML implements YAML 1.1, where ``1e-3`` (no dot) is a *string*; every user writing a learning rate means a
float, so the loader adds that resolver (YAML 1.2 reads it as a float too).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml



class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E+4`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text (a document or a single scalar such as a command-line value)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: Union[str, Path]) -> dict:
    """Read a YAML file whose top level is a mapping (an empty file is ``{}``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for invalid YAML or a
    top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} not found")
    try:
        raw = parse_yaml(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{p}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw
