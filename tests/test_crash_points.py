"""Crash points are armed through statebag.testing only: the variable the crash suite uses
means nothing to statebag itself, whatever its value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import statebag
from statebag import InvalidInputError
from statebag.testing import (
    CRASH_ENV,
    CRASH_EXIT_CODE,
    CRASH_POINTS,
    arm_crash_point,
    arm_crash_point_from_environment,
    run_until_crash,
)

SAVE = """
import sys
import statebag

with statebag.open(sys.argv[1], fsync=False) as repo:
    print(repo.save("c", {"blob": bytes(range(256)) * 400}).manifest_id)
"""


def python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("value", ["save.after_pending", "save.after_commit", "bogus"])
def test_normal_use_never_reads_the_variable(tmp_path: Path, value: str) -> None:
    done = python(SAVE, str(tmp_path / "repo"), **{CRASH_ENV: value})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with statebag.open(tmp_path / "repo") as repo:
        assert repo.head("c") == done.stdout.strip()
    cli = python(
        "import sys; from statebag.cli import main; sys.exit(main(sys.argv[1:]))",
        "-r",
        str(tmp_path / "repo"),
        "log",
        "c",
        **{CRASH_ENV: value},
    )
    assert cli.returncode == 0, cli.stderr


def test_run_until_crash_ends_at_the_point(tmp_path: Path) -> None:
    done = run_until_crash(SAVE, "save.after_commit", str(tmp_path / "repo"))
    assert done.returncode == CRASH_EXIT_CODE and done.stdout == "", done.stderr
    with statebag.open(tmp_path / "repo") as repo:
        assert repo.head("c") is not None  # it died after the commit landed


def test_arming_in_process_and_disarming(tmp_path: Path) -> None:
    arm = "import statebag.testing as t; t.arm_crash_point({!r})\n"
    done = python(arm.format("save.after_pending") + SAVE, str(tmp_path / "a"))
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    done = python(arm.format("save.after_pending") + arm.format(None) + SAVE, str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr


def test_arming_from_the_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CRASH_ENV, raising=False)
    assert arm_crash_point_from_environment() is None
    monkeypatch.setenv(CRASH_ENV, "bogus")
    with pytest.raises(InvalidInputError, match=r"save\.after_pending"):
        arm_crash_point_from_environment()


def test_unknown_points_are_refused() -> None:
    with pytest.raises(InvalidInputError) as info:
        arm_crash_point("save.after_everything")
    assert info.value.path == "name" and all(point in str(info.value) for point in CRASH_POINTS)
    with pytest.raises(InvalidInputError) as info:
        run_until_crash(SAVE, "nowhere")
    assert info.value.path == "point"
