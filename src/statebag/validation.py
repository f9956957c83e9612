"""Checks of what callers pass in, shared by the repository, the hydrator and compat: every
bad value is an InvalidInputError naming the argument, field or key, before anything is
written."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .bag import StateBag
from .errors import InvalidInputError
from .ids import looks_like_id

__all__ = [
    "check_chain",
    "check_handle_options",
    "field_names",
    "field_path",
    "snapshot_state",
]


def check_handle_options(*, threads: object, cache_bytes: object) -> None:
    if threads is not None and (type(threads) is not int or threads < 1):
        raise InvalidInputError(f"threads must be an int >= 1, not {threads!r}", path="threads")
    if cache_bytes is not None and (type(cache_bytes) is not int or cache_bytes < 0):
        raise InvalidInputError(
            f"cache_bytes must be an int >= 0, not {cache_bytes!r}", path="cache_bytes"
        )


# Characters a chain name must not hold: C0 and C1 controls and DEL, which terminals act on,
# and the bidirectional embeddings, overrides and isolates, which make a name display as
# another (U+202E shows "abc\u202efed" as "abcdef").
_CONTROLS = frozenset(range(0x20)) | frozenset(range(0x7F, 0xA0))
_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def check_chain(chain: object, /, *, field: str = "chain") -> str:
    """A chain name: 1..256 characters, no control or bidirectional formatting characters,
    not shaped like an id."""
    if not isinstance(chain, str) or not chain:
        raise InvalidInputError(f"{field} must be a non-empty str, not {chain!r}", path=field)
    if len(chain) > 256:
        raise InvalidInputError(f"{field} is longer than 256 characters", path=field)
    for ch in chain:
        code = ord(ch)
        if code in _CONTROLS:
            raise InvalidInputError(f"{field} {chain!r} has a control character", path=field)
        if code in _BIDI:
            raise InvalidInputError(
                f"{field} {chain!r} has a bidirectional formatting character (U+{code:04X}), "
                "which would make it display as another name",
                path=field,
            )
    try:
        chain.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{field} {chain!r} is not valid Unicode", path=field) from exc
    if looks_like_id(chain):
        raise InvalidInputError(
            f"{field} {chain!r} looks like a manifest id (64 hex characters); chain names "
            "must not, so that the two can never be confused",
            path=field,
        )
    return chain


def snapshot_state(state: object, /) -> dict[str, Any]:
    """The fields of ``state`` (a Mapping, or a StateBag's data) as a plain dict read once;
    InvalidInputError naming ``state`` or the bad key unless every key is a valid str."""
    data = state.data if isinstance(state, StateBag) else state
    if not isinstance(data, Mapping):
        raise InvalidInputError(
            f"state must be a Mapping[str, Any] or a StateBag, not {type(state).__name__}",
            path="state",
        )
    if type(data) is not dict:
        # One snapshot: a mapping is read once, and one that cannot be read is bad input.
        try:
            data = dict(data.items())
        except Exception as exc:
            raise InvalidInputError(
                f"state could not be read as a mapping ({type(data).__name__}): {exc}",
                path="state",
            ) from exc
    for name in data:
        if not isinstance(name, str):
            raise InvalidInputError(
                f"state key {name!r} is a {type(name).__name__}; field names must be str",
                path=repr(name),
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"state key {name!r} is not valid Unicode (a lone surrogate)", path=repr(name)
            ) from exc
    return data


def field_names(value: object, /, *, field: str) -> set[str]:
    """A set of field names given as an iterable of str (``field`` names the argument)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInputError(
            f"{field} must be an iterable of field names, not {value!r}", path=field
        )
    names = set()
    for name in value:
        if not isinstance(name, str):
            raise InvalidInputError(
                f"{field} lists {name!r}, which is not a field name (str)", path=field
            )
        names.add(name)
    return names


def field_path(name: str, inner: str | None, /) -> str:
    """The path of a value inside field ``name`` (``inner`` as the codec reports it)."""
    if not inner or inner == "$":
        return name
    return f"{name}{inner}" if inner.startswith("[") else f"{name}.{inner}"
