"""BLAKE3-256, the one hash of statebag: node ids, manifest ids and chunk digests.

``hash_bytes`` is the one-shot form; ``Hasher`` (the ``blake3`` package's class, with the
``hashlib`` interface: ``update()`` returns the hasher) is for data that arrives in pieces.
The ``blake3`` package releases the GIL for inputs of 2 KiB and more.
"""

from __future__ import annotations

from blake3 import blake3 as Hasher

from ._typing import Buffer

__all__ = ["DIGEST_SIZE", "Hasher", "hash_bytes"]

DIGEST_SIZE = 32


def hash_bytes(data: Buffer, /) -> bytes:
    """The 32-byte BLAKE3 digest of ``data``."""
    return Hasher(data).digest()
