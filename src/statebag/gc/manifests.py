"""Manifests in packs (format 2): gc writes the ones no pack carries yet, and never deletes a
pack that holds the only copy of a version the metadata does not know to be deleted.

A save with no new node writes no pack, so its manifest is marked ``unpacked/<id>`` by its
commit; :meth:`ManifestPacker.pack_unpacked` writes such manifests into one pack of their own
(under a pending entry, as a save's pack) and, in one write, records the pack and drops the
marks. Before a pack is deleted or compacted, :func:`manifest_states` says what its manifests
are: live ones (``manifest/<id>`` present) are carried into the compacted pack, deleted ones
(``tomb/<id>``) go with it, and a manifest with neither (a version the metadata never knew:
its metadata lost, or a commit still landing) keeps the whole pack.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import IntegrityError
from ..keys import (
    STAT_BYTES_STORED,
    STAT_EPOCH,
    STAT_PACKS,
    UNPACKED,
    PackRecord,
    id_of,
    manifest_key,
    pack_record_key,
    pending_key,
    tomb_key,
    unpacked_key,
)
from ..liveness import Liveness
from ..meta import Add, ConditionFailed, Delete, MetaStore, Op, Put
from ..objects import ObjectStore
from ..packs import (
    PACK_MAGIC,
    TRAILER_SIZE,
    PackWriter,
    manifest_bytes,
    pack_key,
    parse_pack,
)
from ..prepare import Prepare, new_txn_id

__all__ = ["ManifestPacker", "ManifestStates", "manifest_states", "may_hold_manifests"]

# Manifests one gc run packs per pack (each costs a mark's delete in the recording write).
_PER_PACK = 1000


class ManifestStates(NamedTuple):
    """The manifests one pack carries, by what the metadata knows of them."""

    live: list[tuple[bytes, bytes]]  # (id, canonical bytes): committed and not deleted
    unknown: list[bytes]  # neither a manifest nor a tombstone: the pack must stay


def may_hold_manifests(objects: ObjectStore, pack_id: bytes, size: int, /) -> bool:
    """Whether the pack's trailer is not the format 1 one (which carries no manifest): a
    read of its last bytes only. An unreadable trailer may hold manifests."""
    try:
        tail = objects.get(pack_key(pack_id), offset=max(size - TRAILER_SIZE, 0))
    except Exception:
        return True
    return not tail.endswith(PACK_MAGIC)


def manifest_states(meta: MetaStore, pack_id: bytes, data: bytes, /) -> ManifestStates:
    """What the manifests pack ``data`` carries are to the metadata. Bytes that do not
    parse as a pack carry none (no version can be read from them)."""
    try:
        entries = parse_pack(data, pack_id=pack_id.hex()).manifests
    except IntegrityError:
        return ManifestStates([], [])
    if not entries:
        return ManifestStates([], [])
    keys = [manifest_key(e.node_id) for e in entries] + [tomb_key(e.node_id) for e in entries]
    found = meta.get_many(keys)
    live: list[tuple[bytes, bytes]] = []
    unknown: list[bytes] = []
    for entry in entries:
        stored = found.get(manifest_key(entry.node_id))
        if stored is not None:
            try:
                live.append((entry.node_id, manifest_bytes(data, entry, pack_id=pack_id.hex())))
            except IntegrityError:
                # The copy here is damaged; the metadata's is whole: carry that one.
                live.append((entry.node_id, stored))
        elif tomb_key(entry.node_id) not in found:
            unknown.append(entry.node_id)
    return ManifestStates(live, unknown)


class ManifestPacker:
    """Writes the manifests marked ``unpacked/`` into packs of their own."""

    def __init__(
        self, objects: ObjectStore, meta: MetaStore, /, *, liveness: Liveness, lease: float
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness
        self._lease = lease

    def pack_unpacked(self) -> int:
        """Pack every manifest marked unpacked (marks of deleted ones are dropped); the
        number packed."""
        limit = self._meta.max_batch
        per_pack = _PER_PACK if limit is None else max(limit - 8, 1)
        marked = [id_of(key, UNPACKED) for key, _ in self._meta.scan(UNPACKED)]
        packed = 0
        for start in range(0, len(marked), per_pack):
            packed += self._pack(marked[start : start + per_pack])
        return packed

    def _pack(self, ids: list[bytes]) -> int:
        found = self._meta.get_many([manifest_key(i) for i in ids])
        live = [(i, found[manifest_key(i)]) for i in ids if manifest_key(i) in found]
        gone: list[Op] = [Delete(unpacked_key(i)) for i in ids if manifest_key(i) not in found]
        if not live:
            self._meta.write(gone)
            return 0
        txn = new_txn_id()
        prepare = Prepare(
            self._objects, self._meta, txn=txn, chain="", lease=self._lease, liveness=self._liveness
        )
        try:
            writer = PackWriter(prepare.salt)
            for manifest_id, data in live:
                writer.add_manifest(manifest_id, data)
            pack_id, data, _ = writer.finish()
            prepare.ship(pack_id, data, last=True)
            ops: list[Op] = [
                Delete(pending_key(txn), expect=prepare.recorded),
                Put(pack_record_key(pack_id), PackRecord(len(data), 0).encode(), expect=None),
                Add(STAT_PACKS, 1),
                Add(STAT_BYTES_STORED, len(data)),
                Add(STAT_EPOCH, 1),
                *(Delete(unpacked_key(i)) for i, _ in live),
                *gone,
            ]
            try:
                self._meta.write(ops)
            except ConditionFailed:
                prepare.abandon()  # rolled back meanwhile: the marks stay for the next run
                return 0
            prepare.recorded = None
        finally:
            prepare.release()
        return len(live)
