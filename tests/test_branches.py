"""Parallel branches: 16 forks saving at once (in threads, and in processes), merged back.

Each branch appends to its own list field and counts its own steps, while the parent's other
fields stay untouched; after the branches the parent changes a field of its own, then merges
all 16 at once. The merged state must equal the plain-Python model, every version must verify
and the audit must be ok. A merge racing a branch or target save either raises ConflictError
or includes the new head: a committed step is never silently dropped.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConflictError

from . import internals
from .repohelp import KINDS, open_repo, recount, same, stored_counts

BRANCHES = 16
STEPS = 10
TARGET = "exec"

# One branch's work, shared by the threads and the worker processes (exec'd in both).
BRANCH = r"""
import random

def item(index, step):
    rng = random.Random(index * 1000 + step)
    words = " ".join(rng.choice(["tool", "call", "result", "plan", "agent"]) for _ in range(40))
    return f"branch {index} step {step}: {words}"

def start_branch(repo, target, index):
    # Fork branch `index` from target's head: (fork point, its state, the saved ids).
    fork_point = repo.fork(target, f"{target}/branch-{index}")
    return fork_point, dict(repo.load_latest(f"{target}/branch-{index}")), []

def step_branch(repo, target, index, branch, step):
    # Save step `step` of branch `index`: append to its list, count, carry the rest over.
    fork_point, state, ids = branch
    state[f"items_{index}"] = [*state.get(f"items_{index}", []), item(index, step)]
    state[f"count_{index}"] = step + 1
    changed = [f"items_{index}", f"count_{index}"] if index % 2 else None
    parent = ids[-1] if ids else fork_point
    result = repo.save(f"{target}/branch-{index}", state, parent=parent, changed=changed)
    assert result.parent == parent
    ids.append(result.manifest_id)

def run_branch(repo, target, index, steps):
    branch = start_branch(repo, target, index)
    for step in range(steps):
        step_branch(repo, target, index, branch, step)
    return branch[0], branch[2]
"""
namespace: dict[str, Any] = {}
exec(BRANCH, namespace)
item = namespace["item"]
run_branch = namespace["run_branch"]


def base_states() -> list[dict[str, Any]]:
    rng = random.Random(16)
    first = {
        "blob": rng.randbytes(150_000),
        "config": {"model": "m", "tools": ["search", "code"], "limits": {"steps": 10}},
        "history": [f"message {i} " + "x" * (i % 30) for i in range(300)],
        "status": "starting",
    }
    return [first, {**first, "status": "running"}]


def prepare(repo: statebag.Repository) -> str:
    """The parent chain; returns its head, the fork point."""
    for state in base_states():
        head = repo.save(TARGET, state).manifest_id
    return head


def model() -> dict[str, Any]:
    expected = {**base_states()[-1], "status": "merging"}
    for index in range(BRANCHES):
        expected[f"items_{index}"] = [item(index, step) for step in range(STEPS)]
        expected[f"count_{index}"] = STEPS
    return expected


def merge_and_check(
    repo: statebag.Repository, fork_point: str, saved: dict[int, tuple[str, list[str]]]
) -> None:
    assert sorted(saved) == list(range(BRANCHES))
    target_head = repo.save(TARGET, {**base_states()[-1], "status": "merging"}).manifest_id
    names = [f"{TARGET}/branch-{index}" for index in range(BRANCHES)]
    for index, name in enumerate(names):
        point, ids = saved[index]
        assert point == fork_point
        assert len(ids) == STEPS
        assert repo.head(name) == ids[-1]
        history = [info.manifest_id for info in repo.log(name)]
        assert history[:STEPS] == ids[::-1]
        assert history[STEPS] == fork_point
    result = repo.merge(TARGET, names, strategy="three_way")
    heads = [target_head, *(saved[index][1][-1] for index in range(BRANCHES))]
    assert result.parents == heads
    assert [repo.head(name) for name in names] == heads[1:]
    assert repo.head(TARGET) == result.manifest_id
    assert repo.info(result.manifest_id).parents == heads
    same(model(), repo.load(result.manifest_id))
    assert repo.load_latest(TARGET) == model()

    total = len(base_states()) + BRANCHES * STEPS + 2
    graph = list(repo.log(TARGET, graph=True))
    assert len(graph) == total
    assert len({info.manifest_id for info in graph}) == total
    seqs = [info.seq for info in graph]
    assert seqs == sorted(seqs, reverse=True)
    assert graph[0].manifest_id == result.manifest_id
    assert graph[0].seq == len(base_states()) + STEPS + 1

    report = repo.verify()
    assert report.ok, report.problems
    assert report.manifests == total == repo.stats().manifests
    audit = repo.audit()
    assert audit.ok, audit
    assert not audit.under_counted and not audit.over_counted, audit
    assert not audit.missing_nodes and not audit.broken_chains and not audit.unswept, audit
    assert not audit.orphan_packs and not audit.in_flight, audit
    counts, reached = recount(repo)
    assert stored_counts(repo) == counts
    assert repo.stats().nodes == len(reached)
    assert list(internals.meta(repo).scan("pending/")) == []


@pytest.fixture(params=KINDS)
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    with open_repo(request.param, tmp_path, fsync=False) as repository:
        yield repository


def test_sixteen_branches_in_threads_merge_to_the_model(any_repo: statebag.Repository) -> None:
    fork_point = prepare(any_repo)
    barrier = threading.Barrier(BRANCHES)
    saved: dict[int, tuple[str, list[str]]] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            saved[index] = run_branch(any_repo, TARGET, index, STEPS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(BRANCHES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    merge_and_check(any_repo, fork_point, saved)


WORKER = (
    BRANCH
    + r"""
import json, sys
import statebag

path, target, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
indexes = [int(x) for x in sys.argv[4].split(",")]
with statebag.open(path, fsync=False) as repo:
    # This process's branches, forked and then stepped in turn.
    branches = {index: start_branch(repo, target, index) for index in indexes}
    for step in range(steps):
        for index, branch in branches.items():
            step_branch(repo, target, index, branch, step)
print(json.dumps({index: [branch[0], branch[2]] for index, branch in branches.items()}))
"""
)


def test_sixteen_branches_in_four_processes_merge_to_the_model(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with statebag.open(path, fsync=False) as repo:
        fork_point = prepare(repo)
    owned = [",".join(str(i) for i in range(w, BRANCHES, 4)) for w in range(4)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), TARGET, str(STEPS), indexes],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for indexes in owned
    ]
    saved: dict[int, tuple[str, list[str]]] = {}
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err
            saved.update({int(k): (v[0], v[1]) for k, v in json.loads(out).items()})
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            worker.communicate()  # closes the pipes, whatever happened above
    with statebag.open(path, fsync=False) as repo:
        merge_and_check(repo, fork_point, saved)


# -- merges racing saves ----------------------------------------------------------------------


@pytest.mark.parametrize("moved", ["target", "branch-0", "branch-1"])
def test_a_save_landing_inside_a_merge_is_never_dropped(
    any_repo: statebag.Repository, moved: str
) -> None:
    """The conflict callable runs after the merge read the heads and before it commits: a
    save on one of the merged chains, committed from another thread right then, makes the
    merge raise ConflictError or be part of it; retrying merges it."""
    repo = any_repo
    names = ["t/branch-0", "t/branch-1"]
    repo.save("t", {"c": 0, "steps": {}})
    for name in names:
        repo.fork("t", name)
    repo.save("t", {"c": 1, "steps": {}})
    repo.save("t/branch-0", {"c": 2, "steps": {}})
    repo.save("t/branch-1", {"c": 0, "steps": {"branch-1": 1}})
    chain = "t" if moved == "target" else f"t/{moved}"
    racing: list[str] = []
    calls: list[str] = []

    def save_now() -> None:
        state = dict(repo.load_latest(chain))
        state["steps"] = {**state["steps"], f"raced-{moved}": True}
        racing.append(repo.save(chain, state).manifest_id)

    def resolver(field: str, base: Any, values: list[Any]) -> Any:
        calls.append(field)
        if len(calls) == 1:
            thread = threading.Thread(target=save_now)
            thread.start()
            thread.join(timeout=60)
            assert racing, "the racing save did not land while the merge was running"
        return max(values)

    before = repo.stats().manifests
    chains = ["t", *names]
    heads = [repo.head(name) for name in chains]
    attempt = "first merge"
    try:
        result = repo.merge("t", names, strategy="deep_merge", on_conflict=resolver)
    except ConflictError:
        attempt = "merge after ConflictError"
        assert repo.stats().manifests == before + 1  # only the racing save was written
        assert repo.head(chain) == racing[0]
        result = repo.merge("t", names, strategy="deep_merge", on_conflict=resolver)
    assert calls[0] == "c" and len(racing) == 1
    assert racing[0] in result.parents, (attempt, racing, result.parents)
    heads[chains.index(chain)] = racing[0]
    assert result.parents == heads
    assert repo.head("t") == result.manifest_id
    merged = repo.load(result.manifest_id)
    assert merged == {"c": 2, "steps": {"branch-1": 1, f"raced-{moved}": True}}
    assert repo.verify().ok
    assert repo.audit().ok


def test_merges_while_branches_save_include_every_step_committed_before(
    any_repo: statebag.Repository,
) -> None:
    """Savers on 4 branches and a merger in a loop (retrying on ConflictError): each merge
    includes, for every branch, at least the last step logged before the merge began; the
    final merge includes every branch's final head, and the state is the model's.

    The savers race the merger freely, except that every 10 steps they wait for one merge,
    so that mid-flight merges happen however the machine schedules the threads."""
    repo = any_repo
    repo.save("t", {"shared": "s" * 2000})
    count, steps, every = 4, 30, 10
    names = [f"t/b{i}" for i in range(count)]
    lock = threading.Lock()
    logged: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        repo.fork("t", name)
        logged[name].append(repo.save(name, {"shared": "s" * 2000, "start": name}).manifest_id)
    start = threading.Barrier(count + 1, timeout=120)
    checkpoint = threading.Barrier(count + 1, timeout=120)
    errors: list[BaseException] = []

    def saver(index: int) -> None:
        try:
            name = names[index]
            start.wait()
            for step in range(steps):
                state = {"shared": "s" * 2000, "start": name, f"log_{index}": list(range(step + 1))}
                result = repo.save(name, state)
                with lock:
                    logged[name].append(result.manifest_id)
                if step % every == every - 1 and step < steps - 1:
                    checkpoint.wait()  # the merger merges once, then lets every saver go on
                time.sleep(0.001)  # let the merger in between steps
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            checkpoint.abort()

    def merge_once(waited: bool) -> bool:
        with lock:
            seen = {name: ids[-1] for name, ids in logged.items()}
        try:
            result = repo.merge("t", names, strategy="last_wins")
        except ConflictError:
            assert not waited, "a merge conflicted while every saver was waiting"
            return False  # a branch moved while the merge ran: merge again
        merges.append((seen, result.parents))
        return True

    threads = [threading.Thread(target=saver, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    merges: list[tuple[dict[str, str], list[str]]] = []
    pauses = 0
    try:
        start.wait()
        while True:
            if checkpoint.n_waiting == count:
                assert merge_once(waited=True)
                pauses += 1
                checkpoint.wait()
                continue
            finished = not any(thread.is_alive() for thread in threads)
            with lock:
                moved = not merges or any(logged[n][-1] != merges[-1][0][n] for n in names)
            if not moved and not finished:
                time.sleep(0.001)  # nothing new to merge yet
                continue
            if merge_once(waited=False) and finished:
                break
    finally:
        checkpoint.abort()
        for thread in threads:
            thread.join(timeout=300)
    assert not errors, errors
    final = [logged[name][-1] for name in names]
    assert pauses == (steps - 1) // every and len(merges) > pauses
    assert any(parents[1:] != final for _, parents in merges), "no merge ran mid-flight"
    for seen, parents in merges:
        for name, parent in zip(names, parents[1:], strict=True):
            ids = logged[name]
            assert parent in ids, (name, parent)
            assert ids.index(parent) >= ids.index(seen[name]), (name, "a committed step dropped")
    final_seen, final_parents = merges[-1]
    assert final_parents[1:] == final == list(final_seen.values())
    assert [info.parents for info in repo.log("t")][: len(merges)] == [
        parents for _, parents in reversed(merges)
    ]
    expected: dict[str, Any] = {"shared": "s" * 2000, "start": names[-1]}
    expected.update({f"log_{i}": list(range(steps)) for i in range(count)})
    assert repo.load_latest("t") == expected
    assert repo.verify().ok
    audit = repo.audit()
    assert audit.ok and not audit.under_counted and not audit.over_counted, audit
