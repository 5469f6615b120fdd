"""Render every configuration option (BALoRAConfig and the RunConfig sections) as Markdown.

The help texts live once, in the dataclass fields' metadata; docs/options.md is generated from them
(``python -m balora.options_doc > docs/options.md``) and a test checks that the file is current.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    return "`None`" if value is None else f"`{value}`"


def _table(cls: type, prefix: str) -> list[str]:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
            continue
        rows.append(f"| `{prefix}{f.name}` | {_default(f)} | {f.metadata['help']} |")
    return rows


def render() -> str:
    from .config import BALoRAConfig
    from .bench.multiemo import DemoConfig
    from .training.run_config import SECTIONS, EvalOptions

    out = ["# Options", "",
           "Generated from the dataclasses' help texts by `python -m balora.options_doc`; do not edit by hand.",
           "In a YAML config each table is a section; on the command line use `--section.key value`.", "",
           "## `regularizers` section: BALoRAConfig (the method; see docs/method.md; formerly `balora`, still read)",
           ""]
    out += _table(BALoRAConfig, "regularizers.")
    for name, cls in SECTIONS.items():
        out += ["", f"## `{name}` section", ""] + _table(cls, f"{name}.")
    out += ["", "## `eval` section (NLG; a list of these)", ""] + _table(EvalOptions, "eval[].")
    out += ["", "## `balora demo` (DemoConfig)", ""] + _table(DemoConfig, "")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
