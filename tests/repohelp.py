"""Helpers shared by the repository tests: repositories of every kind, exact comparison, and
a recount of references."""

from __future__ import annotations

import struct
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

import statebag
from statebag import Repository, dag
from statebag.liveness import ProcessLiveness
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore

from . import internals

BATCH = 25
"""The ``max_batch`` of the "batched" kind: the least issue 16 asks every operation to fit."""

KINDS = ("memory", "local", "batched")
"""Repositories the shared suites run on: ``memory://``, a local directory (SQLite), and
memory stores whose metadata store takes at most :data:`BATCH` operations per write, as a
remote one (DynamoDB) does."""


def open_repo(kind: str, tmp_path: Path | None = None, /, **options: Any) -> Repository:
    """A new, empty repository of ``kind`` (see :data:`KINDS`) with ``options``.

    The batched kind keeps a memory repository's exact liveness, so that it differs from
    ``memory`` in the batch limit alone (stores opened by ``open(objects=, meta=)`` rely on
    leases; tests/test_open_stores.py covers that).
    """
    if kind == "memory":
        return statebag.open(f"memory://{uuid.uuid4().hex}", **options)
    if kind == "local":
        assert tmp_path is not None, "a local repository needs a directory"
        return statebag.open(tmp_path / f"r-{uuid.uuid4().hex[:8]}", **options)
    assert kind == "batched", kind
    objects, meta = MemoryObjectStore(), MemoryMetaStore(max_batch=BATCH)
    threads = options.pop("threads", None)
    cache_bytes = options.pop("cache_bytes", None)
    with statebag.open(objects=objects, meta=meta, create=True, **options) as made:
        config = made.config  # closing memory stores keeps what they hold
    return Repository(
        objects,
        meta,
        config,
        threads=threads,
        cache_bytes=cache_bytes,
        url=f"batched{BATCH}://{uuid.uuid4().hex}",
        liveness=ProcessLiveness(),
    )


# Every scalar a state may hold, at the edges of what the codec carries.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)


def same(a: Any, b: Any, path: str = "$") -> None:
    """Assert ``b`` is exactly ``a`` as stored: same types (tuples come back as lists,
    bytearray as bytes, subclasses as their base), floats bit for bit (NaN payloads, -0.0),
    and dict keys in sorted order."""
    if a is None or type(a) is bool:
        assert b is a, f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, float):
        assert type(b) is float, f"{path}: float came back as {type(b).__name__}"
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, int):
        assert type(b) is int and b == a, f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, str):
        assert type(b) is str and b == a, f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, (bytes, bytearray, memoryview)):
        assert type(b) is bytes and b == bytes(a), f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, dict):
        assert type(b) is dict, f"{path}: dict came back as {type(b).__name__}"
        assert list(b) == sorted(a), f"{path}: keys {list(b)} are not {sorted(a)}"
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(b) is list, f"{path}: sequence came back as {type(b).__name__}"
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{index}]")
    else:
        raise AssertionError(f"{path}: unexpected type {type(a).__name__}")


def recount(repo: Repository) -> tuple[Counter[bytes], set[bytes]]:
    """Reference counts recomputed from every manifest, and every node reachable.

    Counts references the way the commit protocol does: one per (parent, child) edge of the
    node graph (each node counted once however many versions share it) plus one per manifest
    on its root.
    """
    meta = internals.meta(repo)
    counts: Counter[bytes] = Counter()
    reached: set[bytes] = set()
    frontier: list[tuple[bytes, str]] = []
    for key, _ in meta.scan("manifest/"):
        manifest = internals.manifest(repo, key[len("manifest/") :])
        counts[manifest.root] += 1
        frontier.append((manifest.root, "fields"))
    while frontier:
        node_id, kind = frontier.pop()
        if node_id in reached:
            continue
        reached.add(node_id)
        if kind == "chunk":
            continue
        data = internals.reader(repo).read([node_id])[node_id]
        if kind == "fields":
            level, rows = dag.parse_fields_node(data, node_id=node_id.hex())
            if level:
                children = [(child, "fields") for _, child, _ in rows]
            else:
                children = [
                    (entry.root, "chunk" if entry.level == 0 else "index")
                    for _, entry in rows
                    if isinstance(entry, dag.TreeField)
                ]
        else:
            level, entries = dag.parse_index_node(data, node_id=node_id.hex())
            children = [(child, "chunk" if level == 1 else "index") for child, _ in entries]
        for child, child_kind in children:
            counts[child] += 1
            frontier.append((child, child_kind))
    return counts, reached


def stored_counts(repo: Repository) -> Counter[bytes]:
    return Counter(
        {
            bytes.fromhex(key[len(repo.config.count_keys.prefix) :]): value
            for key, value in internals.meta(repo).counters(repo.config.count_keys.prefix)
            if value
        }
    )
