"""A metadata store in one SQLite file: the embedded default of statebag.

Two tables, both keyed by ``TEXT`` with SQLite's default ``BINARY`` collation, which
compares UTF-8 bytes and therefore sorts keys by code point, exactly like Python::

    kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID
    counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID

The file is marked with ``PRAGMA application_id`` and its schema version lives in
``PRAGMA user_version``; a file from another program or a newer statebag is refused with a
``ConfigError`` rather than modified.

Concurrency. The database runs in WAL mode: readers never block and are never blocked, and
one writer at a time holds the write lock. Every batch runs in ``BEGIN IMMEDIATE``, so its
conditions are read and its writes applied under the write lock, in one transaction; a
failed condition rolls everything back. Other processes wait for the lock up to ``timeout``
seconds (SQLite's busy handler) and then get a retryable ``BackendError``. Each thread gets
its own connection (sqlite3 connections must not be shared between concurrent threads);
:meth:`SQLiteMetaStore.close` closes them all, and a thread's connection is also closed when
the thread ends. After ``os.fork()`` the child opens fresh connections and leaves the
parent's alone.

Read-only. ``read_only=True`` (what :func:`statebag.open` chooses for a repository whose
directory or database file cannot be written) never writes, creates or locks a file: with
no write-ahead log beside the database (a store closed cleanly checkpoints and removes it)
it opens the file ``immutable=1``, which needs neither ``-shm`` nor locks; with a log it
opens ``mode=ro``, which reads the log through its ``-shm`` file. Every write raises
``ConfigError`` naming the file, before SQLite is asked.

Prefix scans are range queries (``key >= prefix AND key < upper_bound``), never ``LIKE``,
so ``%`` and ``_`` in keys are plain characters and the primary key index does the work.
Large reads and writes are batched: ``IN (...)`` lists of at most 500 parameters and
``executemany`` for the writes of a batch.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final
from urllib.parse import quote

from ..errors import BackendError, ConfigError
from .base import (
    Add,
    BatchPlan,
    MetaStore,
    Op,
    check_keys,
    check_meta_key,
    check_scan_args,
    plan_batch,
    prefix_upper_bound,
)

__all__ = ["SCHEMA_VERSION", "SQLiteMetaStore"]

SCHEMA_VERSION: Final = 1
# "SBAG": lets us tell a statebag database from any other SQLite file.
APPLICATION_ID: Final = 0x53424147
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER was 999 before 3.32; stay well below it.
_CHUNK = 500
# Rows fetched per query by scans: enough to amortise the query, small enough not to hold
# a read snapshot or much memory while the caller works through a long scan.
_PAGE = 512
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
    " WITHOUT ROWID",
)
_TABLES = frozenset({"kv", "counters"})


class _Slot:
    """One thread's connection; its finalizer closes the connection when the thread ends."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid


def _release(
    registry: dict[sqlite3.Connection, weakref.finalize[Any, Any]],
    lock: threading.RLock,
    conn: sqlite3.Connection,
) -> None:
    # Runs when a thread's slot dies; the store may be gone already, so it only gets what it
    # needs as arguments.
    with lock:
        owned = registry.pop(conn, None) is not None
    if owned:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


class SQLiteMetaStore(MetaStore):
    """Values and counters in a SQLite database file, shared by threads and processes.

    ``max_batch`` caps a write as a remote store's would (None: no cap), so that the batched
    protocol can be exercised across processes on a local file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        synchronous: str = "FULL",
        read_only: bool = False,
        max_batch: int | None = None,
    ) -> None:
        raw = os.fspath(path)
        if not raw or raw == ":memory:" or raw.startswith("file:"):
            raise ConfigError(
                f"SQLiteMetaStore needs a file path, got {raw!r}; "
                f"use MemoryMetaStore for a store in memory"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if max_batch is not None and (
            not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1
        ):
            raise ConfigError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        mode = synchronous.upper() if isinstance(synchronous, str) else ""
        if mode not in _SYNCHRONOUS:
            raise ConfigError(
                f"synchronous must be one of OFF, NORMAL, FULL, EXTRA, got {synchronous!r}"
            )
        self._path = os.path.abspath(raw)
        self._timeout = float(timeout)
        self._synchronous = mode
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._conns: dict[sqlite3.Connection, weakref.finalize[Any, Any]] = {}
        self._closed = False
        self._pid = os.getpid()
        self._read_only = bool(read_only)
        self._uri: str | None = None
        self._logged = False  # read-only with a write-ahead log to read through
        if self._read_only:
            self._logged = self._has_log()
            # immutable=1 ignores a log, so it is only right when everything is in the file.
            mode = "mode=ro" if self._logged else "mode=ro&immutable=1"
            self._uri = f"file:{quote(self._path)}?{mode}"
        else:
            parent = os.path.dirname(self._path)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the directory of the metadata database {self._path!r}: "
                    f"{exc.strerror}"
                ) from exc
        try:
            self._init_schema(self._conn())
        except BackendError as exc:
            self.close()
            cause = exc.__cause__
            if isinstance(cause, sqlite3.DatabaseError) and not _is_busy(cause):
                raise ConfigError(
                    f"{self._path} cannot be used as a statebag metadata database: {cause}"
                ) from cause
            raise
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        mode = ", read_only=True" if self._read_only else ""
        return f"SQLiteMetaStore({self._path!r}, synchronous={self._synchronous!r}{mode})"

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        key = check_meta_key(key)
        conn = self._conn()
        try:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, f"get of key {key!r}") from exc
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        wanted = check_keys(keys)
        if not wanted:
            return {}
        conn = self._conn()
        try:
            if len(wanted) <= _CHUNK:
                return self._select(conn, "kv", wanted)
            # Several queries: one read transaction makes them one consistent snapshot.
            conn.execute("BEGIN")
            try:
                found = self._select(conn, "kv", wanted)
            finally:
                conn.execute("COMMIT")
            return found
        except sqlite3.Error as exc:
            raise self._error(exc, f"get_many of {len(wanted)} keys") from exc

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        prefix, start_after, limit = check_scan_args(prefix, start_after, limit)
        return self._scan("kv", prefix, start_after, limit)

    def counter(self, key: str, /) -> int:
        key = check_meta_key(key)
        conn = self._conn()
        try:
            row = conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, f"read of counter {key!r}") from exc
        return 0 if row is None else int(row[0])

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        prefix = check_meta_key(prefix, path="prefix", allow_empty=True)
        return self._scan("counters", prefix, None, None)

    # -- writes ----------------------------------------------------------------------------

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        plan = plan_batch(ops, max_batch=self.max_batch)
        if not plan.empty:
            self._commit(plan, f"write of {plan.size} operations", durable=durable)

    def add(self, key: str, delta: int, /) -> int:
        key = check_meta_key(key)
        value = self._commit(plan_batch([Add(key, delta)], max_batch=None), f"add to {key!r}")[key]
        assert value is not None  # an Add never drops its counter
        return value

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owned = self._pid == os.getpid()
            conns = list(self._conns.items())
            self._conns.clear()
        for conn, finalizer in conns:
            finalizer.detach()
            if owned:  # never close a parent's connection from a forked child
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # -- internals -------------------------------------------------------------------------

    def _commit(
        self, plan: BatchPlan, action: str, *, durable: bool = True
    ) -> dict[str, int | None]:
        if self._read_only:
            raise ConfigError(
                f"SQLite metadata store {self._path} is read-only (its directory or file "
                f"is not writable): the {action} was refused; nothing was written"
            )
        conn = self._conn()
        # Threads of one process queue on a Python lock rather than in SQLite's busy handler,
        # which sleeps for milliseconds at a time; other processes still meet the file lock.
        with self._write_lock:
            if durable or self._synchronous in ("OFF", "NORMAL"):
                return self._commit_locked(conn, plan, action)
            # In WAL mode, NORMAL appends the commit to the log without an fsync: a crashed
            # process cannot lose it, a power failure can until the next FULL commit syncs
            # the log, and with it every frame before. Per connection, between transactions.
            try:
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                raise self._error(exc, action) from exc
            try:
                return self._commit_locked(conn, plan, action)
            finally:
                try:
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                except sqlite3.Error:
                    # Never leave a relaxed connection behind: the next call opens a new one.
                    self._local.slot = None
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()

    def _commit_locked(
        self, conn: sqlite3.Connection, plan: BatchPlan, action: str
    ) -> dict[str, int | None]:
        try:
            # IMMEDIATE takes the write lock up front, so the conditions read below cannot be
            # changed by another writer before our writes land.
            conn.execute("BEGIN IMMEDIATE")
            try:
                reads = plan.counter_reads()
                stored = self._select(conn, "counters", reads) if reads else {}
                failure = plan.failure(self._select(conn, "kv", list(plan.checks)), stored)
                if failure is not None:
                    raise failure
                results: dict[str, int | None] = {}
                if plan.counters:
                    results = plan.counter_results(stored)
                self._apply(conn, "kv", plan.writes)
                self._apply(conn, "counters", results)
                conn.execute("COMMIT")
            except BaseException:
                # Some errors (a full disk) end the transaction themselves.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, action) from exc
        return results

    @staticmethod
    def _apply(conn: sqlite3.Connection, table: str, changes: dict[str, Any]) -> None:
        assert table in _TABLES
        sets = [(key, value) for key, value in changes.items() if value is not None]
        drops = [(key,) for key, value in changes.items() if value is None]
        if sets:
            conn.executemany(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)", sets)
        if drops:
            conn.executemany(f"DELETE FROM {table} WHERE key = ?", drops)

    @staticmethod
    def _select(conn: sqlite3.Connection, table: str, keys: Sequence[str]) -> dict[str, Any]:
        assert table in _TABLES
        found: dict[str, Any] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                conn.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk)
            )
        return found

    def _scan(
        self, table: str, prefix: str, start_after: str | None, limit: int | None
    ) -> Iterator[tuple[str, Any]]:
        assert table in _TABLES
        upper = prefix_upper_bound(prefix)
        if start_after is not None and start_after >= prefix:
            lower, op = start_after, ">"
        else:
            lower, op = prefix, ">="
        remaining = limit
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            # Each page is its own short query, fully fetched: no cursor or read snapshot
            # stays open while the caller works, so a long scan never holds up checkpoints.
            if upper is None:
                sql = f"SELECT key, value FROM {table} WHERE key {op} ? ORDER BY key LIMIT ?"
                params: tuple[Any, ...] = (lower, page)
            else:
                sql = (
                    f"SELECT key, value FROM {table} WHERE key {op} ? AND key < ? "
                    f"ORDER BY key LIMIT ?"
                )
                params = (lower, upper, page)
            conn = self._conn()
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc, f"scan of {table} under prefix {prefix!r}") from exc
            yield from rows
            if len(rows) < page:
                return
            lower, op = rows[-1][0], ">"
            if remaining is not None:
                remaining -= len(rows)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise BackendError(
                f"SQLite metadata store {self._path} is closed; open a new store",
                retryable=False,
            )
        slot: _Slot | None = getattr(self._local, "slot", None)
        # Comparing with the live pid, not the store's, catches the first call after fork().
        if slot is not None and slot.pid == os.getpid():
            return slot.conn
        return self._open_slot()

    def _open_slot(self) -> sqlite3.Connection:
        pid = os.getpid()
        with self._lock:
            if pid != self._pid:
                # Forked: SQLite connections must not cross fork(). Forget the parent's
                # connections without closing them (closing could disturb the parent's locks).
                for finalizer in self._conns.values():
                    finalizer.detach()
                self._conns.clear()
                self._pid = pid
                # A parent thread may have held the write lock at fork time.
                self._write_lock = threading.Lock()
        try:
            conn = sqlite3.connect(
                self._path if self._uri is None else self._uri,
                timeout=self._timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # so that close() may close every thread's one
                uri=self._uri is not None,
            )
            if not self._read_only:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        slot = _Slot(conn, pid)
        finalizer = weakref.finalize(slot, _release, self._conns, self._lock, conn)
        with self._lock:
            if self._closed:
                finalizer.detach()
                conn.close()
                raise BackendError(
                    f"SQLite metadata store {self._path} is closed; open a new store",
                    retryable=False,
                )
            self._conns[conn] = finalizer
        self._local.slot = slot
        return conn

    def _has_log(self) -> bool:
        try:
            return os.stat(self._path + "-wal").st_size > 0
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot read {self._path}-wal: {exc.strerror}") from exc

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        if self._read_only:
            self._check_read_only(conn)
            return
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"cannot put {self._path} in WAL mode (got {mode!r}); the filesystem "
                    f"must support shared memory and locks (not a network filesystem)"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_or_create(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise self._error(exc, "open") from exc
            raise ConfigError(
                f"{self._path} cannot be used as a statebag metadata database: {exc}"
            ) from exc
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc

    def _check_read_only(self, conn: sqlite3.Connection) -> None:
        try:
            self._check_or_create(conn)
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) != _SQLITE_CANTOPEN or not self._logged:
                raise self._error(exc, "open") from exc
            raise ConfigError(
                f"{self._path} is read-only and has a write-ahead log ({self._path}-wal) of "
                f"commits not yet in it, which SQLite reads through {self._path}-shm, and "
                f"that file is missing and cannot be made here: open the repository once "
                f"where it can be written (which folds the log in), or copy the -shm file "
                f"along with the others"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{self._path} cannot be used as a statebag metadata database: {exc}"
            ) from exc

    def _check_or_create(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise ConfigError(
                f"{self._path} belongs to another program (application_id {app_id:#x}); "
                f"give statebag its own database file"
            )
        if version == 0 and self._read_only:
            raise ConfigError(
                f"{self._path} holds no statebag metadata, and it is read-only: there is no "
                f"repository to read"
            )
        if version == 0:
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if tables and app_id != APPLICATION_ID:
                raise ConfigError(
                    f"{self._path} already holds tables of another program; "
                    f"give statebag its own database file"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise ConfigError(
                f"{self._path} has metadata schema version {version}, and this statebag "
                f"knows version {SCHEMA_VERSION}; use a statebag release that supports it"
            )
        encoding = conn.execute("PRAGMA encoding").fetchone()[0]
        if encoding != "UTF-8":
            # Key order relies on BINARY collation over UTF-8 matching code point order.
            raise ConfigError(f"{self._path} uses text encoding {encoding}, not UTF-8")

    def _error(self, exc: sqlite3.Error, action: str) -> BackendError:
        busy = _is_busy(exc)
        message = f"SQLite metadata store {self._path}: {action} failed: {exc}"
        if busy:
            message += (
                f"; another connection held the write lock for more than {self._timeout:g} s, retry"
            )
        elif _primary_code(exc) == _SQLITE_FULL:
            message += "; the disk is full, free space and retry"
        return BackendError(message, retryable=busy)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    if _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text
