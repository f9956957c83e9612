"""Packs: many compressed nodes in one stored object, with a self-describing footer.

One save writes its new nodes into packs of about ``pack_size`` bytes (16 MiB by default),
so a small save is one PUT however many nodes it has. A pack is::

    frame 0 | frame 1 | ... | frame n-1 | footer (n x 48 bytes) | trailer (32 bytes)

Each footer entry is ``node id (32) | le64 offset | le32 stored length | le32 raw size``;
the trailer is ``salt (16) | le32 n | le32 reserved (0) | b"SBPACK01"``.

From format 2 a pack may also carry the manifests of the versions whose save wrote it (so
that the object store alone holds every version): their frames follow the node frames, and
their entries (``manifest id | le64 offset | le32 frame length | le32 manifest size``)
follow the node entries; the trailer then counts them in place of the reserved word and
ends in ``b"SBPACK02"``. A pack without a manifest keeps the first layout, in any format.

The salt is the id of the transaction that wrote the pack, so no two transactions ever write
the same pack id: two saves of the same new nodes would otherwise write byte-identical
packs, and the one that lost its race would delete the pack the winner's index points into
(the salt is the first 16 bytes of the BLAKE3 of the txn id). The pack id is the BLAKE3 of
the whole pack and its key is ``packs/<first two hex digits>/<pack id hex>``. The metadata
index makes the footer unnecessary for reads; it is there so that a pack can be understood,
verified and re-indexed on its own (by an audit, or a repair after metadata loss).
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ._typing import Buffer
from .codec import CODEC_RAW, decompress
from .errors import IntegrityError
from .hashing import hash_bytes

__all__ = [
    "FOOTER_ENTRY_SIZE",
    "PACKS_PREFIX",
    "PACK_MAGIC",
    "PACK_MAGIC_MANIFESTS",
    "TRAILER_SIZE",
    "PackContents",
    "PackEntry",
    "PackWriter",
    "manifest_bytes",
    "pack_id_of",
    "pack_key",
    "parse_footer",
    "parse_pack",
]

PACK_MAGIC = b"SBPACK01"
# A pack that also holds manifests (format 2): the trailer's third word counts them.
PACK_MAGIC_MANIFESTS = b"SBPACK02"
_FOOTER_ENTRY = struct.Struct("<32sQII")
FOOTER_ENTRY_SIZE = _FOOTER_ENTRY.size  # 48
_TRAILER = struct.Struct("<16sII8s")
TRAILER_SIZE = _TRAILER.size  # 32
_RAW_HEADER = bytes((CODEC_RAW,))


class PackEntry(NamedTuple):
    """Where one node (or manifest) lies in a pack."""

    node_id: bytes
    offset: int
    length: int  # stored (frame) bytes
    size: int  # uncompressed bytes


class PackContents(NamedTuple):
    """What a pack's footer lists: its nodes, then the manifests it carries (format 2)."""

    nodes: list[PackEntry]
    manifests: list[PackEntry]


PACKS_PREFIX = "packs/"
# Exactly what pack_key writes: lower-case hex, in the directory of its first two digits.
_PACK_KEY = re.compile(r"packs/([0-9a-f]{2})/(\1[0-9a-f]{62})")


def pack_key(pack_id: bytes, /) -> str:
    """The object-store key of a pack."""
    text = pack_id.hex()
    return f"{PACKS_PREFIX}{text[:2]}/{text}"


def pack_id_of(key: str, /) -> bytes | None:
    """The id of the pack stored under ``key``, or None for any other key under ``packs/``
    (a file someone dropped there, a tool's temporary copy): such a key is no pack, and
    nothing statebag does may read, count or delete it as one."""
    match = _PACK_KEY.fullmatch(key)
    return None if match is None else bytes.fromhex(match.group(2))


class PackWriter:
    """Accumulates frames; ``finish()`` returns the pack's id, bytes and entries."""

    __slots__ = ("_entries", "_frames", "_manifests", "_salt", "_size")

    def __init__(self, salt: bytes = bytes(16), /) -> None:
        if len(salt) != 16:
            raise ValueError("a pack's salt is 16 bytes")
        self._salt = salt
        self._frames: list[Buffer] = []
        self._entries: list[PackEntry] = []
        self._manifests: list[tuple[bytes, bytes]] = []
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of frames so far."""
        return self._size

    def add_frame(self, node_id: bytes, frame: Buffer, raw_size: int, /) -> None:
        """Append a node's frame as stored in another pack (compaction copies frames)."""
        length = memoryview(frame).nbytes
        self._entries.append(PackEntry(node_id, self._size, length, raw_size))
        self._frames.append(frame)
        self._size += length

    def add(self, node_id: bytes, header: bytes, payload: Buffer, raw_size: int, /) -> None:
        """Append one node's frame, given as its codec byte and payload (not joined yet)."""
        length = len(header) + memoryview(payload).nbytes
        self._entries.append(PackEntry(node_id, self._size, length, raw_size))
        self._frames.append(header)
        self._frames.append(payload)
        self._size += length

    def add_manifest(self, manifest_id: bytes, data: bytes, /) -> None:
        """Carry a version's manifest (its canonical bytes, stored raw) after the nodes."""
        self._manifests.append((manifest_id, data))

    def finish(self) -> tuple[bytes, bytes, list[PackEntry]]:
        """The pack's id, its bytes and its node entries (manifests are not nodes: their
        frames never count among the pack's frames, live or dead)."""
        frames: list[Buffer] = list(self._frames)
        manifest_entries = []
        offset = self._size
        for manifest_id, data in self._manifests:
            frames += (_RAW_HEADER, data)
            manifest_entries.append(PackEntry(manifest_id, offset, 1 + len(data), len(data)))
            offset += 1 + len(data)
        footer = b"".join(
            _FOOTER_ENTRY.pack(*entry) for entry in (*self._entries, *manifest_entries)
        )
        if manifest_entries:
            trailer = _TRAILER.pack(
                self._salt, len(self._entries), len(manifest_entries), PACK_MAGIC_MANIFESTS
            )
        else:
            trailer = _TRAILER.pack(self._salt, len(self._entries), 0, PACK_MAGIC)
        data = b"".join((*frames, footer, trailer))
        return hash_bytes(data), data, self._entries


def parse_footer(data: bytes, /, *, pack_id: str) -> list[PackEntry]:
    """The node entries of a whole pack's footer; IntegrityError if it is not a valid pack."""
    return parse_pack(data, pack_id=pack_id).nodes


def parse_pack(data: bytes, /, *, pack_id: str) -> PackContents:
    """The node and manifest entries of a whole pack's footer; IntegrityError if it is not
    a valid pack (of either layout)."""
    if len(data) < TRAILER_SIZE:
        raise IntegrityError(f"pack {pack_id} is too short to be a pack", object_id=pack_id)
    _, count, manifests, magic = _TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
    if magic == PACK_MAGIC and manifests != 0:
        magic = b""  # the reserved word of a format 1 trailer is 0
    footer_start = len(data) - TRAILER_SIZE - (count + manifests) * FOOTER_ENTRY_SIZE
    if magic not in (PACK_MAGIC, PACK_MAGIC_MANIFESTS) or footer_start < 0:
        raise IntegrityError(f"pack {pack_id} has a malformed trailer", object_id=pack_id)
    entries = [
        PackEntry(*fields)
        for fields in _FOOTER_ENTRY.iter_unpack(
            memoryview(data)[footer_start : len(data) - TRAILER_SIZE]
        )
    ]
    for entry in entries:
        if entry.offset + entry.length > footer_start:
            raise IntegrityError(
                f"pack {pack_id} lists {entry.node_id.hex()} past its frames",
                object_id=pack_id,
            )
    return PackContents(entries[:count], entries[count:])


def manifest_bytes(data: bytes, entry: PackEntry, /, *, pack_id: str) -> bytes:
    """The canonical bytes of the manifest ``entry`` lists in pack ``data``, checked against
    its id; IntegrityError naming the pack and the manifest if they do not match."""
    if entry.size > entry.length - 1:
        # Stored raw: a manifest's frame is its codec byte and its bytes, never shorter.
        raise IntegrityError(
            f"pack {pack_id} claims {entry.size} bytes for manifest {entry.node_id.hex()} "
            f"in a frame of {entry.length}",
            object_id=pack_id,
        )
    frame = memoryview(data)[entry.offset : entry.offset + entry.length]
    try:
        return decompress(frame, max_size=entry.size, expected=entry.node_id)
    except IntegrityError as exc:
        raise IntegrityError(
            f"pack {pack_id}: manifest {entry.node_id.hex()} is unreadable: {exc}",
            object_id=pack_id,
        ) from exc
