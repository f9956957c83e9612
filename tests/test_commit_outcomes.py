"""The commit on a metadata store whose writes may have an unknown outcome.

A scripted wrapper makes exactly the write a test names fail one of the three ways a remote
store's can: applied with the answer lost, not applied, or still landing later (kept and
landed when the test says). Each test shows that a save that returned an id is never lost,
that a save that raised ``OutcomeUnknown`` leaves its pending entry for gc rather than taking
anything back, and that a commit landing after its rollback applies nothing.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import statebag
from statebag._typing import Buffer
from statebag.liveness import Liveness
from statebag.meta import ConditionFailed, MetaStore, Op, Put
from statebag.meta.memory import MemoryMetaStore
from statebag.meta.wrapping import WrappedMetaStore
from statebag.objects.memory import MemoryObjectStore
from statebag.testing import run_threads

from . import internals
from .repohelp import recount, stored_counts

Predicate = Callable[[Sequence[Op]], bool]


class Scripted(WrappedMetaStore):
    """Passes everything through but the writes a test scripted to fail."""

    def __init__(self, inner: MetaStore) -> None:
        super().__init__(inner)
        self._rules: list[tuple[Predicate, str]] = []
        self.deferred: list[list[Op]] = []
        self.writes = 0
        self._lock = threading.Lock()

    def fail(self, predicate: Predicate, how: str) -> None:
        """Make the next write ``predicate`` picks fail: ``lost`` (applied, answer lost),
        ``unknown`` (not applied) or ``deferred`` (kept, applied by :meth:`land`)."""
        self._rules.append((predicate, how))

    def land(self) -> list[bool]:
        """Apply every deferred write now (conditions checked now); which ones applied."""
        landed = []
        for ops in self.deferred:
            try:
                self.inner.write(ops)
                landed.append(True)
            except ConditionFailed:
                landed.append(False)
        self.deferred.clear()
        return landed

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        with self._lock:
            self.writes += 1
            how = None
            for index, (predicate, kind) in enumerate(self._rules):
                if predicate(ops):
                    how = kind
                    del self._rules[index]
                    break
        if how is None:
            super().write(ops, durable=durable)
        elif how == "lost":
            super().write(ops, durable=durable)
            raise statebag.OutcomeUnknown("the answer was lost")
        elif how == "unknown":
            raise statebag.OutcomeUnknown("timed out")
        else:
            self.deferred.append(list(ops))
            raise statebag.OutcomeUnknown("still landing")


def _commits(ops: Sequence[Op]) -> bool:
    return any(isinstance(op, Put) and op.key.startswith("manifest/") for op in ops)


def _reference_batch(ops: Sequence[Op]) -> bool:
    return any(isinstance(op, Put) and op.key.startswith("node/") for op in ops) and not _commits(
        ops
    )


class SlowObjects(MemoryObjectStore):
    """Objects in memory whose puts first call ``before_put`` (set by a test)."""

    def __init__(self) -> None:
        super().__init__()
        self.before_put: Callable[[], None] = lambda: None

    def put(self, key: str, data: Buffer, /) -> None:
        self.before_put()
        super().put(key, data)


def _repository(
    *, max_batch: int | None, lease: float = 0.3
) -> tuple[statebag.Repository, Scripted]:
    objects = SlowObjects()
    with statebag.open(f"memory://{uuid.uuid4().hex}") as opened:
        inner = internals.meta(opened)
        config = opened.config
    assert isinstance(inner, MemoryMetaStore)
    inner.max_batch = max_batch  # type: ignore[misc]
    meta = Scripted(inner)
    repo = statebag.Repository(objects, meta, config, liveness=Liveness(), lease=lease)
    return repo, meta


def _state(n: int, size: int = 2_000) -> dict[str, Any]:
    return {f"f{i}": bytes([n % 251, i % 251]) * (size // 2) for i in range(40)}


def _clean(repo: statebag.Repository) -> None:
    report = repo.audit()
    assert report.ok and not report.in_flight and not report.under_counted, report
    assert not report.orphan_packs, report


BATCHES = [None, 25]


@pytest.mark.parametrize("max_batch", BATCHES)
def test_a_commit_whose_answer_was_lost_is_read_back(max_batch: int | None) -> None:
    repo, meta = _repository(max_batch=max_batch)
    repo.save("c", _state(0))
    meta.fail(_commits, "lost")
    result = repo.save("c", _state(1))
    assert repo.head("c") == result.manifest_id
    assert repo.load(result.manifest_id) == _state(1)
    assert list(meta.scan("pending/")) == []
    _clean(repo)


@pytest.mark.parametrize("max_batch", BATCHES)
def test_an_unknown_commit_leaves_its_entry_and_gc_rolls_it_back(max_batch: int | None) -> None:
    repo, meta = _repository(max_batch=max_batch)
    first = repo.save("c", _state(0))
    meta.fail(_commits, "unknown")
    with pytest.raises(statebag.OutcomeUnknown, match="pending entry"):
        repo.save("c", _state(1))
    assert len(list(meta.scan("pending/"))) == 1  # nothing taken back, nothing dropped
    assert repo.gc(grace=0).deferred == 1  # its lease has not passed
    time.sleep(0.4)
    repo.gc(grace=0)
    repo.gc(grace=0)  # sweeps what the rolled-back save indexed, if anything
    assert list(meta.scan("pending/")) == []
    assert repo.head("c") == first.manifest_id
    assert repo.load(first.manifest_id) == _state(0)
    _clean(repo)


@pytest.mark.parametrize("max_batch", BATCHES)
def test_a_commit_landing_after_its_rollback_applies_nothing(max_batch: int | None) -> None:
    repo, meta = _repository(max_batch=max_batch)
    first = repo.save("c", _state(0))
    meta.fail(_commits, "deferred")
    with pytest.raises(statebag.OutcomeUnknown):
        repo.save("c", _state(1))
    time.sleep(0.4)
    repo.gc(grace=0)  # rolls the save back: its entry goes, on condition
    assert meta.land() == [False]  # the late commit fails its condition on the entry
    repo.gc(grace=0)
    assert repo.head("c") == first.manifest_id
    assert repo.load(first.manifest_id) == _state(0)
    # The chain goes on as if the lost save never happened.
    second = repo.save("c", _state(2))
    assert repo.load(second.manifest_id) == _state(2)
    _clean(repo)


@pytest.mark.parametrize("max_batch", BATCHES)
def test_a_commit_landing_late_but_before_gc_is_a_committed_version(max_batch: int | None) -> None:
    repo, meta = _repository(max_batch=max_batch)
    repo.save("c", _state(0))
    meta.fail(_commits, "deferred")
    with pytest.raises(statebag.OutcomeUnknown):
        repo.save("c", _state(1))
    assert meta.land() == [True]
    head = repo.head("c")
    assert head is not None and repo.load(head) == _state(1)
    time.sleep(0.4)
    repo.gc(grace=0)  # nothing to roll back: the commit deleted the entry
    assert repo.load(head) == _state(1)
    _clean(repo)


def test_an_unknown_reference_batch_fails_the_save_and_loses_nothing() -> None:
    repo, meta = _repository(max_batch=25)
    first = repo.save("c", _state(0))
    meta.fail(_reference_batch, "deferred")
    with pytest.raises(statebag.OutcomeUnknown, match="did not commit"):
        repo.save("c", _state(1, size=60_000))
    # Whether the batch lands before or after the rollback, counts stay exact.
    assert meta.land() == [True]
    time.sleep(0.4)
    repo.gc(grace=0)
    repo.gc(grace=0)
    assert repo.load(first.manifest_id) == _state(0)
    again = repo.save("c", _state(1, size=60_000))
    assert repo.load(again.manifest_id) == _state(1, size=60_000)
    _clean(repo)


def test_a_running_save_renews_its_lease_and_is_not_rolled_back() -> None:
    repo, _ = _repository(max_batch=None, lease=0.3)
    repo.save("c", _state(0))
    objects = internals.objects(repo).inner
    assert isinstance(objects, SlowObjects)
    collected = threading.Event()

    def slow_upload() -> None:
        # The upload outlasts three leases; gc runs meanwhile.
        time.sleep(1.0)
        collected.wait(timeout=30)

    def collect() -> None:
        time.sleep(0.6)
        report = repo.gc(grace=0)
        assert report.deferred == 1  # the writer renews: left alone
        collected.set()

    objects.before_put = slow_upload
    thread = threading.Thread(target=collect)
    thread.start()
    result = repo.save("c", _state(1))
    thread.join()
    objects.before_put = lambda: None
    assert collected.is_set()
    assert repo.load(result.manifest_id) == _state(1)
    _clean(repo)


def test_a_small_commit_on_a_capped_store_is_one_write() -> None:
    repo, meta = _repository(max_batch=25)
    repo.save("c", {"a": 1})
    before = meta.writes
    repo.save("c", {"a": 2})
    # The pending entry, then one atomic commit: no reference batches.
    assert meta.writes - before <= 2


def test_wide_nodes_saved_by_racing_saves_on_a_capped_store_are_counted_once() -> None:
    """Four saves of one state with a fields node of 60 references (more than a batch of
    25 holds) race on four chains: one indexes each node, the others reuse it and take back
    the increments they wrote first; the counts are exactly the references."""
    repo, _ = _repository(max_batch=25)
    state = {f"f{i:02}": bytes([i]) * 6_000 for i in range(60)}
    barrier = threading.Barrier(4)

    def save(i: int) -> str:
        barrier.wait()
        return repo.save(f"c{i}", state).manifest_id

    saved = run_threads(4, save)
    for manifest_id in saved:
        assert repo.load(manifest_id) == state
    counts, _ = recount(repo)
    assert stored_counts(repo) == counts
    report = repo.audit()
    assert report.ok and not report.over_counted and not report.under_counted, report


def test_a_commit_too_big_for_one_capped_write_splits_and_counts_exactly() -> None:
    """A save of 30 packs (30 pack records) and then one that finds 60 nodes stored (60
    checks) each need more than 25 operations beside their commit: checks and pack records
    go first in batches, and the totals still say exactly what is stored."""
    repo = statebag.open(
        objects=MemoryObjectStore(),
        meta=MemoryMetaStore(max_batch=25),
        create=True,
        pack_size=1 << 20,
        compression_level=0,
    )
    rng = random.Random(3)
    state = {f"f{i:02}": rng.randbytes(500_000) for i in range(60)}
    first = repo.save("a", state)
    assert len(first.pack_keys) >= 25, first.pack_keys
    second = repo.save("b", state)  # every value found stored
    assert repo.load(first.manifest_id) == repo.load(second.manifest_id) == state
    meta, objects = internals.meta(repo), internals.objects(repo)
    totals = repo.stats()
    assert totals.packs == len(list(objects.list("packs/")))
    assert totals.nodes == len(list(meta.scan("node/")))
    assert totals.bytes_stored == sum(objects.stat(key) for key in objects.list("packs/"))
    counts, _ = recount(repo)
    assert stored_counts(repo) == counts
    report = repo.audit()
    assert report.ok and not report.over_counted and not report.under_counted, report
    repo.close()
