"""Durations given to the API: seconds (int or float) or ``datetime.timedelta``."""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import InvalidInputError

__all__ = ["as_seconds"]

# Durations become instants (ns since the epoch) stored in 8 unsigned bytes, which end in
# 2554: a century from now fits with room to spare, and no retention rule needs more.
_MAX_SECONDS = 100 * 365.25 * 86400


def as_seconds(value: object, /, *, field: str) -> float:
    """``value`` in seconds; InvalidInputError naming ``field`` unless it is a number of
    seconds or a timedelta from 0 to 100 years."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float: longer than any limit
            seconds = math.inf
    else:
        raise InvalidInputError(
            f"{field} must be seconds (int or float) or a timedelta, not {value!r}", path=field
        )
    if math.isnan(seconds) or seconds < 0:
        raise InvalidInputError(f"{field} must be a duration >= 0, not {value!r}", path=field)
    if seconds > _MAX_SECONDS:
        raise InvalidInputError(
            f"{field} must be at most 100 years ({_MAX_SECONDS:.0f} seconds), not {value!r}",
            path=field,
        )
    return seconds
