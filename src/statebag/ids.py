"""Content ids: 32-byte BLAKE3 digests, written as 64 lowercase hex characters.

``ContentId`` is a ``bytes`` subclass of exactly 32 bytes, so it hashes, compares and packs like
the raw digest; ``str(cid)`` and ``cid.hex()`` give the canonical text form and ``cid.short()``
a 12-character prefix for display. ``ContentId.parse`` is the one way to turn text into an id,
and refuses anything but 64 lowercase hex characters, naming the field it was given for. A
prefix of at least ``MIN_PREFIX_LENGTH`` characters names a version where it is unique
(``Repository.resolve``).
"""

from __future__ import annotations

import re

from ._typing import Buffer
from .errors import InvalidInputError
from .hashing import DIGEST_SIZE, hash_bytes

__all__ = ["HEX_LENGTH", "MIN_PREFIX_LENGTH", "ContentId", "looks_like_hex", "looks_like_id"]

HEX_LENGTH = 2 * DIGEST_SIZE
SHORT_LENGTH = 12
# The shortest id prefix taken for a version. With n versions, another id shares a given
# 8-character prefix with probability about n / 2**32; shorter ones collide too soon to be
# worth typing, and an ambiguous prefix is refused, never guessed.
MIN_PREFIX_LENGTH = 8
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")


class ContentId(bytes):
    """A 32-byte content id (BLAKE3-256 of the bytes it names)."""

    __slots__ = ()

    def __new__(cls, digest: Buffer, /) -> ContentId:
        raw = bytes(digest)
        if len(raw) != DIGEST_SIZE:
            raise InvalidInputError(
                f"a content id is {DIGEST_SIZE} bytes, got {len(raw)}", path="id"
            )
        return super().__new__(cls, raw)

    @classmethod
    def of(cls, data: Buffer, /) -> ContentId:
        """The id of ``data``: its BLAKE3-256 digest."""
        return cls(hash_bytes(data))

    @classmethod
    def parse(cls, text: str, /, *, field: str = "id") -> ContentId:
        """Parse 64 lowercase hex characters; anything else raises ``InvalidInputError``."""
        if not isinstance(text, str) or not _HEX_ID.fullmatch(text):
            shown = text if isinstance(text, str) else type(text).__name__
            raise InvalidInputError(
                f"{field} must be {HEX_LENGTH} lowercase hex characters, got {shown!r}",
                path=field,
            )
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"ContentId('{self.hex()}')"

    def short(self) -> str:
        """The first 12 hex characters, for display; ``Repository.resolve`` takes it back."""
        return self.hex()[:SHORT_LENGTH]


def looks_like_id(text: str, /) -> bool:
    """True when ``text`` has the form of an id (64 lowercase hex characters)."""
    return bool(_HEX_ID.fullmatch(text))


def looks_like_hex(text: str, /) -> bool:
    """True when ``text`` is lowercase hex: the form of an id or of an id prefix."""
    return bool(_HEX.fullmatch(text))
