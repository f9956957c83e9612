"""One nesting limit, the same on save and load, whatever the caller's stack and recursion limit.

``codec.NESTING_LIMIT`` levels of lists and dicts (``[]`` is one level) save and load; one
more is an InvalidInputError naming the path on save, and a crafted node (or manifest) nested
deeper is an IntegrityError on load, never a RecursionError or a crash. Both twins of the
save-side walk and of the load-side scan run every test here (``twin`` fixture).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import statebag
from statebag import codec
from statebag.errors import IntegrityError, InvalidInputError

from . import internals

try:
    from statebag import _walk
except ImportError:  # pragma: no cover - only where the extension could not be built
    _walk = None  # type: ignore[assignment]

LIMIT = codec.NESTING_LIMIT
T = TypeVar("T")


@pytest.fixture(params=["cython", "python"])
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The codec running on one twin of its walk and of its scan."""
    if request.param == "cython":
        if _walk is None:
            pytest.skip("statebag._walk is not built in this environment")
        monkeypatch.setattr(codec, "_quick_check_impl", _walk.quick_check)
        monkeypatch.setattr(codec, "_msgpack_depth_impl", _walk.msgpack_depth)
    else:
        monkeypatch.setattr(codec, "_quick_check_impl", codec._quick_check)
        monkeypatch.setattr(codec, "_msgpack_depth_impl", codec._msgpack_depth)
    return str(request.param)


@pytest.fixture
def repo(twin: str) -> Iterator[statebag.Repository]:
    with statebag.open(f"memory://{uuid.uuid4().hex}", fsync=False) as repository:
        yield repository


class MyStr(str):
    pass


def lists(levels: int, inner: Any = "leaf") -> Any:
    """``levels`` nested lists around ``inner``: ``lists(1) == ["leaf"]``."""
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def dicts(levels: int, inner: Any = "leaf") -> Any:
    value = inner
    for _ in range(levels):
        value = {"d": value}
    return value


def mixed(levels: int) -> Any:
    """Alternating dicts and lists, with leaves and a tuple at every level."""
    value: Any = ("end", 1.5, None)
    for level in range(levels - 1):
        value = {"k": value, "n": level} if level % 2 else [level, b"b", value]
    return value


def stack_depth() -> int:
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    return depth


def deep_call(frames: int, fn: Callable[[], T]) -> T:
    """``fn()`` called ``frames`` Python frames deeper than this call."""
    if frames <= 0:
        return fn()
    return deep_call(frames - 1, fn)


def near_the_limit(fn: Callable[[], T], *, room: int = 50) -> T:
    """``fn()`` called when only ``room`` frames are left below the recursion limit."""
    return deep_call(sys.getrecursionlimit() - room - stack_depth(), fn)


class recursion_limit:
    """Temporarily another recursion limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        self.saved = sys.getrecursionlimit()
        sys.setrecursionlimit(self.limit)

    def __exit__(self, *exc: object) -> None:
        sys.setrecursionlimit(self.saved)


# -- the codec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [lists, dicts, mixed])
def test_the_limit_is_exact_on_save_and_load(twin: str, build: Callable[[int], Any]) -> None:
    at_limit = build(LIMIT)
    encoded = codec.encode(at_limit)
    assert codec.nesting_depth(encoded) == LIMIT
    assert codec.decode(encoded) == msgspec.msgpack.decode(encoded)
    with pytest.raises(InvalidInputError, match=f"nested more than {LIMIT} levels deep"):
        codec.encode(build(LIMIT + 1))


def test_one_past_the_limit_names_the_path(twin: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        codec.encode({"a": lists(LIMIT)})
    assert info.value.path == "a" + "[0]" * (LIMIT - 1)
    with pytest.raises(InvalidInputError) as info:
        codec.encode(dicts(LIMIT + 1))
    assert info.value.path == ".".join(["d"] * LIMIT)


def test_a_subclassed_leaf_at_the_limit_is_stored(twin: str) -> None:
    # The quick walk counts the subclassed leaf as a level and refuses; the full walk finds
    # nothing wrong, so the value is stored as its plain equivalent.
    encoded = codec.encode(lists(LIMIT - 1, [MyStr("x")]))
    assert codec.decode(encoded) == lists(LIMIT - 1, ["x"])


@pytest.mark.parametrize("levels", [LIMIT + 1, 100_000])
def test_deeper_bytes_are_an_integrity_error(twin: str, levels: int) -> None:
    crafted = b"\x91" * (levels - 1) + b"\x90"
    with recursion_limit(max(sys.getrecursionlimit(), 1_000_000)):
        with pytest.raises(IntegrityError, match=f"nested more than {LIMIT} levels deep"):
            codec.decode(crafted)
        with pytest.raises(InvalidInputError):
            codec.encode(lists(levels))


@pytest.mark.parametrize("build", [lists, dicts, mixed])
def test_the_limit_holds_near_the_recursion_limit(twin: str, build: Callable[[int], Any]) -> None:
    value = build(LIMIT)
    expected = msgspec.msgpack.encode(value, order="deterministic")
    assert near_the_limit(lambda: codec.encode(value)) == expected
    assert near_the_limit(lambda: codec.decode(expected)) == msgspec.msgpack.decode(expected)
    with pytest.raises(InvalidInputError):
        near_the_limit(lambda: codec.encode(build(LIMIT + 1)))


def test_the_limit_holds_under_a_lowered_recursion_limit(twin: str) -> None:
    value = mixed(LIMIT)
    expected = msgspec.msgpack.encode(value, order="deterministic")
    with recursion_limit(stack_depth() + 120):
        encoded = codec.encode(value)
        decoded = codec.decode(encoded)
    assert encoded == expected
    assert decoded == msgspec.msgpack.decode(expected)


# -- pieces -------------------------------------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=4),
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(value=values, step=st.integers(1, 4))
def test_pieces_give_the_direct_bytes_and_values(value: Any, step: int) -> None:
    encoded = codec.encode(value)
    assert codec._encode_in_pieces(value, step) == encoded
    assert codec.encode(codec._decode_in_pieces(encoded, step)) == encoded


@settings(max_examples=300, deadline=None)
@given(
    value=values,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 10_000),
    limit=st.one_of(st.integers(0, 6), st.just(LIMIT)),
)
def test_the_scan_twins_agree_and_decode_raises_only_integrity_errors(
    value: Any, flips: list[tuple[int, int]], cut: int, limit: int
) -> None:
    data = bytearray(codec.encode(value))
    for position, byte in flips:
        if data:
            data[position % len(data)] = byte
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        found = codec._msgpack_depth(candidate, limit)
        if _walk is not None:
            assert _walk.msgpack_depth(candidate, limit) == found
        with contextlib.suppress(IntegrityError):
            codec.decode(candidate)


# -- the repository -------------------------------------------------------------------------------


def test_a_repository_saves_and_loads_at_the_limit_from_deep_in_the_stack(
    repo: statebag.Repository,
) -> None:
    state = {
        "tree": lists(LIMIT, "x" * 2000),  # cut into chunks
        "inline": dicts(LIMIT),
        "flat": 1,
    }
    meta = {"m": lists(LIMIT - 1)}  # the meta map is a level too
    result = near_the_limit(lambda: repo.save("c", state, meta=meta))
    internals.drop_caches(repo)
    assert near_the_limit(lambda: repo.load(result.manifest_id)) == state
    internals.drop_caches(repo)
    assert near_the_limit(lambda: repo.info(result.manifest_id)).meta == meta
    internals.drop_caches(repo)
    with recursion_limit(stack_depth() + 150):
        loaded = repo.load(result.manifest_id)
        info = repo.info(result.manifest_id)
    assert loaded == state  # (comparing them recurses: outside the lowered limit)
    assert info.meta == meta


def test_a_repository_refuses_one_past_the_limit_naming_the_field(
    repo: statebag.Repository,
) -> None:
    before = repo.stats()
    with pytest.raises(InvalidInputError) as info:
        near_the_limit(lambda: repo.save("c", {"ok": 1, "deep": lists(LIMIT + 1)}))
    assert info.value.path == "deep" + "[0]" * LIMIT
    with pytest.raises(InvalidInputError) as info:
        repo.save("c", {"ok": 1}, meta={"m": lists(LIMIT)})
    assert info.value.path == "meta.m" + "[0]" * (LIMIT - 1)
    assert repo.stats() == before


@pytest.mark.parametrize("levels", [LIMIT + 1, 100_000])
def test_crafted_deeper_values_and_meta_are_integrity_errors(
    repo: statebag.Repository, monkeypatch: pytest.MonkeyPatch, levels: int
) -> None:
    # Written as a writer with a higher limit would write them (in pieces, so that saving
    # them needs no deep stack either).
    with monkeypatch.context() as patch:
        patch.setattr(codec, "NESTING_LIMIT", 2 * levels)
        tree = repo.save("c", {"deep": lists(levels, "x" * 2000)}).manifest_id
        meta = repo.save("c", {"n": 1}, meta={"m": lists(levels)}).manifest_id
    internals.drop_caches(repo)
    with recursion_limit(max(sys.getrecursionlimit(), 1_000_000)):
        with pytest.raises(IntegrityError, match=f"nested more than {LIMIT} levels deep"):
            repo.load(tree)
        with pytest.raises(IntegrityError, match=f"nested more than {LIMIT + 1} levels deep"):
            repo.load(meta)
