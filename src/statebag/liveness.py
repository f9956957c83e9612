"""Whether the writer of a pending save is still running.

Garbage collection rolls back the pending entry of a save that will never finish. A lease
(default 24 h) bounds how long an entry can block that; a liveness oracle does better where
it can: on a local repository every save holds an exclusive advisory lock (``flock``) on
``locks/<txn>`` from before its pending entry is written until after it is cleared, and the
kernel releases the lock when the process dies, however it dies. gc takes the same lock
without waiting: if it gets it the writer is gone and the entry is rolled back at once,
while the lock keeps anyone else from acting on it; if it does not, the writer is alive and
its entry is left alone, whatever its lease says.

A memory repository lives in one process, so a set of running transactions is exact.
Stores that can know nothing (the cloud) answer None and gc falls back on the lease.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FileLiveness", "Liveness", "ProcessLiveness", "Rehearsal"]


class Liveness:
    """No knowledge: gc relies on leases alone."""

    # Whether gc can tell a running writer from a gone one; where it cannot, a running save
    # renews its lease (see statebag.prepare.Prepare) so that gc rolls back only dead ones.
    knows_writers: bool = False

    def acquire(self, txn: str, /) -> None:
        """Mark ``txn`` running; called before its pending entry is first written."""

    def release(self, txn: str, /) -> None:
        """Mark ``txn`` ended; called after its pending entry is cleared (or left for gc)."""

    @contextlib.contextmanager
    def claim(self, txn: str, /) -> Iterator[bool | None]:
        """Yield True if the writer of ``txn`` is gone (and keep others off it meanwhile),
        False if it is running, None if this cannot be known."""
        yield None

    def gone(self, txn: str, /) -> bool | None:
        """What :meth:`claim` would yield, without claiming anything or changing any file."""
        return None


class Rehearsal(Liveness):
    """Answers as ``inner`` does and changes nothing: for gc dry runs."""

    def __init__(self, inner: Liveness, /) -> None:
        self._inner = inner

    @contextlib.contextmanager
    def claim(self, txn: str, /) -> Iterator[bool | None]:
        yield self._inner.gone(txn)


class ProcessLiveness(Liveness):
    """Transactions running in this process (memory repositories)."""

    knows_writers = True

    def __init__(self) -> None:
        self._running: set[str] = set()
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, txn: str, /) -> None:
        with self._lock:
            self._running.add(txn)

    def release(self, txn: str, /) -> None:
        with self._lock:
            self._running.discard(txn)

    def gone(self, txn: str, /) -> bool | None:
        with self._lock:
            return txn not in self._running

    @contextlib.contextmanager
    def claim(self, txn: str, /) -> Iterator[bool | None]:
        with self._lock:
            gone = txn not in self._running and txn not in self._claimed
            if gone:
                self._claimed.add(txn)
        try:
            yield gone
        finally:
            if gone:
                with self._lock:
                    self._claimed.discard(txn)


class FileLiveness(Liveness):
    """One ``flock``-ed file per running transaction, in ``directory``."""

    knows_writers = True

    def __init__(self, directory: Path, /) -> None:
        self._directory = directory
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def acquire(self, txn: str, /) -> None:
        fd = os.open(self._directory / txn, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._held[txn] = fd

    def release(self, txn: str, /) -> None:
        with self._lock:
            fd = self._held.pop(txn, None)
        if fd is None:
            return
        # Unlink while still holding the lock, so a gc that opens the file from now on finds
        # nothing, and one that opened it before gets the lock only once the entry is gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._directory / txn)
        os.close(fd)

    def gone(self, txn: str, /) -> bool | None:
        with self._locked(txn) as gone:
            return gone

    @contextlib.contextmanager
    def claim(self, txn: str, /) -> Iterator[bool | None]:
        with self._locked(txn, remove=True) as gone:
            yield gone

    @contextlib.contextmanager
    def _locked(self, txn: str, /, *, remove: bool = False) -> Iterator[bool]:
        """Yield whether the writer of ``txn`` is gone, holding its lock meanwhile if so
        (and with ``remove``, deleting the file before letting go)."""
        path = self._directory / txn
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # A writer creates its lock file before its pending entry and removes it after:
            # an entry without a file belongs to a writer that is gone.
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    yield False
                    return
                raise
            try:
                yield True
            finally:
                if remove:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        finally:
            os.close(fd)  # closing releases the lock
