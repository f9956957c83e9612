"""The metadata key schema and the records stored under it: docs/FORMAT.md's key table in
code, in one place.

Every metadata key is built by one function here and parsed by one function here; no other
module spells a key or slices one by a fixed offset. Keys that name an object carry its id
as 64 lowercase hex characters after a fixed prefix (``node/<id>``); each family has a
prefix constant (for scans), a builder and, where keys are scanned, a parser.

| key | value | codec |
|---|---|---|
| ``config`` | the repository's configuration | ``repository.Config`` |
| ``chain/<name>`` | head record | :class:`HeadRecord` |
| ``manifest/<id>`` | canonical manifest | ``manifests.Manifest`` |
| ``ver/<chain hash>/<seq>/<id>`` | le64 ``time_ns`` of the manifest | :func:`encode_le64` |
| ``tomb/<id>`` | tombstone | :class:`Tombstone` |
| ``pin/<id>`` | empty | |
| ``hold/<id>`` | le64 ns: kept from retention until then | :func:`encode_le64` |
| ``orphan/<id>`` | le64 ns: first seen reached from no head | :func:`encode_le64` |
| ``gc/discards`` | le64: ``stat/discards`` at the last reachability pass | :func:`encode_le64` |
| ``node/<id>`` | index record | :class:`IndexRecord` |
| ``zero/<id>`` | le64 ns: the node's count is zero since then | :func:`encode_le64` |
| ``sweep/<id>`` | a wide node's sweep in progress | :class:`SweepRecord` |
| ``pack/<id>`` | pack record | :class:`PackRecord` |
| ``pending/<txn>`` | a save or compaction in progress | :class:`PendingRecord` |
| ``dlq/<name>`` | dead letter: pack ids to delete | :func:`encode_letter` |
| ``rec/<chain hash>/<name>`` | a caller's record beside a chain | the caller's bytes |
| ``unpacked/<id>`` | empty: a format 2 manifest no pack carries yet | |
| ``rebuild`` | le64 ns: a rebuild from the packs is writing this store | :func:`encode_le64` |
| counter ``ref/<id>`` | reference count of a node | |
| counter ``dead/<pack id>`` | dead frame bytes of a pack | |
| counter ``fork/<id>`` | chains other than its own headed by a version | |
| counter ``stat/<name>`` | repository totals | |
| counter ``recs/<chain hash>`` | writes of records beside the chain so far | |
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from .errors import IntegrityError
from .hashing import hash_bytes

__all__ = [
    "CONFIG",
    "COUNTS_WITH_RECORDS",
    "DEAD",
    "DISCARDS_SEEN",
    "FLAG_INTERIOR",
    "FORK",
    "HEAD",
    "HOLD",
    "LETTER",
    "MANIFEST",
    "NODE",
    "ORPHAN",
    "PACK",
    "PENDING",
    "PIN",
    "REBUILDING",
    "RECORD",
    "RECORDS",
    "REF",
    "SEPARATE_COUNTS",
    "STAT",
    "STAT_BYTES_DEAD",
    "STAT_BYTES_LOGICAL",
    "STAT_BYTES_STORED",
    "STAT_CHAINS",
    "STAT_DISCARDS",
    "STAT_EPOCH",
    "STAT_MANIFESTS",
    "STAT_NODES",
    "STAT_PACKS",
    "SWEEP",
    "TOMB",
    "UNPACKED",
    "VERSION",
    "ZERO",
    "CountKeys",
    "HeadRecord",
    "IndexRecord",
    "PackRecord",
    "PendingRecord",
    "SweepRecord",
    "Tombstone",
    "chain_hash",
    "chain_of",
    "dead_key",
    "decode_head",
    "decode_le64",
    "decode_letter",
    "decode_pending",
    "decode_sweep",
    "decode_tombstone",
    "encode_le64",
    "encode_letter",
    "encode_record",
    "fork_key",
    "head_key",
    "hold_key",
    "id_of",
    "letter_key",
    "manifest_key",
    "node_key",
    "orphan_key",
    "pack_letter_key",
    "pack_record_key",
    "pending_key",
    "pin_key",
    "record_key",
    "record_name_of",
    "record_prefix",
    "records_counter_key",
    "stat_name",
    "stat_shard",
    "sum_totals",
    "sweep_key",
    "tomb_key",
    "txn_of",
    "undo_added",
    "unpacked_key",
    "version_key",
    "version_of",
    "version_prefix",
    "zero_key",
]

# -- prefixes (scans) --------------------------------------------------------------------------

CONFIG = "config"
HEAD = "chain/"
MANIFEST = "manifest/"
VERSION = "ver/"
TOMB = "tomb/"
PIN = "pin/"
HOLD = "hold/"
ORPHAN = "orphan/"
NODE = "node/"
ZERO = "zero/"
SWEEP = "sweep/"
PACK = "pack/"
PENDING = "pending/"
LETTER = "dlq/"
REF = "ref/"
DEAD = "dead/"
FORK = "fork/"
STAT = "stat/"
DISCARDS_SEEN = "gc/discards"
RECORD = "rec/"
RECORDS = "recs/"
UNPACKED = "unpacked/"
# Present while statebag.rebuild writes a metadata store; a store without ``config`` that has
# it was being rebuilt when the rebuild stopped (a rerun starts it again from scratch).
REBUILDING = "rebuild"

STAT_CHAINS = "stat/chains"
STAT_MANIFESTS = "stat/manifests"
STAT_NODES = "stat/nodes"
STAT_PACKS = "stat/packs"
STAT_BYTES_LOGICAL = "stat/bytes_logical"
STAT_BYTES_STORED = "stat/bytes_stored"
STAT_BYTES_DEAD = "stat/bytes_dead"
# Bumped by every write that changes what the audit counts: it retries while this moves.
STAT_EPOCH = "stat/epoch"
# Bumped by writes that may leave versions reached from no head (resets, chain deletions).
STAT_DISCARDS = "stat/discards"
# A total is the sum of its global counter (above; gc, deletes and repositories written
# before sharding use it) and of one shard per chain that saves and forks add to, so that
# writers of different chains touch no common item: a transactional store (DynamoDB)
# serialises every transaction that writes the same item.
_STAT_NAMES = frozenset(
    key[len(STAT) :]
    for key in (
        STAT_CHAINS,
        STAT_MANIFESTS,
        STAT_NODES,
        STAT_PACKS,
        STAT_BYTES_LOGICAL,
        STAT_BYTES_STORED,
        STAT_BYTES_DEAD,
        STAT_EPOCH,
        STAT_DISCARDS,
    )
)

# -- builders ----------------------------------------------------------------------------------


def stat_shard(total: str, chain: str, /) -> str:
    """The shard of counter ``total`` (a ``STAT_*`` key) that writes for ``chain`` add to."""
    return f"{total}/{chain_hash(chain)}"


def undo_added(record: PendingRecord, /) -> list[tuple[str, int]]:
    """The counter deltas that take back what a pending save recorded as ``added``."""
    return [(stat_shard(STAT + name, record.chain), -delta) for name, delta in record.added.items()]


def stat_name(key: str, /) -> str | None:
    """The total a ``stat/`` counter (global or shard) belongs to; None for a foreign key."""
    if not key.startswith(STAT):
        return None
    name, _, shard = key[len(STAT) :].partition("/")
    if name not in _STAT_NAMES or (shard and not _is_chain_hash(shard)):
        return None
    return name


def _is_chain_hash(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def sum_totals(counters: Iterable[tuple[str, int]], /) -> dict[str, int]:
    """Totals by name (``chains``, ``epoch``, ...) from the ``stat/`` counters, shards summed."""
    totals: dict[str, int] = {}
    for key, value in counters:
        name = stat_name(key)
        if name is not None:
            totals[name] = totals.get(name, 0) + value
    return totals


def head_key(chain: str, /) -> str:
    return HEAD + chain


def manifest_key(manifest_id: bytes, /) -> str:
    return MANIFEST + manifest_id.hex()


def tomb_key(manifest_id: bytes, /) -> str:
    return TOMB + manifest_id.hex()


def pin_key(manifest_id: bytes, /) -> str:
    return PIN + manifest_id.hex()


def hold_key(manifest_id: bytes, /) -> str:
    return HOLD + manifest_id.hex()


def orphan_key(manifest_id: bytes, /) -> str:
    return ORPHAN + manifest_id.hex()


def fork_key(manifest_id: bytes, /) -> str:
    return FORK + manifest_id.hex()


def unpacked_key(manifest_id: bytes, /) -> str:
    """Marks a format 2 manifest committed without a pack to carry it (its save wrote no new
    node); gc writes such manifests into a pack and drops the mark."""
    return UNPACKED + manifest_id.hex()


def node_key(node_id: bytes, /) -> str:
    return NODE + node_id.hex()


def zero_key(node_id: bytes, /) -> str:
    return ZERO + node_id.hex()


def sweep_key(node_id: bytes, /) -> str:
    """The progress record of the sweep of a node too wide for one write (gc/sweep.py)."""
    return SWEEP + node_id.hex()


class CountKeys(NamedTuple):
    """Where a repository keeps each node's reference count: the counter ``<prefix><id>``.

    Repositories created before format 2 count under ``ref/``; those created since under
    ``node/``, the key of the node's index record, so that a store keeping a key's value
    and counter in one item (DynamoDB) keeps a node's record and count in one, and a new
    node is one item of a write, not two. Chosen at creation and kept: an upgrade moves no
    counter (docs/FORMAT.md, "Formats").
    """

    prefix: str

    def key(self, node_id: bytes, /) -> str:
        return self.prefix + node_id.hex()


SEPARATE_COUNTS = CountKeys(REF)
COUNTS_WITH_RECORDS = CountKeys(NODE)


def pack_record_key(pack_id: bytes, /) -> str:
    """The metadata record of a pack (its object's key is ``packs.pack_key``)."""
    return PACK + pack_id.hex()


def dead_key(pack_id: bytes, /) -> str:
    return DEAD + pack_id.hex()


def pending_key(txn: str, /) -> str:
    return PENDING + txn


def letter_key(txn: str, /) -> str:
    """The dead letter that replaces transaction ``txn``'s pending entry."""
    return LETTER + txn


def pack_letter_key(pack_id: bytes, /) -> str:
    """The dead letter of one pack that gc deletes whole."""
    return f"{LETTER}pack-{pack_id.hex()}"


def chain_hash(chain: str, /) -> str:
    """32 hex digits naming a chain in keys: chain names may hold any character, and one
    name may be a prefix of another, so they are never used in keys themselves."""
    return hash_bytes(chain.encode("utf-8")).hex()[:32]


def version_prefix(chain: str, /) -> str:
    return f"{VERSION}{chain_hash(chain)}/"


def version_key(chain: str, seq: int, manifest_id: bytes, /) -> str:
    """``ver/<chain hash>/<seq: 16 hex>/<manifest id>`` -> le64 time_ns: every live version
    of a chain in seq order, for retention and delete_chain (no log walk, which stops at a
    deleted version)."""
    return f"{version_prefix(chain)}{seq:016x}/{manifest_id.hex()}"


def record_prefix(chain: str, /) -> str:
    """``rec/<chain hash>/``: every record beside one chain, in name order."""
    return f"{RECORD}{chain_hash(chain)}/"


def record_key(chain: str, name: str, /) -> str:
    """``rec/<chain hash>/<name>`` -> the caller's bytes (see ``statebag.records``)."""
    return record_prefix(chain) + name


def records_counter_key(chain: str, /) -> str:
    """Counter ``recs/<chain hash>``: bumped by every write of records beside the chain, so
    that deleting them, conditional on it, removes every record the delete scanned."""
    return RECORDS + chain_hash(chain)


# -- parsers -----------------------------------------------------------------------------------


def id_of(key: str, prefix: str, /) -> bytes:
    """The id a key of family ``prefix`` names (``id_of("node/ab..", NODE)``); the last
    path segment for version keys."""
    if prefix == VERSION:
        return bytes.fromhex(key.rsplit("/", 1)[1])
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not under {prefix!r}")
    return bytes.fromhex(key[len(prefix) :])


def version_of(key: str, /) -> tuple[int, bytes]:
    """The seq and the manifest id a version key names."""
    if not key.startswith(VERSION):
        raise ValueError(f"key {key!r} is not a version key")
    _, _, seq, manifest_id = key.split("/")
    return int(seq, 16), bytes.fromhex(manifest_id)


def record_name_of(key: str, chain: str, /) -> str:
    """The name a record key of ``chain`` names."""
    prefix = record_prefix(chain)
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not a record of chain {chain!r}")
    return key[len(prefix) :]


def chain_of(key: str, /) -> str:
    """The chain a head key names."""
    if not key.startswith(HEAD):
        raise ValueError(f"key {key!r} is not a head key")
    return key[len(HEAD) :]


def txn_of(key: str, /) -> str:
    """The transaction a pending key names."""
    if not key.startswith(PENDING):
        raise ValueError(f"key {key!r} is not a pending key")
    return key[len(PENDING) :]


# -- records -----------------------------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


class HeadRecord(msgspec.Struct, array_like=True, frozen=True):
    """``chain/<name>`` -> the chain's head manifest id, its seq and the txn that set it."""

    head: bytes
    seq: int
    txn: str


class PendingRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """``pending/<txn>``: a save in progress, to be rolled back if its lease expires."""

    chain: str
    started_ns: int
    lease_until_ns: int
    packs: list[bytes]
    # Totals (``chains``, ``nodes``, ...) the save added to its chain's shards before its
    # commit, in the same write that recorded them here (only when its commit write could
    # not hold them): a rollback subtracts exactly these. Absent in older entries.
    added: dict[str, int] = msgspec.field(default_factory=dict)


class Tombstone(msgspec.Struct, array_like=True, frozen=True):
    """``tomb/<id>``: what remains of a deleted version, so that a child whose parent is
    gone can tell "pruned" from "lost"."""

    chain: str
    seq: int
    time_ns: int
    deleted_ns: int


class SweepRecord(msgspec.Struct, array_like=True, frozen=True):
    """``sweep/<id>``: a node whose children do not all fit in one write, swept in slices.

    The first slice removed the node (``node/``, ``ref/``, ``zero/``); ``record`` is its index
    record as it was (so its bytes can still be read: its frame is counted dead only by the
    last slice), ``mark`` the time of its zero mark (given to the children it brings to
    zero), ``released`` how many of its distinct children, in the order they first appear
    in its bytes, were already released."""

    record: bytes
    mark: int
    released: int


_HEAD_DECODER = msgspec.msgpack.Decoder(HeadRecord)
_PENDING_DECODER = msgspec.msgpack.Decoder(PendingRecord)
_TOMBSTONE_DECODER = msgspec.msgpack.Decoder(Tombstone)
_SWEEP_DECODER = msgspec.msgpack.Decoder(SweepRecord)
_LETTER_DECODER = msgspec.msgpack.Decoder(list[bytes])


def encode_record(record: HeadRecord | PendingRecord | Tombstone | SweepRecord, /) -> bytes:
    return _ENCODER.encode(record)


def decode_head(data: bytes, /) -> HeadRecord:
    return _HEAD_DECODER.decode(data)


def decode_pending(data: bytes, /) -> PendingRecord:
    return _PENDING_DECODER.decode(data)


def decode_tombstone(data: bytes, /) -> Tombstone:
    return _TOMBSTONE_DECODER.decode(data)


def decode_sweep(data: bytes, /) -> SweepRecord:
    return _SWEEP_DECODER.decode(data)


def encode_letter(packs: list[bytes], /) -> bytes:
    """``dlq/<name>``: the ids of packs that nothing indexes and that are to be deleted."""
    return _ENCODER.encode(packs)


def decode_letter(data: bytes, /) -> list[bytes]:
    return _LETTER_DECODER.decode(data)


def encode_le64(value: int, /) -> bytes:
    """Times (ns since the epoch) and counts stored as plain values: 8 bytes little-endian."""
    return value.to_bytes(8, "little")


def decode_le64(data: bytes, /) -> int:
    return int.from_bytes(data, "little")


_INDEX_RECORD = struct.Struct("<32sQIIB")
# IndexRecord.flags: the node references other nodes (an index or fields node), so garbage
# collection must read it to release its children; leaves are never read by a sweep.
FLAG_INTERIOR = 1


class IndexRecord(NamedTuple):
    """The metadata index's value for one node: ``node/<id>`` -> 49 bytes."""

    pack_id: bytes
    offset: int
    length: int
    size: int
    flags: int = 0

    @property
    def interior(self) -> bool:
        return bool(self.flags & FLAG_INTERIOR)

    def encode(self) -> bytes:
        return _INDEX_RECORD.pack(self.pack_id, self.offset, self.length, self.size, self.flags)

    @classmethod
    def decode(cls, data: bytes, /, *, node_id: str) -> IndexRecord:
        if len(data) != _INDEX_RECORD.size:
            raise IntegrityError(
                f"index record of node {node_id} is {len(data)} bytes, not {_INDEX_RECORD.size}",
                object_id=node_id,
            )
        return cls(*_INDEX_RECORD.unpack(data))


class PackRecord(NamedTuple):
    """``pack/<id>`` -> le64 size of the pack | le64 bytes of its frames. Dead frame bytes
    are counted apart, in the counter ``dead/<id>``, by the transactions that kill them."""

    size: int
    frames: int

    def encode(self) -> bytes:
        return self.size.to_bytes(8, "little") + self.frames.to_bytes(8, "little")

    @classmethod
    def decode(cls, data: bytes, /, *, pack_id: str) -> PackRecord:
        if len(data) != 16:
            raise IntegrityError(
                f"record of pack {pack_id} is {len(data)} bytes, not 16", object_id=pack_id
            )
        return cls(int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little"))
