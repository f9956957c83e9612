"""gc, compaction and audit repair on a metadata store that caps a write (issue 16).

Every repository here is a memory repository whose store takes at most 25 operations per
write (``MemoryMetaStore.max_batch``, as a DynamoDB-like backend would): a write over that is
refused by the store itself, so every test also checks that nothing gc does exceeds it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import statebag
from statebag import dag
from statebag.chunking import Chunker
from statebag.dag import TreeField
from statebag.keys import (
    IndexRecord,
    PendingRecord,
    encode_record,
    node_key,
    pending_key,
    zero_key,
)
from statebag.meta import MetaStore, Op, Put
from statebag.opening import forget_memory

from . import internals
from .repohelp import recount, stored_counts

MAX_BATCH = 25
# Seed 21 of this many random bytes, cut with the chunker options below, gives a value whose
# first index node lists 4070 chunks (asserted where used). The level is format 1's, which
# the seed was found for (a format-2 repository's default level cuts otherwise).
WIDE_SEED = 21
WIDE_BYTES = 1_400_000
SMALL_CHUNKS = {"min_size": 64, "avg_size": 256, "max_size": 1024, "normalization": 2}


@pytest.fixture
def make_repo() -> Iterator[Callable[..., statebag.Repository]]:
    names: list[str] = []
    repos: list[statebag.Repository] = []

    def make(**options: Any) -> statebag.Repository:
        name = uuid.uuid4().hex
        names.append(name)
        # Format 1 writes nodes of 1,024-4,096 children: the wide nodes swept in slices.
        repo = statebag.open(f"memory://{name}", fsync=False, format=1, **options)
        repos.append(repo)
        internals.meta(repo).max_batch = MAX_BATCH  # type: ignore[misc]
        return repo

    yield make
    for repo in repos:
        repo.close()
    for name in names:
        forget_memory(name)


class Spy:
    """Wraps a metadata store's ``write``: records every batch, and can fail one on demand."""

    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        self.real = meta.write
        self.batches: list[list[Op]] = []
        self.fail: Callable[[Sequence[Op]], bool] = lambda ops: False
        self.before: Callable[[Sequence[Op]], None] = lambda ops: None
        meta.write = self.write  # type: ignore[method-assign]

    def write(self, ops: Sequence[Op], /, **options: Any) -> None:
        self.before(ops)
        if self.fail(ops):
            raise RuntimeError("the process died here")
        self.real(ops, **options)
        self.batches.append(list(ops))

    def touching(self, prefix: str) -> list[list[Op]]:
        return [b for b in self.batches if any(op.key.startswith(prefix) for op in b)]

    def close(self) -> None:
        self.meta.write = self.real  # type: ignore[method-assign]


def exact(repo: statebag.Repository) -> None:
    """Counts are exactly the references, the audit is clean, nothing half-swept remains."""
    counts, _ = recount(repo)
    assert stored_counts(repo) == counts
    report = repo.audit()
    assert report.ok, report
    assert not report.over_counted and not report.under_counted, report
    assert not report.unswept and not report.orphan_packs and not report.in_flight, report
    meta = internals.meta(repo)
    assert list(meta.scan("sweep/")) == []
    totals = repo.stats()
    assert totals.bytes_dead == sum(v for _, v in meta.counters("dead/"))
    assert totals.bytes_stored == sum(
        internals.objects(repo).stat(key) for key in internals.objects(repo).list("packs/")
    )
    assert totals.nodes == len(list(meta.scan("node/")))


def wide_node(repo: statebag.Repository, manifest_id: str) -> tuple[bytes, list[bytes]]:
    """The first index node of the wide blob of ``manifest_id`` and its children."""
    entry = internals.fields(repo, manifest_id)["blob"]
    assert isinstance(entry, TreeField) and entry.level == 2
    reader = internals.reader(repo)
    _, top = dag.parse_index_node(reader.read([entry.root])[entry.root], node_id="root")
    node_id = top[0][0]
    _, children = dag.parse_index_node(reader.read([node_id])[node_id], node_id="wide")
    return node_id, [child for child, _ in children]


def wide_blob() -> bytes:
    return random.Random(WIDE_SEED).randbytes(WIDE_BYTES)


def test_a_node_of_4000_children_is_deleted_and_collected(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo(**SMALL_CHUNKS)
    doomed = repo.save("c", {"blob": wide_blob()})
    kept = repo.save("c", {"small": 1})
    node_id, children = wide_node(repo, doomed.manifest_id)
    assert len(set(children)) >= 4000
    packs_before = set(internals.objects(repo).list("packs/"))
    stored_before = repo.stats().bytes_stored
    repo.delete(doomed.manifest_id)
    spy = Spy(internals.meta(repo))
    try:
        report = repo.gc(grace=0)
    finally:
        spy.close()
    # The wide node went in slices, each moving the progress record on.
    slices = spy.touching(f"sweep/{node_id.hex()}")
    assert len(slices) > len(children) // MAX_BATCH
    assert all(len(batch) <= MAX_BATCH for batch in spy.batches)
    assert internals.meta(repo).get(node_key(node_id)) is None
    assert all(internals.meta(repo).get(node_key(child)) is None for child in children)
    assert report.nodes_freed >= len(children) + 2
    assert report.bytes_reclaimed >= WIDE_BYTES
    assert repo.stats().bytes_stored <= stored_before - WIDE_BYTES
    assert len(set(internals.objects(repo).list("packs/")) & packs_before) <= 1
    assert repo.load(kept.manifest_id) == {"small": 1}
    exact(repo)


def test_a_crash_mid_way_through_a_wide_sweep_is_finished_exactly(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo(**SMALL_CHUNKS)
    blob = wide_blob()
    doomed = repo.save("c", {"blob": blob})
    repo.save("c", {"small": 1})
    node_id, children = wide_node(repo, doomed.manifest_id)
    repo.delete(doomed.manifest_id)
    meta = internals.meta(repo)
    spy = Spy(meta)
    slices = 0

    def die_at_the_40th_slice(ops: Sequence[Op]) -> bool:
        nonlocal slices
        if any(op.key == f"sweep/{node_id.hex()}" for op in ops):
            slices += 1
        return slices == 40

    spy.fail = die_at_the_40th_slice
    with pytest.raises(RuntimeError):
        repo.gc(grace=0)
    spy.fail = lambda ops: False
    assert meta.get(f"sweep/{node_id.hex()}") is not None
    assert meta.get(node_key(node_id)) is None  # removed by the first slice
    # Half way, the audit counts the references not yet released: nothing is off.
    report = repo.audit()
    assert report.ok and not report.over_counted and not report.under_counted, report
    released = [c for c in children if meta.counter(internals.count_key(repo, c)) == 0]
    assert 0 < len(released) < len(children)
    # A save reuses the whole value meanwhile: the wide node is indexed (and counted) again.
    again = repo.save("d", {"blob": blob})
    assert meta.get(node_key(node_id)) is not None
    repo.gc(grace=0)
    spy.close()
    assert repo.load(again.manifest_id) == {"blob": blob}
    assert repo.verify(again.manifest_id).ok
    assert all(meta.counter(internals.count_key(repo, child)) >= 1 for child in children)
    exact(repo)


def test_compaction_moves_more_records_than_one_write(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo()
    rng = random.Random(3)
    fields = {f"f{i:03}": rng.randbytes(700) for i in range(240)}
    first = repo.save("c", fields)
    # Keep a third of the fields: the first pack is mostly dead after the sweep, and the
    # repository has more than 5% of dead bytes.
    kept = {name: value for name, value in fields.items() if int(name[1:]) % 3 == 0}
    second = repo.save("c", kept)
    repo.delete(first.manifest_id)
    meta = internals.meta(repo)
    spy = Spy(meta)
    moves = 0

    def die_after_two_move_batches(ops: Sequence[Op]) -> bool:
        nonlocal moves
        if any(op.key.startswith("node/") and getattr(op, "value", None) for op in ops):
            moves += 1
        return moves == 3

    spy.fail = die_after_two_move_batches
    with pytest.raises(RuntimeError):
        repo.gc(grace=0)
    # Two batches moved, the compaction died: every count is exact as it stands.
    assert moves == 3
    totals = repo.stats()
    assert totals.bytes_dead == sum(v for _, v in meta.counters("dead/"))
    assert repo.load(second.manifest_id) == dict(sorted(kept.items()))
    spy.fail = lambda ops: False
    report = repo.gc(grace=0)
    spy.close()
    assert report.packs_compacted >= 1
    assert all(len(batch) <= MAX_BATCH for batch in spy.batches)
    moved = [
        b
        for b in spy.batches
        if any(op.key.startswith("node/") and getattr(op, "value", None) for op in b)
    ]
    assert len(moved) > 2
    assert repo.load(second.manifest_id) == dict(sorted(kept.items()))
    assert repo.verify(second.manifest_id).ok
    exact(repo)


def test_audit_repairs_many_counts_in_batches(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo()
    rng = random.Random(4)
    for step in range(3):
        repo.save("c", {f"f{i}": rng.randbytes(900) for i in range(60)} | {"n": step})
    meta = internals.meta(repo)
    counts = stored_counts(repo)
    nodes = sorted(counts)
    assert len(nodes) > 150
    for index, node in enumerate(nodes[:150]):
        meta.add(internals.count_key(repo, node), 2 if index % 2 else -1)
    # Nodes nothing references whose marks were lost: unswept.
    stray = repo.save("x", {"stray": rng.randbytes(5000)})
    repo.save("x", {"other": 1})
    repo.delete(stray.manifest_id)
    for key, _ in list(meta.scan("zero/")):
        meta.delete(key)
    before = repo.audit()
    assert len(before.under_counted) == 75 and len(before.over_counted) == 75
    assert before.unswept
    spy = Spy(meta)
    report = repo.audit(repair=True)
    spy.close()
    assert report.repaired >= 150 + len(before.unswept)
    assert len(spy.batches) > 150 // MAX_BATCH
    after = repo.audit()
    assert after.ok and not after.over_counted and not after.under_counted, after
    assert not after.unswept
    repo.gc(grace=0)
    exact(repo)


def test_a_repair_during_a_batched_save_subtracts_none_of_its_references(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo(**SMALL_CHUNKS)
    meta = internals.meta(repo)
    blob = wide_blob()
    # The wide node's first chunk, known before the save from the cut the save will make.
    _, digests = Chunker(**SMALL_CHUNKS).cut_and_hash(blob)
    first_chunk = digests[0]
    seen: list[statebag.AuditReport] = []

    def audit_before_indexing_the_wide_node(ops: Sequence[Op]) -> None:
        # The save has counted the wide node's children and is about to index it: its
        # counts run ahead of its index, and the audit sees them over-counted.
        indexes = any(isinstance(op, Put) and op.key.startswith("node/") for op in ops)
        counted = meta.counter(internals.count_key(repo, first_chunk)) > 0
        if not seen and indexes and counted and meta.get(node_key(first_chunk)) is not None:
            seen.append(repo.audit(repair=True))

    spy = Spy(meta)
    spy.before = audit_before_indexing_the_wide_node
    saved = repo.save("c", {"blob": blob})
    spy.close()
    assert seen, "the audit did not run while the save was committing"
    assert seen[0].in_flight and first_chunk.hex() in seen[0].over_counted
    _, children = wide_node(repo, saved.manifest_id)
    assert children[0] == first_chunk
    assert repo.load(saved.manifest_id) == {"blob": blob}
    exact(repo)


def test_a_rolled_back_save_indexed_into_its_pack_is_collected(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    """A batched save indexed nodes into its pack (counting them in ``stat/nodes``, as its
    batches do) and died before its commit; once rolled back, its nodes (count 0, never
    marked) are marked by gc and swept with the pack."""
    repo = make_repo()
    repo.save("c", {"own": random.Random(5).randbytes(20_000)})
    # The save that died, as it left the metadata: its pack, its nodes indexed and the
    # references among them counted, its root at 0 (no manifest), its pending entry.
    scratch = make_repo()
    meta, scratch_meta = internals.meta(repo), internals.meta(scratch)
    meta.max_batch = None  # type: ignore[misc]
    value = {f"f{i}": random.Random(6 + i).randbytes(3000) for i in range(120)}
    dead = scratch.save("dead", value)
    root = internals.manifest(scratch, dead.manifest_id).root
    packs = [key for key in internals.objects(scratch).list("packs/")]
    for key in packs:
        internals.objects(repo).put(key, internals.objects(scratch).get(key))
    pack_ids = []
    for key, record in scratch_meta.scan("node/"):
        meta.put(key, record)
        pack_ids.append(IndexRecord.decode(record, node_id=key).pack_id)
        meta.add("stat/nodes", 1)  # a reference batch counts the nodes it indexes
    for key, count in scratch_meta.counters(scratch.config.count_keys.prefix):
        if key != internals.count_key(scratch, root):
            meta.add(key, count)
    now = time.time_ns()
    record = PendingRecord("dead", now - 10**9, now - 1, sorted(set(pack_ids)))
    meta.put(pending_key("e" * 32), encode_record(record))
    meta.max_batch = MAX_BATCH  # type: ignore[misc]
    assert repo.audit().unswept == [root.hex()]
    spy = Spy(meta)
    repo.gc(grace=0)
    spy.close()
    assert any(op.key == zero_key(root) for batch in spy.batches for op in batch), (
        "the root of the rolled-back save was never marked"
    )
    assert meta.get(node_key(root)) is None
    assert not set(packs) & set(internals.objects(repo).list("packs/"))
    exact(repo)


def test_gc_refuses_a_store_whose_writes_are_too_small(
    make_repo: Callable[..., statebag.Repository],
) -> None:
    repo = make_repo()
    saved = repo.save("c", {"v": 1})
    repo.save("c", {"v": 2})
    repo.delete(saved.manifest_id)
    internals.meta(repo).max_batch = 12  # type: ignore[misc]
    with pytest.raises(statebag.ConfigError, match="at least 20 operations"):
        repo.gc(grace=0)
    with pytest.raises(statebag.ConfigError, match="at least 20 operations"):
        repo.audit(repair=True)
    assert len(list(internals.meta(repo).scan("zero/"))) == 1  # nothing was swept


def test_a_failing_item_is_left_and_the_rest_of_its_write_goes() -> None:
    from statebag.gc.batches import write_items
    from statebag.meta import Add, CheckCounter, Put
    from statebag.meta.memory import MemoryMetaStore

    store = MemoryMetaStore(max_batch=MAX_BATCH)
    store.add("c/5", 1)  # item 5's condition no longer holds
    items = [[CheckCounter(f"c/{i}", 0), Add(f"c/{i}", 10), Add("total", 1)] for i in range(30)]
    items.append([Put("v", b"x", expect=None)])
    applied = write_items(store, items, tail=[Add("writes", 1)])
    assert applied == [i for i in range(31) if i != 5]
    assert store.counter("total") == 29 and store.counter("c/5") == 1
    assert all(store.counter(f"c/{i}") == 10 for i in range(30) if i != 5)
    assert store.get("v") == b"x"
    # Each write held at most MAX_BATCH operations: 3 writes for 30 items of 2 + shared adds.
    assert store.counter("writes") >= 3
