"""A wrapper that counts the requests that pass through a metadata store.

Beside :mod:`statebag.objects.counting`: the counts are cumulative for the wrapper's life
and shared by every thread using it; take a :meth:`CountingMetaStore.snapshot` before and
after an operation for its cost. Reads count one request per call (``get``, ``get_many``,
``counter``) or per page of a listing (``scan``, ``counters``: a remote store pages them,
:data:`PAGE_ITEMS` items a page); writes one per ``write`` or ``add``, whether it applied or
not. The keys written (values and counters alike) are recorded too, so that a test can tell
which items two operations both touched (:meth:`CountingMetaStore.written_keys`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import msgspec

from .. import metering
from .base import Add, Delete, DropCounter, MetaStore, Op, Put, batch_items
from .wrapping import WrappedMetaStore

__all__ = ["PAGE_ITEMS", "CountingMetaStore", "MetaCounters"]

_Item = TypeVar("_Item")

PAGE_ITEMS = 100
"""Items of a listing counted as one request: a remote store returns a page at a time."""


class MetaCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata-store requests by kind; subtract two to get a delta."""

    gets: int = 0
    get_manys: int = 0
    scans: int = 0
    counter_reads: int = 0
    writes: int = 0
    ops_written: int = 0
    items_written: int = 0  # distinct keys of each write (see batch_items)

    def __sub__(self, other: MetaCounters) -> MetaCounters:
        return MetaCounters(
            **{name: getattr(self, name) - getattr(other, name) for name in self.__struct_fields__}
        )

    @property
    def reads(self) -> int:
        """Every read request: gets, batched gets, listing pages and counter reads."""
        return self.gets + self.get_manys + self.scans + self.counter_reads


def _written(op: Op) -> str | None:
    """The key an operation writes; None for a condition only."""
    if isinstance(op, (Put, Delete, Add, DropCounter)):
        return op.key
    return None  # a Check or CheckCounter, or not an operation (the store refuses it)


class CountingMetaStore(WrappedMetaStore):
    """Passes every call to ``inner`` and counts it; ``record_keys`` keeps the keys written
    (off by default: a long-lived wrapper would otherwise grow without bound); ``meter``
    also adds each request to the open :mod:`statebag.metering` tallies (the repository's
    own wrapper does; one a caller wraps a store in does not, so nothing counts twice)."""

    def __init__(
        self, inner: MetaStore, /, *, record_keys: bool = False, meter: bool = False
    ) -> None:
        super().__init__(inner)
        self._meter = meter
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(MetaCounters.__struct_fields__, 0)
        self._record = record_keys
        self._keys: set[str] = set()

    def snapshot(self) -> MetaCounters:
        with self._lock:
            return MetaCounters(**self._counts)

    def written_keys(self, *, clear: bool = False) -> set[str]:
        """The keys of every value and counter written (or tried) since the last clear."""
        with self._lock:
            keys = set(self._keys)
            if clear:
                self._keys.clear()
            return keys

    def _count(self, kind: str, times: int = 1) -> None:
        if self._meter:
            metering.note("meta_reads", times)  # only reads come through here
        with self._lock:
            self._counts[kind] += times

    def get(self, key: str, /) -> bytes | None:
        self._count("gets")
        return self._inner.get(key)

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        self._count("get_manys")
        return self._inner.get_many(keys)

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        return self._paged("scans", self._inner.scan(prefix, start_after=start_after, limit=limit))

    def counter(self, key: str, /) -> int:
        self._count("counter_reads")
        return self._inner.counter(key)

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        return self._paged("counter_reads", self._inner.counters(prefix))

    def _paged(self, kind: str, items: Iterator[_Item]) -> Iterator[_Item]:
        # The first page is a request even when empty; each further page is one more.
        self._count(kind)
        for index, item in enumerate(items, start=1):
            yield item
            if index % PAGE_ITEMS == 0:
                self._count(kind)

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        if not isinstance(ops, (list, tuple, str, bytes)) and isinstance(ops, Iterable):
            ops = list(ops)  # an iterator is read once, here
        # Anything else is not a batch: the inner store refuses it, and it is counted empty.
        batch = ops if isinstance(ops, (list, tuple)) else ()
        if self._meter:
            metering.note("meta_writes")
            metering.note("meta_items", batch_items(batch))
        with self._lock:
            self._counts["writes"] += 1
            self._counts["ops_written"] += len(batch)
            self._counts["items_written"] += batch_items(batch)
            if self._record:
                self._keys.update(key for op in batch if (key := _written(op)) is not None)
        super().write(ops, durable=durable)

    def add(self, key: str, delta: int, /) -> int:
        if self._meter:
            metering.note("meta_writes")
            metering.note("meta_items")
        with self._lock:
            self._counts["writes"] += 1
            self._counts["ops_written"] += 1
            self._counts["items_written"] += 1
            if self._record:
                self._keys.add(key)
        return self._inner.add(key, delta)
