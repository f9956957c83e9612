"""Parallel branches and their merge, against saving the merged state fresh.

Group ``branches``. The state (built once per module, untimed, ``STATE_BYTES`` = 10 MB times
the scale) is an agent workflow's: ``BRANCHES`` = 16 agent threads of messages
(``thread_00`` ... ``thread_15``, 60% of the bytes), four random blobs (``blob_0`` ...
``blob_3``, 40%), a scratch field and small settings. Each branch works on its own thread:
it appends ``APPENDS`` = 3 messages to it and adds a small ``result_NN`` field, so the merge
is conflict-free and the merged state is computed in plain Python (the model).

- ``fresh_save_merged`` (the peer): the merged state saved into an empty repository.
- ``fork_saves_merge``: the repository holds the base state on chain ``exec`` (saved in the
  round's setup on the same handle, untimed, as a long-running process would have it); the
  round forks ``exec/branch-NN`` 16 times, saves each branch's state once
  (``changed=[its thread, its result]``, as a Map state passing the state along would), and
  merges the 16 branches into ``exec`` (``three_way``).

Repositories are the embedded default (local packs and SQLite, fsync on), each in a new
temporary directory, so both sides pay their durable commits: one for the fresh save, 17
for the workflow (a fork writes one metadata record and no pack). ``extra_info`` of the
workflow gives the nodes written and the new stored bytes (the sum over the forks, the saves
and the merge, and for the merge alone), the same for the fresh save, and their ratios; the
time ratio is set when the fresh save ran in the same session (it runs first). The merged
version is checked against the model after the rounds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import SEED, Bench, Scratch, scaled
from statebag import CommitResult, Repository, codec
from statebag.bench.workloads import message, scratch_value, words
from test_bench_repository import _median_stages

STATE_BYTES = 10_000_000
BRANCHES = 16
APPENDS = 3  # messages each branch appends to its own thread
BLOBS = 4
THREAD_SHARE = 0.6  # of STATE_BYTES in messages; the rest in blobs
CHAIN = "exec"
DATASET = "branches16"
MERGE_NODES_MAX = 8  # a merge taking every field from a side writes only its fields table


def _thread(index: int) -> str:
    return f"thread_{index:02d}"


def _result(index: int) -> str:
    return f"result_{index:02d}"


def _branch(index: int) -> str:
    return f"{CHAIN}/branch-{index:02d}"


@dataclass(frozen=True)
class Workload:
    """The base state, each branch's state and the merged model (all built untimed)."""

    base: dict[str, Any]
    branch_states: list[dict[str, Any]]
    merged: dict[str, Any]

    @property
    def changed(self) -> list[list[str]]:
        return [[_thread(i), _result(i)] for i in range(BRANCHES)]


def _build() -> Workload:
    rng = random.Random(SEED)
    per_thread = scaled(int(STATE_BYTES * THREAD_SHARE)) // BRANCHES
    blob_bytes = max(64 * 1024, scaled(int(STATE_BYTES * (1 - THREAD_SHARE))) // BLOBS)
    base: dict[str, Any] = {
        "settings": {"model": "bench", "temperature": 0.2, "branches": BRANCHES},
        "scratch": scratch_value(rng, 0),
    }
    for index in range(BRANCHES):
        messages: list[dict[str, Any]] = []
        size = 0
        while size < per_thread:
            messages.append(message(rng, len(messages)))
            size += len(messages[-1]["text"]) + 40
        base[_thread(index)] = messages
    for index in range(BLOBS):
        base[f"blob_{index}"] = rng.randbytes(blob_bytes)

    branch_states = []
    merged = dict(base)
    for index in range(BRANCHES):
        name = _thread(index)
        appended = [message(rng, len(base[name]) + k) for k in range(APPENDS)]
        result = {"branch": index, "summary": words(rng, 40), "score": rng.random()}
        branch_states.append({**base, name: base[name] + appended, _result(index): result})
        merged[name] = base[name] + appended
        merged[_result(index)] = result
    return Workload(base, branch_states, merged)


@pytest.fixture(scope="module")
def workload() -> Workload:
    return _build()


def _median(bench: Bench) -> float | None:
    stats = getattr(getattr(bench.benchmark, "stats", None), "stats", None)
    if stats is None or not stats.data:
        return None
    return float(stats.median)


# The fresh save of this session (its CommitResult and median seconds), for the workflow.
_FRESH: dict[str, tuple[CommitResult, float | None]] = {}


@pytest.mark.benchmark(group="branches")
def test_fresh_save_merged(
    bench_on: Callable[[str, int], Bench], workload: Workload, scratch: Scratch
) -> None:
    commits: list[CommitResult] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        scratch.clear()
        return (scratch.new(),), {}

    def save(repo: Repository) -> CommitResult:
        commits.append(repo.save(CHAIN, workload.merged))
        return commits[-1]

    bench = bench_on(DATASET, 0)
    result: CommitResult = bench.run(save, setup=setup)

    assert result.seq == 1 and all(c.nodes_written == result.nodes_written for c in commits)
    repo = scratch.repos[-1]
    assert repo.load(result.manifest_id, fields=["result_00", _thread(BRANCHES - 1)]) == {
        name: workload.merged[name] for name in ("result_00", _thread(BRANCHES - 1))
    }
    _FRESH["fresh"] = (result, _median(bench))
    bench = bench_on(DATASET, result.bytes_logical)
    bench.record(
        "fresh_save_merged",
        result.bytes_logical,
        fields=len(workload.merged),
        nodes_written=result.nodes_written,
        bytes_new_stored=result.bytes_new_stored,
    )
    bench.stages("fresh_save_merged", _median_stages(commits))


@dataclass
class Round:
    """What one round of the workflow committed, and how long each part took."""

    base: CommitResult
    fork_points: list[str] = field(default_factory=list)
    saves: list[CommitResult] = field(default_factory=list)
    merge: CommitResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _fresh(workload: Workload, scratch: Scratch) -> CommitResult:
    """The peer's result when its benchmark did not run in this session (untimed)."""
    if "fresh" in _FRESH:
        return _FRESH["fresh"][0]
    peer = Scratch(scratch.root)
    try:
        return peer.new().save(CHAIN, workload.merged)
    finally:
        peer.clear()


@pytest.mark.benchmark(group="branches")
def test_fork_saves_merge(
    bench_on: Callable[[str, int], Bench], workload: Workload, scratch: Scratch
) -> None:
    rounds: list[Round] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        scratch.clear()
        repo = scratch.new()
        rounds.append(Round(base=repo.save(CHAIN, workload.base)))
        return (repo,), {}

    def workflow(repo: Repository) -> Round:
        current = rounds[-1]
        started = time.perf_counter()
        current.fork_points = [repo.fork(CHAIN, _branch(i)) for i in range(BRANCHES)]
        forked = time.perf_counter()
        for index, (state, changed) in enumerate(
            zip(workload.branch_states, workload.changed, strict=True)
        ):
            current.saves.append(repo.save(_branch(index), state, changed=changed))
        saved = time.perf_counter()
        current.merge = repo.merge(CHAIN, [_branch(i) for i in range(BRANCHES)])
        done = time.perf_counter()
        current.seconds = {
            "forks": forked - started,
            "saves": saved - forked,
            "merge": done - saved,
        }
        return current

    bench = bench_on(DATASET, 0)
    last: Round = bench.run(workflow, setup=setup)

    # What the last round committed, checked against the model.
    repo = scratch.repos[-1]
    merge = last.merge
    assert merge is not None
    assert last.fork_points == [last.base.manifest_id] * BRANCHES
    assert [save.parents for save in last.saves] == [[last.base.manifest_id]] * BRANCHES
    assert merge.parents == [last.base.manifest_id] + [save.manifest_id for save in last.saves]
    assert repo.head(CHAIN) == merge.manifest_id
    assert repo.stats().manifests == 1 + BRANCHES + 1  # the forks wrote no version
    diff = repo.diff(last.base.manifest_id, merge.manifest_id)
    assert sorted(diff.added) == [_result(i) for i in range(BRANCHES)]
    assert sorted(diff.changed) == [_thread(i) for i in range(BRANCHES)] and not diff.removed
    assert repo.load(merge.manifest_id) == workload.merged
    # Every merged field is one side's stored value: the merge writes its fields table only.
    assert merge.nodes_written <= MERGE_NODES_MAX, merge.nodes_written

    fresh = _fresh(workload, scratch)
    assert merge.bytes_logical == fresh.bytes_logical
    nodes_saves = sum(save.nodes_written for save in last.saves)
    stored_saves = sum(save.bytes_new_stored for save in last.saves)
    nodes_total = nodes_saves + merge.nodes_written  # forks write no node
    stored_total = stored_saves + merge.bytes_new_stored
    median = _median(bench)
    fresh_median = _FRESH["fresh"][1] if "fresh" in _FRESH else None

    def middle(part: str) -> float:
        return statistics.median(r.seconds[part] for r in rounds if r.seconds)

    figures: dict[str, Any] = {
        "branches": BRANCHES,
        "state_bytes": merge.bytes_logical,
        "nodes_written_total": nodes_total,
        "nodes_written_saves": nodes_saves,
        "nodes_written_merge": merge.nodes_written,
        "bytes_new_stored_total": stored_total,
        "bytes_new_stored_merge": merge.bytes_new_stored,
        "fresh_nodes_written": fresh.nodes_written,
        "fresh_bytes_new_stored": fresh.bytes_new_stored,
        "nodes_ratio_vs_fresh": round(nodes_total / fresh.nodes_written, 4),
        "bytes_stored_ratio_vs_fresh": round(stored_total / fresh.bytes_new_stored, 4),
        "forks_ms": round(middle("forks") * 1e3, 2),
        "saves_ms": round(middle("saves") * 1e3, 2),
        "merge_ms": round(middle("merge") * 1e3, 2),
    }
    if median is not None and fresh_median is not None:
        figures.update(
            workflow_s=median,
            fresh_save_s=fresh_median,
            time_ratio_vs_fresh=round(median / fresh_median, 4),
        )
    bench = bench_on(DATASET, merge.bytes_logical)
    bench.figures(**figures)
    bench.record(
        "fork_saves_merge",
        merge.bytes_logical,
        blob_bytes=len(workload.base["blob_0"]),
        messages_per_thread=len(workload.base[_thread(0)]),
        requests_merge=merge.requests,
    )
    bench.stages("branch save", _median_stages([s for r in rounds for s in r.saves]))
    bench.stages("merge", _median_stages([r.merge for r in rounds if r.merge is not None]))


def test_state_size_is_about_10_mb(workload: Workload) -> None:
    """The workload is the size the module says (times the scale), made of many fields."""
    total = sum(len(codec.encode(value)) for value in workload.merged.values())
    # Below a scale of about 0.1 the floors (one message per thread, 64 KiB per blob) and the
    # appended messages (up to 3,000 words each) outweigh the target.
    floors = BLOBS * 64 * 1024 + BRANCHES * (1 + APPENDS) * 24_000
    assert 0.8 * scaled(STATE_BYTES) <= total <= 1.3 * scaled(STATE_BYTES) + floors
    assert len(workload.merged) == 2 + 2 * BRANCHES + BLOBS
