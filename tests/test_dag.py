"""dag.py: the split of values and fields tables into nodes, and back; frozen ids."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import statebag
from statebag import IntegrityError, InvalidInputError, codec, dag
from statebag.hashing import hash_bytes

from .datagen import json_like_bytes, random_bytes

FORMAT2 = dag.GROUPINGS[2]


def _store(nodes: Sequence[dag.NewNode]) -> dict[bytes, bytes]:
    store: dict[bytes, bytes] = {}
    for node in nodes:
        assert hash_bytes(bytes(node.data)) == node.node_id
        store[node.node_id] = bytes(node.data)
    return store


def _fetcher(store: Mapping[bytes, bytes]):  # type: ignore[no-untyped-def]
    def fetch(ids: Sequence[bytes]) -> dict[bytes, bytes]:
        return {node_id: store[node_id] for node_id in ids}

    return fetch


@pytest.mark.parametrize(
    ("value", "head"),
    [
        ("x" * 31, 1),
        ("x" * 200, 2),
        ("x" * 70_000, 5),
        (b"x" * 200, 2),
        (b"x" * 300, 3),
        (b"x" * 70_000, 5),
        (list(range(15)), 1),
        (list(range(16)), 3),
        (list(range(70_000)), 5),
        ({str(i): i for i in range(15)}, 1),
        ({str(i): i for i in range(16)}, 3),
        ({str(i): i for i in range(70_000)}, 5),
    ],
)
def test_head_length_of_every_container_type(value: object, head: int) -> None:
    assert dag.head_length(codec.encode(value)) == head


def test_head_length_refuses_scalars() -> None:
    with pytest.raises(InvalidInputError):
        dag.head_length(codec.encode(12345))


def _split(
    value: object, *, grouping: dag.Groupings = FORMAT2
) -> tuple[dag.TreeField, list[dag.NewNode]]:
    encoded = codec.encode(value)
    head = dag.head_length(encoded)
    offsets, digests = statebag.Chunker().cut_and_hash(memoryview(encoded)[head:])
    return dag.split_value(
        encoded[:head], memoryview(encoded)[head:], offsets, digests, grouping=grouping
    )


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=100, max_value=3_000_000), seed=st.integers(0, 1000))
def test_value_trees_round_trip(size: int, seed: int) -> None:
    value = random_bytes(size, seed)
    entry, nodes = _split(value)
    store = _store(nodes)
    leaves = dag.leaves_of(entry, _fetcher(store))
    assert dag.decode_value(entry.head, [store[node_id] for node_id, _ in leaves]) == value
    assert dag.entry_size(entry) == len(codec.encode(value))


def test_index_splits_into_levels_when_wide() -> None:
    narrow = FORMAT2._replace(index_nodes=dag.Grouping(2, 0, 0, 8))
    value = json_like_bytes(3_000_000, seed=4)
    entry, nodes = _split(value, grouping=narrow)
    assert entry.level >= 3
    store = _store(nodes)
    leaves = dag.leaves_of(entry, _fetcher(store))
    assert b"".join(store[node_id] for node_id, _ in leaves) == value
    # Every index node has 1..INDEX_MAX children and lists each child's bytes exactly.
    for node in nodes:
        data = store[node.node_id]
        if data[:1] == bytes([dag.INDEX_TAG]) and len(node.children):
            _, children = dag.parse_index_node(data, node_id="x")
            assert 1 <= len(children) <= 8
            assert [child for child, _ in children] == list(node.children)


def test_append_to_a_large_value_rewrites_the_tail_only() -> None:
    rng = random.Random(3)
    items = [f"message {i}: " + "word " * rng.randint(5, 200) for i in range(3000)]
    entry_a, nodes_a = _split(items)
    entry_b, nodes_b = _split([*items, "one more message"])
    assert entry_a.head != entry_b.head  # the length is in the head...
    ids_a = {node.node_id for node in nodes_a}
    fresh = [node for node in nodes_b if node.node_id not in ids_a]
    assert 1 <= len(fresh) <= 3, len(fresh)  # ...so the body changes at its end only


def test_index_node_parsing_refuses_garbage() -> None:
    for bad in (b"", b"i", b"i\x01" + b"x" * 39, b"x\x01" + b"y" * 40, b"i\x00" + b"y" * 40):
        with pytest.raises(IntegrityError):
            dag.parse_index_node(bad, node_id="bad")


# -- fields tables ----------------------------------------------------------------------------

names = st.text(min_size=0, max_size=12)


def _entries(count: int, seed: int) -> list[tuple[str, dag.Entry]]:
    rng = random.Random(seed)
    entries: dict[str, dag.Entry] = {}
    for index in range(count):
        name = f"f{rng.randrange(10**9):09d}_{index}"
        if rng.random() < 0.5:
            entries[name] = dag.InlineField(codec.encode(rng.random()))
        else:
            entries[name] = dag.TreeField(b"\xc6\x00\x00\x10\x00", rng.randbytes(32), 4096, 1)
    return sorted(entries.items())


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 3000), seed=st.integers(0, 10**6))
def test_fields_tree_round_trip(count: int, seed: int) -> None:
    entries = _entries(count, seed)
    root, nodes = dag.build_fields(entries, grouping=FORMAT2)
    store = _store(nodes)
    fetch = _fetcher(store)
    assert list(dag.iter_fields(root, fetch)) == entries
    if entries:
        rng = random.Random(seed)
        wanted = {name for name, _ in rng.sample(entries, min(5, len(entries)))}
        assert {name for name, _ in dag.iter_fields(root, fetch, names=wanted)} == wanted


def test_fields_tree_references_are_exact() -> None:
    entries = _entries(2000, 1)
    root, nodes = dag.build_fields(entries, grouping=FORMAT2)
    assert nodes[-1].node_id == root
    store = _store(nodes)
    referenced = [
        child
        for node in nodes
        for child in dag.children_of_fields_node(store[node.node_id], node_id="x")
    ]
    assert [c for node in nodes for c in node.children] == referenced
    trees = sorted(entry.root for _, entry in entries if isinstance(entry, dag.TreeField))
    interior = {node.node_id for node in nodes} - {root}
    assert sorted(c for c in referenced if c not in interior) == trees


def test_one_value_change_rewrites_one_path() -> None:
    entries = _entries(10_000, 2)
    root, nodes = dag.build_fields(entries, grouping=FORMAT2)
    changed = list(entries)
    name, _ = changed[4321]
    changed[4321] = (name, dag.InlineField(codec.encode("changed")))
    root2, nodes2 = dag.build_fields(changed, grouping=FORMAT2)
    before = {node.node_id for node in nodes}
    fresh = [node for node in nodes2 if node.node_id not in before]
    assert root2 != root
    # The leaf and the path to the root: one node per level.
    levels = dag.parse_fields_node(_store(nodes)[root], node_id="root")[0] + 1
    assert levels >= 3 and len(fresh) == levels


def test_empty_fields_table_is_one_node() -> None:
    root, nodes = dag.build_fields([], grouping=FORMAT2)
    assert len(nodes) == 1 and nodes[0].node_id == root
    assert list(dag.iter_fields(root, _fetcher(_store(nodes)))) == []


def test_fields_node_parsing_refuses_garbage() -> None:
    bad_nodes = [
        b"\xc1",
        codec.encode([0]),
        codec.encode(["x", []]),
        codec.encode([0, [[1, 0, b"x"]]]),
        codec.encode([0, [["a", 2, b"x"]]]),
        codec.encode([0, [["a", 1, b"h", b"short", 1, 0]]]),
        codec.encode([1, [["a", b"short", 1]]]),
    ]
    for data in bad_nodes:
        with pytest.raises(IntegrityError):
            dag.parse_fields_node(data, node_id="bad")


# -- golden ids -------------------------------------------------------------------------------

# Frozen for format version 1: a change to encoding, splitting or hashing changes these, and
# would silently break deduplication against existing repositories.
# Per format: (root of the golden state's fields tree, root of its attachment's tree). They
# never change for a format once a repository of it exists.
GOLDEN_ROOTS = {
    1: (
        "07a8c8cf36bada64f5051ea9b8e6a03e489d49b9841e70548c3da3d98b434634",
        "aad0c1bcc6ca84610b3490881debe77f3e9ecf50802b718088349569db8aa194",
    ),
    2: (
        "c3f97e4e560daec6460c0ac42b324686f43cd79a6b265ac62b15037e1bae231b",
        "d11f25a68cd0d2930e97cdc45fa7805b24ca60a8a1401e2cf99a5022ec3c91ef",
    ),
}


def golden_state() -> dict[str, object]:
    rng = random.Random(2024)
    return {
        "messages": [{"role": "user", "text": "word " * rng.randint(1, 300)} for _ in range(400)],
        "attachment": random_bytes(300_000, seed=7),
        "scratch": {"step": 3, "floats": [rng.random() for _ in range(50)]},
        "n": 12,
        "ünïcode": "ok",
        **{f"field_{i:04d}": i * 1.5 for i in range(300)},
    }


@pytest.mark.parametrize("fmt", sorted(GOLDEN_ROOTS))
def test_golden_ids_are_frozen(fmt: int) -> None:
    grouping = dag.GROUPINGS[fmt]
    state = golden_state()
    entries: list[tuple[str, dag.Entry]] = []
    for name in sorted(state):
        encoded = codec.encode(state[name])
        if len(encoded) < 512:
            entries.append((name, dag.InlineField(encoded)))
        else:
            entries.append((name, _split(state[name], grouping=grouping)[0]))
    tree = dict(entries)["attachment"]
    root, _ = dag.build_fields(entries, grouping=grouping)
    assert (root.hex(), tree.root.hex()) == GOLDEN_ROOTS[fmt]


# -- format 2 grouping ------------------------------------------------------------------------


def _boundaries(keys: list[int], grouping: dag.Grouping) -> list[int]:
    return [end for _, end in grouping.groups(keys)]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=600),
    data=st.data(),
)
def test_format2_groups_move_only_near_an_edit(keys: list[int], data: st.DataObject) -> None:
    """A local maximum depends on the keys within its window only: replacing, inserting or
    deleting one key moves no group end farther than the window from it (unless a forced
    end at ``most`` intervenes, which random keys practically never reach)."""
    grouping = FORMAT2.index_nodes
    window = grouping.window
    at = data.draw(st.integers(0, len(keys) - 1))
    kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    edited = list(keys)
    if kind == "replace":
        edited[at] = data.draw(st.integers(0, 2**32 - 1))
        shift = 0
    elif kind == "insert":
        edited.insert(at, data.draw(st.integers(0, 2**32 - 1)))
        shift = 1
    else:
        del edited[at]
        shift = -1
    before = _boundaries(keys, grouping)
    after = _boundaries(edited, grouping)
    assert before[-1] == len(keys) and after[-1] == len(edited)
    sizes = [end - start for start, end in zip([0, *before[:-1]], before, strict=True)]
    if max(sizes) >= grouping.most:
        return  # a forced end: position-defined, so it may move with the edit
    # Compare the group ends far from the edit, in the coordinates of the original list.
    far_before = {end for end in before if end <= at - window - 1 or end >= at + window + 2}
    far_after = {end - shift if end > at else end for end in after}
    far_after = {end for end in far_after if end <= at - window - 1 or end >= at + window + 2}
    assert far_before - {len(keys)} == far_after - {len(keys)}
    # Every group but the last holds more than the window, so each level narrows.
    assert all(size > window for size in sizes[:-1])


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 2_000_000), seed=st.integers(0, 1000))
def test_format2_trees_round_trip_and_stay_narrow(size: int, seed: int) -> None:
    value = random_bytes(size, seed)
    entry, nodes = _split(value)
    store = _store(nodes)
    leaves = dag.leaves_of(entry, _fetcher(store))
    assert dag.decode_value(entry.head, [store[node_id] for node_id, _ in leaves]) == value
    for node in nodes:
        if node.children:
            assert len(node.children) <= FORMAT2.index_nodes.most


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 3000), seed=st.integers(0, 10**6), data=st.data())
def test_format2_fields_edit_rewrites_its_path_only(
    count: int, seed: int, data: st.DataObject
) -> None:
    """Changing one field's value rewrites the nodes on its path and nothing else; adding
    or removing a field rewrites at most the groups within a window of it on each level."""
    entries = _entries(count, seed)
    root, nodes = dag.build_fields(entries, grouping=FORMAT2)
    before = {node.node_id for node in nodes}
    levels = dag.parse_fields_node(_store(nodes)[root], node_id="root")[0] + 1
    at = data.draw(st.integers(0, count - 1))
    changed = list(entries)
    changed[at] = (changed[at][0], dag.InlineField(codec.encode(f"changed {seed}")))
    _, nodes2 = dag.build_fields(changed, grouping=FORMAT2)
    fresh = [node for node in nodes2 if node.node_id not in before]
    assert len(fresh) == levels
    removed = entries[:at] + entries[at + 1 :]
    _, nodes3 = dag.build_fields(removed, grouping=FORMAT2)
    fresh = [node for node in nodes3 if node.node_id not in before]
    assert len(fresh) <= 3 * levels
    assert (
        list(
            dag.iter_fields(
                dag.build_fields(removed, grouping=FORMAT2)[0], _fetcher(_store(nodes3))
            )
        )
        == removed
    )
