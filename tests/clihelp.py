"""Running the CLI in-process from tests (the ``run`` fixture is in conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
