"""Garbage collection and audit on a repository of agent threads.

Group ``gc``. The repository (built once per module, untimed) holds ``GC_MANIFESTS``
versions (default 1,000; 100 under ``--benchmark-disable``; ``STATEBAG_BENCH_GC_MANIFESTS``
overrides) of ``GC_CHAINS`` = 10 agent threads saved in turn, step by step through a
``StateBag``, with the agent-thread workload of test_bench_repository.py: a message appended
every step, a scratch field rewritten, a message redacted every 50 steps and a 1 to 8 MiB
attachment (times the scale) edited every 25 steps. It is a local repository created without
fsync, so the timings are of the work, not of the disk.

- ``gc_delete_10pct`` / ``gc_delete_90pct``: a fresh copy of the repository
  (``shutil.copytree``) in which 10% / 90% of the versions, never a chain's head, were
  deleted with ``repo.delete`` (both untimed, in the round's setup); then
  ``repo.gc(grace=0, repack_bytes=0)`` is timed: it sweeps the nodes the deletions released,
  deletes the packs left dead and compacts the packs left mostly dead (the repack is left
  out: it gathers the heads whatever was deleted; ``gc_load_locality`` measures it). The
  versions of the 10% are among those of the 90%.
- ``gc_nothing_deleted``: ``repo.gc(grace=0)`` on a fresh copy where nothing was deleted
  and an untimed gc already repacked the heads: the fixed cost of a gc on this repository.
- ``audit``: ``repo.audit()`` of the whole repository, on a handle opened afresh each round.
- ``gc_load_locality``: 300 saves of one agent thread (the ``agent`` workload, 1-8 MiB
  attachment; a pack per save), then ``repo.gc(grace=0)`` of a fresh copy, timed: its repack
  gathers the head's nodes out of the small packs. ``extra_info`` has the distinct packs
  and object GETs of a fresh handle's ``load_latest`` before and after that gc (counted by
  a wrapper around the object store), and what the repack moved.

gc's work should grow with what was deleted, not with the size of the repository: the 90%
benchmark reports ``t90 / t10`` next to the ratios of versions deleted and of bytes
reclaimed (``extra_info``, and the figures of the ``gc<N>`` data set in the end-of-run
report).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import statebag
from conftest import SEED, Bench, _benchmarks_disabled, _env_number
from statebag import GCReport, Repository
from statebag.bench.workloads import AgentThread, agent_state, agent_step
from statebag.meta.sqlite import SQLiteMetaStore
from statebag.objects import ObjectStore
from statebag.objects.counting import CountingObjectStore
from statebag.objects.local import LocalObjectStore
from test_bench_repository import ATTACHMENT_MAX, ATTACHMENT_MIN

GC_CHAINS = 10
GC_MANIFESTS_ENV = "STATEBAG_BENCH_GC_MANIFESTS"
GC_MANIFESTS_DEFAULT = 1000
GC_MANIFESTS_DISABLED = 100  # under --benchmark-disable: a smoke run, not a measurement
SHARES = {"10pct": 0.10, "90pct": 0.90}


@dataclass(frozen=True)
class GCRepo:
    """The built repository: its directory, every version id oldest first, and the heads."""

    path: Path
    ids: list[str]
    heads: set[str]
    bytes_stored: int
    order: list[str]  # the non-head versions in a seeded random order: deletions take a prefix

    @property
    def name(self) -> str:
        return f"gc{len(self.ids)}"

    def doomed(self, share: float) -> list[str]:
        return self.order[: round(share * len(self.ids))]


def _manifests(config: pytest.Config) -> int:
    default = GC_MANIFESTS_DISABLED if _benchmarks_disabled(config) else GC_MANIFESTS_DEFAULT
    count: int = _env_number(GC_MANIFESTS_ENV, int, default, 2 * GC_CHAINS, 100_000)
    return count - count % GC_CHAINS


def _build(path: Path, manifests: int) -> GCRepo:
    """GC_CHAINS agent threads of ``manifests / GC_CHAINS`` versions each, saved in turn."""
    steps = manifests // GC_CHAINS
    rngs = [random.Random(SEED * 1000 + index) for index in range(GC_CHAINS)]
    chains = [f"thread-{index}" for index in range(GC_CHAINS)]
    ids: list[str] = []
    with statebag.open(path, fsync=False) as repo:
        bags = []
        for chain, rng in zip(chains, rngs, strict=True):
            initial = agent_state(rng, attachment_min=ATTACHMENT_MIN, attachment_max=ATTACHMENT_MAX)
            ids.append(repo.save(chain, initial).manifest_id)
            bags.append(repo.load_bag(chain))
        for step in range(1, steps):
            for chain, rng, bag in zip(chains, rngs, bags, strict=True):
                agent_step(bag, rng, step, attachment_max=ATTACHMENT_MAX)
                ids.append(repo.save(chain, bag).manifest_id)
        heads = {repo.head(chain) for chain in chains}
        stats = repo.stats()
        assert stats.manifests == len(ids) == manifests
    order = [mid for mid in ids if mid not in heads]
    random.Random(SEED).shuffle(order)
    return GCRepo(path, ids, {h for h in heads if h is not None}, stats.bytes_stored, order)


@pytest.fixture(scope="module")
def gc_workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="statebag-bench-gc-") as root:
        yield Path(root)


@pytest.fixture(scope="module")
def gc_repo(gc_workspace: Path, pytestconfig: pytest.Config) -> GCRepo:
    return _build(gc_workspace / "base", _manifests(pytestconfig))


@pytest.fixture
def gbench(bench_on: Callable[[str, int], Bench], gc_repo: GCRepo) -> Bench:
    """The ``benchmark`` fixture bound to the gc data set (its size: the stored bytes)."""
    return bench_on(gc_repo.name, gc_repo.bytes_stored)


class Copies:
    """Fresh copies of the built repository, one per round; ``clear`` closes and removes them."""

    def __init__(self, base: GCRepo, root: Path) -> None:
        self.base = base
        self.root = root
        self.repos: list[Repository] = []
        self.dirs: list[Path] = []

    def new(self, doomed: list[str]) -> Repository:
        """A copy of the base in which ``doomed`` were deleted (untimed work)."""
        self.clear()
        path = Path(tempfile.mkdtemp(prefix="copy-", dir=self.root)) / "repo"
        shutil.copytree(self.base.path, path)
        self.dirs.append(path.parent)
        repo = statebag.open(path, create=False)
        self.repos.append(repo)
        for manifest_id in doomed:
            repo.delete(manifest_id)
        return repo

    def clear(self) -> None:
        for repo in self.repos:
            repo.close()
        self.repos.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()


@pytest.fixture
def copies(gc_repo: GCRepo, gc_workspace: Path) -> Iterator[Copies]:
    made = Copies(gc_repo, gc_workspace)
    yield made
    made.clear()


# Medians and reports of the gc benchmarks of this run, for the 90%/10% comparison.
_GC_RUNS: dict[str, tuple[float | None, GCReport, int]] = {}


def _median(bench: Bench) -> float | None:
    stats = getattr(getattr(bench.benchmark, "stats", None), "stats", None)
    if stats is None or not stats.data:
        return None
    return float(stats.median)


def _bench_gc(gbench: Bench, gc_repo: GCRepo, copies: Copies, share: str) -> None:
    doomed = gc_repo.doomed(SHARES[share])
    assert doomed and not set(doomed) & gc_repo.heads
    reports: list[GCReport] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        return (copies.new(doomed),), {}

    def collect(repo: Repository) -> GCReport:
        report = repo.gc(grace=0, repack_bytes=0)
        reports.append(report)
        return report

    report: GCReport = gbench.run(collect, setup=setup)

    # Every round did the same work on the same copy.
    assert all(r == report for r in reports), reports
    repo = copies.repos[-1]
    kept = len(gc_repo.ids) - len(doomed)
    assert report.manifests_deleted == 0  # the deletions were made by the setup
    assert report.nodes_freed > 0 and report.bytes_reclaimed > 0
    assert report.deferred == 0 and report.dead_letters_processed == 0
    stats = repo.stats()
    assert stats.manifests == kept
    assert report.nodes_repacked == report.bytes_repacked == 0
    assert stats.bytes_stored == gc_repo.bytes_stored - report.bytes_reclaimed
    audit = repo.audit()
    assert audit.ok, audit
    assert not (audit.unswept or audit.over_counted or audit.orphan_packs), audit
    # A kept version of every chain still loads whole (its attachment and all).
    survivors = [mid for mid in gc_repo.ids if mid not in set(doomed)]
    for manifest_id in random.Random(SEED).sample(survivors, 5):
        assert repo.verify(manifest_id).ok

    name = f"gc_delete_{share}"
    median = _median(gbench)
    _GC_RUNS[share] = (median, report, len(doomed))
    extra: dict[str, Any] = {
        "manifests_deleted": len(doomed),
        "repository_manifests": len(gc_repo.ids),
        "bytes_stored_before": gc_repo.bytes_stored,
        "bytes_reclaimed": report.bytes_reclaimed,
        "nodes_freed": report.nodes_freed,
        "packs_deleted": report.packs_deleted,
        "packs_compacted": report.packs_compacted,
        "reclaimed_share": round(report.bytes_reclaimed / gc_repo.bytes_stored, 4),
    }
    if share == "90pct" and "10pct" in _GC_RUNS:
        extra.update(_comparison(gbench, gc_repo))
    gbench.record(name, report.bytes_reclaimed, **extra)


def _comparison(gbench: Bench, gc_repo: GCRepo) -> dict[str, Any]:
    """The 90% run against the 10% run: times, deletions and reclaimed bytes side by side."""
    t10, r10, d10 = _GC_RUNS["10pct"]
    t90, r90, d90 = _GC_RUNS["90pct"]
    figures: dict[str, Any] = {
        "manifests": len(gc_repo.ids),
        "deleted_10pct": d10,
        "deleted_90pct": d90,
        "deleted_ratio_90_10": d90 / d10,
        "nodes_freed_10pct": r10.nodes_freed,
        "nodes_freed_90pct": r90.nodes_freed,
        "nodes_freed_ratio_90_10": r90.nodes_freed / r10.nodes_freed,
        "bytes_reclaimed_10pct": r10.bytes_reclaimed,
        "bytes_reclaimed_90pct": r90.bytes_reclaimed,
        "bytes_reclaimed_ratio_90_10": r90.bytes_reclaimed / r10.bytes_reclaimed,
    }
    if t10 is not None and t90 is not None:
        figures.update(gc_10pct_s=t10, gc_90pct_s=t90, gc_time_ratio_90_10=t90 / t10)
        figures["gc_ms_per_deleted_10pct"] = 1e3 * t10 / d10
        figures["gc_ms_per_deleted_90pct"] = 1e3 * t90 / d90
    gbench.figures(**figures)  # also in the end-of-run report
    return figures


@pytest.mark.benchmark(group="gc")
def test_gc_delete_10pct(gbench: Bench, gc_repo: GCRepo, copies: Copies) -> None:
    _bench_gc(gbench, gc_repo, copies, "10pct")


@pytest.mark.benchmark(group="gc")
def test_gc_delete_90pct(gbench: Bench, gc_repo: GCRepo, copies: Copies) -> None:
    _bench_gc(gbench, gc_repo, copies, "90pct")


@pytest.mark.benchmark(group="gc")
def test_gc_nothing_deleted(gbench: Bench, gc_repo: GCRepo, copies: Copies) -> None:
    """The fixed cost of a gc with nothing to do, on the same repository (its repack done
    by an untimed gc first: what is left is walking the heads to find nothing to move)."""

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        repo = copies.new([])
        repo.gc(grace=0)
        return (repo,), {}

    report = gbench.run(lambda repo: repo.gc(grace=0), setup=setup)

    assert report == GCReport(), report
    median = _median(gbench)
    gbench.record("gc_nothing_deleted", 0, repository_manifests=len(gc_repo.ids))
    gbench.figures(gc_nothing_deleted_s=median)


@pytest.mark.benchmark(group="gc")
def test_audit(gbench: Bench, gc_repo: GCRepo) -> None:
    handles: list[Repository] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        for handle in handles:
            handle.close()
        handles.clear()
        handles.append(statebag.open(gc_repo.path, create=False))
        return (handles[-1],), {}

    try:
        report = gbench.run(lambda repo: repo.audit(), setup=setup)
    finally:
        for handle in handles:
            handle.close()

    assert report.ok, report
    assert report.manifests == len(gc_repo.ids)
    assert not (report.unswept or report.over_counted or report.orphan_packs or report.in_flight)
    median = _median(gbench)
    gbench.record(
        "audit",
        gc_repo.bytes_stored,
        repository_manifests=report.manifests,
        nodes=report.nodes,
        ms_per_manifest=None if median is None else round(1e3 * median / report.manifests, 3),
    )
    gbench.figures(audit_s=median, audit_nodes=report.nodes)


# -- load locality -----------------------------------------------------------------------------

LOCALITY_SAVES = 300


class _PackReads(CountingObjectStore):
    """Counts requests and the distinct packs read."""

    def __init__(self, inner: ObjectStore, /) -> None:
        super().__init__(inner)
        self.packs: set[str] = set()

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        self.packs.add(key)
        return super().get(key, offset=offset, length=length)


def _load_reads(path: Path) -> tuple[int, int]:
    """Distinct packs and object GETs of ``load_latest("agent")`` on a fresh handle."""
    reads = _PackReads(LocalObjectStore(path / "objects", fsync=False))
    with statebag.open(objects=reads, meta=SQLiteMetaStore(path / "meta.sqlite")) as fresh:
        fresh.load_latest("agent")
    return len(reads.packs), reads.snapshot().gets


@pytest.fixture(scope="module")
def agent_repo(gc_workspace: Path) -> Path:
    """300 saves of the agent workload (1-8 MiB attachment), one pack each."""
    path = gc_workspace / "agent"
    with statebag.open(path, fsync=False) as repo:
        for step in AgentThread(LOCALITY_SAVES).run():
            repo.save(step.chain, step.state)
    return path


@pytest.mark.benchmark(group="gc")
def test_gc_load_locality(bench_on: Callable[[str, int], Bench], agent_repo: Path) -> None:
    """Packs read by a fresh handle's ``load_latest`` after 300 agent saves, before and after
    one gc (its repack gathers the head's nodes out of the saves' small packs); the gc of a
    fresh copy is what is timed."""
    with statebag.open(agent_repo, create=False) as repo:
        stats = repo.stats()
    lbench = bench_on(f"agent{LOCALITY_SAVES}", stats.bytes_stored)
    packs_before, gets_before = _load_reads(agent_repo)
    copies: list[Path] = []
    reports: list[GCReport] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        for copy in copies:
            shutil.rmtree(copy.parent, ignore_errors=True)
        copies.clear()
        copy = Path(tempfile.mkdtemp(prefix="copy-", dir=agent_repo.parent)) / "repo"
        shutil.copytree(agent_repo, copy)
        copies.append(copy)
        return (statebag.open(copy, create=False),), {}

    def collect(repo: Repository) -> GCReport:
        try:
            report = repo.gc(grace=0)
        finally:
            repo.close()
        reports.append(report)
        return report

    report: GCReport = lbench.run(collect, setup=setup)
    assert all(r == report for r in reports), reports
    packs_after, gets_after = _load_reads(copies[-1])
    with statebag.open(copies[-1], create=False) as repo:
        after = repo.stats()
        audit = repo.audit()
    assert audit.ok and not (audit.over_counted or audit.orphan_packs), audit
    assert report.nodes_repacked > 0 and packs_after <= 8, (report, packs_after)
    figures = {
        "saves": LOCALITY_SAVES,
        "load_packs_before_gc": packs_before,
        "load_packs_after_gc": packs_after,
        "load_gets_before_gc": gets_before,
        "load_gets_after_gc": gets_after,
        "repo_packs_before_gc": stats.packs,
        "repo_packs_after_gc": after.packs,
        "nodes_repacked": report.nodes_repacked,
        "bytes_repacked": report.bytes_repacked,
        "bytes_reclaimed": report.bytes_reclaimed,
    }
    lbench.figures(**figures)
    lbench.record("gc_load_locality", stats.bytes_stored, **figures)
    for copy in copies:
        shutil.rmtree(copy.parent, ignore_errors=True)
