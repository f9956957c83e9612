"""The chunker parameters a repository records: a new one records format 2's defaults and its
normalization level, an existing one keeps what it recorded (a format-1 configuration, which
has no level, cuts at level 2), and saves cut with the recorded parameters."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

import statebag
from statebag import codec, keys
from statebag.config import Config

from . import internals
from .datagen import random_bytes

FORMAT1 = Path(__file__).parent / "fixtures" / "format1" / "repo"


def _recorded(repo: statebag.Repository) -> dict[str, Any]:
    stored = internals.meta(repo).get(keys.CONFIG)
    assert stored is not None
    recorded: dict[str, Any] = msgspec.msgpack.decode(stored)
    return recorded


def _stored_chunks(repo: statebag.Repository, chunker: Any, value: bytes) -> list[bool]:
    """For each chunk ``chunker`` cuts from the body of ``value`` (a ``bytes`` value above
    256 bytes encodes as bin16/bin32: a 3- or 5-byte head), whether the repository indexes it."""
    head = 3 if len(value) < 1 << 16 else 5
    _, digests = chunker.cut_and_hash(codec.encode(value)[head:])
    meta = internals.meta(repo)
    return [meta.get(keys.node_key(digest)) is not None for digest in digests]


def test_a_new_repository_records_format_2_and_the_new_defaults(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r") as repo:
        recorded = _recorded(repo)
        assert recorded["format"] == 2
        assert {name: recorded[name] for name in ("min_size", "avg_size", "max_size")} == {
            "min_size": 4096,
            "avg_size": 16384,
            "max_size": 65536,
        }
        assert recorded["normalization"] == 1
        assert repo.config == Config()


def test_saves_cut_at_the_recorded_level(tmp_path: Path) -> None:
    value = random_bytes(600_000, seed=21)
    for level in (0, 1, 3):
        with statebag.open(tmp_path / f"r{level}", normalization=level) as repo:
            repo.save("c", {"blob": value})
            assert all(_stored_chunks(repo, statebag.Chunker(normalization=level), value))
            # The level made a difference: format 1's level would have cut otherwise.
            assert not all(_stored_chunks(repo, statebag.Chunker(normalization=2), value))
        with statebag.open(tmp_path / f"r{level}", create=False) as again:
            assert again.config.normalization == level


def test_a_format1_repository_keeps_level_2_and_its_sizes(tmp_path: Path) -> None:
    shutil.copytree(FORMAT1, tmp_path / "repo")
    value = random_bytes(300_000, seed=22)
    with statebag.open(tmp_path / "repo", create=False) as repo:
        assert "normalization" not in _recorded(repo)
        assert repo.config.format == 1
        assert repo.config.normalization == 2
        repo.save("after-upgrade", {"blob": value})
        old = statebag.Chunker(1024, 4096, 16384, normalization=2)
        assert all(_stored_chunks(repo, old, value))
        new_level = statebag.Chunker(1024, 4096, 16384, normalization=Config().normalization)
        assert not all(_stored_chunks(repo, new_level, value))
    # Naming its level is accepted; naming another contradicts the repository.
    with statebag.open(tmp_path / "repo", create=False, normalization=2) as repo:
        assert repo.config.normalization == 2
    with pytest.raises(statebag.ConfigError, match="normalization"):
        statebag.open(tmp_path / "repo", create=False, normalization=1)
    with statebag.open(tmp_path / "repo", create=False) as repo:
        assert "normalization" not in _recorded(repo)  # opening never rewrites the config


def test_an_existing_repository_refuses_another_level(tmp_path: Path) -> None:
    statebag.open(tmp_path / "r", normalization=0).close()
    with pytest.raises(statebag.ConfigError, match="normalization=1"):
        statebag.open(tmp_path / "r", normalization=1)


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True, "1"])
def test_a_bad_level_is_refused_before_anything_is_written(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(statebag.InvalidInputError) as info:
        statebag.open(tmp_path / "r", normalization=bad)
    assert info.value.path == "normalization"
    assert "normalization" in str(info.value)
    assert not (tmp_path / "r").exists()
