"""The ``gc`` and ``audit`` commands (and ``init --grace``), in-process through ``cli.main``:
their JSON against the report types, what they write, their exit codes and their usage
errors. Faults are injected by hand through a Repository opened on the same directory."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import Repository, errors
from statebag.cli.parser import duration
from statebag.packs import pack_key
from statebag.results import AuditReport, GCReport

from . import internals
from .clihelp import Run

# The API's keys, plus the CLI's word for a manifest: "versions".
GC_KEYS = {*GCReport.__struct_fields__, "versions_deleted"}
AUDIT_KEYS = {*AuditReport.__struct_fields__, "versions"}
STRAY = "ab" * 32  # the id of a pack no record names


def make_repo(path: Path, chains: dict[str, int], *, grace: int | None = 0) -> dict[str, list[str]]:
    """A local repository without fsync holding ``chains[name]`` versions of each chain, each
    with a tree field of its own (so every deleted version frees data); the ids, oldest
    first. ``grace`` is the repository's (0: gc and repair free at once)."""
    rng = random.Random(7)
    ids: dict[str, list[str]] = {}
    options: dict[str, Any] = (
        {"fsync": False} if grace is None else {"fsync": False, "grace": grace}
    )
    with statebag.open(path, **options) as repo:
        for chain, versions in chains.items():
            ids[chain] = [
                repo.save(chain, {"blob": rng.randbytes(6000), "step": step}).manifest_id
                for step in range(versions)
            ]
    return ids


def snapshot(repo: Repository) -> tuple[list[Any], list[Any], list[str]]:
    """Every metadata key and counter, and every stored object: what a write would change."""
    return (
        list(internals.meta(repo).scan("")),
        list(internals.meta(repo).counters("")),
        sorted(internals.objects(repo).list("")),
    )


def fields(out: str) -> dict[str, str]:
    """The ``name  value`` lines of a command's human output (two spaces or more apart)."""
    pairs = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def root_of(repo: Repository, manifest_id: str) -> str:
    return internals.manifest(repo, manifest_id).root.hex()


# -- gc -----------------------------------------------------------------------------------------


def test_gc_keep_last_deletes_the_older_versions_and_reports_them(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    ids = make_repo(path, {"a": 6, "b": 3})
    with statebag.open(path) as repo:
        stored_before = repo.stats().bytes_stored

    report = run.json("-r", str(path), "gc", "--keep-last", "2", "--json")

    assert set(report) == GC_KEYS
    assert report["manifests_deleted"] == report["versions_deleted"] == (6 - 2) + (3 - 2)
    # Each deleted version held a blob of its own (one leaf node, in a pack of its own);
    # the repository's grace is 0, so the same run frees them.
    assert report["nodes_freed"] >= 5
    assert report["packs_deleted"] >= 5
    assert report["deferred"] == 0 and report["dead_letters_processed"] == 0
    with statebag.open(path) as repo:
        assert [info.manifest_id for info in repo.log("a")] == ids["a"][:-3:-1]
        assert [info.manifest_id for info in repo.log("b")] == ids["b"][:-3:-1]
        assert repo.stats().bytes_stored == stored_before - report["bytes_reclaimed"]
        assert report["bytes_reclaimed"] > 5 * 6000
        for chain in ids:
            assert repo.load_latest(chain)["step"] == len(ids[chain]) - 1
        audit = repo.audit()
        assert audit.ok and not (audit.unswept or audit.orphan_packs or audit.over_counted)

    # Nothing is left to do.
    again = run.json("-r", str(path), "gc", "--keep-last", "2", "--json")
    assert again == {key: 0 for key in GC_KEYS}


def test_gc_human_output(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 4})
    code, out, err = run("-r", str(path), "gc", "--keep-last", "1")
    assert code == 0, err
    shown = fields(out)
    assert shown["versions deleted"] == "3"
    assert int(shown["nodes freed"]) >= 3 and int(shown["packs deleted"]) >= 3
    assert shown["reclaimed"].endswith("KiB)") and shown["deferred"] == "0"


def test_gc_dry_run_writes_nothing(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    ids = make_repo(path, {"a": 5, "b": 2})
    with statebag.open(path) as repo:
        repo.delete(ids["b"][0])  # something for the sweep to find, too
        before = snapshot(repo)

    report = run.json("-r", str(path), "gc", "--keep-last", "1", "--dry-run", "--json")
    code, out, err = run("-r", str(path), "gc", "--keep-last", "1", "--dry-run")

    assert set(report) == GC_KEYS
    assert report["manifests_deleted"] == 4  # what retention would delete: a's four old ones
    assert report["nodes_freed"] >= 1  # b's deleted version's blob is due (grace 0)
    assert report["packs_deleted"] >= 1 and report["bytes_reclaimed"] > 0
    assert code == 0, err
    assert out.startswith("dry run") and fields(out)["versions deleted"] == "4"
    with statebag.open(path) as repo:
        assert snapshot(repo) == before
        assert len(list(repo.log("a"))) == 5
    # The dry run said exactly what a gc then does.
    assert run.json("-r", str(path), "gc", "--keep-last", "1", "--json") == report


def test_gc_leaves_young_data_to_the_grace_period(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 3}, grace=None)  # the default grace: 1 h

    first = run.json("-r", str(path), "gc", "--keep-last", "1", "--json")
    assert first["manifests_deleted"] == 2
    assert first["nodes_freed"] == first["packs_deleted"] == first["bytes_reclaimed"] == 0
    assert first["deferred"] >= 2  # the two blobs, unreferenced for less than an hour

    assert run.json("-r", str(path), "gc", "--grace", "1h", "--json")["nodes_freed"] == 0
    second = run.json("-r", str(path), "gc", "--grace", "0", "--json")
    assert second["manifests_deleted"] == 0
    assert second["nodes_freed"] >= 2 and second["bytes_reclaimed"] > 2 * 6000
    assert second["deferred"] == 0


def test_gc_keep_within_and_chain_limit_retention(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 3, "b": 3, "c": 3})
    # Every version is seconds old: a week keeps them all.
    assert (
        run.json("-r", str(path), "gc", "--keep-within", "7d", "--json")["manifests_deleted"] == 0
    )
    report = run.json(
        "-r", str(path), "gc", "--keep-last", "1", "--chain", "a", "--chain", "b", "--json"
    )
    assert report["manifests_deleted"] == 4
    with statebag.open(path) as repo:
        assert [len(list(repo.log(chain))) for chain in "abc"] == [1, 1, 3]
    # keep_daily: every version was saved today, so one day keeps only the newest.
    report = run.json("-r", str(path), "gc", "--keep-daily", "1", "--json")
    assert report["manifests_deleted"] == 2


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--keep-within", "7x"], "--keep-within"),
        (["--keep-within", "d"], "--keep-within"),
        (["--grace", "1.5.3"], "--grace"),
        (["--grace=-1h"], "--grace"),
        (["--grace", "1h30m"], "--grace"),
        (["--keep-last=-1"], "--keep-last"),
        (["--keep-daily", "two"], "--keep-daily"),
    ],
)
def test_gc_bad_option_is_a_usage_error_naming_it(
    run: Run, tmp_path: Path, argv: list[str], option: str
) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 2})
    with statebag.open(path) as repo:
        before = snapshot(repo)
    code, out, err = run("-r", str(path), "gc", *argv)
    assert code == 2
    assert option in err and out == ""
    with statebag.open(path) as repo:
        assert snapshot(repo) == before


def test_gc_chain_without_a_rule_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 2})
    code, _, err = run("-r", str(path), "gc", "--chain", "a")
    assert code == errors.InvalidInputError.exit_code == 2
    assert err.startswith("statebag: error: ") and "--chain" in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("1.5h", 5400),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        ("0", 0),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_gc_needs_an_existing_repository(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    code, _, err = run("-r", str(missing), "gc")
    assert code == errors.NotFoundError.exit_code and "init" in err
    assert not missing.exists()


# -- init --grace --------------------------------------------------------------------------------


def test_init_records_grace(run: Run, tmp_path: Path) -> None:
    path = str(tmp_path / "r")
    config = run.json("-r", path, "init", "--no-fsync", "--grace", "15m", "--json")["config"]
    assert config["grace"] == 900
    code, _, err = run("-r", path, "init", "--grace", "1h")
    assert code == errors.ConfigError.exit_code and "grace" in err
    code, _, err = run("-r", str(tmp_path / "s"), "init", "--grace", "1.5")
    assert code == 2 and "--grace" in err


# -- audit --------------------------------------------------------------------------------------


def test_audit_clean_repository(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 3, "b": 1})
    report = run.json("-r", str(path), "audit", "--json")
    assert set(report) == AUDIT_KEYS
    assert report["ok"] is True and report["manifests"] == report["versions"] == 4
    assert report["nodes"] >= 4
    for name in AUDIT_KEYS - {"ok", "repaired", "manifests", "versions", "nodes"}:
        assert report[name] == [], name
    assert report["repaired"] == 0

    code, out, err = run("-r", str(path), "audit")
    assert code == 0 and err == ""
    assert fields(out)["result"] == "ok" and fields(out)["versions"] == "4"


def test_audit_finds_a_lowered_count_and_exits_non_zero(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    ids = make_repo(path, {"a": 2})
    with statebag.open(path) as repo:
        root = root_of(repo, ids["a"][-1])
        internals.meta(repo).add(internals.count_key(repo, root), -1)

    report = run.json("-r", str(path), "audit", "--json", code=errors.IntegrityError.exit_code)
    assert report["ok"] is False and report["under_counted"] == [root]
    code, out, err = run("-r", str(path), "audit")
    assert code == 3
    assert "DANGER" in out and f"under-counted {root}" in out
    assert err.startswith("statebag: error: audit found 1 problem")

    # repair fixes the count (the exit still says what it found), and the next audit is clean
    repaired = run.json("-r", str(path), "audit", "--repair", "--json", code=3)
    assert repaired["under_counted"] == [root] and repaired["repaired"] >= 1
    assert run.json("-r", str(path), "audit", "--json")["ok"] is True
    with statebag.open(path) as repo:
        assert repo.load(ids["a"][-1])["step"] == 1


def test_audit_lists_a_stray_pack_as_a_leak_and_repair_deletes_it(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 2})  # grace 0: any orphan is old enough to go
    key = pack_key(bytes.fromhex(STRAY))
    with statebag.open(path) as repo:
        internals.objects(repo).put(key, b"junk")

    report = run.json("-r", str(path), "audit", "--json")
    assert report["ok"] is True and report["orphan_packs"] == [STRAY]
    code, out, _ = run("-r", str(path), "audit")
    assert code == 0  # a leak alone is no danger
    assert "leak" in out and f"orphan pack {STRAY}" in out

    repaired = run.json("-r", str(path), "audit", "--repair", "--json")
    assert repaired["orphan_packs"] == [STRAY] and repaired["repaired"] == 1
    with statebag.open(path) as repo:
        assert key not in set(internals.objects(repo).list("packs/"))
    clean = run.json("-r", str(path), "audit", "--json")
    assert clean["ok"] is True and clean["orphan_packs"] == []


def test_audit_repair_keeps_an_orphan_younger_than_the_grace_period(
    run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "repo"
    make_repo(path, {"a": 1}, grace=None)  # the default grace: 1 h
    key = pack_key(bytes.fromhex(STRAY))
    with statebag.open(path) as repo:
        internals.objects(repo).put(key, b"junk")
    code, out, err = run("-r", str(path), "audit", "--repair")
    assert code == 0, err
    assert fields(out)["repaired"] == "0" and fields(out)["orphan pack"] == "1"
    with statebag.open(path) as repo:
        assert key in set(internals.objects(repo).list("packs/"))
