"""Fork and reset through the commit protocol, and what gc does with the versions a reset
leaves behind: collected after the grace period and never before, pinned ones kept."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConflictError, InvalidInputError, NotFoundError

from . import internals
from .test_gc import clean, state

HOUR = 3600.0


@pytest.fixture(params=["memory", "local"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    url = f"memory://{uuid.uuid4().hex}" if request.param == "memory" else str(tmp_path / "r")
    with statebag.open(url, fsync=False) as repository:
        yield repository


def chain_of(repo: statebag.Repository, chain: str, n: int, *, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [repo.save(chain, state(rng, step, big=4_000)).manifest_id for step in range(n)]


def age_marks(repo: statebag.Repository, seconds: float) -> int:
    """Move every "seen unreachable" mark ``seconds`` into the past (no sleeping)."""
    marks = list(internals.meta(repo).scan("orphan/"))
    for key, value in marks:
        then = int.from_bytes(value, "little") - int(seconds * 1e9)
        internals.meta(repo).put(key, then.to_bytes(8, "little"))
    return len(marks)


def exists(repo: statebag.Repository, manifest_id: str) -> bool:
    return internals.meta(repo).get(f"manifest/{manifest_id}") is not None


# -- fork ---------------------------------------------------------------------------------------


def test_fork_starts_a_chain_at_the_fork_point_without_writing(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "exec-1", 3)
    before = repo.stats()
    point = repo.fork("exec-1", "exec-1/branch-0")
    assert point == ids[-1] == repo.head("exec-1/branch-0")
    after = repo.stats()
    assert (after.manifests, after.nodes, after.packs) == (
        before.manifests,
        before.nodes,
        before.packs,
    )
    assert after.chains == before.chains + 1
    assert repo.load_latest("exec-1/branch-0") == repo.load(point)

    # From an id as well as from a chain name; the next save has the fork point as parent.
    assert repo.fork(ids[0], "exec-1/branch-1") == ids[0]
    result = repo.save("exec-1/branch-1", {"step": 99})
    assert result.parents == [ids[0]]
    assert result.seq == repo.info(ids[0]).seq + 1
    assert [info.manifest_id for info in repo.log("exec-1/branch-1")] == [
        result.manifest_id,
        ids[0],
    ]
    assert [info.chain for info in repo.log("exec-1/branch-1")] == ["exec-1/branch-1", "exec-1"]
    assert repo.head("exec-1") == ids[-1]  # the source chain did not move
    clean(repo.audit())


def test_fork_refuses_bad_names_existing_chains_and_missing_sources(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "a", 2)
    repo.fork("a", "b")
    before = repo.stats()
    with pytest.raises(ConflictError, match="'b' already exists"):
        repo.fork("a", "b")
    with pytest.raises(NotFoundError):
        repo.fork("nowhere", "c")
    with pytest.raises(NotFoundError):
        repo.fork("0" * 64, "c")
    looks_like_id = "ab" * 32
    with pytest.raises(InvalidInputError, match="looks like a manifest id") as info:
        repo.fork("a", looks_like_id)
    assert info.value.path == "new_chain"
    with pytest.raises(InvalidInputError, match="looks like a manifest id"):
        repo.save(looks_like_id, {"x": 1})
    with pytest.raises(InvalidInputError, match="looks like a manifest id"):
        repo.merge(looks_like_id, ["a"])
    assert repo.stats() == before
    assert repo.head("c") is None
    repo.delete(ids[0])
    with pytest.raises(NotFoundError, match="deleted"):
        repo.fork(ids[0], "c")


def test_a_fork_point_cannot_be_deleted_while_a_branch_heads_it(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "a", 3)
    repo.fork(ids[1], "b")
    with pytest.raises(ConflictError, match="forked"):
        repo.delete(ids[1])
    assert exists(repo, ids[1])
    repo.save("b", {"x": 1})  # b moves on: ids[1] is an ancestor now, no head
    repo.delete(ids[1])
    assert not exists(repo, ids[1])

    # delete_chain of a branch still at its fork point releases the fork point too.
    repo.fork(ids[0], "c")
    assert internals.meta(repo).counter(f"fork/{ids[0]}") == 1
    repo.delete_chain("c")
    assert internals.meta(repo).counter(f"fork/{ids[0]}") == 0
    repo.delete(ids[0])
    clean(repo.audit())


def test_audit_finds_and_repairs_a_lost_fork_count(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 2)
    repo.fork(ids[0], "b")
    internals.meta(repo).write([statebag.meta.Add(f"fork/{ids[0]}", -1)])
    report = repo.audit()
    assert not report.ok and f"fork:{ids[0]}" in report.under_counted
    assert repo.audit(repair=True).repaired >= 1
    clean(repo.audit())
    with pytest.raises(ConflictError):
        repo.delete(ids[0])


def test_save_new_chain_refuses_an_existing_chain(repo: statebag.Repository) -> None:
    first = repo.save("a", {"x": 1}, new_chain=True)
    with pytest.raises(ConflictError, match="already exists"):
        repo.save("a", {"x": 2}, new_chain=True)
    with pytest.raises(InvalidInputError) as info:
        repo.save("b", {"x": 2}, new_chain=True, parent=first.manifest_id)
    assert info.value.path == "new_chain"
    assert repo.head("a") == first.manifest_id and repo.head("b") is None


def test_two_first_saves_racing_never_stack_with_new_chain(tmp_path: Path) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)
    with statebag.open(tmp_path / "r", fsync=False) as repo:

        def first(n: int) -> None:
            barrier.wait()
            try:
                repo.save("fresh", {"writer": n}, new_chain=True)
                outcomes.append("saved")
            except ConflictError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=first, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes.count("saved") == 1 and outcomes.count("conflict") == 7
        assert [info.seq for info in repo.log("fresh")] == [1]


def test_fan_in_save_records_every_parent_and_checks_they_exist(
    repo: statebag.Repository,
) -> None:
    a = chain_of(repo, "a", 2)
    b = chain_of(repo, "b", 3, seed=1)
    result = repo.save("a", {"merged": True}, merged=[b[-1], b[0]])
    assert result.parents == [a[-1], b[-1], b[0]]
    assert repo.info(result.manifest_id).parents == result.parents
    assert result.seq == 4  # one more than the largest parent seq (b's head is at 3)
    with pytest.raises(InvalidInputError, match="again"):
        repo.save("a", {"x": 1}, merged=[result.manifest_id])
    with pytest.raises(InvalidInputError, match="twice"):
        repo.save("a", {"x": 1}, merged=[b[0], b[0]])
    repo.delete(b[1])
    with pytest.raises(NotFoundError, match="deleted"):
        repo.save("a", {"x": 1}, merged=[b[1]])
    assert repo.head("a") == result.manifest_id
    clean(repo.audit())


def test_fan_in_parent_deleted_before_the_commit_is_a_conflict(
    repo: statebag.Repository,
) -> None:
    chain_of(repo, "a", 1)
    b = chain_of(repo, "b", 3, seed=1)
    head_a = repo.head("a")
    stats = repo.stats()
    writer = internals.writer(repo)
    original = writer.write

    def delete_then_write(plan: Any) -> Any:
        repo.delete(b[1])  # lands between the read of the parent and the commit
        return original(plan)

    writer.write = delete_then_write  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match=f"parent version {b[1]}"):
        repo.save("a", {"big": "z" * 200_000}, merged=[b[1]])
    writer.write = original  # type: ignore[method-assign]
    assert repo.head("a") == head_a
    assert repo.stats().manifests == stats.manifests - 1
    report = repo.audit()
    clean(report)  # the abandoned save's pack went with it


# -- reset --------------------------------------------------------------------------------------


def test_reset_moves_the_head_back_and_keeps_the_rest_readable(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "exec-1", 5)
    states = [repo.load(i) for i in ids]
    result = repo.reset("exec-1", ids[2])
    assert result == statebag.ResetResult(
        chain="exec-1", head=ids[2], previous=ids[4], discarded=[ids[4], ids[3]]
    )
    assert repo.head("exec-1") == ids[2]
    assert [info.manifest_id for info in repo.log("exec-1")] == ids[2::-1]
    assert repo.load_latest("exec-1") == states[2]
    assert repo.load(ids[4]) == states[4]  # readable until gc collects it
    again = repo.save("exec-1", {"after": "reset"})
    assert again.parents == [ids[2]] and again.seq == 4
    assert repo.reset("exec-1", again.manifest_id).discarded == []  # already there
    clean(repo.audit())


def test_reset_refuses_versions_off_the_chains_history(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 3)
    other = chain_of(repo, "b", 2, seed=1)
    repo.reset("a", ids[0])
    for bad in (other[0], ids[2]):  # another chain's, and one the reset discarded
        with pytest.raises(NotFoundError, match="not on the history"):
            repo.reset("a", bad)
    with pytest.raises(NotFoundError, match="no version"):
        repo.reset("nowhere", ids[0])
    with pytest.raises(InvalidInputError):
        repo.reset("a", "not an id")
    assert repo.head("a") == ids[0]


def test_a_save_racing_a_reset_loses_with_conflict(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 4)
    stats = repo.stats()
    writer = internals.writer(repo)
    write = writer.write

    def reset_then_write(plan: Any) -> Any:
        repo.reset("a", ids[1])  # lands while the save encodes on top of ids[3]
        return write(plan)

    writer.write = reset_then_write  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match="moved"):
        repo.save("a", {"big": "y" * 300_000})
    writer.write = write  # type: ignore[method-assign]
    assert repo.head("a") == ids[1]
    assert repo.stats().manifests == stats.manifests
    with pytest.raises(ConflictError):
        repo.save("a", {"x": 1}, parent=ids[3])  # a step computed from the old head
    assert repo.head("a") == ids[1]

    # The other way round: a save that lands while reset reads the log fails the reset.
    original = internals.catalog(repo).leave_head

    def save_first(*args: Any) -> Any:
        internals.catalog(repo).leave_head = original  # type: ignore[method-assign]
        other = repo.save("a", {"raced": True}, parent=ids[1])
        saved.append(other.manifest_id)
        return original(*args)

    saved: list[str] = []
    internals.catalog(repo).leave_head = save_first  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match="moved while it was being reset"):
        repo.reset("a", ids[0])
    assert repo.head("a") == saved[0]
    clean(repo.audit())


def test_saves_and_resets_racing_in_threads_lose_nothing_committed(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r", fsync=False) as repo:
        ids = chain_of(repo, "a", 3)
        committed: list[str] = []
        errors: list[BaseException] = []
        stop = time.monotonic() + 2.0

        def saver(n: int) -> None:
            step = 0
            while time.monotonic() < stop:
                step += 1
                head = repo.head("a")
                try:
                    res = repo.save("a", {"writer": n, "step": step}, parent=head)
                    committed.append(res.manifest_id)
                except ConflictError:
                    continue
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

        def resetter() -> None:
            while time.monotonic() < stop:
                try:
                    repo.reset("a", ids[1])
                except ConflictError:
                    continue
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=saver, args=(n,)) for n in range(3)]
        threads.append(threading.Thread(target=resetter))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert committed
        for manifest_id in committed:  # every committed version is whole
            assert repo.verify(manifest_id).ok
        log = [info.manifest_id for info in repo.log("a")]
        assert log[-2:] == [ids[1], ids[0]]
        clean(repo.audit())


# -- gc of what a reset discards ------------------------------------------------------------


def test_discarded_versions_are_collected_after_the_grace_period_and_never_before(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "exec-1", 6)
    repo.reset("exec-1", ids[2])
    report = repo.gc(grace=HOUR)
    assert report.manifests_deleted == 0 and report.deferred >= 3
    assert all(exists(repo, i) for i in ids)
    assert age_marks(repo, HOUR - 60) == 3
    assert repo.gc(grace=HOUR).manifests_deleted == 0  # 59 minutes: still too early
    assert all(exists(repo, i) for i in ids)
    age_marks(repo, 120)
    report = repo.gc(grace=HOUR)
    assert report.manifests_deleted == 3
    assert [exists(repo, i) for i in ids] == [True] * 3 + [False] * 3
    assert report.nodes_freed == 0  # their nodes reached zero just now: their own grace
    assert repo.gc(grace=0).nodes_freed > 0
    for manifest_id in ids[:3]:
        assert repo.verify(manifest_id).ok
    with pytest.raises(NotFoundError):
        repo.load(ids[5])
    clean(repo.audit())
    assert repo.gc(grace=0) == statebag.GCReport()  # nothing left to do


def test_retention_leaves_discarded_versions_to_their_grace_period(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "exec-1", 10)
    repo.reset("exec-1", ids[5])
    newer = [repo.save("exec-1", {"after": n}).manifest_id for n in range(2)]
    report = repo.gc(keep_last=3, grace=HOUR)
    # Retention ranks the chain's reachable history: the two new versions and the one
    # reset to stay, although the discarded ones have higher seqs...
    assert [exists(repo, i) for i in ids[:6]] == [False] * 5 + [True]
    assert all(exists(repo, i) for i in newer)
    # ...and what the reset discarded waits for its grace period whatever the rules say.
    assert all(exists(repo, i) for i in ids[6:])
    assert report.manifests_deleted == 5
    age_marks(repo, HOUR + 1)
    assert repo.gc(keep_last=3, grace=HOUR).manifests_deleted == 4
    assert not any(exists(repo, i) for i in ids[6:])
    assert [info.manifest_id for info in repo.log("exec-1")] == [*newer[::-1], ids[5]]
    clean(repo.audit())


def test_a_pinned_or_held_discarded_version_survives(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 5)
    repo.pin(ids[3])
    repo.hold(ids[2], HOUR)
    repo.reset("a", ids[1])
    report = repo.gc(grace=0)
    assert report.manifests_deleted == 1  # ids[4]
    assert [exists(repo, i) for i in ids] == [True, True, True, True, False]
    assert repo.load(ids[3]) == repo.load(ids[3])
    clean(repo.audit())
    repo.unpin(ids[3])
    internals.meta(repo).put(f"hold/{ids[2]}", time.time_ns().to_bytes(8, "little"))
    assert repo.gc(grace=0).manifests_deleted == 2
    clean(repo.audit())


def test_forking_a_discarded_version_brings_it_back(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 4)
    repo.reset("a", ids[0])
    repo.gc(grace=HOUR)  # seen unreachable: marked
    repo.fork(ids[2], "rescue")
    age_marks(repo, 2 * HOUR)
    assert repo.gc(grace=HOUR).manifests_deleted == 1  # ids[3] only
    assert [exists(repo, i) for i in ids] == [True, True, True, False]
    assert not list(internals.meta(repo).scan("orphan/"))  # the marks of reached versions are gone
    assert [info.manifest_id for info in repo.log("rescue")] == ids[2::-1]
    clean(repo.audit())


def test_versions_only_a_deleted_chain_reached_are_collected(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "a", 3)
    repo.fork("a", "b")
    repo.delete_chain("a")  # ids[2] stays: it is b's head
    assert [exists(repo, i) for i in ids] == [False, False, True]
    repo.save("b", {"x": 1})
    assert repo.gc(grace=0).manifests_deleted == 0  # ids[2] is b's head's parent
    repo.delete_chain("b")
    repo.gc(grace=0)
    assert not exists(repo, ids[2])
    stats = repo.stats()
    assert (stats.manifests, stats.nodes, stats.chains) == (0, 0, 0)
    clean(repo.audit())


def test_gc_dry_run_reports_discarded_versions_without_deleting(
    repo: statebag.Repository,
) -> None:
    ids = chain_of(repo, "a", 4)
    repo.reset("a", ids[0])
    dry = repo.gc(grace=0, dry_run=True)
    assert dry.manifests_deleted == 3
    assert all(exists(repo, i) for i in ids)
    assert not list(internals.meta(repo).scan("orphan/"))
    real = repo.gc(grace=0)
    assert real == dry


def test_reset_to_a_version_deleted_while_it_ran_is_refused(repo: statebag.Repository) -> None:
    # Another handle's retention deletes the target after this reset found it on the log;
    # the target stays in this handle's cache, but the head must never name it.
    ids = chain_of(repo, "a", 4)
    catalog = internals.catalog(repo)
    original = catalog.log

    def log_then_delete(chain: str, head: bytes) -> Iterator[statebag.ManifestInfo]:
        for info in original(chain, head):
            if info.manifest_id == ids[1]:
                repo.load(ids[1])  # cached here
                with statebag.open(internals.url(repo)) as other:
                    other.delete(ids[1])
            yield info

    catalog.log = log_then_delete  # type: ignore[method-assign]
    with pytest.raises(NotFoundError, match="deleted"):
        repo.reset("a", ids[1])
    catalog.log = original  # type: ignore[method-assign]
    assert repo.head("a") == ids[3]
    repo.gc(grace=0)
    assert repo.load_latest("a") == repo.load(ids[3])
    clean(repo.audit())


def test_fork_of_a_version_deleted_meanwhile_is_refused(repo: statebag.Repository) -> None:
    ids = chain_of(repo, "a", 3)
    repo.load(ids[0])  # cached in this handle
    with statebag.open(internals.url(repo)) as other:
        other.delete(ids[0])
    with pytest.raises(NotFoundError, match="deleted"):
        repo.fork(ids[0], "b")
    with pytest.raises(NotFoundError, match="deleted"):
        repo.save("a", {"x": 1}, merged=[ids[0]])
    assert repo.head("b") is None


@pytest.mark.parametrize("lands", [True, False])
def test_fork_and_reset_whose_answer_is_lost_read_the_head_back(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch, lands: bool
) -> None:
    ids = chain_of(repo, "a", 3)
    write = internals.meta(repo).write

    def lost_answer(ops: Any) -> None:
        if lands:
            write(ops)
        raise OSError("connection reset")

    monkeypatch.setattr(internals.meta(repo), "write", lost_answer)
    if lands:
        assert repo.fork("a", "b") == ids[2]
        assert repo.reset("a", ids[0]).head == ids[0]
    else:
        with pytest.raises(statebag.BackendError) as fork_error:
            repo.fork("a", "b")
        with pytest.raises(statebag.BackendError) as reset_error:
            repo.reset("a", ids[0])
        assert fork_error.value.retryable and reset_error.value.retryable
    monkeypatch.undo()
    assert repo.head("b") == (ids[2] if lands else None)
    assert repo.head("a") == (ids[0] if lands else ids[2])
    clean(repo.audit())
