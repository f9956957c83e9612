"""Garbage collection: retention, sweep, pack reclamation, rollback, audit.

Reference counts (``ref/<id>``) hold, for every node, the number of references to it from
indexed nodes and from manifests (their roots). Every change gc makes is one conditional
write of the metadata store, so any number of writers and collectors may run at once and a
crash between two writes leaves at worst a leak (bytes nothing reaches), never a loss.
Every write fits the store's ``max_batch`` (at least :data:`MIN_BATCH`): what cannot (a
node with thousands of children, a compaction of many records, a repair of many counts) is
split into steps that are each safe on their own (see :mod:`.sweep`, :mod:`.packs`,
:mod:`.audit` and :mod:`.batches`).

Each part keeps its own invariant and says which in its module: :mod:`.retention` (which
versions go, deleted through the catalog's :mod:`statebag.versions`), :mod:`.sweep`
(freeing the nodes counted zero), :mod:`.repack` (gathering the latest versions' nodes
out of small packs), :mod:`.packs` (deleting and compacting packs), :mod:`.rollback`
(abandoned saves, dead letters) and :mod:`.audit`. :class:`Collector` runs them in order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from ..errors import ConfigError
from ..keys import CountKeys
from ..liveness import Liveness
from ..meta import MetaStore
from ..objects import ObjectStore
from ..results import AuditReport, GCReport
from ..versions import ReachabilityChanged, VersionDeleter
from .audit import Auditor
from .lost import lost_metadata
from .manifests import ManifestPacker
from .nodes import ChildReader, NodeReader
from .packs import COMPACT_BYTES, COMPACT_PACK_DEAD, COMPACT_REPO_DEAD, PackReclaimer
from .repack import REPACK_BYTES, REPACK_HEADS, SMALL_PACK, Repacker
from .retention import Retention, select_for_deletion
from .rollback import Rollback
from .sweep import Sweeper
from .tally import Tally

__all__ = [
    "COMPACT_BYTES",
    "COMPACT_PACK_DEAD",
    "COMPACT_REPO_DEAD",
    "MIN_BATCH",
    "REPACK_BYTES",
    "REPACK_HEADS",
    "SMALL_PACK",
    "Collector",
    "NodeReader",
    "select_for_deletion",
]


MIN_BATCH = 20
"""The smallest ``max_batch`` gc and audit repair work with: a version's delete is 17
operations, a pack's retirement 9, a first slice of a wide node's sweep 12."""


def _check_batch(meta: MetaStore) -> None:
    if meta.max_batch is not None and meta.max_batch < MIN_BATCH:
        raise ConfigError(
            f"gc and audit repair need a metadata store that writes at least {MIN_BATCH} "
            f"operations at once; {meta!r} takes {meta.max_batch}"
        )


class Collector:
    """GC and audit over one repository's stores. ``read_nodes`` returns verified node
    bytes by id (through the index); ``forget`` drops a deleted version from caches."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        /,
        *,
        liveness: Liveness,
        read_nodes: NodeReader,
        forget: Callable[[bytes], None],
        lease: float,
        grace: float,
        counts: CountKeys,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._grace = grace  # the repository's, not one run's
        # One reader for the sweep and the audit alike: swapping it swaps it for both.
        self._child_reader = ChildReader(read_nodes)
        self._versions = VersionDeleter(meta, forget=forget, counts=counts)
        self._retention = Retention(meta, self._versions)
        self._sweeper = Sweeper(objects, meta, self._child_reader, counts=counts)
        self._packs = PackReclaimer(objects, meta, liveness=liveness, lease=lease, counts=counts)
        self._manifests = ManifestPacker(objects, meta, liveness=liveness, lease=lease)
        self._repacker = Repacker(objects, meta, packs=self._packs, children=self._child_reader)
        self._rollback = Rollback(objects, meta, liveness=liveness, packs=self._packs)
        self._auditor = Auditor(objects, meta, self._child_reader, counts=counts)

    # -- gc --------------------------------------------------------------------------------

    def collect(
        self,
        *,
        keep_last: int | None,
        keep_within: float | None,
        keep_daily: int | None,
        chains: list[str] | None,
        grace: float,
        compact_bytes: int = COMPACT_BYTES,
        repack_bytes: int = REPACK_BYTES,
        pack_size: int = 16 << 20,
    ) -> GCReport:
        """One gc run (a dry run is this run on a ``Repository.rehearsal()``).

        The sweep runs after the deletes, so that with no grace the nodes they release go
        in the same run; the repack after the sweep, so that it gathers no node about to go;
        the packs go last, from the dead frames the sweep and the repack counted (a small
        pack the repack emptied is deleted in the same run).

        ConfigError, before anything is done, when the metadata looks lost (see
        :mod:`.lost`): its records would no longer say what the packs hold."""
        _check_batch(self._meta)
        lost = lost_metadata(self._meta, self._objects, young_s=self._grace)
        if lost is not None:
            raise ConfigError(
                f"{lost} ({self._meta!r}); gc deletes nothing until the metadata is back: "
                "restore it from a backup, or recover it from the packs with `statebag rebuild`"
            )
        tally = Tally()
        now = time.time_ns()
        self._rollback.drain_letters(tally)
        self._rollback.roll_back(tally, now=now)
        discards, unreachable = self._retention.discard_unreachable(tally, now=now, grace=grace)
        with contextlib.suppress(ReachabilityChanged):
            self._retention.retain(
                tally,
                keep_last=keep_last,
                keep_within_ns=None if keep_within is None else int(keep_within * 1e9),
                keep_daily=keep_daily,
                chains=chains,
                now=now,
                discards=discards,
                unreachable=unreachable,
            )
        self._sweeper.sweep(tally, cutoff=time.time_ns() - int(grace * 1e9))
        # Versions whose save wrote no pack get one before any pack is reclaimed.
        self._manifests.pack_unpacked()
        self._repacker.repack(tally, budget=repack_bytes, pack_size=pack_size)
        self._packs.reclaim(tally, compact_bytes=compact_bytes, pack_size=pack_size)
        return tally.report()

    # -- audit -----------------------------------------------------------------------------

    def audit(self, *, repair: bool, grace: float) -> AuditReport:
        """See :class:`~statebag.gc.audit.Auditor`."""
        if repair:
            _check_batch(self._meta)
        return self._auditor.audit(repair=repair, grace=grace)
