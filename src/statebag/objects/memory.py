"""An object store held in a dict, for tests and ``memory://`` repositories.

It is the reference behaviour of the object store interface: one lock around a dict, so every
call is atomic and the store is safe from many threads. Stored values are private copies,
so a caller mutating its bytearray afterwards changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from .._typing import Buffer
from ..errors import NotFoundError
from .base import ObjectStore, check_data, check_key, check_range

__all__ = ["MemoryObjectStore"]


class MemoryObjectStore(ObjectStore):
    """Objects in process memory; lost when the store is garbage collected."""

    __slots__ = ("_lock", "_modified", "_objects")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, bytes] = {}
        self._modified: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"MemoryObjectStore(<{len(self._objects)} objects>)"

    def put(self, key: str, data: Buffer, /) -> None:
        key = check_key(key)
        # Copy outside the lock: a large memoryview copy should not stall other threads.
        value = bytes(check_data(data))
        with self._lock:
            self._objects[key] = value
            self._modified[key] = time.time_ns()

    def put_if_absent(self, key: str, data: Buffer, /) -> bool:
        key = check_key(key)
        value = bytes(check_data(data))
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = value
            self._modified[key] = time.time_ns()
            return True

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        key = check_key(key)
        offset, length = check_range(offset, length)
        with self._lock:
            value = self._objects.get(key)
        if value is None:
            raise NotFoundError(f"object {key!r} does not exist")
        if offset == 0 and length is None:
            return value
        end = None if length is None else offset + length
        return value[offset:end]

    def stat(self, key: str, /) -> int:
        key = check_key(key)
        with self._lock:
            value = self._objects.get(key)
        if value is None:
            raise NotFoundError(f"object {key!r} does not exist")
        return len(value)

    def modified_ns(self, key: str, /) -> int:
        key = check_key(key)
        with self._lock:
            modified = self._modified.get(key)
        if modified is None:
            raise NotFoundError(f"object {key!r} does not exist")
        return modified

    def delete(self, key: str, /) -> None:
        key = check_key(key)
        with self._lock:
            self._objects.pop(key, None)
            self._modified.pop(key, None)

    def list(self, prefix: str = "", /) -> Iterator[str]:
        prefix = check_key(prefix, prefix=True)
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(keys)
