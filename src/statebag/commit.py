"""The two-phase commit of one version: pending entry, packs, references, head move.

Invariant: every node a committed manifest reaches is indexed, counted and readable. Leaks
(stored bytes nothing reaches) may exist until garbage collection; losses never.

1. **Prepare**: put ``pending/<txn>`` (chain, start, lease deadline, pack ids), then upload
   the packs. Each put is conditional on the entry as last written, so a save that gc
   rolled back (its writer looked gone, or its lease expired) fails instead of going on.
2. **Reference**: index each new node (``node/<id>``, conditional on absence) and add one
   to the count of every node a new node references, and one to the manifest's root.
   Check that each node the save found already stored is still indexed as it was found:
   gc may sweep a node no version references between the lookup and the commit.
3. **Commit**: put the manifest and move the head with one conditional write: the head
   record must still be the one the save read, and the new one carries the txn id.
4. **Finish**: delete the pending entry, on condition that it is the one this save wrote.

Whenever steps 2 to 4 fit in one write of the metadata store (always on SQLite and memory,
which take any number of operations) they are that one write: a lost race applies nothing,
and the packs, which nothing then indexes, are deleted at once (through a dead letter, so
that a failure to delete them is finished by gc). Otherwise (``max_batch``, as DynamoDB
caps a write) step 2 runs in batches before step 3, each conditional on the pending entry.
Nothing a batch wrote is ever taken back: an indexed node's children are counted, so the
counts agree with the index whichever batches landed, and the root is counted in the
commit write itself. A save that does not commit hands its entry to gc as a dead letter,
and gc keeps a pack that has nodes indexed in it (a concurrent save may have reused them).

A node found already indexed when its index write is tried (another save stored the same
bytes first) becomes a reused node: its own children are not counted again, and its copy
in this save's pack is dead space (counted in ``dead/<pack>``). A found node that gc swept
is written again, into one more pack, and the commit retried.

Every write of a save after its first pending put is conditional on that entry, and gc's
rollback deletes the entry on condition before anything else: a write still landing after
the rollback (a store's ``OutcomeUnknown``) applies nothing. After an unknown outcome the
commit reads back (the head carrying this txn id, or the manifest stored); if it cannot see
its commit it raises OutcomeUnknown and leaves the entry for gc after the lease. Where gc
cannot tell a running writer from a gone one, the save renews its lease while it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from . import codec
from ._crash import crash_point
from .dag import NewNode
from .errors import BackendError, ConflictError, OutcomeUnknown, StatebagError
from .keys import (
    FLAG_INTERIOR,
    HEAD,
    MANIFEST,
    NODE,
    STAT,
    STAT_EPOCH,
    STAT_NODES,
    CountKeys,
    HeadRecord,
    IndexRecord,
    PackRecord,
    chain_of,
    dead_key,
    decode_head,
    encode_record,
    head_key,
    id_of,
    manifest_key,
    node_key,
    pack_record_key,
    pending_key,
    stat_shard,
)
from .meta import ANY, Add, Check, Delete, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import PackEntry
from .prepare import DEFAULT_LEASE, MAX_ATTEMPTS, Prepare, Refused, RolledBack

__all__ = ["Transaction", "commit"]


@dataclass
class Transaction:
    """Everything one save commits."""

    txn: str
    chain: str
    expected_head: bytes | None  # the head record as read, or None for a new chain
    new_head: HeadRecord
    manifest_id: bytes
    manifest: bytes
    bytes_logical: int
    root: bytes
    # (pack id, size, entries) of every pack shipped through the Prepare: a pack's bytes are
    # not kept once it is on its way, so a large save holds about one pack at a time.
    packs: list[tuple[bytes, int, list[PackEntry]]]
    new_nodes: dict[bytes, NewNode]  # every node stored in the packs
    counts: CountKeys  # where the repository keeps reference counts
    lease: float = DEFAULT_LEASE
    # Nodes of this version found already indexed, with the index record as read: the
    # commit lands only if each is still indexed there (else gc swept or moved it meanwhile,
    # and the node is written again, or its new place checked).
    found: dict[bytes, tuple[NewNode, bytes]] = field(default_factory=dict)
    # Conditions of the commit write besides the head: a merge's branch heads unchanged, a
    # fan-in save's other parents still present. One failing is a ConflictError.
    guards: list[Check] = field(default_factory=list)
    # More operations of the commit transaction (the version index entry).
    extra: list[Op] = field(default_factory=list)
    level: int = codec.DEFAULT_LEVEL
    # Filled in by commit(): nodes another save indexed first, and nodes whose index entry
    # this save's reference batches wrote (batched stores only; they stay indexed whatever
    # happens to the save, see _commit_batched).
    reused_late: set[bytes] = field(default_factory=set)
    indexed: set[bytes] = field(default_factory=set)
    # Set once the batched path ran: from then on the save stays on it (its packs may hold
    # nodes it indexed, which only gc may decide about).
    batched: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def _reference_groups(tx: Transaction, records: dict[bytes, IndexRecord]) -> list[list[Op]]:
    """One group per new node still to index: its index put, then its children's
    increments. A node another save indexed first, or this save already, has none."""
    groups: list[list[Op]] = []
    for node_id, node in tx.new_nodes.items():
        if node_id in tx.reused_late or node_id in tx.indexed:
            continue
        record = records[node_id]
        if node.children:
            record = record._replace(flags=FLAG_INTERIOR)
        group: list[Op] = [Put(node_key(node_id), record.encode(), expect=None)]
        group.extend(Add(tx.counts.key(child), 1) for child in node.children)
        groups.append(group)
    return groups


def _found_checks(tx: Transaction) -> list[Op]:
    return [Check(node_key(node_id), record) for node_id, (_, record) in tx.found.items()]


@dataclass
class _CommitWrite:
    """Step 3's write in named parts, so that a failed condition is told by which op it was
    (its identity), never by its position in the list."""

    manifest: Put
    head: Put
    finish: Delete  # the pending entry's removal, conditional on it being this save's
    guards: list[Check]
    root: Add  # the manifest's reference to its root
    totals: list[Op]  # the epoch shard's increment and the caller's extra ops
    # What the save adds to its chain's shards of the totals, by name: the version's own
    # (manifests, bytes_logical, chains, nodes indexed in this write), and its packs'.
    stats: dict[str, int]
    packs: list[_PackRecords]

    def stat_ops(self, chain: str, *, packs: bool = True) -> list[Op]:
        stats = dict(self.stats)
        if packs:
            for group in self.packs:
                for name, delta in group.stats.items():
                    stats[name] = stats.get(name, 0) + delta
        return _stat_adds(stats, chain)

    def ops(self, chain: str) -> list[Op]:
        return [
            *self.essential(),
            *self.stat_ops(chain),
            *(op for group in self.packs for op in group.ops),
        ]

    def essential(self) -> list[Op]:
        """What must land in one write: the manifest with its root's reference, the head
        move, the pending entry's removal, the guards, the epoch and the version index."""
        return [self.manifest, self.head, self.finish, *self.guards, self.root, *self.totals]

    def is_guard(self, op: Op) -> bool:
        return any(op is guard for guard in self.guards)


@dataclass
class _PackRecords:
    """One pack's record, the dead bytes of the nodes another save indexed first (dead
    space in this pack from the start), and what they add to the totals: whatever writes
    a pack record adds its size to the totals in the same write."""

    ops: list[Op]
    stats: dict[str, int]


def _stat_adds(stats: dict[str, int], chain: str) -> list[Op]:
    return [Add(stat_shard(STAT + name, chain), delta) for name, delta in stats.items() if delta]


def _commit_write(tx: Transaction, pending: bytes | None) -> _CommitWrite:
    """The manifest, the head move, the pending entry's removal and the totals. The pending
    entry must still be the one this save wrote: if gc rolled it back (and deleted the
    packs), the save must not commit."""
    # Nodes this save's reference batches indexed were counted by those batches.
    new_count = len(tx.new_nodes) - len(tx.reused_late) - len(tx.indexed)
    stats = {"manifests": 1, "bytes_logical": tx.bytes_logical}
    if tx.expected_head is None:
        stats["chains"] = 1
    if new_count:
        stats["nodes"] = new_count
    packs: list[_PackRecords] = []
    for pack_id, size, entries in tx.packs:
        ops: list[Op] = [
            Put(
                pack_record_key(pack_id),
                PackRecord(size, sum(entry.length for entry in entries)).encode(),
            )
        ]
        pack_stats = {"packs": 1, "bytes_stored": size}
        dead = sum(entry.length for entry in entries if entry.node_id in tx.reused_late)
        if dead:
            ops.append(Add(dead_key(pack_id), dead))
            pack_stats["bytes_dead"] = dead
        packs.append(_PackRecords(ops, pack_stats))
    return _CommitWrite(
        manifest=Put(manifest_key(tx.manifest_id), tx.manifest, expect=None),
        head=Put(head_key(tx.chain), encode_record(tx.new_head), expect=tx.expected_head),
        finish=Delete(pending_key(tx.txn), expect=pending if pending is not None else ANY),
        guards=list(tx.guards),
        root=Add(tx.counts.key(tx.root), 1),
        totals=[Add(stat_shard(STAT_EPOCH, tx.chain), 1), *tx.extra],
        stats=stats,
        packs=packs,
    )


def _indexed_node(op: Op) -> bytes | None:
    """The node an index put of a reference group indexes (None for any other op)."""
    if isinstance(op, Put) and op.key.startswith(NODE):
        return id_of(op.key, NODE)
    return None


def commit(
    objects: ObjectStore,
    meta: MetaStore,
    tx: Transaction,
    /,
    *,
    prepared: Prepare,
) -> None:
    """Run the protocol for ``tx``; ConflictError when the head moved since it was read.

    Step 1 was done by the caller: every pack of ``tx`` was shipped through ``prepared``.
    A write whose outcome is unknown and whose commit cannot be read back raises
    OutcomeUnknown and leaves the pending entry: gc rolls it back once the lease has passed,
    and the rollback's conditional delete of the entry fences a commit still landing.
    """
    try:
        prepared.wait()
    except BaseException:
        prepared.abandon()
        raise
    records = {
        entry.node_id: IndexRecord(pack_id, entry.offset, entry.length, entry.size)
        for pack_id, _, entries in tx.packs
        for entry in entries
    }
    try:
        for _ in range(MAX_ATTEMPTS):
            if _fits_one_write(meta, tx, records, prepared):
                gone = _commit_atomic(meta, tx, records, prepared)
            else:
                assert meta.max_batch is not None
                gone = _commit_batched(meta, tx, records, meta.max_batch, prepared)
            if not gone:
                break
            # gc swept nodes this save found stored. A node this save also packed (found
            # indexed only at commit) is indexed from its own pack after all; the others are
            # stored again, in one more pack.
            again: list[NewNode] = []
            for node_id in gone:
                node, _ = tx.found.pop(node_id)
                if node_id in tx.reused_late:
                    tx.reused_late.discard(node_id)
                else:
                    again.append(node)
            if again:
                pack = prepared.rewrite(again, level=tx.level)
                prepared.wait()
                tx.packs.append(pack)
                tx.new_nodes.update((node.node_id, node) for node in again)
                for entry in pack[2]:
                    records[entry.node_id] = IndexRecord(
                        pack[0], entry.offset, entry.length, entry.size
                    )
        else:
            raise BackendError(
                f"commit of chain {tx.chain!r} kept racing garbage collection", retryable=True
            )
    finally:
        tx.timings["upload"] = prepared.upload_seconds
    crash_point("save.after_commit")


def _fits_one_write(
    meta: MetaStore, tx: Transaction, records: dict[bytes, IndexRecord], prepared: Prepare
) -> bool:
    if meta.max_batch is None:
        return True
    if tx.batched:
        return False
    references = sum(len(group) for group in _reference_groups(tx, records))
    final = _commit_write(tx, prepared.recorded)
    return references + len(tx.found) + len(final.ops(tx.chain)) <= meta.max_batch


def _recheck_found(meta: MetaStore, tx: Transaction) -> list[bytes]:
    """After a found node's check failed: take the new record of each node that moved (a
    compaction) and return the nodes that are gone (swept), to be written again."""
    keys = [node_key(node_id) for node_id in tx.found]
    current = meta.get_many(keys)
    gone: list[bytes] = []
    for node_id, key in zip(list(tx.found), keys, strict=True):
        record = current.get(key)
        if record is None:
            gone.append(node_id)
        else:
            tx.found[node_id] = (tx.found[node_id][0], record)
    return gone


def _reuse(meta: MetaStore, tx: Transaction, nodes: list[bytes]) -> None:
    """Nodes another save indexed first: use its copies, checked at the commit like found
    nodes. One that is already gone again (swept) is indexed from this save's pack."""
    keys = [node_key(node_id) for node_id in nodes]
    current = meta.get_many(keys)
    for node_id, key in zip(nodes, keys, strict=True):
        record = current.get(key)
        if record is None:
            tx.reused_late.discard(node_id)
        else:
            tx.reused_late.add(node_id)
            tx.found[node_id] = (tx.new_nodes[node_id], record)


class _CommitUnknown(OutcomeUnknown):
    """OutcomeUnknown as the commit reports it, with what it leaves behind."""


def _quietly(action: Callable[[], None]) -> None:
    """Clean up after a failure without hiding it: an error here leaves the dead letter or
    pending entry for gc to finish."""
    with contextlib.suppress(Exception):
        action()


def _reuse_late(meta: MetaStore, tx: Transaction) -> bool:
    """Take the records of the nodes the last batches found indexed by another save, to be
    checked at the commit; whether there were any."""
    late = [node for node in tx.reused_late if node not in tx.found]
    if late:
        _reuse(meta, tx, late)
    return bool(late)


def _unknown(tx: Transaction, exc: BaseException) -> OutcomeUnknown:
    return _CommitUnknown(
        f"the commit of chain {tx.chain!r} (version {tx.manifest_id.hex()}) may or may not "
        f"have landed ({exc}); its pending entry {tx.txn} stays until garbage collection "
        "rolls it back after its lease, which also keeps a late commit from landing. Load "
        "the chain's head to see which happened"
    )


def _commit_atomic(
    meta: MetaStore,
    tx: Transaction,
    records: dict[bytes, IndexRecord],
    prepared: Prepare,
) -> list[bytes]:
    """One write: references, checks, manifest, head. Returns the found nodes gc swept
    meanwhile (nothing was written then), or [] once committed."""
    for _ in range(MAX_ATTEMPTS):
        references = [op for group in _reference_groups(tx, records) for op in group]
        found = _found_checks(tx)
        parts: list[_CommitWrite] = []
        try:
            prepared.guarded(_final_write(tx, [*references, *found], parts))
            prepared.recorded = None
            return []
        except Refused as refused:
            failed, final = refused.op, parts[0]
            node = _indexed_node(failed)
            if node is not None:
                # Another save indexed this node first: reuse its copy, and try again.
                _reuse(meta, tx, [node])
                continue
            if any(failed is check for check in found):
                gone = _recheck_found(meta, tx)
                if gone:
                    return gone
                continue
            # A definite refusal applied nothing, and nothing else of this save is indexed.
            _quietly(prepared.abandon)
            raise _lost_race(meta, tx, final, failed) from refused.error
        except OutcomeUnknown as exc:
            return _read_back(meta, tx, prepared, exc)
        except RolledBack:
            raise
        except BackendError:
            # Any error of a store but OutcomeUnknown means the write was not applied.
            _quietly(prepared.abandon)
            raise
        except StatebagError:
            raise
        except Exception as exc:  # not a store's error: whether the write landed is unknown
            return _read_back(meta, tx, prepared, exc)
    raise BackendError(
        f"commit of chain {tx.chain!r} kept racing other writers' index entries",
        retryable=True,
    )


def _commit_batched(
    meta: MetaStore,
    tx: Transaction,
    records: dict[bytes, IndexRecord],
    max_batch: int,
    prepared: Prepare,
) -> list[bytes]:
    """Step 2 in batches, then step 3 in one write, each conditional on the pending entry.

    What a batch writes is never taken back: an indexed node's children are counted, so
    the counts agree with the index whichever batches landed. A save that does not commit
    hands its entry over to gc as a dead letter (or, when an outcome is unknown, leaves it
    for rollback after its lease); gc keeps a pack that has nodes indexed in it.
    """
    if prepared.recorded is None:
        prepared.record()  # the batches below are made on condition of it
    tx.batched = True
    room = max_batch - Prepare.CHECKED_OVERHEAD
    try:
        for _ in range(MAX_ATTEMPTS):
            # The last groups that fit beside the commit write go in it (one write fewer).
            final = _commit_write(tx, prepared.recorded)
            spare = max_batch - len(tx.found) - len(final.ops(tx.chain)) - 1
            _write_references(tx, records, room, prepared, keep=max(spare, 0))
            # A node another save indexed first and gc swept since is indexed from this
            # save's pack after all: write references again until none is left.
            if not _reuse_late(meta, tx):
                break
        for _ in range(MAX_ATTEMPTS):
            final = _commit_write(tx, prepared.recorded)
            tail = [op for group in _reference_groups(tx, records) for op in group]
            checks = _found_checks(tx)
            if len(tail) + len(checks) + len(final.ops(tx.chain)) > max_batch:
                if not tail:
                    break  # the commit write is too big on its own: split it below
                _write_references(tx, records, room, prepared, keep=0)
                _reuse_late(meta, tx)
                continue
            parts: list[_CommitWrite] = []
            try:
                prepared.guarded(_final_write(tx, [*tail, *checks], parts))
                prepared.recorded = None
                return []
            except Refused as refused:
                node = _indexed_node(refused.op)
                if node is not None:
                    _reuse(meta, tx, [node])  # another save indexed it first
                    continue
                if any(refused.op is check for check in checks):
                    gone = _recheck_found(meta, tx)
                    if gone:
                        return gone
                    continue  # nodes a compaction moved: check their new records
                prepared.hand_over()
                raise _lost_race(meta, tx, parts[0], refused.op) from refused.error
            except OutcomeUnknown as exc:
                return _read_back(meta, tx, prepared, exc)
        else:
            raise BackendError(
                f"commit of chain {tx.chain!r} kept racing other writers", retryable=True
            )
        # Too big for one write even with every reference written: the found-node checks
        # first, in batches of their own (once counted, a found node cannot be swept: one
        # check of each after the counts shows it was still stored when they landed).
        start = 0
        while start < len(tx.found):
            part = _found_checks(tx)[start : start + room]
            try:
                prepared.write_checked(part)
            except Refused:
                gone = _recheck_found(meta, tx)
                if gone:
                    return gone
                continue  # nodes a compaction moved: check their new records
            start += room
        final = _commit_write(tx, prepared.recorded)
        if len(final.essential()) > max_batch:
            raise BackendError(
                f"the commit of chain {tx.chain!r} needs {len(final.essential())} operations "
                f"in one write, more than the metadata store's max_batch {max_batch}",
                retryable=False,
            )
        packs_first = len(final.ops(tx.chain)) > max_batch
        stats_first = len(final.essential()) + len(final.stat_ops(tx.chain, packs=False)) > (
            max_batch
        )
        if packs_first:
            # Pack records before the commit, each batch with what its packs add to the
            # totals, on condition of the entry: a pack recorded for a save that then fails
            # is gc's to keep or retire, like any pack a dead letter names.
            _write_pack_records(tx, final.packs, room, prepared)
        if stats_first:
            # The version's totals too, recorded in the entry by the same write, so that a
            # rollback takes back exactly them.
            prepared.add_to_totals(final.stats, final.stat_ops(tx.chain, packs=False))
        parts = []
        try:
            prepared.guarded(
                _final_write(tx, [], parts, packs=not packs_first, stats=not stats_first)
            )
        except Refused as refused:
            prepared.hand_over()
            raise _lost_race(meta, tx, parts[0], refused.op) from refused.error
        except OutcomeUnknown as exc:
            return _read_back(meta, tx, prepared, exc)
        prepared.recorded = None
        return []
    except _CommitUnknown:
        raise
    except OutcomeUnknown as exc:
        raise _CommitUnknown(
            f"a reference batch of the save on chain {tx.chain!r} may or may not have "
            f"landed ({exc}); the save did not commit. Its pending entry {tx.txn} stays "
            "until garbage collection rolls it back after its lease"
        ) from exc
    except RolledBack:
        raise
    except BackendError:
        prepared.hand_over()
        raise


def _final_write(
    tx: Transaction,
    before: list[Op],
    parts: list[_CommitWrite],
    *,
    packs: bool = True,
    stats: bool = True,
) -> Callable[[bytes | None], list[Op]]:
    """What builds the commit write for :meth:`Prepare.guarded`, keeping its parts in
    ``parts`` so that a failed condition can be told by its op. ``packs`` and ``stats``:
    whether the pack records and the totals go in it (else they were written before)."""

    def build(recorded: bytes | None) -> list[Op]:
        final = _commit_write(tx, recorded)
        parts[:] = [final]
        if packs and stats:
            return [*before, *final.ops(tx.chain)]
        stat_ops = final.stat_ops(tx.chain, packs=packs) if stats else []
        pack_ops = [op for group in final.packs for op in group.ops] if packs else []
        return [*before, *final.essential(), *stat_ops, *pack_ops]

    return build


def _write_pack_records(
    tx: Transaction, groups: list[_PackRecords], room: int, prepared: Prepare
) -> None:
    batch: list[_PackRecords] = []
    for group in [*groups, None]:
        size = sum(len(g.ops) for g in batch) + 3  # and three totals
        if batch and (group is None or size + len(group.ops) > room):
            stats: dict[str, int] = {}
            for pack in batch:
                for name, delta in pack.stats.items():
                    stats[name] = stats.get(name, 0) + delta
            prepared.write_checked(
                [*(op for g in batch for op in g.ops), *_stat_adds(stats, tx.chain)]
            )
            batch = []
        if group is not None:
            batch.append(group)


def _write_references(
    tx: Transaction,
    records: dict[bytes, IndexRecord],
    room: int,
    prepared: Prepare,
    *,
    keep: int,
) -> None:
    """Write the reference groups still to write in batches of at most ``room`` operations,
    but for the last ones whose operations add up to at most ``keep`` (left for the commit
    write).

    A node with more references than one batch holds (a wide index or fields node) has its
    increments written first, packed with other groups, and its index put after them with
    the last of its increments: counting before indexing means a crash in between
    over-counts (a leak an audit repairs), never under-counts."""
    room -= 1  # each batch also counts the nodes it indexes
    groups = _reference_groups(tx, records)
    small = [group for group in groups if len(group) <= room]
    large = [group for group in groups if len(group) > room]
    kept = 0
    while small and kept + len(small[-1]) <= keep:
        kept += len(small.pop())
    # Items that may land in any batch before the large nodes' puts: whole small groups, and
    # the first increments of each large node one by one.
    items: list[list[Op]] = list(small)
    early: dict[int, list[Op]] = {}
    for index, group in enumerate(large):
        split = len(group) - room  # the put and room - 1 increments go last
        early[index] = group[1 : 1 + split]
        items.extend([op] for op in early[index])
    batch: list[list[Op]] = []
    size = 0
    for item in items:
        if size + len(item) > room:
            _write_groups(tx, batch, prepared)
            batch, size = [], 0
        batch.append(item)
        size += len(item)
    if batch:
        _write_groups(tx, batch, prepared)
    for index, group in enumerate(large):
        _index_wide_node(tx, group, early[index], room, prepared)


def _index_wide_node(
    tx: Transaction, group: list[Op], early: list[Op], room: int, prepared: Prepare
) -> None:
    """The index put of a node whose ``early`` increments landed, with the rest of them. If
    the put finds the node already indexed (another save's), those increments are taken
    back: they landed, so the take-back is exact."""
    put, rest = group[0], group[1 + len(early) :]
    try:
        prepared.write_checked([put, *rest, _nodes_added(tx, 1)])
    except Refused as refused:
        node = _indexed_node(refused.op)
        if node is None:
            raise refused.error from refused
        tx.reused_late.add(node)
        undo: list[Op] = [Add(op.key, -op.delta) for op in early if isinstance(op, Add)]
        for start in range(0, len(undo), room):
            prepared.write_checked(undo[start : start + room])
        return
    node = _indexed_node(put)
    assert node is not None
    tx.indexed.add(node)
    crash_point("save.after_reference_batch")


def _nodes_added(tx: Transaction, count: int) -> Add:
    """Whatever indexes nodes counts them in the same write, so that ``stat/nodes`` is the
    number of index records whichever batches of a save land."""
    return Add(stat_shard(STAT_NODES, tx.chain), count)


def _write_groups(tx: Transaction, groups: list[list[Op]], prepared: Prepare) -> None:
    """Write groups of reference ops at once (a node's index put and its increments, or a
    lone increment), dropping nodes found already indexed."""
    while groups:
        ops = [op for group in groups for op in group]
        indexes = sum(1 for group in groups if _indexed_node(group[0]) is not None)
        try:
            prepared.write_checked([*ops, *([_nodes_added(tx, indexes)] if indexes else [])])
        except Refused as refused:
            node = _indexed_node(refused.op)
            if node is None:
                raise refused.error from refused
            tx.reused_late.add(node)
            groups = [group for group in groups if _indexed_node(group[0]) != node]
            continue
        tx.indexed.update(node for group in groups if (node := _indexed_node(group[0])))
        crash_point("save.after_reference_batch")
        return


def _committed(meta: MetaStore, tx: Transaction) -> bool:
    """Whether this save's commit landed though its answer was lost: the head carries its
    txn id, or (the head moved on since) its manifest is stored."""
    current = meta.get(head_key(tx.chain))
    if current is not None:
        record = decode_head(current)
        if record.txn == tx.txn and record.head == tx.manifest_id:
            return True
    return meta.get(manifest_key(tx.manifest_id)) is not None


def _read_back(
    meta: MetaStore, tx: Transaction, prepared: Prepare, exc: BaseException
) -> list[bytes]:
    """After the commit write's outcome was lost: [] when it landed, else OutcomeUnknown
    (the pending entry stays for gc)."""
    if not _committed(meta, tx):
        raise _unknown(tx, exc) from exc
    prepared.recorded = None
    return []


def _lost_race(meta: MetaStore, tx: Transaction, final: _CommitWrite, failed: Op) -> ConflictError:
    """What a commit write refused by a condition other than a node's raises."""
    if final.is_guard(failed):
        return _guard_conflict(tx, failed)
    return _conflict(meta, tx)


def _conflict(meta: MetaStore, tx: Transaction) -> ConflictError:
    current = meta.get(head_key(tx.chain))
    actual = decode_head(current).head.hex() if current is not None else None
    expected = decode_head(tx.expected_head).head.hex() if tx.expected_head else None
    return ConflictError(
        f"chain {tx.chain!r} moved: the save expected head {expected}, but it is now "
        f"{actual}; load the new head and apply the step again"
    )


def _guard_conflict(tx: Transaction, guard: Op) -> ConflictError:
    if guard.key.startswith(HEAD):
        return ConflictError(
            f"chain {chain_of(guard.key)!r} moved while the merge into {tx.chain!r} read it; "
            "merge again to include its new head"
        )
    return ConflictError(
        f"parent version {id_of(guard.key, MANIFEST).hex()} of the new version of "
        f"{tx.chain!r} was deleted while the save ran"
    )
