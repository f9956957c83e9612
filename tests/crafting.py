"""Versions written past the writer, as someone with write access to the stores could: nodes
in a new pack with their index records, a fields table, a manifest and a head move, every hash
consistent, so that only the readers' own checks stand between such a version and a load."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

import msgspec

from statebag import Repository, dag
from statebag.dag import Entry, TreeField
from statebag.ids import ContentId
from statebag.keys import (
    FLAG_INTERIOR,
    HeadRecord,
    IndexRecord,
    decode_head,
    encode_record,
    head_key,
    manifest_key,
    node_key,
)
from statebag.manifests import MANIFEST_ENCODER, Manifest
from statebag.packs import PackWriter, pack_key

from . import internals


def index_node(level: int, children: Iterable[tuple[bytes, int]]) -> bytes:
    """An index node's bytes: tag, level, then (child id, bytes below it) per child."""
    return bytes((dag.INDEX_TAG, level)) + b"".join(
        child + length.to_bytes(8, "little") for child, length in children
    )


def store_nodes(
    repo: Repository, nodes: Iterable[bytes], /, *, interior: bool = False
) -> list[bytes]:
    """Each node (its bytes) not indexed yet in one new pack, as a raw frame, and indexed;
    the ids of all."""
    writer = PackWriter(os.urandom(16))
    ids = []
    for data in nodes:
        node_id = bytes(ContentId.of(data))
        ids.append(node_id)
        if internals.meta(repo).get(node_key(node_id)) is None and node_id not in ids[:-1]:
            writer.add(node_id, b"\x00", data, len(data))
    if not len(writer):
        return ids
    pack_id, blob, entries = writer.finish()
    internals.objects(repo).put(pack_key(pack_id), blob)
    flags = FLAG_INTERIOR if interior else 0
    for entry in entries:
        record = IndexRecord(pack_id, entry.offset, entry.length, entry.size, flags)
        internals.meta(repo).put(node_key(entry.node_id), record.encode())
    return ids


def retree(entry: TreeField, /, **changes: object) -> TreeField:
    """``entry`` with some of its fields (head, root, length, level) replaced."""
    return entry._replace(**changes)  # type: ignore[arg-type]


def craft_version(
    repo: Repository,
    chain: str,
    entries: Mapping[str, Entry],
    /,
    *,
    size: int | None = None,
    meta: bytes = b"\xc0",
) -> str:
    """A new head of ``chain`` (on its current head) whose fields table is ``entries``,
    taken as given; its manifest says ``size`` logical bytes (default: what the entries
    say). The repository's counters are not touched."""
    root, nodes = dag.build_fields(sorted(entries.items()), grouping=dag.GROUPINGS[1])
    store_nodes(repo, [bytes(node.data) for node in nodes], interior=True)
    head = decode_head(internals.meta(repo).get(head_key(chain)) or b"")
    claimed = sum(dag.entry_size(entry) for entry in entries.values())
    manifest = Manifest(
        format=1,
        chain=chain,
        seq=head.seq + 1,
        parents=[head.head],
        root=root,
        fields=len(entries),
        size=min(claimed, 2**64 - 1) if size is None else size,
        time_ns=time.time_ns(),
        meta=msgspec.Raw(meta),
    )
    data = MANIFEST_ENCODER.encode(manifest)
    manifest_id = bytes(ContentId.of(data))
    internals.meta(repo).put(manifest_key(manifest_id), data)
    record = HeadRecord(manifest_id, manifest.seq, "crafted")
    internals.meta(repo).put(head_key(chain), encode_record(record))
    internals.drop_caches(repo)
    return manifest_id.hex()
