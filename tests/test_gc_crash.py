"""Crash suite: a process dies at every named crash point of save, gc and delete_chain.

For each point a subprocess armed through ``statebag.testing.run_until_crash`` runs the
operation and must end there (exit code ``CRASH_EXIT_CODE``). The repository is then
reopened: every version committed before still loads and verifies, and after
``gc(grace=0)`` the audit is ok with no leak, nothing in flight and no dead letter left.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag.keys import PendingRecord, encode_record
from statebag.packs import pack_key
from statebag.testing import CRASH_EXIT_CODE, CRASH_POINTS, run_until_crash

from . import internals

SCRIPT = r"""
import os, sys
import statebag
from statebag import writer as writer_module

path, mode, root, capped = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
repo = statebag.open(path)
if capped == "capped":
    # As on a store that caps a write (DynamoDB): every write at most 25 operations, so a
    # save of 60 new fields takes several reference batches, and the 40-field node of
    # "wide" is swept in slices.
    sys.path.insert(0, root)
    from tests import internals
    internals.meta(repo).max_batch = 25
if mode == "save":
    repo.save("c0", {"blob": os.urandom(300_000), "n": -1})
elif mode == "conflict":
    real_commit = writer_module.commit
    def commit_after_rival(*args, **kwargs):
        writer_module.commit = real_commit  # the rival commits normally
        with statebag.open(path) as rival:
            rival.save("c0", {"rival": 1})
        real_commit(*args, **kwargs)
    writer_module.commit = commit_after_rival
    try:
        repo.save("c0", {"blob": os.urandom(300_000)})
    except statebag.ConflictError:
        pass
elif mode == "save_batched":
    repo.save("c0", {f"f{i}": os.urandom(5000) for i in range(60)})
elif mode == "gc":
    repo.gc(grace=0)
elif mode == "gc_batched":
    repo.gc(grace=0)
elif mode == "retain":
    repo.gc(keep_last=1, chains=["r"], grace=0)
elif mode == "delete_chain":
    repo.delete_chain("c1")
repo.close()
"""

MODES = {
    "save.after_pending": "save",
    "save.after_upload": "save",
    "save.after_commit": "save",
    "save.after_abandon_record": "conflict",
    "save.after_reference_batch": "save_batched",
    "delete_chain.after_head": "delete_chain",
    "gc.after_delete_manifest": "retain",
    "gc.after_sweep_slice": "gc_batched",
    "rebuild.after_batch": "rebuild",  # its scenario is in tests/test_rebuild.py
}


def mode_of(point: str) -> str:
    return MODES.get(point, "gc")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A repository with garbage of every kind gc handles, and what it must keep."""
    path = tmp_path_factory.mktemp("crash") / "base"
    rng = random.Random(0)
    kept: dict[str, Any] = {}
    with statebag.open(path, fsync=False) as repo:
        doomed = []
        for chain in ("c0", "c1", "c2"):
            for step in range(4):
                data = {"blob": rng.randbytes(60_000), "n": step}
                result = repo.save(chain, data)
                kept[result.manifest_id] = data
                if chain == "c2" and step < 2:
                    doomed.append(result.manifest_id)
        for step in range(3):  # left to retention (keep_last=1), so not among `kept`
            repo.save("r", {"blob": rng.randbytes(30_000), "n": step})
        # Four saves of five new fields each: the head's nodes sit in four small packs, so gc
        # repacks them (in several writes on the capped store).
        scattered: dict[str, Any] = {}
        for step in range(4):
            scattered.update({f"s{step}.{i}": rng.randbytes(2000) for i in range(5)})
            kept[repo.save("s", scattered).manifest_id] = dict(scattered)
        fields = {f"f{i}": rng.randbytes(5000) for i in range(40)}
        wide = repo.save("wide", fields)
        half = {name: value for name, value in fields.items() if int(name[1:]) % 2}
        kept[repo.save("wide", half).manifest_id] = half
        doomed.append(wide.manifest_id)
        for manifest_id in doomed:
            repo.delete(manifest_id)
            kept.pop(manifest_id, None)
        # A save whose writer died: no lock file, so gc rolls it back at once.
        pack_id = os.urandom(32)
        internals.objects(repo).put(pack_key(pack_id), b"a pack nothing indexes")
        now = time.time_ns()
        record = PendingRecord("c0", now, now + 3600 * 10**9, [pack_id])
        internals.meta(repo).put("pending/" + "d" * 32, encode_record(record))
    return path, kept


def test_every_crash_point_has_a_scenario() -> None:
    assert set(MODES) <= set(CRASH_POINTS)
    assert {point for point in CRASH_POINTS if point.startswith("gc.")} == {
        point for point in CRASH_POINTS if mode_of(point) in ("gc", "gc_batched", "retain")
    }


# Every point on the repository's own store and on the same store capped; the points only the
# batched protocol reaches, capped only.
CASES = [
    (point, capped)
    for point in CRASH_POINTS
    for capped in ("unbounded", "capped")
    if (capped == "capped" or not mode_of(point).endswith("_batched"))
    and mode_of(point) != "rebuild"
]


@pytest.mark.parametrize(("point", "capped"), CASES)
def test_crash_loses_nothing_committed(
    point: str, capped: str, base: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Each crash point, on the repository's own store and on the same store capped at 25
    operations per write (the batched protocol, with its own crash points)."""
    source, kept = base
    path = tmp_path / "repo"
    shutil.copytree(source, path)
    root = str(Path(__file__).resolve().parent.parent)
    done = run_until_crash(SCRIPT, point, str(path), mode_of(point), root, capped)
    assert done.returncode == CRASH_EXIT_CODE, (point, done.stderr)

    with statebag.open(path) as repo:
        deleted_chain = mode_of(point) == "delete_chain"
        for manifest_id, data in kept.items():
            loaded = repo.load(manifest_id)
            assert loaded == dict(sorted(data.items())), (point, manifest_id)
            assert repo.verify(manifest_id).ok, (point, manifest_id)
        head = repo.head("c0")
        assert head is not None and repo.verify(head).ok
        if deleted_chain:
            repo.delete_chain("c1")  # finishes what the crash interrupted
        repo.gc(grace=0)
        report = repo.audit()
        assert report.ok, (point, report)
        assert not report.over_counted and not report.orphan_packs and not report.unswept, (
            point,
            report,
        )
        assert not report.in_flight, (point, report)
        assert list(internals.meta(repo).scan("dlq/")) == [], point
        assert list(internals.meta(repo).scan("zero/")) == [], point
        assert list(internals.meta(repo).scan("sweep/")) == [], point
        for manifest_id in internals.meta(repo).scan("manifest/"):
            assert repo.verify(manifest_id[0][len("manifest/") :]).ok


BRANCH_SCRIPT = r"""
import sys
import statebag

path, mode = sys.argv[1], sys.argv[2]
repo = statebag.open(path)
if mode == "merge":
    repo.merge("m", ["m/b0", "m/b1"], strategy="collect")
elif mode == "unreached":
    repo.gc(grace=0)
repo.close()
"""


@pytest.mark.parametrize(
    ("point", "mode"),
    [
        ("save.after_pending", "merge"),
        ("save.after_upload", "merge"),
        ("save.after_commit", "merge"),
        ("gc.after_delete_manifest", "unreached"),
    ],
)
def test_branch_operation_crash_loses_nothing_committed(
    point: str, mode: str, tmp_path: Path
) -> None:
    """A merge dies in its commit, or gc dies deleting what a reset discarded: every
    version a head reaches still loads, and gc plus audit leave a clean repository."""
    path = tmp_path / "repo"
    rng = random.Random(1)
    with statebag.open(path, fsync=False) as repo:
        first = repo.save("m", {"blob": rng.randbytes(50_000), "n": 0})
        for branch in ("m/b0", "m/b1"):
            repo.fork("m", branch)
            repo.save(branch, {"blob": rng.randbytes(200_000), "n": 0})
        discarded = [repo.save("m", {"blob": rng.randbytes(50_000), "n": n}) for n in (1, 2)]
        if mode == "unreached":
            repo.reset("m", first.manifest_id)
        reached = {
            info.manifest_id: repo.load(info.manifest_id)
            for chain in repo.chains()
            for info in repo.log(chain, graph=True)
        }
    done = run_until_crash(BRANCH_SCRIPT, point, str(path), mode)
    assert done.returncode == CRASH_EXIT_CODE, (point, done.stderr)
    with statebag.open(path) as repo:
        for manifest_id, data in reached.items():
            assert repo.load(manifest_id) == data, (point, manifest_id)
            assert repo.verify(manifest_id).ok
        head = repo.head("m")
        assert head is not None
        if point == "save.after_commit":
            assert repo.info(head).parents[1:] == [repo.head("m/b0"), repo.head("m/b1")]
            assert len(repo.load(head)["blob"]) == 3  # collect: the target's and both branches'
        repo.gc(grace=0)
        if mode == "unreached":
            assert all(
                internals.meta(repo).get(f"manifest/{r.manifest_id}") is None for r in discarded
            )
        report = repo.audit()
        assert report.ok and not report.over_counted and not report.orphan_packs, report
        assert not report.unswept and not report.in_flight, report
        assert (
            list(internals.meta(repo).scan("dlq/")) == []
            and list(internals.meta(repo).scan("orphan/")) == []
        )
