"""The object store interface: bytes by key, with no knowledge of nodes, packs or manifests.

An object store is the lowest data layer of statebag (see docs/ARCHITECTURE.md, "Layers"). It keeps
opaque byte strings under short text keys and offers exactly what the layers above need and
what every backend (memory, a local directory, S3) can do faithfully:

- ``put`` creates or replaces an object atomically: a reader sees the old bytes or the new
  bytes, never a mix or a prefix.
- ``put_if_absent`` creates an object only if its key is free, atomically against other
  threads and processes (S3: ``If-None-Match: *``). Packs are content-addressed, so this is
  how two writers of the same pack avoid clobbering each other.
- ``get`` reads a whole object or a byte range; ``stat`` gives its size; ``delete`` is
  idempotent; ``list`` yields keys by plain string prefix, in ascending order.

Keys are validated by :func:`check_key` and nothing else, so every backend accepts exactly
the same key set. The rules keep keys portable to any filesystem and to S3: 1 to 512
characters from ``a-z 0-9 . _ - /``, ``/``-separated segments of 1 to 255 characters, no
leading or trailing ``/``, no empty segment, and no segment that starts with ``.`` (so no
``.`` or ``..``, and backends may keep their own bookkeeping under dot-names, as the local
store does with ``.tmp/``).

One portability rule cannot be checked per key: a key should never also be a directory
prefix of another key (``a`` and ``a/b``). Memory and S3 allow it; a filesystem cannot hold a
file and a directory under one name, so the local store refuses the second key with an
``InvalidInputError``. statebag's own key layout never does this.

Wrappers (retry, limits, fault injection, request counting) are separate classes around a
store; backends do not grow flags for them.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from .._typing import Buffer
from ..errors import InvalidInputError

__all__ = ["MAX_KEY_LENGTH", "MAX_SEGMENT_LENGTH", "ObjectStore", "check_key"]

MAX_KEY_LENGTH = 512
# Most filesystems cap one path component at 255 bytes (NAME_MAX); keys are ASCII.
MAX_SEGMENT_LENGTH = 255

_SEGMENT = r"[a-z0-9_-][a-z0-9._-]{0,254}"
_KEY_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_PREFIX_RE = re.compile(rf"(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?")
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")


def _shown(key: str) -> str:
    # Keep messages readable when someone passes a megabyte of text as a key.
    return repr(key) if len(key) <= 80 else repr(key[:77]) + "..."


def _why_invalid(key: str, *, prefix: bool) -> str:
    # Only called once the fast regex check failed: find the first rule broken, so the message
    # says exactly what to fix.
    if not key:
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it has {len(key)} characters, more than {MAX_KEY_LENGTH}"
    for ch in key:
        if ch not in _ALLOWED:
            return f"it contains {ch!r}; use only a-z 0-9 . _ - /"
    if key.startswith("/"):
        return "it starts with '/'"
    if key.endswith("/") and not prefix:
        return "it ends with '/'"
    segments = key[:-1].split("/") if prefix and key.endswith("/") else key.split("/")
    for segment in segments:
        if not segment:
            return "it has an empty segment ('//')"
        if segment.startswith("."):
            return f"its segment {segment!r} starts with '.' (names starting with '.' are reserved)"
        if len(segment) > MAX_SEGMENT_LENGTH:
            return f"a segment has {len(segment)} characters, more than {MAX_SEGMENT_LENGTH}"
    return "it breaks the key rules"  # pragma: no cover - the regex and the rules agree


def check_key(key: object, /, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a valid object key, else raise ``InvalidInputError``.

    With ``prefix=True`` the value is a listing prefix instead: it may also be empty or end
    with ``/``. The error's ``path`` is ``"key"`` or ``"prefix"``.
    """
    what = "prefix" if prefix else "key"
    if not isinstance(key, str):
        raise InvalidInputError(
            f"an object {what} must be a str, got {type(key).__name__}", path=what
        )
    pattern = _PREFIX_RE if prefix else _KEY_RE
    if len(key) <= MAX_KEY_LENGTH and pattern.fullmatch(key):
        return key
    raise InvalidInputError(
        f"invalid object {what} {_shown(key)}: {_why_invalid(key, prefix=prefix)}", path=what
    )


def check_data(data: object, /) -> Buffer:
    """Return ``data`` if it is a byte buffer statebag accepts, else raise ``InvalidInputError``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise InvalidInputError(
        f"object data must be bytes, bytearray or memoryview, got {type(data).__name__}",
        path="data",
    )


def check_range(offset: object, length: object, /) -> tuple[int, int | None]:
    """Validate the range arguments of ``ObjectStore.get``."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidInputError(f"offset must be an int >= 0, got {offset!r}", path="offset")
    if length is not None and (
        not isinstance(length, int) or isinstance(length, bool) or length < 0
    ):
        raise InvalidInputError(
            f"length must be None or an int >= 0, got {length!r}", path="length"
        )
    return offset, length


class ObjectStore(abc.ABC):
    """Bytes by key. Every implementation is safe to use from many threads at once."""

    __slots__ = ()

    @abc.abstractmethod
    def put(self, key: str, data: Buffer, /) -> None:
        """Create or replace the object ``key`` atomically."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: Buffer, /) -> bool:
        """Create ``key`` only if it does not exist: True if written, False if it existed.

        When the key exists nothing changes. Atomic against other writers, other processes
        included.
        """

    @abc.abstractmethod
    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``key``, or ``length`` bytes from ``offset`` (all to the end if None).

        A range past the end gives the bytes that exist (``b""`` when ``offset`` is at or
        after the end). A missing key raises ``NotFoundError``; a negative offset or length
        raises ``InvalidInputError`` naming the argument.
        """

    @abc.abstractmethod
    def stat(self, key: str, /) -> int:
        """The size of ``key`` in bytes; ``NotFoundError`` if it is missing."""

    @abc.abstractmethod
    def modified_ns(self, key: str, /) -> int:
        """When ``key`` was last written, in ns since the epoch (the backend's clock, at the
        precision it keeps); ``NotFoundError`` if it is missing. Garbage collection uses it
        to leave young objects alone, so it may be coarse but never in the future."""

    @abc.abstractmethod
    def delete(self, key: str, /) -> None:
        """Remove ``key``. Deleting a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "", /) -> Iterator[str]:
        """Keys that start with ``prefix`` (a plain string prefix), in ascending order.

        ``"a/b"`` lists ``a/b/c`` and also ``a/bc``; pass ``"a/b/"`` to list one "directory".
        The listing is not a snapshot: objects written or deleted meanwhile may or may not
        appear.
        """

    def close(self) -> None:  # noqa: B027 - optional: stores without resources keep it
        """Release resources (connections, pools). Closing twice is fine."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
