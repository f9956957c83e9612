"""The bounded caches of a repository handle."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["Recent"]

_T = TypeVar("_T")


class Recent(Generic[_T]):
    """The most recently used values by id, up to a total weight of ``budget`` (each value
    weighs ``weigh(value)``, 1 by default); safe to share between threads."""

    def __init__(self, budget: int, *, weigh: Callable[[_T], int] = lambda _: 1) -> None:
        self._budget = budget
        self._weigh = weigh
        self._weight = 0
        self._items: OrderedDict[bytes, _T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> _T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def get_many(self, keys: Iterable[bytes]) -> tuple[dict[bytes, _T], list[bytes]]:
        """The values found (each marked recently used) and the keys not found, in order."""
        found: dict[bytes, _T] = {}
        missing: list[bytes] = []
        with self._lock:
            for key in keys:
                value = self._items.get(key)
                if value is None:
                    missing.append(key)
                else:
                    self._items.move_to_end(key)
                    found[key] = value
        return found, missing

    def put(self, key: bytes, value: _T, *, replaces: bytes | None = None) -> None:
        """Keep ``value`` under ``key``, dropping the value under ``replaces`` if any."""
        weight = self._weigh(value)
        with self._lock:
            if replaces is not None and replaces != key:
                self._drop(replaces)
            self._drop(key)
            if weight > self._budget:
                return
            self._items[key] = value
            self._weight += weight
            while self._weight > self._budget:
                self._drop(next(iter(self._items)))

    def _drop(self, key: bytes) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._weight -= self._weigh(value)

    def add_many(self, items: Iterable[tuple[bytes, _T]]) -> None:
        """Keep each value not already kept, then drop the least recently used beyond the
        budget (one lock for all)."""
        with self._lock:
            for key, value in items:
                if key in self._items:
                    continue
                self._items[key] = value
                self._weight += self._weigh(value)
            while self._weight > self._budget and self._items:
                self._drop(next(iter(self._items)))

    def discard(self, key: bytes) -> None:
        with self._lock:
            self._drop(key)

    def discard_many(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0
