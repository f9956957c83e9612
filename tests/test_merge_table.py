"""Merges against a plain-Python reference model of the contract (issue 6).

The model (:func:`model_merge`) is written from the contract alone: for each top-level field a
side "changed" it when its value's canonical encoding differs from the base's (adding and
removing count), and each strategy combines the changed sides' outcomes. The table builds
every meaningful combination of unchanged / changed / added / removed on two and three sides,
with and without conflict, saves it through ``save`` and ``fork``, merges with each strategy
and each ``on_conflict``, and compares the merged version with the model. The model itself is
checked against hand-written expectations first, so a shared misreading shows up there.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statebag
from statebag import ConflictError, InvalidInputError, NotFoundError, codec, dag, merging
from statebag.codec import _child_path

from . import internals
from .repohelp import recount, same, stored_counts

MISSING = statebag.MISSING
STRATEGIES = ("three_way", "deep_merge", "last_wins", "collect")

# -- the reference model ----------------------------------------------------------------------


def equal(a: Any, b: Any) -> bool:
    """Equal as stored: by canonical encoding, MISSING only equal to itself."""
    if a is MISSING or b is MISSING:
        return a is b
    return codec.encode(a) == codec.encode(b)


def distinct(values: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for value in values:
        if not any(equal(value, seen) for seen in kept):
            kept.append(value)
    return kept


class ModelConflict(Exception):
    def __init__(self, paths: list[str]) -> None:
        super().__init__(paths)
        self.paths = sorted(paths)


def _resolve(
    path: str, base: Any, outcomes: list[Any], strategy: str, on_conflict: Any, conflicts: list
) -> Any:
    """The merged value of one field (or nested key) that ``outcomes`` (the changed sides'
    values, side order, each different from ``base``) changed."""
    if len(distinct(outcomes)) == 1:
        return outcomes[0]
    if strategy == "deep_merge" and MISSING not in outcomes:
        if all(type(v) is dict for v in outcomes) and (base is MISSING or type(base) is dict):
            start = {} if base is MISSING else base
            merged: dict[str, Any] = {}
            for key in sorted(set(start).union(*outcomes)):
                key_base = start.get(key, MISSING)
                changed = [
                    v for v in (o.get(key, MISSING) for o in outcomes) if not equal(v, key_base)
                ]
                value = (
                    _resolve(
                        _child_path(path, key), key_base, changed, strategy, on_conflict, conflicts
                    )
                    if changed
                    else key_base
                )
                if value is not MISSING:
                    merged[key] = value
            return merged
        if all(type(v) is list for v in outcomes) and (base is MISSING or type(base) is list):
            start = [] if base is MISSING else base
            if all(equal(v[: len(start)], start) for v in outcomes):
                return list(start) + [x for v in outcomes for x in v[len(start) :]]
    if on_conflict == "raise":
        conflicts.append(path)
        return MISSING
    if on_conflict == "last_wins":
        return outcomes[-1]
    return on_conflict(path, base, list(outcomes))


def model_merge(
    base: dict[str, Any], sides: list[dict[str, Any]], strategy: str, on_conflict: Any
) -> dict[str, Any]:
    """The merged state the contract gives; ModelConflict(paths) where it must raise."""
    merged: dict[str, Any] = {}
    conflicts: list[str] = []
    for name in sorted(set(base).union(*sides)):
        old = base.get(name, MISSING)
        changed = [v for v in (side.get(name, MISSING) for side in sides) if not equal(v, old)]
        if not changed:
            value = old
        elif strategy == "last_wins":
            value = changed[-1]
        elif strategy == "collect":
            value = [v for v in changed if v is not MISSING] or MISSING
        else:
            value = _resolve(name, old, changed, strategy, on_conflict, conflicts)
        if value is not MISSING:
            merged[name] = value
    if conflicts:
        raise ModelConflict(conflicts)
    return merged


class Resolver:
    """A conflict callable that records its calls and returns a value naming its arguments,
    so the merged state shows what it was given. ``drop`` fields resolve to MISSING."""

    def __init__(self, drop: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, Any, list[Any]]] = []
        self.drop = drop

    def __call__(self, field: str, base: Any, values: list[Any]) -> Any:
        self.calls.append((field, base, list(values)))
        if field in self.drop:
            return MISSING
        return {
            "field": field,
            "base": "<missing>" if base is MISSING else base,
            "values": ["<missing>" if v is MISSING else v for v in values],
        }


Call = tuple[str, Any, list[Any]]


def same_calls(expected: list[Call], got: list[Call]) -> None:
    """The same calls, in any order of fields (the contract orders only the values)."""
    expected = sorted(expected, key=lambda c: c[0])
    got = sorted(got, key=lambda c: c[0])
    assert [c[0] for c in got] == [c[0] for c in expected]
    for (_, base_e, values_e), (field, base_g, values_g) in zip(expected, got, strict=True):
        assert (base_g is MISSING) == (base_e is MISSING), field
        if base_e is not MISSING:
            same(base_e, base_g, field)
        assert len(values_g) == len(values_e), field
        for value_e, value_g in zip(values_e, values_g, strict=True):
            assert (value_g is MISSING) == (value_e is MISSING), (field, values_g)
            if value_e is not MISSING:
                same(value_e, value_g, field)


# -- the model against hand-written expectations ------------------------------------------------

B = {"f": "base", "k": 1}
HAND: list[tuple[str, list[dict[str, Any]], str, Any]] = [
    # (strategy, sides, on_conflict, expected state or ModelConflict paths)
    ("three_way", [B, {"f": "t", "k": 1}], "raise", {"f": "t", "k": 1}),
    ("three_way", [{"k": 1}, B], "raise", {"k": 1}),
    ("three_way", [{"f": "x", "k": 1}, {"f": "x", "k": 1}], "raise", {"f": "x", "k": 1}),
    ("three_way", [{"f": "t", "k": 1}, {"f": "b", "k": 1}], "raise", ["f"]),
    ("three_way", [{"f": "t", "k": 1}, {"k": 1}], "raise", ["f"]),
    ("three_way", [{"f": "t", "k": 1}, {"k": 1}], "last_wins", {"k": 1}),
    ("three_way", [{"k": 1}, {"f": "b", "k": 1}], "last_wins", {"f": "b", "k": 1}),
    ("three_way", [{"f": 1, "k": 1}, {"f": 1.0, "k": 1}], "raise", ["f"]),
    ("three_way", [{"f": "t", "k": 2}, {"f": "b", "k": 3}], "raise", ["f", "k"]),
    ("last_wins", [{"f": "t", "k": 1}, B, B], "raise", {"f": "t", "k": 1}),
    ("last_wins", [{"f": "t", "k": 1}, {"k": 1}, B], "raise", {"k": 1}),
    ("last_wins", [{"k": 1}, {"f": "b", "k": 1}, B], "raise", {"f": "b", "k": 1}),
    ("collect", [B, {"f": "b", "k": 1}], "raise", {"f": ["b"], "k": 1}),
    ("collect", [{"f": "t", "k": 1}, {"f": "b", "k": 1}], "raise", {"f": ["t", "b"], "k": 1}),
    ("collect", [{"f": "t", "k": 1}, {"k": 1}], "raise", {"f": ["t"], "k": 1}),
    ("collect", [{"k": 1}, {"k": 1}], "raise", {"k": 1}),
    ("collect", [{"f": "s", "k": 1}, {"f": "s", "k": 1}], "raise", {"f": ["s", "s"], "k": 1}),
    ("deep_merge", [{"f": "t", "k": 1}, {"f": "b", "k": 1}], "raise", ["f"]),
]


@pytest.mark.parametrize(("strategy", "sides", "on_conflict", "expected"), HAND)
def test_model_matches_hand_written_cases(
    strategy: str, sides: list[dict[str, Any]], on_conflict: str, expected: Any
) -> None:
    if isinstance(expected, list):
        with pytest.raises(ModelConflict) as caught:
            model_merge(B, sides, strategy, on_conflict)
        assert caught.value.paths == expected
    else:
        assert model_merge(B, sides, strategy, on_conflict) == expected


def test_model_deep_merge_hand_written_cases() -> None:
    base = {"cfg": {"a": 1, "b": {"x": 1}}, "log": [1]}
    target = {"cfg": {"a": 2, "b": {"x": 1}}, "log": [1, "t"]}
    branch = {"cfg": {"a": 1, "b": {"x": 1, "y": 2}, "c": 3}, "log": [1, "b", "b2"]}
    assert model_merge(base, [target, branch], "deep_merge", "raise") == {
        "cfg": {"a": 2, "b": {"x": 1, "y": 2}, "c": 3},
        "log": [1, "t", "b", "b2"],
    }
    with pytest.raises(ModelConflict) as caught:
        model_merge(base, [target, branch], "three_way", "raise")
    assert caught.value.paths == ["cfg", "log"]
    edited = {"cfg": {"a": 3, "b": {"x": 1}, "l": [0]}, "log": [9, "b"]}
    with pytest.raises(ModelConflict) as caught:
        model_merge(base, [target, edited], "deep_merge", "raise")
    assert caught.value.paths == ["cfg.a", "log"]


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def repo() -> Iterator[statebag.Repository]:
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repository:
        yield repository


def build(
    repo: statebag.Repository,
    base: dict[str, Any],
    sides: list[dict[str, Any] | None],
    target: str = "t",
) -> tuple[str, list[str], list[str]]:
    """Save ``base`` on ``target``, fork one branch per side after the first, then save each
    side (None: that side saves nothing after the fork). Returns (base id, branch names,
    heads in side order)."""
    base_id = repo.save(target, base).manifest_id
    branches = [f"{target}/branch-{i}" for i in range(len(sides) - 1)]
    for name in branches:
        assert repo.fork(target, name) == base_id
        assert repo.head(name) == base_id
    heads = []
    for chain, state in zip([target, *branches], sides, strict=True):
        if state is not None:
            repo.save(chain, state)
        heads.append(repo.head(chain))
    return base_id, branches, heads


def check_merged(
    repo: statebag.Repository,
    result: statebag.CommitResult,
    target: str,
    branches: list[str],
    heads: list[str],
    expected: dict[str, Any],
) -> None:
    same(expected, repo.load(result.manifest_id))
    assert result.parents == heads
    assert result.parent == heads[0]
    assert result.chain == target
    assert repo.head(target) == result.manifest_id
    assert [repo.head(name) for name in branches] == heads[1:]
    info = repo.info(result.manifest_id)
    assert info.parents == heads
    assert info.parent == heads[0]
    assert info.chain == target
    assert info.seq == result.seq == 1 + max(repo.info(h).seq for h in heads)


def check_refused(
    repo: statebag.Repository,
    target: str,
    branches: list[str],
    paths: list[str],
    absent: list[str],
    strategy: str,
) -> None:
    """The merge raises ConflictError naming every path in ``paths`` (in sorted order) and
    none of ``absent``, and writes nothing."""
    before = repo.stats()
    heads = [repo.head(name) for name in [target, *branches]]
    with pytest.raises(ConflictError) as caught:
        repo.merge(target, branches, strategy=strategy, on_conflict="raise")
    message = str(caught.value)
    where = [message.find(path) for path in sorted(paths)]
    assert -1 not in where, (paths, message)
    assert where == sorted(where), (paths, message)
    for name in absent:
        assert name not in message, (name, message)
    assert [repo.head(name) for name in [target, *branches]] == heads
    assert repo.stats() == before


# -- the table --------------------------------------------------------------------------------

SUBJECT = "subject_field"
KEEP = "kept_field"
SIDE_NAMES = ("target", "branch1", "branch2")


def table_cases() -> Iterator[Any]:
    """Params (base, sides): the subject field under every meaningful combination of actions.

    Every side also sets its own field ``own_<side>``, so each side has a new head even when
    it leaves the subject alone. Modes: ``same`` (every side that sets a value sets the same
    one), ``diff`` (each its own), ``split`` (3 setters: the first differs from the other two).
    """
    for count in (2, 3):
        for present in (True, False):
            actions = ("unchanged", "changed", "removed") if present else ("unchanged", "added")
            for combo in itertools.product(actions, repeat=count):
                setters = [i for i, a in enumerate(combo) if a in ("changed", "added")]
                modes = ["same"]
                if len(setters) >= 2:
                    modes.append("diff")
                if len(setters) == 3:
                    modes.append("split")
                for mode in modes:
                    base = {KEEP: "kept", **({SUBJECT: "base"} if present else {})}
                    sides = []
                    for index, action in enumerate(combo):
                        side = dict(base)
                        side[f"own_{SIDE_NAMES[index]}"] = index
                        if action == "removed":
                            del side[SUBJECT]
                        elif action in ("changed", "added"):
                            if mode == "same":
                                side[SUBJECT] = "new"
                            elif mode == "diff":
                                side[SUBJECT] = f"new-{SIDE_NAMES[index]}"
                            else:
                                side[SUBJECT] = "first" if index == setters[0] else "rest"
                        sides.append(side)
                    label = ",".join(f"{SIDE_NAMES[i]}={a}" for i, a in enumerate(combo))
                    yield pytest.param(base, sides, id=f"{label}-{mode}")


ON_CONFLICT = ("raise", "last_wins", "callable")


@pytest.mark.parametrize("on_conflict", ON_CONFLICT)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("base", "sides"), list(table_cases()))
def test_merge_table(
    repo: statebag.Repository,
    base: dict[str, Any],
    sides: list[dict[str, Any]],
    strategy: str,
    on_conflict: str,
) -> None:
    _, branches, heads = build(repo, base, sides)
    resolver, reference = Resolver(), Resolver()
    given_rule: Any = resolver if on_conflict == "callable" else on_conflict
    model_rule: Any = reference if on_conflict == "callable" else on_conflict
    try:
        expected = model_merge(base, sides, strategy, model_rule)
    except ModelConflict as conflict:
        check_refused(repo, "t", branches, conflict.paths, [KEEP], strategy)
        return
    result = repo.merge("t", branches, strategy=strategy, on_conflict=given_rule)
    check_merged(repo, result, "t", branches, heads, expected)
    same_calls(reference.calls, resolver.calls)


def test_table_covers_conflicts_in_every_strategy_and_rule() -> None:
    """The table is not vacuous: 'raise' refuses many of its cases, and the callable gets 2
    and 3 values, MISSING among them (a removal) and as the base (an added field)."""
    cases = [p.values for p in table_cases()]
    refused = sum(
        1
        for base, sides in cases
        if _raises(lambda b=base, s=sides: model_merge(b, s, "three_way", "raise"))
    )
    assert refused >= 20
    resolver = Resolver()
    for base, sides in cases:
        model_merge(base, sides, "three_way", resolver)
    assert {len(values) for _, _, values in resolver.calls} == {2, 3}
    assert any(MISSING in values for _, _, values in resolver.calls)
    assert any(base is MISSING for _, base, _ in resolver.calls)


def _raises(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except ModelConflict:
        return True
    return False


# -- the callable -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["three_way", "deep_merge"])
def test_callable_gets_field_base_and_values_and_missing_removes(
    repo: statebag.Repository, strategy: str
) -> None:
    base = {"gone": 1, "kept": "k", "edited": "e"}
    target = {"gone": 2, "kept": "k", "new": "t-new", "edited": "t"}
    branch1 = {"kept": "k", "new": "b1-new", "edited": "e"}
    branch2 = {"gone": 3, "kept": "k", "edited": "b2"}
    _, branches, heads = build(repo, base, [target, branch1, branch2])
    resolver = Resolver(drop=frozenset({"gone"}))
    result = repo.merge("t", branches, strategy=strategy, on_conflict=resolver)
    expected_calls = [
        ("edited", "e", ["t", "b2"]),
        ("gone", 1, [2, MISSING, 3]),
        ("new", MISSING, ["t-new", "b1-new"]),
    ]
    same_calls(expected_calls, resolver.calls)
    check_merged(
        repo,
        result,
        "t",
        branches,
        heads,
        {
            "edited": {"field": "edited", "base": "e", "values": ["t", "b2"]},
            "kept": "k",
            "new": {"field": "new", "base": "<missing>", "values": ["t-new", "b1-new"]},
        },
    )


def test_callable_is_not_called_without_conflict(repo: statebag.Repository) -> None:
    _, branches, heads = build(repo, {"a": 1, "b": 1}, [{"a": 2, "b": 1}, {"a": 1, "b": 3}])
    resolver = Resolver()
    result = repo.merge("t", branches, on_conflict=resolver)
    assert resolver.calls == []
    check_merged(repo, result, "t", branches, heads, {"a": 2, "b": 3})


def test_conflict_error_names_every_field_sorted_and_writes_nothing(
    repo: statebag.Repository,
) -> None:
    base = {"gamma": 0, "alpha": 0, "beta": 0, "quiet": 0, "solo": 0}
    target = {"gamma": 1, "alpha": 1, "beta": 1, "quiet": 0, "solo": 0}
    branch = {"gamma": 2, "beta": 2, "quiet": 0, "solo": 5}
    _, branches, _ = build(repo, base, [target, branch])
    check_refused(repo, "t", branches, ["alpha", "beta", "gamma"], ["quiet", "solo"], "three_way")
    assert list(internals.meta(repo).scan("pending/")) == []


# -- canonical comparison ---------------------------------------------------------------------

NAN = float("nan")
# (base, target, branch, merged): 1 != 1.0, True != 1, 0.0 != -0.0, NaN == NaN; top-level
# fields and keys inside a dict that two sides changed (deep_merge merges those key by key).
CANONICAL = [
    pytest.param(
        {"n": 1, "m": 0}, {"n": 1.0, "m": 0}, {"n": 1, "m": 2}, {"n": 1.0, "m": 2}, id="1-vs-1.0"
    ),
    pytest.param(
        {"n": 1, "m": 0}, {"n": 1, "m": 0}, {"n": True, "m": 2}, {"n": True, "m": 2}, id="1-vs-True"
    ),
    pytest.param(
        {"n": 0.0, "m": 0}, {"n": -0.0, "m": 0}, {"n": 0.0, "m": 2}, {"n": -0.0, "m": 2}, id="-0.0"
    ),
    pytest.param(
        {"n": NAN, "m": 0}, {"n": NAN, "m": 1}, {"n": NAN, "m": 0}, {"n": NAN, "m": 1}, id="nan"
    ),
]


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
@pytest.mark.parametrize(("base", "target", "branch", "merged"), CANONICAL)
def test_changes_are_judged_by_canonical_encoding(
    repo: statebag.Repository,
    base: dict[str, Any],
    target: dict[str, Any],
    branch: dict[str, Any],
    merged: dict[str, Any],
    nested: bool,
) -> None:
    strategy = "three_way"
    if nested:
        # Each side also adds a key of its own to "cfg", so deep_merge merges it key by key
        # and judges "n" and "m" inside it.
        base, target, branch, merged = (
            {"cfg": {**state, **extra}}
            for state, extra in (
                (base, {}),
                (target, {"t_side": 1}),
                (branch, {"b_side": 1}),
                (merged, {"t_side": 1, "b_side": 1}),
            )
        )
        strategy = "deep_merge"
    sides = [target, branch]
    assert model_merge(base, sides, strategy, "raise") == merged
    _, branches, heads = build(repo, base, sides)
    result = repo.merge("t", branches, strategy=strategy)
    check_merged(repo, result, "t", branches, heads, merged)


# -- deep_merge -------------------------------------------------------------------------------


def test_deep_merge_merges_nested_keys_changed_on_different_sides(
    repo: statebag.Repository,
) -> None:
    base = {"cfg": {"a": 1, "b": 1, "gone": 0, "c": {"x": 1, "y": 1}}, "untouched_field": 0}
    target = {"cfg": {"a": 2, "b": 1, "gone": 0, "c": {"x": 2, "y": 1}}, "untouched_field": 0}
    branch1 = {"cfg": {"a": 1, "b": 3, "c": {"x": 1, "y": 3}, "d": 4}, "untouched_field": 0}
    branch2 = {
        "cfg": {"a": 1, "b": 1, "gone": 0, "c": {"x": 1, "y": 1, "z": [1]}},
        "untouched_field": 0,
    }
    _, branches, heads = build(repo, base, [target, branch1, branch2])
    sides = [target, branch1, branch2]
    with pytest.raises(ModelConflict):
        model_merge(base, sides, "three_way", "raise")
    check_refused(repo, "t", branches, ["cfg"], ["cfg.", "untouched_field"], "three_way")
    result = repo.merge("t", branches, strategy="deep_merge")
    expected = {
        "cfg": {"a": 2, "b": 3, "c": {"x": 2, "y": 3, "z": [1]}, "d": 4},
        "untouched_field": 0,
    }
    assert model_merge(base, sides, "deep_merge", "raise") == expected
    check_merged(repo, result, "t", branches, heads, expected)


def test_deep_merge_concatenates_appends_in_side_order(repo: statebag.Repository) -> None:
    base = {"log": ["a", "b"], "cfg": {"items": [1]}}
    target = {"log": ["a", "b", "t1", "t2"], "cfg": {"items": [1, "t"]}}
    branch1 = {"log": ["a", "b", "b1"], "cfg": {"items": [1]}}
    branch2 = {"log": ["a", "b", "b2", {"k": "v"}], "cfg": {"items": [1, "b2"]}}
    _, branches, heads = build(repo, base, [target, branch1, branch2])
    result = repo.merge("t", branches, strategy="deep_merge")
    expected = {
        "log": ["a", "b", "t1", "t2", "b1", "b2", {"k": "v"}],
        "cfg": {"items": [1, "t", "b2"]},
    }
    assert model_merge(base, [target, branch1, branch2], "deep_merge", "raise") == expected
    check_merged(repo, result, "t", branches, heads, expected)


def test_deep_merge_appends_count_once_per_side(repo: statebag.Repository) -> None:
    """The contract read literally: two sides with the same outcome give it once, but once a
    third side differs, each changed side's appended elements count, equal ones included."""
    base = {"log": [1]}
    _, branches, heads = build(repo, base, [{"log": [1, "x"]}, {"log": [1, "x"]}])
    result = repo.merge("t", branches, strategy="deep_merge")
    check_merged(repo, result, "t", branches, heads, {"log": [1, "x"]})
    sides = [{"log": [1, "x"]}, {"log": [1, "x"]}, {"log": [1, "y"]}]
    _, branches, heads = build(repo, base, sides, target="u")
    result = repo.merge("u", branches, strategy="deep_merge")
    check_merged(repo, result, "u", branches, heads, {"log": [1, "x", "x", "y"]})
    assert model_merge(base, sides, "deep_merge", "raise") == {"log": [1, "x", "x", "y"]}


def test_deep_merge_lists_added_on_both_sides_merge_against_empty(
    repo: statebag.Repository,
) -> None:
    base = {"n": 0}
    target = {"n": 0, "log": ["t"], "cfg": {"a": 1}}
    branch = {"n": 0, "log": ["b", "b"], "cfg": {"b": 2}}
    _, branches, heads = build(repo, base, [target, branch])
    result = repo.merge("t", branches, strategy="deep_merge")
    check_merged(
        repo,
        result,
        "t",
        branches,
        heads,
        {"n": 0, "log": ["t", "b", "b"], "cfg": {"a": 1, "b": 2}},
    )


@pytest.mark.parametrize(
    ("target_cfg", "branch_cfg", "path"),
    [
        # a list edit that is not an append (on one side; the other appends)
        ({"items": [1, 2, 3], "k": 0}, {"items": [9, 2], "k": 0}, "cfg.items"),
        ({"items": [1, 2, 3], "k": 0}, {"items": [1], "k": 0}, "cfg.items"),
        # a scalar changed both ways
        ({"items": [1, 2], "k": 1}, {"items": [1, 2], "k": 2}, "cfg.k"),
        # a type mismatch
        ({"items": [1, 2, 3], "k": 0}, {"items": {"x": 1}, "k": 0}, "cfg.items"),
        # removal against an edit
        ({"items": [1, 2, 3], "k": 0}, {"k": 0}, "cfg.items"),
        # a key that is not an identifier
        (
            {"items": [1, 2], "k": 0, "a key": 1},
            {"items": [1, 2], "k": 0, "a key": 2},
            'cfg["a key"]',
        ),
    ],
)
def test_deep_merge_conflicts_name_the_nested_path(
    repo: statebag.Repository, target_cfg: dict[str, Any], branch_cfg: dict[str, Any], path: str
) -> None:
    base = {"cfg": {"items": [1, 2], "k": 0}, "other": {"x": 1}}
    target = {"cfg": {**target_cfg, "t_only": 1}, "other": {"x": 1}}
    branch = {"cfg": {**branch_cfg, "b_only": 2}, "other": {"x": 2}}
    sides = [target, branch]
    _, branches, heads = build(repo, base, sides)
    with pytest.raises(ModelConflict) as caught:
        model_merge(base, sides, "deep_merge", "raise")
    assert caught.value.paths == [path]
    check_refused(repo, "t", branches, [path], ["other", "t_only", "b_only"], "deep_merge")
    # last_wins settles only that path; the other keys still merge.
    expected = model_merge(base, sides, "deep_merge", "last_wins")
    assert expected["cfg"]["t_only"] == 1 and expected["cfg"]["b_only"] == 2
    result = repo.merge("t", branches, strategy="deep_merge", on_conflict="last_wins")
    check_merged(repo, result, "t", branches, heads, expected)


def test_deep_merge_callable_gets_the_nested_path(repo: statebag.Repository) -> None:
    base = {"cfg": {"items": [1, 2], "k": 0, "gone": "g"}}
    target = {"cfg": {"items": [0], "k": 1, "gone": "t", "t": 1}}
    branch = {"cfg": {"items": [1, 2, 3], "k": 2, "b": 1}}
    _, branches, heads = build(repo, base, [target, branch])
    resolver = Resolver(drop=frozenset({"cfg.k"}))
    result = repo.merge("t", branches, strategy="deep_merge", on_conflict=resolver)
    same_calls(
        [
            ("cfg.gone", "g", ["t", MISSING]),
            ("cfg.items", [1, 2], [[0], [1, 2, 3]]),
            ("cfg.k", 0, [1, 2]),
        ],
        resolver.calls,
    )
    expected = {
        "cfg": {
            "b": 1,
            "gone": {"field": "cfg.gone", "base": "g", "values": ["t", "<missing>"]},
            "items": {"field": "cfg.items", "base": [1, 2], "values": [[0], [1, 2, 3]]},
            "t": 1,
        }
    }
    check_merged(repo, result, "t", branches, heads, expected)


# -- collect ----------------------------------------------------------------------------------


def test_collect_of_a_field_changed_on_one_side_is_a_one_element_list(
    repo: statebag.Repository,
) -> None:
    base = {"a": 1, "b": [1], "c": "same"}
    _, branches, heads = build(repo, base, [None, {"a": 1, "b": [1, 2], "c": "same"}])
    result = repo.merge("t", branches, strategy="collect")
    check_merged(repo, result, "t", branches, heads, {"a": 1, "b": [[1, 2]], "c": "same"})


# -- bases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unrelated_chains_merge_against_an_empty_base(
    repo: statebag.Repository, strategy: str
) -> None:
    repo.save("t", {"old": 0})
    target = {"both": "t", "agreed_field": 1, "t_only": [1]}
    other = {"both": "o", "agreed_field": 1, "o_only": {"x": 1}}
    t_head = repo.save("t", target).manifest_id
    repo.save("other", {"older": 0})
    o_head = repo.save("other", other).manifest_id
    expected = model_merge({}, [target, other], strategy, "last_wins")
    if strategy in ("three_way", "deep_merge"):
        check_refused(
            repo, "t", ["other"], ["both"], ["agreed_field", "t_only", "o_only"], strategy
        )
    result = repo.merge("t", ["other"], strategy=strategy, on_conflict="last_wins")
    check_merged(repo, result, "t", ["other"], [t_head, o_head], expected)
    if strategy == "collect":
        assert expected == {
            "both": ["t", "o"],
            "agreed_field": [1, 1],
            "t_only": [[1]],
            "o_only": [{"x": 1}],
        }


def test_base_is_the_newest_common_ancestor(repo: statebag.Repository) -> None:
    """After a first merge, the next merge of the same branch works against the branch head
    that was merged, not the fork point: a field only the target changed since then is the
    target's, not a conflict."""
    repo.save("t", {"x": 0, "y": 0})
    fork_point = repo.save("t", {"x": 0, "y": 0, "z": 0}).manifest_id
    assert repo.fork(fork_point, "b") == fork_point  # from a manifest id
    repo.save("b", {"x": 1, "y": 0, "z": 0})
    repo.save("t", {"x": 0, "y": 0, "z": 1})
    first = repo.merge("t", ["b"])
    assert repo.load(first.manifest_id) == {"x": 1, "y": 0, "z": 1}
    b_head = repo.save("b", {"x": 1, "y": 2, "z": 0}).manifest_id
    t_head = repo.save("t", {"x": 5, "y": 0, "z": 1}).manifest_id
    second = repo.merge("t", ["b"])
    check_merged(repo, second, "t", ["b"], [t_head, b_head], {"x": 5, "y": 2, "z": 1})


def test_a_change_reverted_is_no_change(repo: statebag.Repository) -> None:
    repo.save("t", {"x": 0})
    repo.fork("t", "b")
    repo.save("t", {"x": 1})
    t_head = repo.save("t", {"x": 0}).manifest_id  # back to the base value
    b_head = repo.save("b", {"x": 2}).manifest_id
    result = repo.merge("t", ["b"])
    check_merged(repo, result, "t", ["b"], [t_head, b_head], {"x": 2})


@pytest.mark.parametrize("idle", [0, 1])
def test_merge_when_the_target_or_a_branch_saved_nothing(
    repo: statebag.Repository, idle: int
) -> None:
    base = {"x": 0, "y": 0, "z": 0}
    sides: list[dict[str, Any] | None] = [
        {"x": 1, "y": 0, "z": 0},
        {**base, "y": 2},
        {**base, "z": 3},
    ]
    sides[idle] = None
    base_id, branches, heads = build(repo, base, sides)
    assert heads[idle] == base_id and len(set(heads)) == 3
    result = repo.merge("t", branches)
    expected = {"x": 0 if idle == 0 else 1, "y": 0 if idle == 1 else 2, "z": 3}
    check_merged(repo, result, "t", branches, heads, expected)


# -- what a merge writes ----------------------------------------------------------------------


def fields_nodes(repo: statebag.Repository, manifest_id: str) -> set[str]:
    """The ids of the fields-table nodes of a version (not the values' trees)."""
    found: set[str] = set()
    frontier = [internals.manifest(repo, manifest_id).root]
    while frontier:
        node = frontier.pop()
        found.add(node.hex())
        level, rows = dag.parse_fields_node(
            internals.reader(repo).read([node])[node], node_id=node.hex()
        )
        if level:
            frontier.extend(child for _, child, _ in rows)
    return found


@pytest.mark.parametrize("strategy", STRATEGIES[:3])
def test_a_merge_writes_only_fields_table_nodes_for_fields_taken_from_a_side(
    repo: statebag.Repository, strategy: str
) -> None:
    """A 1 MB field changed on the branch only and a 300 kB one on the target only: the
    merge stores one new fields table and nothing else, reads no value's chunks and carries
    both trees over by their roots, where the branch's save wrote dozens of nodes."""
    rng = random.Random(6)
    base = {"big": rng.randbytes(2**20), "other": rng.randbytes(300_000), "n": 0}
    base_id = repo.save("t", base).manifest_id
    repo.fork("t", "b")
    branch = {**base, "big": rng.randbytes(2**20)}
    branch_save = repo.save("b", branch)
    target = {**base, "other": rng.randbytes(300_000), "n": 1}
    target_save = repo.save("t", target)
    assert branch_save.nodes_written >= 16
    # Count the nodes the merge reads, with every in-memory cache of nodes emptied.
    internals.reader(repo).clear_caches(tables=False)
    internals.reader(repo).clear_caches(structs=False)
    internals.catalog(repo).clear_cache()
    reads: list[bytes] = []
    original = internals.reader(repo).read

    def counting(ids: Any, **kwargs: Any) -> Any:
        reads.extend(ids)
        return original(ids, **kwargs)

    internals.reader(repo).read = counting  # type: ignore[method-assign]
    result = repo.merge("t", ["b"], strategy=strategy)
    internals.reader(repo).read = original  # type: ignore[method-assign]
    merged = {"big": branch["big"], "other": target["other"], "n": 1}
    check_merged(
        repo, result, "t", ["b"], [target_save.manifest_id, branch_save.manifest_id], merged
    )
    assert result.nodes_written == len(result.node_ids) == 1 < branch_save.nodes_written
    assert set(result.node_ids) <= fields_nodes(repo, result.manifest_id)
    assert result.nodes_reused == 2  # the roots of "big" and "other", carried over unread
    assert result.bytes_new_raw < 1000
    assert result.bytes_logical == sum(len(codec.encode(v)) for v in merged.values())
    # One fields table per version the merge compares (base, target, branch), and the
    # index nodes of each tree it carries over (whose length it checks before counting it in
    # the version's logical bytes); no chunk.
    tables = {internals.manifest(repo, i).root for i in (base_id, *result.parents)}
    carried = internals.reader(repo).fields_table(internals.manifest(repo, result.manifest_id).root)
    trees = [entry for entry in carried.entries.values() if getattr(entry, "level", 0) >= 1]
    assert len(trees) == 2
    index_nodes = {i for tree in trees for i in internals.reader(repo).tree_nodes(tree)[1]}
    chunks = {i for tree in trees for i, _ in internals.reader(repo).leaves(tree)}
    assert set(reads) <= tables | index_nodes, len(reads)
    assert not set(reads) & chunks
    assert recount(repo)[0] == stored_counts(repo)
    assert repo.verify().ok and repo.audit().ok


# -- bad input --------------------------------------------------------------------------------


def test_bad_merge_arguments_write_nothing(repo: statebag.Repository) -> None:
    build(repo, {"x": 0}, [{"x": 1}, {"x": 2}])
    before = repo.stats()
    head = repo.head("t")
    bad: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"branches": ["t/branch-0"], "strategy": "nope"}, InvalidInputError),
        ({"branches": ["t/branch-0"], "on_conflict": "nope"}, InvalidInputError),
        ({"branches": []}, InvalidInputError),
        ({"branches": ["t/branch-0", "t/branch-0"]}, InvalidInputError),
        ({"branches": ["t"]}, InvalidInputError),
        ({"branches": ["missing"]}, NotFoundError),
        ({"branches": ["t/branch-0"], "target": "missing"}, NotFoundError),
    ]
    for kwargs, error in bad:
        target = kwargs.pop("target", "t")
        branches = kwargs.pop("branches")
        with pytest.raises(error):
            repo.merge(target, branches, **kwargs)
    assert repo.head("t") == head
    assert repo.stats() == before


def test_fork_refusals(repo: statebag.Repository) -> None:
    first = repo.save("t", {"x": 0}).manifest_id
    with pytest.raises(InvalidInputError):
        repo.fork("t", "a" * 64)
    with pytest.raises(NotFoundError):
        repo.fork("missing", "n")
    with pytest.raises(NotFoundError):
        repo.fork("f" * 64, "n")
    assert repo.fork("t", "n") == first
    with pytest.raises(ConflictError):
        repo.fork("t", "n")
    with pytest.raises(ConflictError):
        repo.fork("t", "t")
    assert repo.stats().manifests == 1
    assert repo.load_latest("n") == {"x": 0}
    assert repo.save("n", {"x": 1}).parent == first


# -- property ---------------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d")
scalar = st.sampled_from([0, 1, 1.0, -0.0, 0.0, math.nan, "s", "t", True, None, b"b"])
small = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3)
    ),
    max_leaves=6,
)
state_of = st.dictionaries(st.sampled_from(NAMES), small, max_size=4)


@st.composite
def derived(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A side: the base with some fields kept, set, removed, appended to or edited inside."""
    side: dict[str, Any] = {}
    for name in NAMES:
        value = base.get(name, MISSING)
        action = draw(st.sampled_from(["keep", "keep", "set", "remove", "edit"]))
        if action == "set":
            value = draw(small)
        elif action == "remove":
            value = MISSING
        elif action == "edit":
            if type(value) is list:
                value = value + draw(st.lists(scalar, min_size=1, max_size=2))
            elif type(value) is dict:
                value = dict(value)
                key = draw(st.sampled_from(["x", "y", "z"]))
                if draw(st.booleans()):
                    value.pop(key, None)
                else:
                    value[key] = draw(small)
            else:
                value = draw(small)
        if value is not MISSING:
            side[name] = value
    return side


@st.composite
def merges(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base = draw(state_of)
    count = draw(st.integers(min_value=2, max_value=3))
    return base, [draw(derived(base)) for _ in range(count)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=merges())
def test_merge_matches_the_model(
    strategy: str, case: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    base, sides = case
    expected = model_merge(base, sides, strategy, "last_wins")
    with statebag.open(f"memory://{uuid.uuid4().hex}") as repo:
        _, branches, heads = build(repo, base, sides)
        result = repo.merge("t", branches, strategy=strategy, on_conflict="last_wins")
        check_merged(repo, result, "t", branches, heads, expected)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def test_deep_merge_of_a_conflict_at_the_nesting_limit_from_deep_in_the_stack() -> None:
    """Dicts as deep as values may be (the nesting limit, 512 levels) merge key by key
    without recursion: also when the caller's stack is already deep."""
    depth = codec.NESTING_LIMIT - 1  # the leaf list is the last level
    base = _nested(depth, [0])
    target, branch = _nested(depth, [0, 1]), _nested(depth, [0, 2])

    def merged_at(frames: int) -> Any:
        if frames:
            return merged_at(frames - 1)
        return merging.deep_merge("f", base, [target, branch], "raise", merging.Conflicts())

    assert merged_at(500) == _nested(depth, [0, 1, 2])
    conflicts = merging.Conflicts()
    merging.deep_merge("f", base, [_nested(depth, 1), _nested(depth, 2)], "raise", conflicts)
    assert conflicts.paths == ["f" + ".k" * depth]
