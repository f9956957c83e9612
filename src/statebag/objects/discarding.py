"""An object store that reads through to another and accepts writes without doing them.

With :class:`statebag.meta.overlay.OverlayMetaStore` it lets ``gc(dry_run=True)`` run the
code of a real gc. Objects "written" through it cannot be read back: nothing in a dry run
reads what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator

from .._typing import Buffer
from .base import ObjectStore, check_data, check_key

__all__ = ["DiscardingObjectStore"]


class DiscardingObjectStore(ObjectStore):
    """Reads from ``base``; ``put``, ``put_if_absent`` and ``delete`` change nothing."""

    __slots__ = ("_base",)

    def __init__(self, base: ObjectStore, /) -> None:
        self._base = base

    def put(self, key: str, data: Buffer, /) -> None:
        check_key(key)
        check_data(data)

    def put_if_absent(self, key: str, data: Buffer, /) -> bool:
        check_key(key)
        check_data(data)
        return True

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        return self._base.get(key, offset=offset, length=length)

    def stat(self, key: str, /) -> int:
        return self._base.stat(key)

    def modified_ns(self, key: str, /) -> int:
        return self._base.modified_ns(key)

    def delete(self, key: str, /) -> None:
        check_key(key)

    def list(self, prefix: str = "", /) -> Iterator[str]:
        return self._base.list(prefix)
