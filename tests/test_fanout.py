"""Format 2's narrow nodes: what a small save writes is bounded by the change, not by the
size of the value (docs/FORMAT.md, "Index nodes", "Fields nodes", "Formats").

The three saves that set the bound, each on a repository holding the state before it: an
append of one message to a 4.3 MB history, one field changed among 10,000, and 1 KiB
overwritten inside a 64 MiB bytes value. Each writes at most 64 metadata items (one DynamoDB
transaction with room to spare) and at most 6 nodes besides the chunks the edit rewrites
(how many is the chunker's business: one to four here). A format-1 repository writes far
more; after ``upgrade`` the bounds hold as well. On the pure-Python chunker twin the two
large values are a sixteenth of the size, cut at a sixteenth of the chunk sizes: the same
number of chunks, so the same trees.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

import statebag
from statebag import dag
from statebag.bench.workloads import small_saves
from statebag.meta.counting import CountingMetaStore
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore

from .internals import fields, manifest, reader

ITEMS_MAX = 64
NODES_MAX = 6  # besides the chunks
_TWIN_SCALE = 16 if statebag.backend == "python" else 1


def _chunking() -> dict[str, int]:
    if _TWIN_SCALE == 1:
        return {}
    return {
        "min_size": 4096 // _TWIN_SCALE,
        "avg_size": 16384 // _TWIN_SCALE,
        "max_size": 65536 // _TWIN_SCALE,
    }


Step = tuple[str, dict[str, Any], dict[str, Any]]


@functools.cache
def _saves(seed: int) -> dict[str, Step]:
    return small_saves(seed, shrink=_TWIN_SCALE)


@pytest.fixture(scope="module")
def steps() -> dict[str, Step]:
    return _saves(1)


def _open(meta: MemoryMetaStore) -> statebag.Repository:
    return statebag.open(objects=MemoryObjectStore(), meta=meta, create=True, **_chunking())


def _measured(repo: statebag.Repository, counted: CountingMetaStore, step: Step) -> tuple[int, int]:
    """(metadata items, nodes other than chunks) the save of ``step``'s second state wrote;
    the items checked against a count taken outside the repository."""
    chain, before, after = step
    repo.save(chain, before)
    chunks = _chunk_ids(repo, chain)
    seen = counted.snapshot()
    result = repo.save(chain, after)
    assert result.requests["meta_items"] == (counted.snapshot() - seen).items_written
    new_chunks = {node_id.hex() for node_id in _chunk_ids(repo, chain) - chunks}
    return result.requests["meta_items"], len(set(result.node_ids) - new_chunks)


def _chunk_ids(repo: statebag.Repository, chain: str) -> set[bytes]:
    """The chunks of the head of ``chain``."""
    head = repo.head(chain)
    assert head is not None
    return {
        node_id
        for entry in fields(repo, head).values()
        if isinstance(entry, dag.TreeField)
        for node_id, _ in reader(repo).leaves(entry)
    }


@pytest.mark.parametrize("max_batch", [None, 100])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("save", ["append_message", "one_field_of_10000", "edit_1k_in_64m"])
def test_a_small_save_writes_few_items_and_nodes(
    save: str, seed: int, max_batch: int | None
) -> None:
    # Three data seeds: which chunk an edit changes, and whether that chunk ends a group,
    # varies with the data (docs/FORMAT.md, "Formats", gives the spread).
    counted = CountingMetaStore(MemoryMetaStore(max_batch=max_batch))
    with statebag.open(
        objects=MemoryObjectStore(), meta=counted, create=True, **_chunking()
    ) as repo:
        assert repo.config.format == 2
        items, nodes = _measured(repo, counted, _saves(seed)[save])
    assert items <= ITEMS_MAX and nodes <= NODES_MAX, (save, items, nodes)


def _format1_repository(counted: CountingMetaStore) -> statebag.Repository:
    """A repository as a statebag before format 2 made it."""
    return statebag.open(
        objects=MemoryObjectStore(), meta=counted, create=True, format=1, **_chunking()
    )


def test_a_format1_repository_keeps_its_format_until_upgraded(steps: dict[str, Step]) -> None:
    counted = CountingMetaStore(MemoryMetaStore())
    with _format1_repository(counted) as repo:
        assert repo.config.format == 1
        items, _ = _measured(repo, counted, steps["edit_1k_in_64m"])
        # Wide nodes: the rewritten index node takes a reference on each of its >= 1,024
        # children, which is what format 2 exists to fix.
        assert items > 1024
        head = repo.head("blob")
        assert head is not None and manifest(repo, head).format == 1


@pytest.mark.parametrize("save", ["append_message", "one_field_of_10000", "edit_1k_in_64m"])
def test_after_an_upgrade_the_bounds_hold(steps: dict[str, Step], save: str) -> None:
    counted = CountingMetaStore(MemoryMetaStore())
    chain, before, after = steps[save]
    with _format1_repository(counted) as repo:
        old = repo.save(chain, before).manifest_id
        assert repo.upgrade() == 2
        assert repo.upgrade() == 2  # a no-op the second time
        assert repo.config.format == 2
        # The first save after the upgrade writes the changed values' trees in the new
        # grouping; versions saved before read as they did.
        first = repo.save(chain, after)
        assert manifest(repo, first.manifest_id).format == 2
        assert repo.load(old) == before
        assert repo.load(first.manifest_id) == after
        items, nodes = _measured(repo, counted, (chain, after, before))
    assert items <= ITEMS_MAX and nodes <= NODES_MAX, (save, items, nodes)
    with statebag.open(objects=MemoryObjectStore(), meta=counted, create=False) as reopened:
        assert reopened.config.format == 2


def test_format2_nodes_are_narrow(steps: dict[str, Step]) -> None:
    """Every index node of a format-2 tree has at most 48 children, every fields node at most
    64 rows, and both average near the chosen fan-out (about 9 children, 13 rows)."""
    chain, state, _ = steps["edit_1k_in_64m"]
    with _open(MemoryMetaStore()) as repo:
        blob = repo.save(chain, state).manifest_id
        fields = repo.save("fields", steps["one_field_of_10000"][1]).manifest_id
        index = _index_children(repo, blob)
        rows = _fields_rows(repo, fields)
    assert index and max(index) <= dag.GROUPINGS[2].index_nodes.most
    assert 7 <= sum(index) / len(index) <= 12
    assert rows and max(rows) <= dag.GROUPINGS[2].fields.most
    assert 9 <= sum(rows) / len(rows) <= 18


def _index_children(repo: statebag.Repository, manifest_id: str) -> list[int]:
    """The number of children of each index node of the version's trees."""
    nodes = reader(repo).index_nodes
    counts: list[int] = []

    def fetch(ids: Sequence[bytes]) -> Mapping[bytes, bytes]:
        found = nodes(ids)
        counts.extend(len(dag.parse_index_node(found[i], node_id="x")[1]) for i in ids)
        return found

    for entry in fields(repo, manifest_id).values():
        if isinstance(entry, dag.TreeField):
            dag.leaves_of(entry, fetch)
    return counts


def _fields_rows(repo: statebag.Repository, manifest_id: str) -> list[int]:
    """The number of rows of each node of the version's fields tree."""
    read = reader(repo).read
    counts: list[int] = []

    def fetch(ids: Sequence[bytes]) -> Mapping[bytes, bytes]:
        found = read(ids)
        counts.extend(len(dag.parse_fields_node(found[i], node_id="x")[1]) for i in ids)
        return found

    list(dag.iter_fields(manifest(repo, manifest_id).root, fetch))
    return counts


def test_a_handle_opened_before_an_upgrade_keeps_writing_format_1_safely(
    steps: dict[str, Step], tmp_path: Any
) -> None:
    """Two processes' handles: one upgrades, the other still writes format 1's groupings
    (it read the configuration before). Both groupings share nodes and counts; every
    version loads, and gc and the audit find the counts exact."""
    chain, before, after = steps["edit_1k_in_64m"]
    path = tmp_path / "r"
    with statebag.open(path, format=1, fsync=False, **_chunking()) as old_handle:
        first = old_handle.save(chain, before).manifest_id
        with statebag.open(path, create=False) as new_handle:
            assert new_handle.upgrade() == 2
            upgraded = new_handle.save(chain, after).manifest_id
            # The old handle saves on top, with format 1's wide nodes.
            late = old_handle.save(chain, before).manifest_id
            assert manifest(old_handle, late).format == 1
            assert manifest(new_handle, upgraded).format == 2
            new_handle.delete(first)
            new_handle.gc(grace=0)
            assert new_handle.load(upgraded) == after
            assert new_handle.load(late) == before
            report = new_handle.audit()
            assert report.ok and not report.over_counted and not report.under_counted, report
            assert new_handle.verify().ok
