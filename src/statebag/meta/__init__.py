"""Metadata stores: small values by key plus int64 counters (memory, SQLite; DynamoDB later).

See :mod:`statebag.meta.base` for the contract (atomic batches of :class:`Put`,
:class:`Delete`, :class:`Check`, :class:`Add`, :class:`DropCounter`) and
:class:`statebag.testing.MetaStoreConformance` for the suite every store passes.
"""

from __future__ import annotations

from .base import (
    ANY,
    Add,
    AnyType,
    Check,
    CheckCounter,
    ConditionFailed,
    Delete,
    DropCounter,
    MetaStore,
    Op,
    Put,
    check_meta_key,
)
from .memory import MemoryMetaStore
from .sqlite import SQLiteMetaStore

__all__ = [
    "ANY",
    "Add",
    "AnyType",
    "Check",
    "CheckCounter",
    "ConditionFailed",
    "Delete",
    "DropCounter",
    "MemoryMetaStore",
    "MetaStore",
    "Op",
    "Put",
    "SQLiteMetaStore",
    "check_meta_key",
]
