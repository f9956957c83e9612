"""The claim-check hydrator: size limit, exact round trips, folding, pointers, laziness, cost."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import statebag
import statebag.opening
from statebag import ConflictError, IntegrityError, InvalidInputError, NotFoundError, codec
from statebag.compat import StateHydrator
from statebag.hydrator import (
    POINTER_KEY,
    HydratedState,
    Hydrator,
    HydratorStats,
    offload_chain,
)

from . import internals
from .repohelp import open_repo, scalars

KIB = 1024


@pytest.fixture(params=["memory", "batched"])
def repo(request: pytest.FixtureRequest) -> Iterator[statebag.Repository]:
    with open_repo(request.param) as repository:
        yield repository


def size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload).encode())


def exact(a: Any, b: Any) -> bool:
    """Equal as stored: same types (tuples as lists), floats bit for bit, any key order."""
    return codec.encode(a) == codec.encode(b)


def wire(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as the next step receives it: through JSON."""
    result = json.loads(json.dumps(payload))
    assert isinstance(result, dict)
    return result


def stored_fields(repo: statebag.Repository, payload: dict[str, Any]) -> list[str]:
    loaded = repo.load(payload[POINTER_KEY]["manifest"], lazy=True)
    return sorted(loaded)


def packs(repo: statebag.Repository) -> list[str]:
    return sorted(internals.objects(repo).list("packs"))


# -- the property --------------------------------------------------------------------------------

_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
_small = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_names, inner, max_size=5),
    max_leaves=20,
)


@st.composite
def _big(draw: st.DrawFn) -> Any:
    """A value from hundreds of bytes to about 1.5 MiB, built cheaply from a drawn size."""
    length = draw(st.integers(min_value=100, max_value=1_500_000))
    seed = draw(st.integers(min_value=0, max_value=255))
    kind = draw(st.sampled_from(["text", "bytes", "list"]))
    if kind == "text":
        return (chr(0x61 + seed % 26) + "é") * (length // 3)
    if kind == "bytes":
        return bytes([seed]) * length
    return [{"i": index, "s": "x" * (seed % 50)} for index in range(length // 64)]


@st.composite
def _case(draw: st.DrawFn) -> tuple[dict[str, Any], int, set[str], set[str], bool]:
    state = draw(st.dictionaries(_names, _small | _big(), max_size=40))
    # Sometimes many fields, so that inline values and pointer lists overflow and fold.
    many = draw(st.sampled_from([0, 0, 50, 400, 3000]))
    width = draw(st.integers(min_value=0, max_value=3000))
    for index in range(many):
        name = f"generated-field-{index:05d}"
        state[name] = index if index % 3 else "g" * (index * 7919 % (width + 1))
    limit = draw(st.sampled_from([4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1024 * KIB]))
    names = sorted(state)
    cold = set(draw(st.lists(st.sampled_from(names), max_size=5))) if names else set()
    # Hot fields must be carried by JSON exactly and fit: pick among small JSON-safe values.
    safe = [
        name
        for name in names
        if name not in cold
        and name != POINTER_KEY
        and _json_exact(state[name])
        and len(json.dumps(state[name])) < limit // 16
    ]
    hot = set(draw(st.lists(st.sampled_from(safe), max_size=3))) if safe else set()
    return state, limit, hot, cold, draw(st.booleans())


def _json_exact(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    ints_ok = all(abs(v) < 2**53 for v in _ints(value))
    return ints_ok and exact(json.loads(text), value)


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ints(item)
    elif isinstance(value, list):
        for item in value:
            yield from _ints(item)


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=_case())
def test_round_trip_within_the_limit(case: tuple[Any, int, set[str], set[str], bool]) -> None:
    state, limit, hot, cold, batch = case
    where = f"prop-{uuid.uuid4().hex}"
    with statebag.open(f"memory://{where}") as repo:
        h = Hydrator(repo, limit=limit, hot=hot, cold=cold, batch_warm=batch)
        payload = h.dehydrate(state, "run")
        assert size(payload) <= limit
        assert h.stats.payload_bytes == size(payload)
        event("folded" if h.stats.folded else "offloaded" if h.stats.offloaded else "inline")
        event("state over the limit" if len(codec.encode(state)) > limit else "state under")
        for name in hot:
            assert name in payload and payload[name] is state[name]
        back = h.hydrate(wire(payload))
        assert isinstance(back, dict)
        assert exact(back, state)
        some = sorted(state)[:3]
        assert exact(h.hydrate(wire(payload), fields=some), {n: state[n] for n in some})
    statebag.opening.forget_memory(where)  # free this example's stores


# -- placement -----------------------------------------------------------------------------------


def test_small_state_stays_inline_and_writes_nothing(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    state = {"a": 1, "b": "text", "c": [1.5, None, True], "d": {"x": "y"}}
    before = repo.io_counters()
    payload = h.dehydrate(state, "run")
    assert payload == state and POINTER_KEY not in payload
    assert repo.io_counters() == before
    assert h.stats.requests == 0 and h.stats.manifest_id is None
    assert repo.head(offload_chain("run")) is None
    assert h.hydrate(wire(payload)) == state


def test_the_limit_is_exact(repo: statebag.Repository) -> None:
    # A state whose JSON is exactly the limit stays whole; one byte more and a field moves.
    state = {"a": "x" * 500, "b": "y" * 400}
    limit = size(state)
    assert Hydrator(repo, limit=limit).dehydrate(state, "run") == state
    payload = Hydrator(repo, limit=limit - 1).dehydrate(state, "run")
    assert POINTER_KEY in payload and size(payload) <= limit - 1


def test_classes_of_fields(repo: statebag.Repository) -> None:
    h = Hydrator(repo, inline_max=100, cold_min=10_000, cold=["named_cold"])
    state = {
        "small": "s" * 10,
        "named_cold": 1,
        "large": "L" * 20_000,
        "medium": "m" * 500,
        "raw": b"\x00\x01",
        "nan": float("nan"),
        "bigint": 2**60,
    }
    payload = h.dehydrate(state, "run")
    pointer = payload[POINTER_KEY]
    assert set(payload) == {"small", POINTER_KEY}
    assert pointer["cold"] == ["large", "named_cold"]
    assert pointer["warm"]["names"] == ["bigint", "medium", "nan", "raw"]
    assert stored_fields(repo, payload) == sorted(["large", "named_cold", pointer["warm"]["field"]])
    assert exact(h.hydrate(wire(payload)), state)


def test_without_batching_each_warm_field_is_stored_alone(repo: statebag.Repository) -> None:
    h = Hydrator(repo, inline_max=10, batch_warm=False)
    state = {f"w{i}": "v" * 100 for i in range(5)}
    payload = h.dehydrate(state, "run")
    assert "warm" not in payload[POINTER_KEY]
    assert stored_fields(repo, payload) == sorted(state)
    assert h.hydrate(wire(payload)) == state


def test_warm_fields_are_one_stored_field(repo: statebag.Repository) -> None:
    h = Hydrator(repo, inline_max=10)
    state = {f"w{i}": "v" * 100 for i in range(50)}
    payload = h.dehydrate(state, "run")
    assert stored_fields(repo, payload) == ["~warm"]
    assert h.stats.puts == 1
    assert h.hydrate(wire(payload)) == state


def test_hot_fields_stay_inline_even_when_large(repo: statebag.Repository) -> None:
    h = Hydrator(repo, limit=64 * KIB, hot=["doc"], cold_min=1000)
    state = {"doc": "d" * 30_000, "other": "o" * 30_000}
    payload = h.dehydrate(state, "run")
    assert payload["doc"] == state["doc"] and "other" not in payload
    assert h.hydrate(wire(payload)) == state


def test_hot_fields_over_the_limit_are_refused_by_name(repo: statebag.Repository) -> None:
    h = Hydrator(repo, limit=4 * KIB, hot=["first", "second"])
    state = {"first": "a" * 3000, "second": "b" * 2000, "rest": 1}
    before = repo.io_counters()
    with pytest.raises(InvalidInputError) as info:
        h.dehydrate(state, "run")
    assert "first" in str(info.value) and "second" in str(info.value)
    assert info.value.path == "first"
    assert repo.io_counters() == before


def test_hot_field_that_json_cannot_carry_is_refused(repo: statebag.Repository) -> None:
    for value, where in ((b"raw", "key"), ({"x": [1.0, float("inf")]}, "key.x[1]")):
        h = Hydrator(repo, hot=["key"])
        with pytest.raises(InvalidInputError) as info:
            h.dehydrate({"key": value}, "run")
        assert info.value.path == "key" and where in str(info.value)


def test_unstorable_state_names_the_field_and_writes_nothing(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    before = repo.io_counters()
    with pytest.raises(InvalidInputError) as info:
        h.dehydrate({"ok": "x" * 100_000, "bad": {"inner": {1, 2}}}, "run")
    assert info.value.path == "bad.inner"
    with pytest.raises(InvalidInputError):
        h.dehydrate({1: "x"}, "run")  # type: ignore[dict-item]
    assert repo.io_counters() == before


def test_inline_values_overflowing_are_folded_smallest_kept(repo: statebag.Repository) -> None:
    h = Hydrator(repo, limit=4 * KIB)
    state = {f"f{i:03d}": "v" * (10 + i) for i in range(200)}
    payload = h.dehydrate(state, "run")
    assert size(payload) <= 4 * KIB
    inline = [name for name in payload if name != POINTER_KEY]
    assert inline, "some small values must stay inline"
    # The smallest stay: every inline value is no longer than every offloaded one.
    longest_inline = max(len(state[name]) for name in inline)
    offloaded = set(state) - set(inline)
    assert all(len(state[name]) >= longest_inline for name in offloaded)
    assert h.hydrate(wire(payload)) == state


def test_pointer_lists_overflowing_are_folded(repo: statebag.Repository) -> None:
    h = Hydrator(repo, limit=4 * KIB, cold_min=100)
    state = {f"long-field-name-{i:05d}": "c" * 200 for i in range(1000)}
    state["tiny"] = 1
    payload = h.dehydrate(state, "run")
    pointer = payload[POINTER_KEY]
    assert set(pointer) == {"v", "manifest", "folded"}
    assert payload["tiny"] == 1 and size(payload) <= 4 * KIB
    assert h.stats.folded
    assert h.hydrate(wire(payload)) == state
    assert h.hydrate(wire(payload), fields=["long-field-name-00007", "tiny"]) == {
        "long-field-name-00007": "c" * 200,
        "tiny": 1,
    }
    lazy = h.hydrate(wire(payload), lazy=True)
    assert isinstance(lazy, HydratedState)
    assert len(lazy) == len(state)
    assert lazy["long-field-name-00999"] == "c" * 200


def test_user_field_named_like_the_pointer_key_round_trips(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    fake = {"v": 1, "manifest": "0" * 64, "cold": ["x"]}
    state = {POINTER_KEY: fake, "x": 1}
    payload = h.dehydrate(state, "run")
    assert payload[POINTER_KEY] != fake  # the key is the hydrator's; the value is stored
    assert h.hydrate(wire(payload)) == state


def test_pointer_lookalike_values_round_trip(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    lookalike = {"v": 1, "manifest": "a" * 64, "cold": ["nothing"], "folded": "~folded"}
    state = {
        "looks": lookalike,
        "nested": {POINTER_KEY: lookalike, "list": [{POINTER_KEY: {"v": 1}}]},
        "~warm": "a user field with the stored group's default name",
        "~folded": ["and", "the", "folded", "one"],
        "big": "B" * 100_000,
        "warm": "w" * 2000,
    }
    payload = h.dehydrate(state, "run")
    assert payload["looks"] == lookalike
    assert payload[POINTER_KEY]["warm"]["field"] not in state
    assert h.hydrate(wire(payload)) == state


def test_reserved_key_cannot_be_hot(repo: statebag.Repository) -> None:
    with pytest.raises(InvalidInputError):
        Hydrator(repo, hot=[POINTER_KEY])


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"limit": 100}, "limit"),
        ({"limit": 4096.0}, "limit"),
        ({"inline_max": -1}, "inline_max"),
        ({"hot": "field"}, "hot"),
        ({"cold": [1]}, "cold"),
        ({"hot": ["a"], "cold": ["a"]}, "hot"),
        ({"ttl": -1}, "ttl"),
        ({"batch_warm": 1}, "batch_warm"),
    ],
)
def test_options_are_checked(repo: statebag.Repository, options: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Hydrator(repo, **options)
    assert info.value.path == path


def test_offload_chain() -> None:
    assert offload_chain("exec-1") == "exec-1~offload"
    assert offload_chain("c" * 248) == "c" * 248 + "~offload"
    with pytest.raises(InvalidInputError) as info:
        offload_chain("c" * 249)
    assert info.value.path == "chain" and "248" in str(info.value)
    with pytest.raises(InvalidInputError):
        offload_chain("")


# -- malformed payloads -------------------------------------------------------------------------

_ID = "ab" * 32


@pytest.mark.parametrize(
    ("pointer", "path"),
    [
        ("text", POINTER_KEY),
        ({"v": 2, "manifest": _ID}, f"{POINTER_KEY}.v"),
        ({"v": True, "manifest": _ID}, f"{POINTER_KEY}.v"),
        ({"manifest": _ID}, f"{POINTER_KEY}.v"),
        ({"v": 1, "manifest": "AB" * 32}, f"{POINTER_KEY}.manifest"),
        ({"v": 1}, f"{POINTER_KEY}.manifest"),
        ({"v": 1, "manifest": _ID, "url": "s3://x"}, f"{POINTER_KEY}.url"),
        ({"v": 1, "manifest": _ID, "cold": "a"}, f"{POINTER_KEY}.cold"),
        ({"v": 1, "manifest": _ID, "cold": ["a", 2]}, f"{POINTER_KEY}.cold[1]"),
        ({"v": 1, "manifest": _ID, "cold": ["a", "a"]}, f"{POINTER_KEY}.cold"),
        ({"v": 1, "manifest": _ID, "warm": ["a"]}, f"{POINTER_KEY}.warm"),
        (
            {"v": 1, "manifest": _ID, "warm": {"field": "", "names": []}},
            f"{POINTER_KEY}.warm.field",
        ),
        (
            {"v": 1, "manifest": _ID, "warm": {"field": "w", "names": ["a"]}, "cold": ["a"]},
            POINTER_KEY,
        ),
        ({"v": 1, "manifest": _ID, "folded": 3}, f"{POINTER_KEY}.folded"),
        ({"v": 1, "manifest": _ID, "folded": "f", "cold": ["a"]}, f"{POINTER_KEY}.cold"),
        ({"v": 1, "manifest": _ID, "cold": ["inline"]}, "inline"),
    ],
)
def test_malformed_pointer_names_the_bad_part(
    repo: statebag.Repository, pointer: Any, path: str
) -> None:
    h = Hydrator(repo)
    before = repo.io_counters()
    for lazy in (False, True):
        with pytest.raises(InvalidInputError) as info:
            h.hydrate({"inline": 1, POINTER_KEY: pointer}, lazy=lazy)
        assert info.value.path == path
    assert repo.io_counters() == before


def test_payload_must_be_a_mapping(repo: statebag.Repository) -> None:
    with pytest.raises(InvalidInputError) as info:
        Hydrator(repo).hydrate(["not", "a", "payload"])  # type: ignore[arg-type]
    assert info.value.path == "payload"


def test_unknown_version_is_not_found(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    payload = {POINTER_KEY: {"v": 1, "manifest": _ID, "cold": ["a"]}}
    with pytest.raises(NotFoundError):
        h.hydrate(payload)
    with pytest.raises(NotFoundError):
        h.hydrate(payload, fields=["a"])


def test_pointer_to_another_chain_is_refused(repo: statebag.Repository) -> None:
    """A payload is input: an id of any version but an offload version reads nothing."""
    secret = repo.save("secret", {"password": "hunter2", "pad": "x" * 100_000}).manifest_id
    repo.fork("secret", "exec~offload")  # a chain with the suffix whose head is not its own
    h = Hydrator(repo)
    legit = h.dehydrate({"big": "b" * 100_000, "small": 1}, "exec")
    assert h.hydrate(wire(legit))["big"] == "b" * 100_000
    before = repo.io_counters()
    for body in ({"cold": ["password"]}, {"folded": "password"}):
        payload = {POINTER_KEY: {"v": 1, "manifest": secret, **body}}
        for kwargs in ({}, {"fields": ["password"]}, {"lazy": True}):
            with pytest.raises(InvalidInputError) as info:
                h.hydrate(payload, **kwargs)  # type: ignore[arg-type]
            assert info.value.path == f"{POINTER_KEY}.manifest"
            assert secret in str(info.value) and "secret" not in str(info.value)
    assert repo.io_counters() == before
    compat = StateHydrator(repo=repo)
    with pytest.raises(InvalidInputError):
        compat.hydrate({POINTER_KEY: {"v": 1, "manifest": secret, "cold": ["password"]}})


def test_pointer_disagreeing_with_its_version_is_an_integrity_error(
    repo: statebag.Repository,
) -> None:
    h = Hydrator(repo)
    payload = h.dehydrate({"big": "x" * 100_000, "warm": "w" * 5000}, "run")
    altered = wire(payload)
    altered[POINTER_KEY]["cold"] = ["big", "extra"]
    with pytest.raises(IntegrityError):
        h.hydrate(altered)
    with pytest.raises(IntegrityError):
        h.hydrate(altered, fields=["extra"])
    with pytest.raises(IntegrityError):
        h.hydrate(altered, lazy=True)["big"]
    altered = wire(payload)
    altered[POINTER_KEY]["warm"]["names"] = ["warm", "ghost"]
    with pytest.raises(IntegrityError):
        h.hydrate(altered)


def _corrupt_packs(repo: statebag.Repository) -> None:
    store = internals.objects(repo)
    for key in packs(repo):
        data = store.get(key)
        store.put(key, bytes(byte ^ 0x5A for byte in data))


def test_corrupt_or_missing_data_raises_never_partial() -> None:
    name = f"memory://corrupt-{uuid.uuid4().hex}"
    with statebag.open(name) as repo:
        payload = Hydrator(repo).dehydrate({"a": "x" * 200_000, "b": 1}, "run")
        _corrupt_packs(repo)
    with statebag.open(name) as fresh:  # a new handle: nothing cached
        with pytest.raises(IntegrityError):
            Hydrator(fresh).hydrate(wire(payload))
        for key in packs(fresh):
            internals.objects(fresh).delete(key)
    with statebag.open(name) as fresh, pytest.raises(IntegrityError):
        Hydrator(fresh).hydrate(wire(payload))


# -- laziness, partial loads, cost -------------------------------------------------------------


def test_lazy_hydrate_reads_on_access_only(repo: statebag.Repository) -> None:
    h = Hydrator(repo, inline_max=50)
    state = {"inline": 1, "big": "B" * 200_000, "other": "O" * 150_000, "w1": "w" * 300}
    payload = wire(h.dehydrate(state, "run"))
    before = repo.io_counters()
    lazy = h.hydrate(payload, lazy=True)
    assert isinstance(lazy, HydratedState)
    assert h.stats.requests == 0 and repo.io_counters() == before
    assert sorted(lazy) == sorted(state) and len(lazy) == 4 and "big" in lazy
    assert lazy["inline"] == 1
    assert repo.io_counters() == before and lazy.loaded() == frozenset()
    assert lazy["big"] == state["big"]
    assert lazy.loaded() == {"big"}
    spent = repo.io_counters() - before
    assert spent.gets > 0 and lazy.stats == spent
    assert spent.bytes_read < 150_000  # "other" was not read
    assert lazy["w1"] == state["w1"] and lazy.loaded() == {"big", "w1"}
    again = repo.io_counters()
    assert lazy["big"] == state["big"]  # kept
    assert repo.io_counters() == again
    assert dict(lazy) == state


def test_lazy_with_fields(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    state = {"a": 1, "big": "B" * 100_000, "c": "c" * 80_000}
    lazy = h.hydrate(wire(h.dehydrate(state, "run")), lazy=True, fields=["a", "big"])
    assert sorted(lazy) == ["a", "big"] and "c" not in lazy
    with pytest.raises(KeyError):
        lazy["c"]
    with pytest.raises(NotFoundError):
        h.hydrate(wire(h.dehydrate(state, "run")), lazy=True, fields=["nope"])


def test_fields_reads_only_those(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    state = {"a": 1, "big": "B" * 300_000, "c": "c" * 200_000}
    payload = wire(h.dehydrate(state, "run"))
    assert h.hydrate(payload, fields=["a"]) == {"a": 1}
    assert h.stats.requests == 0
    assert h.hydrate(payload, fields=["c"]) == {"c": state["c"]}
    assert 0 < h.stats.bytes_read < 250_000
    with pytest.raises(NotFoundError):
        h.hydrate(payload, fields=["a", "nope"])
    with pytest.raises(InvalidInputError):
        h.hydrate(payload, fields="a")


def test_stats_count_requests_and_bytes(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    state = {"a": 1, "big": "B" * 300_000, "warm": "w" * 5000}
    before = repo.io_counters()
    payload = h.dehydrate(state, "run")
    stats = h.stats
    assert isinstance(stats, HydratorStats) and stats.operation == "dehydrate"
    spent = repo.io_counters() - before
    assert (stats.puts, stats.gets, stats.requests) == (spent.puts, spent.gets, spent.requests)
    assert stats.puts == 1 and stats.bytes_written == spent.bytes_written > 0
    assert stats.offloaded == 2 and stats.inline == 1 and stats.saves == 1
    assert stats.manifest_id == payload[POINTER_KEY]["manifest"]
    # The same state again: every node is stored already, nothing is uploaded.
    h.dehydrate(state, "run")
    assert h.stats.puts == 0
    before = repo.io_counters()
    h.hydrate(wire(payload))
    spent = repo.io_counters() - before
    assert h.stats.operation == "hydrate"
    assert h.stats.gets == spent.gets > 0 and h.stats.bytes_read == spent.bytes_read
    assert h.stats.puts == 0


def test_offload_versions_are_held_for_the_ttl(repo: statebag.Repository) -> None:
    h = Hydrator(repo, ttl=3600)
    started = time.time_ns()
    payload = h.dehydrate({"big": "x" * 100_000}, "run")
    manifest = payload[POINTER_KEY]["manifest"]
    stored = internals.meta(repo).get(f"hold/{manifest}")
    assert stored is not None
    until = int.from_bytes(stored, "little")
    assert started + 3600 * 10**9 <= until <= time.time_ns() + 3600 * 10**9


# -- repeated calls, other writers -------------------------------------------------------------


def test_every_field_survives_many_consecutive_calls(repo: statebag.Repository) -> None:
    # The seed dropped warm fields on two calls of three; here each call is checked whole.
    h = Hydrator(repo, inline_max=64)
    state: dict[str, Any] = {"hot": 0, "big": "B" * 100_000}
    payloads = []
    for step in range(12):
        state = dict(state)
        state[f"warm{step}"] = f"value {step} " * 20
        state["hot"] = step
        if step % 3 == 0:
            state["big"] = state["big"] + f"step {step}"
        if step % 4 == 3:
            del state[f"warm{step - 2}"]
        payload = wire(h.dehydrate(state, "exec"))
        back = h.hydrate(payload)
        assert back == state, f"step {step}"
        payloads.append((payload, state))
    # Older payloads still point at their own versions.
    for payload, expected in payloads:
        assert h.hydrate(payload) == expected


def test_hint_is_only_used_on_its_own_version(repo: statebag.Repository) -> None:
    first, second = Hydrator(repo, inline_max=10), Hydrator(repo, inline_max=10)
    base = {"a": "a" * 100, "b": "b" * 100_000}
    first.dehydrate(base, "run")
    second.dehydrate({"a": "other" * 30, "b": "c" * 100_000}, "run")  # moves the head
    changed = {"a": "a" * 100, "b": "d" * 100_000}
    payload = first.dehydrate(changed, "run")
    assert first.stats.saves == 2  # the hinted save lost to the moved head, then re-read it
    assert first.hydrate(wire(payload)) == changed


def test_concurrent_dehydrates_on_one_chain(repo: statebag.Repository) -> None:
    h = Hydrator(repo, inline_max=10)
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for step in range(5):
                state = {"who": index, "step": step, "data": f"{index}-{step}" * 2000}
                results.append((wire(h.dehydrate(state, "shared")), state))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 20
    for payload, state in results:
        assert h.hydrate(payload) == state


def test_persistent_conflicts_raise(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Hydrator(repo)

    def always_conflict(*args: Any, **kwargs: Any) -> Any:
        raise ConflictError("moved")

    monkeypatch.setattr(repo, "save", always_conflict)
    with pytest.raises(ConflictError, match="lost the race"):
        h.dehydrate({"big": "x" * 100_000}, "run")


def test_dehydrate_limit_override(repo: statebag.Repository) -> None:
    h = Hydrator(repo)
    state = {"a": "x" * 900, "b": "y" * 900}
    assert h.dehydrate(state, "run") == state
    payload = h.dehydrate(state, "run", limit=1500)
    assert size(payload) <= 1500 and POINTER_KEY in payload
    with pytest.raises(InvalidInputError):
        h.dehydrate(state, "run", limit=10)


def test_statebag_state_is_accepted(repo: statebag.Repository) -> None:
    bag = statebag.StateBag({"a": {"nested": [1, 2]}, "big": "x" * 100_000})
    h = Hydrator(repo)
    payload = h.dehydrate(bag, "run")
    assert h.hydrate(wire(payload)) == {"a": {"nested": [1, 2]}, "big": "x" * 100_000}


def test_retention_and_gc_keep_offloaded_data_for_the_ttl(repo: statebag.Repository) -> None:
    h = Hydrator(repo, ttl=3600, cold_min=1000)
    payloads = []
    for step in range(4):
        state = {"id": step, "doc": f"{step} " * 5000}
        payloads.append((h.dehydrate(state, "exec-1"), state))
    # Retention keeps one version per chain, yet every payload is within its ttl.
    repo.gc(keep_last=1, grace=0)
    for payload, state in payloads:
        assert h.hydrate(json.loads(json.dumps(payload))) == state
    # The ttl runs out (the holds are set back to the past, rather than waiting an hour).
    for key, _ in list(internals.meta(repo).scan("hold/")):
        internals.meta(repo).put(key, (time.time_ns() - 1).to_bytes(8, "little"))
    report = repo.gc(keep_last=1, grace=0)
    assert report.manifests_deleted == 3
    payload, state = payloads[-1]  # the offload chain's head survives while it exists
    assert h.hydrate(payload) == state
    for payload, _ in payloads[:-1]:
        with pytest.raises(NotFoundError):  # refused whole, never a partial state
            h.hydrate(payload)
    assert repo.audit().ok
