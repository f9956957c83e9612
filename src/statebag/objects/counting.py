"""A wrapper that counts the requests and bytes that pass through an object store.

The counts are cumulative for the wrapper's life and shared by every thread using it; a
caller that wants the cost of one operation takes a :meth:`CountingObjectStore.snapshot`
before and after it (concurrent work on the same store is counted too).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import msgspec

from .. import metering
from .._typing import Buffer
from .base import ObjectStore

__all__ = ["CountingObjectStore", "IOCounters"]


class IOCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Object-store requests by kind and the bytes moved; subtract two to get a delta."""

    puts: int = 0
    gets: int = 0
    stats: int = 0
    deletes: int = 0
    lists: int = 0
    bytes_written: int = 0
    bytes_read: int = 0

    def __sub__(self, other: IOCounters) -> IOCounters:
        return IOCounters(
            **{name: getattr(self, name) - getattr(other, name) for name in self.__struct_fields__}
        )

    @property
    def requests(self) -> int:
        return self.puts + self.gets + self.stats + self.deletes + self.lists


class CountingObjectStore(ObjectStore):
    """Passes every call to ``inner`` and counts it; ``meter`` also adds each request to the
    open :mod:`statebag.metering` tallies (the repository's own wrapper does)."""

    __slots__ = ("_counts", "_inner", "_lock", "_meter")

    def __init__(self, inner: ObjectStore, /, *, meter: bool = False) -> None:
        self._inner = inner
        self._meter = meter
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(IOCounters.__struct_fields__, 0)

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    def snapshot(self) -> IOCounters:
        with self._lock:
            return IOCounters(**self._counts)

    def _count(self, kind: str, *, written: int = 0, read: int = 0) -> None:
        if self._meter:
            metering.note(f"object_{kind}")
        with self._lock:
            self._counts[kind] += 1
            self._counts["bytes_written"] += written
            self._counts["bytes_read"] += read

    def put(self, key: str, data: Buffer, /) -> None:
        self._inner.put(key, data)
        self._count("puts", written=memoryview(data).nbytes)

    def put_if_absent(self, key: str, data: Buffer, /) -> bool:
        written = self._inner.put_if_absent(key, data)
        self._count("puts", written=memoryview(data).nbytes if written else 0)
        return written

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self._inner.get(key, offset=offset, length=length)
        except BaseException:
            self._count("gets")
            raise
        self._count("gets", read=len(data))
        return data

    def stat(self, key: str, /) -> int:
        self._count("stats")
        return self._inner.stat(key)

    def modified_ns(self, key: str, /) -> int:
        self._count("stats")
        return self._inner.modified_ns(key)

    def delete(self, key: str, /) -> None:
        self._count("deletes")
        self._inner.delete(key)

    def list(self, prefix: str = "", /) -> Iterator[str]:
        self._count("lists")
        return self._inner.list(prefix)

    def close(self) -> None:
        self._inner.close()
