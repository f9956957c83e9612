"""The audit: recounting every reference and checking that everything reachable is stored.

It recounts every reference from the manifests and the indexed interior nodes and compares
with the stored counts, checks that every reachable node is indexed in a present pack and
that every parent link resolves, and lists the packs nothing names and the files under
``packs/`` that are no packs at all (skipped, never read or deleted). It reads without one
snapshot, so it reads ``stat/epoch`` (all its shards) first and again last and starts over
while the repository changed under it. A node being swept in slices (``sweep/<id>``) still
counts for the children its sweep has not released yet.

A repair goes in batches within ``max_batch``, each change conditional on its own (a count
fixed on condition that it still holds the value the audit read, a mark put on condition
that the count is still 0, a tombstone on condition that the manifest is still absent): a
change whose condition fails was overtaken by a save or a gc, and is left for the next
audit. Counts are never lowered, nor zero marks put, when a save, a compaction or a
rollback was in flight while the audit read (a pending entry or a dead letter, seen first or
last): a save in several batches adds to its nodes' children before it indexes the node that
references them (and a rollback takes back after its entry is gone), so a count it raised
may look over-counted for a while, and lowering it would under-count it once the save goes
on. Raising an under-count is always safe: at worst it leaks.

A repair deletes orphan packs only when no reachable node is missing and no parent is lost,
since either may be in one of them; while the metadata looks lost (:mod:`.lost`) every pack
is an orphan and the repair changes nothing at all.
"""

from __future__ import annotations

import time
from collections import Counter

from ..errors import ConflictError, NotFoundError
from ..keys import (
    FORK,
    HEAD,
    LETTER,
    MANIFEST,
    NODE,
    PACK,
    PENDING,
    STAT_EPOCH,
    SWEEP,
    TOMB,
    ZERO,
    CountKeys,
    IndexRecord,
    Tombstone,
    chain_of,
    decode_head,
    decode_letter,
    decode_pending,
    decode_sweep,
    encode_le64,
    encode_record,
    fork_key,
    id_of,
    manifest_key,
    node_key,
    pack_record_key,
    tomb_key,
    txn_of,
    zero_key,
)
from ..manifests import Manifest, decode_manifest
from ..meta import Add, Check, CheckCounter, DropCounter, MetaStore, Op, Put
from ..objects import ObjectStore
from ..packs import PACKS_PREFIX, pack_id_of, pack_key
from ..results import AuditReport
from ..versions import accounted_for
from .batches import write_items
from .lost import lost_metadata
from .manifests import manifest_states
from .nodes import ChildReader
from .sweep import sweeping_children

__all__ = ["Auditor"]

_AUDIT_ATTEMPTS = 8


class Auditor:
    """Audits one repository's stores and, when asked, repairs what can be repaired."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        children: ChildReader,
        /,
        *,
        counts: CountKeys,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._children = children
        self._counts = counts

    def audit(self, *, repair: bool, grace: float) -> AuditReport:
        for _ in range(_AUDIT_ATTEMPTS):
            result = self._audit_once(repair=repair, grace=grace)
            if result is not None:
                return result
        raise ConflictError(
            "the repository kept changing during the audit (saves or gc running); retry it"
        )

    def _audit_once(self, *, repair: bool, grace: float) -> AuditReport | None:
        meta = self._meta
        epoch = dict(meta.counters(STAT_EPOCH))
        # Packs are listed before the records are read: a pack uploaded after the listing
        # is not seen, and one listed has its pending entry (written before the upload) or
        # its record (written by its commit) visible below.
        listed: set[bytes] = set()
        strays: list[str] = []
        for key in self._objects.list(PACKS_PREFIX):
            pack_id = pack_id_of(key)
            if pack_id is None:
                strays.append(key)
            else:
                listed.add(pack_id)
        pending = {txn_of(key): decode_pending(v) for key, v in meta.scan(PENDING)}
        letters = [decode_letter(v) for _, v in meta.scan(LETTER)]
        sweeps = {id_of(k, SWEEP): decode_sweep(v) for k, v in meta.scan(SWEEP)}
        owned = {p for record in pending.values() for p in record.packs}
        owned.update(p for packs in letters for p in packs)
        # A node being swept in slices is read from its pack until its last slice.
        owned.update(
            IndexRecord.decode(progress.record, node_id=node_id.hex()).pack_id
            for node_id, progress in sweeps.items()
        )
        pack_records = {id_of(k, PACK) for k, _ in meta.scan(PACK)}
        heads = {chain_of(k): decode_head(v) for k, v in meta.scan(HEAD)}
        manifests: dict[bytes, Manifest] = {
            id_of(k, MANIFEST): decode_manifest(v, manifest_id=k[len(MANIFEST) :])
            for k, v in meta.scan(MANIFEST)
        }
        tombs = {id_of(k, TOMB) for k, _ in meta.scan(TOMB)}
        index: dict[bytes, IndexRecord] = {}
        stored_records: dict[bytes, bytes] = {}
        for k, v in meta.scan(NODE):
            node_id = id_of(k, NODE)
            index[node_id] = IndexRecord.decode(v, node_id=node_id.hex())
            stored_records[node_id] = v
        prefix = self._counts.prefix
        counts = {id_of(k, prefix): v for k, v in meta.counters(prefix)}
        marks = {id_of(k, ZERO) for k, _ in meta.scan(ZERO)}
        forks = {id_of(k, FORK): v for k, v in meta.counters(FORK)}
        forks_expected: Counter[bytes] = Counter(
            h.head
            for chain, h in heads.items()
            if h.head in manifests and manifests[h.head].chain != chain
        )

        expected: Counter[bytes] = Counter(m.root for m in manifests.values())
        interior = [node_id for node_id, record in index.items() if record.interior]
        children, unreadable = self._children.children(interior)
        for node_children in children.values():
            expected.update(node_children)
        # The references a sweep in slices has not released yet still count; a sweep whose
        # node cannot be read any more leaves its children over-counted (a leak) for good.
        sweeps_unread = False
        for node_id, progress in sweeps.items():
            remaining = sweeping_children(self._objects, node_id, progress, remaining=True)
            if remaining is None:
                sweeps_unread = True
                continue
            for child, times in remaining:
                expected[child] += times

        reachable: set[bytes] = set()
        frontier = list({m.root for m in manifests.values()})
        while frontier:
            node_id = frontier.pop()
            if node_id in reachable:
                continue
            reachable.add(node_id)
            frontier.extend(children.get(node_id, ()))
        missing = sorted(
            node_id.hex()
            for node_id in reachable
            if node_id not in index or index[node_id].pack_id not in listed or node_id in unreadable
        )
        under = sorted(n.hex() for n, want in expected.items() if counts.get(n, 0) < want)
        over = sorted(n.hex() for n, have in counts.items() if have > expected.get(n, 0))
        unswept = sorted(
            n.hex()
            for n in index
            if expected.get(n, 0) == 0 and counts.get(n, 0) <= expected.get(n, 0) and n not in marks
        )
        lost_parents = {
            parent: manifest
            for manifest in manifests.values()
            for parent in manifest.parents
            if not accounted_for(parent, live=manifests, tombstoned=tombs)
        }
        broken = sorted(
            mid.hex()
            for mid, m in manifests.items()
            if any(not accounted_for(p, live=manifests, tombstoned=tombs) for p in m.parents)
        )
        broken += sorted(f"chain:{c}" for c, h in heads.items() if h.head not in manifests)
        # A forked chain's head counts in fork/<id>, which keeps delete() off it.
        fork_fix = {
            manifest_id: forks_expected.get(manifest_id, 0) - forks.get(manifest_id, 0)
            for manifest_id in {*forks, *forks_expected}
            if forks_expected.get(manifest_id, 0) != forks.get(manifest_id, 0)
        }
        under += sorted(f"fork:{m.hex()}" for m, delta in fork_fix.items() if delta > 0)
        over += sorted(f"fork:{m.hex()}" for m, delta in fork_fix.items() if delta < 0)
        orphans = sorted(p.hex() for p in listed if p not in pack_records and p not in owned)
        lost = lost_metadata(meta, self._objects, young_s=grace)
        # In flight at the start or at the end (a save that began and ended in between
        # moved the epoch): see the module docstring.
        quiet = (
            not pending
            and not letters
            and not sweeps_unread
            and next(iter(meta.scan(PENDING, limit=1)), None) is None
            and next(iter(meta.scan(LETTER, limit=1)), None) is None
        )
        if dict(meta.counters(STAT_EPOCH)) != epoch:
            return None
        repaired = 0
        # With the metadata lost, its counts and marks describe nothing: writing them would
        # mark every node of the packs as garbage.
        if repair and lost is None:
            repaired = self._repair(
                expected=expected,
                counts=counts,
                index=stored_records,
                quiet=quiet,
                fix=[t for t in (*under, *over) if not t.startswith("fork:")],
                fork_fix=fork_fix,
                forks=forks,
                unswept=unswept,
                # A missing node or a lost parent manifest may be in an orphan pack.
                orphans=[] if missing or broken else orphans,
                grace=grace,
                lost_parents=lost_parents,
            )
        return AuditReport(
            ok=not (under or missing or broken or lost),
            under_counted=under,
            over_counted=over,
            missing_nodes=missing,
            orphan_packs=orphans,
            broken_chains=broken,
            in_flight=sorted(pending),
            repaired=repaired,
            unswept=unswept,
            manifests=len(manifests),
            nodes=len(index),
            stray_objects=strays,
            metadata_lost=[] if lost is None else [lost],
        )

    def _repair(
        self,
        *,
        expected: Counter[bytes],
        counts: dict[bytes, int],
        index: dict[bytes, bytes],
        quiet: bool,
        fix: list[str],
        fork_fix: dict[bytes, int],
        forks: dict[bytes, int],
        unswept: list[str],
        orphans: list[str],
        grace: float,
        lost_parents: dict[bytes, Manifest],
    ) -> int:
        """Fix counts and mark garbage, each change conditional on its own (see the module
        docstring), in batches; then delete orphan packs older than the grace period. The
        number of things repaired; what a condition refused is left for the next audit.

        A parent that is neither present nor tombstoned is lost (the audit reported it); it
        gets a tombstone with ``time_ns`` 0 (unknown), so that the chain reads as pruned
        there rather than broken. Nothing reachable depends on it: a version reaches its
        own nodes, not its parent's.
        """
        now = time.time_ns()
        mark = encode_le64(now)
        items: list[list[Op]] = []
        for parent, child in lost_parents.items():
            tombstone = Tombstone(child.chain, max(child.seq - 1, 0), 0, now)
            items.append(
                [
                    Check(manifest_key(parent), None),
                    Put(tomb_key(parent), encode_record(tombstone), expect=None),
                ]
            )
        for text in fix:
            node_id = bytes.fromhex(text)
            want = expected.get(node_id, 0)
            have = counts.get(node_id, 0)
            key = self._counts.key(node_id)
            if want < have and not quiet:
                continue  # may be a save's count ahead of its index entry: left alone
            record = index.get(node_id)
            if want == 0 and record is None:
                items.append(
                    [Check(node_key(node_id), None), CheckCounter(key, have), DropCounter(key)]
                )
                continue
            item: list[Op] = [CheckCounter(key, have), Add(key, want - have)]
            if want == 0:
                item += [Check(node_key(node_id), record), Put(zero_key(node_id), mark)]
            items.append(item)
        if quiet:
            for text in unswept:
                if text in fix:
                    continue
                node_id = bytes.fromhex(text)
                items.append(
                    [
                        CheckCounter(self._counts.key(node_id), 0),
                        Check(node_key(node_id), index[node_id]),
                        Put(zero_key(node_id), mark, expect=None),
                    ]
                )
        for manifest_id, delta in fork_fix.items():
            key = fork_key(manifest_id)
            items.append([CheckCounter(key, forks.get(manifest_id, 0)), Add(key, delta)])
        repaired = len(write_items(self._meta, items, tail=[Add(STAT_EPOCH, 1)]))
        cutoff = now - int(grace * 1e9)
        for text in orphans:
            pack_id = bytes.fromhex(text)
            try:
                if self._objects.modified_ns(pack_key(pack_id)) > cutoff:
                    continue
            except NotFoundError:
                continue
            if self._meta.get(pack_record_key(pack_id)) is not None:
                continue
            try:
                data = self._objects.get(pack_key(pack_id))
            except NotFoundError:
                continue
            if manifest_states(self._meta, pack_id, data).unknown:
                # It carries a version the metadata never knew (only a rebuild can tell
                # what it is): never deleted; reported as an orphan each time.
                continue
            self._objects.delete(pack_key(pack_id))
            repaired += 1
        return repaired
