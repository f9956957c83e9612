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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .._crash import crash_point
from ..commit import Prepare, new_txn_id
from ..errors import NotFoundError
from ..keys import (
    DEAD,
    STAT,
    STAT_BYTES_DEAD,
    STAT_BYTES_STORED,
    STAT_EPOCH,
    STAT_PACKS,
    IndexRecord,
    PackRecord,
    dead_key,
    encode_letter,
    id_of,
    node_key,
    pack_letter_key,
    pack_record_key,
    pending_key,
    sum_totals,
)
from ..liveness import Liveness
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
from ..packs import PackWriter, pack_key, parse_footer
from .tally import Tally

__all__ = ["COMPACT_BYTES", "COMPACT_PACK_DEAD", "COMPACT_REPO_DEAD", "PackReclaimer"]

COMPACT_PACK_DEAD = 0.20
COMPACT_REPO_DEAD = 0.05
COMPACT_BYTES = 1 << 30


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


class PackReclaimer:
    """Deletes and compacts packs from their ``dead/`` counters; also records the packs of a
    rolled-back save that a committed batch indexed into (:meth:`keep_indexed`)."""

    def __init__(
        self, objects: ObjectStore, meta: MetaStore, /, *, liveness: Liveness, lease: float
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness
        self._lease = lease

    def reclaim(self, tally: Tally, *, compact_bytes: int, pack_size: int) -> None:
        totals = sum_totals(self._meta.counters(STAT))
        stored_total = totals.get("bytes_stored", 0)
        dead_total = totals.get("bytes_dead", 0)
        compact = stored_total > 0 and dead_total >= COMPACT_REPO_DEAD * stored_total
        budget = compact_bytes
        # The live frames of several packs go into one new pack of up to pack_size, so that
        # compaction also merges the small packs of small saves.
        group: list[_Candidate] = []
        group_bytes = 0
        for key, dead in list(self._meta.counters(DEAD)):
            pack_id = id_of(key, DEAD)
            stored = self._meta.get(pack_record_key(pack_id))
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

    def keep_indexed(self, pack_id: bytes) -> bool:
        """Whether a pack that no committed write recorded has nodes indexed into it (by a
        save whose references went in several batches before it was rolled back); if so the
        pack is recorded, its other frames counted dead, for compaction to handle."""
        try:
            entries = parse_footer(self._objects.get(pack_key(pack_id)), pack_id=pack_id.hex())
        except NotFoundError:
            return False
        records = self._meta.get_many([node_key(e.node_id) for e in entries])
        live = [
            e
            for e in entries
            if (r := records.get(node_key(e.node_id))) is not None
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
                    Put(pack_record_key(pack_id), PackRecord(size, frames).encode(), expect=None),
                    Add(dead_key(pack_id), dead),
                    Add(STAT_BYTES_DEAD, dead),
                    Add(STAT_PACKS, 1),
                    Add(STAT_BYTES_STORED, size),
                ]
            )
        return True

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
        try:
            self._meta.write(self._pack_gone_ops(pack_id, stored, dead))
        except ConditionFailed:
            return
        crash_point("gc.after_pack_record")
        self._objects.delete(pack_key(pack_id))
        crash_point("gc.after_pack_delete")
        self._meta.delete(pack_letter_key(pack_id))
        tally.packs_deleted += 1
        tally.bytes_reclaimed += record.size

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

    def _compact_group(self, tally: Tally, group: list[_Candidate]) -> None:
        if not self._compact(tally, group) and len(group) > 1:
            # One of them changed meanwhile: the others still go, one by one.
            for candidate in group:
                self._compact(tally, [candidate])

    def _compact(self, tally: Tally, group: list[_Candidate]) -> bool:
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
                ops.append(Put(node_key(node_id), moved.encode(), expect=raw))
            ops.append(
                Put(
                    pack_record_key(new_id),
                    PackRecord(len(new_data), sum(e.length for e in new_entries)).encode(),
                    expect=None,
                )
            )
            ops.append(Delete(pending_key(txn), expect=prepare.recorded))
            for candidate in group:
                ops += self._pack_gone_ops(candidate.pack_id, candidate.stored, candidate.dead)
            ops += [Add(STAT_PACKS, 1), Add(STAT_BYTES_STORED, len(new_data))]
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
            self._meta.delete(pack_letter_key(candidate.pack_id))
            tally.packs_compacted += 1
            tally.bytes_reclaimed += candidate.record.size
        tally.bytes_reclaimed -= len(new_data)
        return True
