"""statebag.open(objects=, meta=): a repository on stores handed over, with its lease."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import statebag
from statebag.errors import ConfigError, InvalidInputError, NotFoundError
from statebag.keys import PENDING, decode_pending
from statebag.liveness import ProcessLiveness
from statebag.meta import MetaStore
from statebag.meta.counting import CountingMetaStore
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore

from . import internals


class _PendingLog(CountingMetaStore):
    """Records every pending entry written, to read the lease a save put in it."""

    def __init__(self, inner: MetaStore) -> None:
        super().__init__(inner)
        self.pending: list[bytes] = []

    def write(self, ops: Any, /, *, durable: bool = True) -> None:
        ops = list(ops)
        self.pending += [
            op.value for op in ops if op.key.startswith(PENDING) and hasattr(op, "value")
        ]
        super().write(ops, durable=durable)


def test_open_on_supplied_stores_creates_then_reopens() -> None:
    objects, meta = MemoryObjectStore(), MemoryMetaStore(max_batch=25)
    with statebag.open(objects=objects, meta=meta, create=True, inline_max=64) as repo:
        saved = repo.save("c", {"a": 1, "b": b"x" * 5000})
        assert repo.config.inline_max == 64
    # Closing a memory store keeps its contents; open again without create.
    with statebag.open(objects=objects, meta=meta) as repo:
        assert repo.load(saved.manifest_id) == {"a": 1, "b": b"x" * 5000}
        assert repo.config.inline_max == 64
        assert not isinstance(internals.liveness(repo), ProcessLiveness)
        with pytest.raises(ConfigError):
            statebag.open(objects=objects, meta=meta, inline_max=128)


def test_supplied_stores_without_a_repository_are_not_written_unless_create() -> None:
    objects, meta = MemoryObjectStore(), MemoryMetaStore()
    with pytest.raises(NotFoundError):
        statebag.open(objects=objects, meta=meta)
    with pytest.raises(InvalidInputError) as caught:
        statebag.open(objects=objects, meta=meta, create=True, avg_size=3)
    assert caught.value.path == "avg_size"
    assert list(meta.scan("")) == [] and list(objects.list()) == []


def test_supplied_object_store_with_packs_but_no_metadata_is_refused() -> None:
    objects = MemoryObjectStore()
    with statebag.open(objects=objects, meta=MemoryMetaStore(), create=True) as repo:
        repo.save("c", {"big": b"y" * 10_000})
    fresh = MemoryMetaStore()
    with pytest.raises(ConfigError, match="holds packs"):
        statebag.open(objects=objects, meta=fresh, create=True)
    assert list(fresh.scan("")) == []


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        ({"objects": MemoryObjectStore()}, "meta"),
        ({"meta": MemoryMetaStore()}, "objects"),
        ({"objects": MemoryMetaStore(), "meta": MemoryMetaStore()}, "objects"),
        ({"objects": MemoryObjectStore(), "meta": MemoryObjectStore()}, "meta"),
        ({}, "url"),
        ({"create": "yes", "objects": MemoryObjectStore(), "meta": MemoryMetaStore()}, "create"),
    ],
)
def test_bad_store_arguments_name_the_argument(arguments: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        statebag.open(**arguments)
    assert caught.value.path == path


def test_a_url_and_stores_together_are_refused() -> None:
    meta = MemoryMetaStore()
    with pytest.raises(InvalidInputError) as caught:
        statebag.open("memory://both", objects=MemoryObjectStore(), meta=meta, create=True)
    assert caught.value.path == "url"
    assert list(meta.scan("")) == []


@pytest.mark.parametrize("lease", [0, -1, float("nan"), "1h", True, timedelta(seconds=-5)])
def test_a_bad_lease_is_refused_before_anything_is_written(lease: Any) -> None:
    meta = MemoryMetaStore()
    with pytest.raises(InvalidInputError) as caught:
        statebag.open(objects=MemoryObjectStore(), meta=meta, create=True, lease=lease)
    assert caught.value.path == "lease"
    assert list(meta.scan("")) == []
    with pytest.raises(InvalidInputError) as caught:
        statebag.open("memory://bad-lease", lease=lease)
    assert caught.value.path == "lease"


@pytest.mark.parametrize(
    ("lease", "seconds"), [(None, 24 * 3600.0), (90, 90.0), (timedelta(minutes=5), 300.0)]
)
def test_the_lease_reaches_the_pending_entry_of_a_save(lease: Any, seconds: float) -> None:
    meta = _PendingLog(MemoryMetaStore(max_batch=25))
    with statebag.open(objects=MemoryObjectStore(), meta=meta, create=True, lease=lease) as repo:
        repo.save("c", {"big": b"z" * 20_000})
    assert meta.pending
    for value in meta.pending:
        record = decode_pending(value)
        # The lease runs from when the entry was (last) written: no earlier than the start.
        ahead = record.lease_until_ns - record.started_ns - int(seconds * 1e9)
        assert 0 <= ahead < 10**9 * 30, ahead


def test_url_opens_take_a_lease_too(tmp_path: Any) -> None:
    with statebag.open(tmp_path / "r", lease=timedelta(hours=1)) as repo:
        repo.save("c", {"a": 1})
        assert repo.load_latest("c") == {"a": 1}
