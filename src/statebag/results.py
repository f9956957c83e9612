"""The result types of the repository API: immutable msgspec Structs.

Ids in results are 64-character lowercase hex strings, the form every API call accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "CommitResult",
    "Diff",
    "ManifestInfo",
    "RepoStats",
    "VerifyReport",
]


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one save (or merge) committed, and what it cost.

    ``parent`` is the first parent or None; ``parents`` lists every parent in order.
    ``nodes_written`` counts nodes this save stored; ``nodes_reused`` the nodes of the new
    version it found already stored (fields carried over unread count their root only).
    ``bytes_logical`` is the sum of the fields' canonical encodings; ``bytes_new_raw`` and
    ``bytes_new_stored`` are the new nodes' bytes before compression and the packs' bytes.
    ``requests`` counts object-store and metadata requests by kind; ``timings`` gives
    seconds per stage.
    """

    manifest_id: str
    parent: str | None
    parents: list[str]
    chain: str
    seq: int
    nodes_written: int
    nodes_reused: int
    bytes_logical: int
    bytes_new_raw: int
    bytes_new_stored: int
    requests: dict[str, int]
    timings: dict[str, float]


class ManifestInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a chain, as ``log`` lists it."""

    manifest_id: str
    parent: str | None
    parents: list[str]
    seq: int
    created_at: datetime
    meta: dict[str, Any] | None
    bytes_logical: int


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    """Fields that differ between two versions, with the size of their encodings.

    ``added`` and ``removed`` map a field name to its size; ``changed`` maps a name to its
    (old size, new size). Unchanged fields are not listed.
    """

    added: dict[str, int]
    removed: dict[str, int]
    changed: dict[str, tuple[int, int]]


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """``ok`` is True when no problem was found; each problem names the id at fault."""

    ok: bool
    problems: list[str]
    manifests: int = 0
    nodes_checked: int = 0
    nodes_read: int = 0


class RepoStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts and bytes of the whole repository (``bytes_stored`` = bytes of packs)."""

    chains: int
    manifests: int
    nodes: int
    packs: int
    bytes_logical: int
    bytes_stored: int
