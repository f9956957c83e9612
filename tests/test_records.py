"""Records beside chains (Repository.put_records / records) and chains(prefix=...)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import statebag
from statebag import InvalidInputError, NotFoundError, Repository
from statebag.keys import RECORD, record_prefix, records_counter_key
from statebag.meta.memory import MemoryMetaStore
from statebag.records import MAX_RECORD_BYTES, Records

from . import internals


@pytest.fixture(params=["memory", "local"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    url = f"memory://{uuid.uuid4().hex}" if request.param == "memory" else str(tmp_path / "r")
    with statebag.open(url) as repository:
        yield repository


def test_records_round_trip_in_name_order_beside_a_chain_without_a_version(
    repo: Repository,
) -> None:
    assert repo.put_records("c", {"b": b"2", "a": b"1", "c": b""}) == 3
    assert repo.head("c") is None
    assert list(repo.records("c").items()) == [("a", b"1"), ("b", b"2"), ("c", b"")]
    repo.save("c", {"x": 1})
    assert repo.records("c") == {"a": b"1", "b": b"2", "c": b""}
    assert repo.records("other") == {}


def test_replace_false_keeps_what_is_there_and_replace_true_overwrites(repo: Repository) -> None:
    repo.put_records("c", {"a": b"first"})
    assert repo.put_records("c", {"a": b"second", "b": b"new"}, replace=False) == 1
    assert repo.records("c") == {"a": b"first", "b": b"new"}
    assert repo.put_records("c", {"a": b"third"}, replace=True) == 1
    assert repo.records("c")["a"] == b"third"


def test_records_do_not_change_the_version(repo: Repository) -> None:
    saved = repo.save("c", {"x": [1, 2, 3]})
    before = repo.stats()
    repo.put_records("c", {"w": b"v" * 1000})
    assert repo.head("c") == saved.manifest_id
    assert repo.load(saved.manifest_id) == {"x": [1, 2, 3]}
    assert repo.stats() == before
    assert repo.audit().ok


@pytest.mark.parametrize(
    ("records", "path"),
    [
        ({"": b"x"}, "records"),
        ({"a\x00b": b"x"}, "records['a\\x00b']"),
        ({"n" * 513: b"x"}, f"records[{'n' * 513!r}]"),
        ({"ok": b"x", "bad": "text"}, "records['bad']"),
        ({"ok": b"x", "big": b"x" * (MAX_RECORD_BYTES + 1)}, "records['big']"),
        ([("a", b"x")], "records"),
    ],
)
def test_a_bad_record_is_refused_by_name_and_nothing_is_written(
    repo: Repository, records: object, path: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        repo.put_records("c", records)  # type: ignore[arg-type]
    assert info.value.path == path
    assert repo.records("c") == {}


def test_the_largest_record_fits(repo: Repository) -> None:
    data = bytes(range(256)) * (MAX_RECORD_BYTES // 256)
    repo.put_records("c", {"n" * 512: data})
    assert repo.records("c") == {"n" * 512: data}


def test_a_bad_chain_or_option_is_refused(repo: Repository) -> None:
    with pytest.raises(InvalidInputError) as info:
        repo.put_records("a\nb", {"x": b""})
    assert info.value.path == "chain"
    with pytest.raises(InvalidInputError) as info:
        repo.put_records("c", {"x": b""}, replace=1)  # type: ignore[arg-type]
    assert info.value.path == "replace"


def test_delete_chain_deletes_the_records_and_only_that_chains(repo: Repository) -> None:
    repo.save("c", {"x": 1})
    repo.put_records("c", {"a": b"1"})
    repo.put_records("c/2", {"a": b"2"})
    repo.delete_chain("c")
    assert repo.records("c") == {}
    assert repo.records("c/2") == {"a": b"2"}
    # A chain that holds only records is deleted too; one with nothing is not found.
    assert repo.delete_chain("c/2") == 0
    assert repo.records("c/2") == {}
    with pytest.raises(NotFoundError):
        repo.delete_chain("c/2")
    assert not any(internals.meta(repo).scan(RECORD))
    assert repo.audit().ok


class _WriteDuringScan(MemoryMetaStore):
    """A store on which one records write lands while the first scan of records runs."""

    def __init__(self, chain: str, *, max_batch: int | None = None) -> None:
        super().__init__(max_batch=max_batch)
        self.chain = chain
        self.fired = False

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        found = list(super().scan(prefix, start_after=start_after, limit=limit))
        if prefix == record_prefix(self.chain) and not self.fired:
            self.fired = True
            Records(self).put(self.chain, {"late": b"x"}, replace=True)
        yield from found


@pytest.mark.parametrize("max_batch", [None, 3])
def test_a_records_write_racing_the_delete_is_deleted_too(max_batch: int | None) -> None:
    meta = _WriteDuringScan("c", max_batch=max_batch)
    records = Records(meta)
    records.put("c", {"early": b"x"}, replace=True)
    assert records.delete("c") == 2  # read again after the late write: both deleted
    assert meta.fired
    assert records.get("c") == {}
    assert meta.counter(records_counter_key("c")) == 0


def test_a_store_that_caps_a_write_deletes_many_records_in_several() -> None:
    meta = MemoryMetaStore(max_batch=4)
    records = Records(meta)
    for n in range(0, 10, 2):  # two records per write: within the cap
        records.put("c", {f"r{n}": b"x", f"r{n + 1}": b"y"}, replace=True)
    records.put("d", {"other": b"z"}, replace=True)
    assert records.delete("c") == 10
    assert records.get("c") == {}
    assert records.get("d") == {"other": b"z"}


def test_concurrent_inserts_of_one_name_keep_exactly_one_value(repo: Repository) -> None:
    barrier = threading.Barrier(8)
    written: list[int] = []

    def insert(n: int) -> None:
        barrier.wait()
        written.append(repo.put_records("c", {"same": str(n).encode()}, replace=False))

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(written) == [0] * 7 + [1]
    assert repo.records("c")["same"] in {str(n).encode() for n in range(8)}


def test_a_rehearsal_writes_no_record(repo: Repository) -> None:
    with repo.rehearsal() as trial:
        trial.put_records("c", {"a": b"1"})
        assert trial.records("c") == {"a": b"1"}
    assert repo.records("c") == {}


def test_chains_by_prefix(repo: Repository) -> None:
    for name in ("a/1", "a/2", "ab", "b/1", "a"):
        repo.save(name, {"x": 1})
    assert list(repo.chains(prefix="a/")) == ["a/1", "a/2"]
    assert list(repo.chains(prefix="a")) == ["a", "a/1", "a/2", "ab"]
    assert list(repo.chains(prefix="z")) == []
    assert list(repo.chains()) == ["a", "a/1", "a/2", "ab", "b/1"]
    with pytest.raises(InvalidInputError) as info:
        list(repo.chains(prefix=b"a"))  # type: ignore[arg-type]
    assert info.value.path == "prefix"
