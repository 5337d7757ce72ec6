"""How given values are described in validation messages (shared by the core's validators)."""

from __future__ import annotations

from collections.abc import Mapping

_SHOWN_MAX = 40


def kind(value: object) -> str:
    """The JSON name of a value's type (``string``, ``integer``, ``array`` ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def shown(value: object) -> str:
    """A short rendering of a given value: scalars as written (long ones cut), containers by kind."""
    if isinstance(value, str):
        if len(value) <= _SHOWN_MAX:
            return repr(value)
        return f"{value[:_SHOWN_MAX]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "..."
    return kind(value)
