"""Repository save and load against references run in the same session, and an agent thread.

Group ``repository``: a generated state of about 100 MB (``make_state``, ~200 fields), built
once per session, saved to and loaded from embedded repositories (``statebag.open(dir)``:
local packs and SQLite, fsync on) in temporary directories:

- ``fresh_save``: the state into an empty repository;
- ``delta_hinted`` / ``delta_unhinted``: the repository holds the state; two fields of 200
  change (a record appended to a records field and one in its middle edited, a span in the
  middle of a text field rewritten), saved with ``changed=[...]`` / without hints;
- ``load_latest``: the whole state back; ``lazy_one_field``: one large field of a lazy load;
- references: ``ref_zstd_2threads`` (our chunks compressed with zstd level 3 on two
  threads), ``ref_durable_commit`` (one fsync'd small-file write and rename plus one SQLite
  WAL ``synchronous=FULL`` commit), ``ref_encode_cut_hash`` (msgspec encode plus
  ``Chunker.cut_and_hash`` of every field), ``ref_unzstd_2threads`` (the frames of
  ``ref_zstd_2threads`` decompressed on two threads) and ``ref_decode`` (msgspec decode of
  every field).

pytest runs the tests in file order, and each reference comes right after the benchmark it is
compared with, so that both see about the same load on the shared machine.

Group ``agent``: one round of a simulated agent thread saved step by step through a
``StateBag``; it measures stored against logical bytes, and the save time of a step against a
fresh save of the same state into an empty repository.

Every round that needs a fresh repository, a reopened one or a changed state gets it from a
``setup`` function, untimed. conftest.py turns the medians into the ratios of the report.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

import statebag
from conftest import (
    AGENT_DATASET,
    MIB,
    REPO_DATASET,
    SCALE,
    SEED,
    Bench,
    Scratch,
    make_state,
    scaled,
)
from statebag import CommitResult, Repository, StateBag, codec, dag
from statebag.bench.report import percentile
from statebag.bench.workloads import agent_state, agent_step, words
from statebag.repository import Config

STATE_BYTES = 100_000_000
CHAIN = "main"
INLINE_MAX = Config().inline_max  # shorter encodings stay in the fields table, uncut
ZSTD_LEVEL = 3
DURABLE_FILE_BYTES = 4096


# ---------------------------------------------------------------------------------------------
# Data and helpers (untimed)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateData:
    """The ~100 MB state with its encodings and chunks, as the engine would cut them."""

    state: dict[str, Any]
    encodings: dict[str, bytes]  # codec.encode of every field
    chunks: list[memoryview]  # bodies of the fields of at least INLINE_MAX bytes, cut
    digests: list[bytes]  # BLAKE3 of every chunk

    @property
    def total(self) -> int:
        """The state's total encoded bytes: the data size of every throughput here."""
        return sum(map(len, self.encodings.values()))

    @property
    def largest(self) -> str:
        return max(self.encodings, key=lambda name: (len(self.encodings[name]), name))


@pytest.fixture(scope="session")
def state100() -> StateData:
    state = make_state(scaled(STATE_BYTES))
    encodings = {name: codec.encode(value) for name, value in state.items()}
    chunker = statebag.Chunker()
    chunks: list[memoryview] = []
    digests: list[bytes] = []
    for encoded in encodings.values():
        if len(encoded) < INLINE_MAX:
            continue
        body = memoryview(encoded)[dag.head_length(encoded) :]
        offsets, found = chunker.cut_and_hash(body)
        chunks += [body[start:end] for start, end in itertools.pairwise([0, *offsets])]
        digests += found
    return StateData(state, encodings, chunks, digests)


@pytest.fixture
def rbench(bench_on: Callable[[str, int], Bench], state100: StateData) -> Bench:
    """The ``benchmark`` fixture bound to the repository data set."""
    return bench_on(REPO_DATASET, state100.total)


@pytest.fixture(scope="module")
def saved(workspace: Path, state100: StateData) -> Iterator[tuple[Path, str]]:
    """A repository holding the state (saved once, untimed): its directory and version id."""
    repos = Scratch(workspace)
    result = repos.new().save(CHAIN, state100.state)
    repos.close()
    yield repos.dirs[0], result.manifest_id
    repos.clear()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    """The two threads of the references."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-ref") as executor:
        yield executor


@pytest.fixture(scope="module")
def frames(state100: StateData) -> list[bytes]:
    """Every chunk compressed with zstd level 3 (serially, untimed)."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return [compressor.compress(chunk) for chunk in state100.chunks]


def _halves(sizes: Sequence[int]) -> int:
    """Where to split items of these sizes into two runs of about equal bytes."""
    half = sum(sizes) / 2
    for index, total in enumerate(itertools.accumulate(sizes)):
        if total >= half:
            return index + 1
    return len(sizes)


def _median_stages(commits: Sequence[CommitResult]) -> dict[str, float]:
    """CommitResult.timings, each stage's median over the rounds (seconds)."""
    names = list(dict.fromkeys(name for commit in commits for name in commit.timings))
    return {name: statistics.median(c.timings.get(name, 0.0) for c in commits) for name in names}


# ---------------------------------------------------------------------------------------------
# repository: a fresh save, and its references
# ---------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="repository")
def test_fresh_save(rbench: Bench, state100: StateData, scratch: Scratch) -> None:
    state = state100.state
    commits: list[CommitResult] = []

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        scratch.clear()  # the previous round's repository
        return (scratch.new(),), {}

    def save(repo: Repository) -> CommitResult:
        result = repo.save(CHAIN, state)
        commits.append(result)
        return result

    result = rbench.run(save, setup=setup)

    repo = scratch.repos[-1]
    assert result.seq == 1 and result.parent is None
    assert result.bytes_logical == state100.total
    assert result.nodes_written >= len(set(state100.digests))
    assert repo.stats().bytes_stored == result.bytes_new_stored
    names = [state100.largest, min(state100.encodings)]
    assert repo.load(result.manifest_id, fields=names) == {name: state[name] for name in names}
    rbench.record(
        "fresh_save",
        state100.total,
        fields=len(state),
        chunks=len(state100.chunks),
        nodes_written=result.nodes_written,
        bytes_new_stored=result.bytes_new_stored,
        stored_ratio=round(result.bytes_new_stored / state100.total, 4),
        requests=result.requests,
    )
    rbench.stages("fresh_save", _median_stages(commits))


@pytest.mark.benchmark(group="repository")
def test_ref_zstd_2threads(
    rbench: Bench, state100: StateData, pool: ThreadPoolExecutor, frames: list[bytes]
) -> None:
    chunks = state100.chunks
    cut = _halves([len(chunk) for chunk in chunks])
    halves = (chunks[:cut], chunks[cut:])
    compressors = [zstandard.ZstdCompressor(level=ZSTD_LEVEL) for _ in halves]

    def compress_half(index: int) -> list[bytes]:
        compress = compressors[index].compress
        return [compress(chunk) for chunk in halves[index]]

    def compress_all() -> list[bytes]:
        futures = [pool.submit(compress_half, index) for index in range(len(halves))]
        return [frame for future in futures for frame in future.result()]

    result = rbench.run(compress_all)

    assert result == frames
    rbench.record(
        "ref_zstd_2threads",
        state100.total,
        level=ZSTD_LEVEL,
        chunks=len(chunks),
        chunk_bytes=sum(map(len, chunks)),
        compressed_bytes=sum(map(len, result)),
    )


@pytest.mark.benchmark(group="repository")
def test_ref_durable_commit(rbench: Bench, workspace: Path) -> None:
    """The durable-commit floor: one fsync'd small file published by rename, one SQLite commit."""
    folder = Path(tempfile.mkdtemp(prefix="durable-", dir=workspace))
    final, temp = folder / "head", folder / "head.tmp"
    payload = random.Random(SEED).randbytes(DURABLE_FILE_BYTES)
    db = sqlite3.connect(folder / "meta.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        rounds = itertools.count(1)

        def setup() -> tuple[tuple[int], dict[str, Any]]:
            return (next(rounds),), {}

        def durable_commit(round_: int) -> None:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO kv VALUES (?, ?)", (f"round/{round_}", payload[:64]))
            db.execute("COMMIT")

        rbench.run(durable_commit, setup=setup)

        assert final.read_bytes() == payload
        (count,) = db.execute("SELECT count(*) FROM kv").fetchone()
        assert count == next(rounds) - 1
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"
    finally:
        db.close()
        shutil.rmtree(folder, ignore_errors=True)
    rbench.record("ref_durable_commit", DURABLE_FILE_BYTES, fsyncs=2, sqlite_commits=1)


# ---------------------------------------------------------------------------------------------
# repository: deltas, and the reference of the unhinted one
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """The 1% change of the delta benchmarks: two fields of 200, of two kinds."""

    records: str  # a record appended, and one in the middle edited
    text: str  # a span in the middle rewritten

    @property
    def names(self) -> list[str]:
        return [self.records, self.text]

    @classmethod
    def pick(cls, data: StateData) -> Change:
        """The records field and the text field of median size (deterministic)."""

        def median_field(kind: str) -> str:
            names = sorted(
                (name for name in data.encodings if name.startswith(f"{kind}_")),
                key=lambda name: (len(data.encodings[name]), name),
            )
            return names[len(names) // 2]

        return cls(records=median_field("records"), text=median_field("text"))

    def apply(self, work: dict[str, Any], round_: int) -> None:
        """Change ``work`` (a shallow copy of the state) for round ``round_``, in new objects.

        Rounds build on each other, as successive versions do; both delta benchmarks apply
        the same changes in the same order.
        """
        rng = random.Random(round_)
        records = list(work[self.records])
        middle = len(records) // 2
        records[middle] = {
            **records[middle],
            "text": f"{records[middle]['text']} (revised in round {round_})",
            "score": rng.random(),
        }
        records.append(
            {
                "role": "assistant",
                "text": words(rng, rng.randint(50, 300)),
                "score": rng.random(),
                "tags": ["delta", f"round-{round_}"],
            }
        )
        work[self.records] = records
        text: str = work[self.text]
        middle = len(text) // 2
        work[self.text] = (
            f"{text[:middle]} [round {round_}: {words(rng, 12)}] {text[middle + 80 :]}"
        )


def _bench_delta(
    rbench: Bench, data: StateData, scratch: Scratch, *, hinted: bool, name: str
) -> None:
    change = Change.pick(data)
    repo = scratch.new()
    base = repo.save(CHAIN, data.state)  # untimed: the repository already holds the state
    work = dict(data.state)
    rounds = itertools.count(1)
    changed = change.names if hinted else None
    commits: list[CommitResult] = []

    def setup() -> None:
        change.apply(work, next(rounds))

    def save() -> CommitResult:
        result = repo.save(CHAIN, work, changed=changed)
        commits.append(result)
        return result

    result = rbench.run(save, setup=setup)

    assert result.seq == base.seq + len(commits)
    # Exactly the two changed fields differ from the base version, whether hinted or found.
    diff = repo.diff(base.manifest_id, result.manifest_id)
    assert sorted(diff.changed) == sorted(change.names)
    assert not diff.added and not diff.removed
    new_sizes = {field: len(codec.encode(work[field])) for field in change.names}
    old_bytes = sum(len(data.encodings[field]) for field in change.names)
    assert result.bytes_logical == data.total - old_bytes + sum(new_sizes.values())
    loaded = repo.load(result.manifest_id, fields=change.names)
    assert loaded == {field: work[field] for field in change.names}
    # Two small edits and an append rewrite a few chunks and index nodes, not the fields.
    assert 0 < result.nodes_written <= 24
    assert result.bytes_new_raw < sum(new_sizes.values())
    changed_bytes = sum(new_sizes.values())
    rbench.record(
        name,
        data.total,
        hinted=hinted,
        changed_fields=change.names,
        changed_bytes=changed_bytes,
        changed_share=round(changed_bytes / data.total, 4),
        nodes_written=result.nodes_written,
        bytes_new_raw=result.bytes_new_raw,
        bytes_new_stored=result.bytes_new_stored,
        requests=result.requests,
    )
    rbench.stages(name, _median_stages(commits))


@pytest.mark.benchmark(group="repository")
def test_delta_hinted(rbench: Bench, state100: StateData, scratch: Scratch) -> None:
    _bench_delta(rbench, state100, scratch, hinted=True, name="delta_hinted")


@pytest.mark.benchmark(group="repository")
def test_delta_unhinted(rbench: Bench, state100: StateData, scratch: Scratch) -> None:
    _bench_delta(rbench, state100, scratch, hinted=False, name="delta_unhinted")


@pytest.mark.benchmark(group="repository")
def test_ref_encode_cut_hash(rbench: Bench, state100: StateData) -> None:
    encoder = msgspec.msgpack.Encoder(order="deterministic")
    chunker = statebag.Chunker()
    values = list(state100.state.values())

    def encode_cut_hash() -> list[tuple[bytes, list[bytes]]]:
        out: list[tuple[bytes, list[bytes]]] = []
        for value in values:
            encoded = encoder.encode(value)
            digests: list[bytes] = []
            if len(encoded) >= INLINE_MAX:  # as the engine: only tree fields are cut
                body = memoryview(encoded)[dag.head_length(encoded) :]
                _, digests = chunker.cut_and_hash(body, threads=2)
            out.append((encoded, digests))
        return out

    result = rbench.run(encode_cut_hash)

    assert [encoded for encoded, _ in result] == list(state100.encodings.values())
    assert [digest for _, digests in result for digest in digests] == state100.digests
    rbench.record("ref_encode_cut_hash", state100.total, threads=2)


# ---------------------------------------------------------------------------------------------
# repository: loads (each round on a Repository opened afresh, so no in-process cache helps),
# and their references
# ---------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="repository")
def test_load_latest(
    rbench: Bench, state100: StateData, saved: tuple[Path, str], scratch: Scratch
) -> None:
    path, manifest_id = saved

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        scratch.close()
        return (scratch.open(path),), {}

    loaded = rbench.run(lambda repo: repo.load_latest(CHAIN), setup=setup)

    assert scratch.repos[-1].head(CHAIN) == manifest_id
    assert list(loaded) == sorted(state100.state)
    assert loaded == state100.state
    rbench.record("load_latest", state100.total, fields=len(loaded))


@pytest.mark.benchmark(group="repository")
def test_ref_unzstd_2threads(
    rbench: Bench, state100: StateData, pool: ThreadPoolExecutor, frames: list[bytes]
) -> None:
    cut = _halves([len(frame) for frame in frames])
    halves = (frames[:cut], frames[cut:])
    decompressors = [zstandard.ZstdDecompressor() for _ in halves]

    def decompress_half(index: int) -> list[bytes]:
        decompress = decompressors[index].decompress
        return [decompress(frame) for frame in halves[index]]

    def decompress_all() -> list[bytes]:
        futures = [pool.submit(decompress_half, index) for index in range(len(halves))]
        return [raw for future in futures for raw in future.result()]

    result = rbench.run(decompress_all)

    assert len(result) == len(state100.chunks)
    assert b"".join(result) == b"".join(state100.chunks)
    rbench.record("ref_unzstd_2threads", state100.total, frames=len(frames))


@pytest.mark.benchmark(group="repository")
def test_ref_decode(rbench: Bench, state100: StateData) -> None:
    decoder = msgspec.msgpack.Decoder()
    encodings = list(state100.encodings.items())

    result = rbench.run(lambda: {name: decoder.decode(encoded) for name, encoded in encodings})

    assert result == state100.state
    rbench.record("ref_decode", state100.total)


@pytest.mark.benchmark(group="repository")
def test_lazy_one_field(
    rbench: Bench, state100: StateData, saved: tuple[Path, str], scratch: Scratch
) -> None:
    path, manifest_id = saved
    name = state100.largest

    def setup() -> tuple[tuple[Repository], dict[str, Any]]:
        scratch.close()
        return (scratch.open(path),), {}

    def load_one(repo: Repository) -> Any:
        return repo.load(manifest_id, lazy=True)[name]

    value = rbench.run(load_one, setup=setup)

    assert value == state100.state[name]
    size = len(state100.encodings[name])
    rbench.record("lazy_one_field", size, field=name, field_share=round(size / state100.total, 4))


# ---------------------------------------------------------------------------------------------
# agent: a simulated agent thread
# ---------------------------------------------------------------------------------------------

AGENT_STEPS = max(60, round(300 * SCALE))
AGENT_CHAIN = "thread"
ATTACHMENT_MIN = max(64 * 1024, scaled(1 * MIB))
ATTACHMENT_MAX = max(2 * ATTACHMENT_MIN, scaled(8 * MIB))
FRESH_EVERY = 30  # steps 30, 60, ... and the last: also saved fresh into an empty repository


@dataclass
class AgentRun:
    saves: list[CommitResult]  # step 0 (the first, full save) to the last step
    seconds: list[float]  # save time of steps 1..N
    attachment_steps: set[int]
    fresh_seconds: list[float]
    fresh_saves: list[CommitResult]
    bag: StateBag


def _simulate(scratch: Scratch) -> AgentRun:
    rng = random.Random(SEED)
    repo = scratch.new()
    initial = agent_state(rng, attachment_min=ATTACHMENT_MIN, attachment_max=ATTACHMENT_MAX)
    first = repo.save(AGENT_CHAIN, initial)
    bag = repo.load_bag(AGENT_CHAIN)
    run = AgentRun([first], [], set(), [], [], bag)
    for step in range(1, AGENT_STEPS + 1):
        if agent_step(bag, rng, step, attachment_max=ATTACHMENT_MAX):
            run.attachment_steps.add(step)
        started = time.perf_counter()
        run.saves.append(repo.save(AGENT_CHAIN, bag))
        run.seconds.append(time.perf_counter() - started)
        if step % FRESH_EVERY == 0 or step == AGENT_STEPS:
            fresh = Scratch(scratch.root)
            empty = fresh.new()
            state = dict(bag.data)
            started = time.perf_counter()
            run.fresh_saves.append(empty.save(AGENT_CHAIN, state))
            run.fresh_seconds.append(time.perf_counter() - started)
            fresh.clear()
    return run


@pytest.mark.benchmark(group="agent")
def test_agent_thread(bench_on: Callable[[str, int], Bench], scratch: Scratch) -> None:
    """One round of the whole simulation; the figures come from inside it."""
    run: AgentRun = bench_on(AGENT_DATASET, 0).run(lambda: _simulate(scratch), rounds=1)

    repo, saves = scratch.repos[0], run.saves
    assert [save.seq for save in saves] == list(range(1, AGENT_STEPS + 2))
    assert not run.bag.dirty and run.bag.base == saves[-1].manifest_id
    assert repo.load_latest(AGENT_CHAIN) == dict(run.bag.data)
    # Every step changed what it touched, and the hints carried the rest over.
    for step in range(1, AGENT_STEPS + 1):
        diff = repo.diff(saves[step - 1].manifest_id, saves[step].manifest_id)
        expected = {"messages", "scratch"}
        if step in run.attachment_steps:
            expected.add("attachment")
        assert set(diff.changed) == expected, step
    report = repo.verify(read_data=0.05)
    assert report.ok, report.problems

    logical = sum(save.bytes_logical for save in saves)
    stored = repo.stats().bytes_stored
    edit_steps = sorted(run.attachment_steps)
    quiet = [s for step, s in enumerate(run.seconds, 1) if step not in run.attachment_steps]
    edits = [run.seconds[step - 1] for step in edit_steps]
    fresh = statistics.median(run.fresh_seconds)
    final = saves[-1]
    bench = bench_on(AGENT_DATASET, final.bytes_logical)  # the last state's size, now known
    bench.figures(
        steps=AGENT_STEPS,
        bytes_logical_sum=logical,
        bytes_stored=stored,
        dedup_ratio=logical / stored,
        p50_s=percentile(quiet, 50),
        p99_s=percentile(quiet, 99),
        attachment_edit_p50_s=percentile(edits, 50),
        fresh_median_s=fresh,
        fresh_samples=len(run.fresh_seconds),
        final_state_bytes=final.bytes_logical,
        attachment_bytes=len(run.bag["attachment"]),
        messages=len(run.bag["messages"]),
    )
    bench.record("agent_thread", logical, saves=len(saves), attachment_edits=len(edits))
    quiet_saves = [save for step, save in enumerate(saves) if step and step not in edit_steps]
    bench.stages("step without attachment edit", _median_stages(quiet_saves))
    bench.stages("step with attachment edit", _median_stages([saves[step] for step in edit_steps]))
    bench.stages("fresh save of a step's state", _median_stages(run.fresh_saves))
