"""Durations given to the API: seconds (int or float) or ``datetime.timedelta``."""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import InvalidInputError

__all__ = ["as_seconds"]


def as_seconds(value: object, /, *, field: str) -> float:
    """``value`` in seconds; InvalidInputError naming ``field`` unless it is a finite,
    non-negative number of seconds or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidInputError(
            f"{field} must be seconds (int or float) or a timedelta, not {value!r}", path=field
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInputError(
            f"{field} must be a finite duration >= 0, not {value!r}", path=field
        )
    return seconds
