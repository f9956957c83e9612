"""StateBag: a dict-like state that records which top-level fields changed.

A save costs what changed: given a ``StateBag``, :meth:`Repository.save` re-encodes only the
dirty fields and carries the others over from the version the bag was loaded from or last
saved as, without reading or hashing them.

Dirty tracking covers nested mutation made through the bag: ``bag["messages"].append(m)``
and ``bag["config"]["retries"] = 3`` mark ``messages`` and ``config``, because a list or
dict read out of the bag is a :class:`TrackedList` or :class:`TrackedDict`: a ``list`` or
``dict`` subclass that *is* the stored object (so ``json.dumps``, ``codec.encode``, a save
of another dict and ``isinstance`` treat it as the plain container it holds) and that marks
its top-level field dirty when it changes. Whatever a tracked container hands out (by
indexing, iteration, ``values()``, ``items()``, ``get``, slicing, ``copy()``, ``pop``) is
tracked in turn.

**Assignment copies.** Assigning a value anywhere in a bag (a field, a key or an item of a
container in it, ``append``, ``extend``, ``update``, ``setdefault``, ``+=`` ...) stores a
copy of every dict and list in the value, tracked or not, as a load would return it: tuples
become lists, dict and list subclasses plain ones (other values, bytes and bytearray
included, are stored as they are). So no mutable container is ever shared by two places of a
bag, nor by a bag and its caller: ``bag["y"] = bag["x"]`` and ``bag["e"] = bag["d"]["k"]``
give ``y`` and ``e`` values of their own, a change made through one place changes that place
only, and the dirty set is exact. Copying was chosen over marking every place a shared
container lives: it needs no map from containers to places kept right through every
mutation and move. The one exception keeps ``m = bag["m"]; ...; bag["m"] = m`` working:
assigning to a place the object that place already holds keeps it (and marks it dirty).

What the bag cannot see: changes made through a reference it never handed out, such as a
``bytearray`` stored in it and changed in place, or the values of :attr:`StateBag.data` and
:meth:`StateBag.to_dict`; call :meth:`StateBag.touch` for such a field, or pass
``changed=`` to ``save``. The hints are only used when the version being saved on is the
bag's base version (the one it was loaded from or saved as); otherwise every field is
hashed, so a stale bag can cost time but never lose a change.
"""

from __future__ import annotations

import operator
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from typing import Any, SupportsIndex, overload

from .errors import InvalidInputError

__all__ = ["StateBag", "TrackedDict", "TrackedList"]

# Immutable leaves: copied by reference, without a closer look.
_ATOMS: frozenset[type] = frozenset({str, int, float, bool, type(None), bytes})
_MISSING: Any = object()


def _empty_like(value: Any) -> dict[Any, Any] | list[Any] | None:
    """The plain container a copy of ``value`` starts as; None when it is kept as it is."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list) or type(value) is tuple:
        return []
    return None


def _copy_in(value: Any, field: str) -> Any:
    """``value`` as a bag stores it: every dict, list and tuple in it copied into a fresh
    plain dict or list; anything else as it is.

    Iterative, so that depth is no limit here (the save refuses what is too deep to store,
    with its own message). A value that contains itself is an InvalidInputError naming
    ``field``: it has no copy, and no save could store it.
    """
    if type(value) in _ATOMS:
        return value
    top = _empty_like(value)
    if top is None:
        return value
    on_path = {id(value)}
    stack: list[tuple[Any, Iterator[Any], dict[Any, Any] | list[Any]]] = [
        (value, _items_of(value), top)
    ]
    while stack:
        source, items, target = stack[-1]
        child: dict[Any, Any] | list[Any] | None = None
        if type(target) is list:
            append = target.append
            for item in items:
                if type(item) not in _ATOMS:
                    child = _empty_like(item)
                    if child is not None:
                        append(child)
                        break
                append(item)
        else:
            assert type(target) is dict
            for key, item in items:
                if type(item) not in _ATOMS:
                    child = _empty_like(item)
                    if child is not None:
                        target[key] = child
                        break
                target[key] = item
        if child is None:
            stack.pop()
            on_path.discard(id(source))
            continue
        if id(item) in on_path:
            raise InvalidInputError(
                f"the value assigned to {field!s} contains itself (a cycle): a bag stores a "
                "copy of what it is given, and a cycle has none",
                path=str(field),
            )
        on_path.add(id(item))
        stack.append((item, _items_of(item), child))
    return top


def _track(value: Any, bag: StateBag, field: str) -> Any:
    """A container of ``bag`` as it is handed out: an exact dict or list becomes a tracked
    copy of itself (the caller stores it in its place); anything else is as it is."""
    kind = type(value)
    if kind is dict:
        return TrackedDict(value, bag, field)
    if kind is list:
        return TrackedList(value, bag, field)
    return value


def _items_of(container: Any) -> Iterator[Any]:
    # The stored objects themselves: a tracked container's own readers would track them.
    if isinstance(container, dict):
        return iter(dict.items(container))
    if isinstance(container, list):
        return list.__iter__(container)
    return iter(container)


class TrackedDict(dict[str, Any]):
    """A dict stored in a bag: changing it marks its top-level field dirty.

    It is the stored dict itself. Values read from it are tracked in turn; values assigned
    to it are copied (see the module docstring).
    """

    __slots__ = ("_bag", "_field")

    def __init__(self, data: Mapping[str, Any], bag: StateBag, field: str) -> None:
        dict.__init__(self, data)
        self._bag = bag
        self._field = field

    def _touch(self) -> None:
        self._bag._dirty.add(self._field)

    def _tracked(self, key: str, value: Any) -> Any:
        # A plain container read for the first time becomes a tracked copy in its place.
        tracked = _track(value, self._bag, self._field)
        if tracked is not value:
            dict.__setitem__(self, key, tracked)
        return tracked

    # -- reading: every value handed out is tracked ----------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._tracked(key, dict.__getitem__(self, key))

    def __iter__(self) -> Iterator[str]:
        # Overridden so that dict(d), {**d} and d | ... read values through __getitem__
        # (CPython copies a dict whose iteration is dict's own straight from its storage).
        return dict.__iter__(self)

    def get(self, key: str, default: Any = None, /) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        return ValuesView(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return ItemsView(self)

    def copy(self) -> dict[str, Any]:
        """A shallow copy as a plain dict; the containers in it are this dict's own (tracked)."""
        return dict(self)

    def __or__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(other, dict):
            return NotImplemented
        merged = dict(self)
        merged.update(other)
        return merged

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # copy, deepcopy and pickle give the plain dict: the tracking belongs to the bag.
        return (dict, (dict(self),))

    # -- changing: marks the field, copies what comes in -----------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        if dict.get(self, key, _MISSING) is not value:
            value = _copy_in(value, self._field)
        self._touch()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._touch()
        dict.__delitem__(self, key)

    def setdefault(self, key: str, default: Any = None, /) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, /, *default: Any) -> Any:
        # What is taken out is handed out tracked too, as every read is: assigning into it
        # copies, whether it is put back or not.
        self._touch()
        return _track(dict.pop(self, key, *default), self._bag, self._field)

    def popitem(self) -> tuple[str, Any]:
        self._touch()
        key, value = dict.popitem(self)
        return key, _track(value, self._bag, self._field)

    def clear(self) -> None:
        self._touch()
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        given = {key: _copy_in(value, self._field) for key, value in dict(*args, **kwargs).items()}
        self._touch()
        dict.update(self, given)

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[override]
        self.update(other)
        return self


class TrackedList(list[Any]):
    """A list stored in a bag: changing it marks its top-level field dirty.

    It is the stored list itself. Items read from it are tracked in turn; items assigned to
    it are copied (see the module docstring).
    """

    __slots__ = ("_bag", "_field")

    def __init__(self, data: Iterable[Any], bag: StateBag, field: str) -> None:
        list.__init__(self, data)
        self._bag = bag
        self._field = field

    def _touch(self) -> None:
        self._bag._dirty.add(self._field)

    def _tracked(self, index: int, value: Any) -> Any:
        tracked = _track(value, self._bag, self._field)
        if tracked is not value:
            list.__setitem__(self, index, tracked)
        return tracked

    # -- reading: every item handed out is tracked -----------------------------------------

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            # A plain list, like list slicing, of this list's own (tracked) items.
            return [self[position] for position in range(*index.indices(len(self)))]
        position = operator.index(index)
        return self._tracked(position, list.__getitem__(self, position))

    def __iter__(self) -> Iterator[Any]:
        # By position, as list iteration goes, so a change made during the loop is seen.
        for position, item in enumerate(list.__iter__(self)):
            yield self._tracked(position, item)

    def __reversed__(self) -> Iterator[Any]:
        position = len(self) - 1
        while 0 <= position < len(self):
            yield self[position]
            position -= 1

    def copy(self) -> list[Any]:
        """A shallow copy as a plain list; the containers in it are this list's own (tracked)."""
        return list(self)

    def __add__(self, other: Any) -> list[Any]:
        if not isinstance(other, list):
            return NotImplemented
        return [*self, *other]

    def __radd__(self, other: Any) -> list[Any]:
        # Called before list's own + (this is a subclass), which would read the storage.
        if not isinstance(other, list):
            return NotImplemented
        return [*other, *self]

    def __mul__(self, count: SupportsIndex) -> list[Any]:
        return list(self) * operator.index(count)

    __rmul__ = __mul__

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # copy, deepcopy and pickle give the plain list: the tracking belongs to the bag.
        return (list, (list(self),))

    # -- changing: marks the field, copies what comes in -----------------------------------

    @overload
    def __setitem__(self, index: SupportsIndex, value: Any) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            items = [_copy_in(item, self._field) for item in value]
            self._touch()
            list.__setitem__(self, index, items)
            return
        position = operator.index(index)
        if list.__getitem__(self, position) is not value:
            value = _copy_in(value, self._field)
        self._touch()
        list.__setitem__(self, position, value)

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        self._touch()
        list.__delitem__(self, index)

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        times = operator.index(count)
        self._touch()
        if times <= 0:
            list.clear(self)
            return self
        # Each repetition is a copy: the items of a bag share no container.
        items = list.copy(self)
        for _ in range(times - 1):
            list.extend(self, [_copy_in(item, self._field) for item in items])
        return self

    def append(self, value: Any) -> None:
        value = _copy_in(value, self._field)
        self._touch()
        list.append(self, value)

    def extend(self, values: Iterable[Any]) -> None:
        items = [_copy_in(value, self._field) for value in values]
        self._touch()
        list.extend(self, items)

    def insert(self, index: SupportsIndex, value: Any) -> None:
        value = _copy_in(value, self._field)
        self._touch()
        list.insert(self, index, value)

    def pop(self, index: SupportsIndex = -1) -> Any:
        self._touch()
        return _track(list.pop(self, index), self._bag, self._field)

    def remove(self, value: Any) -> None:
        self._touch()
        list.remove(self, value)

    def clear(self) -> None:
        self._touch()
        list.clear(self)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._touch()
        list.sort(self, *args, **kwargs)

    def reverse(self) -> None:
        self._touch()
        list.reverse(self)


class StateBag(MutableMapping[str, Any]):
    """A mapping of field names to values that records its dirty top-level fields.

    ``StateBag(state)`` starts clean, with no base version (its first save hashes every
    field), holding a copy of ``state`` (see the module docstring). ``Repository.load_bag``
    (or a save) sets ``base`` so later saves use the hints.
    """

    __slots__ = ("_base", "_data", "_dirty")

    def __init__(self, state: Mapping[str, Any] | None = None, /) -> None:
        items = dict(state) if state is not None else {}
        self._data: dict[str, Any] = {name: _copy_in(value, name) for name, value in items.items()}
        self._dirty: set[str] = set()
        self._base: str | None = None

    # -- the mapping -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        tracked = _track(value, self, key)
        if tracked is not value:
            self._data[key] = tracked
        return tracked

    def __setitem__(self, key: str, value: Any) -> None:
        if self._data.get(key, _MISSING) is not value:
            value = _copy_in(value, key)
        self._dirty.add(key)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StateBag):
            return self._data == other._data
        return self._data == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StateBag({self._data!r}, dirty={sorted(self._dirty)!r})"

    def setdefault(self, key: str, default: Any = None, /) -> Any:
        # Mapping's own returns ``default`` itself, not the copy the bag stored.
        if key not in self._data:
            self[key] = default
        return self[key]

    # -- tracking --------------------------------------------------------------------------

    @property
    def dirty(self) -> frozenset[str]:
        """Top-level fields changed since the bag was loaded or last saved."""
        return frozenset(self._dirty)

    @property
    def base(self) -> str | None:
        """The manifest id the dirty set is relative to (None: unknown, hash everything)."""
        return self._base

    def touch(self, *keys: str) -> None:
        """Mark fields dirty whose values changed behind the bag's back."""
        self._dirty.update(keys)

    def mark_saved(self, manifest_id: str, /) -> None:
        """Record that the bag's current contents are version ``manifest_id``."""
        self._dirty.clear()
        self._base = manifest_id

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (shallow copy; values are the stored objects)."""
        return dict(self._data)

    @property
    def data(self) -> Mapping[str, Any]:
        """The stored values, untracked: read-only use only (the repository encodes these)."""
        return self._data


def loaded_bag(state: dict[str, Any], manifest_id: str, /) -> StateBag:
    """A bag of version ``manifest_id`` holding ``state`` itself, not a copy: a state just
    decoded shares no container with anything."""
    bag = StateBag()
    bag._data = state
    bag.mark_saved(manifest_id)
    return bag
