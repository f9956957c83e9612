"""A metadata store that passes every call to another: the base of store wrappers.

A wrapper (counting requests, injecting faults, adding latency) overrides only what it
changes; everything else, ``max_batch`` included, is the inner store's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .base import MetaStore, Op

__all__ = ["WrappedMetaStore"]


class WrappedMetaStore(MetaStore):
    """Passes every call to ``inner``; closing the wrapper closes it."""

    def __init__(self, inner: MetaStore, /) -> None:
        self._inner = inner

    @property
    def inner(self) -> MetaStore:
        return self._inner

    @property
    def max_batch(self) -> int | None:  # type: ignore[override]
        return self._inner.max_batch

    def get(self, key: str, /) -> bytes | None:
        return self._inner.get(key)

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        return self._inner.get_many(keys)

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        return self._inner.scan(prefix, start_after=start_after, limit=limit)

    def counter(self, key: str, /) -> int:
        return self._inner.counter(key)

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        return self._inner.counters(prefix)

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        if durable:
            self._inner.write(ops)  # as the caller wrote it: the default of every store
        else:
            self._inner.write(ops, durable=False)

    def add(self, key: str, delta: int, /) -> int:
        return self._inner.add(key, delta)

    def close(self) -> None:
        self._inner.close()
