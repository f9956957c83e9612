"""Merge strategies: how the fields of several sides combine against their common ancestor.

The repository decides field by field which sides changed a field (by comparing stored
entries, so without reading values) and takes a side's stored value whenever one outcome
wins; this module only combines *values*, for the cases that need them: a conflict handed to
a callable, ``deep_merge``'s recursive merge and ``collect``'s lists. Values are compared by
their canonical encoding, never with ``==``: ``1`` and ``1.0`` differ, NaN equals itself.

Sides are ordered target first, then the branches in the order given; every rule that picks
or orders uses that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from . import codec
from .codec import _child_path
from .errors import ConflictError, InvalidInputError

__all__ = [
    "MISSING",
    "ON_CONFLICT",
    "STRATEGIES",
    "Conflicts",
    "MergeConflictError",
    "check_options",
    "deep_merge",
    "resolve",
    "same",
]

STRATEGIES: Final = ("three_way", "deep_merge", "last_wins", "collect")
ON_CONFLICT: Final = ("raise", "last_wins")

Strategy = Literal["three_way", "deep_merge", "last_wins", "collect"]
OnConflict = Literal["raise", "last_wins"] | Callable[[str, Any, list[Any]], Any]


class _Missing:
    """The value of a field a side does not have: the base's when the field is new, a
    side's when it removed the field. A resolver returning it removes the field."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "statebag.MISSING"

    def __reduce__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


def check_options(strategy: object, on_conflict: object) -> None:
    if strategy not in STRATEGIES:
        raise InvalidInputError(
            f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}", path="strategy"
        )
    if not callable(on_conflict) and on_conflict not in ON_CONFLICT:
        raise InvalidInputError(
            "on_conflict must be 'raise', 'last_wins' or a callable(field, base, values), "
            f"not {on_conflict!r}",
            path="on_conflict",
        )


def _encoding(value: Any) -> bytes | None:
    return None if value is MISSING else codec.encode(value)


def same(a: Any, b: Any) -> bool:
    """Equal as stored: the same canonical encoding (MISSING equals only itself)."""
    if a is MISSING or b is MISSING:
        return a is b
    return a is b or codec.encode(a) == codec.encode(b)


class MergeConflictError(ConflictError):
    """A merge with ``on_conflict="raise"`` met conflicts: ``target`` and the conflicting
    ``paths``, so that a face (the CLI) can say what to do in its own terms."""

    def __init__(self, target: str, paths: Sequence[str]) -> None:
        self.target = target
        self.paths = list(paths)
        super().__init__(
            f"{conflict_summary(target, self.paths)}. Pass on_conflict='last_wins' or a "
            "callable(field, base, values) to resolve them, or a strategy that never "
            "conflicts (last_wins, collect)"
        )


def conflict_summary(target: str, paths: Sequence[str]) -> str:
    """What conflicted, in words every face shares."""
    return (
        f"merge into {target!r} conflicts on {len(paths)} field(s): {', '.join(paths)}; "
        "changed to different values on several sides"
    )


class Conflicts:
    """The paths that conflicted under ``on_conflict="raise"``: all of them are named in one
    MergeConflictError once every field was looked at."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def raise_if_any(self, target: str) -> None:
        if self.paths:
            raise MergeConflictError(target, self.paths)


def resolve(
    path: str, base: Any, values: list[Any], on_conflict: OnConflict, conflicts: Conflicts
) -> Any:
    """One conflict: ``values`` are the outcomes of the sides that changed ``path``, in side
    order, not all the same."""
    if on_conflict == "raise":
        conflicts.paths.append(path)
        return MISSING  # not used: the merge raises
    if on_conflict == "last_wins":
        return values[-1]
    assert callable(on_conflict)
    return on_conflict(path, base, list(values))


def distinct(values: Sequence[Any]) -> list[Any]:
    """The different outcomes among ``values``, first occurrence kept, in order."""
    seen: set[bytes | None] = set()
    out: list[Any] = []
    for value in values:
        key = _encoding(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def deep_merge(
    path: str, base: Any, values: list[Any], on_conflict: OnConflict, conflicts: Conflicts
) -> Any:
    """``deep_merge`` of the outcomes ``values`` of the sides that changed ``path``.

    One outcome wins outright. Otherwise dicts (an absent base counts as ``{}``) merge key
    by key with this same rule; lists whose every outcome starts with the base's elements
    (an absent base counts as ``[]``) become the base's elements followed by each side's
    appended ones, in side order. Anything else is a conflict for ``on_conflict``.

    Nested dicts are merged with an explicit stack, not by recursion, so that a conflict as
    deep as the nesting limit merges from any depth of the caller's stack.
    """
    result: list[Any] = [MISSING]
    stack: list[_DictMerge] = []

    def deliver(into: _DictMerge | None, key: str, outcome: Any) -> None:
        if into is None:
            result[0] = outcome
        elif outcome is not MISSING:
            into.merged[key] = outcome

    def begin(path: str, base: Any, values: list[Any], into: _DictMerge | None, key: str) -> None:
        outcomes = distinct(values)
        if len(outcomes) == 1:
            deliver(into, key, outcomes[0])
        elif all(type(v) is dict for v in values) and (base is MISSING or type(base) is dict):
            stack.append(_DictMerge(path, base if type(base) is dict else {}, values, into, key))
        else:
            deliver(into, key, _merge_leaf(path, base, values, on_conflict, conflicts))

    begin(path, base, values, None, "")
    while stack:
        frame = stack[-1]
        if frame.next == len(frame.keys):
            stack.pop()
            deliver(frame.into, frame.key, frame.merged)
            continue
        key = frame.keys[frame.next]
        frame.next += 1
        before = frame.base.get(key, MISSING)
        changed = [o for o in (v.get(key, MISSING) for v in frame.values) if not same(o, before)]
        if not changed:
            deliver(frame, key, before)
        else:
            begin(_child_path(frame.path, key), before, changed, frame, key)
    return result[0]


class _DictMerge:
    """One dict being merged key by key: where ``deep_merge`` is in it, and where its
    outcome goes (``into`` at ``key``; None for the outcome of the whole merge)."""

    __slots__ = ("base", "into", "key", "keys", "merged", "next", "path", "values")

    def __init__(
        self,
        path: str,
        base: dict[str, Any],
        values: list[dict[str, Any]],
        into: _DictMerge | None,
        key: str,
    ) -> None:
        self.path = path
        self.base = base
        self.values = values
        self.into = into
        self.key = key
        names = set(base)
        for value in values:
            names.update(value)
        self.keys = sorted(names)
        self.next = 0
        self.merged: dict[str, Any] = {}


def _merge_leaf(
    path: str, base: Any, values: list[Any], on_conflict: OnConflict, conflicts: Conflicts
) -> Any:
    """Outcomes that are not all dicts: appended lists merge, anything else conflicts."""
    if all(type(v) is list for v in values) and (base is MISSING or type(base) is list):
        prefix: list[Any] = base if type(base) is list else []
        head = _encoding(prefix)
        if all(_encoding(v[: len(prefix)]) == head for v in values):
            merged = list(prefix)
            for value in values:
                merged.extend(value[len(prefix) :])
            return merged
    return resolve(path, base, values, on_conflict, conflicts)
