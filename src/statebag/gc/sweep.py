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
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence

from .._crash import crash_point
from ..keys import (
    STAT_BYTES_DEAD,
    STAT_EPOCH,
    STAT_NODES,
    ZERO,
    IndexRecord,
    dead_key,
    decode_le64,
    id_of,
    node_key,
    ref_key,
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
from .nodes import ChildReader
from .tally import Tally

__all__ = ["Sweeper"]

_SWEEP_BATCH = 128

# (node id, its zero mark as stored, its index record as stored, that record decoded)
_Doomed = tuple[bytes, bytes, bytes, IndexRecord]
# A node to sweep with the children it releases (by multiplicity).
_Group = tuple[_Doomed, Counter[bytes]]


class Sweeper:
    """Sweeps the zero marks older than a cutoff, in batches, until none is left that can
    go (a swept parent may mark its children, which are then swept in the same run)."""

    def __init__(self, meta: MetaStore, children: ChildReader, /) -> None:
        self._meta = meta
        self._children = children

    def sweep(self, tally: Tally, *, cutoff: int) -> None:
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

    def _sweep_batch(self, tally: Tally, marks: list[tuple[bytes, bytes]]) -> int:
        """Sweep what can be of ``marks`` (node id, mark); the number of marks resolved."""
        keys = [node_key(node_id) for node_id, _ in marks]
        records = self._meta.get_many(keys)
        counts = {node_id: self._meta.counter(ref_key(node_id)) for node_id, _ in marks}
        stale: list[Op] = []
        doomed: list[_Doomed] = []
        for (node_id, mark), key in zip(marks, keys, strict=True):
            stored = records.get(key)
            if counts[node_id] != 0 or stored is None:
                # Revived by a save, or already swept: the mark goes, on condition that the
                # count has not changed (a decrement to zero since would re-mark it).
                stale.append(CheckCounter(ref_key(node_id), counts[node_id]))
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
        # One write for the batch; if it cannot go (a save revived a node, another collector
        # swept one), one write per node, so that the others still go.
        if self._write_sweep(tally, groups):
            return resolved + len(groups)
        if len(groups) > 1:
            resolved += sum(self._write_sweep(tally, [group]) for group in groups)
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
            ops += [
                CheckCounter(ref_key(node_id), 0),
                Check(zero_key(node_id), mark),
                Check(node_key(node_id), stored),
                Delete(zero_key(node_id)),
                Delete(node_key(node_id)),
                DropCounter(ref_key(node_id)),
            ]
            dead[record.pack_id] += record.length
            for child, times in children.items():
                releases[child] += times
                mark_of[child] = max(mark_of.get(child, mark), mark)
        swept = {item[0] for item, _ in groups}
        for child, times in releases.items():
            if child in swept:
                return None
            key = ref_key(child)
            count = self._meta.counter(key)
            if count < times:
                return None
            ops += [CheckCounter(key, count), Add(key, -times)]
            if count == times:
                ops.append(Put(zero_key(child), mark_of[child]))
        for pack_id, length in dead.items():
            ops.append(Add(dead_key(pack_id), length))
        total = sum(dead.values())
        ops += [
            Add(STAT_BYTES_DEAD, total),
            Add(STAT_NODES, -len(groups)),
            Add(STAT_EPOCH, 1),
        ]
        return ops
