"""The compiled validation walk (statebag._walk) against its pure-Python twin in codec.

Both twins must answer the same True/False for every value and depth bound, raise the same
errors where the twin raises, and never crash, even when Python code run from inside the walk
(a ``__class__`` property, a metaclass ``__eq__``) mutates the containers under walk.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statebag import chunking, codec
from statebag.errors import InvalidInputError

try:
    from statebag import _walk
except ImportError:  # pragma: no cover - only where the extension could not be built
    _walk = None  # type: ignore[assignment]

Walk = Callable[[object, int], bool]

WALK_TWINS: dict[str, Walk | None] = {
    "cython": getattr(_walk, "quick_check", None),
    "python": codec._quick_check,
}

needs_compiled = pytest.mark.skipif(
    _walk is None, reason="statebag._walk is not built in this environment"
)


@pytest.fixture(params=["cython", "python"])
def walk(request: pytest.FixtureRequest) -> Walk:
    """Each walk twin in turn; the compiled one is required whenever it was built."""
    fn = WALK_TWINS[request.param]
    if fn is None:
        pytest.skip("statebag._walk is not built in this environment")
    return fn


# ---------------------------------------------------------------------------------------------
# Kinds of values
# ---------------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Perm(enum.IntFlag):
    READ = 4


class FloatEnum(float, enum.Enum):
    HALF = 0.5


class DictEnum(dict, enum.Enum):  # an Enum is refused before the dict subclass rule
    EMPTY = ()


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(msgspec.Struct):
    a: int
    b: str


Row = collections.namedtuple("Row", "a b")


class MyDict(dict[str, Any]):
    pass


class MyList(list[Any]):
    pass


class MyTuple(tuple[Any, ...]):
    __slots__ = ()


class MyStr(str):
    __slots__ = ()


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


REFUSED_LEAVES: list[Any] = [
    {1, 2},
    frozenset(),
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    datetime.date(2024, 1, 2),
    datetime.timedelta(seconds=1),
    decimal.Decimal("1.5"),
    Color.RED,
    Level.LOW,
    Mode.FAST,
    Perm.READ,
    FloatEnum.HALF,
    DictEnum.EMPTY,
    Point(1, 2),
    Pair(1, "b"),
    Row(1, 2),
    MyTuple((1,)),
    MyBytes(b"x"),
    object(),
    1 + 2j,
    range(3),
    int,
]

# Accepted by the walk; what msgspec refuses by itself (huge ints, lone surrogates, non-str
# keys) is left to it, so the walk says True for those too.
ACCEPTED: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    2**200,
    -(2**200),
    1.5,
    float("nan"),
    "",
    "text",
    "\ud800",
    "a\udfffb",
    b"",
    b"bytes",
    bytearray(b"ba"),
    memoryview(b"mv"),
    (),
    (1, "a"),
    [],
    {},
    {"a": [1, {"b": (2.0, None)}]},
    {1: "int key"},
    {("tuple", "key"): 1},
    MyStr("s"),
    MyInt(3),
    MyFloat(2.5),
    MyDict(a=[1, MyStr("x")]),
    MyList([1, {"a": MyInt(2)}]),
    [MyList([MyDict(b=MyFloat(1.0))])],
]


# ---------------------------------------------------------------------------------------------
# Fixed cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ACCEPTED, ids=repr)
def test_accepted_values(walk: Walk, value: Any) -> None:
    assert walk(value, 1000) is True
    assert walk([value], 1000) is True
    assert walk({"k": value}, 1000) is True


@pytest.mark.parametrize("value", REFUSED_LEAVES, ids=repr)
def test_refused_kinds_anywhere(walk: Walk, value: Any) -> None:
    assert walk(value, 1000) is False
    for wrapped in (
        [value],
        [1, "a", value],
        (value,),
        {"k": value},
        {"a": 1, "b": [2, {"c": value}]},
        MyList([value]),
        MyDict(k=value),
        [[1], [2, [3, value]]],
    ):
        assert walk(wrapped, 1000) is False, wrapped


def test_leaf_types_match_codec() -> None:
    if _walk is None:
        pytest.skip("statebag._walk is not built in this environment")
    assert _walk.leaf_types() == codec._LEAVES


def nest(levels: int, inner: Any = None) -> Any:
    """``levels`` lists around ``[]`` (or ``inner``): ``nest(0) == []``, ``nest(1) == [[]]``."""
    value: Any = [] if inner is None else inner
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 50])
def test_depth_bound_exactly_at_and_one_past(walk: Walk, depth: int) -> None:
    # A container counts against the bound only when it holds something other than an exact
    # leaf, so nest(depth) has exactly `depth` counted levels.
    assert walk(nest(depth), depth) is True
    assert walk(nest(depth + 1), depth) is False
    assert walk(nest(depth, [1, "x"]), depth) is True
    assert walk(nest(depth + 1, [1, "x"]), depth) is False
    as_dicts: Any = {}
    for _ in range(depth):
        as_dicts = {"d": as_dicts}
    assert walk(as_dicts, depth) is True
    assert walk({"d": as_dicts}, depth) is False


def test_a_subclassed_leaf_counts_as_a_level(walk: Walk) -> None:
    assert walk(["x"], 0) is True
    assert walk([MyStr("x")], 0) is False
    assert walk([MyStr("x")], 1) is True
    assert walk(MyStr("x"), 0) is True
    assert walk(5, -1) is True
    assert walk([[]], -1) is False


def test_deep_nesting_uses_no_c_recursion(walk: Walk) -> None:
    deep = nest(200_000)
    assert walk(deep, 200_000) is True
    assert walk(deep, 199_999) is False


def test_cycles_are_refused_through_the_depth_bound(walk: Walk) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    selfish: dict[str, Any] = {"a": 1}
    selfish["self"] = selfish
    a: dict[str, Any] = {}
    b = MyList([a])
    a["b"] = b
    for value in (loop, selfish, a, [loop], {"x": selfish}):
        for depth in (0, 1, 10, 1000, sys.getrecursionlimit()):
            assert walk(value, depth) is False


def test_shared_references_are_not_cycles(walk: Walk) -> None:
    shared = [1, {"a": 2}]
    assert walk([shared, shared, {"s": shared}], 1000) is True


# ---------------------------------------------------------------------------------------------
# Python code running inside the walk
# ---------------------------------------------------------------------------------------------


class Chameleon(type):
    """A metaclass whose classes claim to be str inside a set lookup."""

    def __eq__(cls, other: object) -> bool:
        return other is str

    def __hash__(cls) -> int:
        return hash(str)


class PassesForStr(metaclass=Chameleon):
    pass


def test_leaf_membership_goes_through_the_same_set_lookup(walk: Walk) -> None:
    # `type(x) in _LEAVES` is True for it, so both twins take it for a leaf.
    assert type(PassesForStr()) in codec._LEAVES
    assert walk(PassesForStr(), 0) is True
    assert walk([1, PassesForStr(), "a"], 0) is True


class ClaimsDict:
    """isinstance(x, dict) is True through __class__, but it is no dict."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return dict


def test_a_fake_dict_raises_what_the_twin_raises(walk: Walk) -> None:
    # The twin calls dict.values() on it; the compiled walk must not read it as a dict.
    with pytest.raises(TypeError, match="values"):
        walk([ClaimsDict()], 1000)


class Meddler(str):
    """A str subclass whose __class__ lookup, which isinstance makes, calls ``meddle()``."""

    @staticmethod
    def meddle() -> None:
        pass

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        self.meddle()
        return str


def test_a_list_cleared_during_the_walk(walk: Walk) -> None:
    class Clearing(Meddler):
        @staticmethod
        def meddle() -> None:
            # Drops every other reference to the inner list and its items while the walk
            # holds them.
            if outer:
                outer[0].clear()
            outer.clear()

    outer: list[Any] = [[Clearing("m"), [1, 2], {"x": [3]}, {1, 2}], [4, [5]]]
    # The walk stops at the shrunken lists, never reaching the set, and reads no freed item.
    assert walk(outer, 1000) is True


def test_a_list_grown_during_the_walk(walk: Walk) -> None:
    class Growing(Meddler):
        @staticmethod
        def meddle() -> None:
            target.append({1})

    target: list[Any] = [Growing("m"), [1]]
    assert walk(target, 1000) is False


def test_a_dict_changed_during_the_walk_raises(walk: Walk) -> None:
    class Adding(Meddler):
        @staticmethod
        def meddle() -> None:
            target[f"k{len(target)}"] = 1

    target: dict[str, Any] = {"a": Adding("m"), "b": [1]}
    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        walk([[target]], 1000)


# ---------------------------------------------------------------------------------------------
# The twins agree on arbitrary values
# ---------------------------------------------------------------------------------------------

accepted_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**64, max_value=2**300),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "x\udfff"]),
    st.binary(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(memoryview),
    st.text(max_size=4).map(MyStr),
    st.integers().map(MyInt),
    st.floats().map(MyFloat),
    st.just(PassesForStr()),  # a leaf to the walk by the set lookup; msgspec refuses it
)
refused_leaves = st.one_of(
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False),
    st.sampled_from([Color.RED, Level.LOW, Mode.FAST, Perm.READ, FloatEnum.HALF]),
    st.builds(Point, st.integers(), st.integers()),
    st.builds(Pair, st.integers(), st.text(max_size=3)),
    st.builds(Row, st.integers(), st.none()),
    st.binary(max_size=4).map(MyBytes),
)
keys = st.text(max_size=4)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(keys, children, max_size=5),
        st.lists(children, max_size=5).map(MyList),
        st.dictionaries(keys, children, max_size=5).map(MyDict),
        st.dictionaries(st.integers(), children, max_size=3),
        st.lists(children, max_size=3).map(MyTuple),
    )


# Refused leaves are rare enough that many values pass and the depth rule gets exercised.
mixed_values = st.recursive(
    st.one_of(accepted_leaves, accepted_leaves, accepted_leaves, refused_leaves),
    _containers,
    max_leaves=30,
)
depths = st.one_of(st.integers(min_value=-1, max_value=8), st.just(1000))


@needs_compiled
@given(value=mixed_values, depth=depths)
def test_compiled_and_python_walks_agree(value: Any, depth: int) -> None:
    assert _walk.quick_check(value, depth) is codec._quick_check(value, depth)


@needs_compiled
@given(value=mixed_values)
def test_encode_is_the_same_with_either_walk(value: Any) -> None:
    def outcome() -> tuple[str, Any]:
        try:
            return ("ok", codec.encode(value))
        except InvalidInputError as exc:
            return ("invalid", (str(exc), exc.path))

    saved = codec._quick_check_impl
    try:
        codec._quick_check_impl = _walk.quick_check
        compiled = outcome()
        codec._quick_check_impl = codec._quick_check
        python = outcome()
    finally:
        codec._quick_check_impl = saved
    assert compiled == python


# ---------------------------------------------------------------------------------------------
# Which walk codec.encode runs
# ---------------------------------------------------------------------------------------------


def test_codec_runs_the_compiled_walk_with_the_compiled_chunker() -> None:
    if chunking.backend == "python":
        assert codec._quick_check_impl is codec._quick_check
    else:
        assert _walk is not None
        assert codec._quick_check_impl is _walk.quick_check


_WHICH = (
    "from statebag import codec\n"
    "print('compiled' if codec._quick_check_impl is not codec._quick_check else 'python')\n"
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "STATEBAG_NO_EXTENSIONS"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
    )


def _blocking(module: str) -> str:
    """Code that makes `module` fail to import, as if it had not been built."""
    return (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
    )


@needs_compiled
def test_codec_runs_the_compiled_walk_by_default() -> None:
    out = _run(_WHICH)
    assert out.stdout.split() == ["compiled"]
    assert "Warning" not in out.stderr


def test_forcing_the_twins_selects_the_python_walk_without_a_warning() -> None:
    out = _run(_WHICH, STATEBAG_NO_EXTENSIONS="1")
    assert out.stdout.split() == ["python"]
    assert "Warning" not in out.stderr


def test_a_missing_chunker_extension_warns_once_and_selects_the_python_walk() -> None:
    out = _run(_blocking("statebag._cdc") + _WHICH)
    assert out.stdout.split() == ["python"]
    assert out.stderr.count("RuntimeWarning") == 1
    assert "validation walk" not in out.stderr


@needs_compiled
def test_a_missing_walk_extension_alone_warns_once() -> None:
    out = _run(_blocking("statebag._walk") + _WHICH)
    assert out.stdout.split() == ["python"]
    assert out.stderr.count("RuntimeWarning") == 1
    assert "validation walk" in out.stderr
