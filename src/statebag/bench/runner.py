"""The runner: every tool saves every step of a workload, then each is timed restoring and
measured on disk.

For each step the state is encoded once (canonical MessagePack) into the step's snapshot
file, and each tool in turn saves it; a tool's save time is the wall time of its call. After
the last step each tool saves once more with nothing changed (its fixed cost per call),
then restores the latest and the first version (timed, and checked byte for byte against
what was saved), and its repository directory is measured: stored bytes are the sizes of
every regular file under it, objects their number, both taken after every call, so a kept
repository (``keep``) holds exactly what was reported.

A tool whose call fails or hangs (see :mod:`.peers`) is reported as failed and left out of
the rest of the run; the others go on. Snapshots, caches and restores live in a temporary
directory removed at the end; the repositories too, unless ``keep`` names a directory.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from .. import codec
from ..errors import InvalidInputError, StatebagError
from ..hashing import hash_bytes
from .peers import PeerError, Tool, tools
from .report import Report, ToolResult, percentile
from .workloads import Step, Workload

__all__ = ["Ticker", "measure", "run"]

T = TypeVar("T")


class Ticker(Protocol):
    """Where the runner reports progress (the CLI's progress bar, or nothing)."""

    def advance(self) -> None: ...

    def describe(self, text: str) -> None: ...


def measure(directory: Path) -> tuple[int, int]:
    """Bytes and number of the regular files under ``directory`` (links not followed)."""
    total = files = 0
    for parent, _, names in os.walk(directory):
        for name in names:
            info = os.lstat(os.path.join(parent, name))
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
                files += 1
    return total, files


@dataclass(frozen=True)
class _Version:
    """A saved version: what names it to its tool, the file it was saved from and the
    digest of what that file held then."""

    name: str
    snapshot: Path
    digest: bytes


@dataclass
class _Run:
    """One tool's way through a workload."""

    tool: Tool
    seconds: list[float] = field(default_factory=list)
    first: _Version | None = None
    last: _Version | None = None
    per_call: float = 0.0
    restores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def call(self, fn: Callable[[], T]) -> tuple[T, float] | None:
        """``fn()`` and its wall time; None, with the tool's error recorded, if it failed."""
        started = time.perf_counter()
        try:
            value = fn()
        except (PeerError, StatebagError, OSError) as exc:
            self.error = str(exc) or type(exc).__name__
            return None
        return value, time.perf_counter() - started


def run(
    workload: Workload,
    *,
    peers: Sequence[str],
    timeout: float,
    keep: Path | None,
    ticker: Ticker,
    machine: str,
) -> Report:
    """Run ``workload`` on statebag and ``peers``; see the module docstring. With ``keep``,
    the repositories go to ``keep / workload.name / tool``, which must not exist yet."""
    with tempfile.TemporaryDirectory(prefix="statebag-bench-") as tmp:
        scratch = Path(tmp)
        repos = keep / workload.name if keep is not None else scratch / "repos"
        repos.mkdir(parents=True)
        snapshots = scratch / "snapshots"
        snapshots.mkdir()
        every = tools(peers, repos=repos, homes=scratch / "homes", timeout=timeout)
        reasons = {tool.name: tool.missing() for tool in every}
        runs = {tool.name: _Run(tool) for tool in every if reasons[tool.name] is None}
        for r in runs.values():
            r.tool.home.mkdir(parents=True)
            r.call(r.tool.start)
        logical, last = _save_steps(workload, list(runs.values()), snapshots, ticker)
        # The last step's state and file once more, unchanged: each tool's cost per call.
        again = Step(last.chain, workload.steps + 1, last.state)
        for r in runs.values():
            _finish(r, again, ticker)
        rows = [
            _result(runs[tool.name])
            if tool.name in runs
            else ToolResult(
                name=tool.name, status="skipped", settings=tool.settings, reason=reasons[tool.name]
            )
            for tool in every
        ]
    return Report(
        workload=workload.name,
        steps=workload.steps,
        logical_bytes=logical,
        machine=machine,
        tools=rows,
    )


def _save_steps(
    workload: Workload, runs: list[_Run], snapshots: Path, ticker: Ticker
) -> tuple[int, Step]:
    """Every step saved by every tool that has not failed; the logical bytes of all steps
    and the last step."""
    logical = 0
    last: Step | None = None
    for step in workload.run():
        data = codec.encode(step.state.data)
        snapshot = snapshots / f"{step.chain}.msgpack"
        snapshot.write_bytes(data)
        logical += len(data)
        digest = hash_bytes(data)
        for r in runs:
            if r.error is not None:
                continue
            ticker.describe(
                f"{workload.name} step {step.number:,}/{workload.steps:,}: {r.tool.name}"
            )
            done = r.call(partial(r.tool.save, step, snapshot))
            if done is not None:
                name, seconds = done
                r.seconds.append(seconds)
                r.last = _Version(name, snapshot, digest)
                r.first = r.first or r.last
        ticker.advance()
        last = step
    if last is None:
        raise InvalidInputError(f"workload {workload.name} has no step", path="--workload")
    return logical, last


def _finish(r: _Run, again: Step, ticker: Ticker) -> None:
    """After the steps: the save with nothing changed, closing, the two restores (each
    checked against what was saved)."""
    snapshot = r.last.snapshot if r.last is not None else None
    if r.error is None and snapshot is not None:
        ticker.describe(f"{r.tool.name}: a save with nothing changed")
        saved = r.call(partial(r.tool.save, again, snapshot))
        if saved is not None:
            r.per_call = saved[1]
    closed = r.call(r.tool.close)
    for which in ("latest", "first"):
        version = r.last if which == "latest" else r.first
        if r.error is not None or closed is None or version is None:
            return
        ticker.describe(f"{r.tool.name}: restoring the {which} version")
        out = r.tool.home / f"restore-{which}"
        out.mkdir()
        timed = r.call(partial(r.tool.restore, version.name, version.snapshot, out))
        if timed is None:
            return
        read, seconds = timed
        restored = r.call(read)
        shutil.rmtree(out)
        if restored is None:
            return
        if hash_bytes(restored[0]) != version.digest:
            r.error = (
                f"the {which} version came back as {len(restored[0]):,} bytes that differ from "
                "the ones saved"
            )
            return
        r.restores[which] = seconds


def _result(r: _Run) -> ToolResult:
    if r.error is not None:
        return ToolResult(
            name=r.tool.name, status="failed", settings=r.tool.settings, error=r.error
        )
    stored, objects = measure(r.tool.repo)
    return ToolResult(
        name=r.tool.name,
        status="ok",
        settings=r.tool.settings,
        stored_bytes=stored,
        save_p50_s=percentile(r.seconds, 50),
        save_p99_s=percentile(r.seconds, 99),
        restore_latest_s=r.restores["latest"],
        restore_first_s=r.restores["first"],
        objects=objects,
        per_call_s=r.per_call,
    )
