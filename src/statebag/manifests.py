"""Manifests: one committed version each. The layout is in docs/FORMAT.md; this module only
encodes and decodes it (the keys they are stored under are in :mod:`statebag.keys`)."""

from __future__ import annotations

import msgspec

__all__ = ["MANIFEST_DECODER", "MANIFEST_ENCODER", "Manifest"]


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
