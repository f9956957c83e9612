"""StateBag: assignment copies, tracked values behave as the plain containers they are, and
every save of a bag stores what the bag holds.

The state machine drives a bag and a model (plain dicts and lists, where every assignment
stores a copy, as the bag documents) through the same operations: assigning, aliasing one
place to another, nesting tracked values in containers, mutating through handles taken
earlier (some of them since detached), deleting, saving and reloading. After every step
the bag equals the model and every field the bag does not call dirty equals the version it
would carry it over from; every saved version loads to the model's state at its save.
"""

from __future__ import annotations

import copy
import json
import pickle
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import statebag
from statebag import InvalidInputError, StateBag, codec
from statebag.bag import TrackedDict, TrackedList


@pytest.fixture
def repo() -> Iterator[statebag.Repository]:
    with statebag.open(f"memory://{uuid.uuid4().hex}", inline_max=16) as repository:
        yield repository


def plain(value: Any) -> Any:
    """A deep copy of ``value`` as a bag stores it (tuples as lists), as plain containers."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in dict.items(value)}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


# -- the cases of issue 21 ------------------------------------------------------------------


def test_an_alias_of_a_field_is_a_copy(repo: statebag.Repository) -> None:
    repo.save("c", {"x": [1]})
    bag = repo.load_bag("c")
    bag["y"] = bag["x"]
    repo.save("c", bag)
    bag["y"].append(2)
    result = repo.save("c", bag)
    assert bag.to_dict() == {"x": [1], "y": [1, 2]}
    assert repo.load(result.manifest_id) == {"x": [1], "y": [1, 2]}


def test_an_alias_of_a_nested_value_is_a_copy(repo: statebag.Repository) -> None:
    repo.save("c", {"d": {"k": [1]}})
    bag = repo.load_bag("c")
    bag["e"] = bag["d"]["k"]
    repo.save("c", bag)
    bag["e"].append(2)
    bag["d"]["k"].append(3)
    assert bag.dirty == {"d", "e"}
    result = repo.save("c", bag)
    assert repo.load(result.manifest_id) == {"d": {"k": [1, 3]}, "e": [1, 2]}


def test_tracked_values_are_their_plain_containers(repo: statebag.Repository) -> None:
    repo.save("c", {"x": [1, {"b": b"\x00"}], "d": {"k": [1], "t": "s"}})
    bag = repo.load_bag("c")
    payload = {"list": bag["x"], "dict": bag["d"], "both": [bag["d"]["k"], (bag["x"],)]}
    expected = {
        "list": [1, {"b": b"\x00"}],
        "dict": {"k": [1], "t": "s"},
        "both": [[1], ([1, {"b": b"\x00"}],)],
    }
    assert isinstance(bag["x"], list) and isinstance(bag["d"], dict)
    assert codec.encode(payload) == codec.encode(expected)
    assert json.dumps(bag["d"]) == json.dumps({"k": [1], "t": "s"})
    assert json.dumps(payload, default=repr) == json.dumps(expected, default=repr)
    assert json.dumps(payload, default=repr, indent=1) == json.dumps(
        expected, default=repr, indent=1
    )
    result = repo.save("other", payload)
    assert repo.load(result.manifest_id) == plain(expected)
    assert pickle.loads(pickle.dumps(payload)) == expected
    deep = copy.deepcopy(payload)
    assert deep == expected and type(deep["dict"]) is dict and type(deep["both"][0]) is list
    assert type(copy.copy(bag["x"])) is list
    assert not bag.dirty  # reading, encoding and copying change nothing


def test_a_tracked_value_in_a_plain_container_assigned_to_a_field(
    repo: statebag.Repository,
) -> None:
    repo.save("c", {"x": [1]})
    bag = repo.load_bag("c")
    bag["w"] = {"inner": bag["x"], "pair": (bag["x"], [bag["x"]])}
    bag["w"]["inner"].append(2)
    bag["x"].append(3)
    result = repo.save("c", bag)
    assert repo.load(result.manifest_id) == {
        "w": {"inner": [1, 2], "pair": [[1], [[1]]]},
        "x": [1, 3],
    }


def test_assignment_copies_what_the_caller_keeps() -> None:
    value = {"k": [1]}
    bag = StateBag({"a": value})
    bag["b"] = value
    bag["c"] = [value, value]
    value["k"].append(2)
    assert bag.to_dict() == {"a": {"k": [1]}, "b": {"k": [1]}, "c": [{"k": [1]}, {"k": [1]}]}
    bag["c"][0]["k"].append(3)
    assert bag["c"] == [{"k": [1, 3]}, {"k": [1]}]
    assert type(StateBag({"o": OrderedDict(a=1)}).data["o"]) is dict
    assert StateBag({"t": (1, [2])}).data["t"] == [1, [2]]


def test_reassigning_a_place_its_own_value_keeps_it() -> None:
    bag = StateBag({"m": [1], "d": {"k": [1]}})
    messages = bag["m"]
    bag["m"] = messages
    messages.append(2)
    inner = bag["d"]["k"]
    bag["d"]["k"] = inner
    inner.append(2)
    bag["m"] += [3]
    assert bag.to_dict() == {"m": [1, 2, 3], "d": {"k": [1, 2]}}
    assert bag.dirty == {"m", "d"}


def test_every_reader_hands_out_tracked_containers() -> None:
    bag = StateBag({"l": [[0], {"k": 0}, [1]], "d": {"a": [0], "b": {"c": [0]}}, "new": [0]})
    readers: list[Any] = [
        lambda: bag["l"][0],
        lambda: next(iter(bag["l"])),
        lambda: next(reversed(bag["l"])),
        lambda: bag["l"][0:1][0],
        lambda: bag["l"].copy()[0],
        lambda: (bag["l"] + [])[0],
        lambda: ([] + bag["l"])[0],
        lambda: (bag["l"] * 1)[0],
        lambda: bag["d"]["a"],
        lambda: bag["d"].get("a"),
        lambda: next(iter(bag["d"].values())),
        lambda: next(iter(bag["d"].items()))[1],
        lambda: dict(bag["d"])["a"],
        lambda: {**bag["d"]}["a"],
        lambda: (bag["d"] | {})["a"],
        lambda: ({} | bag["d"])["a"],
        lambda: bag["d"].copy()["a"],
        lambda: bag["d"].setdefault("a", None),
        lambda: bag.get("l"),
        lambda: bag.setdefault("new", []),
    ]
    for number, read in enumerate(readers):
        bag.mark_saved("0" * 64)
        handle = read()
        assert isinstance(handle, (TrackedList, TrackedDict)), number
        assert not bag.dirty, number
        if isinstance(handle, list):
            handle.append(number)
        else:
            handle[f"n{number}"] = number
        assert len(bag.dirty) == 1, number


def test_what_is_taken_out_is_handed_out_tracked() -> None:
    bag = StateBag({"l": [[0], {"k": [0]}], "d": {"a": [0], "b": {"c": [0]}}})
    source = bag["d"]["b"]["c"]
    taken = [bag["l"].pop(), bag["l"].pop(0), bag["d"].pop("a"), bag["d"].popitem()[1]]
    for number, value in enumerate(taken):
        assert isinstance(value, (TrackedList, TrackedDict)), number
        # Assigning into it copies, as into anything a bag hands out.
        if isinstance(value, list):
            value.append(source)
            value[-1].append(number)
        else:
            value["new"] = source
            value["new"].append(number)
    assert source == [0]


def test_every_mutation_marks_its_field() -> None:
    def lists() -> list[Any]:
        return [
            lambda v: v.append(1),
            lambda v: v.extend([1]),
            lambda v: v.insert(0, 1),
            lambda v: v.pop(),
            lambda v: v.remove(5),
            lambda v: v.clear(),
            lambda v: v.sort(),
            lambda v: v.reverse(),
            lambda v: v.__setitem__(0, 9),
            lambda v: v.__setitem__(slice(0, 1), [9, 9]),
            lambda v: v.__delitem__(0),
            lambda v: v.__iadd__([1]),
            lambda v: v.__imul__(2),
        ]

    def dicts() -> list[Any]:
        return [
            lambda v: v.__setitem__("k", 9),
            lambda v: v.__delitem__("k"),
            lambda v: v.pop("k"),
            lambda v: v.popitem(),
            lambda v: v.clear(),
            lambda v: v.update(k=9),
            lambda v: v.setdefault("new", 1),
            lambda v: v.__ior__({"k": 9}),
        ]

    for number, change in enumerate(lists()):
        bag = StateBag({"x": {"l": [5, 3]}})
        change(bag["x"]["l"])
        assert bag.dirty == {"x"}, number
    for number, change in enumerate(dicts()):
        bag = StateBag({"x": [{"k": 5}]})
        change(bag["x"][0])
        assert bag.dirty == {"x"}, number


def test_repetition_copies_the_items() -> None:
    bag = StateBag({"l": [[1]]})
    bag["l"] *= 2
    bag["l"][0].append(2)
    assert bag["l"] == [[1, 2], [1]]


def test_a_cycle_is_refused_naming_the_field() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    bag = StateBag({"a": [0]})
    with pytest.raises(InvalidInputError, match="cycle") as caught:
        bag["x"] = {"deep": loop}
    assert caught.value.path == "x"
    with pytest.raises(InvalidInputError, match="cycle") as caught:
        bag["a"].append(loop)
    assert caught.value.path == "a"
    assert bag.to_dict() == {"a": [0]} and not bag.dirty


def test_a_deep_value_is_copied_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    bag = StateBag({"deep": deep})
    probe = bag.data["deep"]
    for _ in range(5000):
        assert probe is not deep
        probe, deep = probe[0], deep[0]
    assert probe == "leaf"


# -- the state machine --------------------------------------------------------------------

FIELDS = ("a", "b", "c", "d")
KEYS = ("k", "l", "m")
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.text("xyz", max_size=20), st.binary(max_size=4)
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ),
    max_leaves=8,
)
Pair = tuple[Any, Any]  # the same container seen in the bag and in the model


def assign(model: Any, place: Any, value: Any) -> None:
    """The model's assignment: a copy, unless the place already holds the object."""
    if isinstance(model, dict) and model.get(place, object()) is value:
        return
    if isinstance(model, list) and model[place] is value:
        return
    model[place] = plain(value)


class BagMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.repo = statebag.open(f"memory://{uuid.uuid4().hex}", inline_max=16)
        self.bag = StateBag()
        self.model: dict[str, Any] = {}
        self.handles: list[Pair] = []
        self.saved: list[tuple[str, dict[str, Any]]] = []

    def teardown(self) -> None:
        for manifest_id, state in self.saved:
            assert self.repo.load(manifest_id) == state
        self.repo.close()

    def pick(self, data: st.DataObject, label: str) -> Pair:
        return data.draw(st.sampled_from(self.handles), label=label)

    def source(self, data: st.DataObject) -> Pair:
        """A value to assign: a new one, or a handle (tracked in the bag) from earlier."""
        if self.handles and data.draw(st.booleans(), label="from a handle"):
            return self.pick(data, "source")
        value = data.draw(values, label="value")
        return value, value

    # -- assignment, aliasing, nesting ------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(FIELDS))
    def assign_field(self, data: st.DataObject, name: str) -> None:
        given, modelled = self.source(data)
        self.bag[name] = given
        assign(self.model, name, modelled)
        if given is modelled and isinstance(given, list):
            given.append("after")  # the caller's own new value: the bag holds a copy

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=st.sampled_from(FIELDS))
    def alias_field(self, data: st.DataObject, name: str) -> None:
        other = data.draw(st.sampled_from(sorted(self.model)), label="other")
        self.bag[name] = self.bag[other]
        assign(self.model, name, self.model[other])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def take_handle(self, data: st.DataObject) -> None:
        """Walk into a field and keep the containers on the way (bag["d"]["k"] and so on)."""
        name = data.draw(st.sampled_from(sorted(self.model)), label="field")
        inside, modelled = self.bag[name], self.model[name]
        while isinstance(modelled, (dict, list)):
            self.handles.append((inside, modelled))
            if not modelled or not data.draw(st.booleans(), label="deeper"):
                return
            if isinstance(modelled, dict):
                step: Any = data.draw(st.sampled_from(sorted(modelled)), label="key")
            else:
                step = data.draw(st.integers(0, len(modelled) - 1), label="index")
            inside, modelled = inside[step], modelled[step]

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), name=st.sampled_from(FIELDS))
    def nest_in_plain_containers(self, data: st.DataObject, name: str) -> None:
        inside, modelled = self.pick(data, "handle")
        given = {"k": inside, "l": [inside, (inside,)]}
        expected = {"k": modelled, "l": [modelled, (modelled,)]}
        assert codec.encode(given) == codec.encode(expected)
        assert json.dumps(given, default=repr, sort_keys=True) == json.dumps(
            expected, default=repr, sort_keys=True
        )
        self.bag[name] = given
        assign(self.model, name, expected)

    # -- changes through a handle ------------------------------------------------------------

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def change_a_list(self, data: st.DataObject) -> None:
        lists = [pair for pair in self.handles if isinstance(pair[1], list)]
        if not lists:
            return
        inside, modelled = data.draw(st.sampled_from(lists), label="list")
        given, value = self.source(data)
        operations = ["append", "extend", "insert", "iadd", "imul", "reverse", "sort", "clear"]
        if modelled:
            operations += ["setitem", "delitem", "pop", "slice"]
        operation = data.draw(st.sampled_from(operations), label="operation")
        if operation == "append":
            inside.append(given)
            modelled.append(plain(value))
        elif operation == "extend":
            inside.extend([given, given])
            modelled.extend([plain(value), plain(value)])
        elif operation == "insert":
            inside.insert(0, given)
            modelled.insert(0, plain(value))
        elif operation == "iadd":
            inside += [given]
            modelled += [plain(value)]
        elif operation == "imul":
            inside *= 2
            modelled[:] = modelled + plain(modelled)
        elif operation == "reverse":
            inside.reverse()
            modelled.reverse()
        elif operation == "sort":
            inside.sort(key=repr)
            modelled.sort(key=repr)
        elif operation == "clear":
            inside.clear()
            modelled.clear()
        elif operation == "setitem":
            position = data.draw(st.integers(0, len(modelled) - 1), label="index")
            inside[position] = given
            assign(modelled, position, value)
        elif operation == "delitem":
            del inside[0]
            del modelled[0]
        elif operation == "pop":
            self.handles.append((inside.pop(), modelled.pop()))  # detached from now on
        else:
            inside[:1] = [given]
            modelled[:1] = [plain(value)]

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def change_a_dict(self, data: st.DataObject, key: str) -> None:
        dicts = [pair for pair in self.handles if isinstance(pair[1], dict)]
        if not dicts:
            return
        inside, modelled = data.draw(st.sampled_from(dicts), label="dict")
        given, value = self.source(data)
        operations = ["setitem", "update", "ior", "setdefault", "clear"]
        if key in modelled:
            operations += ["delitem", "pop"]
        operation = data.draw(st.sampled_from(operations), label="operation")
        if operation == "setitem":
            inside[key] = given
            assign(modelled, key, value)
        elif operation == "update":
            inside.update({key: given})
            modelled[key] = plain(value)
        elif operation == "ior":
            inside |= {key: given}
            modelled[key] = plain(value)
        elif operation == "setdefault":
            got = inside.setdefault(key, given)
            if key not in modelled:
                modelled[key] = plain(value)
            if isinstance(modelled[key], (dict, list)):
                self.handles.append((got, modelled[key]))
        elif operation == "clear":
            inside.clear()
            modelled.clear()
        elif operation == "delitem":
            del inside[key]
            del modelled[key]
        else:
            self.handles.append((inside.pop(key), modelled.pop(key)))

    # -- deletion, saves, reloads ------------------------------------------------------------

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_field(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)), label="field")
        del self.bag[name]
        del self.model[name]

    @rule()
    def save(self) -> None:
        result = self.repo.save("c", self.bag)
        assert not self.bag.dirty and self.bag.base == result.manifest_id
        self.saved.append((result.manifest_id, plain(self.model)))
        assert self.repo.load(result.manifest_id) == self.model

    @precondition(lambda self: self.saved)
    @rule()
    def reload(self) -> None:
        # Handles of the old bag stay in the list: changing them must change nothing here.
        self.bag = self.repo.load_bag("c")
        self.model = plain(self.saved[-1][1])

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def save_another_dict(self, data: st.DataObject) -> None:
        inside, modelled = self.pick(data, "handle")
        result = self.repo.save("other", {"v": inside, "w": [inside]})
        assert self.repo.load(result.manifest_id) == {"v": modelled, "w": [modelled]}

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def bag_is_the_model(self) -> None:
        assert self.bag == self.model

    @invariant()
    def clean_fields_are_the_base_versions(self) -> None:
        """What a save carries over unread (the fields not dirty) is what the bag holds."""
        if self.bag.base is None:
            return
        base = next(state for mid, state in reversed(self.saved) if mid == self.bag.base)
        for name in (set(base) | set(self.model)) - self.bag.dirty:
            assert (name in self.model) == (name in base), name
            assert self.model.get(name) == base.get(name), name


TestBagMachine = BagMachine.TestCase
TestBagMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
