"""Typed options from the command line and YAML: a protocol's or a backbone's options dataclass filled from
``KEY=VALUE`` strings or YAML values, each converted to its field's type and checked, in one line on error.
Used by tasks (protocol options) and backbones (``--backbone-option``) alike."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from dfbench.errors import DfbenchInputError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def convert_option(value: Any, kind: Any) -> Any:
    """``value`` (a CLI string or a YAML value) as ``kind`` (int, float, str, bool or ``X | None``)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        raise ValueError
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value) if not isinstance(value, str) else int(value.strip())
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    raise TypeError(f"option type {kind!r} is not supported")


def type_name(kind: Any) -> str:
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return f"{args[0].__name__} or none" if args else getattr(kind, "__name__", str(kind))


def parse_options(options_class: type, values: dict[str, Any] | None, where: str) -> Any:
    """An instance of the options dataclass from ``values`` (strings from ``--option`` or YAML values).

    An unknown key, a value of the wrong type, or a value its ``validate()`` refuses is one
    :class:`DfbenchInputError` line naming the key, the expected type and the valid keys."""
    hints = typing.get_type_hints(options_class)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(options_class)}
    valid = ", ".join(f"{name} ({type_name(kind)})" for name, kind in fields.items()) or "none"
    typed: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if key not in fields:
            raise DfbenchInputError(f"{where}: unknown option {key!r}; valid options: {valid}")
        try:
            typed[key] = convert_option(value, fields[key])
        except (TypeError, ValueError):
            raise DfbenchInputError(f"{where} option {key}={value!r}: expected {type_name(fields[key])}; "
                                    f"valid options: {valid}") from None
    options = options_class(**typed)
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate(where)
    return options


def require_at_least_one(options: Any, keys: tuple[str, ...], where: str) -> None:
    """Each of ``keys`` that is set (not ``None``) must be ≥ 1: one line naming the first that is not."""
    for key in keys:
        value = getattr(options, key)
        if value is not None and value < 1:
            raise DfbenchInputError(f"{where} option {key}={value}: must be ≥ 1")


@dataclass(frozen=True)
class NoOptions:
    """A protocol without options."""
