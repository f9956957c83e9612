"""The sweep: freeing the nodes whose reference count has been zero for the grace period.

``zero/<id>`` marks a node whose count reached zero, with the time. A node whose mark is
older than the grace period is swept in one write, on condition that its count is still
zero and its mark and index record unchanged: remove the index record, the count and the
mark, count its frame as dead in its pack (``dead/<pack>``), and decrement each child it
references, marking the children it brings to zero with its own mark's time (they have been
unreachable as long as it has, so a whole dead tree is swept by one gc). A node is read only
if its index record says it references others.

Children are released when their parent is swept, not when it reaches zero, so a save that
reuses a zero-count node (reviving it) finds its whole subtree still counted. A save checks,
in its commit write, that every node it found stored is still indexed; if a sweep won the
race, the save stores the node again (see :mod:`statebag.commit`).

Within ``max_batch``: the nodes of a batch go in as many writes as the store needs (packed
by their operation count), and a node whose children do not fit in one write (an index node
lists up to 4096) is swept in slices. The first slice removes the node exactly as above,
releases its first children and puts ``sweep/<id>`` (:class:`~statebag.keys.SweepRecord`:
its index record, its mark, how many distinct children are released); each further slice
releases the next children and moves the record on, on condition that it is unchanged; the
last deletes the record and only then counts the node's frame dead. So no child is released
twice or forgotten, whoever resumes (a crash leaves the record for the next gc, which
finishes it first), and the node's frame stays live in its pack, readable, until its last
child is released (compaction and rollback leave a pack a record names alone).

The node goes in the first slice, not the last, because of saves that reuse it: while it is
indexed, a save may find it and reference it again, and a node revived after some of its
children were released would under-count them. Removed first, it cannot be found any more;
a save that found it before fails its check of the index record (see
:mod:`statebag.commit`) and stores it again, counting its children anew, so the counts only
ever over-count (by the references not yet released) until the last slice.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence

from .. import dag
from .._crash import crash_point
from ..errors import IntegrityError
from ..keys import (
    STAT_BYTES_DEAD,
    STAT_EPOCH,
    STAT_NODES,
    SWEEP,
    ZERO,
    CountKeys,
    IndexRecord,
    SweepRecord,
    dead_key,
    decode_le64,
    decode_sweep,
    encode_le64,
    encode_record,
    id_of,
    node_key,
    sweep_key,
    zero_key,
)
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
from .nodes import ChildReader, read_at
from .tally import Tally

__all__ = ["Sweeper"]

_SWEEP_BATCH = 128
# Attempts at one slice whose children's counts keep changing under it.
_SLICE_ATTEMPTS = 16
# Operations of a node's removal in a write (conditions and changes), and of the stat/
# counters a sweep write adds to; a released child takes up to 3 (check, add, mark).
_NODE_OPS = 6
_STAT_OPS = 3
_CHILD_OPS = 3

# (node id, its zero mark as stored, its index record as stored, that record decoded)
_Doomed = tuple[bytes, bytes, bytes, IndexRecord]
# A node to sweep with the children it releases (by multiplicity).
_Group = tuple[_Doomed, Counter[bytes]]


class Sweeper:
    """Sweeps the zero marks older than a cutoff, in batches, until none is left that can
    go (a swept parent may mark its children, which are then swept in the same run)."""

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

    def sweep(self, tally: Tally, *, cutoff: int) -> None:
        self.resume(tally)
        while True:
            eligible: list[tuple[bytes, bytes]] = []
            young = 0
            for key, value in self._meta.scan(ZERO):
                if decode_le64(value) <= cutoff:
                    eligible.append((id_of(key, ZERO), value))
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

    def resume(self, tally: Tally) -> None:
        """Finish the sweeps of wide nodes that a crash (or a failure) left in progress."""
        for key, value in list(self._meta.scan(SWEEP)):
            self._resume_one(tally, id_of(key, SWEEP), value)

    def _resume_one(self, tally: Tally, node_id: bytes, value: bytes) -> None:
        progress = decode_sweep(value)
        order = sweeping_children(self._objects, node_id, progress)
        if order is None:
            # Its bytes are gone: the children it still references stay over-counted (a
            # leak, reported by the audit), never under-counted.
            tally.deferred += 1
            return
        self._finish_wide(tally, node_id, value, progress, order)

    def _sweep_batch(self, tally: Tally, marks: list[tuple[bytes, bytes]]) -> int:
        """Sweep what can be of ``marks`` (node id, mark); the number of marks resolved."""
        keys = [node_key(node_id) for node_id, _ in marks]
        records = self._meta.get_many(keys)
        counts = {node_id: self._meta.counter(self._counts.key(node_id)) for node_id, _ in marks}
        stale: list[Op] = []
        doomed: list[_Doomed] = []
        for (node_id, mark), key in zip(marks, keys, strict=True):
            stored = records.get(key)
            if counts[node_id] != 0 or stored is None:
                # Revived by a save, or already swept: the mark goes, on condition that the
                # count has not changed (a decrement to zero since would re-mark it).
                stale.append(CheckCounter(self._counts.key(node_id), counts[node_id]))
                stale.append(Delete(zero_key(node_id), expect=mark))
            else:
                doomed.append(
                    (node_id, mark, stored, IndexRecord.decode(stored, node_id=node_id.hex()))
                )
        resolved = 0
        for index in range(0, len(stale), 2):
            with contextlib.suppress(ConditionFailed):
                self._meta.write(stale[index : index + 2])
                resolved += 1
        interior = [node_id for node_id, _, _, record in doomed if record.interior]
        # A node unreadable here was swept (and its pack freed) by another collector
        # meanwhile: it is left to the writes' conditions, or to the audit if one is lost.
        children, unread = self._children.children(interior)
        doomed = [item for item in doomed if item[0] not in unread]
        groups = [(item, Counter(children.get(item[0], ()))) for item in doomed]
        if not groups:
            return resolved
        limit = self._meta.max_batch
        narrow: list[_Group] = []
        for group in groups:
            if limit is not None and _cost([group]) > limit:
                resolved += self._sweep_wide(tally, group)
            else:
                narrow.append(group)
        for part in _packed(narrow, limit):
            # One write for the part; if it cannot go (a save revived a node, another
            # collector swept one), one write per node, so that the others still go.
            if self._write_sweep(tally, part):
                resolved += len(part)
            elif len(part) > 1:
                resolved += sum(self._write_sweep(tally, [group]) for group in part)
        return resolved

    def _write_sweep(self, tally: Tally, groups: Sequence[_Group]) -> bool:
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

    def _merge_sweep(self, groups: Sequence[_Group]) -> list[Op] | None:
        """The one write that sweeps ``groups``: None when it cannot be built (a child's
        count is below the references being released: an under-count the audit reports)."""
        ops: list[Op] = []
        releases: Counter[bytes] = Counter()
        mark_of: dict[bytes, bytes] = {}
        dead: Counter[bytes] = Counter()
        for (node_id, mark, stored, record), children in groups:
            ops += _removal(node_id, mark, stored, self._counts)
            dead[record.pack_id] += record.length
            for child, times in children.items():
                releases[child] += times
                mark_of[child] = max(mark_of.get(child, mark), mark)
        swept = {item[0] for item, _ in groups}
        for child, times in releases.items():
            if child in swept:
                return None
            released = self._release(child, times, mark_of[child])
            if released is None:
                return None
            ops += released
        for pack_id, length in dead.items():
            ops.append(Add(dead_key(pack_id), length))
        total = sum(dead.values())
        ops += [
            Add(STAT_BYTES_DEAD, total),
            Add(STAT_NODES, -len(groups)),
            Add(STAT_EPOCH, 1),
        ]
        return ops

    def _release(self, child: bytes, times: int, mark: bytes) -> list[Op] | None:
        """Release ``times`` references to ``child`` on condition that its count is still
        the value read now, marking it when it reaches zero; None for an under-count."""
        key = self._counts.key(child)
        count = self._meta.counter(key)
        if count < times:
            return None
        ops: list[Op] = [CheckCounter(key, count), Add(key, -times)]
        if count == times:
            ops.append(Put(zero_key(child), mark))
        return ops

    def _slice(
        self, order: Sequence[tuple[bytes, int]], start: int, room: int | None, mark: bytes
    ) -> tuple[list[Op], int] | None:
        """The releases of ``order[start:]`` that fit in ``room`` operations, and how many
        children they release; None for an under-count (the audit reports and repairs it)."""
        ops: list[Op] = []
        taken = 0
        for child, times in order[start:]:
            if room is not None and len(ops) + _CHILD_OPS > room:
                break
            released = self._release(child, times, mark)
            if released is None:
                return None
            ops += released
            taken += 1
        return ops, taken

    def _sweep_wide(self, tally: Tally, group: _Group) -> int:
        """Sweep a node whose children do not fit in one write, in slices (see the module
        docstring); 1 once the node is removed (its first slice landed), else 0."""
        (node_id, mark, stored, _), children = group
        order = list(children.items())
        key = sweep_key(node_id)
        left = self._meta.get(key)
        if left is not None:
            # A sweep of an earlier copy of this node is unfinished: it goes first.
            self._resume_one(tally, node_id, left)
        limit = self._meta.max_batch
        for _ in range(_SLICE_ATTEMPTS):
            head = [*_removal(node_id, mark, stored, self._counts), Add(STAT_NODES, -1)]
            room = None if limit is None else limit - len(head) - 2
            built = self._slice(order, 0, room, mark)
            if built is None:
                return 0
            releases, taken = built
            progress = SweepRecord(stored, decode_le64(mark), taken)
            value = encode_record(progress)
            ops = [*head, Put(key, value, expect=None), *releases, Add(STAT_EPOCH, 1)]
            try:
                self._meta.write(ops)
            except ConditionFailed as exc:
                # Conditions on the node's own key (record or count) mean it was revived
                # or swept; on a child's count key, that the count moved.
                if exc.key.startswith(self._counts.prefix) and exc.key != node_key(node_id):
                    continue  # a child's count moved since it was read
                return 0  # revived, or swept by another collector
            tally.nodes_freed += 1
            crash_point("gc.after_sweep_slice")
            self._finish_wide(tally, node_id, value, progress, order)
            return 1
        return 0

    def _finish_wide(
        self,
        tally: Tally,
        node_id: bytes,
        value: bytes,
        progress: SweepRecord,
        order: Sequence[tuple[bytes, int]],
    ) -> None:
        """Release the rest of a removed node's children, slice by slice, each on condition
        that the progress record is the one read; the last slice deletes it and counts the
        node's frame dead."""
        key = sweep_key(node_id)
        record = IndexRecord.decode(progress.record, node_id=node_id.hex())
        mark = encode_le64(progress.mark)
        limit = self._meta.max_batch
        attempts = 0
        while attempts < _SLICE_ATTEMPTS:
            start = progress.released
            # Room for the last slice's four operations (record, dead, bytes_dead, epoch).
            built = self._slice(order, start, None if limit is None else limit - 4, mark)
            if built is None:
                tally.deferred += 1
                return
            releases, taken = built
            last = start + taken >= len(order)
            following = SweepRecord(progress.record, progress.mark, start + taken)
            following_value = encode_record(following)
            if last:
                ops: list[Op] = [
                    Delete(key, expect=value),
                    *releases,
                    Add(dead_key(record.pack_id), record.length),
                    Add(STAT_BYTES_DEAD, record.length),
                ]
            else:
                ops = [Put(key, following_value, expect=value), *releases]
            ops.append(Add(STAT_EPOCH, 1))
            try:
                self._meta.write(ops)
            except ConditionFailed as exc:
                attempts += 1
                if exc.key == key:
                    # Another collector moved the sweep on (or finished it).
                    current = self._meta.get(key)
                    if current is None:
                        return
                    value, progress = current, decode_sweep(current)
                continue
            attempts = 0
            if last:
                crash_point("gc.after_sweep")
                return
            crash_point("gc.after_sweep_slice")
            value, progress = following_value, following
        tally.deferred += 1


def sweeping_children(
    objects: ObjectStore, node_id: bytes, progress: SweepRecord, /, *, remaining: bool = False
) -> list[tuple[bytes, int]] | None:
    """The distinct children of a node being swept in slices, with their multiplicity, in
    the order the slices release them (``remaining``: only those not yet released); None
    when the node's bytes cannot be read any more."""
    record = IndexRecord.decode(progress.record, node_id=node_id.hex())
    try:
        data = read_at(objects, node_id, record)
    except IntegrityError:
        return None
    order = list(Counter(dag.children_of(data, node_id=node_id.hex())).items())
    return order[progress.released :] if remaining else order


def _removal(node_id: bytes, mark: bytes, stored: bytes, counts: CountKeys) -> list[Op]:
    """A zero-count node's removal: its count still zero, its mark and record unchanged."""
    return [
        CheckCounter(counts.key(node_id), 0),
        Check(zero_key(node_id), mark),
        Check(node_key(node_id), stored),
        Delete(zero_key(node_id)),
        Delete(node_key(node_id)),
        DropCounter(counts.key(node_id)),
    ]


def _cost(groups: Sequence[_Group]) -> int:
    """At most the operations of the write that sweeps ``groups``."""
    return _STAT_OPS + sum(_NODE_OPS + 1 + _CHILD_OPS * len(children) for _, children in groups)


def _packed(groups: list[_Group], limit: int | None) -> list[list[_Group]]:
    """``groups`` in parts whose sweep writes fit ``limit`` operations (one part if None)."""
    if limit is None:
        return [groups] if groups else []
    parts: list[list[_Group]] = []
    current: list[_Group] = []
    cost = _STAT_OPS
    for group in groups:
        size = _cost([group]) - _STAT_OPS
        if current and cost + size > limit:
            parts.append(current)
            current, cost = [], _STAT_OPS
        current.append(group)
        cost += size
    if current:
        parts.append(current)
    return parts
