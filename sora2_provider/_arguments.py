"""Checks of the arguments operators and sensors take, shared so both say the same thing about a bad value.

Each check returns the value in the form the caller keeps, or raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

__all__ = [
    "as_timedelta",
    "credits",
    "credits_from_text",
    "has_template",
    "is_literal",
    "one_of",
    "positive",
]

JINJA_MARKERS = ("{{", "{%", "{#")
_PLAIN_TYPES = (str, int, float, bool, dict, list, tuple, type(None))


def one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    return value


def positive(name: str, value: Any) -> float:
    """A positive number of seconds."""
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a positive number of seconds")
    return float(value)


def credits(name: str, value: Any) -> float:
    """A finite number of credits >= 0."""
    return _credits(name, value, value)


def credits_from_text(name: str, value: Any) -> float:
    """A number of credits >= 0, also from a rendered template (a string such as ``"12.5"``)."""
    return _credits(name, value, _to_float(value) if isinstance(value, str) else value)


def as_timedelta(name: str, value: Any) -> timedelta:
    """A positive duration, given as a ``timedelta`` or a number of seconds."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else positive(name, value)
    if seconds <= 0:
        raise ValueError(f"{name}: {value!r} must be positive")
    return timedelta(seconds=seconds)


def has_template(value: Any) -> bool:
    """Does a string, or any string inside a dict or list, hold Jinja?"""
    if isinstance(value, str):
        return any(marker in value for marker in JINJA_MARKERS)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_template(v) for v in value)
    return False


def is_literal(value: Any) -> bool:
    """A value known at DAG parse: plain data without Jinja (not a lazy object such as an XComArg)."""
    if isinstance(value, (list, tuple)):
        return all(is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(is_literal(v) for v in value.values())
    return isinstance(value, _PLAIN_TYPES) and not has_template(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _credits(name: str, given: Any, number: Any) -> float:
    if not _is_number(number) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}: {given!r} is not a number of credits >= 0")
    return float(number)


def _to_float(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None
