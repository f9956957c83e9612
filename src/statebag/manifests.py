"""Manifests (one committed version each), tombstones, and the per-chain version index.

Layouts are in docs/FORMAT.md; this module only encodes and decodes them.
"""

from __future__ import annotations

import msgspec

from .hashing import hash_bytes

__all__ = [
    "MANIFEST_DECODER",
    "MANIFEST_ENCODER",
    "Manifest",
    "Tombstone",
    "chain_hash",
    "decode_tombstone",
    "encode_tombstone",
    "version_key",
    "version_prefix",
]


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """One committed version. Its id is the BLAKE3 of its canonical MessagePack encoding."""

    format: int
    chain: str
    seq: int
    parents: list[bytes]
    root: bytes
    fields: int
    size: int
    time_ns: int
    # Always present; nil when there is none. (msgspec cannot decode an optional Raw.)
    meta: msgspec.Raw = msgspec.Raw(b"\xc0")


MANIFEST_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
MANIFEST_DECODER = msgspec.msgpack.Decoder(Manifest)


class Tombstone(msgspec.Struct, array_like=True, frozen=True):
    """``tomb/<id>``: what remains of a deleted version, so that a child whose parent is
    gone can tell "pruned" from "lost"."""

    chain: str
    seq: int
    time_ns: int
    deleted_ns: int


def encode_tombstone(tombstone: Tombstone, /) -> bytes:
    return MANIFEST_ENCODER.encode(tombstone)


_TOMBSTONE_DECODER = msgspec.msgpack.Decoder(Tombstone)


def decode_tombstone(data: bytes, /) -> Tombstone:
    return _TOMBSTONE_DECODER.decode(data)


def chain_hash(chain: str, /) -> str:
    """32 hex digits naming a chain in keys: chain names may hold any character, and one
    name may be a prefix of another, so they are never used in keys themselves."""
    return hash_bytes(chain.encode("utf-8")).hex()[:32]


def version_prefix(chain: str, /) -> str:
    return f"ver/{chain_hash(chain)}/"


def version_key(chain: str, seq: int, manifest_id: bytes, /) -> str:
    """``ver/<chain hash>/<seq: 16 hex>/<manifest id>`` -> le64 time_ns: every live version
    of a chain in seq order, for retention and delete_chain (no log walk, which stops at a
    deleted version)."""
    return f"{version_prefix(chain)}{seq:016x}/{manifest_id.hex()}"
