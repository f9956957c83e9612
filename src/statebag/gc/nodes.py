"""Reading interior nodes for their children: the sweep releases them, the audit counts them.

Nodes are read through the repository (``NodeReader``: verified bytes by id, located through
the index), in batches. A node may become unreadable under a reader, because another
collector swept it and deleted its pack meanwhile: a batch that fails is read again one node
at a time, and the nodes that still fail are returned apart for the caller to judge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .. import codec, dag
from ..errors import IntegrityError, NotFoundError
from ..keys import IndexRecord
from ..objects import ObjectStore
from ..packs import pack_key

__all__ = ["ChildReader", "NodeReader", "read_at"]

NodeReader = Callable[[Sequence[bytes]], Mapping[bytes, bytes]]
"""Verified node bytes by node id; IntegrityError when one cannot be read."""

_READ_BATCH = 256


class ChildReader:
    """The children of interior nodes, read with ``read_nodes``."""

    def __init__(self, read_nodes: NodeReader, /) -> None:
        # Looked up at every read (not bound once), so that a test can swap the reader of
        # one collector for the next read.
        self.read_nodes = read_nodes

    def children(self, node_ids: Sequence[bytes], /) -> tuple[dict[bytes, list[bytes]], set[bytes]]:
        """The children of each of ``node_ids`` (with multiplicity, in node order), and the
        ids that could not be read."""
        children: dict[bytes, list[bytes]] = {}
        unreadable: set[bytes] = set()
        for start in range(0, len(node_ids), _READ_BATCH):
            batch = node_ids[start : start + _READ_BATCH]
            try:
                found = self.read_nodes(batch)
            except IntegrityError:
                found = {}
                for node_id in batch:
                    try:
                        found.update(self.read_nodes([node_id]))
                    except IntegrityError:
                        unreadable.add(node_id)
            for node_id, raw in found.items():
                try:
                    children[node_id] = dag.children_of(raw, node_id=node_id.hex())
                except IntegrityError:
                    # Its bytes match its id but do not parse (written so on purpose, or by a
                    # broken writer): what it references cannot be known.
                    unreadable.add(node_id)
        return children, unreadable


def read_at(objects: ObjectStore, node_id: bytes, record: IndexRecord, /) -> bytes:
    """The bytes of node ``node_id`` where ``record`` says they are, verified, whether or not
    the index still names them there (a node being swept in slices is no longer indexed);
    IntegrityError if they cannot be read."""
    key = pack_key(record.pack_id)
    try:
        frame = objects.get(key, offset=record.offset, length=record.length)
    except NotFoundError as exc:
        raise IntegrityError(
            f"pack {record.pack_id.hex()} is missing; it holds node {node_id.hex()}",
            object_id=record.pack_id.hex(),
        ) from exc
    if len(frame) != record.length:
        raise IntegrityError(
            f"pack {record.pack_id.hex()} is truncated: node {node_id.hex()} is cut short",
            object_id=node_id.hex(),
        )
    (data,) = codec.decompress_batch([memoryview(frame)], sizes=[record.size], expected=[node_id])
    return bytes(data)
