"""Opening a repository by URL: a registry of schemes, each an opener that finds (or makes)
the location and hands out its stores and its liveness.

- a bare path or ``file:///abs/path``: the embedded default, packs under ``<path>/objects/``
  and metadata in ``<path>/meta.sqlite`` (SQLite, WAL), liveness by ``flock``;
- ``memory://name``: in this process only; every open of the same name shares the stores.

A new backend is one :func:`register_scheme` call with an opener returning a
:class:`Location`; :func:`open` itself does not change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from .config import load_or_create_config
from .errors import ConfigError, InvalidInputError, NotFoundError
from .liveness import FileLiveness, Liveness, ProcessLiveness
from .meta import MetaStore
from .meta.memory import MemoryMetaStore
from .meta.sqlite import SQLiteMetaStore
from .objects import ObjectStore
from .objects.local import LocalObjectStore
from .objects.memory import MemoryObjectStore
from .validation import check_handle_options

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Location", "Opener", "open", "register_scheme", "scheme_of"]


class Location(Protocol):
    """Where a repository lives, once found: its stores and its liveness oracle."""

    def open_meta(self, *, fsync: bool) -> MetaStore:
        """The metadata store; ``fsync=False`` when the repository was created without it
        (commits need not wait for the disk)."""

    def open_objects(self, *, fsync: bool) -> ObjectStore: ...

    def liveness(self) -> Liveness: ...


# An opener takes the URL as given and ``create``; NotFoundError when nothing is there and
# ``create`` is False, ConfigError when the location cannot hold a repository.
Opener = Callable[[str, bool], Location]

_openers: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener, /) -> None:
    """Open URLs ``<scheme>://…`` with ``opener`` (the scheme in lower case; ``""`` is a
    bare path)."""
    _openers[scheme] = opener


class _LocalLocation:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open_meta(self, *, fsync: bool) -> MetaStore:
        return SQLiteMetaStore(self.path / "meta.sqlite", synchronous="FULL" if fsync else "NORMAL")

    def open_objects(self, *, fsync: bool) -> ObjectStore:
        return LocalObjectStore(self.path / "objects", fsync=fsync)

    def liveness(self) -> Liveness:
        return FileLiveness(self.path / "locks")


def _open_local_path(path: Path, create: bool) -> Location:
    if not (path / "meta.sqlite").exists():
        if not create:
            raise NotFoundError(f"no repository at {path} (create=False)")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
    return _LocalLocation(path)


def _open_file_url(text: str, create: bool) -> Location:
    parsed = urlparse(text)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidInputError(
            f"a file URL names a local path (file:///abs/path), not host {parsed.netloc!r}",
            path="url",
        )
    return _open_local_path(Path(unquote(parsed.path)), create)


class _MemoryLocation:
    """Closing a memory store keeps its contents: the next open of the name finds them."""

    def __init__(
        self, objects: MemoryObjectStore, meta: MemoryMetaStore, liveness: ProcessLiveness
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness

    def open_meta(self, *, fsync: bool) -> MetaStore:
        return self._meta

    def open_objects(self, *, fsync: bool) -> ObjectStore:
        return self._objects

    def liveness(self) -> Liveness:
        return self._liveness


_memory_locations: dict[str, _MemoryLocation] = {}
_memory_lock = threading.Lock()


def _open_memory(text: str, create: bool) -> Location:
    name = text[len("memory://") :]
    with _memory_lock:
        location = _memory_locations.get(name)
        if location is None:
            if not create:
                raise NotFoundError(f"no repository at {text} (create=False)")
            location = _MemoryLocation(MemoryObjectStore(), MemoryMetaStore(), ProcessLiveness())
            _memory_locations[name] = location
        return location


def forget_memory(name: str, /) -> bool:
    """Drop the stores of ``memory://name`` (a test's or a demo's), so they can be freed;
    False when there were none."""
    with _memory_lock:
        return _memory_locations.pop(name, None) is not None


register_scheme("", lambda text, create: _open_local_path(Path(text), create))
register_scheme("file", _open_file_url)
register_scheme("memory", _open_memory)


def scheme_of(url: str, /) -> str:
    """The scheme of a repository URL in lower case (schemes are case-insensitive, as RFC
    3986 says: ``FILE:///x`` is ``file:///x``); ``""`` for a bare path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _locate(url: str | os.PathLike[str], *, create: bool) -> Location:
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise InvalidInputError("url must be a non-empty path or URL", path="url")
    scheme = scheme_of(text)
    opener = _openers.get(scheme)
    if opener is None:
        supported = ", ".join(f"{name}://" for name in sorted(_openers) if name)
        raise ConfigError(
            f"repository URL scheme {scheme!r} is not supported by this version "
            f"(use a path or one of {supported})"
        )
    return opener(text, create)


def open(
    url: str | os.PathLike[str],
    /,
    *,
    create: bool = True,
    threads: int | None = None,
    min_size: int | None = None,
    avg_size: int | None = None,
    max_size: int | None = None,
    seed: int | None = None,
    compression_level: int | None = None,
    pack_size: int | None = None,
    inline_max: int | None = None,
    fsync: bool | None = None,
    grace: int | None = None,
    cache_bytes: int | None = None,
) -> Repository:
    """Open the repository at ``url``; create it when missing unless ``create=False``.

    Options set the repository's configuration at creation. On an existing repository an
    option that differs from the recorded one raises :class:`ConfigError`, as does a
    repository of a newer format than this version of statebag reads.

    ``threads`` and ``cache_bytes`` belong to this handle, not to the repository:
    ``cache_bytes`` (default 128 MiB, 0 for none) bounds the encodings of recently saved
    large values kept in memory so that saving them again re-cuts only what changed.
    """
    from .repository import Repository

    options: dict[str, Any] = {
        "min_size": min_size,
        "avg_size": avg_size,
        "max_size": max_size,
        "seed": seed,
        "compression_level": compression_level,
        "pack_size": pack_size,
        "inline_max": inline_max,
        "fsync": fsync,
        "grace": grace,
    }
    given = {name: value for name, value in options.items() if value is not None}
    check_handle_options(threads=threads, cache_bytes=cache_bytes)
    location = _locate(url, create=create)
    meta = location.open_meta(fsync=True)
    try:
        config = load_or_create_config(meta, given, create=create, where=str(url))
        if not config.fsync:
            # Created without fsync: metadata commits need not wait for the disk either.
            meta.close()
            meta = location.open_meta(fsync=False)
        objects = location.open_objects(fsync=config.fsync)
    except BaseException:
        meta.close()
        raise
    return Repository(
        objects,
        meta,
        config,
        threads=threads,
        url=str(url),
        cache_bytes=cache_bytes,
        liveness=location.liveness(),
    )
