"""Object stores: bytes by key (memory, a local directory; S3 later).

See :mod:`statebag.objects.base` for the contract and the key rules, and
:class:`statebag.testing.ObjectStoreConformance` for the suite every store passes.
"""

from __future__ import annotations

from .base import MAX_KEY_LENGTH, ObjectStore, check_key
from .local import LocalObjectStore
from .memory import MemoryObjectStore

__all__ = [
    "MAX_KEY_LENGTH",
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectStore",
    "check_key",
]
