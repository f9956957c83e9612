"""The repository API: round trips, reuse, conflicts, integrity, bad input, threads."""

from __future__ import annotations

import itertools
import math
import random
import struct
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from unittest.mock import Mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statebag
import statebag.chunking
import statebag.commit
import statebag.repository
import statebag.writer
from statebag import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StateBag,
    dag,
)
from statebag.caches import Recent
from statebag.packs import pack_key

from . import internals
from .repohelp import KINDS, open_repo, recount, same, scalars, stored_counts

# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "batched"])
def repo(request: pytest.FixtureRequest) -> Iterator[statebag.Repository]:
    with open_repo(request.param) as repository:
        yield repository


@pytest.fixture(params=KINDS)
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    with open_repo(request.param, tmp_path, fsync=False) as repository:
        yield repository


def words(rng: random.Random, count: int) -> str:
    vocab = ["agent", "tool", "state", "result", "plan", "the", "a", "of", "memory", "step"]
    return " ".join(rng.choice(vocab) for _ in range(count))


def big_state(seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        "messages": [
            {"role": rng.choice(["user", "assistant"]), "text": words(rng, rng.randint(5, 60))}
            for _ in range(400)
        ],
        "scratch": words(rng, 50),
        "blob": rng.randbytes(200_000),
        "count": 7,
        "nested": {"a": [1, 2.5, None, True], "b": {"c": "d" * 2000}},
    }


# -- round trips ------------------------------------------------------------------------------

values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)
# Large values are built from a drawn size and seed, so they cost hypothesis little entropy.
sizes = st.integers(min_value=60, max_value=70_000)
seeds = st.integers(min_value=0, max_value=2**32)
big_values = st.one_of(
    values,
    st.builds(lambda n, seed: random.Random(seed).randbytes(n), sizes, seeds),
    st.builds(lambda n, seed: words(random.Random(seed), n // 5), sizes, seeds),
    st.builds(
        lambda n, seed: [words(random.Random(seed + i), 8) for i in range(n // 50)], sizes, seeds
    ),
)
states = st.dictionaries(st.text(max_size=12), big_values, max_size=8)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(first=states, second=states)
def test_round_trip_of_generated_states(first: dict[str, Any], second: dict[str, Any]) -> None:
    with statebag.open(f"memory://{uuid.uuid4().hex}", inline_max=64) as repo:
        a = repo.save("c", first)
        b = repo.save("c", second)
        same(first, repo.load(a.manifest_id))
        same(second, repo.load(b.manifest_id))
        assert b.parent == a.manifest_id
        assert repo.verify().ok
        assert recount(repo)[0] == stored_counts(repo)


def test_round_trip_keeps_types_exactly(any_repo: statebag.Repository) -> None:
    nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_1234))[0]  # NaN, payload
    assert math.isnan(nan)
    state = {
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "floats": [0.0, -0.0, 1.5, math.inf, -math.inf, nan, 1e308],
        "bytes": b"\x00\xff" * 1000,
        "small_bytes": b"ab",
        "tuple": (1, "two", (3,)),
        "text": "héllo ✓ " * 500,
        "flags": [True, False, None],
        "order": {"b": 1, "a": 2, "c": {"z": 1, "y": 2}},
        "empty": {"list": [], "dict": {}, "str": "", "bytes": b""},
    }
    result = any_repo.save("types", state)
    loaded = any_repo.load(result.manifest_id)
    same(state, loaded)
    assert list(loaded) == sorted(state)


def test_partial_and_lazy_loads(any_repo: statebag.Repository) -> None:
    state = big_state()
    result = any_repo.save("c", state)
    partial = any_repo.load(result.manifest_id, fields=["blob", "count"])
    assert partial == {"blob": state["blob"], "count": 7}
    lazy = any_repo.load(result.manifest_id, lazy=True)
    assert isinstance(lazy, statebag.LazyState)
    assert set(lazy) == set(state) and len(lazy) == len(state)
    assert lazy.loaded() == frozenset()
    assert lazy["messages"] == state["messages"]
    assert lazy.loaded() == {"messages"}
    assert "blob" in lazy and "nope" not in lazy
    with pytest.raises(KeyError):
        lazy["nope"]
    with pytest.raises(NotFoundError, match="'nope'"):
        any_repo.load(result.manifest_id, fields=["nope", "count"])
    assert any_repo.load_latest("c", fields=["count"]) == {"count": 7}


def test_lazy_load_reads_only_the_field_asked(repo: statebag.Repository) -> None:
    state = {f"f{i}": random.Random(i).randbytes(50_000) for i in range(20)}
    result = repo.save("c", state)
    internals.reader(repo).clear_caches(tables=False)
    reads: list[int] = []
    original = internals.reader(repo).read

    def counting(ids: Any, **kwargs: Any) -> Any:
        reads.append(len(ids))
        return original(ids, **kwargs)

    internals.reader(repo).read = counting  # type: ignore[method-assign]
    lazy = repo.load(result.manifest_id, lazy=True)
    before = sum(reads)
    assert lazy["f3"] == state["f3"]
    chunk_reads = sum(reads) - before
    assert chunk_reads <= 8, f"one 50 kB field read {chunk_reads} nodes"


def test_a_lazy_field_of_a_version_gc_removed_is_not_found(
    any_repo: statebag.Repository,
) -> None:
    rng = random.Random(8)
    first = any_repo.save("c", {"big": rng.randbytes(20_000), "small": 1}).manifest_id
    any_repo.save("c", {"big": rng.randbytes(20_000), "small": 2})
    lazy = any_repo.load(first, lazy=True)
    any_repo.delete(first)
    any_repo.gc(grace=0)
    with pytest.raises(NotFoundError, match=f"manifest {first} was deleted"):
        lazy["big"]
    # Still stored but unreadable is corruption, as it was.
    lazy = any_repo.load_latest("c", lazy=True)
    for key in internals.objects(any_repo).list("packs"):
        internals.objects(any_repo).delete(key)
    internals.reader(any_repo).clear_caches()
    with pytest.raises(IntegrityError):
        lazy["big"]


def test_log_head_chains_and_info(repo: statebag.Repository) -> None:
    assert repo.head("c") is None
    assert list(repo.log("c")) == []
    with pytest.raises(NotFoundError):
        repo.load_latest("c")
    ids = [repo.save("c", {"step": i}, meta={"step": i}).manifest_id for i in range(5)]
    repo.save("other", {"x": 1})
    log = list(repo.log("c"))
    assert [info.manifest_id for info in log] == ids[::-1]
    assert [info.seq for info in log] == [5, 4, 3, 2, 1]
    assert [info.parent for info in log] == [*ids[::-1][1:], None]
    assert all(info.parents == ([info.parent] if info.parent else []) for info in log)
    assert [info.meta for info in log] == [{"step": i} for i in range(4, -1, -1)]
    assert log[0].created_at >= log[-1].created_at
    assert repo.head("c") == ids[-1]
    assert sorted(repo.chains()) == ["c", "other"]
    assert repo.load_latest("c") == {"step": 4}


def test_manifest_id_covers_parent_and_is_hex(repo: statebag.Repository) -> None:
    a = repo.save("c", {"x": 1})
    b = repo.save("c", {"x": 1})
    assert a.manifest_id != b.manifest_id  # same state, different parent
    for result in (a, b):
        assert len(result.manifest_id) == 64
        assert result.manifest_id == result.manifest_id.lower()
        assert statebag.ContentId.of(
            internals.meta(repo).get(f"manifest/{result.manifest_id}")
        ).hex() == (result.manifest_id)


def test_diff_names_fields_with_sizes(repo: statebag.Repository) -> None:
    a = repo.save("c", {"same": "x" * 1000, "gone": 1, "edit": "old", "big": "y" * 5000})
    b = repo.save("c", {"same": "x" * 1000, "new": [1, 2], "edit": "newer", "big": "z" * 5000})
    diff = repo.diff(a.manifest_id, b.manifest_id)
    assert diff.added == {"new": 3}
    assert diff.removed == {"gone": 1}
    assert set(diff.changed) == {"edit", "big"}
    assert diff.changed["edit"] == (4, 6)
    assert repo.diff(b.manifest_id, b.manifest_id) == statebag.Diff(
        added={}, removed={}, changed={}
    )


# -- reuse ------------------------------------------------------------------------------------


def test_identical_resave_writes_nothing(any_repo: statebag.Repository) -> None:
    state = big_state()
    first = any_repo.save("c", state)
    assert first.nodes_written > 0 and first.bytes_new_stored > 0
    again = any_repo.save("c", state)
    assert again.nodes_written == 0
    assert again.bytes_new_raw == 0 and again.bytes_new_stored == 0
    assert again.requests["object_puts"] == 0
    assert again.nodes_reused > 0
    other_chain = any_repo.save("d", state)
    assert other_chain.nodes_written == 0


@pytest.mark.parametrize("hinted", [False, True])
def test_one_small_field_of_ten_thousand_writes_a_node_a_level(
    repo: statebag.Repository, hinted: bool
) -> None:
    state = {f"field_{i:05d}": {"value": i, "label": f"item {i}"} for i in range(10_000)}
    repo.save("wide", state)
    state["field_04321"] = {"value": -1, "label": "changed"}
    result = repo.save("wide", state, changed=["field_04321"] if hinted else None)
    # The fields tree's node on each level, nothing else (four levels here; format 1's wide
    # nodes had three, at ~100 metadata items more: docs/FORMAT.md, "Formats").
    root = internals.manifest(repo, result.manifest_id).root
    levels = dag.parse_fields_node(internals.reader(repo).read([root])[root], node_id="r")[0] + 1
    assert result.nodes_written == levels <= 6, result
    assert repo.load_latest("wide", fields=["field_04321"]) == {
        "field_04321": {"label": "changed", "value": -1}
    }


@pytest.mark.parametrize("hinted", [False, True])
def test_appending_one_message_writes_at_most_six_nodes(
    repo: statebag.Repository, hinted: bool
) -> None:
    rng = random.Random(5)
    messages = [
        {"role": rng.choice(["user", "assistant", "tool"]), "text": words(rng, rng.randint(3, 150))}
        for _ in range(10_000)
    ]
    state = {"messages": messages, "step": 0}
    repo.save("thread", state)
    counts = []
    for step in range(1, 25):
        text = words(rng, rng.randint(1, 150))[:1000]
        messages.append({"role": "assistant", "text": text})
        state["step"] = step
        result = repo.save("thread", state, changed=["messages", "step"] if hinted else None)
        counts.append(result.nodes_written)
    # The last chunk or two, an index node a level (three here) and the fields node.
    assert max(counts) <= 6, counts
    assert repo.load_latest("thread")["messages"] == messages


def test_values_re_cut_from_the_previous_save_get_the_same_tree_as_cut_whole(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each save below starts from the cut the previous one left in the repository's cache
    # (appends, an edit in the middle, a truncation); a repository without that cache must
    # arrive at exactly the same entries, so the same node ids.
    rng = random.Random(8)
    messages = [{"text": words(rng, rng.randint(20, 300))} for _ in range(600)]
    blob = rng.randbytes(300_000)
    steps: list[tuple[list[dict[str, str]], bytes]] = []
    for step in range(6):
        messages = [*messages, {"text": words(rng, 50)}]
        if step == 2:
            messages[300] = {"text": "[redacted]"}
        if step == 4:
            messages = messages[:400]
        blob = blob[: 1000 * step] + rng.randbytes(10) + blob[1000 * step + 10 :]
        steps.append((messages, blob))

    def entries(any_repo: statebag.Repository, manifest_id: str) -> dict[str, Any]:
        root = internals.manifest(any_repo, manifest_id).root
        return dict(internals.reader(any_repo).fields_table(root).entries)

    kept: list[int] = []

    def counting_recut(*args: Any, **kwargs: Any) -> Any:
        result = statebag.chunking.recut(*args, **kwargs)
        kept.append(result[2])
        return result

    monkeypatch.setattr(statebag.writer, "recut", counting_recut)
    for messages, blob in steps:
        state = {"messages": messages, "blob": blob}
        cached = entries(repo, repo.save("cached", state).manifest_id)
        with statebag.open("memory://recut-" + uuid.uuid4().hex) as fresh:
            whole = entries(fresh, fresh.save("cached", state).manifest_id)
        assert cached == whole
    # Both fields of every save after the first were re-cut, mostly from kept chunks.
    assert len(kept) == 2 * (len(steps) - 1) and sum(kept) > 0
    assert repo.load_latest("cached") == {"blob": steps[-1][1], "messages": steps[-1][0]}


def test_the_cut_cache_keeps_one_version_of_a_value_and_can_be_turned_off(
    tmp_path: Path,
) -> None:
    rng = random.Random(9)
    first = {"text": words(rng, 30_000)}
    second = {"text": first["text"] + " and more"}
    with statebag.open(tmp_path / "cached") as repo:
        repo.save("c", first)
        old_root = internals.reader(repo).fields_table(
            internals.manifest(repo, repo.head("c") or "").root
        )
        repo.save("c", second)
        new_root = internals.reader(repo).fields_table(
            internals.manifest(repo, repo.head("c") or "").root
        )
        assert not internals.writer(repo).cached_cut(old_root.entries["text"].root)  # replaced
        assert internals.writer(repo).cached_cut(new_root.entries["text"].root)
    with statebag.open(tmp_path / "uncached", cache_bytes=0) as repo:
        repo.save("c", first)
        table = internals.reader(repo).fields_table(
            internals.manifest(repo, repo.head("c") or "").root
        )
        assert not internals.writer(repo).cached_cut(table.entries["text"].root)
        repo.save("c", second)
        assert repo.load_latest("c") == second
        assert (
            internals.reader(repo)
            .fields_table(internals.manifest(repo, repo.head("c") or "").root)
            .entries
            == new_root.entries
        )


def test_recent_cache_evicts_the_least_recently_used_by_weight() -> None:
    recent: Recent[bytes] = Recent(10, weigh=len)
    recent.put(b"a", b"1234")
    recent.put(b"b", b"1234")
    assert recent.get(b"a") == b"1234"  # now the most recently used
    recent.put(b"c", b"1234")  # 12 > 10: the least recently used (b) goes
    assert (recent.get(b"a"), recent.get(b"b"), recent.get(b"c")) == (b"1234", None, b"1234")
    recent.put(b"huge", b"x" * 11)  # heavier than the whole budget: not kept, evicts nothing
    assert recent.get(b"huge") is None and recent.get(b"a") is not None
    recent.put(b"d", b"12", replaces=b"a")
    assert recent.get(b"a") is None and recent.get(b"d") == b"12"


@pytest.mark.parametrize("bad", [-1, 1.5, "big", True])
def test_cache_bytes_must_be_a_size(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        statebag.open(tmp_path / "r", cache_bytes=bad)
    assert info.value.path == "cache_bytes"
    assert not (tmp_path / "r").exists()  # refused before anything was created


@pytest.mark.parametrize("hinted", [False, True])
def test_added_and_removed_keys_are_saved(repo: statebag.Repository, hinted: bool) -> None:
    repo.save("c", {"keep": "k" * 800, "drop": 1, "edit": [1, 2]})
    state = {"keep": "k" * 800, "edit": [1, 2, 3], "add": {"new": True}}
    # The hint names only "edit": the added and the removed keys come from the key sets.
    result = repo.save("c", state, changed=["edit"] if hinted else None)
    assert repo.load(result.manifest_id) == dict(sorted(state.items()))


def test_changed_hint_carries_unnamed_fields_over_unread(repo: statebag.Repository) -> None:
    repo.save("c", {"a": "a" * 2000, "b": "b" * 2000})
    # A hint that omits a changed field keeps the parent's value: that is its contract.
    result = repo.save("c", {"a": "A" * 2000, "b": "B" * 2000}, changed=["b"])
    assert repo.load(result.manifest_id) == {"a": "a" * 2000, "b": "B" * 2000}


@pytest.mark.parametrize("parent", [True, False])
def test_changed_naming_a_field_never_there_is_refused(
    any_repo: statebag.Repository, parent: bool
) -> None:
    if parent:
        any_repo.save("c", {"a": 1, "gone": 1})
    before = any_repo.stats()
    packs = sorted(internals.objects(any_repo).list(""))
    with pytest.raises(InvalidInputError, match="'aa'") as info:
        any_repo.save("c", {"a": 2}, changed=["a", "aa"])
    assert info.value.path == "aa"
    assert any_repo.stats() == before
    assert sorted(internals.objects(any_repo).list("")) == packs
    # A field of the new state, or one of the parent's (a deletion), is a field it can name.
    if parent:
        result = any_repo.save("c", {"a": 2}, changed=["a", "gone"])
        assert any_repo.load(result.manifest_id) == {"a": 2}
    else:
        any_repo.save("c", {"a": 2}, changed=["a"])


# -- StateBag ---------------------------------------------------------------------------------


def test_statebag_records_nested_mutation(repo: statebag.Repository) -> None:
    repo.save("c", {"messages": [{"text": "hi"}], "config": {"retries": 1}, "n": 1, "x": "x" * 900})
    bag = repo.load_bag("c")
    assert bag.dirty == frozenset() and bag.base == repo.head("c")
    bag["messages"].append({"text": "there"})
    bag["config"]["retries"] = 3
    bag["messages"][0]["text"] = "hello"
    assert bag.dirty == {"messages", "config"}
    result = repo.save("c", bag)
    assert bag.dirty == frozenset() and bag.base == result.manifest_id
    assert repo.load(result.manifest_id) == {
        "config": {"retries": 3},
        "messages": [{"text": "hello"}, {"text": "there"}],
        "n": 1,
        "x": "x" * 900,
    }
    del bag["n"]
    bag["y"] = [1]
    assert bag.dirty == {"n", "y"}
    result = repo.save("c", bag)
    assert repo.load(result.manifest_id) == {
        "config": {"retries": 3},
        "messages": [{"text": "hello"}, {"text": "there"}],
        "x": "x" * 900,
        "y": [1],
    }


def test_statebag_hints_ignored_when_the_chain_moved(repo: statebag.Repository) -> None:
    repo.save("c", {"a": 1, "b": 1})
    bag = repo.load_bag("c")
    repo.save("c", {"a": 2, "b": 2})  # someone else moved the head
    bag["a"] = 3  # b is not dirty in the bag, but the head's b differs from the bag's b
    result = repo.save("c", bag)
    assert repo.load(result.manifest_id) == {"a": 3, "b": 1}


def test_statebag_views_behave_like_containers() -> None:
    bag = StateBag({"l": [3, 1, 2], "d": {"k": [1]}})
    assert bag["l"] == [3, 1, 2] and len(bag["l"]) == 3 and bag["l"][0] == 3
    assert bag["l"][1:] == [1, 2] and list(bag["l"]) == [3, 1, 2]
    assert bag["d"] == {"k": [1]} and dict(bag["d"]) == {"k": [1]}
    assert bag.dirty == frozenset()
    bag["l"].sort()
    assert bag.dirty == {"l"}
    bag["d"]["k"].extend([2, 3])
    assert bag.dirty == {"l", "d"}
    assert bag.to_dict() == {"l": [1, 2, 3], "d": {"k": [1, 2, 3]}}


# -- conflicts --------------------------------------------------------------------------------


def test_two_saves_from_one_parent_exactly_one_wins(any_repo: statebag.Repository) -> None:
    base = any_repo.save("c", {"step": 0}).manifest_id
    winner = any_repo.save("c", {"step": 1}, parent=base)
    with pytest.raises(ConflictError, match=r"moved|is at"):
        any_repo.save("c", {"step": 2}, parent=base)
    assert any_repo.head("c") == winner.manifest_id
    assert [info.manifest_id for info in any_repo.log("c")] == [winner.manifest_id, base]
    assert any_repo.stats().manifests == 2


def test_racing_threads_from_one_parent(any_repo: statebag.Repository) -> None:
    base = any_repo.save("c", {"step": 0, "blob": b"x" * 100_000}).manifest_id
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            any_repo.save("c", {"step": index, "blob": bytes([index]) * 100_000}, parent=base)
            outcomes.append("won")
        except ConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert len(list(any_repo.log("c"))) == 2
    assert any_repo.verify().ok
    assert recount(any_repo)[0] == stored_counts(any_repo)


def test_conflict_in_one_atomic_write_leaves_no_pack(repo: statebag.Repository) -> None:
    base = repo.save("c", {"v": 0}).manifest_id
    repo.save("c", {"v": 1})
    before = sorted(internals.objects(repo).list("packs"))
    # A save that read the head before the move above: simulate by forcing the old record.
    stale = internals.meta(repo).get("chain/c")
    real_get = internals.meta(repo).get

    def stale_get(key: str) -> Any:
        return b"" if False else (stale_record if key == "chain/c" else real_get(key))

    from statebag.keys import HeadRecord, encode_record

    stale_record = encode_record(HeadRecord(bytes.fromhex(base), 1, "old"))
    internals.meta(repo).get = stale_get  # type: ignore[method-assign]
    try:
        with pytest.raises(ConflictError):
            repo.save("c", {"v": "new data " * 1000})
    finally:
        internals.meta(repo).get = real_get  # type: ignore[method-assign]
    assert stale is not None
    assert sorted(internals.objects(repo).list("packs")) == before
    assert list(internals.meta(repo).scan("pending/")) == []


def test_batched_commit_that_loses_its_race_hands_its_packs_to_gc() -> None:
    # A metadata store that caps a write at 25 operations forces the batched protocol.
    from statebag.meta.memory import MemoryMetaStore

    name = uuid.uuid4().hex
    with statebag.open(f"memory://{name}") as repo:
        meta = internals.meta(repo)
        assert isinstance(meta, MemoryMetaStore)
        meta.max_batch = 25  # type: ignore[misc]
        state = {f"f{i}": random.Random(i).randbytes(3000) for i in range(30)}
        first = repo.save("c", state)
        assert repo.load(first.manifest_id) == dict(sorted(state.items()))
        counts_before = stored_counts(repo)
        # A racing save: the head moves between the reference batches and the head write.
        real_write = meta.write
        moved = False

        def racing_write(ops: Any, **options: Any) -> None:
            nonlocal moved
            if not moved and any(getattr(op, "key", "").startswith("chain/") for op in ops):
                moved = True
                meta.max_batch = None  # type: ignore[misc]
                repo.save("c", {"other": 1})
                meta.max_batch = 25  # type: ignore[misc]
            real_write(ops, **options)

        meta.write = racing_write  # type: ignore[method-assign]
        state2 = {f"f{i}": random.Random(100 + i).randbytes(3000) for i in range(30)}
        with pytest.raises(ConflictError):
            repo.save("c", state2)
        meta.write = real_write  # type: ignore[method-assign]
        # Nothing is taken back: the losing save's indexed nodes count their children, so
        # the counts agree with the index; its entry became a dead letter for gc.
        report = repo.audit()
        assert report.ok and not report.over_counted, report
        assert list(meta.scan("pending/")) == []
        assert [key for key, _ in meta.scan("dlq/")] != []
        counts, _ = recount(repo)
        assert counts_before != counts  # the racing save did commit
        repo.gc(grace=0)
        assert list(meta.scan("dlq/")) == []
        report = repo.audit()
        assert report.ok and not report.over_counted, report
        assert repo.load_latest("c") == {"other": 1}
        assert repo.load(first.manifest_id) == dict(sorted(state.items()))


def test_concurrent_index_of_the_same_node_is_counted_once(repo: statebag.Repository) -> None:
    state = {"blob": random.Random(1).randbytes(300_000)}
    barrier = threading.Barrier(4)

    def save(chain: str) -> None:
        barrier.wait()
        repo.save(chain, state)

    threads = [threading.Thread(target=save, args=(f"c{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts, reached = recount(repo)
    assert stored_counts(repo) == counts
    assert repo.stats().nodes == len(reached)
    assert repo.verify().ok


# -- integrity --------------------------------------------------------------------------------


def _flip_byte_in_pack(repo: statebag.Repository, node_id: bytes) -> None:
    from statebag.keys import IndexRecord

    record = IndexRecord.decode(internals.meta(repo).get(f"node/{node_id.hex()}"), node_id="x")
    key = pack_key(record.pack_id)
    data = bytearray(internals.objects(repo).get(key))
    data[record.offset + record.length // 2] ^= 0x40
    internals.objects(repo).put(key, bytes(data))


def test_verify_and_load_catch_a_flipped_byte(any_repo: statebag.Repository) -> None:
    state = big_state()
    result = any_repo.save("c", state)
    assert any_repo.verify(result.manifest_id).ok
    manifest = internals.manifest(any_repo, result.manifest_id)
    entry = internals.reader(any_repo).fields_table(manifest.root).entries["blob"]
    chunk = internals.reader(any_repo).leaves(entry)[0][0]
    _flip_byte_in_pack(any_repo, chunk)
    internals.reader(any_repo).clear_caches(tables=False)
    report = any_repo.verify(result.manifest_id)
    assert not report.ok
    assert any(chunk.hex() in problem for problem in report.problems), report.problems
    with pytest.raises(IntegrityError):
        any_repo.load(result.manifest_id)
    with pytest.raises(IntegrityError):
        any_repo.load(result.manifest_id, fields=["blob"])
    # Fields stored elsewhere still load.
    assert any_repo.load(result.manifest_id, fields=["count"]) == {"count": 7}


def test_verify_and_load_catch_a_deleted_pack(any_repo: statebag.Repository) -> None:
    any_repo.save("c", {"a": "a" * 100})
    result = any_repo.save("c", big_state(3))
    first_pack = sorted(internals.objects(any_repo).list("packs"))
    assert first_pack
    for key in first_pack:
        internals.objects(any_repo).delete(key)
    internals.reader(any_repo).clear_caches(tables=False)
    internals.reader(any_repo).clear_caches(structs=False)
    report = any_repo.verify(read_data=0.0)
    assert not report.ok and report.problems
    with pytest.raises(IntegrityError):
        any_repo.load(result.manifest_id)


def test_verify_all_passes_and_samples(any_repo: statebag.Repository) -> None:
    for seed in range(3):
        any_repo.save(f"c{seed}", big_state(seed))
    full = any_repo.verify()
    assert full.ok and full.manifests == 3
    none = any_repo.verify(read_data=0.0)
    assert none.ok and none.nodes_read < full.nodes_read
    with pytest.raises(InvalidInputError, match="read_data"):
        any_repo.verify(read_data=2)


# -- bad input --------------------------------------------------------------------------------


class Thing:
    pass


def _cycle() -> dict[str, Any]:
    inner: dict[str, Any] = {}
    inner["self"] = inner
    return inner


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"ok": 1, "tags": {1, 2}}, "tags"),
        ({"obj": Thing()}, "obj"),
        ({"deep": {"list": [1, Thing()]}}, "deep.list[1]"),
        ({"loop": _cycle()}, "loop.self"),
        ({"keys": {1: "one"}}, "keys"),
        ({"big": 2**64}, "big"),
        ({1: "not a str key"}, "1"),
        ({"\ud800": "a lone surrogate key"}, repr("\ud800")),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    any_repo: statebag.Repository, state: dict[Any, Any], path: str
) -> None:
    any_repo.save("c", {"before": "x" * 1000})
    before = any_repo.stats()
    packs = sorted(internals.objects(any_repo).list(""))
    with pytest.raises(InvalidInputError) as info:
        any_repo.save("c", {"fine": "y" * 5000, **state})
    assert info.value.path == path, info.value
    assert any_repo.stats() == before
    assert sorted(internals.objects(any_repo).list("")) == packs
    assert len(list(any_repo.log("c"))) == 1


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"chain": ""}, "chain"),
        ({"chain": "a" * 64}, "chain"),
        ({"chain": "bad\nname"}, "chain"),
        ({"chain": 5}, "chain"),
        ({"state": [1, 2]}, "state"),
        ({"meta": {"when": {1, 2}}}, "meta.when"),
        ({"changed": "a"}, "changed"),
        ({"changed": [1]}, "changed"),
        ({"parent": "xyz"}, "parent"),
    ],
)
def test_bad_arguments(repo: statebag.Repository, kwargs: dict[str, Any], path: str) -> None:
    call: dict[str, Any] = {"chain": "c", "state": {"a": 1}, **kwargs}
    with pytest.raises(InvalidInputError) as info:
        repo.save(call.pop("chain"), call.pop("state"), **call)
    assert info.value.path == path
    assert repo.stats().manifests == 0


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("a\x80b", "control"),
        ("a\x9fb", "control"),
        ("a\x7fb", "control"),
        ("a\u202ab", "bidirectional formatting character .U.202A"),
        ("invoice\u202efdp.exe", "bidirectional formatting character .U.202E"),
        ("a\u2066b", "bidirectional"),
        ("a\u2069b", "bidirectional"),
    ],
)
def test_chain_names_refuse_c1_controls_and_bidirectional_formatting(
    repo: statebag.Repository, name: str, what: str
) -> None:
    with pytest.raises(InvalidInputError, match=what) as info:
        repo.save(name, {"a": 1})
    assert info.value.path == "chain"
    with pytest.raises(InvalidInputError):
        repo.fork("nothing-yet", name)
    assert repo.stats().manifests == 0
    # Their neighbours are ordinary characters.
    for fine in ("a\xa0b", "a~b", "a\u2029b", "a\u202fb", "a\u2065b", "a\u206ab"):
        repo.save(fine, {"a": 1})
    assert sorted(repo.chains()) == sorted(
        ["a\xa0b", "a~b", "a\u2029b", "a\u202fb", "a\u2065b", "a\u206ab"]
    )


@pytest.mark.parametrize("given", [None, 5, b"c", "bad\nname"])
def test_load_bag_of_a_bad_argument_is_invalid_input(repo: statebag.Repository, given: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        repo.load_bag(given)
    assert info.value.path == "chain_or_id"
    with pytest.raises(NotFoundError, match="'c' has no version"):
        repo.load_bag("c")


class UnreadableMapping(Mapping[str, Any]):
    """A Mapping whose items cannot be read (as a Mock(spec=dict) cannot)."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("backing store is gone")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("backing store is gone")

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("state", [UnreadableMapping(), Mock(spec=dict)])
def test_a_mapping_that_cannot_be_read_is_bad_input(repo: statebag.Repository, state: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        repo.save("c", state)
    assert info.value.path == "state"
    assert repo.stats().manifests == 0


def test_other_mappings_are_read_once_as_their_items(repo: statebag.Repository) -> None:
    state = MappingProxyType({"b": [1, 2], "a": "x" * 700})
    result = repo.save("c", state)
    assert repo.load(result.manifest_id) == {"a": "x" * 700, "b": [1, 2]}


def test_parent_that_is_not_the_head_conflicts(repo: statebag.Repository) -> None:
    with pytest.raises(ConflictError):
        repo.save("c", {"a": 1}, parent="0" * 64)
    first = repo.save("c", {"a": 1})
    assert repo.save("c", {"a": 2}, parent=first.manifest_id).parent == first.manifest_id


# -- opening ----------------------------------------------------------------------------------


def test_open_urls_and_options(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with pytest.raises(NotFoundError):
        statebag.open(path, create=False)
    with statebag.open(path, fsync=False, inline_max=128) as repo:
        first = repo.save("c", {"a": [1, 2, 3]}).manifest_id
    with statebag.open(f"file://{path}", create=False) as repo:
        assert repo.head("c") == first
        assert repo.config.inline_max == 128
    with pytest.raises(ConfigError, match="inline_max"):
        statebag.open(path, inline_max=512)
    with statebag.open(str(path), inline_max=128, fsync=False) as repo:
        assert repo.load(first) == {"a": [1, 2, 3]}
    with pytest.raises(ConfigError, match="scheme"):
        statebag.open("ftp://host/x")
    with pytest.raises(InvalidInputError, match=r"avg_size|chunker"):
        statebag.open(tmp_path / "bad", avg_size=1000)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    statebag.open(path, fsync=False).close()
    from statebag.meta.sqlite import SQLiteMetaStore

    with SQLiteMetaStore(path / "meta.sqlite") as meta:
        config = msgspec.msgpack.decode(meta.get("config"))
        config["format"] = 99
        meta.put("config", msgspec.msgpack.encode(config))
    with pytest.raises(ConfigError, match="format 99"):
        statebag.open(path)


def test_memory_repositories_are_shared_by_name() -> None:
    name = f"memory://{uuid.uuid4().hex}"
    with statebag.open(name) as one:
        saved = one.save("c", {"a": 1}).manifest_id
    with statebag.open(name, create=False) as two:
        assert two.head("c") == saved
    with pytest.raises(NotFoundError):
        statebag.open(f"memory://{uuid.uuid4().hex}", create=False)


def test_closed_repository_refuses_work(repo: statebag.Repository) -> None:
    repo.close()
    with pytest.raises(statebag.StatebagError, match="closed"):
        repo.save("c", {"a": 1})


# -- stats and threads ------------------------------------------------------------------------


def test_stats_count_what_was_written(any_repo: statebag.Repository) -> None:
    empty = any_repo.stats()
    assert empty == statebag.RepoStats(
        chains=0, manifests=0, nodes=0, packs=0, bytes_logical=0, bytes_stored=0
    )
    a = any_repo.save("a", big_state(1))
    b = any_repo.save("b", {"x": 1})
    stats = any_repo.stats()
    assert stats == any_repo.stats()
    assert stats.chains == 2 and stats.manifests == 2
    assert stats.bytes_logical == a.bytes_logical + b.bytes_logical
    assert stats.nodes == a.nodes_written + b.nodes_written
    packs = list(internals.objects(any_repo).list("packs"))
    assert stats.packs == len(packs)
    assert stats.bytes_stored == sum(internals.objects(any_repo).stat(key) for key in packs)


def test_small_save_writes_one_pack(repo: statebag.Repository) -> None:
    result = repo.save("c", {"blob": random.Random(2).randbytes(15 * 2**20)})
    assert result.requests["object_puts"] == 1
    assert repo.stats().packs == 1


def test_many_threads_saving_and_loading(any_repo: statebag.Repository) -> None:
    errors: list[BaseException] = []
    saved: dict[str, list[str]] = {}

    def worker(index: int) -> None:
        chain = f"chain-{index}"
        rng = random.Random(index)
        ids = []
        try:
            for step in range(8):
                state = {"step": step, "text": words(rng, 300), "blob": rng.randbytes(20_000)}
                ids.append(any_repo.save(chain, state).manifest_id)
                assert any_repo.load(ids[-1]) == dict(sorted(state.items()))
            saved[chain] = ids
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for chain, ids in saved.items():
        assert [info.manifest_id for info in any_repo.log(chain)] == ids[::-1]
    assert any_repo.stats().manifests == 64
    assert any_repo.verify().ok
    assert recount(any_repo)[0] == stored_counts(any_repo)


def test_reference_counts_are_exact_over_a_history(repo: statebag.Repository) -> None:
    state = big_state()
    rng = random.Random(9)
    for step in range(15):
        state["messages"].append({"role": "user", "text": words(rng, 40)})
        state["scratch"] = words(rng, 50)
        if step % 5 == 0:
            blob = bytearray(state["blob"])
            blob[rng.randrange(len(blob))] ^= 1
            state["blob"] = bytes(blob)
        repo.save("c", state, changed=["messages", "scratch", "blob"])
        repo.save("d", state)
    counts, reached = recount(repo)
    assert stored_counts(repo) == counts
    assert repo.stats().nodes == len(reached)
    assert next(iter(itertools.islice(repo.log("c"), 1))).seq == 15


def test_a_failing_save_deletes_the_packs_it_already_shipped(tmp_path: Path) -> None:
    with statebag.open(tmp_path / "r", fsync=False, pack_size=2**20) as repo:
        repo.save("c", {"x": 1})
        before = sorted(internals.objects(repo).list(""))
        stats = repo.stats()
        rng = random.Random(0)
        state = {f"a{i}": rng.randbytes(700_000) for i in range(6)}  # several packs first
        state["z_bad"] = {"tags": {1, 2}}
        shipped: list[int] = []
        original = statebag.prepare.Prepare.abandon

        def spy(self: statebag.prepare.Prepare) -> None:
            shipped.append(len(self.pack_ids))
            original(self)

        statebag.prepare.Prepare.abandon = spy  # type: ignore[method-assign]
        try:
            with pytest.raises(InvalidInputError) as info:
                repo.save("c", state)
        finally:
            statebag.prepare.Prepare.abandon = original  # type: ignore[method-assign]
        assert shipped and shipped[0] >= 1  # packs had shipped before the bad field
        assert info.value.path == "z_bad.tags"
        assert sorted(internals.objects(repo).list("")) == before
        assert repo.stats() == stats
        assert list(internals.meta(repo).scan("pending/")) == []
        del state["z_bad"]
        result = repo.save("c", state)
        assert result.requests["object_puts"] >= 3  # the packs did ship early
        assert repo.load(result.manifest_id) == dict(sorted(state.items()))


def test_versions_read_back_in_a_new_process_handle(tmp_path: Path) -> None:
    path = tmp_path / "r"
    with statebag.open(path, fsync=False) as repo:
        first = repo.save("c", {"a": "x" * 2000}, meta={"step": 1, "tags": ["x"]}).manifest_id
        second = repo.save("c", {"a": "y" * 2000}).manifest_id
    with statebag.open(path) as repo:  # nothing cached: every manifest is decoded from disk
        assert [info.meta for info in repo.log("c")] == [None, {"step": 1, "tags": ["x"]}]
        assert repo.load(first) == {"a": "x" * 2000}
        assert repo.verify().ok
        third = repo.save("c", {"a": "z"}, parent=second, meta={"n": 3})
        assert repo.info(third.manifest_id).meta == {"n": 3}


def test_a_commit_whose_answer_was_lost_reads_back_its_own_success(
    repo: statebag.Repository,
) -> None:
    repo.save("c", {"v": 0})
    meta = internals.meta(repo)
    real_write = meta.write
    calls: list[int] = []

    def write_then_lose_the_answer(ops: Any, **options: Any) -> None:
        real_write(ops, **options)
        if any(getattr(op, "key", "").startswith("chain/") for op in ops):
            calls.append(len(ops))
            raise TimeoutError("the answer was lost on the way back")

    meta.write = write_then_lose_the_answer  # type: ignore[method-assign]
    try:
        result = repo.save("c", {"v": 1, "blob": b"x" * 50_000})
    finally:
        meta.write = real_write  # type: ignore[method-assign]
    assert calls  # the head write did land and then failed to answer
    assert repo.head("c") == result.manifest_id
    assert repo.load(result.manifest_id) == {"blob": b"x" * 50_000, "v": 1}
    assert list(meta.scan("pending/")) == []
    assert recount(repo)[0] == stored_counts(repo)


def test_a_commit_that_failed_without_landing_raises_and_keeps_the_head(
    repo: statebag.Repository,
) -> None:
    first = repo.save("c", {"v": 0}).manifest_id
    meta = internals.meta(repo)
    real_write = meta.write

    def fail_the_head_write(ops: Any, **options: Any) -> None:
        if any(getattr(op, "key", "").startswith("chain/") for op in ops):
            raise TimeoutError("no answer, and nothing written")
        real_write(ops, **options)

    meta.write = fail_the_head_write  # type: ignore[method-assign]
    try:
        with pytest.raises(statebag.BackendError) as info:
            repo.save("c", {"v": 1, "blob": b"y" * 50_000})
    finally:
        meta.write = real_write  # type: ignore[method-assign]
    assert info.value.retryable
    assert repo.head("c") == first
    # The outcome was unknown when the save gave up, so its packs stay, named by its pending
    # entry, for garbage collection to settle after the lease: never deleted on a guess.
    (pending,) = list(meta.scan("pending/"))
    assert repo.stats().manifests == 1
    assert pending
