"""Boolean environment variables, parsed strictly: ``1``, ``true``, ``yes``, ``on`` are on,
``0``, ``false``, ``no``, ``off`` are off (any case, spaces ignored), unset or empty is
neither; anything else is a :class:`~statebag.errors.ConfigError` naming the variable, never
a silent default."""

from __future__ import annotations

import os

from .errors import ConfigError

__all__ = ["env_flag"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, /) -> bool | None:
    """The boolean environment variable ``name``; None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: set it to true or false (or 1 or 0)")
