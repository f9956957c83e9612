"""What the audit and gc must never do: crash on files that are not packs, or delete packs
the metadata does not describe (a lost or emptied metadata store, a node that went missing
from the index)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConfigError, opening
from statebag.keys import PendingRecord, encode_record, node_key, pack_record_key
from statebag.objects.local import LocalObjectStore
from statebag.packs import pack_id_of, pack_key

from . import internals

STATE = {"blob": bytes(range(256)) * 400, "n": 1}


def packs(repo: statebag.Repository) -> list[str]:
    return [k for k in internals.objects(repo).list("packs/") if pack_id_of(k) is not None]


# -- stray files ----------------------------------------------------------------------------------


def test_pack_id_of_takes_only_what_pack_key_writes() -> None:
    pack_id = bytes(range(32))
    text = pack_id.hex()
    assert pack_id_of(pack_key(pack_id)) == pack_id
    for key in (
        f"packs/{text[:2]}/{text}.tmp",
        f"packs/{text[:2]}/{text.upper()}",
        f"packs/ff/{text}",
        f"packs/{text}",
        f"packs/{text[:2]}/{text}/x",
        f"packs/{text[:2]}/{text[:-1]}",
        f"other/{text[:2]}/{text}",
        "packs/ab/junk",
    ):
        assert pack_id_of(key) is None, key


def test_stray_files_are_reported_and_never_deleted(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "repo"
    with statebag.open(path, fsync=False, grace=0) as repo:
        first = repo.save("c", STATE)
        repo.save("c", {**STATE, "n": 2})
        [pack] = packs(repo)[:1]
        text = pack.rsplit("/", 1)[1]
        directory = path / "objects" / "packs" / text[:2]
        strays = {
            f"packs/{text[:2]}/junk": b"not a pack",
            f"packs/{text[:2]}/{text}.part": b"a download in progress",
            f"packs/ff/{'e' * 64}": b"a pack name in the wrong directory",
            f"packs/{'g' * 64}": b"not hex",
            f"packs/{text[:2]}/nested/{text}": b"nested",
        }
        for key, data in strays.items():
            file = path / "objects" / key
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
        # Neither objects nor listed: a FIFO (reading it would block) and a link back up.
        os.mkfifo(directory / "fifo")
        os.symlink(path / "objects", directory / "loop")
        (directory / "~backup").write_bytes(b"not a valid key")
        (directory / text.upper()).write_bytes(b"not a valid key either")
        before = sorted(p.name for p in (path / "objects").rglob("*"))

        report = repo.audit(repair=True)
        assert report.ok and sorted(report.stray_objects) == sorted(strays), report
        assert report.orphan_packs == [] and report.metadata_lost == []
        repo.delete(first.manifest_id)
        repo.gc(grace=0)
        assert repo.verify().ok
        assert sorted(repo.audit(repair=True).stray_objects) == sorted(strays)
    after = sorted(p.name for p in (path / "objects").rglob("*"))
    assert {name for name in before if name not in after} <= {text}  # only a dead pack went
    for key, data in strays.items():
        assert (path / "objects" / key).read_bytes() == data
    code, out, err = run("-r", str(path), "audit")
    assert code == 0 and "stray file       5" in out and "leak" not in out, (out, err)


def test_local_listing_skips_what_is_not_a_file(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", fsync=False)
    store.put("a/b", b"x")
    os.mkfifo(tmp_path / "objects" / "a" / "fifo")
    os.symlink(tmp_path / "objects", tmp_path / "objects" / "a" / "up")
    os.symlink(tmp_path / "objects" / "a" / "b", tmp_path / "objects" / "a" / "c")
    os.symlink(tmp_path / "nowhere", tmp_path / "objects" / "a" / "d")
    assert list(store.list()) == ["a/b", "a/c"]


# -- lost metadata --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    url = str(tmp_path / "repo") if request.param == "sqlite" else f"memory://lost-{id(tmp_path)}"
    with statebag.open(url, fsync=False, grace=0) as handle:
        yield handle
    if request.param == "memory":
        opening.forget_memory(url[len("memory://") :])


def fill(repo: statebag.Repository) -> list[str]:
    ids = [repo.save(chain, {**STATE, "n": n}).manifest_id for chain in "ab" for n in range(3)]
    repo.delete(ids[0])  # a tombstone, and nodes only the deleted version had
    return ids


def stored(repo: statebag.Repository) -> dict[str, bytes]:
    objects = internals.objects(repo)
    return {key: objects.get(key) for key in objects.list("")}


def metadata(repo: statebag.Repository) -> tuple[list[Any], list[Any]]:
    meta = internals.meta(repo)
    return list(meta.scan("")), list(meta.counters(""))


@pytest.mark.parametrize("kept", [["config"], []])
def test_lost_metadata_is_reported_and_nothing_is_deleted(
    repo: statebag.Repository, kept: list[str]
) -> None:
    """Everything but the configuration (or everything) gone: every pack is an orphan and
    every node unreferenced, and yet the audit repairs nothing and gc refuses to run."""
    fill(repo)
    meta = internals.meta(repo)
    for key, _ in list(meta.scan("")):
        if key not in kept:
            meta.delete(key)
    objects_before = stored(repo)
    metadata_before = metadata(repo)

    report = repo.audit(repair=True)
    assert not report.ok and report.repaired == 0, report
    [why] = report.metadata_lost
    assert ("no configuration" if not kept else "no version and no tombstone") in why
    assert len(report.orphan_packs) == len([key for key in objects_before if key != "config"])
    with pytest.raises(ConfigError, match="rebuild"):
        repo.gc(grace=0)
    with pytest.raises(ConfigError, match="rebuild"):
        repo.gc(grace=0, dry_run=True)
    assert stored(repo) == objects_before
    assert metadata(repo) == metadata_before


def test_lost_metadata_through_the_cli(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "repo"
    with statebag.open(path, fsync=False, grace=0) as handle:
        fill(handle)
        meta = internals.meta(handle)
        for key, _ in list(meta.scan("manifest/")):
            meta.delete(key)
        for key, _ in list(meta.scan("tomb/")):
            meta.delete(key)
        before = stored(handle)
    code, out, err = run("-r", str(path), "audit", "--repair")
    assert code == 3 and "metadata lost    1" in out and "DANGER" in out, (out, err)
    code, _, err = run("-r", str(path), "gc", "--grace", "0")
    assert code == ConfigError.exit_code and "rebuild" in err
    with statebag.open(path) as handle:
        assert stored(handle) == before


def test_a_first_save_in_flight_is_not_lost_metadata(repo: statebag.Repository) -> None:
    """A new repository whose first save died after its upload: its pending entry names the
    pack, so gc rolls it back as usual."""
    pack_id = os.urandom(32)
    internals.objects(repo).put(pack_key(pack_id), b"a pack nothing indexes")
    record = PendingRecord("c", 0, 1, [pack_id])
    internals.meta(repo).put("pending/" + "d" * 32, encode_record(record))
    assert repo.audit().metadata_lost == []
    repo.gc(grace=0)
    assert list(stored(repo)) == ["config"]  # the pack went; the configuration stays
    report = repo.audit()
    assert report.ok and not report.in_flight, report


def test_repair_keeps_orphan_packs_while_nodes_are_missing(repo: statebag.Repository) -> None:
    """A pack whose record and one of whose index records were lost: the audit finds the
    node missing and the pack an orphan; the pack may be the node's only copy."""
    ids = fill(repo)
    meta = internals.meta(repo)
    objects_before = stored(repo)
    root = internals.manifest(repo, ids[-1]).root
    record = meta.get(node_key(root))
    assert record is not None
    meta.delete(node_key(root))
    meta.delete(pack_record_key(record[:32]))

    report = repo.audit(repair=True)
    assert not report.ok and report.missing_nodes == [root.hex()]
    assert report.orphan_packs == [record[:32].hex()]
    assert stored(repo) == objects_before


def test_a_young_orphan_pack_in_a_new_repository_is_not_lost_metadata(tmp_path: Path) -> None:
    """A save rolled back while its upload was in flight leaves a pack no record names; in a
    repository with no version yet, it must not read as lost metadata (gc would refuse to
    run) before the grace period, and the audit deletes it as an orphan only after it."""
    with statebag.open(tmp_path / "repo", fsync=False, grace=3600) as repo:
        pack_id = os.urandom(32)
        internals.objects(repo).put(pack_key(pack_id), b"a late upload")
        report = repo.audit()
        assert report.metadata_lost == [] and report.orphan_packs == [pack_id.hex()], report
        repo.gc(grace=0)  # runs: no ConfigError
        assert repo.audit(repair=True).orphan_packs == [pack_id.hex()]
        assert pack_key(pack_id) in set(internals.objects(repo).list("packs/"))  # too young
