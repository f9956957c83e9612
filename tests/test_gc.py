"""Deletion, retention, sweep, pack reclamation, rollback and audit (issue 4)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConflictError, InvalidInputError, NotFoundError
from statebag.gc import select_for_deletion
from statebag.keys import PendingRecord, encode_letter, encode_record
from statebag.liveness import Liveness
from statebag.packs import pack_key

from . import internals
from .repohelp import KINDS, open_repo, recount, stored_counts


@pytest.fixture(params=KINDS)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    with open_repo(request.param, tmp_path, fsync=False) as repository:
        yield repository


def state(rng: random.Random, step: int, *, big: int = 40_000) -> dict[str, Any]:
    return {
        "step": step,
        "blob": rng.randbytes(big),
        "history": [f"message {i} " * 20 for i in range(step * 5)],
        "shared": "constant " * 500,
    }


def clean(report: statebag.AuditReport) -> None:
    """The audit is ok and finds no leak."""
    assert report.ok, report
    assert not report.under_counted and not report.missing_nodes and not report.broken_chains
    assert not report.over_counted and not report.orphan_packs and not report.unswept, report
    assert not report.in_flight, report


def packs_on_disk(repo: statebag.Repository) -> int:
    keys = list(internals.objects(repo).list("packs/"))
    assert repo.stats().bytes_stored == sum(internals.objects(repo).stat(key) for key in keys)
    return len(keys)


# -- retention rules ---------------------------------------------------------------------------


def test_select_for_deletion_rules() -> None:
    day = 86_400 * 10**9
    now = 100 * day
    ids = [bytes([i]) * 32 for i in range(10)]
    # seq i, one version per half day going back from now
    versions = [(i, ids[i], now - (9 - i) * day // 2) for i in range(10)]
    assert (
        select_for_deletion(
            versions, keep=set(), keep_last=None, keep_within_ns=None, keep_daily=None, now_ns=now
        )
        == []
    )
    doomed = select_for_deletion(
        versions, keep={ids[0]}, keep_last=3, keep_within_ns=None, keep_daily=None, now_ns=now
    )
    assert set(doomed) == set(ids[1:7])
    doomed = select_for_deletion(
        versions, keep=set(), keep_last=None, keep_within_ns=day, keep_daily=None, now_ns=now
    )
    assert set(doomed) == set(ids[:7])  # within one day: the last 3 (0, 0.5, 1 day old)
    doomed = select_for_deletion(
        versions, keep=set(), keep_last=None, keep_within_ns=None, keep_daily=2, now_ns=now
    )
    kept = set(ids) - set(doomed)
    days = {datetime.fromtimestamp(t / 1e9, tz=UTC).date() for _, mid, t in versions if mid in kept}
    assert len(kept) == 2 and len(days) == 2
    assert ids[9] in kept  # the newest of the newest day
    # The rules add up: a version any rule keeps stays.
    doomed = select_for_deletion(
        versions, keep=set(), keep_last=1, keep_within_ns=day, keep_daily=5, now_ns=now
    )
    assert ids[9] not in doomed and ids[0] in doomed


# -- delete -------------------------------------------------------------------------------------


def test_delete_leaves_tombstone_and_refuses_heads_and_pins(repo: statebag.Repository) -> None:
    rng = random.Random(1)
    first = repo.save("c", state(rng, 1)).manifest_id
    second = repo.save("c", state(rng, 2)).manifest_id
    with pytest.raises(ConflictError, match="head"):
        repo.delete(second)
    repo.pin(first)
    with pytest.raises(ConflictError, match="pinned"):
        repo.delete(first)
    repo.unpin(first)
    repo.delete(first)
    repo.delete(first)  # deleting a deleted version does nothing
    assert internals.meta(repo).get(f"tomb/{first}") is not None
    with pytest.raises(NotFoundError, match="deleted"):
        repo.load(first)
    with pytest.raises(NotFoundError):
        repo.delete("ab" * 32)
    with pytest.raises(InvalidInputError):
        repo.delete("not-an-id")
    assert [info.manifest_id for info in repo.log("c")] == [second]
    assert repo.stats().manifests == 1
    assert repo.audit().ok


def test_gc_frees_exactly_what_deleted_versions_alone_held(repo: statebag.Repository) -> None:
    rng = random.Random(2)
    ids = [repo.save("c", state(rng, step)).manifest_id for step in range(8)]
    other = repo.save("d", state(random.Random(2), 0)).manifest_id  # shares all of ids[0]
    before = repo.stats()
    for manifest_id in ids[:6]:
        repo.delete(manifest_id)
    report = repo.gc(grace=0)
    assert report.nodes_freed > 0 and report.packs_deleted > 0 and report.bytes_reclaimed > 0
    after = repo.stats()
    assert after.manifests == 3 and after.nodes < before.nodes
    assert after.bytes_stored < before.bytes_stored
    for manifest_id in (*ids[6:], other):
        assert repo.verify(manifest_id).ok
    expected, reachable = recount(repo)
    assert stored_counts(repo) == expected
    assert {bytes.fromhex(key[5:]) for key, _ in internals.meta(repo).scan("node/")} == reachable
    packs_on_disk(repo)
    clean(repo.audit())
    assert repo.gc(grace=0) == statebag.GCReport()  # nothing left to do


def test_grace_defers_and_counts_deferred(repo: statebag.Repository) -> None:
    rng = random.Random(3)
    first = repo.save("c", state(rng, 1)).manifest_id
    repo.save("c", state(rng, 2))
    repo.delete(first)
    report = repo.gc(grace=timedelta(hours=1))
    assert report.nodes_freed == 0 and report.deferred >= 1
    assert repo.gc().nodes_freed == 0  # the repository default grace is 1 h
    assert repo.gc(grace=0).nodes_freed > 0


def test_dry_run_reports_what_gc_does_and_writes_nothing(repo: statebag.Repository) -> None:
    rng = random.Random(4)
    for step in range(5):
        repo.save("c", state(rng, step))
    fields = {f"f{i}": rng.randbytes(5000) for i in range(40)}
    wide = repo.save("w", fields).manifest_id
    repo.save("w", {name: value for name, value in fields.items() if int(name[1:]) % 2})
    repo.delete(wide)  # leaves a pack to compact
    before = (
        repo.stats(),
        sorted(internals.meta(repo).scan("")),
        sorted(internals.meta(repo).counters("")),
        sorted(internals.objects(repo).list("")),
    )
    dry = repo.gc(keep_last=1, grace=0, dry_run=True)
    after = (
        repo.stats(),
        sorted(internals.meta(repo).scan("")),
        sorted(internals.meta(repo).counters("")),
        sorted(internals.objects(repo).list("")),
    )
    assert after == before
    assert dry.manifests_deleted == 4 and dry.packs_compacted >= 1 and dry.packs_deleted >= 1
    assert repo.gc(keep_last=1, grace=0) == dry


def test_retention_keeps_heads_pins_and_holds(repo: statebag.Repository) -> None:
    rng = random.Random(5)
    ids = [repo.save("c", state(rng, step, big=2000)).manifest_id for step in range(6)]
    other = [repo.save("d", state(rng, step, big=2000)).manifest_id for step in range(3)]
    repo.pin(ids[0])
    repo.hold(ids[1], 60)
    report = repo.gc(keep_last=2, chains=["c"], grace=0)
    assert report.manifests_deleted == 2  # ids[2], ids[3]
    live = {key[9:] for key, _ in internals.meta(repo).scan("manifest/")}
    assert live == {ids[0], ids[1], ids[4], ids[5], *other}
    report = repo.gc(keep_last=0, grace=0)
    live = {key[9:] for key, _ in internals.meta(repo).scan("manifest/")}
    assert live == {ids[0], ids[1], ids[5], other[-1]}  # pinned, held, and the heads
    repo.hold(ids[1], 0.01)  # a shorter hold leaves the longer one be
    time.sleep(0.02)
    assert internals.meta(repo).get(f"manifest/{ids[1]}") is not None
    repo.gc(keep_last=0, grace=0)
    assert internals.meta(repo).get(f"manifest/{ids[1]}") is not None
    with pytest.raises(NotFoundError):
        repo.hold("cd" * 32, 10)
    for manifest_id in (ids[0], ids[1], ids[5], other[-1]):
        assert repo.verify(manifest_id).ok
    clean(repo.audit())


def test_expired_hold_no_longer_protects(repo: statebag.Repository) -> None:
    rng = random.Random(6)
    held = repo.save("c", state(rng, 1, big=100)).manifest_id
    expired = repo.save("c", state(rng, 2, big=100)).manifest_id
    repo.save("c", state(rng, 3, big=100))
    repo.hold(held, 600)
    repo.hold(expired, 0)  # until now: over at once
    assert repo.gc(keep_last=1, grace=0).manifests_deleted == 1
    assert internals.meta(repo).get(f"manifest/{held}") is not None
    assert internals.meta(repo).get(f"manifest/{expired}") is None
    clean(repo.audit())


@pytest.mark.parametrize("ttl", [1e300, 10**400, float("inf"), timedelta.max, 3.16e9])
def test_a_hold_longer_than_a_century_is_refused_naming_ttl(
    repo: statebag.Repository, ttl: Any
) -> None:
    held = repo.save("c", {"a": 1}).manifest_id
    before = sorted(internals.meta(repo).scan(""))
    with pytest.raises(InvalidInputError, match="at most 100 years") as info:
        repo.hold(held, ttl)
    assert info.value.path == "ttl"
    with pytest.raises(InvalidInputError, match="at most 100 years") as info:
        repo.save("c", {"a": 2}, hold=ttl)
    assert info.value.path == "hold"
    assert sorted(internals.meta(repo).scan("")) == before
    repo.hold(held, timedelta(days=36524))  # just under the limit: held
    assert internals.meta(repo).get(f"hold/{held}") is not None


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"keep_within": 1e300}, "keep_within"),
        ({"grace": timedelta.max}, "grace"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": "2"}, "keep_last"),
        ({"keep_daily": 1.5}, "keep_daily"),
        ({"keep_within": "7d"}, "keep_within"),
        ({"keep_within": -1}, "keep_within"),
        ({"grace": float("nan")}, "grace"),
        ({"grace": -1}, "grace"),
        ({"chains": "c"}, "chains"),
        ({"chains": ["a" * 64]}, "chains"),
        ({"dry_run": 1}, "dry_run"),
    ],
)
def test_gc_bad_options_name_the_option(
    repo: statebag.Repository, options: dict[str, Any], path: str
) -> None:
    repo.save("c", {"a": 1})
    repo.save("c", {"a": 2})
    before = sorted(internals.meta(repo).scan(""))
    with pytest.raises(InvalidInputError) as info:
        repo.gc(**options)
    assert info.value.path == path
    assert sorted(internals.meta(repo).scan("")) == before


def test_delete_chain_removes_everything_and_fences_saves(repo: statebag.Repository) -> None:
    rng = random.Random(7)
    ids = [repo.save("c", state(rng, step)).manifest_id for step in range(4)]
    keep = repo.save("d", {"x": 1}).manifest_id
    repo.pin(ids[1])
    assert repo.delete_chain("c") == 4
    assert list(repo.chains()) == ["d"]
    with pytest.raises(ConflictError):
        repo.save("c", {"x": 2}, parent=ids[-1])
    with pytest.raises(NotFoundError):
        repo.delete_chain("c")
    repo.gc(grace=0)
    assert repo.stats().manifests == 1 and repo.stats().chains == 1
    assert repo.verify(keep).ok
    clean(repo.audit())
    # The name can be used again.
    assert repo.save("c", {"x": 3}).seq == 1


# -- saves racing gc ----------------------------------------------------------------------------


def test_save_reviving_a_zero_count_node_keeps_its_subtree(repo: statebag.Repository) -> None:
    rng = random.Random(8)
    old = state(rng, 3, big=200_000)
    first = repo.save("c", old).manifest_id
    repo.save("c", {"other": 1})
    repo.delete(first)  # every node of `old` now has count zero (root) or is held by it
    revived = repo.save("d", old)  # the same value again: found stored, revived
    assert revived.nodes_written == 0
    report = repo.gc(grace=0)
    assert report.nodes_freed == 0
    assert repo.verify(revived.manifest_id).ok
    assert repo.load(revived.manifest_id) == repo.load(revived.manifest_id)
    clean(repo.audit())


def test_save_whose_found_nodes_are_swept_before_commit_writes_them_again(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(9)
    old = state(rng, 3, big=200_000)
    repo.save("c", old)
    repo.delete_chain("c")  # all of `old` is garbage, not yet swept
    from statebag import writer as writer_module

    real_commit = writer_module.commit
    swept: list[statebag.GCReport] = []

    def commit_after_gc(*args: Any, **kwargs: Any) -> None:
        # The save has looked its nodes up (found them all); gc sweeps them now.
        swept.append(repo.gc(grace=0))
        real_commit(*args, **kwargs)

    monkeypatch.setattr(writer_module, "commit", commit_after_gc)
    result = repo.save("d", old)
    monkeypatch.setattr(writer_module, "commit", real_commit)
    assert swept[0].nodes_freed > 0
    assert result.nodes_written > 0  # found at lookup, then stored again when found gone
    assert repo.verify(result.manifest_id).ok
    loaded = repo.load(result.manifest_id)
    assert isinstance(loaded, dict) and loaded["blob"] == old["blob"]
    clean(repo.audit())


def test_identical_saves_write_distinct_packs(repo: statebag.Repository) -> None:
    # Byte-identical packs from two transactions would share an id, and a loser's rollback
    # would delete the pack the winner's index points into.
    data = {"blob": os.urandom(50_000)}
    a = repo.save("a", data)
    b = repo.save("b", {"blob": data["blob"], "x": 1})
    assert a.bytes_new_stored > 0
    assert b.nodes_written >= 1
    assert len(list(internals.objects(repo).list("packs/"))) == 2


# -- rollback of pending saves ----------------------------------------------------------------


def put_pending(repo: statebag.Repository, txn: str, *, lease_s: float) -> bytes:
    pack_id = os.urandom(32)
    internals.objects(repo).put(pack_key(pack_id), b"junk pack")
    now = time.time_ns()
    record = PendingRecord("c", now, now + int(lease_s * 1e9), [pack_id])
    internals.meta(repo).put(f"pending/{txn}", encode_record(record))
    return pack_id


def test_live_writer_is_left_alone_and_gone_one_rolled_back(repo: statebag.Repository) -> None:
    txn = uuid.uuid4().hex
    internals.liveness(repo).acquire(txn)
    pack_id = put_pending(repo, txn, lease_s=-10)  # lease long expired, writer alive
    report = repo.gc(grace=0)
    assert report.deferred == 1
    assert internals.meta(repo).get(f"pending/{txn}") is not None
    assert repo.audit().in_flight == [txn]
    assert repo.audit().orphan_packs == []  # its pack is the save's, not a leak
    internals.liveness(repo).release(txn)
    repo.gc(grace=0)  # gone: rolled back at once, whatever the lease
    assert internals.meta(repo).get(f"pending/{txn}") is None
    assert pack_key(pack_id) not in set(internals.objects(repo).list("packs/"))
    clean(repo.audit())


def test_gone_writer_is_rolled_back_before_its_lease_expires(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r") as repo:
        txn = uuid.uuid4().hex
        put_pending(repo, txn, lease_s=3600)  # no lock file: the writer is gone
        repo.gc(grace=0)
        assert internals.meta(repo).get(f"pending/{txn}") is None
        clean(repo.audit())


def test_without_liveness_the_lease_decides() -> None:
    name = f"memory://{uuid.uuid4().hex}"
    with statebag.open(name) as opened:
        objects, meta = internals.objects(opened), internals.meta(opened)
    repo = statebag.Repository(objects, meta, statebag.repository.Config(), liveness=Liveness())
    young, old = uuid.uuid4().hex, uuid.uuid4().hex
    put_pending(repo, young, lease_s=3600)
    put_pending(repo, old, lease_s=-1)
    assert repo.gc(grace=0).deferred == 1
    assert internals.meta(repo).get(f"pending/{young}") is not None
    assert internals.meta(repo).get(f"pending/{old}") is None


def test_dead_letters_are_drained_idempotently(repo: statebag.Repository) -> None:
    pack_id = os.urandom(32)
    internals.objects(repo).put(pack_key(pack_id), b"left by a failed rollback")
    internals.meta(repo).put("dlq/t1", encode_letter([pack_id]))
    internals.meta(repo).put("dlq/t2", encode_letter([os.urandom(32)]))  # its pack is gone already
    assert repo.gc(grace=0).dead_letters_processed == 2
    assert list(internals.objects(repo).list("packs/")) == []
    assert repo.gc(grace=0).dead_letters_processed == 0
    clean(repo.audit())


def test_pending_entry_rolled_back_under_a_save_fails_it(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statebag import writer as writer_module

    real_commit = writer_module.commit

    def commit_after_rollback(objects: Any, meta: Any, tx: Any, **kwargs: Any) -> None:
        # As gc would once the lease expired: the entry goes, and with it the packs.
        key = f"pending/{tx.txn}"
        meta.delete(key)
        for pack_id, _, _ in tx.packs:
            objects.delete(pack_key(pack_id))
        real_commit(objects, meta, tx, **kwargs)

    monkeypatch.setattr(writer_module, "commit", commit_after_rollback)
    with pytest.raises(statebag.BackendError, match="rolled back"):
        repo.save("c", {"blob": os.urandom(20_000)})
    monkeypatch.setattr(writer_module, "commit", real_commit)
    assert repo.head("c") is None
    clean(repo.audit())


# -- packs ------------------------------------------------------------------------------------


def test_compaction_copies_live_nodes_and_readers_follow(repo: statebag.Repository) -> None:
    rng = random.Random(10)
    fields = {f"f{i}": rng.randbytes(5000) for i in range(40)}
    first = repo.save("c", fields).manifest_id
    half = {name: value for name, value in fields.items() if int(name[1:]) % 2}
    second = repo.save("c", {**half, "new": 1}).manifest_id
    assert len(list(internals.objects(repo).list("packs/"))) == 2
    leaves = [
        e.root
        for e in internals.reader(repo)
        .fields_table(internals.manifest(repo, second).root)
        .entries.values()
        if isinstance(e, statebag.dag.TreeField)
    ]
    groups = internals.reader(repo).plan_ranges(leaves)  # a reader located the nodes...
    repo.delete(first)
    report = repo.gc(grace=0)  # ...then gc moved them
    assert report.packs_compacted == 1 and report.bytes_reclaimed > 0
    for group in groups:
        assert set(internals.reader(repo).read_range(group)) == {node_id for node_id, _ in group}
    assert repo.load(second) == dict(sorted({**half, "new": 1}.items()))
    assert repo.verify(second).ok
    packs_on_disk(repo)
    clean(repo.audit())
    assert repo.stats().bytes_stored < 40 * 5000


# -- audit finds injected faults ------------------------------------------------------------


def test_audit_finds_a_lowered_count_and_repair_fixes_it(repo: statebag.Repository) -> None:
    first = repo.save("c", state(random.Random(11), 2))
    root = internals.manifest(repo, first.manifest_id).root.hex()
    clean(repo.audit())
    internals.meta(repo).add(internals.count_key(repo, root), -1)
    report = repo.audit()
    assert not report.ok and report.under_counted == [root]
    assert repo.audit(repair=True).repaired == 1
    clean(repo.audit())


def test_audit_finds_a_removed_pack(repo: statebag.Repository) -> None:
    first = repo.save("c", state(random.Random(12), 2))
    for key in list(internals.objects(repo).list("packs/")):
        internals.objects(repo).delete(key)
    report = repo.audit()
    assert not report.ok and report.missing_nodes
    assert not repo.verify(first.manifest_id).ok
    repo.audit(repair=True)
    assert not repo.audit().ok  # repair never invents data, and never hides a loss


def test_audit_finds_a_stray_pack_and_repair_removes_it_after_grace(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r", grace=0) as repo:
        repo.save("c", {"blob": os.urandom(10_000)})
        stray = "ab" * 32
        internals.objects(repo).put(f"packs/ab/{stray}", b"stray")
        report = repo.audit()
        assert report.ok and report.orphan_packs == [stray]
        assert repo.audit(repair=True).repaired == 1
        clean(repo.audit())
    with statebag.open(tmp_path / "s") as repo:  # default grace: a young orphan stays
        internals.objects(repo).put(f"packs/ab/{stray}", b"stray")
        repo.audit(repair=True)
        assert repo.audit().orphan_packs == [stray]


def test_audit_finds_a_broken_chain(repo: statebag.Repository) -> None:
    first = repo.save("c", {"a": 1}).manifest_id
    second = repo.save("c", {"a": 2}).manifest_id
    repo.delete(first)
    assert repo.audit().broken_chains == []  # a tombstoned parent is pruned, not lost
    internals.meta(repo).delete(f"tomb/{first}")
    report = repo.audit()
    assert not report.ok and report.broken_chains == [second]
    # Repair records the lost parent as pruned (the loss was reported above).
    assert repo.audit(repair=True).repaired == 1
    clean(repo.audit())
    assert [info.manifest_id for info in repo.log("c")] == [second]


def test_audit_finds_a_parent_deleted_by_hand(repo: statebag.Repository) -> None:
    first = repo.save("c", state(random.Random(15), 1)).manifest_id
    second = repo.save("c", state(random.Random(16), 2)).manifest_id
    internals.meta(repo).delete(f"manifest/{first}")  # no tombstone, its root still counted
    report = repo.audit()
    assert not report.ok and report.broken_chains == [second] and report.over_counted
    repo.audit(repair=True)
    clean(repo.audit())
    repo.gc(grace=0)  # the lost version's nodes are freed as leaks
    clean(repo.audit())
    assert repo.verify(second).ok


def test_audit_finds_an_over_count_and_repair_frees_it(repo: statebag.Repository) -> None:
    first = repo.save("c", state(random.Random(13), 2))
    repo.save("c", {"other": 1})
    root = internals.manifest(repo, first.manifest_id).root.hex()
    # A leak: deleting the version leaves it counted.
    internals.meta(repo).add(internals.count_key(repo, root), 1)
    repo.delete(first.manifest_id)
    assert repo.gc(grace=0).nodes_freed == 0
    report = repo.audit()
    assert report.ok and report.over_counted == [root]
    repo.audit(repair=True)
    assert repo.gc(grace=0).nodes_freed > 0
    clean(repo.audit())
    assert repo.stats().manifests == 1


# -- save options the hydrator builds on ------------------------------------------------------


def test_save_hold_is_set_by_the_commit(repo: statebag.Repository) -> None:
    first = repo.save("c", {"a": 1}, hold=timedelta(minutes=5)).manifest_id
    repo.save("c", {"a": 2})
    assert internals.meta(repo).get(f"hold/{first}") is not None
    assert repo.gc(keep_last=1, grace=0).manifests_deleted == 0
    with pytest.raises(InvalidInputError) as info:
        repo.save("c", {"a": 3}, hold=-1)
    assert info.value.path == "hold"
    assert repo.stats().manifests == 2


def test_save_level_overrides_the_repository_level(repo: statebag.Repository) -> None:
    text = ("all work and no play " * 5000).encode()
    raw = repo.save("raw", {"doc": text}, level=0)
    packed = repo.save("zstd", {"doc": text + b"!"})
    raw_bytes = b"".join(internals.objects(repo).get(key) for key in raw.pack_keys)
    packed_bytes = b"".join(internals.objects(repo).get(key) for key in packed.pack_keys)
    assert text[:4096] in raw_bytes and text[:4096] not in packed_bytes
    assert raw.bytes_new_stored > 10 * packed.bytes_new_stored
    assert repo.load(raw.manifest_id) == {"doc": text}
    before = repo.stats()
    with pytest.raises(InvalidInputError) as info:
        repo.save("raw", {"doc": b"x"}, level=99)
    assert info.value.path == "level" and repo.stats() == before


def test_commit_result_names_the_nodes_and_packs_it_wrote(repo: statebag.Repository) -> None:
    result = repo.save("c", {"blob": os.urandom(100_000)})
    assert len(result.node_ids) == result.nodes_written > 1
    assert result.pack_keys and all(internals.objects(repo).stat(key) for key in result.pack_keys)
    for node_id in result.node_ids:
        assert internals.meta(repo).get(f"node/{node_id}") is not None
    again = repo.save("d", {"blob": repo.load(result.manifest_id)["blob"]})
    assert again.node_ids == [] and again.pack_keys == []


def test_compaction_merges_the_live_frames_of_several_packs(repo: statebag.Repository) -> None:
    rng = random.Random(14)
    keep = {}
    for index in range(5):
        fields = {f"f{i}": rng.randbytes(3000) for i in range(20)}
        first = repo.save(f"c{index}", fields).manifest_id
        half = {name: value for name, value in fields.items() if int(name[1:]) % 2}
        keep[repo.save(f"c{index}", half).manifest_id] = half
        repo.delete(first)
    assert len(list(internals.objects(repo).list("packs/"))) == 10
    report = repo.gc(grace=0)
    # The five first packs, half dead each, became one; the second versions' own packs
    # (their fields tables) are live and stay.
    assert report.packs_compacted == 5 and report.packs_deleted == 0
    assert len(list(internals.objects(repo).list("packs/"))) == 6
    for manifest_id, state in keep.items():
        assert repo.load(manifest_id) == dict(sorted(state.items()))
    packs_on_disk(repo)
    clean(repo.audit())


def test_loading_a_version_deleted_by_another_handle_is_not_found(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r") as reader, statebag.open(tmp_path / "r") as writer:
        first = writer.save("c", {"blob": os.urandom(50_000)}).manifest_id
        writer.save("c", {"other": 1})
        reader.info(first)  # the reader now has the manifest cached
        writer.delete(first)
        writer.gc(grace=0)
        with pytest.raises(NotFoundError, match="deleted"):
            reader.load(first)
        assert writer.stats().bytes_dead == 0 and reader.audit().ok


def test_dry_run_asks_liveness_without_claiming(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r") as repo:
        txn = uuid.uuid4().hex
        internals.liveness(repo).acquire(txn)
        put_pending(repo, txn, lease_s=-1)
        assert repo.gc(grace=0, dry_run=True).deferred == 1
        assert (tmp_path / "r" / "locks" / txn).exists()  # still the writer's
        internals.liveness(repo).release(txn)
        assert repo.gc(grace=0, dry_run=True).deferred == 0
        assert (
            internals.meta(repo).get(f"pending/{txn}") is not None
        )  # a dry run rolls nothing back
        repo.gc(grace=0)
        assert internals.meta(repo).get(f"pending/{txn}") is None


def test_delete_racing_a_delete_of_the_same_version_is_not_an_integrity_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with statebag.open(tmp_path / "r") as repo, statebag.open(tmp_path / "r") as other:
        first = repo.save("c", {"blob": os.urandom(20_000)}).manifest_id
        repo.save("c", {"x": 1})
        root = internals.manifest(repo, first).root.hex()
        real_counter = internals.meta(repo).counter

        def counter_after_a_rival_delete(key: str) -> int:
            if key == internals.count_key(repo, root):
                monkeypatch.setattr(internals.meta(repo), "counter", real_counter)
                other.delete(first)  # lands between this delete's reads
            return real_counter(key)

        monkeypatch.setattr(internals.meta(repo), "counter", counter_after_a_rival_delete)
        repo.delete(first)  # sees the manifest, then its root at 0: a race, not a loss
        assert internals.meta(repo).get(f"tomb/{first}") is not None
        assert repo.audit().ok


@pytest.mark.parametrize("cached", [False, True])
def test_save_whose_parent_is_collected_under_it_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    with statebag.open(tmp_path / "r") as repo, statebag.open(tmp_path / "r") as rival:
        parent = repo.save("s", {"blob": os.urandom(200_000), "n": 0}).manifest_id
        if not cached:
            internals.reader(repo).clear_caches(structs=False)
            internals.catalog(repo).clear_cache()
            internals.writer(repo).clear_cuts()
            internals.reader(repo).clear_caches(tables=False)
        real_tree_nodes = internals.reader(repo).tree_nodes

        def tree_nodes_after_rival(entry: Any) -> Any:
            # The save has read the head (parent); a rival moves it on, deletes the parent
            # and collects it before the save reads the parent's tree.
            monkeypatch.setattr(internals.reader(repo), "tree_nodes", real_tree_nodes)
            rival.save("s", {"other": 1})
            rival.delete(parent)
            rival.gc(grace=0)
            internals.reader(repo).clear_caches(tables=False)
            return real_tree_nodes(entry)

        monkeypatch.setattr(internals.reader(repo), "tree_nodes", tree_nodes_after_rival)
        internals.writer(repo).clear_cuts()  # so that the save reads the parent's leaves
        with pytest.raises(ConflictError, match="moved"):
            repo.save("s", {"blob": os.urandom(200_000), "n": 1})
        assert repo.audit().ok


def test_two_collectors_racing_over_the_same_garbage(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r") as one, statebag.open(tmp_path / "r") as two:
        rng = random.Random(17)
        ids = [one.save("c", state(rng, step, big=150_000)).manifest_id for step in range(4)]
        for manifest_id in ids[:-1]:
            one.delete(manifest_id)
        real_read = internals.gc_reader(one).read_nodes

        def read_after_the_other_collector(node_ids: Any) -> Any:
            internals.gc_reader(one).read_nodes = real_read
            two.gc(grace=0)  # sweeps the same nodes and deletes their packs first
            internals.reader(one).clear_caches(tables=False)
            return real_read(node_ids)

        internals.gc_reader(one).read_nodes = read_after_the_other_collector
        one.gc(grace=0)  # finds its reads gone: leaves them, does not fail
        clean(one.audit())
        assert one.verify(ids[-1]).ok


def test_verify_all_while_versions_are_deleted(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(18)
    ids = [repo.save("c", state(rng, step)).manifest_id for step in range(3)]
    catalog = internals.catalog(repo)
    real = catalog.manifest
    calls: list[bytes] = []

    def delete_first_then_verify(target: bytes) -> Any:
        # verify reads each version's manifest first: the first version is deleted and
        # collected after verify listed it, before it reads it.
        if not calls:
            repo.delete(ids[0])
            repo.gc(grace=0)
        calls.append(target)
        return real(target)

    monkeypatch.setattr(catalog, "manifest", delete_first_then_verify)
    report = repo.verify()
    assert report.ok, report.problems
    assert len(calls) == 3


def test_load_latest_follows_a_head_that_moved_and_was_collected(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = repo.save("c", {"blob": os.urandom(50_000), "n": 1}).manifest_id
    real_load = repo.load

    def load_after_a_rival(manifest_id: str, **options: Any) -> Any:
        monkeypatch.setattr(repo, "load", real_load)
        repo.save("c", {"n": 2})
        repo.delete(old)
        repo.gc(grace=0)
        internals.catalog(repo).clear_cache()
        return real_load(manifest_id, **options)

    monkeypatch.setattr(repo, "load", load_after_a_rival)
    assert repo.load_latest("c") == {"n": 2}
    with pytest.raises(NotFoundError):
        repo.load_latest("c", fields=["missing"])
