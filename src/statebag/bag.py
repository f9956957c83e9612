"""StateBag: a dict-like state that records which top-level fields changed.

A save costs what changed: given a ``StateBag``, :meth:`Repository.save` re-encodes only the
dirty fields and carries the others over from the version the bag was loaded from or last
saved as, without reading or hashing them.

Dirty tracking covers nested mutation made through the bag: ``bag["messages"].append(m)``
and ``bag["config"]["retries"] = 3`` mark ``messages`` and ``config``, because reading a
list or dict out of the bag returns a tracking view (:class:`TrackedList`,
:class:`TrackedDict`) of the stored object. The bag owns its values: a change made through
another reference to a stored object (one kept from before it went into the bag) is not
seen; call :meth:`StateBag.touch` for such a field, or pass ``changed=`` to ``save``.
The hints are only used when the version being saved on is the bag's base version (the one
it was loaded from or saved as); otherwise every field is hashed, so a stale bag can cost
time but never lose a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any, SupportsIndex, overload

__all__ = ["StateBag", "TrackedDict", "TrackedList"]


def _track(value: Any, bag: StateBag, field: str) -> Any:
    if type(value) is dict or (isinstance(value, dict) and not isinstance(value, TrackedDict)):
        return TrackedDict(value, bag, field)
    if type(value) is list or (isinstance(value, list) and not isinstance(value, TrackedList)):
        return TrackedList(value, bag, field)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (TrackedDict, TrackedList)):
        return value._data
    return value


class TrackedDict(MutableMapping[str, Any]):
    """A view of a dict stored in a bag: mutating it marks its top-level field dirty."""

    __slots__ = ("_bag", "_data", "_field")

    def __init__(self, data: dict[str, Any], bag: StateBag, field: str) -> None:
        self._data = data
        self._bag = bag
        self._field = field

    def __getitem__(self, key: str) -> Any:
        return _track(self._data[key], self._bag, self._field)

    def __setitem__(self, key: str, value: Any) -> None:
        self._bag._dirty.add(self._field)
        self._data[key] = _plain(value)

    def __delitem__(self, key: str) -> None:
        self._bag._dirty.add(self._field)
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return bool(self._data == _plain(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._data)

    def clear(self) -> None:
        self._bag._dirty.add(self._field)
        self._data.clear()

    def copy(self) -> dict[str, Any]:
        """A shallow copy as a plain dict (not tracked)."""
        return dict(self._data)


class TrackedList(MutableSequence[Any]):
    """A view of a list stored in a bag: mutating it marks its top-level field dirty."""

    __slots__ = ("_bag", "_data", "_field")

    def __init__(self, data: list[Any], bag: StateBag, field: str) -> None:
        self._data = data
        self._bag = bag
        self._field = field

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return self._data[index]  # a copy, like list slicing
        return _track(self._data[index], self._bag, self._field)

    def __setitem__(self, index: Any, value: Any) -> None:
        self._bag._dirty.add(self._field)
        if isinstance(index, slice):
            self._data[index] = [_plain(item) for item in value]
        else:
            self._data[index] = _plain(value)

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        self._bag._dirty.add(self._field)
        del self._data[index]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        for item in self._data:
            yield _track(item, self._bag, self._field)

    def __eq__(self, other: object) -> bool:
        return bool(self._data == _plain(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._data)

    def insert(self, index: SupportsIndex, value: Any) -> None:
        self._bag._dirty.add(self._field)
        self._data.insert(index, _plain(value))

    def append(self, value: Any) -> None:
        self._bag._dirty.add(self._field)
        self._data.append(_plain(value))

    def extend(self, values: Iterable[Any]) -> None:
        self._bag._dirty.add(self._field)
        self._data.extend(_plain(value) for value in values)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._bag._dirty.add(self._field)
        self._data.sort(*args, **kwargs)

    def reverse(self) -> None:
        self._bag._dirty.add(self._field)
        self._data.reverse()

    def copy(self) -> list[Any]:
        """A shallow copy as a plain list (not tracked)."""
        return list(self._data)


class StateBag(MutableMapping[str, Any]):
    """A mapping of field names to values that records its dirty top-level fields.

    ``StateBag(state)`` starts clean, with no base version: its first save hashes every
    field. ``Repository.load_bag`` (or a save) sets ``base`` so later saves use the hints.
    """

    __slots__ = ("_base", "_data", "_dirty")

    def __init__(self, state: Mapping[str, Any] | None = None, /) -> None:
        self._data: dict[str, Any] = dict(state) if state is not None else {}
        self._dirty: set[str] = set()
        self._base: str | None = None

    # -- the mapping -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return _track(self._data[key], self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._dirty.add(key)
        self._data[key] = _plain(value)

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
