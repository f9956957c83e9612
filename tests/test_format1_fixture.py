"""A repository written by an earlier statebag (tests/fixtures/format1, made once by
tests/fixtures/make_format1.py) opens and reads identically with this one: every version
loads to the same state, heads and logs are the same, verify and audit are ok, and new
saves, forks, merges and gc work on it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

import statebag

from .repohelp import same

FIXTURE = Path(__file__).parent / "fixtures" / "format1"


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    raw = zstandard.ZstdDecompressor().decompress((FIXTURE / "expected.msgpack.zst").read_bytes())
    data: dict[str, Any] = msgspec.msgpack.decode(raw)
    return data


@pytest.fixture
def repo(tmp_path: Path) -> statebag.Repository:
    # A copy: opening and saving must never touch the committed fixture.
    shutil.copytree(FIXTURE / "repo", tmp_path / "repo")
    handle = statebag.open(tmp_path / "repo", create=False)
    yield handle
    handle.close()


def test_fixture_opens_with_its_recorded_config(repo: statebag.Repository) -> None:
    assert repo.config.format == 1
    assert (repo.config.min_size, repo.config.avg_size, repo.config.max_size) == (
        1024,
        4096,
        16384,
    )


def test_every_version_loads_to_the_state_it_had(
    repo: statebag.Repository, expected: dict[str, Any]
) -> None:
    assert len(expected["states"]) >= 10
    for manifest_id, state in expected["states"].items():
        same(state, repo.load(manifest_id))
        lazy = repo.load(manifest_id, lazy=True)
        for name in state:
            same(state[name], lazy[name])


def test_heads_logs_and_graphs_are_the_same(
    repo: statebag.Repository, expected: dict[str, Any]
) -> None:
    assert sorted(repo.chains()) == sorted(expected["heads"])
    for chain, head in expected["heads"].items():
        assert repo.head(chain) == head
        assert [i.manifest_id for i in repo.log(chain)] == expected["logs"][chain]
        assert [i.manifest_id for i in repo.log(chain, graph=True)] == expected["graphs"][chain]
    assert msgspec.structs.asdict(repo.stats()) == expected["stats"]


def test_deleted_and_pinned_versions_keep_their_state(
    repo: statebag.Repository, expected: dict[str, Any]
) -> None:
    with pytest.raises(statebag.NotFoundError):
        repo.load(expected["deleted"])
    with pytest.raises(statebag.ConflictError):
        repo.delete(expected["pinned"])


def test_verify_and_audit_are_ok(repo: statebag.Repository) -> None:
    report = repo.verify()
    assert report.ok, report.problems
    assert report.manifests == repo.stats().manifests
    audit = repo.audit()
    assert audit.ok and not audit.under_counted and not audit.over_counted, audit


def test_new_saves_forks_merges_and_gc_work_on_it(
    repo: statebag.Repository, expected: dict[str, Any]
) -> None:
    head = expected["heads"]["agent"]
    state = repo.load(head)
    state["step"] = 100
    result = repo.save("agent", state, parent=head)
    assert result.parents == [head]
    same(state, repo.load(result.manifest_id))
    repo.fork("agent", "agent/late")
    repo.save("agent/late", {**state, "late": True})
    merged = repo.merge("agent", ["agent/late"])
    assert repo.load(merged.manifest_id)["late"] is True
    repo.save("fresh", {"x": b"y" * 5000})
    repo.gc(keep_last=2, grace=0)
    assert repo.verify().ok
    assert repo.audit().ok
    for chain in ("small", "resettable", "agent/branch"):
        head = expected["heads"][chain]
        assert repo.head(chain) == head
        same(expected["states"][head], repo.load(head))


def test_an_upgrade_keeps_the_counts_and_the_cut_it_had(
    repo: statebag.Repository, expected: dict[str, Any], tmp_path: Path
) -> None:
    """The fixture's configuration predates ``normalization`` and ``counts_with_records``:
    absent, they mean level 2 and counts under ``ref/``, before and after an upgrade (which
    changes the format alone), so nothing stored is misread or miscounted."""
    before = repo.config
    assert (before.normalization, before.counts_with_records) == (2, False)
    assert repo.upgrade() == 2
    after = repo.config
    assert after == msgspec.structs.replace(before, format=2)
    head = expected["heads"]["agent"]
    state = repo.load(head)
    state["after_upgrade"] = [1, 2, 3]
    saved = repo.save("agent", state).manifest_id
    assert repo.verify().ok and repo.audit().ok
    repo.gc(keep_last=1, grace=0)
    assert repo.audit().ok
    repo.close()
    with statebag.open(tmp_path / "repo", create=False) as reopened:
        assert reopened.config == after
        same(state, reopened.load(saved))
        assert reopened.audit().ok
