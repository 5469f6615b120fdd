"""``help_field``: a dataclass field with its help text in the metadata (one help text per config field).

Every config dataclass in balora (BALoRAConfig, RunConfig's sections, the sweep configs) uses it, and the CLI
and the options reference (balora.options_doc) read the text back from ``field.metadata["help"]``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def help_field(text: str, **kw: Any) -> Any:
    """``dataclasses.field(metadata={"help": text}, **kw)``."""
    return field(metadata={"help": text}, **kw)
