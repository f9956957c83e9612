"""Manifests: one committed version each. The layout is in docs/FORMAT.md; this module only
encodes and decodes it (the keys they are stored under are in :mod:`statebag.keys`)."""

from __future__ import annotations

from typing import Any

import msgspec

from . import codec
from .errors import IntegrityError

__all__ = ["MANIFEST_DECODER", "MANIFEST_ENCODER", "Manifest", "decode_manifest"]


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


def decode_manifest(data: bytes, /, *, manifest_id: str) -> Manifest:
    """The manifest stored as ``data``; IntegrityError naming ``manifest_id`` if malformed.

    The bytes are scanned first (:func:`codec.nesting_depth`): ``meta`` is a value nested
    at most ``NESTING_LIMIT`` deep inside the manifest's map, and msgspec, even skipping it
    as ``Raw``, recurses once per level.
    """
    what = f"manifest {manifest_id}"
    codec.nesting_depth(data, limit=codec.NESTING_LIMIT + 1, what=what)
    try:
        return MANIFEST_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"{what} is malformed: {exc}", object_id=manifest_id) from exc
    except RecursionError:
        # Within the limit, so the caller's stack is short: the codec's decode works in
        # pieces then, and the canonical meta encodes back to the bytes it was stored as.
        return _decode_in_pieces(data, what, manifest_id)


def _decode_in_pieces(data: bytes, what: str, manifest_id: str) -> Manifest:
    fields: Any = codec.decode(data, limit=codec.NESTING_LIMIT + 1)
    if type(fields) is not dict:
        raise IntegrityError(f"{what} is malformed: not a map", object_id=manifest_id)
    meta = fields.pop("meta", None)
    try:
        manifest = msgspec.convert(fields, Manifest)
    except msgspec.ValidationError as exc:
        raise IntegrityError(f"{what} is malformed: {exc}", object_id=manifest_id) from exc
    return msgspec.structs.replace(manifest, meta=msgspec.Raw(codec.encode(meta)))
