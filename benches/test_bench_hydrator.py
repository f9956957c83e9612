"""The claim-check hydrator over a 20-segment workflow, against the seed documents' claim.

Group ``hydrator``. A workflow execution runs 20 segments; each is a Lambda step that gets
the previous step's payload, hydrates it (``Hydrator.hydrate``), changes the state, and
dehydrates it (``Hydrator.dehydrate``) into the payload for the next step, under the Step
Functions limit of 256 KiB. The repository is the embedded default (local packs + SQLite,
fsync on) in a temporary directory.

The state (2.2 MB encoded at the start, 4.4 MB after 20 segments, at scale 1;
``STATEBAG_BENCH_SCALE`` scales the document and the attachments): hot
routing fields; a message history of about 100 KB that grows by one ~2 KB message per
step; a 2 MB document edited every fifth step; 30 scratch fields of 2-8 KB (warm: batched),
two of them rewritten per step; a 500 KB attachment added every fifth step; small flags.

- ``workflow_20_segments``: the whole execution (20 hydrates + 20 dehydrates). Its
  ``extra_info`` has the object-store requests per segment and per execution, bytes, and the
  median time of each call, next to the seed documents' claim that batching took an
  execution from 500 PUTs to 100 (25 -> 5 per segment).
- ``dehydrate_segment`` / ``hydrate_segment`` / ``hydrate_lazy_hot``: one call of a
  mid-workflow segment (a lazy hydrate that reads the hot fields only costs no request).

CI runs this with ``--benchmark-disable``: each runs once, untimed, and still asserts.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from conftest import ROUNDS, scaled
from statebag.hydrator import POINTER_KEY, Hydrator

SEGMENTS = 20
LIMIT = 262_144
CHAIN = "exec-bench"
SEED_PUTS_BEFORE = 500  # per execution, the seed documents' figure without batching
SEED_PUTS_AFTER = 100  # per execution, with their hot/warm/cold batching
HOT = ("execution_id", "step", "route")


def initial_state() -> dict[str, Any]:
    rng = random.Random(5)
    words = ("agent", "tool", "call", "result", "plan", "state", "memory", "step", "model")

    def text(chars: int) -> str:
        out = " ".join(rng.choice(words) for _ in range(chars // 6 + 1))
        return out[:chars]

    state: dict[str, Any] = {
        "execution_id": CHAIN,
        "step": 0,
        "route": "start",
        "flags": {"retries": 0, "dry_run": False},
        "messages": [{"role": "user", "text": text(2000), "n": i} for i in range(50)],
        "document": text(scaled(2_000_000)),
    }
    for index in range(30):
        state[f"scratch_{index:02d}"] = {"notes": text(rng.randint(2000, 8000)), "i": index}
    return state


def step(state: dict[str, Any], segment: int) -> dict[str, Any]:
    """What one Lambda segment changes (deterministic)."""
    rng = random.Random(segment)
    state = dict(state)
    state["step"] = segment
    state["route"] = f"segment-{segment}"
    state["messages"] = [
        *state["messages"],
        {"role": "assistant", "text": f"answer {segment} " * 150, "n": segment},
    ]
    for index in rng.sample(range(30), 2):
        state[f"scratch_{index:02d}"] = {"notes": f"rewritten at {segment} " * 300, "i": index}
    if segment % 5 == 0:
        document = state["document"]
        cut = len(document) * segment // SEGMENTS
        state["document"] = document[:cut] + f" [edit {segment}] " + document[cut + 20 :]
        state[f"attachment_{segment:02d}"] = random.Random(segment).randbytes(scaled(500_000))
    return state


class Scratch:
    """Embedded repositories in fresh temporary directories, deleted at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-hydrator-"))
        self.repos: list[statebag.Repository] = []

    def new(self) -> statebag.Repository:
        repo = statebag.open(str(Path(tempfile.mkdtemp(dir=self.root)) / "repo"))
        self.repos.append(repo)
        return repo

    def close(self) -> None:
        for repo in self.repos:
            repo.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    place = Scratch()
    yield place
    place.close()


def run_workflow(hydrator: Hydrator, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the segments; one record of costs per segment."""
    payload = json.loads(json.dumps(hydrator.dehydrate(state, CHAIN)))
    records = []
    for segment in range(1, SEGMENTS + 1):
        current = hydrator.hydrate(payload)
        hydrated = hydrator.stats
        assert isinstance(current, dict) and current["step"] == segment - 1
        state = step(current, segment)
        payload = hydrator.dehydrate(state, CHAIN)
        dehydrated = hydrator.stats
        text = json.dumps(payload)
        assert len(text) <= LIMIT
        payload = json.loads(text)
        records.append(
            {
                "hydrate_s": hydrated.seconds,
                "hydrate_gets": hydrated.gets,
                "hydrate_requests": hydrated.requests,
                "bytes_read": hydrated.bytes_read,
                "dehydrate_s": dehydrated.seconds,
                "dehydrate_puts": dehydrated.puts,
                "dehydrate_requests": dehydrated.requests,
                "bytes_written": dehydrated.bytes_written,
                "payload_bytes": len(text),
            }
        )
    assert hydrator.hydrate(payload) == state
    return records


@pytest.mark.benchmark(group="hydrator")
def test_workflow_20_segments(benchmark: Any, scratch: Scratch) -> None:
    state = initial_state()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (Hydrator(scratch.new(), limit=LIMIT, hot=HOT),), {}

    records = benchmark.pedantic(
        lambda hydrator: run_workflow(hydrator, state),
        setup=setup,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=0,
    )
    assert len(records) == SEGMENTS
    final = state
    for segment in range(1, SEGMENTS + 1):
        final = step(final, segment)

    def total(key: str) -> int:
        return sum(record[key] for record in records)

    puts = total("dehydrate_puts")
    requests = total("hydrate_requests") + total("dehydrate_requests")
    benchmark.extra_info.update(
        {
            "segments": SEGMENTS,
            "state_bytes_start": len(statebag.codec.encode(state)),
            "state_bytes_end": len(statebag.codec.encode(final)),
            "puts_per_execution": puts,
            "puts_per_segment": puts / SEGMENTS,
            "gets_per_segment": total("hydrate_gets") / SEGMENTS,
            "requests_per_segment": requests / SEGMENTS,
            "requests_per_execution": requests,
            "seed_puts_per_execution": {"before": SEED_PUTS_BEFORE, "after": SEED_PUTS_AFTER},
            "bytes_written_per_segment": total("bytes_written") // SEGMENTS,
            "bytes_read_per_segment": total("bytes_read") // SEGMENTS,
            "dehydrate_ms_median": statistics.median(r["dehydrate_s"] for r in records) * 1e3,
            "hydrate_ms_median": statistics.median(r["hydrate_s"] for r in records) * 1e3,
            "payload_bytes_max": max(r["payload_bytes"] for r in records),
        }
    )
    # One pack per dehydrate at most: never more PUTs than segments.
    assert puts <= SEGMENTS and puts < SEED_PUTS_AFTER


def _mid_workflow(scratch: Scratch) -> tuple[Hydrator, dict[str, Any], dict[str, Any]]:
    hydrator = Hydrator(scratch.new(), limit=LIMIT, hot=HOT)
    state = initial_state()
    for segment in range(1, SEGMENTS // 2 + 1):
        state = step(state, segment)
        payload = hydrator.dehydrate(state, CHAIN)
    return hydrator, state, json.loads(json.dumps(payload))


@pytest.mark.benchmark(group="hydrator")
def test_dehydrate_segment(benchmark: Any, scratch: Scratch) -> None:
    hydrator, state, _ = _mid_workflow(scratch)
    counter = iter(range(SEGMENTS // 2 + 1, 10**6))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (step(state, next(counter)),), {}

    payload = benchmark.pedantic(
        lambda changed: hydrator.dehydrate(changed, CHAIN),
        setup=setup,
        rounds=max(ROUNDS, 5),
        iterations=1,
        warmup_rounds=0,
    )
    assert len(json.dumps(payload)) <= LIMIT
    benchmark.extra_info.update(
        {"puts": hydrator.stats.puts, "bytes_written": hydrator.stats.bytes_written}
    )


@pytest.mark.benchmark(group="hydrator")
def test_hydrate_segment(benchmark: Any, scratch: Scratch) -> None:
    hydrator, state, payload = _mid_workflow(scratch)
    result = benchmark.pedantic(
        hydrator.hydrate, args=(payload,), rounds=max(ROUNDS, 5), iterations=1, warmup_rounds=0
    )
    assert result == state
    benchmark.extra_info.update(
        {"gets": hydrator.stats.gets, "bytes_read": hydrator.stats.bytes_read}
    )


@pytest.mark.benchmark(group="hydrator")
def test_hydrate_lazy_hot(benchmark: Any, scratch: Scratch) -> None:
    hydrator, state, payload = _mid_workflow(scratch)
    before = hydrator.repo.io_counters()

    def lazy_route() -> Any:
        return hydrator.hydrate(payload, lazy=True)["route"]

    started = time.perf_counter()
    route = benchmark.pedantic(lazy_route, rounds=max(ROUNDS, 5), iterations=1, warmup_rounds=0)
    assert route == state["route"]
    assert (hydrator.repo.io_counters() - before).requests == 0
    benchmark.extra_info["seconds_all_rounds"] = time.perf_counter() - started
    assert POINTER_KEY in payload
