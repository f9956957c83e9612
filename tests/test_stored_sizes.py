"""Every length and size read from storage is checked before anything is allocated by it.

A crafted version (tests/crafting.py: every hash consistent, so only the readers' checks
stand in the way) whose fields table claims more bytes than its chunks hold, whose index
nodes or index records lie, or whose numbers are impossible, is an IntegrityError naming
the field or node: for ``load`` (quickly, allocating next to nothing), ``verify`` (a
problem), and a save that would carry the field over (which must not count the claim in
the repository's logical bytes). ``stats`` reads counters, which no claim changes.
"""

from __future__ import annotations

import os
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from blake3 import blake3

import statebag
from statebag import codec, dag
from statebag.errors import IntegrityError, InvalidInputError
from statebag.keys import IndexRecord, node_key

from . import internals
from .crafting import craft_version, index_node, retree, store_nodes

GIB = 1 << 30


@pytest.fixture
def repo() -> Iterator[statebag.Repository]:
    with statebag.open(f"memory://{uuid.uuid4().hex}", fsync=False) as repository:
        yield repository


def base_state() -> dict[str, Any]:
    return {
        "items": [f"item {i} " + "word " * (i % 7) for i in range(3000)],  # ~75 kB: 3-5 chunks
        "blob": os.urandom(4000),  # one chunk (at most min_size)
        "n": 1,
    }


def saved(repo: statebag.Repository) -> tuple[str, dict[str, Any], dict[str, dag.Entry]]:
    state = base_state()
    manifest_id = repo.save("c", state).manifest_id
    entries = internals.fields(repo, manifest_id)
    assert isinstance(entries["items"], dag.TreeField) and entries["items"].level == 1
    assert isinstance(entries["blob"], dag.TreeField) and entries["blob"].level == 0
    return manifest_id, state, entries


def refused_cheaply(call: Callable[[], Any], match: str) -> IntegrityError:
    """``call`` raises IntegrityError matching ``match`` in under 2 s, allocating < 4 MB."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(IntegrityError, match=match) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 4_000_000, peak
    return info.value


def check_everywhere(
    repo: statebag.Repository, bad: str, state: dict[str, Any], field: str, match: str
) -> None:
    """load, a lazy load, verify and a carrying save all refuse version ``bad``."""
    before = repo.stats()
    refused_cheaply(lambda: repo.load(bad), match)
    refused_cheaply(lambda: repo.load(bad, lazy=True)[field], match)
    report = repo.verify(bad)
    assert not report.ok
    assert any(field in problem or "fields table" in problem for problem in report.problems)
    # A save that carries the field over unchanged would count its length.
    refused_cheaply(lambda: repo.save("c", {**state, "n": 2}, changed=["n"]), match)
    assert repo.stats() == before
    assert list(internals.meta(repo).scan("pending/")) == []


@pytest.mark.parametrize("claim", [8 * GIB, 1 << 40, 2**64 - 1, 0, -1, -(2**40)])
@pytest.mark.parametrize("field", ["items", "blob"])
def test_a_length_its_chunks_do_not_hold_is_refused(
    repo: statebag.Repository, field: str, claim: int
) -> None:
    _, state, entries = saved(repo)
    entry = entries[field]
    assert isinstance(entry, dag.TreeField)
    bad = craft_version(repo, "c", {**entries, field: retree(entry, length=claim)})
    check_everywhere(repo, bad, state, field, field)


@pytest.mark.parametrize("delta", [1, -1, 100_000])
def test_a_length_off_by_a_little_is_refused(repo: statebag.Repository, delta: int) -> None:
    _, state, entries = saved(repo)
    entry = entries["items"]
    assert isinstance(entry, dag.TreeField)
    bad = craft_version(repo, "c", {**entries, "items": retree(entry, length=entry.length + delta)})
    check_everywhere(repo, bad, state, "items", "items|index node")


def test_a_bin_head_and_length_that_disagree_are_refused(repo: statebag.Repository) -> None:
    _, state, entries = saved(repo)
    entry = entries["blob"]
    assert isinstance(entry, dag.TreeField)
    # The head says 4 GiB - 1 bytes of bin, the entry (and the chunk) 4 kB.
    bad = craft_version(repo, "c", {**entries, "blob": retree(entry, head=b"\xc6\xff\xff\xff\xff")})
    check_everywhere(repo, bad, state, "blob", "blob")


@pytest.mark.parametrize("level", [2, dag.TREE_LEVEL_MAX + 1, -1])
def test_an_impossible_or_wrong_level_is_refused(repo: statebag.Repository, level: int) -> None:
    _, state, entries = saved(repo)
    entry = entries["items"]
    assert isinstance(entry, dag.TreeField)
    bad = craft_version(repo, "c", {**entries, "items": retree(entry, level=level)})
    check_everywhere(repo, bad, state, "items", "items|level")


@pytest.mark.parametrize("inflate", [lambda n: n + 1, lambda n: 8 * GIB], ids=["plus1", "8GiB"])
def test_index_nodes_that_inflate_their_children_are_refused(
    repo: statebag.Repository, inflate: Callable[[int], int]
) -> None:
    """The index node and the entry agree on what each chunk holds; the index records do not."""
    _, state, entries = saved(repo)
    entry = entries["items"]
    assert isinstance(entry, dag.TreeField)
    leaves = internals.reader(repo).leaves(entry)
    inflated = [(chunk, inflate(length)) for chunk, length in leaves]
    (root,) = store_nodes(repo, [index_node(1, inflated)], interior=True)
    total = sum(length for _, length in inflated)
    bad = craft_version(repo, "c", {**entries, "items": retree(entry, root=root, length=total)})
    check_everywhere(repo, bad, state, "items", "by the index, but its tree says")


def test_index_nodes_whose_children_do_not_add_up_are_refused(repo: statebag.Repository) -> None:
    _, state, entries = saved(repo)
    entry = entries["items"]
    assert isinstance(entry, dag.TreeField)
    leaves = internals.reader(repo).leaves(entry)
    # A level 2 tree over the real level 1 node, claiming 1 TiB below it.
    (root,) = store_nodes(repo, [index_node(2, [(entry.root, 1 << 40)])], interior=True)
    bad = craft_version(
        repo, "c", {**entries, "items": retree(entry, root=root, level=2, length=1 << 40)}
    )
    check_everywhere(repo, bad, state, "items", "lists .* bytes below it, but its parent says")
    assert sum(length for _, length in leaves) == entry.length


@pytest.mark.parametrize(
    "change",
    [
        {"size": 65536 + 1},  # more than a chunk of this repository can hold
        {"size": 2**32 - 1},
        {"length": 0},  # a frame is at least its codec byte
        {"length": 2**32 - 1},  # a frame is at most one byte more than its node
    ],
)
def test_index_records_of_impossible_sizes_are_refused(
    repo: statebag.Repository, change: dict[str, int]
) -> None:
    manifest_id, _, entries = saved(repo)
    entry = entries["blob"]
    assert isinstance(entry, dag.TreeField)
    key = node_key(entry.root)
    stored = internals.meta(repo).get(key)
    assert stored is not None
    record = IndexRecord.decode(stored, node_id="x")
    internals.meta(repo).put(key, record._replace(**change).encode())
    internals.drop_caches(repo)
    match = "index record of node"
    refused_cheaply(lambda: repo.load(manifest_id), match)
    assert not repo.verify(manifest_id).ok


def test_a_manifest_that_overstates_its_size_is_reported_not_counted(
    repo: statebag.Repository,
) -> None:
    _, state, entries = saved(repo)
    before = repo.stats()
    bad = craft_version(repo, "c", entries, size=1 << 40)
    assert repo.load(bad) == state  # the values themselves are intact
    report = repo.verify(bad)
    assert not report.ok
    assert any("says 1099511627776 logical bytes" in p for p in report.problems), report
    assert repo.stats() == before
    # A save on top counts what its fields hold, not what the manifest said.
    result = repo.save("c", {**state, "n": 2}, changed=["n"])
    assert result.bytes_logical == sum(len(codec.encode(v)) for v in {**state, "n": 2}.values())
    assert repo.stats().bytes_logical == before.bytes_logical + result.bytes_logical


def test_a_save_carrying_checked_fields_reads_them_once(repo: statebag.Repository) -> None:
    """A chain's next save checks the lengths it carries over from a table read from storage
    once; the table it remembers is its own, checked, and the save after reads nothing."""
    _, state, _ = saved(repo)
    internals.drop_caches(repo)
    reads: list[bytes] = []
    reader = internals.reader(repo)
    original = reader.read

    def counting(ids: Any, **kwargs: Any) -> Any:
        reads.extend(ids)
        return original(ids, **kwargs)

    reader.read = counting  # type: ignore[method-assign]
    try:
        repo.save("c", {**state, "n": 2}, changed=["n"])
        assert reads  # the fields table and the index node of "items"
        reads.clear()
        repo.save("c", {**state, "n": 3}, changed=["n"])
        assert reads == []
    finally:
        reader.read = original  # type: ignore[method-assign]


# -- the bounds themselves ----------------------------------------------------------------------


def test_node_limits_follow_the_configuration() -> None:
    limits = dag.NodeLimits.of(max_size=65536, inline_max=512)
    assert limits.chunk == 65536
    assert limits.index_node == 2 + dag.INDEX_MAX * 40
    assert limits.fields_node == 13 + dag.FIELDS_MAX * (512 + 9) + dag.FIELDS_NAMES_MAX
    assert limits.largest == limits.fields_node


def _names(count: int, length: int, level: int = 0) -> list[str]:
    """``count`` distinct names of ``length`` characters none of which ends a fields group
    at ``level``, so that all of them share one node."""
    names: list[str] = []
    index = 0
    while len(names) < count:
        name = f"{index:08d}".ljust(length, "n")
        index += 1
        if dag.name_hash(name)[level] & dag.GROUPINGS[1].fields.mask:
            names.append(name)
    return sorted(names)


@pytest.mark.parametrize("inline_max", [16, 512, 65536])
def test_the_largest_fields_node_a_save_can_write_is_within_the_bound(inline_max: int) -> None:
    limits = dag.NodeLimits.of(max_size=65536, inline_max=inline_max)
    names = _names(dag.FIELDS_MAX, dag.FIELDS_NAMES_MAX // dag.FIELDS_MAX)
    # The longest inline encoding: one byte short of inline_max.
    largest_inline = next(
        encoded
        for size in range(inline_max, 0, -1)
        if len(encoded := codec.encode(b"x" * size)) == inline_max - 1
    )
    tree = dag.TreeField(b"\xdd\xff\xff\xff\xff", bytes(32), 2**64 - 1, dag.TREE_LEVEL_MAX)
    sizes = []
    for entry in (dag.InlineField(largest_inline), tree):
        # Format 1's grouping: the widest fields nodes any format writes.
        _, nodes = dag.build_fields([(name, entry) for name in names], grouping=dag.GROUPINGS[1])
        assert len(nodes) == 1  # one level 0 node with every row
        sizes.append(len(nodes[0].data))
    assert max(sizes) <= limits.fields_node
    assert max(sizes) >= 0.99 * limits.fields_node  # and the bound is not loose


def test_names_past_the_fields_node_bound_are_refused_before_commit(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dag, "FIELDS_NAMES_MAX", 1000)
    before = repo.stats()
    long = "L" * 1001
    with pytest.raises(InvalidInputError) as info:
        repo.save("c", {long: os.urandom(20_000), "short": 1})
    assert info.value.path == long
    assert repo.stats() == before
    # Told from the names before anything was encoded: no pack was even uploaded, though
    # a value of three packs' worth ships its first packs while later fields encode.
    with statebag.open(f"memory://{uuid.uuid4().hex}", pack_size=1 << 20) as small_packs:
        requests = small_packs.io_counters()
        with pytest.raises(InvalidInputError):
            small_packs.save("c", {"a": os.urandom(3 << 20), long: 1, "z": os.urandom(3 << 20)})
        assert (small_packs.io_counters() - requests).puts == 0
    assert list(internals.objects(repo).list("packs/")) == []
    # Within the bound, the same state saves.
    repo.save("c", {"L" * 990: os.urandom(20_000), "short": 1})


def test_blake3_of_crafted_nodes_is_their_id(repo: statebag.Repository) -> None:
    (node_id,) = store_nodes(repo, [b"crafted"])
    assert node_id == blake3(b"crafted").digest()
    assert internals.reader(repo).read([node_id]) == {node_id: b"crafted"}


def test_an_interior_node_that_does_not_parse_is_reported_missing_by_the_audit(
    repo: statebag.Repository,
) -> None:
    """A node whose bytes match its id but are no node at all (an index node cut off inside
    a child's entry): the audit cannot know what it references, and reports it missing
    rather than failing."""
    _, _, entries = saved(repo)
    entry = entries["items"]
    assert isinstance(entry, dag.TreeField)
    broken = index_node(1, [(entry.root, 100)])[:-3]
    (root,) = store_nodes(repo, [broken], interior=True)
    craft_version(repo, "c", {**entries, "items": retree(entry, root=root)})
    report = repo.audit()
    assert not report.ok
    assert root.hex() in report.missing_nodes, report
