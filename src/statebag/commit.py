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

Where the metadata store takes every operation in one atomic write (SQLite, memory), steps
2 to 4 are that one write: a lost race applies nothing, and the packs, which nothing then
indexes, are deleted at once (through a dead letter, so that a failure to delete them is
finished by gc). Where it caps a write (``max_batch``, as DynamoDB does), step 2 runs in
batches before step 3; a lost race then takes the references back (counts only ever
over-count in between, which an audit can see and repair) and leaves the packs to garbage
collection, because a concurrent save may already have reused a node indexed into them.

A node found already indexed when its index write is tried (another save stored the same
bytes first) becomes a reused node: its own children are not counted again, and its copy
in this save's pack is dead space (counted in ``dead/<pack>``). A found node that gc swept
is written again, into one more pack, and the commit retried. When a write fails without
an answer (a timeout), the head is read back: a head carrying this txn id means the commit
happened.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from . import codec
from ._crash import crash_point
from .dag import NewNode
from .errors import BackendError, ConflictError, StatebagError
from .hashing import hash_bytes
from .keys import (
    FLAG_INTERIOR,
    HEAD,
    MANIFEST,
    NODE,
    STAT_BYTES_DEAD,
    STAT_BYTES_LOGICAL,
    STAT_BYTES_STORED,
    STAT_CHAINS,
    STAT_EPOCH,
    STAT_MANIFESTS,
    STAT_NODES,
    STAT_PACKS,
    HeadRecord,
    IndexRecord,
    PackRecord,
    PendingRecord,
    chain_of,
    dead_key,
    decode_head,
    encode_letter,
    encode_record,
    head_key,
    id_of,
    letter_key,
    manifest_key,
    node_key,
    pack_record_key,
    pending_key,
    ref_key,
    stat_shard,
)
from .liveness import Liveness
from .meta import ANY, Add, Check, ConditionFailed, Delete, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import PackEntry, PackWriter, pack_key

__all__ = ["DEFAULT_LEASE", "Prepare", "Transaction", "commit", "new_txn_id"]

DEFAULT_LEASE = 24 * 3600.0
_MAX_ATTEMPTS = 64
# Packs a save has uploading (or waiting to) while it packs the next.
_UPLOADS_AHEAD = 2


def new_txn_id() -> str:
    """A fresh transaction id: 16 random bytes as hex."""
    return secrets.token_hex(16)


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
    # Filled in by commit():
    reused_late: set[bytes] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(
        default_factory=lambda: {
            "object_puts": 0,
            "object_deletes": 0,
            "meta_reads": 0,
            "meta_writes": 0,
        }
    )


def _reference_groups(tx: Transaction, records: dict[bytes, IndexRecord]) -> list[list[Op]]:
    """One group per new node (its index put, then its children's increments), then the
    manifest's increment of its root. A node found already indexed drops its whole group."""
    groups: list[list[Op]] = []
    for node_id, node in tx.new_nodes.items():
        if node_id in tx.reused_late:
            continue
        record = records[node_id]
        if node.children:
            record = record._replace(flags=FLAG_INTERIOR)
        group: list[Op] = [Put(node_key(node_id), record.encode(), expect=None)]
        group.extend(Add(ref_key(child), 1) for child in node.children)
        groups.append(group)
    groups.append([Add(ref_key(tx.root), 1)])
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
    totals: list[Op]  # counters, pack records and the caller's extra ops

    def ops(self) -> list[Op]:
        return [self.manifest, self.head, self.finish, *self.guards, *self.totals]

    def essential(self) -> list[Op]:
        """What must land in one write: the manifest, the head move, the pending entry's
        removal and the guards."""
        return [self.manifest, self.head, self.finish, *self.guards]

    def is_guard(self, op: Op) -> bool:
        return any(op is guard for guard in self.guards)


def _commit_write(tx: Transaction, pending: bytes | None) -> _CommitWrite:
    """The manifest, the head move, the pending entry's removal and the totals. The pending
    entry must still be the one this save wrote: if gc rolled it back (and deleted the
    packs), the save must not commit."""
    new_count = len(tx.new_nodes) - len(tx.reused_late)

    def total(key: str, delta: int) -> Add:
        return Add(stat_shard(key, tx.chain), delta)

    totals: list[Op] = [
        total(STAT_MANIFESTS, 1),
        total(STAT_BYTES_LOGICAL, tx.bytes_logical),
        total(STAT_EPOCH, 1),
        *tx.extra,
    ]
    if tx.expected_head is None:
        totals.append(total(STAT_CHAINS, 1))
    if new_count:
        totals.append(total(STAT_NODES, new_count))
    if tx.packs:
        totals.append(total(STAT_PACKS, len(tx.packs)))
        totals.append(total(STAT_BYTES_STORED, sum(size for _, size, _ in tx.packs)))
        totals.extend(
            Put(
                pack_record_key(pack_id),
                PackRecord(size, sum(entry.length for entry in entries)).encode(),
            )
            for pack_id, size, entries in tx.packs
        )
        # A node another save indexed first is dead space in this save's pack from the start.
        dead: dict[bytes, int] = {}
        for pack_id, _, entries in tx.packs:
            for entry in entries:
                if entry.node_id in tx.reused_late:
                    dead[pack_id] = dead.get(pack_id, 0) + entry.length
        for pack_id, length in dead.items():
            totals.append(Add(dead_key(pack_id), length))
            totals.append(total(STAT_BYTES_DEAD, length))
    return _CommitWrite(
        manifest=Put(manifest_key(tx.manifest_id), tx.manifest, expect=None),
        head=Put(head_key(tx.chain), encode_record(tx.new_head), expect=tx.expected_head),
        finish=Delete(pending_key(tx.txn), expect=pending if pending is not None else ANY),
        guards=list(tx.guards),
        totals=totals,
    )


def _indexed_node(op: Op) -> bytes | None:
    """The node an index put of a reference group indexes (None for any other op)."""
    if isinstance(op, Put) and op.key.startswith(NODE):
        return id_of(op.key, NODE)
    return None


class Prepare:
    """Step 1, one pack at a time: record the pack in the pending entry, then upload it.

    A save ships each pack as soon as it is full, so uploads overlap the compression of the
    rest. ``submit`` runs an upload elsewhere (a thread pool) and returns its future.
    """

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        /,
        *,
        txn: str,
        chain: str,
        lease: float,
        submit: Callable[[Callable[[], None]], Future[None]] | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._txn = txn
        self._chain = chain
        self._lease = lease
        self._submit = submit
        self._liveness = liveness if liveness is not None else Liveness()
        self._live = False
        self.recorded: bytes | None = None  # the pending entry as last written
        # Makes this transaction's pack ids its own (see statebag.packs).
        self.salt = hash_bytes(txn.encode())[:16]
        self._started = time.time_ns()
        self._uploads: list[Future[None]] = []
        self.pack_ids: list[bytes] = []
        self.requests = {"object_puts": 0, "object_deletes": 0, "meta_writes": 0}
        self.upload_seconds = 0.0

    def record(self) -> None:
        """Put the pending entry as it stands (also with no pack yet)."""
        pending = PendingRecord(
            self._chain,
            self._started,
            self._started + int(self._lease * 1e9),
            list(self.pack_ids),
        )
        if not self._live:
            self._liveness.acquire(self._txn)
            self._live = True
        value = encode_record(pending)
        # Not synced on its own: losing it to a power failure leaves unreferenced packs for
        # gc, never a commit without its packs, since the commit's durable write syncs it too.
        # Conditional on the entry as last written: if gc rolled it back (its lease expired),
        # the packs it listed may be gone, and the save must fail rather than go on.
        try:
            self._meta.write(
                [Put(pending_key(self._txn), value, expect=self.recorded)], durable=False
            )
        except ConditionFailed as exc:
            raise BackendError(
                f"the pending entry of save {self._txn} on chain {self._chain!r} was rolled "
                "back by garbage collection (its lease expired); save again",
                retryable=True,
            ) from exc
        self.recorded = value
        self.requests["meta_writes"] += 1
        crash_point("save.after_pending")

    def ship(self, pack_id: bytes, data: bytes, /, *, last: bool = False) -> None:
        """Record and upload one pack; the ``last`` one is uploaded on the calling thread,
        which would only wait for it otherwise."""
        self.pack_ids.append(pack_id)
        self.record()
        key = pack_key(pack_id)

        def upload() -> None:
            started = time.perf_counter()
            self._objects.put(key, data)
            self.upload_seconds += time.perf_counter() - started
            crash_point("save.after_upload")

        self.requests["object_puts"] += 1
        if self._submit is None or last:
            upload()
            return
        # A save that packs faster than it uploads would otherwise hold every pack it made
        # (the whole value) in the pool's queue: at most _UPLOADS_AHEAD wait or run at once.
        running = [future for future in self._uploads if not future.done()]
        if len(running) >= _UPLOADS_AHEAD:
            wait(running, return_when=FIRST_COMPLETED)
        self._uploads.append(self._submit(upload))

    def wait(self) -> None:
        """Wait for every upload; the first failure is raised (after all have ended)."""
        errors = [future.exception() for future in self._uploads]
        self._uploads.clear()
        for error in errors:
            if error is not None:
                raise error

    def abandon(self) -> None:
        """Undo step 1: delete the packs (no index names them) and the pending entry.

        The entry becomes a dead letter in the same write that removes it, and the letter
        goes only once the packs are gone: a failure or a crash in between leaves it for gc
        to finish (see :func:`discard_packs`).
        """
        with contextlib.suppress(Exception):
            self.wait()
        if self.recorded is None:
            return
        letter = letter_key(self._txn)
        try:
            self._meta.write(
                [
                    Delete(pending_key(self._txn), expect=self.recorded),
                    Put(letter, encode_letter(self.pack_ids)),
                ]
            )
        except ConditionFailed:
            return  # gc rolled the entry back already: the packs are its business
        self.requests["meta_writes"] += 1
        self.recorded = None
        crash_point("save.after_abandon_record")
        for pack_id in self.pack_ids:
            self._objects.delete(pack_key(pack_id))
            self.requests["object_deletes"] += 1
        self._meta.delete(letter)
        self.requests["meta_writes"] += 1

    def release(self) -> None:
        """End the save: let gc know its writer no longer runs."""
        if self._live:
            self._live = False
            self._liveness.release(self._txn)

    def rewrite(self, nodes: list[NewNode], /, *, level: int) -> tuple[bytes, int, list[PackEntry]]:
        """Store ``nodes`` again in one more pack (they were swept while this save ran)."""
        writer = PackWriter(self.salt)
        for node, (header, payload) in zip(
            nodes, codec.compress_batch([node.data for node in nodes], level=level), strict=True
        ):
            writer.add(node.node_id, header, payload, len(node.data))
        pack_id, data, entries = writer.finish()
        self.ship(pack_id, data, last=True)
        return pack_id, len(data), entries


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
    """
    try:
        prepared.wait()
    except BaseException:
        prepared.abandon()
        raise
    if not tx.packs and meta.max_batch is not None:
        # In batches the references are taken before the head move: record the save so
        # that a crash in between can be rolled back.
        prepared.record()
    records = {
        entry.node_id: IndexRecord(pack_id, entry.offset, entry.length, entry.size)
        for pack_id, _, entries in tx.packs
        for entry in entries
    }
    try:
        for _ in range(_MAX_ATTEMPTS):
            if meta.max_batch is None:
                gone = _commit_atomic(objects, meta, tx, records, prepared)
            else:
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
        for key, count in prepared.requests.items():
            tx.requests[key] += count
        prepared.requests = dict.fromkeys(prepared.requests, 0)
        tx.timings["upload"] = prepared.upload_seconds
    crash_point("save.after_commit")


def _recheck_found(meta: MetaStore, tx: Transaction) -> list[bytes]:
    """After a found node's check failed: take the new record of each node that moved (a
    compaction) and return the nodes that are gone (swept), to be written again."""
    keys = [node_key(node_id) for node_id in tx.found]
    current = meta.get_many(keys)
    tx.requests["meta_reads"] += 1
    gone: list[bytes] = []
    for node_id, key in zip(list(tx.found), keys, strict=True):
        record = current.get(key)
        if record is None:
            gone.append(node_id)
        else:
            tx.found[node_id] = (tx.found[node_id][0], record)
    return gone


def _commit_atomic(
    objects: ObjectStore,
    meta: MetaStore,
    tx: Transaction,
    records: dict[bytes, IndexRecord],
    prepared: Prepare,
) -> list[bytes]:
    """One write: references, checks, manifest, head. Returns the found nodes gc swept
    meanwhile (nothing was written then), or [] once committed."""
    for _ in range(_MAX_ATTEMPTS):
        references = [op for group in _reference_groups(tx, records) for op in group]
        found = _found_checks(tx)
        final = _commit_write(tx, prepared.recorded)
        ops = [*references, *found, *final.ops()]
        try:
            meta.write(ops)
            tx.requests["meta_writes"] += 1
            prepared.recorded = None
            return []
        except ConditionFailed as exc:
            tx.requests["meta_writes"] += 1
            failed = ops[exc.index]
            node = _indexed_node(failed)
            if node is not None:
                # Another save indexed this node first: reuse its copy, and try again.
                tx.reused_late.add(node)
                record = meta.get(node_key(node))
                if record is not None:
                    tx.found[node] = (tx.new_nodes[node], record)
                continue
            if any(failed is check for check in found):
                gone = _recheck_found(meta, tx)
                if gone:
                    return gone
                continue
            if final.is_guard(failed):
                _abandon_packs(objects, meta, tx, prepared)
                raise _guard_conflict(tx, failed) from exc
            if failed is final.finish:
                raise BackendError(
                    f"the pending entry of save {tx.txn} on chain {tx.chain!r} was rolled "
                    "back by garbage collection (its lease expired); save again",
                    retryable=True,
                ) from exc
            if _committed(meta, tx):
                prepared.recorded = None
                return []
            _abandon_packs(objects, meta, tx, prepared)
            raise _conflict(meta, tx) from exc
        except StatebagError:
            raise
        except Exception as exc:  # an unexpected failure: did the write land?
            if _committed(meta, tx):
                prepared.recorded = None
                return []
            raise BackendError(
                f"commit of chain {tx.chain!r} failed: {exc}", retryable=True
            ) from exc
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
    done: list[Op] = []
    try:
        batch: list[list[Op]] = []
        size = 0
        for group in _reference_groups(tx, records):
            if len(group) > max_batch:
                done.extend(_write_large_group(meta, tx, group, max_batch))
                continue
            if size + len(group) > max_batch:
                done.extend(_write_groups(meta, tx, batch))
                batch, size = [], 0
            batch.append(group)
            size += len(group)
        if batch:
            done.extend(_write_groups(meta, tx, batch))
        # Once counted, a found node cannot be swept: one check of each after the counts
        # shows it was still stored when they landed.
        for node_id in tx.reused_late:
            record = meta.get(node_key(node_id))
            if record is not None:
                tx.found[node_id] = (tx.new_nodes[node_id], record)
        checks = _found_checks(tx)
        for start in range(0, len(checks), max_batch):
            try:
                meta.write(checks[start : start + max_batch])
                tx.requests["meta_writes"] += 1
            except ConditionFailed:
                gone = _recheck_found(meta, tx)
                if gone:
                    _take_back(meta, tx, done, keep_pending=True)
                    return gone
        # The manifest, the head move and the pending delete are one write; the totals go
        # first (taken back with the rest on a conflict) when they do not fit beside them.
        final = _commit_write(tx, prepared.recorded)
        write = final.ops()
        if len(write) > max_batch:
            write = final.essential()
            for start in range(0, len(final.totals), max_batch):
                part = final.totals[start : start + max_batch]
                meta.write(part)
                tx.requests["meta_writes"] += 1
                done.extend(part)
        try:
            meta.write(write)
            tx.requests["meta_writes"] += 1
            prepared.recorded = None
        except ConditionFailed as exc:
            tx.requests["meta_writes"] += 1
            if _committed(meta, tx):
                prepared.recorded = None
                return []
            failed = write[exc.index]
            if final.is_guard(failed):
                raise _guard_conflict(tx, failed) from exc
            raise _conflict(meta, tx) from exc
    except BaseException:
        if not _committed(meta, tx):
            _take_back(meta, tx, done)
        raise
    return []


def _write_large_group(
    meta: MetaStore, tx: Transaction, group: list[Op], max_batch: int
) -> list[Op]:
    """A node with more references than one write takes: increments first, in batches, then
    its index put with the last of them. The increments are taken back if the put finds the
    node already indexed; counting before indexing means a crash in between over-counts."""
    put, adds = group[0], group[1:]
    split = len(adds) - (max_batch - 1)
    early = adds[:split]
    for start in range(0, len(early), max_batch):
        meta.write(early[start : start + max_batch])
        tx.requests["meta_writes"] += 1
    last = [put, *adds[split:]]
    try:
        meta.write(last)
        tx.requests["meta_writes"] += 1
    except ConditionFailed as exc:
        tx.requests["meta_writes"] += 1
        node = _indexed_node(last[exc.index])
        if node is None:
            raise
        tx.reused_late.add(node)
        _take_back(meta, tx, early, keep_pending=True)
        return []
    return group


def _write_groups(meta: MetaStore, tx: Transaction, groups: list[list[Op]]) -> list[Op]:
    """Write groups of reference ops at once, dropping nodes found already indexed."""
    while groups:
        ops = [op for group in groups for op in group]
        try:
            meta.write(ops)
            tx.requests["meta_writes"] += 1
            return ops
        except ConditionFailed as exc:
            tx.requests["meta_writes"] += 1
            node = _indexed_node(ops[exc.index])
            if node is None:
                raise
            tx.reused_late.add(node)
            groups = [group for group in groups if _indexed_node(group[0]) != node]
    return []


def _take_back(
    meta: MetaStore, tx: Transaction, done: list[Op], *, keep_pending: bool = False
) -> None:
    """Undo the counts of a batched commit that did not happen; index entries stay."""
    undo: list[Op] = [Add(op.key, -op.delta) for op in done if isinstance(op, Add)]
    step = meta.max_batch or len(undo) or 1
    for start in range(0, len(undo), step):
        meta.write(undo[start : start + step])
        tx.requests["meta_writes"] += 1
    if keep_pending:
        return
    meta.delete(pending_key(tx.txn))
    tx.requests["meta_writes"] += 1


def _committed(meta: MetaStore, tx: Transaction) -> bool:
    current = meta.get(head_key(tx.chain))
    tx.requests["meta_reads"] += 1
    if current is None:
        return False
    record = decode_head(current)
    if record.txn == tx.txn and record.head == tx.manifest_id:
        # Our write landed but its answer was lost; finish step 4 if it did not.
        meta.delete(pending_key(tx.txn))
        return True
    return False


def _abandon_packs(
    objects: ObjectStore, meta: MetaStore, tx: Transaction, prepared: Prepare
) -> None:
    """Delete this save's packs, which no committed index entry names, and its pending entry."""
    prepared.abandon()


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
