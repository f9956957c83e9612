"""The two-phase commit of one version: pending entry, packs, references, head move.

Invariant: every node a committed manifest reaches is indexed, counted and readable. Leaks
(stored bytes nothing reaches) may exist until garbage collection; losses never.

1. **Prepare**: put ``pending/<txn>`` (chain, start, lease deadline, pack ids), then upload
   the packs. Pack keys are content addresses, so an upload retried is harmless.
2. **Reference**: index each new node (``node/<id>``, conditional on absence) and add one
   to the count of every node a new node references, and one to the manifest's root.
3. **Commit**: put the manifest and move the head with one conditional write: the head
   record must still be the one the save read, and the new one carries the txn id.
4. **Finish**: delete the pending entry.

Where the metadata store takes every operation in one atomic write (SQLite, memory), steps
2 to 4 are that one write: a lost race applies nothing, and the packs, which nothing then
indexes, are deleted at once. Where it caps a write (``max_batch``, as DynamoDB does),
step 2 runs in batches before step 3; a lost race then takes the references back (counts
only ever over-count in between, which an audit can see and repair) and leaves the packs
to garbage collection, because a concurrent save may already have reused a node indexed
into them.

A node found already indexed when its index write is tried (another save stored the same
bytes first) becomes a reused node: its own children are not counted again, and its copy
in this save's pack is dead space. When a write fails without an answer (a timeout), the
head is read back: a head carrying this txn id means the commit happened.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import msgspec

from .dag import NewNode
from .errors import BackendError, ConflictError, StatebagError
from .meta import Add, ConditionFailed, Delete, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import IndexRecord, PackEntry, pack_key

__all__ = [
    "DEFAULT_LEASE",
    "HeadRecord",
    "PendingRecord",
    "Prepare",
    "Transaction",
    "commit",
    "head_key",
    "new_txn_id",
]

DEFAULT_LEASE = 24 * 3600.0
_MAX_ATTEMPTS = 64


class HeadRecord(msgspec.Struct, array_like=True, frozen=True):
    """``chain/<name>`` -> the chain's head manifest id, its seq and the txn that set it."""

    head: bytes
    seq: int
    txn: str


class PendingRecord(msgspec.Struct, frozen=True):
    """``pending/<txn>``: a save in progress, to be rolled back if its lease expires."""

    chain: str
    started_ns: int
    lease_until_ns: int
    packs: list[bytes]


_HEAD_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_HEAD_DECODER = msgspec.msgpack.Decoder(HeadRecord)
_PENDING_DECODER = msgspec.msgpack.Decoder(PendingRecord)


def encode_record(record: HeadRecord | PendingRecord, /) -> bytes:
    return _HEAD_ENCODER.encode(record)


def decode_head(data: bytes, /) -> HeadRecord:
    return _HEAD_DECODER.decode(data)


def decode_pending(data: bytes, /) -> PendingRecord:
    return _PENDING_DECODER.decode(data)


def head_key(chain: str, /) -> str:
    return f"chain/{chain}"


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
    packs: list[tuple[bytes, bytes, list[PackEntry]]]  # (pack id, data, entries)
    new_nodes: dict[bytes, NewNode]  # every node stored in the packs
    lease: float = DEFAULT_LEASE
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
        group: list[Op] = [Put(f"node/{node_id.hex()}", records[node_id].encode(), expect=None)]
        group.extend(Add(f"ref/{child.hex()}", 1) for child in node.children)
        groups.append(group)
    groups.append([Add(f"ref/{tx.root.hex()}", 1)])
    return groups


def _commit_ops(tx: Transaction) -> list[Op]:
    new_count = len(tx.new_nodes) - len(tx.reused_late)
    ops: list[Op] = [
        Put(f"manifest/{tx.manifest_id.hex()}", tx.manifest, expect=None),
        Put(head_key(tx.chain), encode_record(tx.new_head), expect=tx.expected_head),
        Delete(f"pending/{tx.txn}"),
        Add("stat/manifests", 1),
        Add("stat/bytes_logical", tx.bytes_logical),
    ]
    if tx.expected_head is None:
        ops.append(Add("stat/chains", 1))
    if new_count:
        ops.append(Add("stat/nodes", new_count))
    if tx.packs:
        ops.append(Add("stat/packs", len(tx.packs)))
        ops.append(Add("stat/bytes_stored", sum(len(data) for _, data, _ in tx.packs)))
        ops.extend(
            Put(f"pack/{pack_id.hex()}", len(data).to_bytes(8, "little"))
            for pack_id, data, _ in tx.packs
        )
    return ops


def _node_of(op: Op) -> bytes | None:
    if isinstance(op, Put) and op.key.startswith("node/"):
        return bytes.fromhex(op.key[5:])
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
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._txn = txn
        self._chain = chain
        self._lease = lease
        self._submit = submit
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
        # Not synced on its own: losing it to a power failure leaves unreferenced packs for
        # gc, never a commit without its packs, since the commit's durable write syncs it too.
        self._meta.put(f"pending/{self._txn}", encode_record(pending), durable=False)
        self.requests["meta_writes"] += 1

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

        self.requests["object_puts"] += 1
        if self._submit is None or last:
            upload()
        else:
            self._uploads.append(self._submit(upload))

    def wait(self) -> None:
        """Wait for every upload; the first failure is raised (after all have ended)."""
        errors = [future.exception() for future in self._uploads]
        self._uploads.clear()
        for error in errors:
            if error is not None:
                raise error

    def abandon(self) -> None:
        """Undo step 1: delete the packs (no index names them yet) and the pending entry."""
        with contextlib.suppress(Exception):
            self.wait()
        for pack_id in self.pack_ids:
            self._objects.delete(pack_key(pack_id))
            self.requests["object_deletes"] += 1
        if self.pack_ids:
            self._meta.delete(f"pending/{self._txn}")
            self.requests["meta_writes"] += 1


def commit(
    objects: ObjectStore,
    meta: MetaStore,
    tx: Transaction,
    /,
    *,
    prepared: Prepare | None = None,
) -> None:
    """Run the protocol for ``tx``; ConflictError when the head moved since it was read.

    With ``prepared``, step 1 was done by the caller (every pack of ``tx`` shipped through
    it); otherwise this ships the packs one after another first.
    """
    if prepared is None:
        prepared = Prepare(objects, meta, txn=tx.txn, chain=tx.chain, lease=tx.lease)
        try:
            for pack_id, data, _ in tx.packs:
                prepared.ship(pack_id, data)
        except BaseException:
            prepared.abandon()
            raise
    try:
        prepared.wait()
    except BaseException:
        prepared.abandon()
        raise
    if not tx.packs and meta.max_batch is not None:
        # In batches the references are taken before the head moves: record the save so
        # that a crash in between can be rolled back.
        prepared.record()
    for key, count in prepared.requests.items():
        tx.requests[key] += count
    tx.timings["upload"] = prepared.upload_seconds

    records = {
        entry.node_id: IndexRecord(pack_id, entry.offset, entry.length, entry.size)
        for pack_id, _, entries in tx.packs
        for entry in entries
    }
    if meta.max_batch is None:
        _commit_atomic(objects, meta, tx, records)
    else:
        _commit_batched(meta, tx, records, meta.max_batch)


def _commit_atomic(
    objects: ObjectStore, meta: MetaStore, tx: Transaction, records: dict[bytes, IndexRecord]
) -> None:
    for _ in range(_MAX_ATTEMPTS):
        ops = [op for group in _reference_groups(tx, records) for op in group]
        ops += _commit_ops(tx)
        try:
            meta.write(ops)
            tx.requests["meta_writes"] += 1
            return
        except ConditionFailed as exc:
            tx.requests["meta_writes"] += 1
            node = _node_of(ops[exc.index])
            if node is not None:
                # Another save indexed this node first: reuse its copy, and try again.
                tx.reused_late.add(node)
                continue
            if _committed(meta, tx):
                return
            _abandon_packs(objects, meta, tx)
            raise _conflict(meta, tx) from exc
        except StatebagError:
            raise
        except Exception as exc:  # an unexpected failure: did the write land?
            if _committed(meta, tx):
                return
            raise BackendError(
                f"commit of chain {tx.chain!r} failed: {exc}", retryable=True
            ) from exc
    raise BackendError(
        f"commit of chain {tx.chain!r} kept racing other writers' index entries",
        retryable=True,
    )


def _commit_batched(
    meta: MetaStore, tx: Transaction, records: dict[bytes, IndexRecord], max_batch: int
) -> None:
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
        # The manifest, the head move and the pending delete are one write; the totals go
        # first (taken back with the rest on a conflict) when they do not fit beside them.
        final = _commit_ops(tx)
        extra = final[3:] if len(final) > max_batch else []
        final = final[: len(final) - len(extra)]
        for start in range(0, len(extra), max_batch):
            meta.write(extra[start : start + max_batch])
            tx.requests["meta_writes"] += 1
            done.extend(extra[start : start + max_batch])
        try:
            meta.write(final)
            tx.requests["meta_writes"] += 1
        except ConditionFailed as exc:
            tx.requests["meta_writes"] += 1
            if _committed(meta, tx):
                return
            raise _conflict(meta, tx) from exc
    except BaseException:
        if not _committed(meta, tx):
            _take_back(meta, tx, done)
        raise


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
    try:
        meta.write([put, *adds[split:]])
        tx.requests["meta_writes"] += 1
    except ConditionFailed as exc:
        tx.requests["meta_writes"] += 1
        if exc.index != 0:
            raise
        tx.reused_late.add(bytes.fromhex(put.key[len("node/") :]))
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
            node = _node_of(ops[exc.index])
            if node is None:
                raise
            tx.reused_late.add(node)
            groups = [group for group in groups if _node_of(group[0]) != node]
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
    meta.delete(f"pending/{tx.txn}")
    tx.requests["meta_writes"] += 1


def _committed(meta: MetaStore, tx: Transaction) -> bool:
    current = meta.get(head_key(tx.chain))
    tx.requests["meta_reads"] += 1
    if current is None:
        return False
    record = decode_head(current)
    if record.txn == tx.txn and record.head == tx.manifest_id:
        # Our write landed but its answer was lost; finish step 4 if it did not.
        meta.delete(f"pending/{tx.txn}")
        return True
    return False


def _abandon_packs(objects: ObjectStore, meta: MetaStore, tx: Transaction) -> None:
    """Delete this save's packs, which no committed index entry names, and its pending entry."""
    for pack_id, _, _ in tx.packs:
        objects.delete(pack_key(pack_id))
        tx.requests["object_deletes"] += 1
    meta.delete(f"pending/{tx.txn}")
    tx.requests["meta_writes"] += 1


def _conflict(meta: MetaStore, tx: Transaction) -> ConflictError:
    current = meta.get(head_key(tx.chain))
    actual = decode_head(current).head.hex() if current is not None else None
    expected = decode_head(tx.expected_head).head.hex() if tx.expected_head else None
    return ConflictError(
        f"chain {tx.chain!r} moved: the save expected head {expected}, but it is now "
        f"{actual}; load the new head and apply the step again"
    )
