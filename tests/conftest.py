"""Shared fixtures: both chunker twins, deterministic data, hypothesis profiles.

Profiles: ``default`` for local runs, ``ci`` (derandomized, more examples) when ``CI`` is set,
``nightly`` on demand with ``--hypothesis-profile=nightly``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from statebag import _cdc_py, cli

from .clihelp import Run

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("nightly", max_examples=5000, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "default")

try:
    from statebag import _cdc
except ImportError:  # pragma: no cover - only where the extension could not be built
    _cdc = None  # type: ignore[assignment]

CHUNKER_TWINS = {"cython": getattr(_cdc, "Chunker", None), "python": _cdc_py.Chunker}


@pytest.fixture(scope="session", params=["cython", "python"])
def chunker_cls(request: pytest.FixtureRequest) -> Any:
    """Each chunker twin in turn; the compiled one is required whenever it was built."""
    cls = CHUNKER_TWINS[request.param]
    if cls is None:
        pytest.skip("statebag._cdc is not built in this environment")
    return cls


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI run in-process (see tests/clihelp.py), with no repository in the environment."""
    monkeypatch.delenv(cli.REPO_ENV, raising=False)
    return Run(capsys)
