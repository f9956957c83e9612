"""The tools the bench measures: statebag in-process, statebag through its CLI, and the peers
(restic, borg, casync, bup), each called as a pipeline would call it.

Every tool keeps one repository in a directory of its own and answers three calls:
``start`` (create the repository), ``save`` (store one step's state, returning what names
the version) and ``restore`` (bring a version back; it returns a function that gives the
restored bytes, called after the timer stops). A peer is a subprocess per call, bounded by
a timeout; a call that fails or hangs raises :class:`PeerError` with the tail of its stderr,
which the runner reports as the tool's failure.

The peers save the step's snapshot file (the state as canonical MessagePack); statebag in
process saves the step's :class:`~statebag.StateBag`, as a pipeline embedding it would, and
statebag's CLI saves the snapshot file with one ``statebag save`` per step.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final

import statebag

from .. import codec
from ..repository import Repository
from .workloads import Step

__all__ = ["PEERS", "PeerError", "Tool", "tools"]

PEERS: Final = ("restic", "borg", "casync", "bup")
_TAIL_LINES = 20
_TAIL_CHARS = 2000
# restic always encrypts; the bench's repositories are throwaway, so the password is fixed.
RESTIC_PASSWORD: Final = "statebag-bench"
_STATEBAG_SETTINGS = "defaults: FastCDC 4/16/64 KiB normalization 1, zstd 3, fsync on"


class PeerError(Exception):
    """A tool's call failed: exited non-zero, timed out, or restored the wrong bytes."""


Restored = Callable[[], bytes]


class Tool(abc.ABC):
    """One row of the report: a tool at one setting, with its repository in ``repo``."""

    name: str
    settings: str
    program: str | None = None  # the executable a peer needs on PATH

    def __init__(self, repo: Path, home: Path, *, timeout: float) -> None:
        self.repo = repo  # the repository directory: all the tool stores, nothing else
        self.home = home  # the tool's caches and restores, outside the repository; exists
        self.timeout = timeout

    def missing(self) -> str | None:
        """Why the tool cannot run here (None when it can)."""
        if self.program is not None and shutil.which(self.program) is None:
            return f"{self.program} is not on PATH"
        return None

    @abc.abstractmethod
    def start(self) -> None:
        """Create the repository."""

    @abc.abstractmethod
    def save(self, step: Step, snapshot: Path) -> str:
        """Save one step; returns what names the version for :meth:`restore`."""

    @abc.abstractmethod
    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        """Bring ``version`` back, saved from the file ``snapshot`` (into the empty directory
        ``out`` if it writes a file)."""

    def close(self) -> None:  # noqa: B027 - only statebag in-process holds something open
        """Release what the tool holds open (the repository is measured after this)."""

    def env(self) -> dict[str, str]:
        """Variables the tool's calls need besides the caller's environment."""
        return {}

    def call(
        self, argv: Sequence[str], *, cwd: Path | None = None, stdout: IO[bytes] | None = None
    ) -> str:
        """Run one call of the tool; its stdout (unless sent to ``stdout``). PeerError when
        it exits non-zero or outlives the timeout; a hung call is killed with its children."""
        env = {**os.environ, **self.env()}
        with subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill takes its children
        ) as process:
            try:
                out, err = process.communicate(timeout=self.timeout)
            except BaseException as exc:  # the timeout, or an interrupt of the whole bench
                _kill(process)
                out, err = process.communicate()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise PeerError(
                        f"`{_shown(argv)}` did not finish within {self.timeout:g} s and was "
                        f"killed{_tail(err)}"
                    ) from None
                raise
        if process.returncode != 0:
            raise PeerError(f"`{_shown(argv)}` exited with status {process.returncode}{_tail(err)}")
        return (out or b"").decode("utf-8", errors="replace")


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)


def _shown(argv: Sequence[str]) -> str:
    return " ".join(str(arg) for arg in argv)


def _tail(err: bytes | None) -> str:
    text = (err or b"").decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    lines = text.splitlines()[-_TAIL_LINES:]
    return ": " + "\n".join(lines)[-_TAIL_CHARS:]


def _file_in(out: Path, snapshot: Path) -> Restored:
    """The bytes of ``snapshot``'s path as restored under ``out`` (archivers recreate the
    absolute path below their target directory)."""
    restored = out / snapshot.relative_to(snapshot.anchor)
    return restored.read_bytes


# ---------------------------------------------------------------------------------------------
# statebag
# ---------------------------------------------------------------------------------------------


class StatebagInProcess(Tool):
    """``repo.save(chain, bag)`` in this process; restores open a new handle each time, so
    no cache of the saves helps them."""

    name = "statebag"
    settings = f"in-process: repo.save of the step's StateBag; {_STATEBAG_SETTINGS}"
    _open: Repository | None = None

    def start(self) -> None:
        self._open = statebag.open(self.repo)

    def save(self, step: Step, snapshot: Path) -> str:
        assert self._open is not None
        return self._open.save(step.chain, step.state).manifest_id

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        with statebag.open(self.repo, create=False) as repo:
            state = repo.load(version)
        return lambda: codec.encode(state)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


class StatebagCLI(Tool):
    """One ``statebag save`` process per step, reading the snapshot file."""

    name = "statebag-cli"
    settings = f"one `statebag save` process per step (the snapshot file); {_STATEBAG_SETTINGS}"

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "statebag.cli", "-r", str(self.repo), *args]

    def env(self) -> dict[str, str]:
        # The child imports this very statebag, installed or not.
        package_root = str(Path(statebag.__file__).resolve().parent.parent)
        paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {"PYTHONPATH": os.pathsep.join(paths)}

    def start(self) -> None:
        self.call(self._argv("init"))

    def save(self, step: Step, snapshot: Path) -> str:
        return self.call(self._argv("save", step.chain, str(snapshot), "-q")).strip()

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        restored = out / snapshot.name
        self.call(self._argv("load", version, "-o", str(restored)))
        return restored.read_bytes


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------


class Restic(Tool):
    name = "restic"
    program = "restic"
    settings = (
        "defaults: repository v2, CDC 512 KiB-8 MiB (avg 1 MiB), compression auto (zstd), "
        "AES-256 (restic always encrypts)"
    )

    def env(self) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(self.home / "cache"),
        }

    def start(self) -> None:
        self.call(["restic", "-r", str(self.repo), "init"])

    def save(self, step: Step, snapshot: Path) -> str:
        out = self.call(
            ["restic", "-r", str(self.repo), "backup", "--json", "--host", "bench", str(snapshot)]
        )
        for line in reversed(out.splitlines()):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return str(message["snapshot_id"])
        raise PeerError(f"restic backup printed no summary with a snapshot id: {out[-500:]!r}")

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        self.call(["restic", "-r", str(self.repo), "restore", version, "--target", str(out)])
        return _file_in(out, snapshot)


class Borg(Tool):
    name = "borg"
    program = "borg"
    settings = "defaults: buzhash 19,23,21,4095 (avg 2 MiB, 512 KiB-8 MiB), lz4; --encryption none"
    chunker: str | None = None

    def env(self) -> dict[str, str]:
        # Cache, security and config files under the tool's home, not the user's.
        return {
            "BORG_BASE_DIR": str(self.home),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def start(self) -> None:
        self.call(["borg", "init", "--encryption", "none", str(self.repo)])

    def save(self, step: Step, snapshot: Path) -> str:
        archive = f"{step.chain}.{step.number}"
        params = [] if self.chunker is None else ["--chunker-params", self.chunker]
        self.call(["borg", "create", *params, f"{self.repo}::{archive}", str(snapshot)])
        return archive

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        self.call(["borg", "extract", f"{self.repo}::{version}"], cwd=out)
        return _file_in(out, snapshot)


class Borg16k(Borg):
    name = "borg-16k"
    chunker = "buzhash,12,16,14,4095"
    settings = f"--chunker-params {chunker} (avg 16 KiB, 4-64 KiB), lz4; --encryption none"


class Casync(Tool):
    name = "casync"
    program = "casync"
    settings = "defaults: avg 64 KiB (16-256 KiB), zstd; one .caibx index per save"
    chunk_size: int | None = None

    def _store(self) -> str:
        return f"--store={self.repo / 'default.castr'}"

    def _index(self, version: str) -> Path:
        return self.repo / "indexes" / f"{version}.caibx"

    def start(self) -> None:
        (self.repo / "indexes").mkdir(parents=True)

    def save(self, step: Step, snapshot: Path) -> str:
        version = f"{step.chain}.{step.number}"
        size = [] if self.chunk_size is None else [f"--chunk-size={self.chunk_size}"]
        self.call(
            ["casync", "make", self._store(), *size, str(self._index(version)), str(snapshot)]
        )
        return version

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        restored = out / snapshot.name
        self.call(["casync", "extract", self._store(), str(self._index(version)), str(restored)])
        return restored.read_bytes


class Casync16k(Casync):
    name = "casync-16k"
    chunk_size = 16384
    settings = f"--chunk-size={chunk_size} (avg 16 KiB, 4-64 KiB), zstd; one .caibx index per save"


class Bup(Tool):
    name = "bup"
    program = "bup"
    settings = "defaults: rolling-checksum split (avg 8 KiB), zlib; `bup split -n CHAIN` per save"

    def env(self) -> dict[str, str]:
        # HOME too: bup runs git, which would otherwise read and write the user's config.
        return {"BUP_DIR": str(self.repo), "HOME": str(self.home)}

    def start(self) -> None:
        self.call(["bup", "init"])

    def save(self, step: Step, snapshot: Path) -> str:
        printed = self.call(["bup", "split", "-n", step.chain, "-c", str(snapshot)]).split()
        if not printed:
            raise PeerError("`bup split -c` printed no commit id")
        return printed[-1]

    def restore(self, version: str, snapshot: Path, out: Path) -> Restored:
        restored = out / snapshot.name
        with restored.open("wb") as file:
            self.call(["bup", "join", version], stdout=file)
        return restored.read_bytes


# ---------------------------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------------------------

# Each peer's rows: at its defaults and, where its chunk size can be set, at about 16 KiB
# average chunks (statebag's own), so that chunk size alone does not decide a comparison.
_ROWS: Final[Mapping[str, Sequence[type[Tool]]]] = {
    "statebag": (StatebagInProcess, StatebagCLI),
    "restic": (Restic,),
    "borg": (Borg, Borg16k),
    "casync": (Casync, Casync16k),
    "bup": (Bup,),
}


def tools(peers: Sequence[str], *, repos: Path, homes: Path, timeout: float) -> list[Tool]:
    """statebag's two rows, then each peer's rows in the order given; a tool's repository
    is ``repos / name`` and its home (caches, restores) ``homes / name``."""
    return [
        cls(repos / cls.name, homes / cls.name, timeout=timeout)
        for group in ("statebag", *peers)
        for cls in _ROWS[group]
    ]
