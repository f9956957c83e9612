"""Conformance suites for the storage layers: one contract, run against every backend.

Every object store and every metadata store of statebag must pass the same tests, so the
layers above can rely on the contract and not on a backend (see docs/ARCHITECTURE.md, "Layers").
The suites ship in the package, as ``zarr.testing`` does, so that a new backend (S3,
DynamoDB, a wrapper) is tested by subclassing, not by copying tests.

This module is for test code only: it imports ``pytest``, which statebag itself never
needs. Nothing in it touches the filesystem or SQLite; it sees stores only through their
interfaces.

Use: subclass a suite in a test module (the class name must start with ``Test`` for pytest to
collect it) and provide a fixture named ``store`` that yields a **new, empty store private
to the test**, and closes it afterwards::

    import pytest

    from statebag.objects import LocalObjectStore
    from statebag.testing import ObjectStoreConformance


    class TestLocalObjectStore(ObjectStoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            with LocalObjectStore(tmp_path / "objects", fsync=False) as store:
                yield store

``MetaStoreConformance`` works the same way with a ``MetaStore``. The suites may close the
store themselves (closing twice must be fine), run up to 8 threads against it, and write a
few MiB of objects or a few thousand metadata keys. Batches are split to honour
``max_batch``, and keys never use one object key as a directory of another (``a`` and
``a/b``), which filesystems cannot hold.

Decided semantics the suites pin down: ``ObjectStore.list`` takes a plain string prefix
(``"a/b"`` lists ``a/bc/d`` too); metadata keys sort by code point; ``b""`` is a value,
distinct from absent; ``Add`` leaves its counter existing even at 0.

Crash points (docs/FORMAT.md, "Crash points") are armed here and nowhere else:
:func:`arm_crash_point` in a process a test started itself, :func:`run_until_crash` to run a
script in a new interpreter that ends at the point. The variable ``STATEBAG_CRASH_AT``
(:data:`CRASH_ENV`) is read only by :func:`arm_crash_point_from_environment`, which that
helper's interpreter calls; statebag itself never reads it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import pytest

from . import _crash
from ._crash import CRASH_EXIT_CODE, CRASH_POINTS
from .errors import BackendError, ConflictError, InvalidInputError, NotFoundError, OutcomeUnknown
from .meta.base import (
    INT64_MAX,
    INT64_MIN,
    Add,
    Check,
    CheckCounter,
    ConditionFailed,
    Delete,
    DropCounter,
    MetaStore,
    Op,
    Put,
    plan_batch,
)
from .meta.wrapping import WrappedMetaStore
from .objects.base import ObjectStore

__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT_CODE",
    "CRASH_POINTS",
    "META_FAULTS",
    "FaultyMetaStore",
    "MetaStoreConformance",
    "ObjectStoreConformance",
    "arm_crash_point",
    "arm_crash_point_from_environment",
    "run_threads",
    "run_until_crash",
]

_T = TypeVar("_T")
_THREADS = 8


def run_threads(count: int, target: Callable[[int], _T], /, *, timeout: float = 60.0) -> list[_T]:
    """Run ``target(i)`` for i in range(count) on as many threads; re-raise the first error."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def runner(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"a thread did not finish within {timeout} s")
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------

META_FAULTS = (
    "applied_then_unknown",
    "unknown_before",
    "deferred",
    "definite",
    "add_applied_then_raises",
)
"""Every kind of fault :class:`FaultyMetaStore` injects; see its docstring."""


class FaultyMetaStore(WrappedMetaStore):
    """A metadata store that fails the way a remote one does, reproducibly (``seed``).

    Each ``write`` (so also ``put``, ``put_if_absent``, ``put_if_value`` and ``delete``,
    which go through it) draws a fault with probability ``rate``, among ``faults``:

    - ``"applied_then_unknown"``: the batch is applied, then :class:`OutcomeUnknown` raised
      (the answer was lost);
    - ``"unknown_before"``: :class:`OutcomeUnknown` is raised and nothing applied (the
      request never arrived);
    - ``"deferred"``: :class:`OutcomeUnknown` is raised now, and the batch lands later (a
      transaction still in flight after its client gave up): just before a later write,
      each deferred batch lands with probability ``land_rate``, or all at once at
      :meth:`land_deferred`. Its conditions are evaluated when it lands; if one fails, the
      batch is dropped, as a store drops a transaction whose condition fails;
    - ``"definite"``: a :class:`BackendError` (retryable or not, drawn) and nothing applied;
    - ``"add_applied_then_raises"``: for ``add`` only (drawn with the same ``rate``): the
      counter is added to, then :class:`OutcomeUnknown` raised.

    A malformed batch raises ``InvalidInputError`` and an empty one does nothing, with no
    fault drawn. Reads pass through. Safe from many threads; the draws follow the order in
    which threads reach the lock. :meth:`faults_off` (or setting ``rate`` to 0) heals the
    store; :meth:`injected` counts what was injected, by kind, plus ``"landed"`` and
    ``"dropped"`` for deferred batches.
    """

    def __init__(
        self,
        inner: MetaStore,
        /,
        *,
        seed: int,
        rate: float = 0.1,
        faults: Sequence[str] = META_FAULTS,
        land_rate: float = 0.3,
    ) -> None:
        unknown = sorted(set(faults) - set(META_FAULTS))
        if unknown:
            raise InvalidInputError(
                f"unknown fault kinds {unknown}; known: {list(META_FAULTS)}", path="faults"
            )
        for name, value in (("rate", rate), ("land_rate", land_rate)):
            if not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"{name} must be in [0, 1], not {value!r}", path=name)
        super().__init__(inner)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rate = rate
        self.land_rate = land_rate
        self._write_faults = [kind for kind in faults if kind != "add_applied_then_raises"]
        self._add_faults = "add_applied_then_raises" in faults
        self._deferred: list[tuple[list[Op], bool]] = []
        self._injected: dict[str, int] = dict.fromkeys((*META_FAULTS, "landed", "dropped"), 0)

    def faults_off(self) -> None:
        """Inject no more faults; deferred batches still land (see :meth:`land_deferred`)."""
        self.rate = 0.0

    def injected(self) -> dict[str, int]:
        """How many faults of each kind were injected, and deferred batches landed or
        dropped (their conditions failed when they landed)."""
        with self._lock:
            return dict(self._injected)

    @property
    def deferred(self) -> int:
        """Deferred batches not landed yet."""
        with self._lock:
            return len(self._deferred)

    def land_deferred(self) -> int:
        """Land every deferred batch now, oldest first; how many applied."""
        with self._lock:
            batches, self._deferred = self._deferred, []
        return sum(self._land(ops, durable) for ops, durable in batches)

    def _land(self, ops: list[Op], durable: bool) -> bool:
        try:
            self._inner.write(ops, durable=durable)
        except ConditionFailed:
            with self._lock:
                self._injected["dropped"] += 1
            return False
        with self._lock:
            self._injected["landed"] += 1
        return True

    def _draw(self, kinds: Sequence[str]) -> tuple[str | None, list[tuple[list[Op], bool]]]:
        """The fault for this call (None: none) and the deferred batches to land first."""
        with self._lock:
            landing: list[tuple[list[Op], bool]] = []
            if self._deferred:
                keep: list[tuple[list[Op], bool]] = []
                for batch in self._deferred:
                    (landing if self._rng.random() < self.land_rate else keep).append(batch)
                self._deferred = keep
            fault = None
            if kinds and self._rng.random() < self.rate:
                fault = self._rng.choice(kinds)
            return fault, landing

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        if not isinstance(ops, (list, tuple, str, bytes)) and isinstance(ops, Iterable):
            ops = list(ops)  # an iterator is read once, here
        plan_batch(ops, max_batch=self._inner.max_batch)  # bad input: no fault, no write
        if not ops:
            return
        batch = list(ops)
        fault, landing = self._draw(self._write_faults)
        for earlier, earlier_durable in landing:
            self._land(earlier, earlier_durable)
        if fault is None:
            self._inner.write(batch, durable=durable)
            return
        if fault == "applied_then_unknown":
            self._inner.write(batch, durable=durable)  # a failed condition raises as usual
        elif fault == "deferred":
            with self._lock:
                self._deferred.append((batch, durable))
        elif fault == "definite":
            with self._lock:
                self._injected[fault] += 1
                retryable = self._rng.random() < 0.5
            raise BackendError(
                f"injected failure: the metadata store refused a batch of {len(batch)} "
                "operations; nothing was applied",
                retryable=retryable,
            )
        with self._lock:
            self._injected[fault] += 1
        raise OutcomeUnknown(
            f"injected {fault}: the outcome of a batch of {len(batch)} operations is unknown"
        )

    def add(self, key: str, delta: int, /) -> int:
        fault, landing = self._draw(["add_applied_then_raises"] if self._add_faults else [])
        for earlier, earlier_durable in landing:
            self._land(earlier, earlier_durable)
        value = self._inner.add(key, delta)
        if fault is not None:
            with self._lock:
                self._injected[fault] += 1
            raise OutcomeUnknown(f"injected {fault}: the answer of an add to {key!r} was lost")
        return value


# ---------------------------------------------------------------------------------------------
# Crash points
# ---------------------------------------------------------------------------------------------

CRASH_ENV = "STATEBAG_CRASH_AT"

# What the interpreter of run_until_crash runs: arm, then run the script as __main__ with
# sys.argv as if it had been started with its own arguments.
_CRASH_BOOTSTRAP = """\
import sys
import statebag.testing

statebag.testing.arm_crash_point_from_environment()
script = sys.argv.pop(1)
exec(compile(script, "<crash script>", "exec"), {"__name__": "__main__"})
"""


def _crash_point_name(name: str, path: str) -> str:
    if name not in CRASH_POINTS:
        raise InvalidInputError(
            f"{name!r} is not a crash point; the points are {', '.join(CRASH_POINTS)}",
            path=path,
        )
    return name


def arm_crash_point(name: str | None, /) -> None:
    """End this process with exit code :data:`CRASH_EXIT_CODE` when it reaches the crash
    point ``name`` (one of :data:`CRASH_POINTS`); None disarms. Only for a process a test
    runs to be killed: the end is ``os._exit``, with no cleanup at all."""
    _crash.arm(None if name is None else _crash_point_name(name, "name"))


def arm_crash_point_from_environment() -> str | None:
    """Arm the crash point that ``STATEBAG_CRASH_AT`` names, and return it (None, arming
    nothing, when the variable is unset or empty). The explicit opt-in of a process started
    to crash: importing statebag never reads the variable."""
    name = os.environ.get(CRASH_ENV) or None
    if name is not None:
        arm_crash_point(name)
    return name


def run_until_crash(
    script: str,
    point: str,
    /,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run the Python code ``script`` (with ``sys.argv[1:] == args``) in a new interpreter
    armed to end at crash point ``point``, and return how it ended: ``returncode`` is
    :data:`CRASH_EXIT_CODE` when it reached the point. ``env`` (default: this process's)
    gets ``STATEBAG_CRASH_AT`` added; stdout and stderr are captured as text."""
    point = _crash_point_name(point, "point")
    child_env = {**(os.environ if env is None else env), CRASH_ENV: point}
    return subprocess.run(
        [sys.executable, "-c", _CRASH_BOOTSTRAP, script, *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------------------------------------
# Object stores
# ---------------------------------------------------------------------------------------------

_DIGITS = b"0123456789"

# (offset, length, expected) over the 10-byte object _DIGITS.
_RANGES = [
    (0, None, _DIGITS),
    (3, None, b"3456789"),
    (0, 4, b"0123"),
    (3, 4, b"3456"),
    (9, 1, b"9"),
    (8, 5, b"89"),
    (0, 10, _DIGITS),
    (0, 10**12, _DIGITS),
    (0, 0, b""),
    (5, 0, b""),
    (10, None, b""),
    (10, 3, b""),
    (25, None, b""),
    (25, 1, b""),
]

_BAD_OBJECT_KEYS = [
    "",
    "/a",
    "a/",
    "/",
    "a//b",
    ".",
    "..",
    "./a",
    "a/./b",
    "a/../b",
    "../a",
    "a/..",
    ".hidden",
    "a/.tmp",
    ".tmp/x",
    "A",
    "a/B",
    "a b",
    "a\\b",
    "a:b",
    "a*b",
    "a~",
    "a\nb",
    "a\x00b",
    "é",
    "x" * 513,
    "x" * 256,
    "a/" + "x" * 256,
]

_GOOD_OBJECT_KEYS = [
    "a",
    "0",
    "-a",
    "_a",
    "a.b",
    "a..b",
    "a.",
    "a/b/c",
    "packs/ab/" + "0123456789abcdef" * 4,
    "x" * 255,
    "/".join(["y" * 255, "z" * 255]),  # 511 characters
    "/".join(["w" * 255, "v" * 254, "u"]),  # exactly 512
]

_BAD_PREFIXES = ["/", "/a", "a//", "a//b", "A", "a b", ".", "a/.", "x" * 513]

_LIST_KEYS = [
    "a/a",
    "a/b-x",
    "a/b./z",
    "a/b/c",
    "a/b/d/e",
    "a/bc/d",
    "a-b",
    "a0",
    "b/x",
    "ba",
]


class ObjectStoreConformance:
    """The object store contract; subclasses provide the ``store`` fixture (empty store)."""

    # -- basics ---------------------------------------------------------------------------

    def test_put_get_round_trip(self, store: ObjectStore) -> None:
        store.put("k", b"hello")
        got = store.get("k")
        assert got == b"hello"
        assert type(got) is bytes

    @pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "sliced", "strided"])
    def test_put_accepts_buffers(self, store: ObjectStore, kind: str) -> None:
        raw = b"0123456789abcdef"
        choices: dict[str, bytes | bytearray | memoryview] = {
            "bytes": raw,
            "bytearray": bytearray(raw),
            "memoryview": memoryview(raw),
            "sliced": memoryview(b"xx" + raw + b"yy")[2:-2],
            # Not contiguous: every other byte of an interleaved buffer.
            "strided": memoryview(bytes(b for c in raw for b in (c, 0)))[::2],
        }
        data = choices[kind]
        store.put("k", data)
        assert store.get("k") == raw
        assert store.put_if_absent("k2", data) is True
        assert store.get("k2") == raw

    def test_stored_bytes_are_a_copy(self, store: ObjectStore) -> None:
        data = bytearray(b"before")
        store.put("k", data)
        data[:] = b"after!"
        assert store.get("k") == b"before"

    def test_put_rejects_non_buffers(self, store: ObjectStore) -> None:
        bad: Any = "text"
        with pytest.raises(InvalidInputError) as info:
            store.put("k", bad)
        assert info.value.path == "data"
        with pytest.raises(InvalidInputError):
            store.put_if_absent("k", bad)
        assert list(store.list()) == []

    def test_overwrite(self, store: ObjectStore) -> None:
        store.put("k", b"a much longer first value")
        store.put("k", b"short")
        assert store.get("k") == b"short"
        assert store.stat("k") == 5
        assert list(store.list()) == ["k"]

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.stat("empty") == 0
        assert store.get("empty", offset=0, length=5) == b""
        assert store.get("empty", offset=3) == b""
        assert list(store.list()) == ["empty"]
        assert store.put_if_absent("empty", b"x") is False

    def test_large_object(self, store: ObjectStore) -> None:
        data = _data(5 << 20, seed=5)
        store.put("big/object", data)
        assert store.stat("big/object") == len(data)
        assert store.get("big/object") == data
        assert (
            store.get("big/object", offset=1_000_003, length=2_000_000)
            == (data[1_000_003:3_000_003])
        )
        assert store.get("big/object", offset=len(data) - 7) == data[-7:]

    # -- ranges ---------------------------------------------------------------------------

    @pytest.mark.parametrize(("offset", "length", "expected"), _RANGES)
    def test_ranged_get(
        self, store: ObjectStore, offset: int, length: int | None, expected: bytes
    ) -> None:
        store.put("digits", _DIGITS)
        assert store.get("digits", offset=offset, length=length) == expected

    @pytest.mark.parametrize(
        ("offset", "length", "path"),
        [(-1, None, "offset"), (-1, 3, "offset"), (0, -1, "length"), (2, -5, "length")],
    )
    def test_negative_range_is_refused(
        self, store: ObjectStore, offset: int, length: int | None, path: str
    ) -> None:
        store.put("digits", _DIGITS)
        with pytest.raises(InvalidInputError) as info:
            store.get("digits", offset=offset, length=length)
        assert info.value.path == path

    def test_non_int_range_is_refused(self, store: ObjectStore) -> None:
        store.put("digits", _DIGITS)
        bad: Any = "1"
        with pytest.raises(InvalidInputError) as info:
            store.get("digits", offset=bad)
        assert info.value.path == "offset"
        with pytest.raises(InvalidInputError) as info:
            store.get("digits", length=bad)
        assert info.value.path == "length"

    # -- missing keys, stat, delete --------------------------------------------------------

    def test_get_missing_raises_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(NotFoundError) as info:
            store.get("no/such/key")
        assert "no/such/key" in str(info.value)
        assert isinstance(info.value, KeyError)
        with pytest.raises(NotFoundError):
            store.get("no/such/key", offset=2, length=3)

    def test_stat(self, store: ObjectStore) -> None:
        store.put("k", b"12345")
        assert store.stat("k") == 5
        with pytest.raises(NotFoundError) as info:
            store.stat("missing")
        assert "missing" in str(info.value)

    def test_modified_ns(self, store: ObjectStore) -> None:
        before = time.time_ns()
        store.put("k", b"1")
        modified = store.modified_ns("k")
        # Filesystems keep coarse times: allow a few seconds of slack either side.
        assert before - 5_000_000_000 <= modified <= time.time_ns() + 5_000_000_000
        with pytest.raises(NotFoundError):
            store.modified_ns("missing")

    def test_directory_like_prefix_is_not_an_object(self, store: ObjectStore) -> None:
        store.put("dir/child", b"x")
        with pytest.raises(NotFoundError):
            store.get("dir")
        with pytest.raises(NotFoundError):
            store.stat("dir")
        store.delete("dir")  # nothing to delete: not an error, and the child stays
        assert store.get("dir/child") == b"x"

    def test_delete(self, store: ObjectStore) -> None:
        store.put("a/b", b"x")
        store.put("a/c", b"y")
        store.delete("a/b")
        with pytest.raises(NotFoundError):
            store.get("a/b")
        assert list(store.list()) == ["a/c"]
        store.delete("a/c")
        assert list(store.list()) == []

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.delete("never/written")
        store.put("k", b"x")
        store.delete("k")
        store.delete("k")
        assert list(store.list()) == []

    def test_key_can_be_reused_after_delete(self, store: ObjectStore) -> None:
        store.put("a/b/c", b"1")
        store.delete("a/b/c")
        # A store that kept directories for a/b would now refuse the object "a/b".
        store.put("a/b", b"2")
        assert store.get("a/b") == b"2"
        store.delete("a/b")
        store.put("a", b"3")
        assert list(store.list()) == ["a"]

    # -- put_if_absent ---------------------------------------------------------------------

    def test_put_if_absent(self, store: ObjectStore) -> None:
        assert store.put_if_absent("k", b"first") is True
        assert store.put_if_absent("k", b"second") is False
        assert store.get("k") == b"first"
        store.put("k", b"third")  # a plain put still overwrites
        assert store.get("k") == b"third"
        store.delete("k")
        assert store.put_if_absent("k", b"fourth") is True
        assert store.get("k") == b"fourth"

    def test_put_if_absent_in_new_directories(self, store: ObjectStore) -> None:
        assert store.put_if_absent("x/y/z", b"deep") is True
        assert store.get("x/y/z") == b"deep"
        assert list(store.list("x/")) == ["x/y/z"]

    # -- list ------------------------------------------------------------------------------

    def test_list_is_sorted_iterator(self, store: ObjectStore) -> None:
        for key in reversed(_LIST_KEYS):
            store.put(key, key.encode())
        listing = store.list()
        assert isinstance(listing, Iterator)
        assert list(listing) == sorted(_LIST_KEYS)

    @pytest.mark.parametrize(
        "prefix",
        ["", "a", "a/", "a/b", "a/b/", "a/b/c", "a/bc", "a/b/d/", "a-", "b", "b/", "c", "zz/"],
    )
    def test_list_by_plain_string_prefix(self, store: ObjectStore, prefix: str) -> None:
        for key in _LIST_KEYS:
            store.put(key, b"")
        expected = sorted(key for key in _LIST_KEYS if key.startswith(prefix))
        assert list(store.list(prefix)) == expected

    def test_list_prefix_is_not_a_directory(self, store: ObjectStore) -> None:
        for key in _LIST_KEYS:
            store.put(key, b"")
        # Decided: a plain string prefix, so "a/b" also lists "a/b-x", "a/b./z", "a/bc/d".
        assert list(store.list("a/b")) == ["a/b-x", "a/b./z", "a/b/c", "a/b/d/e", "a/bc/d"]
        assert list(store.list("a/b/")) == ["a/b/c", "a/b/d/e"]

    def test_list_empty_store(self, store: ObjectStore) -> None:
        assert list(store.list()) == []
        assert list(store.list("a/")) == []

    # -- key validation ----------------------------------------------------------------------

    @pytest.mark.parametrize("key", _BAD_OBJECT_KEYS)
    def test_bad_keys_are_refused(self, store: ObjectStore, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.put_if_absent(key, b"x"),
            lambda: store.get(key),
            lambda: store.get(key, offset=1, length=1),
            lambda: store.stat(key),
            lambda: store.delete(key),
        ]
        for call in calls:
            with pytest.raises(InvalidInputError) as info:
                call()
            assert info.value.path == "key"
            if key and len(key) < 60:  # the message names the key, plainly or as a repr
                assert key in str(info.value) or repr(key) in str(info.value)
        assert list(store.list()) == []

    @pytest.mark.parametrize("key", [b"a", 1, None, ["a"]])
    def test_non_str_keys_are_refused(self, store: ObjectStore, key: Any) -> None:
        with pytest.raises(InvalidInputError):
            store.put(key, b"x")
        with pytest.raises(InvalidInputError):
            store.get(key)
        with pytest.raises(InvalidInputError):
            store.delete(key)
        assert list(store.list()) == []

    @pytest.mark.parametrize("key", _GOOD_OBJECT_KEYS)
    def test_good_keys_round_trip(self, store: ObjectStore, key: str) -> None:
        store.put(key, b"v")
        assert store.get(key) == b"v"
        assert store.stat(key) == 1
        assert list(store.list()) == [key]
        store.delete(key)
        assert list(store.list()) == []

    @pytest.mark.parametrize("prefix", _BAD_PREFIXES)
    def test_bad_prefixes_are_refused(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(InvalidInputError) as info:
            store.list(prefix)
        assert info.value.path == "prefix"

    # -- concurrency -------------------------------------------------------------------------

    def test_concurrent_put_if_absent_has_one_winner(self, store: ObjectStore) -> None:
        for round_ in range(5):
            key = f"race/{round_}"
            barrier = threading.Barrier(_THREADS, timeout=30)
            payloads = [_data(64 << 10, seed=100 * round_ + i) for i in range(_THREADS)]

            def attempt(
                i: int,
                key: str = key,
                barrier: threading.Barrier = barrier,
                payloads: list[bytes] = payloads,
            ) -> bool:
                barrier.wait()
                return store.put_if_absent(key, payloads[i])

            won = run_threads(_THREADS, attempt)
            assert won.count(True) == 1
            assert store.get(key) == payloads[won.index(True)]

    def test_concurrent_puts_of_different_keys(self, store: ObjectStore) -> None:
        per_thread = 25
        barrier = threading.Barrier(_THREADS, timeout=30)

        def writer(i: int) -> None:
            barrier.wait()
            for j in range(per_thread):
                store.put(f"t{i}/k{j:03d}", f"{i}:{j}".encode())

        run_threads(_THREADS, writer)
        keys = list(store.list())
        assert len(keys) == _THREADS * per_thread
        assert keys == sorted(f"t{i}/k{j:03d}" for i in range(_THREADS) for j in range(per_thread))
        for i in range(_THREADS):
            for j in range(per_thread):
                assert store.get(f"t{i}/k{j:03d}") == f"{i}:{j}".encode()

    def test_readers_never_see_a_partial_overwrite(self, store: ObjectStore) -> None:
        size = 256 << 10
        versions = [bytes([65 + v]) * size for v in range(4)]
        store.put("hot", versions[0])
        done = threading.Event()

        def work(i: int) -> int:
            if i == 0:
                try:
                    for n in range(40):
                        store.put("hot", versions[n % len(versions)])
                finally:
                    done.set()
                return 0
            reads = 0
            while not done.is_set() or reads == 0:
                data = store.get("hot")
                assert data in versions, "a reader saw a mix of two versions"
                assert store.get("hot", offset=size - 3) in (b"AAA", b"BBB", b"CCC", b"DDD")
                reads += 1
            return reads

        run_threads(4, work)

    # -- lifecycle -------------------------------------------------------------------------

    def test_close_twice_and_context_manager(self, store: ObjectStore) -> None:
        with store as entered:
            assert entered is store
        store.close()


# ---------------------------------------------------------------------------------------------
# Metadata stores
# ---------------------------------------------------------------------------------------------

# Keys whose order differs between naive byte/collation handling and code point order, plus
# LIKE metacharacters that a prefix scan must treat as plain text.
_SCAN_KEYS = [
    "p/",
    "p/%",
    "p/_",
    "p/a",
    "p/a%b",
    "p/a_b",
    "p/aXb",
    "p/ab",
    "p/a/b",
    "p/Z",
    "p/z",
    "p/~",
    "p/\x7f",
    "p/é",
    "p/ü",
    "p/\u00ff",
    "p/\u0100",
    "p/\u20ac",
    "p/\ud7ff",
    "p/\ud7ffz",
    "p/\ue000",
    "p/\uffff",
    "p/\U0001f600",
    "p/\U0010ffff",
    "p/\U0010ffffa",
    "p0",
    "p",
    "o/zz",
    "q",
]

_BAD_META_KEYS: list[Any] = [
    "",
    "a\x00b",
    "\x00",
    "x" * 1025,
    "é" * 513,  # 513 characters but 1026 bytes in UTF-8
    "\ud800",
    "a\udfffb",
    b"key",
    1,
    None,
]

_GOOD_META_KEYS = [
    "k",
    "x" * 1024,
    "é" * 512,  # exactly 1024 bytes in UTF-8
    "\U0010ffff",
    "with space/and\nnewline",
    "%_*?[]",
    "DROP TABLE kv; --",
    "\U0001f600",
]


class MetaStoreConformance:
    """The metadata store contract; subclasses provide the ``store`` fixture (empty store).

    Outcomes (see :mod:`statebag.meta.base`): a ``write`` that returns was applied; one that
    raises any error but :class:`OutcomeUnknown` applied nothing and never will; one that
    raises ``OutcomeUnknown`` may be applied, now or later. A store that can raise it (a
    remote one, or a :class:`FaultyMetaStore`) sets ``outcome_unknown_possible = True``;
    the memory and SQLite stores never raise it, and the suite checks that they do not.
    """

    outcome_unknown_possible: ClassVar[bool] = False

    @staticmethod
    def write_all(store: MetaStore, ops: Sequence[Op]) -> None:
        """Write ``ops`` in batches no larger than ``store.max_batch`` (setup only)."""
        step = store.max_batch or max(len(ops), 1)
        for start in range(0, len(ops), step):
            store.write(ops[start : start + step])

    @staticmethod
    def state(store: MetaStore) -> tuple[list[tuple[str, bytes]], list[tuple[str, int]]]:
        """Everything in the store: all values and all counters."""
        return list(store.scan("")), list(store.counters(""))

    # -- outcomes --------------------------------------------------------------------------

    def test_every_write_outcome_is_known_or_declared_unknown(self, store: MetaStore) -> None:
        # Threads race compare-and-swap increments of one value and plain adds to one
        # counter: a write that returned is in the final state, one refused by its
        # condition is not, and only a store that declares it may raise OutcomeUnknown.
        rounds = 40
        store.put("cas", b"0")
        tally = dict.fromkeys(("applied", "unknown", "adds", "unknown_adds", "failed_adds"), 0)
        lock = threading.Lock()

        def worker(_: int) -> None:
            for _round in range(rounds):
                current = store.get("cas")
                assert current is not None
                outcome = "applied"
                try:
                    store.write([Put("cas", b"%d" % (int(current) + 1), expect=current)])
                except OutcomeUnknown:
                    outcome = "unknown"
                except (ConditionFailed, BackendError):
                    outcome = "refused"  # a definite failure: not applied, nor ever will be
                added = "adds"
                try:
                    store.add("n", 1)
                except OutcomeUnknown:
                    added = "unknown_adds"
                except BackendError:
                    added = "failed_adds"
                with lock:
                    if outcome != "refused":
                        tally[outcome] += 1
                    tally[added] += 1

        run_threads(4, worker)
        final = int(store.get("cas") or b"-1")
        if not self.outcome_unknown_possible:
            assert tally["unknown"] == tally["unknown_adds"] == 0
        assert tally["applied"] <= final <= tally["applied"] + tally["unknown"]
        count = store.counter("n")
        assert tally["adds"] <= count <= tally["adds"] + tally["unknown_adds"]
        assert tally["adds"] + tally["unknown_adds"] + tally["failed_adds"] == 4 * rounds

    # -- values ----------------------------------------------------------------------------

    def test_get_missing_is_none(self, store: MetaStore) -> None:
        assert store.get("missing") is None

    def test_put_get_overwrite_delete(self, store: MetaStore) -> None:
        store.put("k", b"v1")
        got = store.get("k")
        assert got == b"v1"
        assert type(got) is bytes
        store.put("k", b"v2")
        assert store.get("k") == b"v2"
        store.delete("k")
        assert store.get("k") is None
        assert self.state(store) == ([], [])

    def test_delete_missing_is_fine(self, store: MetaStore) -> None:
        store.delete("never")
        store.write([Delete("never"), Delete("never")])
        assert self.state(store) == ([], [])

    def test_empty_value_is_not_absent(self, store: MetaStore) -> None:
        store.put("k", b"")
        assert store.get("k") == b""
        assert store.get_many(["k"]) == {"k": b""}
        assert store.put_if_absent("k", b"x") is False
        assert store.put_if_value("k", b"x", expected=b"") is True
        assert store.get("k") == b"x"

    def test_values_accept_bytes_like(self, store: MetaStore) -> None:
        # Put.value is typed bytes; other buffers are accepted and stored as bytes.
        array: Any = bytearray(b"ba")
        view: Any = memoryview(b"mv")
        store.write([Put("a", array), Put("b", view)])
        assert store.get("a") == b"ba"
        assert type(store.get("a")) is bytes
        assert store.get("b") == b"mv"

    def test_large_value(self, store: MetaStore) -> None:
        value = _data(64 << 10, seed=3)
        store.put("big", value)
        assert store.get("big") == value

    def test_put_if_absent(self, store: MetaStore) -> None:
        assert store.put_if_absent("k", b"first") is True
        assert store.put_if_absent("k", b"second") is False
        assert store.get("k") == b"first"

    def test_put_if_value(self, store: MetaStore) -> None:
        assert store.put_if_value("k", b"new", expected=b"old") is False
        assert store.get("k") is None
        store.put("k", b"old")
        assert store.put_if_value("k", b"new", expected=b"wrong") is False
        assert store.get("k") == b"old"
        assert store.put_if_value("k", b"new", expected=b"old") is True
        assert store.get("k") == b"new"

    # -- conditions ------------------------------------------------------------------------

    def test_conditional_put(self, store: MetaStore) -> None:
        store.write([Put("k", b"1", expect=None)])
        assert store.get("k") == b"1"
        store.write([Put("k", b"2", expect=b"1")])
        assert store.get("k") == b"2"
        with pytest.raises(ConditionFailed):
            store.write([Put("k", b"3", expect=None)])
        with pytest.raises(ConditionFailed):
            store.write([Put("k", b"3", expect=b"1")])
        assert store.get("k") == b"2"

    def test_conditional_delete(self, store: MetaStore) -> None:
        store.put("k", b"v")
        with pytest.raises(ConditionFailed):
            store.write([Delete("k", expect=b"other")])
        with pytest.raises(ConditionFailed):
            store.write([Delete("k", expect=None)])
        assert store.get("k") == b"v"
        store.write([Delete("k", expect=b"v")])
        assert store.get("k") is None
        store.write([Delete("k", expect=None)])  # absent, as expected: nothing to do
        with pytest.raises(ConditionFailed):
            store.write([Delete("k", expect=b"v")])

    def test_check(self, store: MetaStore) -> None:
        store.write([Check("absent", None)])
        store.put("k", b"v")
        store.write([Check("k", b"v"), Check("absent", None)])
        with pytest.raises(ConditionFailed) as info:
            store.write([Check("k", b"v"), Check("k", None)])
        assert info.value.index == 1
        with pytest.raises(ConditionFailed):
            store.write([Check("absent", b"v")])
        with pytest.raises(ConditionFailed):
            store.write([Check("k", b"")])

    @pytest.mark.parametrize(
        "failing",
        [
            Put("a", b"x", expect=None),
            Put("a", b"x", expect=b"wrong"),
            Put("missing", b"x", expect=b"1"),
            Delete("a", expect=b"wrong"),
            Delete("a", expect=None),
            Delete("missing", expect=b"1"),
            Check("a", None),
            Check("a", b"wrong"),
            Check("missing", b""),
            CheckCounter("g", 3),
            CheckCounter("missing", 1),
        ],
    )
    def test_failed_condition_applies_nothing(self, store: MetaStore, failing: Op) -> None:
        store.write([Put("a", b"1"), Put("b", b"2"), Add("c", 5), Add("d", 7), Add("g", 2)])
        before = self.state(store)
        ops: list[Op] = [
            Put("x", b"new"),
            Delete("b"),
            Add("c", 10),
            DropCounter("d"),
            Add("e", 1),
            failing,
            Put("y", b"after"),
            Add("f", 3),
        ]
        with pytest.raises(ConditionFailed) as info:
            store.write(ops)
        error = info.value
        assert isinstance(error, ConflictError)
        assert error.index == 5
        assert error.key == failing.key
        assert repr(failing.key) in str(error)
        assert self.state(store) == before
        assert store.counter("e") == 0

    def test_check_counter(self, store: MetaStore) -> None:
        store.write([CheckCounter("n", 0)])  # a missing counter holds 0
        store.add("n", 3)
        store.write([CheckCounter("n", 3), Add("n", -3), Put("zero", b"1")])
        assert store.counter("n") == 0 and store.get("zero") == b"1"
        with pytest.raises(ConditionFailed) as info:
            store.write([Put("x", b"1"), CheckCounter("n", 3), Add("n", 1)])
        assert (info.value.index, info.value.key) == (1, "n")
        assert "counter" in str(info.value)
        assert store.get("x") is None and store.counter("n") == 0
        store.add("m", 2)
        with pytest.raises(ConditionFailed):
            store.write([CheckCounter("m", 5), DropCounter("m")])
        store.write([CheckCounter("m", 2), DropCounter("m")])
        assert list(store.counters("m")) == []
        # The condition is on the value before the batch; checking after a change is refused.
        with pytest.raises(InvalidInputError):
            store.write([Add("n", 1), CheckCounter("n", 1)])
        with pytest.raises(InvalidInputError):
            store.write([CheckCounter("n", "0")])  # type: ignore[arg-type]
        assert store.counter("n") == 0

    def test_first_failing_of_value_and_counter_conditions(self, store: MetaStore) -> None:
        store.put("a", b"1")
        with pytest.raises(ConditionFailed) as info:
            store.write([CheckCounter("c", 1), Check("a", b"2")])
        assert (info.value.index, info.value.key) == (0, "c")
        with pytest.raises(ConditionFailed) as info:
            store.write([Check("a", b"2"), CheckCounter("c", 1)])
        assert (info.value.index, info.value.key) == (0, "a")

    def test_first_failing_condition_is_reported(self, store: MetaStore) -> None:
        store.put("a", b"1")
        with pytest.raises(ConditionFailed) as info:
            store.write([Check("a", b"1"), Check("b", b"x"), Check("a", b"2")])
        assert (info.value.index, info.value.key) == (1, "b")
        with pytest.raises(ConditionFailed) as info:
            store.write([Put("n", b"1"), Check("a", b"2"), Check("n", None)])
        assert (info.value.index, info.value.key) == (1, "a")

    # -- order within a batch ----------------------------------------------------------------

    def test_ops_apply_in_order(self, store: MetaStore) -> None:
        store.write([Put("k", b"1"), Put("k", b"2")])
        assert store.get("k") == b"2"
        store.write([Put("k", b"3"), Delete("k")])
        assert store.get("k") is None
        store.write([Delete("k"), Put("k", b"4")])
        assert store.get("k") == b"4"

    def test_conditions_see_earlier_ops_of_the_batch(self, store: MetaStore) -> None:
        store.write([Put("k", b"1", expect=None), Put("k", b"2", expect=b"1"), Check("k", b"2")])
        assert store.get("k") == b"2"
        store.write([Check("k", b"2"), Delete("k", expect=b"2"), Check("k", None)])
        assert store.get("k") is None
        store.put("k", b"v")
        with pytest.raises(ConditionFailed) as info:
            store.write([Put("k", b"w"), Check("k", b"v")])
        assert info.value.index == 1
        assert store.get("k") == b"v"
        with pytest.raises(ConditionFailed) as info:
            store.write([Delete("k"), Put("k", b"x", expect=b"v")])
        assert info.value.index == 1
        assert store.get("k") == b"v"

    def test_counter_ops_apply_in_order(self, store: MetaStore) -> None:
        store.add("c", 100)
        store.write([Add("c", 5), DropCounter("c"), Add("c", 2)])
        assert store.counter("c") == 2
        store.write([Add("c", 5), DropCounter("c")])
        assert store.counter("c") == 0
        assert list(store.counters("")) == []
        store.write([DropCounter("c"), Add("c", 0)])
        assert list(store.counters("")) == [("c", 0)]
        store.write([Add("c", 3), Add("c", -1), Add("c", 10)])
        assert store.counter("c") == 12

    def test_non_durable_writes_are_atomic_conditional_and_visible(self, store: MetaStore) -> None:
        store.write([Put("pending/a", b"1"), Add("n", 2)], durable=False)
        assert store.get("pending/a") == b"1" and store.counter("n") == 2
        with pytest.raises(ConditionFailed):
            store.write([Put("pending/b", b"2"), Check("pending/a", None)], durable=False)
        assert store.get("pending/b") is None
        store.put("pending/a", b"3", durable=False)
        # A durable write after it still works and sees it.
        store.write([Put("head", b"h"), Check("pending/a", b"3")])
        assert store.get_many(["pending/a", "head"]) == {"pending/a": b"3", "head": b"h"}

    def test_empty_write_is_a_no_op(self, store: MetaStore) -> None:
        store.write([])
        store.write(())
        assert self.state(store) == ([], [])

    def test_mixed_batch(self, store: MetaStore) -> None:
        store.write(
            [
                Put("head", b"m1", expect=None),
                Put("manifest/m1", b"body"),
                Add("ref/n1", 1),
                Add("ref/n2", 1),
            ]
        )
        store.write(
            [
                Put("head", b"m2", expect=b"m1"),
                Put("manifest/m2", b"body2"),
                Add("ref/n1", 1),
                Add("ref/n2", -1),
                Check("manifest/m1", b"body"),
            ]
        )
        assert store.get("head") == b"m2"
        assert list(store.counters("ref/")) == [("ref/n1", 2), ("ref/n2", 0)]
        assert store.get_many(["manifest/m1", "manifest/m2"]) == {
            "manifest/m1": b"body",
            "manifest/m2": b"body2",
        }

    # -- counters --------------------------------------------------------------------------

    def test_counters(self, store: MetaStore) -> None:
        assert store.counter("c") == 0
        assert store.add("c", 1) == 1
        assert store.add("c", 41) == 42
        assert store.add("c", -50) == -8
        assert store.counter("c") == -8
        assert store.add("zero", 0) == 0
        assert list(store.counters("")) == [("c", -8), ("zero", 0)]
        store.write([DropCounter("c")])
        assert store.counter("c") == 0
        assert list(store.counters("")) == [("zero", 0)]
        store.write([DropCounter("never")])  # dropping a missing counter is fine
        assert list(store.counters("")) == [("zero", 0)]

    def test_counters_and_values_are_separate(self, store: MetaStore) -> None:
        store.put("same", b"value")
        store.add("same", 3)
        assert store.get("same") == b"value"
        assert store.counter("same") == 3
        store.delete("same")
        assert store.counter("same") == 3
        store.write([DropCounter("same"), Put("same", b"again")])
        assert store.get("same") == b"again"
        assert list(store.counters("")) == []
        assert list(store.scan("")) == [("same", b"again")]

    def test_counters_scan_by_prefix(self, store: MetaStore) -> None:
        keys = [k for k in _SCAN_KEYS if k]
        self.write_all(store, [Add(k, i + 1) for i, k in enumerate(keys)])
        values = {k: i + 1 for i, k in enumerate(keys)}
        for prefix in ["", "p/", "p/a", "p/a%", "p/a_", "p/\ud7ff", "p/\U0010ffff", "zz"]:
            expected = sorted((k, v) for k, v in values.items() if k.startswith(prefix))
            assert list(store.counters(prefix)) == expected, prefix

    def test_counter_range_is_int64(self, store: MetaStore) -> None:
        assert store.add("hi", INT64_MAX) == INT64_MAX
        with pytest.raises(InvalidInputError):
            store.add("hi", 1)
        assert store.counter("hi") == INT64_MAX
        assert store.add("lo", INT64_MIN) == INT64_MIN
        with pytest.raises(InvalidInputError):
            store.write([Put("side", b"effect"), Add("lo", -1)])
        assert store.counter("lo") == INT64_MIN
        assert store.get("side") is None
        for delta in (INT64_MAX + 1, INT64_MIN - 1):
            with pytest.raises(InvalidInputError):
                store.add("other", delta)
        assert store.counter("other") == 0

    @pytest.mark.parametrize("delta", [1.5, "1", None, True])
    def test_counter_delta_must_be_int(self, store: MetaStore, delta: Any) -> None:
        with pytest.raises(InvalidInputError):
            store.add("c", delta)
        with pytest.raises(InvalidInputError):
            store.write([Put("k", b"v"), Add("c", delta)])
        assert self.state(store) == ([], [])

    # -- scans -----------------------------------------------------------------------------

    def _fill_scan_keys(self, store: MetaStore) -> dict[str, bytes]:
        values = {k: k.encode("utf-8") for k in _SCAN_KEYS if k}
        self.write_all(store, [Put(k, v) for k, v in values.items()])
        return values

    @pytest.mark.parametrize(
        "prefix",
        ["", "p", "p/", "p/a", "p/a%", "p/a_", "p/%", "p/_", "p/\ud7ff", "p/\U0010ffff", "q", "z"],
    )
    def test_scan_prefix_in_code_point_order(self, store: MetaStore, prefix: str) -> None:
        values = self._fill_scan_keys(store)
        expected = sorted((k, v) for k, v in values.items() if k.startswith(prefix))
        assert list(store.scan(prefix)) == expected

    def test_scan_start_after_and_limit(self, store: MetaStore) -> None:
        values = self._fill_scan_keys(store)
        under_p = sorted(k for k in values if k.startswith("p/"))
        keys = [k for k, _ in store.scan("p/")]
        assert keys == under_p
        assert [k for k, _ in store.scan("p/", start_after=under_p[3])] == under_p[4:]
        assert [k for k, _ in store.scan("p/", start_after="p/a")] == [
            k for k in under_p if k > "p/a"
        ]
        assert [k for k, _ in store.scan("p/", start_after="a")] == under_p  # before prefix
        assert [k for k, _ in store.scan("p/", start_after="p/\U0010ffffa")] == []
        assert [k for k, _ in store.scan("p/", start_after="zzz")] == []
        assert list(store.scan("p/", limit=0)) == []
        assert [k for k, _ in store.scan("p/", limit=3)] == under_p[:3]
        assert [k for k, _ in store.scan("p/", start_after=under_p[2], limit=2)] == under_p[3:5]
        # Paging with start_after reassembles the whole scan.
        paged: list[str] = []
        while True:
            page = [
                k for k, _ in store.scan("p/", start_after=paged[-1] if paged else None, limit=4)
            ]
            if not page:
                break
            paged.extend(page)
        assert paged == under_p

    def test_scan_many_keys(self, store: MetaStore) -> None:
        keys = [f"many/{i:05d}" for i in range(1500)]
        self.write_all(store, [Put(k, k[-5:].encode()) for k in reversed(keys)])
        store.put("many0", b"outside")
        scanned = list(store.scan("many/"))
        assert [k for k, _ in scanned] == keys
        assert all(v == k[-5:].encode() for k, v in scanned)
        assert [k for k, _ in store.scan("many/", limit=1000)] == keys[:1000]
        assert [k for k, _ in store.scan("many/", start_after=keys[100], limit=700)] == keys[
            101:801
        ]

    def test_scan_is_lazy_and_validates_eagerly(self, store: MetaStore) -> None:
        bad: Any = 5
        with pytest.raises(InvalidInputError):
            store.scan(bad)
        with pytest.raises(InvalidInputError):
            store.scan("p/", limit=-1)
        with pytest.raises(InvalidInputError):
            store.scan("p/", start_after=bad)
        with pytest.raises(InvalidInputError):
            store.counters(bad)
        assert isinstance(store.scan(""), Iterator)

    # -- get_many --------------------------------------------------------------------------

    def test_get_many(self, store: MetaStore) -> None:
        store.write([Put("a", b"1"), Put("b", b""), Put("c", b"3")])
        assert store.get_many(["a", "missing", "b", "a"]) == {"a": b"1", "b": b""}
        assert store.get_many([]) == {}
        assert store.get_many(iter(["c", "zzz"])) == {"c": b"3"}
        bad: Any = "abc"
        with pytest.raises(InvalidInputError):
            store.get_many(bad)

    def test_get_many_large(self, store: MetaStore) -> None:
        keys = [f"node/{i:05d}" for i in range(2400)]
        present = keys[::2]
        self.write_all(store, [Put(k, k.encode()) for k in present])
        found = store.get_many(keys)
        assert found == {k: k.encode() for k in present}

    # -- max_batch ---------------------------------------------------------------------------

    def test_max_batch(self, store: MetaStore) -> None:
        limit = store.max_batch
        if limit is None:
            # No limit: a large batch is still one atomic write.
            ops: list[Op] = [Put(f"k{i:05d}", b"v") for i in range(3000)]
            with pytest.raises(ConditionFailed):
                store.write([*ops, Check("k00000", None)])
            assert list(store.scan("")) == []
            store.write(ops)
            assert len(list(store.scan(""))) == 3000
            return
        assert isinstance(limit, int)
        assert limit >= 1
        with pytest.raises(InvalidInputError):
            store.write([Put(f"k{i}", b"v") for i in range(limit + 1)])
        assert self.state(store) == ([], [])
        store.write([Add(f"c{i}", 1) for i in range(limit)])
        assert len(list(store.counters(""))) == limit

    # -- validation --------------------------------------------------------------------------

    @pytest.mark.parametrize("key", _BAD_META_KEYS)
    def test_bad_keys_are_refused(self, store: MetaStore, key: Any) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.get(key),
            lambda: store.get_many(["ok", key]),
            lambda: store.counter(key),
            lambda: store.add(key, 1),
            lambda: store.put(key, b"v"),
            lambda: store.put_if_absent(key, b"v"),
            lambda: store.put_if_value(key, b"v", expected=b"w"),
            lambda: store.delete(key),
            lambda: store.write([Put("ok", b"v"), Put(key, b"v")]),
            lambda: store.write([Add("ok", 1), Delete(key)]),
            lambda: store.write([Add("ok", 1), Check(key, None)]),
            lambda: store.write([Add("ok", 1), Add(key, 1)]),
            lambda: store.write([Add("ok", 1), DropCounter(key)]),
        ]
        if key != "":
            calls.append(lambda: list(store.scan(key)))
            calls.append(lambda: list(store.counters(key)))
        for call in calls:
            with pytest.raises(InvalidInputError):
                call()
        assert self.state(store) == ([], [])

    @pytest.mark.parametrize("key", _GOOD_META_KEYS)
    def test_good_keys_round_trip(self, store: MetaStore, key: str) -> None:
        store.put(key, b"v")
        store.add(key, 2)
        assert store.get(key) == b"v"
        assert store.get_many([key]) == {key: b"v"}
        assert store.counter(key) == 2
        assert list(store.scan(key)) == [(key, b"v")]
        assert list(store.counters(key)) == [(key, 2)]

    def test_malformed_batches_are_refused(self, store: MetaStore) -> None:
        # Deliberately ill-typed: these are what untyped callers might pass.
        text: Any = "text"
        five: Any = 5
        one_point_oh: Any = 1.0
        bad_batches: list[Any] = [
            Put("k", b"v"),  # one op, not a sequence of ops
            "ops",
            [("k", b"v")],
            [Put("ok", b"v"), {"key": "k"}],
            [Put("ok", b"v"), Put("k", text)],
            [Put("ok", b"v"), Put("k", b"v", expect=text)],
            [Put("ok", b"v"), Check("k", five)],
            [Put("ok", b"v"), Add("k", one_point_oh)],
        ]
        for batch in bad_batches:
            with pytest.raises(InvalidInputError):
                store.write(batch)
        assert self.state(store) == ([], [])

    # -- concurrency -------------------------------------------------------------------------

    def test_concurrent_adds_are_exact(self, store: MetaStore) -> None:
        per_thread = 200
        barrier = threading.Barrier(_THREADS, timeout=30)

        def adder(i: int) -> list[int]:
            barrier.wait()
            return [store.add("hits", 1) for _ in range(per_thread)]

        returned = run_threads(_THREADS, adder)
        assert store.counter("hits") == _THREADS * per_thread
        # Every add saw a distinct new value: no two increments merged.
        seen = sorted(v for values in returned for v in values)
        assert seen == list(range(1, _THREADS * per_thread + 1))

    def test_concurrent_conditional_put_has_one_winner(self, store: MetaStore) -> None:
        for round_ in range(5):
            key = f"head/{round_}"
            store.put(key, b"v0")
            barrier = threading.Barrier(_THREADS, timeout=30)

            def attempt(i: int, key: str = key, barrier: threading.Barrier = barrier) -> bool:
                barrier.wait()
                return store.put_if_value(key, f"t{i}".encode(), expected=b"v0")

            won = run_threads(_THREADS, attempt)
            assert won.count(True) == 1
            assert store.get(key) == f"t{won.index(True)}".encode()

    def test_concurrent_compare_and_swap_batches(self, store: MetaStore) -> None:
        # Each thread increments a value by compare-and-swap, counting its wins in the same
        # batch: value, counter and per-thread win counts must all agree.
        per_thread = 15
        store.put("seq", b"0")

        def incrementer(i: int) -> int:
            wins = 0
            while wins < per_thread:
                current = store.get("seq")
                assert current is not None
                new = str(int(current) + 1).encode()
                try:
                    store.write([Put("seq", new, expect=current), Add("wins", 1)])
                except ConditionFailed:
                    continue
                wins += 1
            return wins

        wins = run_threads(_THREADS, incrementer)
        assert sum(wins) == _THREADS * per_thread
        assert store.get("seq") == str(_THREADS * per_thread).encode()
        assert store.counter("wins") == _THREADS * per_thread

    # -- lifecycle -------------------------------------------------------------------------

    def test_close_twice_and_context_manager(self, store: MetaStore) -> None:
        with store as entered:
            assert entered is store
        store.close()
