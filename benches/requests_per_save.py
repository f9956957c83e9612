"""Requests per save, counted from outside the repository: meta reads, meta writes, object
requests, for three saves on two stores.

Saves (each on a repository that already holds the state before it; on the handle that
saved it, ``warm``, or on a handle opened afresh, ``cold``, as a new process would):

- ``one_field``: one field changed in a state of 10,000 small fields;
- ``one_pct``: one of 100 fields of 500 kB replaced, 1% of a 50 MB state;
- ``nothing_new``: the state saved again unchanged.

Stores: ``sqlite`` (a local directory: packs in files, metadata in SQLite) and
``max_batch100`` (memory stores whose metadata store takes at most 100 operations per write,
as DynamoDB does).

The counting wraps the stores before the repository is made, with a wrapper written here, so
that the same script measures any version of statebag: ``python benches/requests_per_save.py``
prints the table (run with the sources of the version to measure first on ``PYTHONPATH``).
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import statebag
from statebag.config import load_or_create_config
from statebag.liveness import FileLiveness, ProcessLiveness
from statebag.meta import MetaStore, Op
from statebag.meta.memory import MemoryMetaStore
from statebag.meta.sqlite import SQLiteMetaStore
from statebag.objects.local import LocalObjectStore
from statebag.objects.memory import MemoryObjectStore

MB = 1_000_000
SAVES = ("one_field", "one_pct", "nothing_new")
STORES = ("sqlite", "max_batch100")


class _Counted(MetaStore):
    """Counts read and write requests (a listing counts one per 100 items, as pages)."""

    def __init__(self, inner: MetaStore) -> None:
        self.inner = inner
        self.max_batch = inner.max_batch
        self.reads = 0
        self.writes = 0
        self._lock = threading.Lock()

    def _read(self, times: int = 1) -> None:
        with self._lock:
            self.reads += times

    def get(self, key: str, /) -> bytes | None:
        self._read()
        return self.inner.get(key)

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        self._read()
        return self.inner.get_many(keys)

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        items = list(self.inner.scan(prefix, start_after=start_after, limit=limit))
        self._read(1 + len(items) // 100)
        return iter(items)

    def counter(self, key: str, /) -> int:
        self._read()
        return self.inner.counter(key)

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        items = list(self.inner.counters(prefix))
        self._read(1 + len(items) // 100)
        return iter(items)

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        with self._lock:
            self.writes += 1
        self.inner.write(ops, durable=durable)

    def add(self, key: str, delta: int, /) -> int:
        with self._lock:
            self.writes += 1
        return self.inner.add(key, delta)

    def close(self) -> None:
        self.inner.close()


def _states(save: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state saved first and the one whose save is measured."""
    rng = random.Random(16)
    if save == "one_field":
        before = {f"f{i:05d}": {"n": i, "text": f"value {i}"} for i in range(10_000)}
        after = dict(before)
        after["f05000"] = {"n": -1, "text": "changed"}
        return before, after
    before = {f"blob{i:03d}": rng.randbytes(500_000) for i in range(100)}
    if save == "nothing_new":
        return before, before
    after = dict(before)
    after["blob050"] = rng.randbytes(500_000)
    return before, after


class _Kept(MemoryObjectStore):
    """A memory object store that a closing repository does not take with it."""

    def close(self) -> None:
        pass


def _stores(store: str, where: Path) -> tuple[Any, _Counted, Any]:
    if store == "sqlite":
        meta = _Counted(SQLiteMetaStore(where / "meta.sqlite", synchronous="NORMAL"))
        return LocalObjectStore(where / "objects", fsync=False), meta, FileLiveness(where / "locks")
    return _Kept(), _Counted(MemoryMetaStore(max_batch=100)), ProcessLiveness()


def measure(save: str, store: str, *, cold: bool = False) -> dict[str, int]:
    """Requests of one measured save: ``meta_reads``, ``meta_writes``, ``object_requests``."""
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        (where / "locks").mkdir()
        objects, meta, liveness = _stores(store, where)
        config = load_or_create_config(meta, {"fsync": False}, create=True, where=store)
        first, second = _states(save)
        repo = statebag.Repository(objects, meta, config, liveness=liveness)
        if cold:
            with repo:
                repo.save("c", first)
            if store == "sqlite":
                objects, meta, liveness = _stores(store, where)
            repo = statebag.Repository(objects, meta, config, liveness=liveness)
        else:
            repo.save("c", first)
        with repo:
            reads, writes, before = meta.reads, meta.writes, repo.io_counters()
            repo.save("c", second)
            return {
                "meta_reads": meta.reads - reads,
                "meta_writes": meta.writes - writes,
                "object_requests": (repo.io_counters() - before).requests,
            }


def table(measure_one: Callable[..., dict[str, int]] = measure) -> str:
    rows = [
        "| save | store | handle | meta reads | meta writes | object requests |",
        "|---|---|---|---|---|---|",
    ]
    for save in SAVES:
        for store in STORES:
            for cold in (False, True):
                got = measure_one(save, store, cold=cold)
                rows.append(
                    f"| {save} | {store} | {'cold' if cold else 'warm'} | {got['meta_reads']} "
                    f"| {got['meta_writes']} | {got['object_requests']} |"
                )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
