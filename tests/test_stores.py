"""Tests for the storage layers below the repository.

The conformance suites of ``statebag.testing`` run on every object store and metadata store;
the rest covers what only one backend has: files, temp files and OS errors for the local
object store, the database file, locking and several processes for SQLite.
"""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statebag.errors import BackendError, ConfigError, InvalidInputError, NotFoundError
from statebag.meta import (
    Add,
    Check,
    ConditionFailed,
    MemoryMetaStore,
    MetaStore,
    Put,
    SQLiteMetaStore,
)
from statebag.meta.base import CheckCounter, Delete, DropCounter, plan_batch, prefix_upper_bound
from statebag.meta.overlay import OverlayMetaStore
from statebag.objects import LocalObjectStore, MemoryObjectStore, ObjectStore, check_key
from statebag.objects.discarding import DiscardingObjectStore
from statebag.objects.local import TEMP_DIR, TEMP_MAX_AGE
from statebag.testing import MetaStoreConformance, ObjectStoreConformance, run_threads

# ---------------------------------------------------------------------------------------------
# The conformance suites on every implementation
# ---------------------------------------------------------------------------------------------


class TestMemoryObjectStore(ObjectStoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[ObjectStore]:
        with MemoryObjectStore() as store:
            yield store


class TestLocalObjectStore(ObjectStoreConformance):
    @pytest.fixture(params=[True, False], ids=["fsync", "nofsync"])
    def store(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
        with LocalObjectStore(tmp_path / "objects", fsync=request.param) as store:
            yield store


class TestMemoryMetaStore(MetaStoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MetaStore]:
        with MemoryMetaStore() as store:
            yield store


class TestMemoryMetaStoreWithBatchLimit(MetaStoreConformance):
    """Rehearses a backend with a transaction limit, as DynamoDB's 100 operations."""

    @pytest.fixture
    def store(self) -> Iterator[MetaStore]:
        with MemoryMetaStore(max_batch=100) as store:
            yield store


class TestOverlayMetaStore(MetaStoreConformance):
    """The dry-run overlay behaves as a store in its own right (over an empty base)."""

    @pytest.fixture
    def store(self) -> Iterator[MetaStore]:
        with OverlayMetaStore(MemoryMetaStore()) as store:
            yield store


def test_overlay_reads_through_and_never_writes_its_base() -> None:
    base = MemoryMetaStore()
    base.write([Put("a", b"1"), Put("b", b"2"), Add("n", 5), Add("m", 1)])
    overlay = OverlayMetaStore(base)
    overlay.write(
        [Delete("a"), Put("c", b"3"), CheckCounter("n", 5), Add("n", -5), DropCounter("m")]
    )
    assert overlay.get("a") is None and overlay.get("b") == b"2" and overlay.get("c") == b"3"
    assert list(overlay.scan("")) == [("b", b"2"), ("c", b"3")]
    assert overlay.get_many(["a", "b", "c"]) == {"b": b"2", "c": b"3"}
    assert overlay.counter("n") == 0 and dict(overlay.counters("")) == {"n": 0}
    assert list(base.scan("")) == [("a", b"1"), ("b", b"2")]
    assert dict(base.counters("")) == {"m": 1, "n": 5}


def test_discarding_object_store_reads_through_and_writes_nothing() -> None:
    base = MemoryObjectStore()
    base.put("k", b"v")
    store = DiscardingObjectStore(base)
    store.put("x", b"1")
    store.delete("k")
    assert store.get("k") == b"v" and list(store.list()) == ["k"] and list(base.list()) == ["k"]
    with pytest.raises(InvalidInputError):
        store.put("BAD KEY", b"1")


class TestSQLiteMetaStore(MetaStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[MetaStore]:
        # synchronous only changes when commits reach the disk, not what they do; NORMAL
        # keeps thousands of commits from waiting on fsync. FULL runs in the tests below.
        with SQLiteMetaStore(tmp_path / "meta.sqlite", synchronous="NORMAL") as store:
            yield store


# ---------------------------------------------------------------------------------------------
# Shared helpers of base.py
# ---------------------------------------------------------------------------------------------


def test_check_key_returns_the_key() -> None:
    assert check_key("packs/ab/cd") == "packs/ab/cd"
    assert check_key("", prefix=True) == ""
    assert check_key("packs/", prefix=True) == "packs/"
    with pytest.raises(InvalidInputError) as info:
        check_key("packs/")
    assert "ends with '/'" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        check_key("Packs")
    assert "'P'" in str(info.value)


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [
        ("", None),
        ("a", "b"),
        ("p/", "p0"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),
        ("a\uffff", "a\U00010000"),
    ],
)
def test_prefix_upper_bound(prefix: str, bound: str | None) -> None:
    assert prefix_upper_bound(prefix) == bound


def test_plan_collapses_a_batch() -> None:
    plan = plan_batch(
        [Put("a", b"1"), Put("a", b"2", expect=b"1"), Check("b", None), Add("c", 2), Add("c", 3)],
        max_batch=None,
    )
    assert plan.writes == {"a": b"2"}
    assert plan.checks == {"b": [(2, None)]}
    assert plan.static_failure is None
    assert plan.counter_reads() == ["c"]
    assert plan.counter_results({"c": 10}) == {"c": 15}


# ---------------------------------------------------------------------------------------------
# LocalObjectStore
# ---------------------------------------------------------------------------------------------


def _temp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / TEMP_DIR))


def test_local_layout(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("packs/ab/cdef", b"pack bytes")
    assert (tmp_path / "packs" / "ab" / "cdef").read_bytes() == b"pack bytes"
    assert store.root == str(tmp_path)


def test_local_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b", b"1")
    store.put("a/b", b"2")
    assert store.put_if_absent("a/c", b"3") is True
    assert store.put_if_absent("a/c", b"4") is False
    store.put("big", os.urandom(1 << 20))
    store.delete("a/b")
    assert _temp_files(tmp_path) == []


def test_local_put_if_absent_loser_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, fsync=False)
    barrier = threading.Barrier(8, timeout=30)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.put_if_absent("same", bytes([i]) * 1000)

    assert run_threads(8, attempt).count(True) == 1
    assert _temp_files(tmp_path) == []


def test_local_crash_leftovers_are_invisible(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("real", b"ok")
    # A writer that died mid-put leaves only a temp file; it must never look like an object.
    (tmp_path / TEMP_DIR / "4242-deadbeef").write_bytes(b"half a pa")
    # Files that are not valid keys are not objects either.
    (tmp_path / "UPPER").write_bytes(b"x")
    (tmp_path / ".nfs0001").write_bytes(b"x")
    (tmp_path / "real.d").mkdir()
    (tmp_path / "real.d" / ".hidden").write_bytes(b"x")
    assert list(store.list()) == ["real"]
    assert list(store.list("4242")) == []
    with pytest.raises(NotFoundError):
        store.get("4242-deadbeef")
    with pytest.raises(InvalidInputError):
        store.get(".tmp/4242-deadbeef")
    # Reopening keeps a recent temp file (its writer may still be alive) ...
    LocalObjectStore(tmp_path)
    assert _temp_files(tmp_path) == ["4242-deadbeef"]
    # ... and removes one older than TEMP_MAX_AGE.
    old = time.time() - TEMP_MAX_AGE - 60
    os.utime(tmp_path / TEMP_DIR / "4242-deadbeef", (old, old))
    reopened = LocalObjectStore(tmp_path)
    assert _temp_files(tmp_path) == []
    assert reopened.get("real") == b"ok"


def test_local_failed_put_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("k", b"old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    for call in (lambda: store.put("k", b"new"), lambda: store.put_if_absent("n", b"new")):
        with pytest.raises(BackendError) as info:
            call()
        error = info.value
        assert error.retryable is False
        assert isinstance(error.__cause__, OSError)
        assert error.__cause__.errno == errno.ENOSPC
        assert "ENOSPC" in str(error)
        assert "free space" in str(error)
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert list(store.list()) == ["k"]
    assert _temp_files(tmp_path) == []


def test_local_retryable_os_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path, fsync=False)
    store.put("k", b"data")

    def busy(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(BackendError) as info:
        store.put("k", b"new")
    assert info.value.retryable is True
    assert "'k'" in str(info.value)

    def io_error(fd: int, size: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "read", io_error)
    with pytest.raises(BackendError) as info:
        store.get("k")
    assert info.value.retryable is False
    assert "EIO" in str(info.value)


def test_local_fsync_false_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path, fsync=False)

    def forbidden(fd: int) -> None:
        raise AssertionError("fsync called with fsync=False")

    monkeypatch.setattr(os, "fsync", forbidden)
    store.put("a/b/c", b"x")
    assert store.put_if_absent("a/b/d", b"y") is True
    assert store.get("a/b/d") == b"y"


def test_local_nested_keys_are_refused(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a", b"file")
    for call in (lambda: store.put("a/b", b"x"), lambda: store.put_if_absent("a/b/c", b"x")):
        with pytest.raises(InvalidInputError) as info:
            call()
        assert info.value.path == "key"
    store.put("x/y", b"file")
    with pytest.raises(InvalidInputError):
        store.put("x", b"dir")
    with pytest.raises(InvalidInputError):
        store.put_if_absent("x", b"dir")
    with pytest.raises(NotFoundError):
        store.get("a/b")
    assert list(store.list()) == ["a", "x/y"]
    assert _temp_files(tmp_path) == []


def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b/c", b"1")
    store.put("a/d", b"2")
    store.delete("a/b/c")
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a").is_dir()
    store.delete("a/d")
    assert not (tmp_path / "a").exists()
    assert (tmp_path / TEMP_DIR).is_dir()


def test_local_racing_puts_and_deletes_in_one_directory(tmp_path: Path) -> None:
    # Deletes prune directories that puts are about to use; every put must still land.
    store = LocalObjectStore(tmp_path, fsync=False)

    def churn(i: int) -> None:
        for j in range(150):
            key = f"shared/dir/k{i}-{j}"
            store.put(key, b"x")
            assert store.get(key) == b"x"
            store.delete(key)

    run_threads(6, churn)
    assert list(store.list()) == []


def test_local_root_must_be_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"")
    with pytest.raises(ConfigError):
        LocalObjectStore(target)


# ---------------------------------------------------------------------------------------------
# SQLiteMetaStore
# ---------------------------------------------------------------------------------------------


def test_sqlite_file_format(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    with SQLiteMetaStore(path) as store:
        store.put("k", b"v")
        store.add("c", 1)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        assert raw.execute("PRAGMA application_id").fetchone()[0] == 0x53424147
        tables = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert set(tables) == {"kv", "counters"}
        assert all("WITHOUT ROWID" in sql for sql in tables.values())
        assert raw.execute("SELECT key, value FROM kv").fetchall() == [("k", b"v")]
        assert raw.execute("SELECT key, value FROM counters").fetchall() == [("c", 1)]
    finally:
        raw.close()


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "meta.sqlite"
    with SQLiteMetaStore(path) as store:
        store.write([Put("k", b"v"), Add("c", 7)])
    with SQLiteMetaStore(path, synchronous="normal") as store:
        assert store.get("k") == b"v"
        assert store.counter("c") == 7


def test_sqlite_non_durable_write_relaxes_only_itself(tmp_path: Path) -> None:
    # A non-durable write skips the log sync for itself only: the connection is back at the
    # configured level for the next write, and the write is in the file for other connections.
    with SQLiteMetaStore(tmp_path / "meta.sqlite") as store:
        levels: list[int] = []
        real = store._commit_locked

        def spy(conn: sqlite3.Connection, *args: Any) -> Any:
            levels.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            return real(conn, *args)

        store._commit_locked = spy  # type: ignore[method-assign,assignment]
        store.put("pending/t", b"1", durable=False)
        store.put("head", b"2")
        conn = store._conn()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert levels == [1, 2]  # NORMAL for the first write only, FULL for the second
        raw = sqlite3.connect(tmp_path / "meta.sqlite")
        try:
            assert raw.execute("SELECT value FROM kv WHERE key = 'pending/t'").fetchone() == (b"1",)
        finally:
            raw.close()


def _make_db(path: Path, *statements: str) -> None:
    raw = sqlite3.connect(path)
    try:
        for statement in statements:
            raw.execute(statement)
        raw.commit()
    finally:
        raw.close()


def test_sqlite_refuses_other_databases(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    _make_db(foreign, "CREATE TABLE users (id INTEGER)")
    with pytest.raises(ConfigError, match="another program"):
        SQLiteMetaStore(foreign)
    tagged = tmp_path / "tagged.sqlite"
    _make_db(tagged, "PRAGMA application_id = 1234")
    with pytest.raises(ConfigError, match="another program"):
        SQLiteMetaStore(tagged)
    future = tmp_path / "future.sqlite"
    SQLiteMetaStore(future).close()
    _make_db(future, "PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="version 99"):
        SQLiteMetaStore(future)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError):
        SQLiteMetaStore(garbage)


@pytest.mark.parametrize(
    "kwargs",
    [{"path": ":memory:"}, {"path": ""}, {"synchronous": "SOMETIMES"}, {"timeout": -1.0}],
)
def test_sqlite_bad_options(tmp_path: Path, kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"path": tmp_path / "m.sqlite", **kwargs}
    with pytest.raises(ConfigError):
        SQLiteMetaStore(**arguments)  # type: ignore[arg-type]


def test_sqlite_busy_is_retryable_and_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    store = SQLiteMetaStore(path, timeout=0.05)
    store.put("k", b"v")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendError) as info:
            store.write([Put("k", b"w"), Add("c", 1)])
        assert info.value.retryable is True
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # WAL: readers are not blocked by the writer.
        assert store.get("k") == b"v"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.counter("c") == 0
    store.write([Put("k", b"w"), Add("c", 1)])
    assert store.get("k") == b"w"
    store.close()


def test_sqlite_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteMetaStore(tmp_path / "meta.sqlite")
    store.close()
    with pytest.raises(BackendError) as info:
        store.get("k")
    assert info.value.retryable is False
    assert "closed" in str(info.value)


def test_sqlite_connection_per_thread(tmp_path: Path) -> None:
    store = SQLiteMetaStore(tmp_path / "meta.sqlite")
    store.put("k", b"v")
    release = threading.Event()
    inside = threading.Barrier(5, timeout=30)

    def reader(i: int) -> bytes | None:
        value = store.get("k")
        inside.wait()
        release.wait(30)
        return value

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert len(store._conns) == 5  # the opening thread's and one per reader
    release.set()
    for thread in threads:
        thread.join()
    gc.collect()
    assert len(store._conns) == 1  # a finished thread's connection is closed with it
    store.close()
    assert len(store._conns) == 0


def test_sqlite_bulk_operations_are_fast(tmp_path: Path) -> None:
    store = SQLiteMetaStore(tmp_path / "meta.sqlite")
    keys = [f"index/{i:064x}" for i in range(10_000)]
    started = time.perf_counter()
    store.write([Put(key, key[-8:].encode()) for key in keys])
    store.write([Add(key, 1) for key in keys])
    found = store.get_many([*keys, "index/missing"])
    elapsed = time.perf_counter() - started
    assert len(found) == 10_000
    assert found[keys[1234]] == keys[1234][-8:].encode()
    assert store.counter(keys[-1]) == 1
    assert elapsed < 5.0, f"10,000-key batch write and get_many took {elapsed:.2f} s"
    store.close()


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from statebag.meta import SQLiteMetaStore

    path, ready, name = sys.argv[1:4]
    store = SQLiteMetaStore(path, timeout=30, synchronous="NORMAL")
    open(os.path.join(ready, name), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(ready)) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    wins = 0
    for i in range(300):
        store.add("c", 1)
        if i % 3 == 0:  # 100 conditional puts, interleaved with the adds
            current = store.get("k")
            if store.put_if_value("k", str(int(current) + 1).encode(), expected=current):
                wins += 1
    store.close()
    print(wins)
    """
)


def test_sqlite_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    with SQLiteMetaStore(path) as store:
        store.put("k", b"0")
    ready = tmp_path / "ready"
    ready.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(ready), f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    wins = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        wins.append(int(out.strip()))
    with SQLiteMetaStore(path) as store:
        assert store.counter("c") == 600
        assert store.get("k") == str(sum(wins)).encode()
    assert all(w > 0 for w in wins)
    assert sum(wins) <= 200


def test_sqlite_condition_failure_rolls_back(tmp_path: Path) -> None:
    store = SQLiteMetaStore(tmp_path / "meta.sqlite")
    with pytest.raises(ConditionFailed):
        store.write([Put("a", b"1"), Add("c", 1), Check("zzz", b"x")])
    # The connection is usable and outside any transaction afterwards.
    assert store._conn().in_transaction is False
    store.write([Put("a", b"2")])
    assert store.get("a") == b"2"
    assert store.counter("c") == 0
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteMetaStore(tmp_path / "meta.sqlite")
    store.put("k", b"parent")
    parent_conn = store._conn()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process that ever had threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if store._conn() is not parent_conn and store.get("k") == b"parent":
                store.put("k", b"child")
                store.close()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._conn() is parent_conn  # the child left the parent's connection alone
    assert store.get("k") == b"child"
    store.close()
