"""Running the CLI from tests: in-process (the ``run`` fixture is in conftest.py), or as a
real process with this statebag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import cli


class Run:
    """``cli.main`` in-process: its exit code (argparse's too) and what it printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()  # drop anything printed before this call
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *argv: str, code: int = 0) -> Any:
        """The JSON the command printed, asserting it exited with ``code``."""
        got, out, err = self(*argv)
        assert got == code, err
        return json.loads(out)


def child_env(**changes: str | None) -> dict[str, str]:
    """This process's environment for a child that must import this statebag (first on
    PYTHONPATH, installed or not), without STATEBAG_REPO; ``changes`` set (or, None, drop)
    variables."""
    env = {key: value for key, value in os.environ.items() if key != cli.REPO_ENV}
    root = str(Path(statebag.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def process(
    *argv: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str = "",
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``statebag ARGV`` in a new process (``python -m statebag.cli``): its exit code and
    what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "statebag.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env if env is not None else child_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
