"""Repacking: gathering the nodes of each chain's latest version out of small packs.

One pack per save is right for durability, but a version built over many small saves is
scattered over as many packs, and a load reads each of them (on an object store, one
request each at least). Compaction merges only packs with dead bytes; this pass merges
live ones, by what is read together: for each chain, newest head first, it walks the
head's nodes and gathers those that sit in *small* packs (under :data:`SMALL_PACK`), when
they sit in :data:`SCATTERED` small packs or more, into new packs of up to ``pack_size``,
one chain's nodes after another's, in the order of the walk. Nodes of older versions stay where they
are: their frames left behind are compaction's to merge once enough of a pack is dead.

The nodes move by compaction's own path (:meth:`.packs.PackReclaimer.move_frames`): a new
pack under a pending entry of its own, index records moved on condition that each is the
record read, the frames moved out counted in their old packs' ``dead/`` counters in the
same write, in batches where the write does not fit ``max_batch``. A pack left all dead
is deleted as any dead pack. A node swept, moved or re-stored meanwhile fails its condition
and stays where it is; a save that located a node before it moved finds its check of the
record failed, reads the new record and commits (see commit protocol).

Each run is bounded: it copies at most ``budget`` bytes of frames (``repack_bytes``,
:data:`REPACK_BYTES` by default) and walks at most :data:`REPACK_HEADS` heads, the newest.
A chain whose head has its nodes in fewer small packs is left alone, so a run over an
unchanged repository copies nothing, and the packs a repack writes are not repacked again
until new saves scatter the chain anew. Only whole packs move (all of the head's nodes in
them), those holding the fewest of its bytes first, and only two or more at once, so a
budget too small for a head never copies the same nodes run after run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import IntegrityError, NotFoundError
from ..keys import (
    HEAD,
    IndexRecord,
    PackRecord,
    decode_head,
    manifest_key,
    node_key,
    pack_record_key,
)
from ..manifests import decode_manifest
from ..meta import MetaStore
from ..objects import ObjectStore
from ..packs import pack_key
from .nodes import ChildReader
from .packs import COMPACT_PACK_DEAD, LiveFrame, PackReclaimer
from .tally import Tally

__all__ = [
    "REPACK_BYTES",
    "REPACK_HEADS",
    "REPACK_POINTS",
    "SCATTERED",
    "SMALL_PACK",
    "Repacker",
]

SMALL_PACK = 1 << 20
"""A pack under this many bytes (or under half the repository's ``pack_size``, if that is
less) is small: its nodes are worth gathering. 1 MiB is the reader's largest ranged read,
so a load reads a pack at least that big in as many requests as its bytes need anyway,
while each small pack costs a request of its own (see docs/FORMAT.md, Repacking)."""

SCATTERED = 3
"""A head whose nodes (those not left to a newer head) sit in at least this many small
packs is gathered: a load of it then reads at most SCATTERED - 1 small packs more than it
must, and a chain saved once between two gc runs is copied again every SCATTERED - 1 runs
at most, not every run (see docs/FORMAT.md, Repacking)."""

REPACK_BYTES = 64 << 20
"""Frame bytes one gc run copies by default (``gc(repack_bytes=)``)."""

REPACK_HEADS = 4096
"""Heads one gc run walks at most, newest first."""

REPACK_POINTS = ("gc.after_repack_upload", "gc.after_repack_index")
"""The repack's crash points: after a new pack's upload, after the index moved into it."""

_LOCATE_SLICE = 512


@dataclass
class _Group:
    """Frames gathered for one new pack, and their bytes."""

    frames: list[LiveFrame] = field(default_factory=list)
    size: int = 0


class Repacker:
    """Gathers the nodes of the newest heads out of small packs (see the module docstring)."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        /,
        *,
        packs: PackReclaimer,
        children: ChildReader,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._packs = packs
        self._children = children

    def repack(self, tally: Tally, *, budget: int, pack_size: int) -> None:
        """Repack at most ``budget`` bytes of frames into packs of up to ``pack_size``."""
        if budget <= 0:
            return
        small = min(SMALL_PACK, pack_size // 2)
        # The nodes of the newer heads walked in this run: an older head sharing a node
        # leaves it with the newer (moving it would scatter the newer head, and the next run
        # would move it back).
        taken: set[bytes] = set()
        # Packs compaction takes in this run: their live frames move with it.
        compacting = self._packs.compacting()
        group = _Group()
        for root in self._newest_roots():
            if budget <= 0:
                break
            located = self._scattered(root, small=small, taken=taken, compacting=compacting)
            chosen = _within(located, budget)
            if not chosen:
                continue
            for frame in self._read_frames(chosen):
                length = len(frame[3])
                if group.frames and group.size + length > pack_size:
                    self._flush(tally, group)
                    group = _Group()
                group.frames.append(frame)
                group.size += length
                budget -= length
        if group.frames:
            self._flush(tally, group)

    def _flush(self, tally: Tally, group: _Group) -> None:
        size = self._packs.move_frames(tally, group.frames, points=REPACK_POINTS)
        if size is not None:
            tally.nodes_repacked += len(group.frames)
            tally.bytes_repacked += size

    def _newest_roots(self) -> Iterator[bytes]:
        """The roots of the chains' heads, newest first, at most REPACK_HEADS of them."""
        heads = [decode_head(value).head for _, value in self._meta.scan(HEAD)]
        found: list[tuple[int, bytes]] = []
        for start in range(0, len(heads), _LOCATE_SLICE):
            keys = [manifest_key(h) for h in heads[start : start + _LOCATE_SLICE]]
            for key, value in self._meta.get_many(keys).items():
                manifest = decode_manifest(value, manifest_id=key.rpartition("/")[2])
                found.append((manifest.time_ns, manifest.root))
        found.sort(reverse=True)
        for _, root in found[:REPACK_HEADS]:
            yield root

    def _scattered(
        self, root: bytes, /, *, small: int, taken: set[bytes], compacting: dict[bytes, int]
    ) -> list[tuple[bytes, bytes, IndexRecord]]:
        """The nodes of the version under ``root`` (in walk order: each level of the tree
        before the next) that sit in small packs and are not ``taken``, with their records
        as stored and decoded; empty when they sit in fewer than SCATTERED small packs or
        the version cannot be walked whole (being deleted: gc's sweep is there). Every node
        of the version is added to ``taken``."""
        seen: set[bytes] = set()
        located: list[tuple[bytes, bytes, IndexRecord]] = []
        level = [root]
        while level:
            seen.update(level)
            records = self._meta.get_many([node_key(node_id) for node_id in level])
            interior: list[bytes] = []
            for node_id in level:
                raw = records.get(node_key(node_id))
                if raw is None:
                    return []
                record = IndexRecord.decode(raw, node_id=node_id.hex())
                located.append((node_id, raw, record))
                if record.interior:
                    interior.append(node_id)
            children, unreadable = self._children.children(interior)
            if unreadable:
                return []
            level = []
            for node_id in interior:
                for child in children[node_id]:
                    if child not in seen:
                        seen.add(child)
                        level.append(child)
        packs = self._pack_records({record.pack_id for _, _, record in located})
        gathered = {
            pack_id
            for pack_id, pack in packs.items()
            if pack.size < small and compacting.get(pack_id, 0) < COMPACT_PACK_DEAD * pack.frames
        }
        chosen = [
            (node_id, raw, record)
            for node_id, raw, record in located
            if node_id not in taken and record.pack_id in gathered
        ]
        taken.update(seen)
        if len({record.pack_id for _, _, record in chosen}) < SCATTERED:
            return []
        return chosen

    def _pack_records(self, pack_ids: set[bytes]) -> dict[bytes, PackRecord]:
        """The record of each of ``pack_ids`` that has one."""
        ordered = sorted(pack_ids)
        records: dict[bytes, PackRecord] = {}
        for start in range(0, len(ordered), _LOCATE_SLICE):
            keys = [pack_record_key(p) for p in ordered[start : start + _LOCATE_SLICE]]
            stored = self._meta.get_many(keys)
            for pack_id in ordered[start : start + _LOCATE_SLICE]:
                value = stored.get(pack_record_key(pack_id))
                if value is not None:
                    records[pack_id] = PackRecord.decode(value, pack_id=pack_id.hex())
        return records

    def _read_frames(self, located: list[tuple[bytes, bytes, IndexRecord]]) -> list[LiveFrame]:
        """The frames of ``located``, each small pack read whole once; a pack gone meanwhile
        (compacted or deleted) or cut short leaves its nodes out."""
        data: dict[bytes, bytes | None] = {}
        frames: list[LiveFrame] = []
        for node_id, raw, record in located:
            if record.pack_id not in data:
                try:
                    data[record.pack_id] = self._objects.get(pack_key(record.pack_id))
                except NotFoundError:
                    data[record.pack_id] = None
            blob = data[record.pack_id]
            if blob is None:
                continue
            frame = blob[record.offset : record.offset + record.length]
            if len(frame) != record.length:
                raise IntegrityError(
                    f"pack {record.pack_id.hex()} is truncated: node {node_id.hex()} is cut short",
                    object_id=record.pack_id.hex(),
                )
            frames.append((node_id, raw, record, frame))
        return frames


def _within(
    located: list[tuple[bytes, bytes, IndexRecord]], budget: int
) -> list[tuple[bytes, bytes, IndexRecord]]:
    """Of ``located`` (in walk order), the nodes of the small packs that fit in ``budget``,
    whole packs only (a pack left with one of the head's nodes is still read), those holding
    the fewest of the head's bytes first (each costs a load one request, whatever it holds);
    nothing when fewer than two packs fit: moving one pack's nodes into another gains
    nothing, and a budget too small for the head would otherwise copy the same nodes every
    run."""
    held: dict[bytes, int] = {}
    for _, _, record in located:
        held[record.pack_id] = held.get(record.pack_id, 0) + record.length
    fitting: set[bytes] = set()
    for pack_id, length in sorted(held.items(), key=lambda item: (item[1], item[0])):
        if length > budget:
            break
        fitting.add(pack_id)
        budget -= length
    if len(fitting) < 2:
        return []
    return [item for item in located if item[2].pack_id in fitting]
