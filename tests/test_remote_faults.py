"""Saves, gc and audit racing on a metadata store that fails the three ways a remote one does.

The store is wrapped in :class:`statebag.testing.FaultyMetaStore`: a write may apply and
then raise ``OutcomeUnknown``, raise it and apply nothing, raise it and land later (before
some later write), or fail definitely. Four writers save an agent workload on four chains
while gc (grace 0) and audit (with repair) run in loops. Afterwards the faults stop, every
deferred write lands, the lease passes and gc runs: every save that returned an id loads to
what it saved, every head loads, and audit and verify are clean.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag.meta import MetaStore
from statebag.meta.memory import MemoryMetaStore
from statebag.meta.sqlite import SQLiteMetaStore
from statebag.objects.memory import MemoryObjectStore
from statebag.testing import FaultyMetaStore

LEASE = 1.0
WRITERS = 4
STEPS = 20


def _agent_state(rng: random.Random, state: dict[str, Any], step: int) -> dict[str, Any]:
    """One step of an agent loop: a message appended, a scratchpad rewritten, counters."""
    messages = [*state.get("messages", []), {"role": "tool", "text": rng.randbytes(600).hex()}]
    return {
        "messages": messages,
        "scratch": rng.randbytes(rng.choice([100, 5_000, 40_000])),
        "step": step,
        "tools": {f"t{i}": rng.random() for i in range(rng.randint(1, 30))},
    }


STORES: dict[str, Callable[[Path], MetaStore]] = {
    "memory-batch25": lambda _: MemoryMetaStore(max_batch=25),
    "sqlite": lambda path: SQLiteMetaStore(path / "meta.sqlite", synchronous="OFF"),
    "sqlite-batch25": lambda path: SQLiteMetaStore(
        path / "meta.sqlite", synchronous="OFF", max_batch=25
    ),
}


@pytest.fixture(params=sorted(STORES))
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyMetaStore]:
    inner = STORES[request.param](tmp_path)
    store = FaultyMetaStore(inner, seed=7, rate=0.1)
    yield store
    inner.close()


def test_racing_saves_gc_and_audit_under_faults_lose_nothing(faulty: FaultyMetaStore) -> None:
    objects = MemoryObjectStore()
    repo = statebag.open(objects=objects, meta=faulty, create=True, lease=LEASE)
    saved: dict[str, dict[str, Any]] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(i: int) -> None:
        rng = random.Random(i)
        state: dict[str, Any] = {}
        for step in range(STEPS):
            state = _agent_state(rng, state, step)
            try:
                result = repo.save(f"agent-{i}", state)
            except (statebag.BackendError, statebag.ConflictError):
                continue  # unknown outcome, conflict with a late landing, rolled back
            with lock:
                saved[result.manifest_id] = state

    def loop(action: Callable[[], object]) -> None:
        while not stop.is_set():
            try:
                action()
            except (statebag.BackendError, statebag.ConflictError):
                pass  # a fault, or the repository changing under an audit
            except BaseException as exc:  # anything else is a bug: report it
                failures.append(exc)
                return

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    helpers = [
        threading.Thread(target=loop, args=(lambda: repo.gc(grace=0),)),
        threading.Thread(target=loop, args=(lambda: repo.audit(repair=True),)),
    ]
    for thread in [*writers, *helpers]:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    stop.set()
    for thread in helpers:
        thread.join(timeout=300)
    assert not failures, failures
    injected = faulty.injected()
    assert sum(injected[kind] for kind in ("applied_then_unknown", "unknown_before", "deferred")), (
        "the run injected no uncertain outcome: it tests nothing"
    )
    assert saved, "no save returned: the run tests nothing"

    # Heal: every deferred write lands, the lease passes, gc rolls back what was left.
    faulty.faults_off()
    faulty.land_deferred()
    time.sleep(LEASE * 1.5)
    repo.gc(grace=0)
    repo.gc(grace=0)

    for manifest_id, state in saved.items():
        assert repo.load(manifest_id) == state, manifest_id
    for chain in repo.chains():
        head = repo.head(chain)
        assert head is not None
        repo.load(head)
        assert repo.verify(head).ok, chain
    report = repo.audit()
    assert report.ok, report
    assert not report.in_flight and not report.unswept, report
    repo.close()
