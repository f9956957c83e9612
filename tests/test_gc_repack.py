"""gc's repack: the nodes of each chain's latest version gathered out of small packs (issue 17,
load locality).

Repositories here are memory stores opened with ``open(objects=, meta=)``, unbounded or
capped at 25 operations per write (as DynamoDB would be), so that a fresh handle can read
them through a wrapper that records which packs a load reads; the crash tests use local
repositories, in a process that dies at the repack's crash points.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import GCReport, InvalidInputError, Repository, dag
from statebag.bench.workloads import AgentThread, agent_state, agent_step
from statebag.keys import IndexRecord, PackRecord
from statebag.meta import Check, ConditionFailed, MetaStore, Op, Put
from statebag.meta.memory import MemoryMetaStore
from statebag.objects import ObjectStore
from statebag.objects.counting import CountingObjectStore
from statebag.objects.memory import MemoryObjectStore
from statebag.packs import FOOTER_ENTRY_SIZE, TRAILER_SIZE, pack_key, parse_footer
from statebag.testing import CRASH_EXIT_CODE, run_until_crash

from . import internals
from .repohelp import BATCH, recount, same, stored_counts

KIB = 1 << 10
CAPS = {"unbounded": None, "capped": BATCH}


class PackReads(CountingObjectStore):
    """Counts requests (as the repository's own wrapper does) and the packs read."""

    def __init__(self, inner: ObjectStore, /) -> None:
        super().__init__(inner)
        self.read: Counter[str] = Counter()

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        self.read[key] += 1
        return super().get(key, offset=offset, length=length)


class Stores:
    """A repository's two stores, kept apart from any handle, so that each test can open
    fresh handles over them (one through :class:`PackReads`)."""

    def __init__(self, cap: str) -> None:
        self.objects = MemoryObjectStore()
        self.meta = MemoryMetaStore(max_batch=CAPS[cap])
        statebag.open(objects=self.objects, meta=self.meta, create=True, fsync=False).close()

    def open(self) -> Repository:
        return statebag.open(objects=self.objects, meta=self.meta)

    def load_latest_reads(self, chain: str) -> tuple[int, int, dict[str, Any]]:
        """Packs read and GETs made by ``load_latest(chain)`` on a fresh handle, and the
        state."""
        reads = PackReads(self.objects)
        with statebag.open(objects=reads, meta=self.meta) as fresh:
            state = fresh.load_latest(chain)
        assert isinstance(state, dict)
        return len(reads.read), reads.snapshot().gets, state


@pytest.fixture(params=list(CAPS))
def stores(request: pytest.FixtureRequest) -> Stores:
    return Stores(request.param)


def agent_saves(
    repo: Repository,
    steps: int,
    *,
    chain: str = "agent",
    seed: int = 0,
    attachment: int = 256 * KIB,
) -> dict[str, dict[str, Any]]:
    """``steps`` saves of the agent workload on ``chain``; every state saved, by version id."""
    rng = random.Random(seed)
    bag = repo.load_bag(chain) if repo.head(chain) else None
    saved: dict[str, dict[str, Any]] = {}
    if bag is None:
        first = agent_state(rng, attachment_min=attachment // 2, attachment_max=attachment)
        first_id = repo.save(chain, first).manifest_id
        saved[first_id] = repo.load(first_id)  # type: ignore[assignment]
        bag = repo.load_bag(chain)
        steps -= 1
    for step in range(1, steps + 1):
        agent_step(bag, rng, step, attachment_max=attachment)
        manifest_id = repo.save(chain, bag).manifest_id
        saved[manifest_id] = repo.load(manifest_id)  # type: ignore[assignment]
    return saved


def head_packs(repo: Repository, chain: str) -> set[bytes]:
    """The packs that hold the nodes of ``chain``'s head (the packs a load of it reads)."""
    head = repo.head(chain)
    assert head is not None
    _, reached = recount_version(repo, head)
    meta = internals.meta(repo)
    found = meta.get_many([f"node/{node_id.hex()}" for node_id in reached])
    return {IndexRecord.decode(raw, node_id="n").pack_id for raw in found.values()}


def head_bytes(repo: Repository, chain: str) -> int:
    """The frame bytes of the nodes of ``chain``'s head."""
    head = repo.head(chain)
    assert head is not None
    _, reached = recount_version(repo, head)
    found = internals.meta(repo).get_many([f"node/{node_id.hex()}" for node_id in reached])
    return sum(IndexRecord.decode(raw, node_id="n").length for raw in found.values())


def recount_version(repo: Repository, manifest_id: str) -> tuple[int, set[bytes]]:
    """The nodes of one version (walked from its root), and how many."""
    reader = internals.reader(repo)
    root = internals.manifest(repo, manifest_id).root
    seen: set[bytes] = set()
    frontier = [root]
    meta = internals.meta(repo)
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        raw = meta.get(f"node/{node_id.hex()}")
        assert raw is not None, node_id.hex()
        if IndexRecord.decode(raw, node_id=node_id.hex()).interior:
            data = reader.read([node_id])[node_id]
            frontier.extend(dag.children_of(data, node_id=node_id.hex()))
    return len(seen), seen


def exact(repo: Repository) -> None:
    """Counts are the references, the audit is clean, and every pack's ``dead/`` counter is
    exactly the bytes of its frames no index record names there; the totals match."""
    counts, _ = recount(repo)
    assert stored_counts(repo) == counts
    report = repo.audit()
    assert report.ok, report
    assert not (report.over_counted or report.unswept or report.orphan_packs), report
    assert not report.in_flight, report
    meta = internals.meta(repo)
    objects = internals.objects(repo)
    assert list(meta.scan("dlq/")) == [] and list(meta.scan("pending/")) == []
    records = {
        IndexRecord.decode(v, node_id=k).pack_id
        + IndexRecord.decode(v, node_id=k).offset.to_bytes(8)
        for k, v in meta.scan("node/")
    }
    stored = dead_total = 0
    packs = list(meta.scan("pack/"))
    for key, value in packs:
        pack_id = bytes.fromhex(key[len("pack/") :])
        record = PackRecord.decode(value, pack_id=key)
        data = objects.get(pack_key(pack_id))
        assert len(data) == record.size
        entries = parse_footer(data, pack_id=key)
        assert sum(e.length for e in entries) == record.frames
        dead = sum(e.length for e in entries if pack_id + e.offset.to_bytes(8) not in records)
        assert meta.counter(f"dead/{pack_id.hex()}") == dead, key
        stored += record.size
        dead_total += dead
    totals = repo.stats()
    assert totals.packs == len(packs) == len(list(objects.list("packs/")))
    assert totals.bytes_stored == stored and totals.bytes_dead == dead_total
    assert totals.nodes == len(list(meta.scan("node/")))


# -- the target -----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", list(CAPS))
def test_a_load_after_300_agent_saves_and_a_gc_reads_at_most_8_packs(cap: str) -> None:
    """The agent workload as the benchmarks run it (1-8 MiB attachment): 300 saves scatter
    the head over about a hundred packs; one gc gathers it into a few."""
    stores = Stores(cap)
    with stores.open() as repo:
        for step in AgentThread(300).run():
            repo.save(step.chain, step.state)
    packs_before, gets_before, state_before = stores.load_latest_reads("agent")
    assert packs_before > 50, packs_before
    with stores.open() as repo:
        report = repo.gc(grace=0)
    assert report.nodes_repacked > 0 and report.manifests_deleted == 0, report
    packs_after, gets_after, state_after = stores.load_latest_reads("agent")
    assert packs_after <= 8, (packs_before, packs_after)
    assert gets_after < gets_before / 4, (gets_before, gets_after)
    same(state_before, state_after)
    with stores.open() as repo:
        exact(repo)
        # Nothing left to gather: a second run copies nothing.
        assert repo.gc(grace=0) == GCReport()


def test_more_saves_after_a_gc_are_gathered_by_the_next(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 120)
        repo.gc(grace=0)
        packs = stores.load_latest_reads("agent")[0]
        assert packs <= 4, packs
        agent_saves(repo, 60, seed=1)
        assert stores.load_latest_reads("agent")[0] > 10
        report = repo.gc(grace=0)
        assert report.nodes_repacked > 0, report
        assert stores.load_latest_reads("agent")[0] <= 5
        exact(repo)


# -- integrity --------------------------------------------------------------------------------


def test_repack_keeps_every_version_bit_identical_and_the_totals_exact(stores: Stores) -> None:
    with stores.open() as repo:
        saved = agent_saves(repo, 90)
        repo.fork("agent", "side")
        saved |= agent_saves(repo, 30, chain="side", seed=2)
        saved |= agent_saves(repo, 30, chain="other", seed=3, attachment=64 * KIB)
        meta = internals.meta(repo)
        nodes = [bytes.fromhex(k[len("node/") :]) for k, _ in meta.scan("node/")]
        reader = internals.reader(repo)
        node_bytes = reader.read(nodes)
        before = repo.stats()

        report = repo.gc(grace=0)

        assert report.nodes_repacked > 0 and report.nodes_freed == 0, report
        after = repo.stats()
        # Versions, nodes and logical bytes unchanged; only where the nodes sit moved.
        for name in ("chains", "manifests", "nodes", "bytes_logical"):
            assert getattr(after, name) == getattr(before, name), name
        assert after.bytes_stored == (
            before.bytes_stored - report.bytes_reclaimed + report.bytes_repacked
        )
        assert after.packs < before.packs
        internals.drop_caches(repo)
        assert reader.read(nodes) == node_bytes
        for manifest_id, state in saved.items():
            same(state, repo.load(manifest_id))
            assert repo.verify(manifest_id).ok
        exact(repo)
    for chain in ("agent", "side", "other"):
        assert stores.load_latest_reads(chain)[0] <= 4, chain


def test_the_budget_bounds_each_run_and_runs_converge(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 150)
        budget = 200 * KIB
        runs = 0
        while True:
            report = repo.gc(grace=0, repack_bytes=budget)
            runs += 1
            if report.nodes_repacked == 0:
                break
            # One pack per run at this budget: the frames it copied, plus its footer.
            overhead = FOOTER_ENTRY_SIZE * report.nodes_repacked + TRAILER_SIZE
            assert report.bytes_repacked - overhead <= budget, report
            assert runs < 20
        assert runs > 2  # one run could not do it all
        assert stores.load_latest_reads("agent")[0] <= 8
        # Settled at this budget: no run copies the same nodes again.
        assert repo.gc(grace=0, repack_bytes=budget) == GCReport()
        repo.gc(grace=0)  # the default budget may merge the budget's small packs further
        assert repo.gc(grace=0) == GCReport()
        assert repo.gc(grace=0, repack_bytes=0) == GCReport()
        exact(repo)


def test_repack_bytes_zero_turns_it_off_and_bad_budgets_are_refused(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 40)
        meta = internals.meta(repo)
        snapshot = (sorted(meta.scan("")), sorted(meta.counters("")))
        assert repo.gc(grace=0, repack_bytes=0) == GCReport()
        for bad in (-1, 1.5, True, "64MiB", None):
            with pytest.raises(InvalidInputError, match="repack_bytes") as info:
                repo.gc(grace=0, repack_bytes=bad)  # type: ignore[arg-type]
            assert info.value.path == "repack_bytes"
        assert (sorted(meta.scan("")), sorted(meta.counters(""))) == snapshot
        assert repo.gc(grace=0).nodes_repacked > 0


def test_newest_chains_are_gathered_first(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 40, chain="old", seed=4, attachment=32 * KIB)
        agent_saves(repo, 40, chain="new", seed=5, attachment=32 * KIB)
        scattered = {chain: len(head_packs(repo, chain)) for chain in ("old", "new")}
        assert min(scattered.values()) > 10
        # Enough for the newer head's nodes, not for both heads'.
        budget = head_bytes(repo, "new")
        repo.gc(grace=0, repack_bytes=budget)
        assert len(head_packs(repo, "new")) <= 3
        assert len(head_packs(repo, "old")) > 10
        repo.gc(grace=0)
        assert len(head_packs(repo, "old")) <= 3
        exact(repo)


def test_heads_sharing_nodes_settle_and_are_not_moved_back_and_forth(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 40, attachment=32 * KIB)
        for index in range(3):
            repo.fork("agent", f"fork{index}")
            agent_saves(repo, 8, chain=f"fork{index}", seed=10 + index, attachment=32 * KIB)
        agent_saves(repo, 8, seed=20, attachment=32 * KIB)
        assert repo.gc(grace=0).nodes_repacked > 0
        assert repo.gc(grace=0) == GCReport()
        exact(repo)


def test_a_dry_run_reports_the_repack_and_writes_nothing(stores: Stores) -> None:
    with stores.open() as repo:
        agent_saves(repo, 60)
        meta, objects = internals.meta(repo), internals.objects(repo)
        snapshot = (sorted(meta.scan("")), sorted(meta.counters("")), sorted(objects.list("")))
        dry = repo.gc(grace=0, dry_run=True)
        assert (sorted(meta.scan("")), sorted(meta.counters("")), sorted(objects.list(""))) == (
            snapshot
        )
        assert dry.nodes_repacked > 0
        assert repo.gc(grace=0) == dry


def test_capped_store_repacks_in_writes_of_at_most_25() -> None:
    stores = Stores("capped")
    writes: list[int] = []
    real = stores.meta.write

    def counted(ops: Sequence[Op], /, **options: Any) -> None:
        writes.append(len(ops))
        real(ops, **options)

    with stores.open() as repo:
        agent_saves(repo, 80)
        stores.meta.write = counted  # type: ignore[method-assign]
        report = repo.gc(grace=0)
    assert report.nodes_repacked > BATCH  # more moves than one write holds
    assert writes and max(writes) <= BATCH
    with stores.open() as repo:
        exact(repo)


# -- races -----------------------------------------------------------------------------------


class Hook:
    """Runs ``action`` once, just before the first write of ``stores.meta`` that ``when``
    picks; records how each picked write ended."""

    def __init__(
        self, meta: MetaStore, when: Callable[[Sequence[Op]], bool], action: Callable[[], None]
    ) -> None:
        self.meta = meta
        self.real = meta.write
        self.when = when
        self.action = action
        self.fired = False
        self.outcomes: list[str] = []
        meta.write = self.write  # type: ignore[method-assign]

    def write(self, ops: Sequence[Op], /, **options: Any) -> None:
        picked = self.when(ops)
        if picked and not self.fired:
            self.fired = True
            self.action()
        try:
            self.real(ops, **options)
        except ConditionFailed:
            if picked:
                self.outcomes.append("failed")
            raise
        if picked:
            self.outcomes.append("landed")

    def close(self) -> None:
        self.meta.write = self.real  # type: ignore[method-assign]


def moves_index(ops: Sequence[Op]) -> bool:
    """A write that moves index records (a repack's or a compaction's)."""
    return any(
        isinstance(op, Put) and op.key.startswith("node/") and op.expect is not None for op in ops
    )


def checks_found_nodes(ops: Sequence[Op]) -> bool:
    """A save's write that checks the records of the nodes it found indexed (its commit, or
    on a capped store the write before it)."""
    return any(isinstance(op, Check) and op.key.startswith("node/") for op in ops)


def test_a_save_reusing_nodes_lands_while_the_repack_moves_them(stores: Stores) -> None:
    """The save commits between the repack's reads and its move: it checked the records the
    repack then moves; both land, and the save's version reads from the new pack."""
    with stores.open() as repo:
        saved = agent_saves(repo, 80)
        latest = repo.load_latest("agent")
        assert isinstance(latest, dict)
        racer: dict[str, str] = {}

        def save_meanwhile() -> None:
            with stores.open() as other:
                racer["id"] = other.save("racer", {**latest, "racer": True}).manifest_id

        hook = Hook(stores.meta, moves_index, save_meanwhile)
        report = repo.gc(grace=0)
        hook.close()
        assert hook.fired and report.nodes_repacked > 0
        assert "landed" in hook.outcomes
        internals.drop_caches(repo)
        same({**latest, "racer": True}, repo.load(racer["id"]))
        for manifest_id, state in saved.items():
            same(state, repo.load(manifest_id))
        exact(repo)
    assert stores.load_latest_reads("agent")[0] <= 4


def test_a_save_that_located_nodes_before_the_repack_moved_them_commits(stores: Stores) -> None:
    """The repack moves the nodes a save found indexed before the save commits: the save's
    check of their records fails, it reads the new records and commits."""
    with stores.open() as repo:
        saved = agent_saves(repo, 80)
        latest = repo.load_latest("agent")
        assert isinstance(latest, dict)
        reports: list[GCReport] = []

        def gc_meanwhile() -> None:
            with stores.open() as collector:
                reports.append(collector.gc(grace=0))

        hook = Hook(stores.meta, checks_found_nodes, gc_meanwhile)
        with stores.open() as saver:
            result = saver.save("racer", {**latest, "racer": True})
        hook.close()
        assert hook.fired and reports[0].nodes_repacked > 0, reports
        assert hook.outcomes[0] == "failed" and hook.outcomes[-1] == "landed", hook.outcomes
        internals.drop_caches(repo)
        same({**latest, "racer": True}, repo.load(result.manifest_id))
        for manifest_id, state in saved.items():
            same(state, repo.load(manifest_id))
        repo.gc(grace=0)
        exact(repo)


def test_a_node_swept_before_the_repack_moves_it_is_left_alone(stores: Stores) -> None:
    """The head moves on and the old head is deleted and swept between the repack's reads and
    its move: the moves of the swept nodes fail, the rest land, nothing is lost."""
    with stores.open() as repo:
        agent_saves(repo, 60)
        old_head = repo.head("agent")
        assert old_head is not None
        kept = agent_saves(repo, 1, seed=7)
        [new_head] = kept

        def move_on() -> None:
            with stores.open() as other:
                other.delete(old_head)
                other.gc(grace=0, repack_bytes=0)

        hook = Hook(stores.meta, moves_index, move_on)
        repo.gc(grace=0)
        hook.close()
        assert hook.fired
        internals.drop_caches(repo)
        same(kept[new_head], repo.load(new_head))
        repo.gc(grace=0)
        exact(repo)


# -- crashes ---------------------------------------------------------------------------------

CRASH_SCRIPT = r"""
import sys
import statebag

path, root, capped = sys.argv[1], sys.argv[2], sys.argv[3]
repo = statebag.open(path)
if capped == "capped":
    sys.path.insert(0, root)
    from tests import internals
    internals.meta(repo).max_batch = 25
repo.gc(grace=0)
repo.close()
"""


@pytest.fixture(scope="module")
def crash_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    path = tmp_path_factory.mktemp("repack-crash") / "base"
    with statebag.open(path, fsync=False) as repo:
        saved = agent_saves(repo, 60, attachment=64 * KIB)
        saved |= agent_saves(repo, 20, chain="b", seed=9, attachment=64 * KIB)
    return path, saved


@pytest.mark.parametrize("cap", list(CAPS))
@pytest.mark.parametrize("point", ["gc.after_repack_upload", "gc.after_repack_index"])
def test_a_crash_inside_the_repack_loses_nothing(
    point: str, cap: str, crash_base: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    source, saved = crash_base
    path = tmp_path / "repo"
    shutil.copytree(source, path)
    root = str(Path(__file__).resolve().parent.parent)
    done = run_until_crash(CRASH_SCRIPT, point, str(path), root, cap)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with statebag.open(path) as repo:
        for manifest_id, state in saved.items():
            same(state, repo.load(manifest_id))
        if cap == "capped":
            internals.meta(repo).max_batch = BATCH  # type: ignore[misc]
        repo.gc(grace=0)  # rolls the crashed repack back, or finishes it, and repacks
        for manifest_id, state in saved.items():
            same(state, repo.load(manifest_id))
            assert repo.verify(manifest_id).ok
        exact(repo)
        for chain in ("agent", "b"):
            assert len(head_packs(repo, chain)) <= 4, chain
