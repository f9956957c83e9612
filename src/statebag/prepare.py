"""Step 1 of the commit protocol, and every write a save makes on condition of it.

A :class:`Prepare` owns one transaction's pending entry (``pending/<txn>``): it records each
pack in it before uploading the pack, renews its lease while the save runs where gc cannot
tell a running writer from a gone one, and makes every write that must be conditional on
the entry (a reference batch, the commit) one at a time with the entry as last written, so
that none fails another's condition and a rolled-back save cannot write anything more. A
put whose answer was lost is read back: the entry only ever holds values this save wrote.
See :mod:`statebag.commit` for the protocol and docs/FORMAT.md, "Commit protocol".
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait

from . import codec
from ._crash import crash_point
from .dag import NewNode
from .errors import BackendError, OutcomeUnknown
from .hashing import hash_bytes
from .keys import (
    STAT_EPOCH,
    PendingRecord,
    encode_letter,
    encode_record,
    letter_key,
    pending_key,
    stat_shard,
    undo_added,
)
from .liveness import Liveness
from .meta import Add, Check, ConditionFailed, Delete, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import PackEntry, PackWriter, pack_key

__all__ = ["DEFAULT_LEASE", "MAX_ATTEMPTS", "Prepare", "Refused", "RolledBack", "new_txn_id"]

DEFAULT_LEASE = 24 * 3600.0
MAX_ATTEMPTS = 64
# Packs a save has uploading (or waiting to) while it packs the next.
_UPLOADS_AHEAD = 2


def new_txn_id() -> str:
    """A fresh transaction id: 16 random bytes as hex."""
    return secrets.token_hex(16)


class RolledBack(BackendError):
    """The save's pending entry was rolled back by gc (its writer looked gone, or its lease
    expired): it cannot commit; nothing it wrote is referenced. Save again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class Refused(Exception):
    """A guarded write failed a condition other than the pending entry's: ``op`` is it."""

    def __init__(self, op: Op, error: ConditionFailed) -> None:
        super().__init__(str(error))
        self.op = op
        self.error = error


class Prepare:
    """Step 1, one pack at a time: record the pack in the pending entry, then upload it;
    and, until the save ends, every write made on condition of that entry.

    A save ships each pack as soon as it is full, so uploads overlap the compression of the
    rest. ``submit`` runs an upload elsewhere (a thread pool) and returns its future.

    Where gc cannot tell a running writer from a gone one (``liveness.knows_writers`` is
    False: stores without locks), a heartbeat renews the entry's lease every quarter lease
    while the save runs, so that gc rolls back only saves whose writer stopped renewing.
    Every write conditional on the entry (a renewal, a reference batch, the commit) is made
    under one lock with the entry as last written, so none of them fails the others'
    condition; a renewal whose answer was lost is read back (see :meth:`_sync`).
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
        self._key = pending_key(txn)
        self._chain = chain
        self._lease = lease
        self._submit = submit
        self._liveness = liveness if liveness is not None else Liveness()
        self._live = False
        self.recorded: bytes | None = None  # the pending entry as last written
        self._added: dict[str, int] = {}  # totals added before the commit (see PendingRecord)
        # Every value this save put as its entry: a put whose answer was lost may land
        # later, and the entry then holds one of these, never anything else.
        self._written: set[bytes] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        # Makes this transaction's pack ids its own (see statebag.packs).
        self.salt = hash_bytes(txn.encode())[:16]
        self._started = time.time_ns()
        self._uploads: list[Future[None]] = []
        self.pack_ids: list[bytes] = []
        self.upload_seconds = 0.0

    @property
    def txn(self) -> str:
        return self._txn

    def _entry(self) -> bytes:
        now = time.time_ns()
        return encode_record(
            PendingRecord(
                self._chain,
                self._started,
                now + int(self._lease * 1e9),
                list(self.pack_ids),
                dict(self._added),
            )
        )

    def _pending(self) -> PendingRecord:
        return PendingRecord(self._chain, self._started, 0, list(self.pack_ids), self._added)

    def _rolled_back(self) -> RolledBack:
        return RolledBack(
            f"the pending entry of save {self._txn} on chain {self._chain!r} was rolled "
            "back by garbage collection (its writer looked gone, or its lease expired); "
            "save again"
        )

    def _sync(self) -> None:
        """Read the entry back after a put whose answer was lost or whose condition failed:
        one of this save's values (a late put landed) becomes the one last written; an
        absent entry, once one was written, was rolled back."""
        current = self._meta.get(self._key)
        if current is None:
            if self.recorded is None:
                return
            raise self._rolled_back()
        if current not in self._written:
            raise self._rolled_back()
        self.recorded = current

    def _put_entry(self, value: bytes) -> None:
        self._written.add(value)
        for _ in range(MAX_ATTEMPTS):
            try:
                # Not synced on its own: losing it to a power failure leaves unreferenced
                # packs for gc, never a commit without its packs, since the commit's durable
                # write syncs it too.
                self._meta.write([Put(self._key, value, expect=self.recorded)], durable=False)
            except (ConditionFailed, OutcomeUnknown):
                self._sync()
                if self.recorded == value:
                    return
                continue
            self.recorded = value
            return
        raise OutcomeUnknown(
            f"the pending entry of save {self._txn} on chain {self._chain!r} could not be "
            "written: the metadata store kept failing"
        )

    def record(self) -> None:
        """Put the pending entry as it stands (also with no pack yet)."""
        if not self._live:
            self._liveness.acquire(self._txn)
            self._live = True
        with self._lock:
            self._put_entry(self._entry())
        crash_point("save.after_pending")
        if self._heartbeat is None and not self._liveness.knows_writers:
            self._heartbeat = threading.Thread(
                target=self._renew, name=f"statebag-lease-{self._txn[:8]}", daemon=True
            )
            self._heartbeat.start()

    def _renew(self) -> None:
        interval = self._lease / 4
        while not self._stop.wait(interval):
            with self._lock:
                if self.recorded is None:
                    return  # committed or handed over: nothing left to keep alive
                try:
                    self._put_entry(self._entry())
                except RolledBack:
                    return  # the save meets it at its next write
                except Exception:
                    continue  # the store failing now: renew at the next beat

    def guarded(self, build: Callable[[bytes | None], list[Op]], /) -> list[Op]:
        """Write ``build(entry as last written)``, whose ops are conditional on that entry;
        return the ops written. A failed condition of the entry is read back: a late put of
        this save's own retries the write; an entry rolled back raises a retryable
        BackendError. Any other failed condition raises :class:`Refused` with its op."""
        with self._lock:
            for _ in range(MAX_ATTEMPTS):
                ops = build(self.recorded)
                try:
                    self._meta.write(ops)
                except ConditionFailed as exc:
                    failed = ops[exc.index]
                    if failed.key != self._key:
                        raise Refused(failed, exc) from exc
                    self._sync()
                    continue
                return ops
        raise self._rolled_back()

    def add_to_totals(self, added: dict[str, int], ops: Sequence[Op], /) -> None:
        """Add ``ops`` (the save's totals, ``added`` by name) before the commit, recording
        them in the pending entry in the same write, for a rollback to take back."""
        with self._lock:
            self._added = dict(added)
            value = self._entry()
            self._written.add(value)
            try:
                self.guarded(lambda recorded: [Put(self._key, value, expect=recorded), *ops])
            except BaseException:
                self._added = {}
                raise
            self.recorded = value

    # What write_checked adds to each batch.
    CHECKED_OVERHEAD = 2

    def write_checked(self, ops: Sequence[Op], /) -> None:
        """Write ``ops`` with a check that the pending entry is still this save's (see
        :meth:`guarded`), and one more on the chain's epoch shard: a batch changes counts
        and the index, which an audit must see as a change."""
        epoch = Add(stat_shard(STAT_EPOCH, self._chain), 1)
        self.guarded(lambda recorded: [Check(self._key, recorded), epoch, *ops])

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

    def _to_letter(self) -> bool:
        """Replace the pending entry by a dead letter naming its packs, in one write
        conditional on the entry; False when there was none, or gc rolled it back first
        (the packs are then gc's)."""
        if self.recorded is None:
            return False
        letter = letter_key(self._txn)
        try:
            self.guarded(
                lambda recorded: [
                    Delete(self._key, expect=recorded),
                    Put(letter, encode_letter(self.pack_ids)),
                    *(Add(key, delta) for key, delta in undo_added(self._pending())),
                ]
            )
        except RolledBack:
            return False
        self.recorded = None
        return True

    def abandon(self) -> None:
        """Undo step 1 when nothing was indexed: delete the packs and the pending entry.

        The entry becomes a dead letter in the same write that removes it, and the letter
        goes only once the packs are gone: a failure or a crash in between leaves it for gc
        to finish (see :func:`discard_packs`).
        """
        with contextlib.suppress(Exception):
            self.wait()
        if not self._to_letter():
            return
        crash_point("save.after_abandon_record")
        for pack_id in self.pack_ids:
            self._objects.delete(pack_key(pack_id))
        self._meta.delete(letter_key(self._txn))

    def hand_over(self) -> None:
        """End a save whose reference batches may have indexed nodes into its packs: the
        pending entry becomes a dead letter at once, and gc decides pack by pack (a pack
        another save may have found nodes in is kept and its other frames counted dead)."""
        with contextlib.suppress(Exception):
            if self._to_letter():
                crash_point("save.after_abandon_record")

    def release(self) -> None:
        """End the save: stop renewing its lease; let gc know its writer no longer runs."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
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
