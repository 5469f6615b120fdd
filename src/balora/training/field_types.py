"""The type check of config values: a value of the wrong type is reported naming ``section.field``, the value and
the expected type, before any range check compares it (YAML and ``--section.key value`` overrides both arrive here).

Hand-written because the annotations to check are few and simple (int, float, bool, str, Literal, Optional, Union,
list) and the message must name the config section, which dataclass libraries do not offer.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Union


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join("empty" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}" if item is not Any else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping", list: "a list"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits the annotation ``tp`` (an int is accepted, as a float, for a float)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is Any:
        return True, value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            return False, value
        checked = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def check_field_types(cls: Any, values: dict, section: str) -> dict:
    """Check (and lightly coerce: int -> float) ``values`` against the annotations of dataclass ``cls``.

    The one place where a config value of the wrong type is reported, naming ``section.field``, the value and the
    expected type (YAML and ``--section.key value`` overrides both arrive here), before any range check compares it.
    """
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        if name not in hints:
            continue
        ok, coerced = _coerce(value, hints[name])
        if not ok:
            raise ValueError(f"{section}.{name} must be {_type_name(hints[name])}, got {value!r} "
                             f"({type(value).__name__})")
        out[name] = coerced
    return out


def check_types(obj: Any, section: str) -> None:
    """Dataclass __post_init__ hook: :func:`check_field_types` on the instance's own fields."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in check_field_types(type(obj), values, section).items():
        object.__setattr__(obj, name, value)
