"""The object store alone is enough (issue 21): every pack carries its save's manifest, and
``statebag.rebuild`` recreates the metadata from the packs; nothing deletes a pack holding a
version the metadata does not know to be deleted."""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

import statebag
from statebag import ConfigError, Repository
from statebag.hashing import hash_bytes
from statebag.liveness import ProcessLiveness
from statebag.manifests import MANIFEST_ENCODER
from statebag.meta.memory import MemoryMetaStore
from statebag.objects import ObjectStore
from statebag.objects.memory import MemoryObjectStore
from statebag.packs import PACKS_PREFIX, PackWriter, pack_id_of, pack_key, parse_pack
from statebag.testing import CRASH_EXIT_CODE, run_until_crash

from . import internals
from .repohelp import same

CAPPED = 100  # the brief's capped store: every rebuild write fits 100 operations
KINDS = ("memory", "local", "capped")


def manifests_in_packs(objects: ObjectStore) -> set[str]:
    found: set[str] = set()
    for key in objects.list(PACKS_PREFIX):
        pack_id = pack_id_of(key)
        if pack_id is not None:
            contents = parse_pack(objects.get(key), pack_id=pack_id.hex())
            found |= {entry.node_id.hex() for entry in contents.manifests}
    return found


def live_versions(repo: Repository) -> dict[str, Any]:
    return {key[len("manifest/") :]: None for key, _ in internals.meta(repo).scan("manifest/")}


def populate(repo: Repository) -> None:
    """Many chains, branches, merges, a fan-in, saves with nothing new, deletes, a deleted
    chain, and a gc that sweeps and compacts."""
    rng = random.Random(21)
    big = {"x": rng.randbytes(200_000), "y": rng.randbytes(200_000)}
    first = repo.save("a", {**big, "n": 0}).manifest_id
    repo.save("a", {"x": big["x"], "y": rng.randbytes(200_000), "n": 1})
    for n in range(2, 6):
        repo.save("a", {"x": big["x"], "log": list(range(n * 50)), "n": n})
    repo.fork("a", "b")
    for n in range(3):
        repo.save("b", {"x": big["x"], "log": list(range(300)), "b": rng.randbytes(3000 * (n + 1))})
    repo.save("b", repo.load_latest("b"))  # nothing new: no pack
    repo.merge("a", ["b"], strategy="last_wins")
    repo.save("a", repo.load_latest("a"))  # nothing new again
    for chain in ("c", "d", "e"):
        for n in range(3):
            repo.save(chain, {"v": n, "chain": chain, "pad": rng.randbytes(1000 + n)})
    repo.save("c", {"v": 9}, merged=[repo.head("d")])  # a fan-in
    repo.fork("a", "f")  # a fork never saved on: not in any pack
    repo.delete(first)  # the 200 KB y only it had dies in a pack shared with x
    for info in list(repo.log("e"))[1:]:
        repo.delete(info.manifest_id)
    repo.delete_chain("d")
    report = repo.gc(grace=0)
    assert report.packs_compacted >= 1, report  # the pack with the dead y was compacted
    assert set(live_versions(repo)) <= manifests_in_packs(internals.objects(repo))


def open_kind(kind: str, tmp_path: Path) -> tuple[Repository, Any]:
    if kind == "memory":
        url: Any = f"memory://{uuid.uuid4().hex}"
        return statebag.open(url), url
    if kind == "local":
        path = tmp_path / "repo"
        return statebag.open(path, fsync=False), path
    objects, meta = MemoryObjectStore(), MemoryMetaStore(max_batch=CAPPED)
    return statebag.open(objects=objects, meta=meta, create=True), objects


def lose_metadata(kind: str, repo: Repository, where: Any) -> Any:
    """Empty the metadata as a lost table or a deleted file would; what rebuild takes."""
    meta = internals.meta(repo)
    repo.close()
    if kind == "local":
        for name in os.listdir(where):
            if name.startswith("meta.sqlite"):
                os.unlink(where / name)
        return where
    if kind == "memory":
        for key, _ in list(meta.scan("")):
            meta.delete(key)
        for key, _ in list(meta.counters("")):
            meta.write([statebag.meta.DropCounter(key)])
        return where
    return (where, MemoryMetaStore(max_batch=CAPPED))


def reopen(kind: str, where: Any) -> Repository:
    if kind != "capped":
        return statebag.open(where, create=False)
    objects, meta = where
    config = statebag.open(objects=objects, meta=meta, create=False).config
    return Repository(objects, meta, config, url="capped://", liveness=ProcessLiveness())


@pytest.mark.parametrize("kind", KINDS)
def test_rebuild_restores_every_live_version(kind: str, tmp_path: Path) -> None:
    repo, where = open_kind(kind, tmp_path)
    populate(repo)
    states = {manifest_id: repo.load(manifest_id) for manifest_id in live_versions(repo)}
    heads = {chain: repo.head(chain) for chain in repo.chains() if chain != "f"}
    stats = repo.stats()
    stores = lose_metadata(kind, repo, where)
    with pytest.raises(ConfigError, match="rebuild"):
        if kind == "capped":
            statebag.open(objects=stores[0], meta=stores[1], create=True)
        else:
            statebag.open(stores)

    dry = statebag.rebuild(stores, dry_run=True)
    report = statebag.rebuild(stores)
    assert dry == report
    assert report.chains == len(heads) and report.versions >= len(states), report
    rebuilt = reopen(kind, stores)
    try:
        for manifest_id, state in states.items():
            same(state, rebuilt.load(manifest_id))
        assert {c: rebuilt.head(c) for c in rebuilt.chains()} == heads
        audit = rebuilt.audit()
        assert audit.ok and not audit.orphan_packs and not audit.unswept, audit
        assert not audit.over_counted, audit
        assert rebuilt.verify().ok
        after = rebuilt.stats()
        assert (after.bytes_stored, after.nodes) == (stats.bytes_stored, stats.nodes)
        for chain in heads:
            saved = rebuilt.save(chain, {"new": chain})
            assert rebuilt.load(saved.manifest_id) == {"new": chain}
        rebuilt.gc(grace=0)
        for manifest_id, state in states.items():
            same(state, rebuilt.load(manifest_id))
        assert rebuilt.audit().ok
    finally:
        rebuilt.close()


def test_a_save_with_nothing_new_is_packed_by_gc() -> None:
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repo:
        repo.save("c", {"a": os.urandom(2000)})
        again = repo.save("c", repo.load_latest("c"))
        assert again.pack_keys == [] and again.requests.get("put", 0) == 0
        objects = internals.objects(repo)
        assert again.manifest_id not in manifests_in_packs(objects)
        repo.gc(grace=0)
        assert again.manifest_id in manifests_in_packs(objects)
        assert list(internals.meta(repo).scan("unpacked/")) == []
        assert repo.audit().ok


def test_rebuild_refuses_a_metadata_store_that_is_not_empty() -> None:
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repo:
        repo.save("c", {"a": 1})
        meta = internals.meta(repo)
        before = list(meta.scan(""))
        with pytest.raises(ConfigError, match="not empty"):
            statebag.rebuild((internals.objects(repo), meta))
        assert list(meta.scan("")) == before


def test_open_and_init_refuse_packs_or_a_configuration_object(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "repo"
    with statebag.open(path, fsync=False) as repo:
        repo.save("c", {"a": os.urandom(5000)})
    for name in os.listdir(path):
        if name.startswith("meta.sqlite"):
            os.unlink(path / name)
    before = sorted(p.name for p in (path / "objects").rglob("*"))
    code, _, err = run("-r", str(path), "init")
    assert code == ConfigError.exit_code and "rebuild" in err, err
    with pytest.raises(ConfigError, match="rebuild"):
        statebag.open(path)
    assert sorted(p.name for p in (path / "objects").rglob("*")) == before
    # Only the configuration object left (its packs gone): still refused, by name.
    shutil.rmtree(path / "objects" / "packs")
    for create in (True, False):
        with pytest.raises(ConfigError, match="rebuild"):
            statebag.open(path, create=create, inline_max=64)
    code, _, err = run("-r", str(path), "rebuild")
    assert code == 0, err
    with statebag.open(path) as repo:
        assert list(repo.chains()) == []


def test_audit_repair_and_gc_keep_a_pack_with_an_unknown_manifest() -> None:
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repo:
        meta, objects = internals.meta(repo), internals.objects(repo)
        first = repo.save("c", {"a": os.urandom(30_000)})
        repo.save("c", {"a": os.urandom(30_000)})
        repo.delete(first.manifest_id)
        # The tombstone lost: the metadata no longer knows the version was deleted.
        meta.delete("tomb/" + first.manifest_id)
        repo.gc(grace=0)
        assert set(first.pack_keys) <= set(objects.list(PACKS_PREFIX))
        # As an orphan (its record gone too), the audit's repair keeps it as well.
        for key in first.pack_keys:
            meta.delete("pack/" + key.rsplit("/", 1)[1])
            for counter, _ in list(meta.counters("dead/" + key.rsplit("/", 1)[1])):
                meta.write([statebag.meta.DropCounter(counter)])
        report = repo.audit(repair=True)
        assert [k.rsplit("/", 1)[1] for k in first.pack_keys] == report.orphan_packs
        assert set(first.pack_keys) <= set(objects.list(PACKS_PREFIX))


def test_gc_deletes_the_pack_of_a_deleted_version() -> None:
    """The other side of the rule above: a tombstone lets the pack go."""
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repo:
        first = repo.save("c", {"a": os.urandom(30_000)})
        repo.save("c", {"a": os.urandom(30_000)})
        repo.delete(first.manifest_id)
        repo.gc(grace=0)
        assert not set(first.pack_keys) & set(internals.objects(repo).list(PACKS_PREFIX))


CRASH_SCRIPT = """
import sys, statebag
statebag.rebuild(sys.argv[1])
"""


def test_a_rebuild_that_crashed_is_run_again_to_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with statebag.open(path, fsync=False) as repo:
        populate(repo)
        states = {manifest_id: repo.load(manifest_id) for manifest_id in live_versions(repo)}
    reference = statebag.rebuild((MemoryObjectStore(), MemoryMetaStore()))
    assert reference.versions == 0  # (an empty object store rebuilds to nothing)
    for name in os.listdir(path):
        if name.startswith("meta.sqlite"):
            os.unlink(path / name)
    done = run_until_crash(CRASH_SCRIPT, "rebuild.after_batch", str(path))
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    with pytest.raises(ConfigError, match="rebuild"):
        statebag.open(path)  # partly rebuilt: no configuration yet
    report = statebag.rebuild(path)
    assert report.versions >= len(states) and not report.problems[1:], report
    with statebag.open(path) as repo:
        for manifest_id, state in states.items():
            same(state, repo.load(manifest_id))
        audit = repo.audit()
        assert audit.ok and not audit.over_counted and not audit.unswept, audit


def test_a_format_1_repository_rebuilds_its_nodes_and_says_what_it_could_not(
    tmp_path: Path,
) -> None:
    fixture = Path(__file__).parent / "fixtures" / "format1" / "repo"
    shutil.copytree(fixture, tmp_path / "repo")
    for name in os.listdir(tmp_path / "repo"):
        if name.startswith("meta.sqlite"):
            os.unlink(tmp_path / "repo" / name)
    # Packs older than the grace period, as a real repository's are (a checkout's are new).
    old = time.time() - 7200
    for folder, _, files in os.walk(tmp_path / "repo" / "objects"):
        for name in files:
            os.utime(os.path.join(folder, name), (old, old))
    report = statebag.rebuild(tmp_path / "repo")
    assert report.versions == 0 and report.nodes > 0 and report.packs > 0
    assert any("format 1" in problem for problem in report.problems), report
    with statebag.open(tmp_path / "repo") as repo:
        assert repo.config.format == 1
        assert repo.stats().nodes == report.nodes
        audit = repo.audit()
        # Nodes and no version: exactly what lost metadata looks like, so the audit says so
        # and gc deletes nothing, rather than collect the only copy of the data.
        assert audit.metadata_lost and len(audit.unswept) == report.nodes, audit
        with pytest.raises(statebag.ConfigError, match="rebuild"):
            repo.gc(grace=0)
        assert repo.stats().nodes == report.nodes


def test_a_repack_keeps_every_manifest_a_rebuild_needs() -> None:
    """gc's repack moves a chain's nodes out of many small packs; the packs it empties carry
    the manifests of their saves, which must survive into some pack, or a rebuild after it
    would lose those versions."""
    objects, meta = MemoryObjectStore(), MemoryMetaStore()
    with statebag.open(objects=objects, meta=meta, create=True) as repo:
        rng = random.Random(4)
        history: list[str] = []
        states: dict[str, Any] = {}
        for step in range(60):
            history.append(rng.randbytes(3000).hex())
            state = {"messages": list(history), "step": step}
            states[repo.save("agent", state).manifest_id] = state
        report = repo.gc(grace=0)
        assert report.nodes_repacked > 0, report
        assert set(states) <= manifests_in_packs(objects)
    rebuilt = statebag.rebuild((objects, MemoryMetaStore()))
    assert rebuilt.versions == len(states), rebuilt


def test_a_manifest_whose_claims_its_nodes_do_not_back_is_not_restored() -> None:
    """A pack carrying a crafted manifest (its nodes whole, its logical size a lie): the
    rebuild reports it and counts none of it, so ``stats`` never trusts a claim no save
    checked."""
    objects, meta = MemoryObjectStore(), MemoryMetaStore()
    with statebag.open(objects=objects, meta=meta, create=True) as repo:
        saved = repo.save("c", {"blob": random.Random(3).randbytes(50_000), "n": 1})
        honest = repo.stats().bytes_logical
        manifest = internals.manifest(repo, saved.manifest_id)
    crafted = msgspec.structs.replace(manifest, chain="crafted", size=2**40)
    raw = MANIFEST_ENCODER.encode(crafted)
    writer = PackWriter(bytes(16))
    writer.add_manifest(hash_bytes(raw), raw)
    pack_id, data, _ = writer.finish()
    objects.put(pack_key(pack_id), data)
    report = statebag.rebuild((objects, rebuilt := MemoryMetaStore()))
    assert report.versions == 1 and report.chains == 1, report
    assert any(hash_bytes(raw).hex() in problem for problem in report.problems), report
    with statebag.open(objects=objects, meta=rebuilt, create=False) as repo:
        assert repo.stats().bytes_logical == honest
        assert list(repo.chains()) == ["c"]
