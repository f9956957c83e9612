"""The metadata store interface: small values by key, int64 counters, atomic batches.

The metadata store holds everything of statebag that is small and changes: chain heads,
manifests, the node index, pending commits, refcounts (see docs/ARCHITECTURE.md,
"Layers", and docs/FORMAT.md, "Commit protocol"). It has two independent namespaces under
the same kind of keys:

- **values**: ``bytes`` under a ``str`` key (``b""`` is a value, distinct from absent);
- **counters**: signed 64-bit integers under a ``str`` key. A counter that was never
  written, or was dropped, reads as 0. ``Add`` always leaves the counter existing, even at
  0; only ``DropCounter`` removes it. The same key may be a value and a counter at once.

Writes go through :meth:`MetaStore.write`, a batch of operations that is **all or nothing**:
every condition is checked and every operation applied in one atomic step, or a
:class:`ConditionFailed` is raised and nothing changes. Operations apply in order, and a
batch may touch one key several times, so a condition sees the effect of earlier operations
in the same batch (``[Put(k, b"1"), Put(k, b"2", expect=b"1")]`` succeeds on any state).
A backend that cannot touch one item twice per transaction (DynamoDB) collapses a batch
with :func:`plan_batch` first: per key, the conditions on the stored state and one final
write; that is also how the memory and SQLite stores apply it, so all backends agree.

Keys are ``str`` of 1 to 1024 bytes in UTF-8, without NUL and without lone surrogates
(:func:`check_meta_key`); they sort by code point, which is also UTF-8 byte order, so every
backend lists them in the same order as Python's ``sorted``. ``scan`` and ``counters`` take
a plain string prefix: ``%`` and ``_`` mean nothing special.

``max_batch`` says how many operations one ``write`` accepts (``None``: no limit). The
caller splits larger batches itself, and so decides what may be non-atomic.

**Outcomes.** ``write`` (and ``add``) end in one of three ways, and a caller may rely on
each: it returns, and the batch was applied; it raises :class:`ConditionFailed`,
``InvalidInputError`` or any other error except :class:`~statebag.errors.OutcomeUnknown`,
and nothing was applied, nor will be; or it raises
:class:`~statebag.errors.OutcomeUnknown`, and the batch may have been applied, may never
be, or may still be applied later (a timeout, a lost answer, a transaction still in flight
after its client gave up). A remote store raises ``OutcomeUnknown`` whenever it cannot tell
the first two apart; it never reports a failure for a batch that may still land. A caller
that needs to know reads back what it wrote, and one that must stop a late landing makes
the batch conditional on something it can take away first (statebag's commit makes its
write conditional on the save's pending entry). The memory and SQLite stores never raise
``OutcomeUnknown``: their writes are applied or not when the call returns.
:class:`statebag.testing.FaultyMetaStore` wraps any store to inject these outcomes.

``write(ops, durable=False)`` allows a backend to skip flushing that batch to stable storage:
it is atomic and visible to every reader at once like any other, and no process crash can
lose it, but a power failure or OS crash may, until the next durable write has returned
(which makes it durable too). Intent records whose loss only leaves garbage behind (the
pending entry of a save) use it; backends whose every write is durable ignore it.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Final, Self, TypeAlias

import msgspec

from ..errors import ConflictError, InvalidInputError

__all__ = [
    "ANY",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_META_KEY_BYTES",
    "Add",
    "AnyType",
    "BatchPlan",
    "Check",
    "CheckCounter",
    "ConditionFailed",
    "CounterChange",
    "Delete",
    "DropCounter",
    "MetaStore",
    "Op",
    "Put",
    "batch_items",
    "check_keys",
    "check_meta_key",
    "check_scan_args",
    "plan_batch",
    "prefix_upper_bound",
]

MAX_META_KEY_BYTES = 1024
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_MAX_CODE_POINT = 0x10FFFF


class AnyType(enum.Enum):
    """The type of :data:`ANY`; an enum so that ``expect is ANY`` narrows for type checkers."""

    ANY = "ANY"

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyType.ANY
"""No condition: the operation applies whatever the key holds."""


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


class Put(msgspec.Struct, frozen=True):
    """Set value ``key`` to ``value``.

    ``expect``: ``ANY`` (default) for no condition, ``None`` if the key must be absent, or the
    bytes the current value must equal.
    """

    key: str
    value: bytes
    expect: bytes | AnyType | None = ANY


class Delete(msgspec.Struct, frozen=True):
    """Remove value ``key``; removing a missing key without a condition is fine."""

    key: str
    expect: bytes | AnyType | None = ANY


class Check(msgspec.Struct, frozen=True):
    """A condition only: value ``key`` must equal ``expect`` (``None``: must be absent)."""

    key: str
    expect: bytes | None


class CheckCounter(msgspec.Struct, frozen=True):
    """A condition only: counter ``key`` must hold ``value`` before the batch (a missing
    counter holds 0). It may not follow an ``Add`` or ``DropCounter`` of the same counter in
    one batch, whose meaning would be ambiguous."""

    key: str
    value: int


class Add(msgspec.Struct, frozen=True):
    """Counter ``key`` += ``delta``; a missing counter counts as 0."""

    key: str
    delta: int


class DropCounter(msgspec.Struct, frozen=True):
    """Remove counter ``key``; it reads as 0 afterwards."""

    key: str


Op: TypeAlias = Put | Delete | Check | CheckCounter | Add | DropCounter
_OP_TYPES = (Put, Delete, Check, CheckCounter, Add, DropCounter)


def batch_items(ops: Sequence[Op], /) -> int:
    """The items a batch touches: its distinct keys, a key's value and its counter counting
    as one item, as a store that keeps both in one record writes them (DynamoDB: one item
    of a transaction, however many of its operations name the key)."""
    return len({op.key for op in ops if isinstance(op, _OP_TYPES)})


class ConditionFailed(ConflictError):
    """A condition of a batch did not hold, so nothing in the batch was applied.

    ``index`` is the position in ``ops`` of the first condition that failed, ``key`` its key.
    """

    kind: ClassVar[str] = "condition_failed"

    def __init__(self, message: str, *, index: int, key: str) -> None:
        super().__init__(message)
        self.index = index
        self.key = key


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _shown(key: str) -> str:
    return repr(key) if len(key) <= 80 else repr(key[:77]) + "..."


def check_meta_key(key: object, /, *, path: str = "key", allow_empty: bool = False) -> str:
    """Return ``key`` if it is a valid metadata key, else raise ``InvalidInputError``.

    ``path`` names the argument in the error; ``allow_empty`` admits ``""`` (for prefixes).
    """
    if type(key) is not str:
        if not isinstance(key, str):
            raise InvalidInputError(
                f"a metadata {path} must be a str, got {type(key).__name__}", path=path
            )
        key = str(key)  # a str subclass: store the plain string
    if not key:
        if allow_empty:
            return key
        raise InvalidInputError(f"a metadata {path} must not be empty", path=path)
    if key.isascii():
        size = len(key)
    else:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"metadata {path} {_shown(key)} contains a lone surrogate; "
                f"keys must be valid Unicode",
                path=path,
            ) from None
    if size > MAX_META_KEY_BYTES:
        raise InvalidInputError(
            f"metadata {path} {_shown(key)} is {size} bytes in UTF-8, more than "
            f"{MAX_META_KEY_BYTES}",
            path=path,
        )
    if "\x00" in key:
        raise InvalidInputError(f"metadata {path} {_shown(key)} contains NUL", path=path)
    return key


def check_scan_args(
    prefix: object, start_after: object, limit: object, /
) -> tuple[str, str | None, int | None]:
    """Validate the arguments of ``scan``; returns them typed."""
    prefix = check_meta_key(prefix, path="prefix", allow_empty=True)
    if start_after is not None:
        start_after = check_meta_key(start_after, path="start_after", allow_empty=True)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InvalidInputError(f"limit must be None or an int >= 0, got {limit!r}", path="limit")
    return prefix, start_after, limit


def check_keys(keys: object, /) -> list[str]:
    """Validate the keys of ``get_many``: each checked, duplicates dropped, order kept."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, Iterable):
        raise InvalidInputError(
            f"keys must be an iterable of str keys, got {type(keys).__name__}", path="keys"
        )
    seen: dict[str, None] = {}
    for i, key in enumerate(keys):
        if not _plain_key(key):
            key = check_meta_key(key, path=f"keys[{i}]")
        seen[key] = None
    return list(seen)


def prefix_upper_bound(prefix: str, /) -> str | None:
    """The least string above every string that starts with ``prefix``; None if unbounded.

    Lets a backend scan a prefix as the range ``prefix <= key < bound``, which needs no
    pattern syntax (so ``%`` and ``_`` are plain characters) and uses the key index.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < _MAX_CODE_POINT:
            nxt = last + 1
            # Keys hold no surrogates, so the successor of U+D7FF among keys is U+E000.
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def _as_bytes(value: object, path: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidInputError(f"{path} must be bytes, got {type(value).__name__}", path=path)


def _as_expect(value: object, path: str) -> bytes | None:
    return None if value is None else _as_bytes(value, path)


# Batches of thousands of operations are common (one per node of a save): the checks below
# take the common case (an ASCII str key, bytes values) without building the error path.


def _plain_key(key: object) -> bool:
    """True for an ASCII str key that ``check_meta_key`` would return unchanged."""
    return (
        type(key) is str
        and key.isascii()
        and 0 < len(key) <= MAX_META_KEY_BYTES
        and "\x00" not in key
    )


def _op_key(key: object, index: int) -> str:
    if _plain_key(key):
        return key  # type: ignore[return-value]
    return check_meta_key(key, path=f"ops[{index}].key")


def _op_expect(value: object, index: int) -> bytes | None:
    if value is None or type(value) is bytes:
        return value
    return _as_bytes(value, f"ops[{index}].expect")


# ---------------------------------------------------------------------------------------------
# Batch planning, shared by every backend
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class CounterChange:
    """What a batch does to one counter, collapsed from all its ``Add``/``DropCounter``."""

    reset: bool = False
    """A ``DropCounter`` came first, so the stored value does not matter."""
    delta: int = 0
    """The sum of the ``Add`` deltas after the last drop."""
    drop: bool = False
    """The counter does not exist after the batch."""


_Failure: TypeAlias = tuple[int, str, bytes | None, bytes | None]


@dataclass(slots=True)
class BatchPlan:
    """A validated batch, collapsed to its effect; built by :func:`plan_batch`.

    A backend applies it in one atomic step: read the current values of ``checks`` and the
    counters of :meth:`counter_reads`, raise :meth:`failure` if not None, write ``writes``
    (``None``: delete) and the results of :meth:`counter_results` (``None``: drop).
    """

    size: int
    checks: dict[str, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    """Conditions on the stored state, per key: (op index, expected value or None)."""
    writes: dict[str, bytes | None] = field(default_factory=dict)
    counters: dict[str, CounterChange] = field(default_factory=dict)
    counter_checks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """Conditions on stored counters, per key: (op index, expected value)."""
    static_failure: _Failure | None = None
    """The first condition that fails against the batch's own earlier writes, if any."""

    @property
    def empty(self) -> bool:
        return self.size == 0

    def failure(
        self, current: Mapping[str, bytes], /, counters: Mapping[str, int] | None = None
    ) -> ConditionFailed | None:
        """The error for the first failing condition, given current values of ``checks``
        and (when the batch has counter conditions) of the counters of :meth:`counter_reads`.

        ``current`` maps each checked key that exists to its value; absent keys are missing;
        absent counters hold 0.
        """
        first = self.static_failure
        for key, conditions in self.checks.items():
            found = current.get(key)
            for index, expected in conditions:
                if first is not None and index >= first[0]:
                    break
                if expected != found:
                    first = (index, key, expected, found)
                    break
        failed_counter: tuple[int, str, int, int] | None = None
        for key, counter_conditions in self.counter_checks.items():
            value = (counters or {}).get(key, 0)
            for index, wanted in counter_conditions:
                if (first is not None and index >= first[0]) or (
                    failed_counter is not None and index >= failed_counter[0]
                ):
                    break
                if wanted != value:
                    failed_counter = (index, key, wanted, value)
                    break
        if failed_counter is not None and (first is None or failed_counter[0] < first[0]):
            index, key, wanted, value = failed_counter
            return ConditionFailed(
                f"condition of ops[{index}] on counter {_shown(key)} failed: expected "
                f"{wanted}, found {value}; nothing in the batch was applied",
                index=index,
                key=key,
            )
        return None if first is None else _condition_failed(*first)

    def counter_reads(self) -> list[str]:
        """Counters whose stored value the result or a condition depends on."""
        keys = [key for key, change in self.counters.items() if not change.reset]
        keys.extend(
            key
            for key in self.counter_checks
            if key not in self.counters or self.counters[key].reset
        )
        return keys

    def counter_results(self, current: Mapping[str, int], /) -> dict[str, int | None]:
        """The value of every touched counter after the batch (``None``: dropped).

        ``current`` maps the keys of :meth:`counter_reads` that exist to their values. A
        result outside the int64 range raises ``InvalidInputError``; apply nothing then.
        """
        results: dict[str, int | None] = {}
        for key, change in self.counters.items():
            if change.drop:
                results[key] = None
                continue
            value = change.delta if change.reset else current.get(key, 0) + change.delta
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidInputError(
                    f"counter {_shown(key)} would become {value}, outside the signed 64-bit "
                    f"range; nothing was written",
                    path="delta",
                )
            results[key] = value
        return results


def _describe(value: bytes | None) -> str:
    if value is None:
        return "no value"
    if len(value) <= 40:
        return f"the value {value!r}"
    return f"a value of {len(value)} bytes"


def _condition_failed(
    index: int, key: str, expected: bytes | None, found: bytes | None
) -> ConditionFailed:
    want = "the key to be absent" if expected is None else _describe(expected)
    return ConditionFailed(
        f"condition of ops[{index}] on key {_shown(key)} failed: expected {want}, "
        f"found {_describe(found)}; nothing in the batch was applied",
        index=index,
        key=key,
    )


def plan_batch(ops: Sequence[Op], /, *, max_batch: int | None) -> BatchPlan:
    """Validate ``ops`` and collapse them to their effect, without any I/O.

    Raises ``InvalidInputError`` for a malformed batch (wrong types, bad keys, more than
    ``max_batch`` operations): no backend may apply any of it then.
    """
    if isinstance(ops, (*_OP_TYPES, str, bytes, bytearray, memoryview)) or not isinstance(
        ops, Iterable
    ):
        raise InvalidInputError(
            f"ops must be a sequence of operations, got {type(ops).__name__}", path="ops"
        )
    if not isinstance(ops, (list, tuple)):
        ops = list(ops)
    if max_batch is not None and len(ops) > max_batch:
        raise InvalidInputError(
            f"this store writes at most {max_batch} operations atomically, got {len(ops)}; "
            f"split the batch",
            path="ops",
        )
    plan = BatchPlan(size=len(ops))
    checks = plan.checks
    writes = plan.writes
    counters = plan.counters
    # Values of keys this batch has already written: conditions on them are decided here.
    known: dict[str, bytes | None] = {}

    def condition(index: int, key: str, expected: bytes | None) -> None:
        if key in known:
            if plan.static_failure is None and known[key] != expected:
                plan.static_failure = (index, key, expected, known[key])
        else:
            checks.setdefault(key, []).append((index, expected))

    for i, op in enumerate(ops):
        if isinstance(op, Put):
            key = _op_key(op.key, i)
            value = op.value if type(op.value) is bytes else _as_bytes(op.value, f"ops[{i}].value")
            if op.expect is not ANY:
                condition(i, key, _op_expect(op.expect, i))
            known[key] = writes[key] = value
        elif isinstance(op, Delete):
            key = _op_key(op.key, i)
            if op.expect is not ANY:
                condition(i, key, _op_expect(op.expect, i))
            known[key] = writes[key] = None
        elif isinstance(op, Check):
            key = _op_key(op.key, i)
            expect: object = op.expect  # typed bytes | None, but callers may pass ANY anyway
            if expect is ANY:
                raise InvalidInputError(
                    f"ops[{i}] is a Check without a condition; expect must be bytes or None",
                    path=f"ops[{i}].expect",
                )
            condition(i, key, _op_expect(expect, i))
        elif isinstance(op, CheckCounter):
            key = _op_key(op.key, i)
            wanted = op.value
            if not isinstance(wanted, int) or isinstance(wanted, bool):
                raise InvalidInputError(
                    f"ops[{i}].value must be an int, got {type(wanted).__name__}",
                    path=f"ops[{i}].value",
                )
            if key in counters:
                raise InvalidInputError(
                    f"ops[{i}] checks counter {_shown(key)} after this batch changed it; "
                    "put the CheckCounter before the Add or DropCounter",
                    path=f"ops[{i}]",
                )
            plan.counter_checks.setdefault(key, []).append((i, wanted))
        elif isinstance(op, Add):
            key = _op_key(op.key, i)
            delta = op.delta
            if not isinstance(delta, int) or isinstance(delta, bool):
                raise InvalidInputError(
                    f"ops[{i}].delta must be an int, got {type(delta).__name__}",
                    path=f"ops[{i}].delta",
                )
            if not INT64_MIN <= delta <= INT64_MAX:
                raise InvalidInputError(
                    f"ops[{i}].delta {delta} is outside the signed 64-bit range",
                    path=f"ops[{i}].delta",
                )
            change = counters.get(key)
            if change is None:
                change = counters[key] = CounterChange()
            change.delta += delta
            change.drop = False
        elif isinstance(op, DropCounter):
            key = _op_key(op.key, i)
            counters[key] = CounterChange(reset=True, delta=0, drop=True)
        else:
            raise InvalidInputError(
                f"ops[{i}] is a {type(op).__name__}, not an operation "
                f"(Put, Delete, Check, CheckCounter, Add or DropCounter)",
                path=f"ops[{i}]",
            )
    return plan


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class MetaStore(abc.ABC):
    """Small values by key, plus counters. Every implementation is safe from many threads."""

    max_batch: int | None = None
    """The most operations one ``write`` applies atomically; None means no limit."""

    @abc.abstractmethod
    def get(self, key: str, /) -> bytes | None:
        """The value of ``key``, or None if it has none."""

    @abc.abstractmethod
    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        """Values of several keys at once; keys without a value are absent from the result."""

    @abc.abstractmethod
    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        """``(key, value)`` for keys starting with ``prefix``, in ascending key order.

        ``start_after`` skips keys up to and including it (to resume a scan); ``limit`` caps
        the number of items. A scan is not a snapshot: writes made while iterating may or
        may not show.
        """

    @abc.abstractmethod
    def counter(self, key: str, /) -> int:
        """The value of counter ``key``; 0 when it does not exist."""

    @abc.abstractmethod
    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        """``(key, value)`` for existing counters starting with ``prefix``, ascending."""

    @abc.abstractmethod
    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        """Apply ``ops`` all or nothing, in order; see the module docstring (also for
        ``durable=False``).

        Raises ``ConditionFailed`` if a condition does not hold and ``InvalidInputError``
        for a malformed batch or one longer than ``max_batch``; in both cases nothing
        changes. An empty batch does nothing. ``OutcomeUnknown`` means the batch may or
        may not be applied, now or later; any other error means it was not (see
        "Outcomes" in the module docstring).
        """

    @abc.abstractmethod
    def add(self, key: str, delta: int, /) -> int:
        """Atomically add ``delta`` to counter ``key`` and return the new value.

        ``OutcomeUnknown`` means the addition may or may not be applied, as for ``write``.
        """

    # -- conveniences, all through write() --------------------------------------------------

    def put(self, key: str, value: bytes, /, *, durable: bool = True) -> None:
        """Set ``key`` to ``value`` unconditionally."""
        self.write([Put(key, value)], durable=durable)

    def put_if_absent(self, key: str, value: bytes, /) -> bool:
        """Set ``key`` only if it has no value; True if written."""
        try:
            self.write([Put(key, value, expect=None)])
        except ConditionFailed:
            return False
        return True

    def put_if_value(self, key: str, value: bytes, /, *, expected: bytes) -> bool:
        """Set ``key`` only if its value is ``expected`` (compare-and-swap); True if written."""
        try:
            self.write([Put(key, value, expect=expected)])
        except ConditionFailed:
            return False
        return True

    def delete(self, key: str, /) -> None:
        """Remove ``key``'s value; removing a missing key is fine."""
        self.write([Delete(key)])

    def close(self) -> None:  # noqa: B027 - optional: stores without resources keep it
        """Release resources (connections). Closing twice is fine."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
