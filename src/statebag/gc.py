"""Garbage collection: deletion, retention, sweep, pack reclamation, rollback, audit.

Reference counts (``ref/<id>``) hold, for every node, the number of references to it from
indexed nodes and from manifests (their roots). Every change below is one conditional write
of the metadata store, so any number of writers and collectors may run at once and a crash
between two writes leaves at worst a leak (bytes nothing reaches), never a loss.

- **Delete** a version: in one write, remove the manifest (never a chain's head, nor a
  pinned one), leave a tombstone, decrement its root; if the root's count reaches zero, put
  ``zero/<root>`` = the time. The condition on the head record makes it exclusive with a
  save on the chain.
- **Sweep** a node marked zero whose mark is older than the grace period: in one write, on
  condition that its count is still zero, its mark and index record unchanged, remove the
  index record, the count and the mark, count its frame as dead in its pack (``dead/<pack>``),
  and decrement each child it references, marking the children it brings to zero with its
  own mark's time (they have been unreachable as long as it has, so a whole dead tree is
  swept by one gc). A node is read only if its index record says it references others.

  Children are released when their parent is swept, not when it reaches zero, so a save
  that reuses a zero-count node (reviving it) finds its whole subtree still counted. A save
  checks, in its commit write, that every node it found stored is still indexed; if a sweep
  won the race, the save stores the node again (see :mod:`statebag.commit`).
- **Packs**: a pack whose frames are all dead is deleted; one with at least
  ``COMPACT_PACK_DEAD`` of dead frame bytes is compacted (live frames copied into a new pack
  under a pending entry, the index moved in one write conditional on every record) when the
  repository holds at least ``COMPACT_REPO_DEAD`` of dead bytes. Candidates come from the
  ``dead/`` counters, so no pass reads every pack.
- **Rollback**: a pending save whose writer is gone (its lock is free) or, where that cannot
  be known, whose lease expired, is replaced by a dead letter in one write conditional on
  the entry, which also fences the writer (its commit is conditional on the entry); then its
  packs are deleted and the letter removed. A letter left by a crash or a failed delete is
  drained by the next gc.
- **Audit** recounts every reference from the manifests and the indexed interior nodes,
  compares, checks that every reachable node is indexed in a present pack and every parent
  link resolves, and retries while the repository changes under it (``stat/epoch``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from . import dag
from ._crash import crash_point
from .commit import Prepare, new_txn_id
from .errors import ConflictError, IntegrityError, NotFoundError
from .keys import (
    IndexRecord,
    PackRecord,
    Tombstone,
    decode_head,
    decode_letter,
    decode_pending,
    encode_letter,
    encode_record,
    head_key,
    version_key,
    version_prefix,
)
from .liveness import Liveness, Rehearsal
from .manifests import Manifest, decode_manifest
from .meta import Add, Check, CheckCounter, ConditionFailed, Delete, DropCounter, MetaStore, Op, Put
from .meta.overlay import OverlayMetaStore
from .objects import ObjectStore
from .objects.discarding import DiscardingObjectStore
from .packs import PackWriter, pack_key, parse_footer
from .results import AuditReport, GCReport

__all__ = [
    "COMPACT_BYTES",
    "COMPACT_PACK_DEAD",
    "COMPACT_REPO_DEAD",
    "Collector",
    "select_for_deletion",
]

COMPACT_PACK_DEAD = 0.20
COMPACT_REPO_DEAD = 0.05
COMPACT_BYTES = 1 << 30
_SWEEP_BATCH = 128
_READ_BATCH = 256
_ATTEMPTS = 16
_AUDIT_ATTEMPTS = 8


def _le64(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _int(data: bytes) -> int:
    return int.from_bytes(data, "little")


def select_for_deletion(
    versions: Sequence[tuple[int, bytes, int]],
    /,
    *,
    keep: set[bytes],
    keep_last: int | None,
    keep_within_ns: int | None,
    keep_daily: int | None,
    now_ns: int,
) -> list[bytes]:
    """Retention for one chain: of ``versions`` (seq, manifest id, time_ns), those no rule
    keeps. ``keep`` holds the ids kept whatever the rules say (head, pinned, held). With no
    rule given nothing is selected. ``keep_daily`` keeps the newest version of each of the
    last N UTC days that have one (days without a version do not count)."""
    if keep_last is None and keep_within_ns is None and keep_daily is None:
        return []
    newest_first = sorted(versions, key=lambda v: (v[0], v[2]), reverse=True)
    kept = set(keep)
    if keep_last:
        kept.update(mid for _, mid, _ in newest_first[:keep_last])
    if keep_within_ns is not None:
        kept.update(mid for _, mid, t in newest_first if t >= now_ns - keep_within_ns)
    if keep_daily:
        days: set[object] = set()
        for _, mid, t in newest_first:
            day = datetime.fromtimestamp(t / 1e9, tz=UTC).date()
            if day not in days:
                if len(days) == keep_daily:
                    break
                days.add(day)
                kept.add(mid)
    return [mid for _, mid, _ in newest_first if mid not in kept]


@dataclass
class _Candidate:
    """A pack to compact, with its live frames as read: (node id, index record as stored,
    decoded, frame bytes)."""

    pack_id: bytes
    stored: bytes
    record: PackRecord
    dead: int
    live: list[tuple[bytes, bytes, IndexRecord, bytes]]

    @property
    def live_bytes(self) -> int:
        return sum(len(frame) for *_, frame in self.live)


class _Stale(Exception):
    """A reset or chain deletion landed since the reachability pass: retention stops for
    this run rather than rank versions that may no longer be reached."""


@dataclass
class _Tally:
    """A GCReport being counted (the same fields)."""

    manifests_deleted: int = 0
    nodes_freed: int = 0
    packs_deleted: int = 0
    packs_compacted: int = 0
    bytes_reclaimed: int = 0
    deferred: int = 0
    dead_letters_processed: int = 0

    def report(self) -> GCReport:
        return GCReport(**dataclasses.asdict(self))


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
        read_nodes: Callable[[Sequence[bytes]], Mapping[bytes, bytes]],
        forget: Callable[[bytes], None],
        lease: float,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness
        self._read_nodes = read_nodes
        self._forget = forget
        self._lease = lease

    # -- deleting versions -----------------------------------------------------------------

    def delete(
        self, manifest_id: bytes, /, *, force_pinned: bool = False, discards: int | None = None
    ) -> bool:
        """Delete one version. False if it was already deleted (a tombstone exists);
        NotFoundError if it never existed; ConflictError for a head (of its chain or of a
        chain forked from it) or a pinned version. With ``discards``, the delete is also
        conditional on ``stat/discards`` still holding it (_Stale otherwise): retention
        ranks only versions some head reaches, as seen by the reachability pass."""
        text = manifest_id.hex()
        for _ in range(_ATTEMPTS):
            stored = self._meta.get(f"manifest/{text}")
            if stored is None:
                if self._meta.get(f"tomb/{text}") is not None:
                    return False
                raise NotFoundError(f"manifest {text} does not exist")
            manifest = decode_manifest(stored, manifest_id=text)
            head_bytes = self._meta.get(head_key(manifest.chain))
            if head_bytes is not None and decode_head(head_bytes).head == manifest_id:
                raise ConflictError(
                    f"manifest {text} is the head of chain {manifest.chain!r}: save a newer "
                    "version first, or delete the whole chain with delete_chain"
                )
            forks = self._meta.counter(f"fork/{text}")
            if forks > 0:
                raise ConflictError(
                    f"manifest {text} is the head of {forks} chain(s) forked from it: save on "
                    "or delete those first"
                )
            pinned = self._meta.get(f"pin/{text}")
            if pinned is not None and not force_pinned:
                raise ConflictError(f"manifest {text} is pinned; unpin it first")
            root_key = f"ref/{manifest.root.hex()}"
            count = self._meta.counter(root_key)
            if count < 1:
                # The reads above are not one snapshot: a delete of this very version may
                # have landed between them. Only a manifest still there with a count below
                # 1, both seen by one write's conditions, is an under-count.
                try:
                    self._meta.write(
                        [Check(f"manifest/{text}", stored), CheckCounter(root_key, count)]
                    )
                except ConditionFailed:
                    continue
                raise IntegrityError(
                    f"the root {manifest.root.hex()} of manifest {text} has count {count}, "
                    "below its references; run audit(repair=True) before deleting",
                    object_id=manifest.root.hex(),
                )
            now = time.time_ns()
            ops: list[Op] = [
                Check(f"manifest/{text}", stored),
                Check(head_key(manifest.chain), head_bytes),
                Check(f"pin/{text}", pinned),
                CheckCounter(root_key, count),
                CheckCounter(f"fork/{text}", 0),
                Delete(f"manifest/{text}"),
                Delete(f"pin/{text}"),
                Delete(f"hold/{text}"),
                Delete(f"orphan/{text}"),
                Delete(version_key(manifest.chain, manifest.seq, manifest_id)),
                Put(
                    f"tomb/{text}",
                    encode_record(Tombstone(manifest.chain, manifest.seq, manifest.time_ns, now)),
                ),
                Add(root_key, -1),
                Add("stat/manifests", -1),
                Add("stat/bytes_logical", -manifest.size),
                Add("stat/epoch", 1),
            ]
            if count == 1:
                ops.append(Put(f"zero/{manifest.root.hex()}", _le64(now)))
            if discards is not None:
                ops.append(CheckCounter("stat/discards", discards))
            try:
                self._meta.write(ops)
            except ConditionFailed:
                if discards is not None and self._meta.counter("stat/discards") != discards:
                    raise _Stale() from None
                continue
            self._forget(manifest_id)
            return True
        raise ConflictError(f"manifest {text} kept changing while being deleted; retry")

    def delete_chain(self, chain: str, /) -> int:
        """Remove ``chain``'s head, then every version of it; the number deleted."""
        head_bytes = self._meta.get(head_key(chain))
        while head_bytes is not None:
            head = decode_head(head_bytes).head
            stored = self._meta.get(f"manifest/{head.hex()}")
            ops: list[Op] = [
                Delete(head_key(chain), expect=head_bytes),
                Add("stat/chains", -1),
                Add("stat/epoch", 1),
                # Versions of other chains this one reached may now be reached by none.
                Add("stat/discards", 1),
            ]
            if (
                stored is not None
                and decode_manifest(stored, manifest_id=head.hex()).chain != chain
            ):
                ops.append(Add(f"fork/{head.hex()}", -1))
            try:
                self._meta.write(ops)
                break
            except ConditionFailed:
                head_bytes = self._meta.get(head_key(chain))
        had_head = head_bytes is not None
        crash_point("delete_chain.after_head")
        deleted = 0
        found = False
        for key, _ in list(self._meta.scan(version_prefix(chain))):
            found = True
            manifest_id = bytes.fromhex(key.rsplit("/", 1)[1])
            try:
                deleted += self.delete(manifest_id, force_pinned=True)
            except ConflictError:
                # A new chain of the same name was started meanwhile: its head stays.
                continue
        if not had_head and not found:
            raise NotFoundError(f"chain {chain!r} does not exist")
        return deleted

    def pin(self, manifest_id: bytes, /, *, pinned: bool) -> None:
        text = manifest_id.hex()
        if not pinned:
            self._meta.delete(f"pin/{text}")
            return
        stored = self._meta.get(f"manifest/{text}")
        if stored is None:
            raise NotFoundError(f"manifest {text} does not exist")
        try:
            self._meta.write([Check(f"manifest/{text}", stored), Put(f"pin/{text}", b"")])
        except ConditionFailed as exc:
            raise NotFoundError(f"manifest {text} was deleted meanwhile") from exc

    # -- gc --------------------------------------------------------------------------------

    def collect(
        self,
        *,
        keep_last: int | None,
        keep_within: float | None,
        keep_daily: int | None,
        chains: list[str] | None,
        grace: float,
        dry_run: bool,
        compact_bytes: int = COMPACT_BYTES,
        pack_size: int = 16 << 20,
    ) -> GCReport:
        """One gc run. A dry run is the same run over an overlay of the metadata store and
        an object store that discards writes: it reports what a gc would do, cascades
        included, and writes nothing."""
        if dry_run:
            rehearsal = Collector(
                DiscardingObjectStore(self._objects),
                OverlayMetaStore(self._meta),
                liveness=Rehearsal(self._liveness),
                read_nodes=self._read_nodes,
                forget=lambda _: None,
                lease=self._lease,
            )
            return rehearsal.collect(
                keep_last=keep_last,
                keep_within=keep_within,
                keep_daily=keep_daily,
                chains=chains,
                grace=grace,
                dry_run=False,
                compact_bytes=compact_bytes,
                pack_size=pack_size,
            )
        tally = _Tally()
        now = time.time_ns()
        self._drain_letters(tally)
        self._roll_back(tally, now=now)
        discards, unreachable = self._discard_unreachable(tally, now=now, grace=grace)
        with contextlib.suppress(_Stale):
            self._retain(
                tally,
                keep_last=keep_last,
                keep_within_ns=None if keep_within is None else int(keep_within * 1e9),
                keep_daily=keep_daily,
                chains=chains,
                now=now,
                discards=discards,
                unreachable=unreachable,
            )
        self._sweep(tally, cutoff=time.time_ns() - int(grace * 1e9))
        self._reclaim_packs(tally, compact_bytes=compact_bytes, pack_size=pack_size)
        return tally.report()

    def _drain_letters(self, tally: _Tally) -> None:
        for key, value in list(self._meta.scan("dlq/")):
            self._discard(decode_letter(value))
            with contextlib.suppress(ConditionFailed):
                self._meta.write([Delete(key, expect=value)])
            tally.dead_letters_processed += 1

    def _discard(self, packs: Iterable[bytes]) -> None:
        """Delete packs that no committed write indexed. Where commits write references in
        several batches, a rolled-back save may have indexed nodes into its packs: such a
        pack is kept (recorded, its other frames dead) for compaction to handle."""
        for pack_id in packs:
            if self._meta.max_batch is not None and self._keep_indexed(pack_id):
                continue
            self._objects.delete(pack_key(pack_id))

    def _keep_indexed(self, pack_id: bytes) -> bool:
        try:
            entries = parse_footer(self._objects.get(pack_key(pack_id)), pack_id=pack_id.hex())
        except NotFoundError:
            return False
        records = self._meta.get_many([f"node/{e.node_id.hex()}" for e in entries])
        live = [
            e
            for e in entries
            if (r := records.get(f"node/{e.node_id.hex()}")) is not None
            and IndexRecord.decode(r, node_id=e.node_id.hex()).pack_id == pack_id
        ]
        if not live:
            return False
        size = self._objects.stat(pack_key(pack_id))
        frames = sum(e.length for e in entries)
        dead = frames - sum(e.length for e in live)
        with contextlib.suppress(ConditionFailed):
            self._meta.write(
                [
                    Put(f"pack/{pack_id.hex()}", PackRecord(size, frames).encode(), expect=None),
                    Add(f"dead/{pack_id.hex()}", dead),
                    Add("stat/bytes_dead", dead),
                    Add("stat/packs", 1),
                    Add("stat/bytes_stored", size),
                ]
            )
        return True

    def _roll_back(self, tally: _Tally, *, now: int) -> None:
        for key, value in list(self._meta.scan("pending/")):
            txn = key[len("pending/") :]
            record = decode_pending(value)
            with self._liveness.claim(txn) as gone:
                if gone is False or (gone is None and record.lease_until_ns > now):
                    tally.deferred += 1
                    continue
                letter = f"dlq/{txn}"
                try:
                    self._meta.write(
                        [
                            Delete(key, expect=value),
                            Put(letter, encode_letter(record.packs)),
                            Add("stat/epoch", 1),
                        ]
                    )
                except ConditionFailed:
                    continue  # it committed, or was rolled back, meanwhile
                crash_point("gc.after_rollback_record")
                self._discard(record.packs)
                self._meta.delete(letter)

    def _retain(
        self,
        tally: _Tally,
        *,
        keep_last: int | None,
        keep_within_ns: int | None,
        keep_daily: int | None,
        chains: list[str] | None,
        now: int,
        discards: int,
        unreachable: set[bytes],
    ) -> None:
        """Retention over the versions a head reaches; the others wait for their grace
        period (:meth:`_discard_unreachable`) whatever the rules say."""
        if keep_last is None and keep_within_ns is None and keep_daily is None:
            return
        names = chains if chains is not None else [k[6:] for k, _ in self._meta.scan("chain/")]
        for chain in names:
            head_bytes = self._meta.get(head_key(chain))
            if head_bytes is None:
                continue
            head = decode_head(head_bytes).head
            versions: list[tuple[int, bytes, int]] = []
            for key, value in self._meta.scan(version_prefix(chain)):
                _, _, seq_hex, id_hex = key.split("/")
                manifest_id = bytes.fromhex(id_hex)
                if manifest_id not in unreachable:
                    versions.append((int(seq_hex, 16), manifest_id, _int(value)))
            ids = [mid.hex() for _, mid, _ in versions]
            pins = self._meta.get_many([f"pin/{t}" for t in ids])
            holds = self._meta.get_many([f"hold/{t}" for t in ids])
            keep = {head}
            for _, mid, _ in versions:
                if f"pin/{mid.hex()}" in pins:
                    keep.add(mid)
                until = holds.get(f"hold/{mid.hex()}")
                if until is not None and _int(until) > now:
                    keep.add(mid)
                    tally.deferred += 1
            doomed = select_for_deletion(
                versions,
                keep=keep,
                keep_last=keep_last,
                keep_within_ns=keep_within_ns,
                keep_daily=keep_daily,
                now_ns=now,
            )
            for mid in doomed:
                try:
                    tally.manifests_deleted += self.delete(mid, discards=discards)
                except (ConflictError, NotFoundError):
                    continue  # became a head, was pinned or deleted meanwhile
                crash_point("gc.after_delete_manifest")

    def _discard_unreachable(
        self, tally: _Tally, *, now: int, grace: float
    ) -> tuple[int, set[bytes]]:
        """Delete the versions no head reaches (through all parents) once they have been
        seen so for ``grace``: those a ``reset`` left behind, or that only a deleted chain
        reached. Pinned and held versions stay. Returns ``stat/discards`` as read first and
        the versions found unreachable, which retention then leaves alone.

        Only the writes that can leave a version unreached (reset, delete_chain) bump
        ``stat/discards``; the pass runs when it moved since the last complete pass
        (``gc/discards``) or versions seen unreachable wait (``orphan/<id>`` = first seen).
        Manifests are listed before the heads are read: a version saved in between is not
        a candidate, and one listed is reached from the heads unless it really is not.
        """
        discards = self._meta.counter("stat/discards")
        seen = self._meta.get("gc/discards")
        marks = dict(self._meta.scan("orphan/"))
        if not marks and (0 if seen is None else _int(seen)) == discards:
            return discards, set()
        listed = {bytes.fromhex(k[9:]): v for k, v in self._meta.scan("manifest/")}
        manifests = {mid: decode_manifest(v, manifest_id=mid.hex()) for mid, v in listed.items()}
        frontier = [decode_head(v).head for _, v in self._meta.scan("chain/")]
        reached: set[bytes] = set()
        while frontier:
            manifest_id = frontier.pop()
            if manifest_id in reached:
                continue
            reached.add(manifest_id)
            manifest = manifests.get(manifest_id)
            if manifest is None:  # saved after the listing, or deleted
                stored = self._meta.get(f"manifest/{manifest_id.hex()}")
                if stored is None:
                    continue
                manifest = decode_manifest(stored, manifest_id=manifest_id.hex())
            frontier.extend(manifest.parents)
        unreachable = {mid for mid in manifests if mid not in reached}
        texts = [mid.hex() for mid in unreachable]
        pins = self._meta.get_many([f"pin/{t}" for t in texts])
        holds = self._meta.get_many([f"hold/{t}" for t in texts])
        cutoff = now - int(grace * 1e9)
        for manifest_id in sorted(unreachable, key=lambda m: -manifests[m].seq):
            text = manifest_id.hex()
            # Marked even when pinned or held, so that the pass runs again until it is gone.
            mark = marks.get(f"orphan/{text}")
            if mark is None:
                with contextlib.suppress(ConditionFailed):
                    self._meta.write(
                        [
                            Check(f"manifest/{text}", listed[manifest_id]),
                            Put(f"orphan/{text}", _le64(now), expect=None),
                        ]
                    )
                since = now
            else:
                since = _int(mark)
            if f"pin/{text}" in pins:
                continue
            until = holds.get(f"hold/{text}")
            if until is not None and _int(until) > now:
                tally.deferred += 1
                continue
            if since > cutoff:
                tally.deferred += 1
                continue
            try:
                tally.manifests_deleted += self.delete(manifest_id)
            except (ConflictError, NotFoundError):
                continue  # forked from, or pinned, or deleted meanwhile
            crash_point("gc.after_delete_manifest")
        for key, value in marks.items():
            if bytes.fromhex(key[len("orphan/") :]) not in unreachable:
                with contextlib.suppress(ConditionFailed):
                    self._meta.write([Delete(key, expect=value)])  # reached again (a fork)
        self._meta.put("gc/discards", _le64(discards))
        return discards, unreachable

    def _sweep(self, tally: _Tally, *, cutoff: int) -> None:
        while True:
            eligible: list[tuple[bytes, bytes]] = []
            young = 0
            for key, value in self._meta.scan("zero/"):
                if _int(value) <= cutoff:
                    eligible.append((bytes.fromhex(key[5:]), value))
                else:
                    young += 1
            if not eligible:
                tally.deferred += young
                return
            progress = 0
            for start in range(0, len(eligible), _SWEEP_BATCH):
                progress += self._sweep_batch(tally, eligible[start : start + _SWEEP_BATCH])
            if not progress:
                tally.deferred += young
                return

    def _sweep_batch(self, tally: _Tally, marks: list[tuple[bytes, bytes]]) -> int:
        """Sweep what can be of ``marks`` (node id, mark); the number of marks resolved."""
        keys = [f"node/{node_id.hex()}" for node_id, _ in marks]
        records = self._meta.get_many(keys)
        counts = {node_id: self._meta.counter(f"ref/{node_id.hex()}") for node_id, _ in marks}
        stale: list[Op] = []
        doomed: list[tuple[bytes, bytes, bytes, IndexRecord]] = []
        for (node_id, mark), key in zip(marks, keys, strict=True):
            stored = records.get(key)
            if counts[node_id] != 0 or stored is None:
                # Revived by a save, or already swept: the mark goes, on condition that the
                # count has not changed (a decrement to zero since would re-mark it).
                stale.append(CheckCounter(f"ref/{node_id.hex()}", counts[node_id]))
                stale.append(Delete(f"zero/{node_id.hex()}", expect=mark))
            else:
                doomed.append((node_id, mark, stored, IndexRecord.decode(stored, node_id=key)))
        resolved = 0
        for index in range(0, len(stale), 2):
            with contextlib.suppress(ConditionFailed):
                self._meta.write(stale[index : index + 2])
                resolved += 1
        interior = [node_id for node_id, _, _, record in doomed if record.interior]
        children: dict[bytes, list[bytes]] = {}
        unread: set[bytes] = set()
        for start in range(0, len(interior), _READ_BATCH):
            batch = interior[start : start + _READ_BATCH]
            try:
                data = self._read_nodes(batch)
            except IntegrityError:
                # Another collector swept (and freed the pack of) some of them meanwhile:
                # read one by one and leave the unreadable to the writes' conditions, or
                # to the audit if one is really lost.
                data = {}
                for node_id in batch:
                    try:
                        data.update(self._read_nodes([node_id]))
                    except IntegrityError:
                        unread.add(node_id)
            for node_id, raw in data.items():
                children[node_id] = dag.children_of(raw, node_id=node_id.hex())
        doomed = [item for item in doomed if item[0] not in unread]
        groups = [(item, Counter(children.get(item[0], ()))) for item in doomed]
        if not groups:
            return resolved
        # One write for the batch; if it cannot go (a save revived a node, another collector
        # swept one), one write per node, so that the others still go.
        if self._write_sweep(tally, groups):
            return resolved + len(groups)
        if len(groups) > 1:
            resolved += sum(self._write_sweep(tally, [group]) for group in groups)
        return resolved

    def _write_sweep(
        self,
        tally: _Tally,
        groups: Sequence[tuple[tuple[bytes, bytes, bytes, IndexRecord], Counter[bytes]]],
    ) -> bool:
        ops = self._merge_sweep(groups)
        if ops is None:
            return False
        try:
            self._meta.write(ops)
        except ConditionFailed:
            return False
        tally.nodes_freed += len(groups)
        crash_point("gc.after_sweep")
        return True

    def _merge_sweep(
        self, groups: Sequence[tuple[tuple[bytes, bytes, bytes, IndexRecord], Counter[bytes]]]
    ) -> list[Op] | None:
        """The one write that sweeps ``groups``: None when it cannot be built (a child's
        count is below the references being released: an under-count the audit reports)."""
        ops: list[Op] = []
        releases: Counter[bytes] = Counter()
        mark_of: dict[bytes, bytes] = {}
        dead: Counter[bytes] = Counter()
        for (node_id, mark, stored, record), children in groups:
            text = node_id.hex()
            ops += [
                CheckCounter(f"ref/{text}", 0),
                Check(f"zero/{text}", mark),
                Check(f"node/{text}", stored),
                Delete(f"zero/{text}"),
                Delete(f"node/{text}"),
                DropCounter(f"ref/{text}"),
            ]
            dead[record.pack_id] += record.length
            for child, times in children.items():
                releases[child] += times
                mark_of[child] = max(mark_of.get(child, mark), mark)
        swept = {item[0] for item, _ in groups}
        for child, times in releases.items():
            if child in swept:
                return None
            key = f"ref/{child.hex()}"
            count = self._meta.counter(key)
            if count < times:
                return None
            ops += [CheckCounter(key, count), Add(key, -times)]
            if count == times:
                ops.append(Put(f"zero/{child.hex()}", mark_of[child]))
        for pack_id, length in dead.items():
            ops.append(Add(f"dead/{pack_id.hex()}", length))
        total = sum(dead.values())
        ops += [
            Add("stat/bytes_dead", total),
            Add("stat/nodes", -len(groups)),
            Add("stat/epoch", 1),
        ]
        return ops

    def _reclaim_packs(self, tally: _Tally, *, compact_bytes: int, pack_size: int) -> None:
        totals = dict(self._meta.counters("stat/"))
        stored_total = totals.get("stat/bytes_stored", 0)
        dead_total = totals.get("stat/bytes_dead", 0)
        compact = stored_total > 0 and dead_total >= COMPACT_REPO_DEAD * stored_total
        budget = compact_bytes
        # The live frames of several packs go into one new pack of up to pack_size, so that
        # compaction also merges the small packs of small saves.
        group: list[_Candidate] = []
        group_bytes = 0
        for key, dead in list(self._meta.counters("dead/")):
            pack_id = bytes.fromhex(key[5:])
            stored = self._meta.get(f"pack/{pack_id.hex()}")
            if stored is None:
                continue
            record = PackRecord.decode(stored, pack_id=pack_id.hex())
            if dead >= record.frames:
                self._delete_pack(tally, pack_id, stored, record, dead)
            elif compact and dead >= COMPACT_PACK_DEAD * record.frames and budget > 0:
                budget -= record.size
                candidate = self._candidate(tally, pack_id, stored, record, dead)
                if candidate is None:
                    continue
                if group and group_bytes + candidate.live_bytes > pack_size:
                    self._compact_group(tally, group)
                    group, group_bytes = [], 0
                group.append(candidate)
                group_bytes += candidate.live_bytes
        if group:
            self._compact_group(tally, group)

    def _pack_gone_ops(self, pack_id: bytes, stored: bytes, dead: int) -> list[Op]:
        text = pack_id.hex()
        size = PackRecord.decode(stored, pack_id=text).size
        return [
            CheckCounter(f"dead/{text}", dead),
            Check(f"pack/{text}", stored),
            Delete(f"pack/{text}"),
            DropCounter(f"dead/{text}"),
            Put(f"dlq/pack-{text}", encode_letter([pack_id])),
            Add("stat/packs", -1),
            Add("stat/bytes_stored", -size),
            Add("stat/bytes_dead", -dead),
            Add("stat/epoch", 1),
        ]

    def _delete_pack(
        self, tally: _Tally, pack_id: bytes, stored: bytes, record: PackRecord, dead: int
    ) -> None:
        try:
            self._meta.write(self._pack_gone_ops(pack_id, stored, dead))
        except ConditionFailed:
            return
        crash_point("gc.after_pack_record")
        self._objects.delete(pack_key(pack_id))
        crash_point("gc.after_pack_delete")
        self._meta.delete(f"dlq/pack-{pack_id.hex()}")
        tally.packs_deleted += 1
        tally.bytes_reclaimed += record.size

    def _candidate(
        self, tally: _Tally, pack_id: bytes, stored: bytes, record: PackRecord, dead: int
    ) -> _Candidate | None:
        """The live frames of a pack to compact (read now); None if there is nothing to copy
        (the pack is gone, or turned out to be all dead and was deleted)."""
        try:
            data = self._objects.get(pack_key(pack_id))
        except NotFoundError:
            return None
        entries = parse_footer(data, pack_id=pack_id.hex())
        keys = [f"node/{e.node_id.hex()}" for e in entries]
        records = self._meta.get_many(keys)
        live: list[tuple[bytes, bytes, IndexRecord, bytes]] = []
        for entry, key in zip(entries, keys, strict=True):
            raw = records.get(key)
            if raw is None:
                continue
            old = IndexRecord.decode(raw, node_id=entry.node_id.hex())
            if old.pack_id == pack_id and old.offset == entry.offset:
                frame = data[old.offset : old.offset + old.length]
                live.append((entry.node_id, raw, old, frame))
        if not live:
            self._delete_pack(tally, pack_id, stored, record, dead)
            return None
        return _Candidate(pack_id, stored, record, dead, live)

    def _compact_group(self, tally: _Tally, group: list[_Candidate]) -> None:
        if not self._compact(tally, group) and len(group) > 1:
            # One of them changed meanwhile: the others still go, one by one.
            for candidate in group:
                self._compact(tally, [candidate])

    def _compact(self, tally: _Tally, group: list[_Candidate]) -> bool:
        """Copy the live frames of ``group`` into one new pack, move their index records and
        retire the old packs, in one write conditional on every record; False if a
        condition failed (the new pack is then deleted)."""
        txn = new_txn_id()
        prepare = Prepare(
            self._objects,
            self._meta,
            txn=txn,
            chain="",
            lease=self._lease,
            liveness=self._liveness,
        )
        try:
            writer = PackWriter(prepare.salt)
            moving = [item for candidate in group for item in candidate.live]
            for node_id, _, old, frame in moving:
                writer.add_frame(node_id, frame, old.size)
            new_id, new_data, new_entries = writer.finish()
            prepare.ship(new_id, new_data, last=True)
            crash_point("gc.after_compact_upload")
            ops: list[Op] = []
            for (node_id, raw, old, _), entry in zip(moving, new_entries, strict=True):
                moved = IndexRecord(new_id, entry.offset, entry.length, entry.size, old.flags)
                ops.append(Put(f"node/{node_id.hex()}", moved.encode(), expect=raw))
            ops.append(
                Put(
                    f"pack/{new_id.hex()}",
                    PackRecord(len(new_data), sum(e.length for e in new_entries)).encode(),
                    expect=None,
                )
            )
            ops.append(Delete(f"pending/{txn}", expect=prepare.recorded))
            for candidate in group:
                ops += self._pack_gone_ops(candidate.pack_id, candidate.stored, candidate.dead)
            ops += [Add("stat/packs", 1), Add("stat/bytes_stored", len(new_data))]
            try:
                self._meta.write(ops)
            except ConditionFailed:
                prepare.abandon()
                return False
            prepare.recorded = None
        finally:
            prepare.release()
        crash_point("gc.after_compact_index")
        for candidate in group:
            self._objects.delete(pack_key(candidate.pack_id))
            self._meta.delete(f"dlq/pack-{candidate.pack_id.hex()}")
            tally.packs_compacted += 1
            tally.bytes_reclaimed += candidate.record.size
        tally.bytes_reclaimed -= len(new_data)
        return True

    # -- audit -----------------------------------------------------------------------------

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
        epoch = meta.counter("stat/epoch")
        # Packs are listed before the records are read: a pack uploaded after the listing
        # is not seen, and one listed has its pending entry (written before the upload) or
        # its record (written by its commit) visible below.
        listed = {bytes.fromhex(key.rsplit("/", 1)[1]) for key in self._objects.list("packs/")}
        pending = {key[len("pending/") :]: decode_pending(v) for key, v in meta.scan("pending/")}
        letters = [decode_letter(v) for _, v in meta.scan("dlq/")]
        owned = {p for record in pending.values() for p in record.packs}
        owned.update(p for packs in letters for p in packs)
        pack_records = {bytes.fromhex(k[5:]) for k, _ in meta.scan("pack/")}
        heads = {k[6:]: decode_head(v) for k, v in meta.scan("chain/")}
        manifests: dict[bytes, Manifest] = {
            bytes.fromhex(k[9:]): decode_manifest(v, manifest_id=k[9:])
            for k, v in meta.scan("manifest/")
        }
        tombs = {bytes.fromhex(k[5:]) for k, _ in meta.scan("tomb/")}
        index = {
            bytes.fromhex(k[5:]): IndexRecord.decode(v, node_id=k[5:])
            for k, v in meta.scan("node/")
        }
        counts = {bytes.fromhex(k[4:]): v for k, v in meta.counters("ref/")}
        marks = {bytes.fromhex(k[5:]) for k, _ in meta.scan("zero/")}
        forks = {k[5:]: v for k, v in meta.counters("fork/")}
        forks_expected: Counter[str] = Counter(
            h.head.hex()
            for chain, h in heads.items()
            if h.head in manifests and manifests[h.head].chain != chain
        )

        expected: Counter[bytes] = Counter(m.root for m in manifests.values())
        children: dict[bytes, list[bytes]] = {}
        unreadable: set[bytes] = set()
        interior = [node_id for node_id, record in index.items() if record.interior]
        for start in range(0, len(interior), _READ_BATCH):
            batch = interior[start : start + _READ_BATCH]
            try:
                found = self._read_nodes(batch)
            except IntegrityError:
                found = {}
                for node_id in batch:
                    try:
                        found.update(self._read_nodes([node_id]))
                    except IntegrityError:
                        unreadable.add(node_id)
            for node_id, raw in found.items():
                children[node_id] = dag.children_of(raw, node_id=node_id.hex())
                expected.update(children[node_id])

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
        broken = sorted(
            mid.hex()
            for mid, m in manifests.items()
            if any(p not in manifests and p not in tombs for p in m.parents)
        )
        broken += sorted(f"chain:{c}" for c, h in heads.items() if h.head not in manifests)
        # A forked chain's head counts in fork/<id>, which keeps delete() off it.
        fork_fix = {
            text: forks_expected.get(text, 0) - forks.get(text, 0)
            for text in {*forks, *forks_expected}
            if forks_expected.get(text, 0) != forks.get(text, 0)
        }
        under += sorted(f"fork:{t}" for t, delta in fork_fix.items() if delta > 0)
        over += sorted(f"fork:{t}" for t, delta in fork_fix.items() if delta < 0)
        orphans = sorted(p.hex() for p in listed if p not in pack_records and p not in owned)
        if meta.counter("stat/epoch") != epoch:
            return None
        repaired = 0
        if repair:
            repaired = self._repair(
                epoch,
                expected=expected,
                counts=counts,
                index=index,
                fix=[t for t in (*under, *over) if not t.startswith("fork:")],
                fork_fix=fork_fix,
                unswept=unswept,
                orphans=orphans,
                grace=grace,
                lost_parents={
                    parent: manifest
                    for manifest in manifests.values()
                    for parent in manifest.parents
                    if parent not in manifests and parent not in tombs
                },
            )
            if repaired < 0:
                return None
        return AuditReport(
            ok=not (under or missing or broken),
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
        )

    def _repair(
        self,
        epoch: int,
        *,
        expected: Counter[bytes],
        counts: dict[bytes, int],
        index: dict[bytes, IndexRecord],
        fix: list[str],
        fork_fix: dict[str, int],
        unswept: list[str],
        orphans: list[str],
        grace: float,
        lost_parents: dict[bytes, Manifest],
    ) -> int:
        """Fix counts and mark garbage in one write conditional on nothing having changed
        since the audit read (``stat/epoch``); -1 if something did. Then delete orphan packs
        older than the grace period.

        A parent that is neither present nor tombstoned is lost (the audit reported it); it
        gets a tombstone with ``time_ns`` 0 (unknown), so that the chain reads as pruned
        there rather than broken. Nothing reachable depends on it: a version reaches its
        own nodes, not its parent's.
        """
        now = time.time_ns()
        ops: list[Op] = [CheckCounter("stat/epoch", epoch)]
        for parent, child in lost_parents.items():
            tombstone = Tombstone(child.chain, max(child.seq - 1, 0), 0, now)
            ops.append(Put(f"tomb/{parent.hex()}", encode_record(tombstone), expect=None))
        for text in fix:
            node_id = bytes.fromhex(text)
            want = expected.get(node_id, 0)
            if want == 0 and node_id not in index:
                ops.append(DropCounter(f"ref/{text}"))
                continue
            ops.append(Add(f"ref/{text}", want - counts.get(node_id, 0)))
            if want == 0:
                ops.append(Put(f"zero/{text}", _le64(now)))
        for text in unswept:
            if text not in fix:
                ops.append(Put(f"zero/{text}", _le64(now)))
        ops.extend(Add(f"fork/{text}", delta) for text, delta in fork_fix.items())
        if len(ops) > 1:
            ops.append(Add("stat/epoch", 1))
            try:
                self._meta.write(ops)
            except ConditionFailed:
                return -1
        repaired = len(fix) + len(fork_fix) + len(unswept) + len(lost_parents)
        cutoff = now - int(grace * 1e9)
        for text in orphans:
            key = pack_key(bytes.fromhex(text))
            try:
                if self._objects.modified_ns(key) > cutoff:
                    continue
            except NotFoundError:
                continue
            if self._meta.get(f"pack/{text}") is not None:
                continue
            self._objects.delete(key)
            repaired += 1
        return repaired
