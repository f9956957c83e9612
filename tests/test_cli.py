"""The command line: the demo's figures and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from statebag import cli, errors


def test_demo_json_reports_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--json", "--size-mib", "1", "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] in {"cython", "python"}
    assert report["chunks"] >= 1 and report["unique_chunks"] <= report["chunks"]
    assert 0 < report["stored_bytes"] < report["state_bytes"]  # the text compresses
    stages = [stage["stage"] for stage in report["stages"]]
    assert stages == [
        "encode (msgpack, canonical)",
        "cut_and_hash, threads=1",
        "cut_and_hash, threads=2",
        "zstd level 3, per chunk",
    ]
    assert all(stage["bytes"] == report["state_bytes"] for stage in report["stages"])


def test_demo_table_mentions_the_unused_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["demo", str(tmp_path), "--size-mib", "1", "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps to the terminal width
    assert "statebag demo" in out and "not used until the repository lands" in out


def test_statebag_errors_become_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(_args: object) -> int:
        raise errors.IntegrityError("node 00ff is corrupt")

    monkeypatch.setattr(cli, "_cmd_demo", fail)
    assert cli.main(["demo", "--quiet"]) == errors.IntegrityError.exit_code
    assert "integrity: node 00ff is corrupt" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
