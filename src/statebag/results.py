"""The result types of the repository API: immutable msgspec Structs.

Ids in results are 64-character lowercase hex strings, the form every API call accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "AuditReport",
    "CommitResult",
    "Diff",
    "GCReport",
    "ManifestInfo",
    "RebuildReport",
    "RepoStats",
    "ResetResult",
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
    seconds per stage. ``node_ids`` lists the nodes this save stored and ``pack_keys`` the
    object-store keys of the packs it wrote.
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
    node_ids: list[str] = msgspec.field(default_factory=list)
    pack_keys: list[str] = msgspec.field(default_factory=list)


class ManifestInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One version, as ``log`` lists it. ``chain`` is the chain it was saved on (a forked
    chain's log goes on into the chain it was forked from)."""

    manifest_id: str
    chain: str
    parent: str | None
    parents: list[str]
    seq: int
    created_at: datetime
    meta: dict[str, Any] | None
    bytes_logical: int


class ResetResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``reset`` did: ``chain``'s head moved from ``previous`` back to ``head``;
    ``discarded`` lists, newest first, the versions its log no longer shows (readable until
    gc collects those no other head reaches)."""

    chain: str
    head: str
    previous: str
    discarded: list[str]


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
    """Counts and bytes of the whole repository (``bytes_stored`` = bytes of packs, of which
    ``bytes_dead`` are frames of freed nodes, until gc deletes or compacts their packs)."""

    chains: int
    manifests: int
    nodes: int
    packs: int
    bytes_logical: int
    bytes_stored: int
    bytes_dead: int = 0


class GCReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one garbage collection did (or, with ``dry_run``, would do).

    ``nodes_freed`` counts nodes removed from the index; ``bytes_reclaimed`` the object-store
    bytes released (dead packs deleted, and what compaction saved). ``deferred`` counts the
    work left for a later run: zero-count nodes still within the grace period, pending saves
    whose writer is alive (or whose lease has not expired), and versions retention would
    delete but a hold keeps. ``dead_letters_processed`` counts dead letters (rollbacks or
    pack deletions an earlier run or save could not finish) drained by this run.
    ``nodes_repacked`` counts the nodes of chains' latest versions gathered out of small
    packs, ``bytes_repacked`` the bytes of the packs that gathered them: the bytes stored
    after a run are those before, minus ``bytes_reclaimed``, plus ``bytes_repacked``.
    """

    manifests_deleted: int = 0
    nodes_freed: int = 0
    packs_deleted: int = 0
    packs_compacted: int = 0
    bytes_reclaimed: int = 0
    deferred: int = 0
    dead_letters_processed: int = 0
    nodes_repacked: int = 0
    bytes_repacked: int = 0


class RebuildReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`statebag.rebuild` restored (or, with ``dry_run``, would restore) from the
    object store alone: ``chains`` given a head, ``versions`` restored, ``nodes`` indexed,
    ``packs`` recorded; ``problems`` names what could not be restored (unreadable packs or
    nodes, versions whose state is not whole in the packs, unknown options), one sentence
    each."""

    chains: int
    versions: int
    nodes: int
    packs: int
    problems: list[str]


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    """What an audit found; ids are 64-hex strings.

    Danger (``ok`` is False): ``under_counted`` (a stored count below the references found:
    the node could be freed while reachable; ``fork:<id>`` for a fork count below the
    chains whose head is that version), ``missing_nodes`` (reachable but not indexed,
    or its pack is gone), ``broken_chains`` (the id of a manifest whose parent is neither
    present nor tombstoned, or ``chain:<name>`` for a head naming a missing manifest) and
    ``metadata_lost`` (why the metadata looks lost or emptied: it has no configuration, or
    no version and no tombstone, while the object store holds packs no save in flight
    accounts for; they may hold the only copy of every version, so ``repair`` changes
    nothing).

    Leaks (``ok`` stays True): ``over_counted`` nodes, ``orphan_packs`` (stored packs that
    no record, pending save or dead letter names) and ``unswept`` (zero-count nodes with no
    mark, which gc would never find). ``in_flight`` lists the txn ids of saves in progress,
    whose packs are theirs, not leaks. ``stray_objects`` lists the keys under ``packs/`` that
    name no pack (files put there by hand or by other tools): skipped, never deleted.
    ``repaired`` counts the fixes ``repair=True`` made (counts, marks, orphan packs deleted,
    lost parents tombstoned); the lists are what the audit found before them.
    """

    ok: bool
    under_counted: list[str]
    over_counted: list[str]
    missing_nodes: list[str]
    orphan_packs: list[str]
    broken_chains: list[str]
    in_flight: list[str]
    repaired: int = 0
    unswept: list[str] = msgspec.field(default_factory=list)
    manifests: int = 0
    nodes: int = 0
    stray_objects: list[str] = msgspec.field(default_factory=list)
    metadata_lost: list[str] = msgspec.field(default_factory=list)
