"""Opening a repository by URL: a registry of schemes, each an opener that finds (or makes)
the location and hands out its stores and its liveness.

- a bare path or ``file:///abs/path``: the embedded default, packs under ``<path>/objects/``
  and metadata in ``<path>/meta.sqlite`` (SQLite, WAL), liveness by ``flock``; read-only
  when the directory or ``meta.sqlite`` cannot be written (see :func:`_read_only`);
- ``memory://name``: in this process only; every open of the same name shares the stores;
- no URL, ``open(objects=store, meta=store)``: the stores given, as they are (a backend
  under test, or one wrapped to count requests, inject faults or add latency), with no
  liveness oracle, so that gc relies on leases (``lease=``).

A new backend is one :func:`register_scheme` call with an opener returning a
:class:`Location`; :func:`open` itself does not change.

An open that fails leaves nothing behind: options are checked before a new location is
made, and :meth:`Location.abandon` removes what the opener made when a later step fails.
An open never creates a repository over packs that no metadata describes: that is a
repository whose metadata was lost, and a new, empty one would hide its data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from .config import CONFIG_OBJECT, check_config, load_or_create_config, read_config_object
from .durations import as_seconds
from .errors import ConfigError, InvalidInputError, NotFoundError
from .keys import CONFIG
from .liveness import FileLiveness, Liveness, ProcessLiveness
from .meta import MetaStore
from .meta.memory import MemoryMetaStore
from .meta.sqlite import SQLiteMetaStore
from .objects import ObjectStore
from .objects.local import TEMP_DIR, LocalObjectStore
from .objects.memory import MemoryObjectStore
from .packs import PACKS_PREFIX, pack_id_of
from .prepare import DEFAULT_LEASE
from .validation import check_handle_options

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Location", "Opener", "check_lease", "open", "register_scheme", "scheme_of"]


class Location(Protocol):
    """Where a repository lives, once found: its stores and its liveness oracle."""

    def open_meta(self, *, fsync: bool) -> MetaStore:
        """The metadata store; ``fsync=False`` when the repository was created without it
        (commits need not wait for the disk)."""

    def open_objects(self, *, fsync: bool) -> ObjectStore: ...

    def liveness(self) -> Liveness: ...

    def abandon(self) -> None:
        """The open failed: remove what the opener made for it (nothing, when the location
        existed before). Called after the stores this open opened are closed."""


# An opener takes the URL as given and ``create``; NotFoundError when nothing is there and
# ``create`` is False, ConfigError when the location cannot hold a repository.
Opener = Callable[[str, bool], Location]

_openers: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener, /) -> None:
    """Open URLs ``<scheme>://…`` with ``opener`` (the scheme in lower case; ``""`` is a
    bare path)."""
    _openers[scheme] = opener


_META_FILE = "meta.sqlite"
# What SQLite keeps beside its database file while it is open (or after a crash).
_META_SIDE_FILES = ("-wal", "-shm", "-journal")
_OBJECTS_DIR = "objects"
_LOCKS_DIR = "locks"


class _Made:
    """What one open created at a new local location, for :meth:`_LocalLocation.abandon`:
    directories in the order made, and whether it claimed the metadata file."""

    def __init__(self) -> None:
        self.directories: list[Path] = []
        self.meta_file: Path | None = None


class _LocalLocation:
    """A repository directory. ``made`` is given when this open creates the repository (what
    it made so far); ``read_only`` opens the stores so that nothing is ever written."""

    def __init__(self, path: Path, *, read_only: bool = False, made: _Made | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self._made = made

    def open_meta(self, *, fsync: bool) -> MetaStore:
        return SQLiteMetaStore(
            self.path / _META_FILE,
            synchronous="FULL" if fsync else "NORMAL",
            read_only=self.read_only,
        )

    def open_objects(self, *, fsync: bool) -> ObjectStore:
        self._note_new(self.path / _OBJECTS_DIR)
        return LocalObjectStore(self.path / _OBJECTS_DIR, fsync=fsync, read_only=self.read_only)

    def liveness(self) -> Liveness:
        if self.read_only:
            # Nothing can save here, so no writer holds a lock; and taking one would write.
            return Liveness()
        self._note_new(self.path / _LOCKS_DIR)
        return FileLiveness(self.path / _LOCKS_DIR)

    def abandon(self) -> None:
        made, self._made = self._made, None
        if made is None:
            return
        if made.meta_file is not None:
            for suffix in ("", *_META_SIDE_FILES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{made.meta_file}{suffix}")
        # Directories only while empty: a process that opened the same new location
        # meanwhile may have put something there.
        for directory in reversed(made.directories):
            if directory == self.path / _OBJECTS_DIR:
                if made.meta_file is not None:
                    # The configuration object this creation wrote (format 2), if it did.
                    with contextlib.suppress(OSError):
                        os.unlink(directory / CONFIG_OBJECT)
                with contextlib.suppress(OSError):
                    os.rmdir(directory / TEMP_DIR)
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def _note_new(self, directory: Path) -> None:
        if self._made is not None and not directory.exists():
            self._made.directories.append(directory)


def _open_local_path(path: Path, create: bool) -> Location:
    # Absolute, so that the metadata path never starts with "file:" (which SQLite could
    # take for a URI) whatever the directory is called.
    path = Path(os.path.abspath(path))
    meta_path = path / _META_FILE
    try:
        info = os.stat(meta_path)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as exc:
        raise ConfigError(f"cannot open a repository at {path}: {exc.strerror}") from exc
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{meta_path} is not a file: {path} holds no statebag repository")
        return _LocalLocation(path, read_only=_read_only(path, meta_path))
    if not create:
        # Not "no repository" when only the metadata is gone: creating one would not help.
        _refuse_unknown_packs(
            LocalObjectStore(path / _OBJECTS_DIR, read_only=True), str(path), config_object=True
        )
        raise NotFoundError(f"no repository at {path} (create=False)")
    return _LocalLocation(path, made=_make_local(path))


def _read_only(*paths: Path) -> bool:
    """Whether a repository at these paths (its directory, its metadata file) is to be
    opened read-only: a read-only mount, a path this process may not write, or one that no
    one may (no write bit at all). The last counts even for root, whom permissions do not
    stop: a repository made read-only on purpose is not written to by anyone."""
    for path in paths:
        try:
            if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
                return True
            if not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
                return True
        except OSError as exc:
            raise ConfigError(f"cannot open a repository at {path}: {exc.strerror}") from exc
        if not os.access(path, os.W_OK):
            return True
    return False


def _make_local(path: Path) -> _Made:
    """Make the directories a new repository at ``path`` needs and claim its metadata file;
    what was made (nothing on failure)."""
    existing = path
    missing: list[Path] = []
    while True:
        try:
            info = os.stat(existing)
            break
        except (FileNotFoundError, NotADirectoryError):
            missing.append(existing)
            existing = existing.parent
        except OSError as exc:
            raise ConfigError(f"cannot create a repository at {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"cannot create a repository at {path}: {existing} exists and is not a directory"
        )
    if _read_only(existing):
        raise ConfigError(f"cannot create a repository at {path}: {existing} is read-only")
    made = _Made()
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue  # another process is making the same path
            made.directories.append(directory)
        try:
            # Exclusive, so that only the process that made the file ever removes it.
            os.close(os.open(path / _META_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            made.meta_file = path / _META_FILE
        except FileExistsError:
            pass  # another process is creating the repository; open() finds its config
    except OSError as exc:
        _LocalLocation(path, made=made).abandon()
        where = exc.filename if exc.filename is not None else path
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise ConfigError(f"cannot create a repository at {path}: {where}: {reason}") from exc
    return made


def _open_file_url(text: str, create: bool) -> Location:
    parsed = urlparse(text)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidInputError(
            f"a file URL names a local path (file:///abs/path), not host {parsed.netloc!r}",
            path="url",
        )
    if not text[len("file:") :].startswith("//"):
        raise ConfigError(
            f"{text!r} is not a file URL: one names an absolute path, file:///abs/path; "
            f"give a relative path as it is, without 'file:'"
        )
    return _open_local_path(Path(unquote(parsed.path)), create)


class _MemoryStores:
    """Closing a memory store keeps its contents: the next open of the name finds them."""

    def __init__(self) -> None:
        self.objects = MemoryObjectStore()
        self.meta = MemoryMetaStore()
        self.liveness = ProcessLiveness()


class _MemoryLocation:
    """One open of ``memory://name``; ``new`` when this open made the stores."""

    def __init__(self, name: str, stores: _MemoryStores, *, new: bool) -> None:
        self._name = name
        self._stores = stores
        self._new = new

    def open_meta(self, *, fsync: bool) -> MetaStore:
        return self._stores.meta

    def open_objects(self, *, fsync: bool) -> ObjectStore:
        return self._stores.objects

    def liveness(self) -> Liveness:
        return self._stores.liveness

    def abandon(self) -> None:
        with _memory_lock:
            # Unless another open of the name has made a repository in them meanwhile.
            if (
                self._new
                and self._stores.meta.get(CONFIG) is None
                and _memory_locations.get(self._name) is self._stores
            ):
                del _memory_locations[self._name]
            self._new = False


_memory_locations: dict[str, _MemoryStores] = {}
_memory_lock = threading.Lock()


def _open_memory(text: str, create: bool) -> Location:
    name = text[len("memory://") :]
    with _memory_lock:
        stores = _memory_locations.get(name)
        if stores is not None:
            return _MemoryLocation(name, stores, new=False)
        if not create:
            raise NotFoundError(f"no repository at {text} (create=False)")
        stores = _memory_locations[name] = _MemoryStores()
        return _MemoryLocation(name, stores, new=True)


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
    if "://" in text:
        scheme = scheme_of(text)
    else:
        # "file:relative" is a malformed file URL, not a directory of that name.
        scheme = "file" if text.lower().startswith("file:") else ""
    opener = _openers.get(scheme)
    if opener is None:
        supported = ", ".join(f"{name}://" for name in sorted(_openers) if name)
        raise ConfigError(
            f"repository URL scheme {scheme!r} is not supported by this version "
            f"(use a path or one of {supported})"
        )
    return opener(text, create)


def open(
    url: str | os.PathLike[str] | None = None,
    /,
    *,
    objects: ObjectStore | None = None,
    meta: MetaStore | None = None,
    create: bool | None = None,
    lease: float | timedelta | None = None,
    threads: int | None = None,
    min_size: int | None = None,
    avg_size: int | None = None,
    max_size: int | None = None,
    seed: int | None = None,
    normalization: int | None = None,
    compression_level: int | None = None,
    pack_size: int | None = None,
    inline_max: int | None = None,
    fsync: bool | None = None,
    grace: int | None = None,
    format: int | None = None,
    cache_bytes: int | None = None,
) -> Repository:
    """Open the repository at ``url``, or the one held by the stores ``objects`` and ``meta``.

    With a URL, the repository is created when missing unless ``create=False``. With
    supplied stores (both of them, and no URL) it is created only with ``create=True``:
    stores handed over are usually meant to hold a repository already. Supplied stores are
    used as they are (wrappers that count, inject faults or add latency included) and are
    closed with the repository. Nothing tells whether the writer of a pending save on them
    is still running, so garbage collection rolls a save back only once its lease expired.

    Options set the repository's configuration at creation. On an existing repository an
    option that differs from the recorded one raises :class:`ConfigError`, as does a
    repository of a newer format than this version of statebag reads. ``format`` (default
    the newest, :data:`statebag.FORMAT_VERSION`) makes a repository of an older format,
    which an older statebag can read too (docs/FORMAT.md, "Formats").

    ``lease``, ``threads`` and ``cache_bytes`` belong to this handle, not to the repository:
    ``lease`` (seconds or a timedelta, > 0; default 24 h) is how long a save of this handle
    may run before gc may take it for abandoned where no liveness is known; ``cache_bytes``
    (default 128 MiB, 0 for none) bounds the encodings of recently saved large values kept in
    memory so that saving them again re-cuts only what changed.
    """
    options: dict[str, Any] = {
        "min_size": min_size,
        "avg_size": avg_size,
        "max_size": max_size,
        "seed": seed,
        "normalization": normalization,
        "compression_level": compression_level,
        "pack_size": pack_size,
        "inline_max": inline_max,
        "fsync": fsync,
        "grace": grace,
        "format": format,
    }
    given = {name: value for name, value in options.items() if value is not None}
    check_handle_options(threads=threads, cache_bytes=cache_bytes)
    lease_s = check_lease(lease)
    if create is not None and type(create) is not bool:
        raise InvalidInputError(f"create must be a bool, not {create!r}", path="create")
    if objects is not None or meta is not None:
        if url is not None:
            raise InvalidInputError(
                "give either a url or the stores (objects= and meta=), not both",
                path="url",
            )
        return _open_stores(
            objects,
            meta,
            given,
            create=bool(create),
            lease=lease_s,
            threads=threads,
            cache_bytes=cache_bytes,
        )
    if url is None:
        raise InvalidInputError(
            "open needs a url, or an object store and a metadata store (objects=, meta=)",
            path="url",
        )
    return _open_url(
        url,
        given,
        create=True if create is None else create,
        lease=lease_s,
        threads=threads,
        cache_bytes=cache_bytes,
    )


def check_lease(lease: object, /) -> float:
    """The lease in seconds (default 24 h); InvalidInputError with path ``lease`` unless it
    is a positive number of seconds or timedelta."""
    if lease is None:
        return DEFAULT_LEASE
    seconds = as_seconds(lease, field="lease")
    if seconds <= 0:
        raise InvalidInputError(f"lease must be longer than 0 seconds, not {lease!r}", path="lease")
    return seconds


def _open_stores(
    objects: ObjectStore | None,
    meta: MetaStore | None,
    given: dict[str, Any],
    *,
    create: bool,
    lease: float,
    threads: int | None,
    cache_bytes: int | None,
) -> Repository:
    from .repository import Repository

    for name, store, kind in (("objects", objects, ObjectStore), ("meta", meta, MetaStore)):
        if store is None:
            other = "meta" if name == "objects" else "objects"
            raise InvalidInputError(
                f"{other}= was given without {name}=: a repository needs both stores",
                path=name,
            )
        if not isinstance(store, kind):
            raise InvalidInputError(
                f"{name} must be a {kind.__name__}, not {type(store).__name__}", path=name
            )
    assert objects is not None and meta is not None
    where = f"<{type(objects).__name__} + {type(meta).__name__}>"
    if create:
        check_config(given)  # bad options are refused before anything is written
    if meta.get(CONFIG) is None:
        if not create:
            _refuse_packs_without_metadata(objects, where, config_object=True)
            raise NotFoundError(f"no repository in the stores {where} (create=False)")
        _refuse_packs_without_metadata(objects, where)
    config = load_or_create_config(meta, given, create=create, where=where, objects=objects)
    return Repository(
        objects,
        meta,
        config,
        threads=threads,
        url=where,
        lease=lease,
        cache_bytes=cache_bytes,
        liveness=Liveness(),
    )


def _open_url(
    url: str | os.PathLike[str],
    given: dict[str, Any],
    *,
    create: bool,
    lease: float,
    threads: int | None,
    cache_bytes: int | None,
) -> Repository:
    from .repository import Repository

    try:
        location = _locate(url, create=False)
    except NotFoundError:
        if not create:
            raise
        check_config(given)  # bad options are refused before anything is made
        location = _locate(url, create=True)
    meta: MetaStore | None = None
    objects: ObjectStore | None = None
    try:
        meta = location.open_meta(fsync=True)
        if meta.get(CONFIG) is None:
            # The object store is checked for packs, and gets a new repository's
            # configuration object first (format 2), before the metadata says it exists.
            probe = location.open_objects(fsync=given.get("fsync", True) is not False)
            try:
                _refuse_packs_without_metadata(probe, str(url), config_object=not create)
                config = load_or_create_config(
                    meta, given, create=create, where=str(url), objects=probe
                )
            finally:
                probe.close()
        else:
            config = load_or_create_config(meta, given, create=create, where=str(url))
        if not config.fsync:
            # Created without fsync: metadata commits need not wait for the disk either.
            meta.close()
            meta = location.open_meta(fsync=False)
        objects = location.open_objects(fsync=config.fsync)
        return Repository(
            objects,
            meta,
            config,
            threads=threads,
            url=str(url),
            lease=lease,
            cache_bytes=cache_bytes,
            liveness=location.liveness(),
        )
    except BaseException:
        for store in (objects, meta):
            if store is not None:
                store.close()
        location.abandon()
        raise


def _refuse_unknown_packs(objects: ObjectStore, where: str, *, config_object: bool) -> None:
    """ConfigError if ``objects``, the object store of a location without a configuration,
    holds packs: its metadata was lost, and a repository made over them would hide their
    data (and its audit would take them for orphans). Closes ``objects``."""
    try:
        _refuse_packs_without_metadata(objects, where, config_object=config_object)
    finally:
        objects.close()


def _refuse_packs_without_metadata(
    objects: ObjectStore, where: str, *, config_object: bool = False
) -> None:
    """ConfigError naming ``rebuild`` if ``objects`` holds packs (or, with
    ``config_object``, a repository's configuration object) while the metadata holds no
    repository. A creation checks the configuration object itself (one equal to what it
    writes is a creation that stopped before its metadata, and is finished)."""
    if config_object and read_config_object(objects) is not None:
        raise ConfigError(
            f"{where} holds a repository configuration object but no repository metadata: "
            f"the metadata was lost or emptied. Recover it from the object store with "
            f"`statebag -r {where} rebuild`"
        )
    found = next((k for k in objects.list(PACKS_PREFIX) if pack_id_of(k) is not None), None)
    if found is not None:
        raise ConfigError(
            f"{where} holds packs (such as {found}) but no repository metadata: the "
            f"metadata was lost or emptied, and a new repository here would hide that data. "
            f"Restore the metadata from a backup, or recover it from the packs with "
            f"`statebag -r {where} rebuild`"
        )
