"""Reclaiming pack space: deleting dead packs and compacting the mostly dead ones.

Dead frame bytes are counted per pack (``dead/<pack>``) by the writes that kill frames, so
candidates come from those counters and no pass reads every pack. A pack whose frames are
all dead is deleted: its record goes in one write that leaves a dead letter naming it, then
the object, then the letter. One with at least ``COMPACT_PACK_DEAD`` of dead frame bytes is
compacted when the repository holds at least ``COMPACT_REPO_DEAD`` of dead bytes: its live
frames are copied into a new pack under a pending entry of its own (a compaction is a
transaction like a save), and one write, conditional on every index record moved, moves the
index, records the new pack and retires the old ones as dead packs. A crash between two
steps leaves a dead letter or a pending entry for the next gc, never a node without its pack.

Where that write does not fit ``max_batch``, the compaction goes in batches, each safe on its
own: first the new pack is recorded with all its frames dead (``dead/<new>`` = its frames);
then index records move in batches, each conditional on the compaction's pending entry and
on every record it moves, and each moving frame bytes from live to dead in its counters (the
new pack's ``dead/`` down, the old pack's up); the pending entry goes last. The old packs are
then all dead and retired as any dead pack. A crash or a lost race at any point leaves every
pack's ``dead/`` counter exact, so what is left is reclaimed by a later gc.

A pack that holds the frame of a node being swept in slices (``sweep/<id>`` names it) is
neither compacted nor deleted: the sweep still reads that node.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .._crash import crash_point
from ..errors import ConflictError, IntegrityError, NotFoundError
from ..keys import (
    DEAD,
    PENDING,
    STAT,
    STAT_BYTES_DEAD,
    STAT_BYTES_STORED,
    STAT_EPOCH,
    STAT_PACKS,
    CountKeys,
    IndexRecord,
    PackRecord,
    Tombstone,
    dead_key,
    decode_letter,
    decode_pending,
    decode_sweep,
    encode_le64,
    encode_letter,
    encode_record,
    id_of,
    manifest_key,
    node_key,
    pack_letter_key,
    pack_record_key,
    pending_key,
    sum_totals,
    sweep_key,
    tomb_key,
    zero_key,
)
from ..liveness import Liveness
from ..manifests import decode_manifest
from ..meta import (
    Add,
    Check,
    CheckCounter,
    ConditionFailed,
    Delete,
    DropCounter,
    MetaStore,
    Op,
    Put,
)
from ..objects import ObjectStore
from ..packs import PackEntry, PackWriter, manifest_bytes, pack_key, parse_footer, parse_pack
from ..prepare import Prepare, new_txn_id
from .batches import HeadFailed, write_items
from .manifests import manifest_states, may_hold_manifests
from .tally import Tally

__all__ = [
    "COMPACT_BYTES",
    "COMPACT_PACK_DEAD",
    "COMPACT_POINTS",
    "COMPACT_REPO_DEAD",
    "LiveFrame",
    "PackReclaimer",
]

COMPACT_PACK_DEAD = 0.20
COMPACT_REPO_DEAD = 0.05
COMPACT_BYTES = 1 << 30


LiveFrame = tuple[bytes, bytes, IndexRecord, bytes]
"""A frame to move: node id, its index record as stored, decoded, and the frame's bytes."""

COMPACT_POINTS = ("gc.after_compact_upload", "gc.after_compact_index")
"""Compaction's crash points: after the new pack's upload, after the index moved."""


@dataclass
class _Candidate:
    """A pack to compact, with its live frames as read: (node id, index record as stored,
    decoded, frame bytes)."""

    pack_id: bytes
    stored: bytes
    record: PackRecord
    dead: int
    live: list[LiveFrame]
    # Live manifests the pack carries (id, bytes): copied into the compacted pack.
    manifests: list[tuple[bytes, bytes]]

    @property
    def live_bytes(self) -> int:
        return sum(len(frame) for *_, frame in self.live)


@dataclass(frozen=True)
class Settled:
    """What became of one pack of a dead letter (see :meth:`PackReclaimer.keep_indexed`)."""

    delete: bool  # nothing indexed in it: the caller deletes its object
    letter: bytes | None  # the letter as it is now; None once it is gone


class PackReclaimer:
    """Deletes and compacts packs from their ``dead/`` counters; also records the packs of a
    rolled-back save that a committed batch indexed into (:meth:`keep_indexed`)."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        /,
        *,
        liveness: Liveness,
        lease: float,
        counts: CountKeys,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness
        self._lease = lease
        self._counts = counts

    def compacting(self) -> dict[bytes, int]:
        """The ``dead/`` counters of the packs compaction would take now, by pack id, when
        the repository has enough dead bytes for it to run (else empty): the packs for which
        ``dead >= COMPACT_PACK_DEAD * frames`` among them are its candidates."""
        if not self._compaction_due():
            return {}
        return {id_of(key, DEAD): dead for key, dead in self._meta.counters(DEAD)}

    def _compaction_due(self) -> bool:
        totals = sum_totals(self._meta.counters(STAT))
        stored_total = totals.get("bytes_stored", 0)
        dead_total = totals.get("bytes_dead", 0)
        return stored_total > 0 and dead_total >= COMPACT_REPO_DEAD * stored_total

    def reclaim(self, tally: Tally, *, compact_bytes: int, pack_size: int) -> None:
        compact = self._compaction_due()
        budget = compact_bytes
        # The live frames of several packs go into one new pack of up to pack_size, so that
        # compaction also merges the small packs of small saves.
        group: list[_Candidate] = []
        group_bytes = 0
        counted = list(self._meta.counters(DEAD))
        pending = self._pending_packs() if counted else set()
        for key, dead in counted:
            pack_id = id_of(key, DEAD)
            if pack_id in pending:
                continue  # a compaction's or repack's new pack, still being filled
            stored = self._meta.get(pack_record_key(pack_id))
            if stored is None:
                continue
            record = PackRecord.decode(stored, pack_id=pack_id.hex())
            if not record.frames:
                continue  # manifests only (gc packed them): nothing here to reclaim
            all_dead = dead >= record.frames
            if all_dead and not may_hold_manifests(self._objects, pack_id, record.size):
                self._delete_pack(tally, pack_id, stored, record, dead)
            elif all_dead or (compact and dead >= COMPACT_PACK_DEAD * record.frames and budget > 0):
                # A pack of format 2 goes through compaction even when all its frames are
                # dead: live manifests it carries are copied on, unknown ones keep it.
                budget -= 0 if all_dead else record.size
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

    def keep_indexed(self, pack_id: bytes, /, *, letter: str, value: bytes) -> Settled:
        """Settle one pack of dead letter ``letter`` (as ``value``): the caller deletes the
        object when the pack has no node indexed in it and no sweep reading it; otherwise
        the pack is kept and taken out of the letter.

        A kept pack (a save whose references went in several batches indexed nodes into it
        before it failed) is recorded, its frames that are not live counted dead (so that
        ``dead/`` ends exactly at what is not live, whatever the save counted before: a
        commit that did not fit one write records its packs and their reused frames first),
        its size in the totals, and its indexed nodes in ``stat/nodes``, which no commit
        added. One write does it and takes the pack out of the letter, on condition of the
        letter as read: exactly once, however many collectors drain it. The nodes indexed
        there with a count of 0 and no ``zero/`` mark (no manifest reaches them) get a mark
        first, so that the sweep collects them."""
        try:
            data = self._objects.get(pack_key(pack_id))
            entries = parse_footer(data, pack_id=pack_id.hex())
        except (NotFoundError, IntegrityError):
            # Gone, or no pack at all (a save indexes nothing before its packs are whole).
            return Settled(delete=True, letter=value)
        for _ in range(8):
            records = self._meta.get_many([node_key(e.node_id) for e in entries])
            indexed = [
                e
                for e in entries
                if (r := records.get(node_key(e.node_id))) is not None
                and IndexRecord.decode(r, node_id=e.node_id.hex()).pack_id == pack_id
            ]
            keep = {e.node_id for e in indexed} | self._sweeping(pack_id, entries)
            live = [e for e in entries if e.node_id in keep]
            stored = self._meta.get(pack_record_key(pack_id))
            if not live and stored is None:
                return Settled(delete=True, letter=value)
            # Marked before the pack leaves the letter: a mark that fails to land is put
            # again by the next collector draining the letter; once settled, none would.
            self._mark_unreferenced([e.node_id for e in indexed])
            counted = self._meta.counter(dead_key(pack_id))
            rest = [p for p in decode_letter(value) if p != pack_id]
            ops: list[Op] = [
                Check(letter, value),
                Put(letter, encode_letter(rest)) if rest else Delete(letter),
                Check(pack_record_key(pack_id), stored),
                CheckCounter(dead_key(pack_id), counted),
                Add(STAT_EPOCH, 1),
            ]
            if not live:
                # Recorded by a commit that did not land (one too big for a single write
                # records its packs first): the record goes with the pack.
                assert stored is not None
                ops += [
                    Delete(pack_record_key(pack_id)),
                    DropCounter(dead_key(pack_id)),
                    Add(STAT_PACKS, -1),
                    Add(STAT_BYTES_STORED, -PackRecord.decode(stored, pack_id=pack_id.hex()).size),
                    Add(STAT_BYTES_DEAD, -counted),
                ]
            else:
                # The save never committed and never will (its entry is gone): a manifest
                # it carries is tombstoned, so that the kept pack may go once it is dead.
                ops += self._tombstone_uncommitted(pack_id, data)
                frames = sum(e.length for e in entries)
                dead = frames - sum(e.length for e in live)
                ops += [
                    Add(dead_key(pack_id), dead - counted),
                    Add(STAT_BYTES_DEAD, dead - counted),
                ]
                if stored is None:
                    size = self._objects.stat(pack_key(pack_id))
                    ops += [
                        Put(pack_record_key(pack_id), PackRecord(size, frames).encode()),
                        Add(STAT_PACKS, 1),
                        Add(STAT_BYTES_STORED, size),
                    ]
            try:
                self._meta.write(ops)
            except ConditionFailed:
                current = self._meta.get(letter)
                if current is None or pack_id not in decode_letter(current):
                    return Settled(delete=False, letter=current)  # another collector did
                value = current
                continue  # a sweep counted a frame dead meanwhile: count again
            return Settled(delete=not live, letter=encode_letter(rest) if rest else None)
        raise ConflictError(f"pack {pack_id.hex()} kept changing while gc settled it; run gc again")

    def _tombstone_uncommitted(self, pack_id: bytes, data: bytes) -> list[Op]:
        """Tombstones for the manifests pack ``data`` carries that the metadata does not
        know, each on condition that the manifest is still absent."""
        ops: list[Op] = []
        now = time.time_ns()
        contents = parse_pack(data, pack_id=pack_id.hex())
        unknown = set(manifest_states(self._meta, pack_id, data).unknown)
        for entry in contents.manifests:
            if entry.node_id not in unknown:
                continue
            try:
                manifest = decode_manifest(
                    manifest_bytes(data, entry, pack_id=pack_id.hex()),
                    manifest_id=entry.node_id.hex(),
                )
                tomb = Tombstone(manifest.chain, manifest.seq, manifest.time_ns, now)
            except IntegrityError:
                tomb = Tombstone("", 0, 0, now)
            ops += [
                Check(manifest_key(entry.node_id), None),
                Put(tomb_key(entry.node_id), encode_record(tomb), expect=None),
            ]
        return ops

    def _mark_unreferenced(self, node_ids: list[bytes]) -> None:
        """Put ``zero/`` = now for each node of ``node_ids`` whose count is 0 and that has no
        mark, each on condition that its count is still 0 (a save reusing it since keeps
        it) and that it still has no mark."""
        marks = self._meta.get_many([zero_key(node_id) for node_id in node_ids])
        now = encode_le64(time.time_ns())
        items: list[list[Op]] = []
        for node_id in node_ids:
            count = self._counts.key(node_id)
            if zero_key(node_id) in marks or self._meta.counter(count) != 0:
                continue
            items.append([CheckCounter(count, 0), Put(zero_key(node_id), now, expect=None)])
        write_items(self._meta, items)

    def _sweeping(self, pack_id: bytes, entries: list[PackEntry]) -> set[bytes]:
        """The nodes of ``entries`` whose frame in ``pack_id`` a sweep in slices still
        reads (``sweep/<id>`` names it there)."""
        found = self._meta.get_many([sweep_key(e.node_id) for e in entries])
        sweeping: set[bytes] = set()
        for entry in entries:
            value = found.get(sweep_key(entry.node_id))
            if value is None:
                continue
            record = IndexRecord.decode(decode_sweep(value).record, node_id=entry.node_id.hex())
            if record.pack_id == pack_id:
                sweeping.add(entry.node_id)
        return sweeping

    def _pack_gone_ops(self, pack_id: bytes, stored: bytes, dead: int) -> list[Op]:
        """Retire a pack: its record and counter go, a dead letter names it until its
        object is deleted."""
        size = PackRecord.decode(stored, pack_id=pack_id.hex()).size
        return [
            CheckCounter(dead_key(pack_id), dead),
            Check(pack_record_key(pack_id), stored),
            Delete(pack_record_key(pack_id)),
            DropCounter(dead_key(pack_id)),
            Put(pack_letter_key(pack_id), encode_letter([pack_id])),
            Add(STAT_PACKS, -1),
            Add(STAT_BYTES_STORED, -size),
            Add(STAT_BYTES_DEAD, -dead),
            Add(STAT_EPOCH, 1),
        ]

    def _delete_pack(
        self, tally: Tally, pack_id: bytes, stored: bytes, record: PackRecord, dead: int
    ) -> None:
        if self._retire(pack_id, stored, dead):
            tally.packs_deleted += 1
            tally.bytes_reclaimed += record.size

    def _retire(self, pack_id: bytes, stored: bytes, dead: int) -> bool:
        """Retire an all-dead pack and delete its object; False if its record or counter
        changed since read."""
        try:
            self._meta.write(self._pack_gone_ops(pack_id, stored, dead))
        except ConditionFailed:
            return False
        crash_point("gc.after_pack_record")
        self._objects.delete(pack_key(pack_id))
        crash_point("gc.after_pack_delete")
        self._meta.delete(pack_letter_key(pack_id))
        return True

    def _candidate(
        self, tally: Tally, pack_id: bytes, stored: bytes, record: PackRecord, dead: int
    ) -> _Candidate | None:
        """The live frames of a pack to compact (read now); None if there is nothing to copy
        (the pack is gone, or turned out to be all dead and was deleted)."""
        try:
            data = self._objects.get(pack_key(pack_id))
        except NotFoundError:
            return None
        entries = parse_footer(data, pack_id=pack_id.hex())
        keys = [node_key(e.node_id) for e in entries]
        records = self._meta.get_many(keys)
        live: list[LiveFrame] = []
        for entry, key in zip(entries, keys, strict=True):
            raw = records.get(key)
            if raw is None:
                continue
            old = IndexRecord.decode(raw, node_id=entry.node_id.hex())
            if old.pack_id == pack_id and old.offset == entry.offset:
                frame = data[old.offset : old.offset + old.length]
                live.append((entry.node_id, raw, old, frame))
        if self._sweeping(pack_id, entries):
            return None  # read after the records: a sweep that removed a node since fails a move
        states = manifest_states(self._meta, pack_id, data)
        if states.unknown:
            # The only copy of versions the metadata does not know to be deleted: kept.
            tally.deferred += 1
            return None
        if not live and not states.live:
            self._delete_pack(tally, pack_id, stored, record, dead)
            return None
        return _Candidate(pack_id, stored, record, dead, live, states.live)

    def _compact_group(self, tally: Tally, group: list[_Candidate]) -> None:
        if not self._compact(tally, group) and len(group) > 1:
            # One of them changed meanwhile: the others still go, one by one.
            for candidate in group:
                self._compact(tally, [candidate])

    def _compact(self, tally: Tally, group: list[_Candidate]) -> bool:
        """Copy the live frames of ``group`` into one new pack and retire the old packs (see
        :meth:`move_frames`); False if a condition failed."""
        moving = [item for candidate in group for item in candidate.live]
        size = self.move_frames(tally, moving, retiring=group, points=COMPACT_POINTS)
        if size is None:
            return False
        tally.bytes_reclaimed -= size
        return True

    def move_frames(
        self,
        tally: Tally,
        moving: Sequence[LiveFrame],
        /,
        *,
        retiring: Sequence[_Candidate] = (),
        points: tuple[str, str],
    ) -> int | None:
        """Copy the frames ``moving`` unchanged into one new pack and move their index
        records there, in one write conditional on every record; the new pack's size, or
        None if a condition failed (the new pack is then deleted). Where that write does not
        fit ``max_batch``, in batches (see the module docstring).

        The one path by which gc moves nodes between packs: compaction moves every live
        frame of the packs ``retiring``, which the same write retires; the repack
        (:mod:`.repack`) moves some frames of packs that stay, whose ``dead/`` counters the
        write raises by the frames moved out, and deletes those left all dead afterwards.
        ``points`` are the crash points after the upload and after the index moved."""
        txn = new_txn_id()
        prepare = Prepare(
            self._objects,
            self._meta,
            txn=txn,
            chain="",
            lease=self._lease,
            liveness=self._liveness,
        )
        retired = {candidate.pack_id for candidate in retiring}
        # Frames moved out of packs that stay are dead there from the move on.
        left: dict[bytes, int] = {}
        for _, _, old, _ in moving:
            if old.pack_id not in retired:
                left[old.pack_id] = left.get(old.pack_id, 0) + old.length
        batched = False
        try:
            writer = PackWriter(prepare.salt)
            for node_id, _, old, frame in moving:
                writer.add_frame(node_id, frame, old.size)
            carried = {i: data for candidate in retiring for i, data in candidate.manifests}
            for manifest_id, manifest in carried.items():
                writer.add_manifest(manifest_id, manifest)
            new_id, new_data, new_entries = writer.finish()
            prepare.ship(new_id, new_data, last=True)
            crash_point(points[0])
            moves = [
                (node_id, raw, old, IndexRecord(new_id, e.offset, e.length, e.size, old.flags))
                for (node_id, raw, old, _), e in zip(moving, new_entries, strict=True)
            ]
            new_record = PackRecord(len(new_data), sum(e.length for e in new_entries))
            ops: list[Op] = [
                Put(node_key(node_id), moved.encode(), expect=raw)
                for node_id, raw, _, moved in moves
            ]
            ops.append(Put(pack_record_key(new_id), new_record.encode(), expect=None))
            ops.append(Delete(pending_key(txn), expect=prepare.recorded))
            for candidate in retiring:
                ops += self._pack_gone_ops(candidate.pack_id, candidate.stored, candidate.dead)
            ops += [Add(dead_key(pack_id), length) for pack_id, length in left.items()]
            if left:
                ops.append(Add(STAT_BYTES_DEAD, sum(left.values())))
            ops += [Add(STAT_PACKS, 1), Add(STAT_BYTES_STORED, len(new_data))]
            limit = self._meta.max_batch
            if limit is not None and len(ops) > limit:
                batched = True
                if not self._move_in_batches(prepare, txn, new_id, new_record, moves):
                    return None
            else:
                try:
                    self._meta.write(ops)
                except ConditionFailed:
                    prepare.abandon()
                    return None
            prepare.recorded = None
        finally:
            prepare.release()
        crash_point(points[1])
        for candidate in retiring:
            if batched:
                # Every frame moved (or swept meanwhile) is dead there now: the old pack
                # goes as any dead pack, unless a sweep in slices still reads a frame of it.
                if not self._retire_dead([candidate.pack_id], manifests_carried=True):
                    continue
            else:
                self._objects.delete(pack_key(candidate.pack_id))
                self._meta.delete(pack_letter_key(candidate.pack_id))
            tally.packs_compacted += 1
            tally.bytes_reclaimed += candidate.record.size
        # A pack whose every frame moved out goes as any dead pack.
        for size in self._retire_dead(list(left)).values():
            tally.packs_deleted += 1
            tally.bytes_reclaimed += size
        return len(new_data)

    def _move_in_batches(
        self,
        prepare: Prepare,
        txn: str,
        new_id: bytes,
        new_record: PackRecord,
        moves: list[tuple[bytes, bytes, IndexRecord, IndexRecord]],
    ) -> bool:
        """Record the new pack all dead, move the index records into it in batches (each
        moving its frames' bytes from dead to live there, and from live to dead in the old
        pack), then delete the pending entry; every write conditional on that entry. False
        when the compaction was rolled back meanwhile (what landed is exact as it is)."""
        key = pending_key(txn)
        expected: list[bytes | None] = [prepare.recorded]

        def head() -> list[Op]:
            return [Check(key, expected[0])]

        def still_ours() -> bool:
            # A failed condition on the entry: rolled back by gc (gone), or rewritten by
            # the compaction's own lease renewal (then the new value is the one to expect).
            current = self._meta.get(key)
            expected[0] = current
            return current is not None

        frames = new_record.frames
        items: list[list[Op]] = [
            [
                Put(pack_record_key(new_id), new_record.encode(), expect=None),
                Add(dead_key(new_id), frames),
                Add(STAT_BYTES_DEAD, frames),
                Add(STAT_PACKS, 1),
                Add(STAT_BYTES_STORED, new_record.size),
            ]
        ]
        items += [
            [
                Put(node_key(node_id), moved.encode(), expect=raw),
                Add(dead_key(old.pack_id), old.length),
                Add(dead_key(new_id), -moved.length),
                Add(STAT_BYTES_DEAD, old.length - moved.length),
            ]
            for node_id, raw, old, moved in moves
        ]
        first = True
        while items:
            try:
                # The pack record goes first, alone with the conditions, so that nothing
                # is indexed into a pack without a record.
                write_items(
                    self._meta, items[:1] if first else items, head=head, tail=[Add(STAT_EPOCH, 1)]
                )
            except HeadFailed as exc:
                if not still_ours():
                    if first:
                        prepare.abandon()
                    return False
                done = set(exc.applied)
                if first and 0 in done:
                    first = False
                    items = items[1:]
                else:
                    items = [item for index, item in enumerate(items) if index not in done]
                continue
            items = items[1:] if first else []
            first = False
        while True:
            try:
                self._meta.write([Delete(key, expect=expected[0])])
                return True
            except ConditionFailed:
                if not still_ours():
                    return False

    def _retire_dead(
        self, pack_ids: list[bytes], *, manifests_carried: bool = False
    ) -> dict[bytes, int]:
        """Retire those of ``pack_ids`` whose frames are all dead (as read again now) and
        that no pending entry names; the size of each retired. A pack that may carry
        manifests stays for :meth:`reclaim`, which copies live ones on before it goes,
        unless ``manifests_carried`` (a compaction that copied them already)."""
        dead_packs: list[tuple[bytes, bytes, int, int]] = []
        for pack_id in pack_ids:
            stored = self._meta.get(pack_record_key(pack_id))
            if stored is None:
                continue
            record = PackRecord.decode(stored, pack_id=pack_id.hex())
            dead = self._meta.counter(dead_key(pack_id))
            if dead < record.frames:
                continue
            if not manifests_carried and may_hold_manifests(self._objects, pack_id, record.size):
                continue
            dead_packs.append((pack_id, stored, dead, record.size))
        if not dead_packs:
            return {}
        pending = self._pending_packs()
        return {
            pack_id: size
            for pack_id, stored, dead, size in dead_packs
            if pack_id not in pending and self._retire(pack_id, stored, dead)
        }

    def _pending_packs(self) -> set[bytes]:
        """The packs pending entries name. Read after the ``dead/`` counters of the packs
        to retire: a compaction or repack in batches records its new pack all dead, then
        moves records into it on condition of its pending entry, so a pack that looks all
        dead may be one still being filled. If its entry is gone by now, no move of it can
        land any more, and any that landed since the counter was read fails the retire's
        condition on the counter."""
        return {
            pack_id
            for _, value in self._meta.scan(PENDING)
            for pack_id in decode_pending(value).packs
        }
