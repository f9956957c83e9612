"""The repository: save, load, log, diff, verify and stats over one object store and one
metadata store.

``statebag.open(url)`` opens (and by default creates) a repository:

- ``"path/to/repo"`` or ``"file:///abs/path"``: the embedded default, packs under
  ``<path>/objects/`` and metadata in ``<path>/meta.sqlite`` (SQLite, WAL);
- ``"memory://name"``: in this process only; every open of the same name shares the stores.

A :class:`Repository` is safe to use from many threads at once, and several processes may
use one local repository at once: every version is committed by the protocol of
:mod:`statebag.commit`, whose conditional head move makes a lost race a
:class:`~statebag.errors.ConflictError` and never a lost version.

Metadata keys (all in the metadata store; layouts in docs/FORMAT.md):
``config``, ``chain/<name>`` (head record), ``manifest/<id>`` (canonical manifest),
``node/<id>`` (index record), ``pack/<id>`` (pack size), ``pending/<txn>``; counters
``ref/<id>`` (reference counts) and ``stat/<name>`` (repository totals).
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, NamedTuple, Self, TypeVar
from urllib.parse import unquote, urlparse

import msgspec

from . import codec, dag, merging
from .bag import StateBag
from .chunking import Chunker, recut
from .commit import DEFAULT_LEASE, Prepare, Transaction, commit, new_txn_id
from .dag import Entry, InlineField, NewNode, TreeField
from .durations import as_seconds
from .errors import (
    BackendError,
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StatebagError,
)
from .gc import COMPACT_BYTES, Collector
from .ids import ContentId, looks_like_id
from .keys import HeadRecord, IndexRecord, decode_head, encode_record, head_key, version_key
from .liveness import FileLiveness, Liveness, ProcessLiveness
from .manifests import MANIFEST_DECODER, MANIFEST_ENCODER, Manifest
from .meta import Add, Check, ConditionFailed, MetaStore, Op, Put
from .meta.memory import MemoryMetaStore
from .meta.sqlite import SQLiteMetaStore
from .objects import ObjectStore
from .objects.counting import CountingObjectStore, IOCounters
from .objects.local import LocalObjectStore
from .objects.memory import MemoryObjectStore
from .packs import PackWriter, pack_key
from .results import (
    AuditReport,
    CommitResult,
    Diff,
    GCReport,
    ManifestInfo,
    RepoStats,
    ResetResult,
    VerifyReport,
)

__all__ = ["FORMAT_VERSION", "Config", "Repository", "open"]

FORMAT_VERSION = 1
MIB = 1 << 20
_T = TypeVar("_T")

# Bodies from this size up are cut with a second thread scanning while this one hashes.
_PARALLEL_CUT_BYTES = 4 * MIB
# Compression tasks take about this much raw data, so the pool's overhead stays small.
_COMPRESS_TASK_BYTES = 4 * MIB
_COMPRESS_INLINE_BYTES = 256 * 1024
# Ranged reads of nodes in one pack merge when the gap between them is at most this.
_READ_GAP = 256 * 1024
# New nodes are looked up in the index in batches of about this many, or this much data.
_LOOKUP_NODES = 1024
_LOOKUP_BYTES = 4 * MIB
_READ_MAX = 1 * MIB
_READ_SLICE = 512
_STRUCT_CACHE_BYTES = 64 * MIB
# The cuts of recently saved values, so that saving a value again re-cuts it only from its
# first edit (an append to a long history hashes its last chunk, not the whole history).
# Values shorter than _RECUT_MIN_BYTES are cut whole: that costs tens of microseconds.
_CUT_CACHE_BYTES = 128 * MIB
_RECUT_MIN_BYTES = 64 * 1024
_FIELDS_CACHE = 64
_MANIFEST_CACHE = 4096
_MAX_CHAIN_LENGTH = 512
_ATTEMPTS = 16


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """What a repository records at creation (``config`` key); fixed for its life."""

    format: int = FORMAT_VERSION
    min_size: int = 4096
    avg_size: int = 16384
    max_size: int = 65536
    seed: int = 0
    compression_level: int = codec.DEFAULT_LEVEL
    pack_size: int = 16 * MIB
    inline_max: int = 512
    fsync: bool = True
    grace: int = 3600


_CONFIG_DECODER = msgspec.msgpack.Decoder(Config)

_OPTION_NAMES = (
    "min_size",
    "avg_size",
    "max_size",
    "seed",
    "compression_level",
    "pack_size",
    "inline_max",
    "fsync",
    "grace",
)


class _Recent(Generic[_T]):
    """The most recently used values by id, up to a total weight of ``budget`` (each value
    weighs ``weigh(value)``, 1 by default); safe to share between threads."""

    def __init__(self, budget: int, *, weigh: Callable[[_T], int] = lambda _: 1) -> None:
        self._budget = budget
        self._weigh = weigh
        self._weight = 0
        self._items: OrderedDict[bytes, _T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> _T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: _T, *, replaces: bytes | None = None) -> None:
        """Keep ``value`` under ``key``, dropping the value under ``replaces`` if any."""
        weight = self._weigh(value)
        with self._lock:
            if replaces is not None and replaces != key:
                self._drop(replaces)
            self._drop(key)
            if weight > self._budget:
                return
            self._items[key] = value
            self._weight += weight
            while self._weight > self._budget:
                self._drop(next(iter(self._items)))

    def _drop(self, key: bytes) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._weight -= self._weigh(value)

    def discard(self, key: bytes) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0


class _Cut(NamedTuple):
    """A value's body (kept alive by the cache) and the chunker's cut of it. A tree root
    names its body's bytes, so a cut found by root is the cut of that body, whichever save
    or chain put it."""

    body: memoryview
    offsets: list[int]
    digests: list[bytes]


class _FieldsTable(msgspec.Struct):
    """A version's fields, kept in memory so the next save need not read them again."""

    entries: dict[str, Entry]
    node_ids: set[bytes]
    name_hashes: dict[str, bytes]


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------

_memory_stores: dict[str, tuple[MemoryObjectStore, MemoryMetaStore, ProcessLiveness]] = {}
_memory_lock = threading.Lock()


def _check_handle_options(*, threads: object, cache_bytes: object) -> None:
    if threads is not None and (type(threads) is not int or threads < 1):
        raise InvalidInputError(f"threads must be an int >= 1, not {threads!r}", path="threads")
    if cache_bytes is not None and (type(cache_bytes) is not int or cache_bytes < 0):
        raise InvalidInputError(
            f"cache_bytes must be an int >= 0, not {cache_bytes!r}", path="cache_bytes"
        )


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
    options = {
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
    _check_handle_options(threads=threads, cache_bytes=cache_bytes)
    location = _location(url, create=create)
    meta = _open_meta(location, fsync=True)
    try:
        config = _load_or_create_config(meta, given, create=create, where=str(url))
        if not config.fsync and isinstance(location, Path):
            # Created without fsync: metadata commits need not wait for the disk either.
            meta.close()
            meta = _open_meta(location, fsync=False)
        objects = _open_objects(location, fsync=config.fsync)
    except BaseException:
        meta.close()
        raise
    liveness = (
        _memory_stores[location][2]
        if isinstance(location, str)
        else FileLiveness(location / "locks")
    )
    return Repository(
        objects,
        meta,
        config,
        threads=threads,
        url=str(url),
        cache_bytes=cache_bytes,
        liveness=liveness,
    )


def _location(url: str | os.PathLike[str], *, create: bool) -> Path | str:
    """The directory of a local repository, or the name of a memory one."""
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise InvalidInputError("url must be a non-empty path or URL", path="url")
    if text.startswith("memory://"):
        name = text[len("memory://") :]
        with _memory_lock:
            if name not in _memory_stores:
                if not create:
                    raise NotFoundError(f"no repository at {text} (create=False)")
                _memory_stores[name] = (MemoryObjectStore(), MemoryMetaStore(), ProcessLiveness())
        return name
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInputError(
                f"a file URL names a local path (file:///abs/path), not host {parsed.netloc!r}",
                path="url",
            )
        path = Path(unquote(parsed.path))
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"repository URL scheme {scheme!r} is not supported by this version "
            "(use a path, file:///abs/path or memory://name)"
        )
    else:
        path = Path(text)
    if not (path / "meta.sqlite").exists():
        if not create:
            raise NotFoundError(f"no repository at {path} (create=False)")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
    return path


def _open_meta(location: Path | str, *, fsync: bool) -> MetaStore:
    if isinstance(location, str):
        return _memory_stores[location][1]  # closing a memory store keeps its contents
    return SQLiteMetaStore(location / "meta.sqlite", synchronous="FULL" if fsync else "NORMAL")


def _open_objects(location: Path | str, *, fsync: bool) -> ObjectStore:
    if isinstance(location, str):
        return _memory_stores[location][0]
    return LocalObjectStore(location / "objects", fsync=fsync)


def _load_or_create_config(
    meta: MetaStore, given: dict[str, Any], *, create: bool, where: str
) -> Config:
    stored = meta.get("config")
    if stored is None:
        if not create:
            raise NotFoundError(f"no repository at {where} (create=False)")
        config = _check_config(given)
        if meta.put_if_absent("config", MANIFEST_ENCODER.encode(config)):
            return config
        stored = meta.get("config")
        assert stored is not None
    try:
        raw = msgspec.msgpack.decode(stored)
        version = raw.get("format") if isinstance(raw, dict) else None
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"the configuration of {where} is unreadable: {exc}") from exc
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"the repository at {where} has format {version}, newer than this statebag "
            f"reads (format {FORMAT_VERSION}); upgrade statebag"
        )
    config = _CONFIG_DECODER.decode(stored)
    for name, value in given.items():
        if getattr(config, name) != value:
            raise ConfigError(
                f"option {name}={value!r} contradicts the repository at {where}, created "
                f"with {name}={getattr(config, name)!r}; leave it out or pass the same value"
            )
    return config


def _check_config(given: dict[str, Any]) -> Config:
    for name, value in given.items():
        expected = bool if name == "fsync" else int
        if type(value) is not expected:
            raise InvalidInputError(
                f"option {name} must be {expected.__name__}, not {value!r}", path=name
            )
    config = Config(**given)
    try:
        Chunker(config.min_size, config.avg_size, config.max_size, config.seed)
    except ValueError as exc:
        raise InvalidInputError(f"chunker options: {exc}", path="avg_size") from exc
    if not 16 <= config.inline_max <= 65536:
        raise InvalidInputError(
            f"inline_max must be from 16 to 65536 bytes, not {config.inline_max}",
            path="inline_max",
        )
    if not MIB <= config.pack_size <= 1024 * MIB:
        raise InvalidInputError(
            f"pack_size must be from 1 MiB to 1 GiB, not {config.pack_size}", path="pack_size"
        )
    codec.compress(b"", level=config.compression_level)  # validates the level
    if config.grace < 0:
        raise InvalidInputError(f"grace must be seconds >= 0, not {config.grace}", path="grace")
    return config


def check_chain(chain: object, /, *, field: str = "chain") -> str:
    """A chain name: 1..256 characters, no control characters, not shaped like an id."""
    if not isinstance(chain, str) or not chain:
        raise InvalidInputError(f"{field} must be a non-empty str, not {chain!r}", path=field)
    if len(chain) > 256:
        raise InvalidInputError(f"{field} is longer than 256 characters", path=field)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in chain):
        raise InvalidInputError(f"{field} {chain!r} has a control character", path=field)
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


def _field_path(name: str, inner: str | None) -> str:
    if not inner or inner == "$":
        return name
    return f"{name}{inner}" if inner.startswith("[") else f"{name}.{inner}"


# ---------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------


class Repository:
    """A versioned state store; see the module docstring. Use :func:`statebag.open`."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        config: Config,
        /,
        *,
        threads: int | None = None,
        url: str = "",
        lease: float = DEFAULT_LEASE,
        cache_bytes: int | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        _check_handle_options(threads=threads, cache_bytes=cache_bytes)
        if cache_bytes is None:
            cache_bytes = _CUT_CACHE_BYTES
        # Every request is counted, so callers (the hydrator, benchmarks) can report the
        # object-store cost of an operation without wrapping the store themselves.
        self._counting = CountingObjectStore(objects)
        self._objects: ObjectStore = self._counting
        self._meta = meta
        self._config = config
        self._url = url
        self._lease = lease
        self._liveness = liveness if liveness is not None else Liveness()
        self._collector = Collector(
            self._objects,
            meta,
            liveness=self._liveness,
            read_nodes=self._read_nodes,
            forget=lambda manifest_id: self._manifests.discard(manifest_id),
            lease=lease,
        )
        self._chunker = Chunker(config.min_size, config.avg_size, config.max_size, config.seed)
        self._max_node = max(config.max_size, config.inline_max) + 16 * MIB
        self._pool = ThreadPoolExecutor(
            max_workers=threads or min(4, os.cpu_count() or 2),
            thread_name_prefix="statebag",
        )
        self._lock = threading.Lock()
        self._closed = False
        self._structs: OrderedDict[bytes, bytes] = OrderedDict()  # index and fields nodes
        self._structs_bytes = 0
        self._tables: _Recent[_FieldsTable] = _Recent(_FIELDS_CACHE)
        self._manifests: _Recent[Manifest] = _Recent(_MANIFEST_CACHE)
        # One version of each value is kept (a new cut replaces its parent's), not a history
        # that would push out the values the next save needs.
        self._cuts: _Recent[_Cut] = _Recent(cache_bytes, weigh=lambda cut: cut.body.nbytes)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def io_counters(self) -> IOCounters:
        """Object-store requests and bytes of this handle so far (every thread's); subtract
        two snapshots for the cost of what ran between them."""
        return self._counting.snapshot()

    def close(self) -> None:
        """Release threads and store handles; the repository is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        self._objects.close()
        self._meta.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<statebag.Repository {self._url!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise StatebagError("the repository is closed")

    # -- save --------------------------------------------------------------------------------

    def save(
        self,
        chain: str,
        state: Mapping[str, Any] | StateBag,
        *,
        parent: str | None = None,
        changed: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        level: int | None = None,
        hold: float | timedelta | None = None,
        new_chain: bool = False,
        merged: Iterable[str] | None = None,
    ) -> CommitResult:
        """Commit ``state`` as the next version of ``chain``; see the README for the rules.

        ``parent=None`` saves on top of the chain's current head (or starts the chain);
        a parent id must equal the head, else :class:`ConflictError`. ``new_chain=True``
        saves only the first version of a chain: ConflictError if it has a head. ``changed``
        names the top-level fields whose values changed since the parent: the others present
        in both are carried over without being encoded. A :class:`StateBag` supplies its own
        dirty set when it was loaded from (or last saved as) the parent.

        ``merged`` names more parents after the first (a fan-in: the state is what the
        caller merged); each must exist, and still exist when the commit lands.

        ``level`` compresses this save's new nodes at another level than the repository's
        (0 stores them raw; every frame names its codec). ``hold`` keeps the new version
        from retention for that long, set in the commit itself (see :meth:`hold`).
        """
        self._check_open()
        level = self._check_level(level)
        hold_s = None if hold is None else as_seconds(hold, field="hold")
        chain = check_chain(chain)
        if not isinstance(new_chain, bool):
            raise InvalidInputError(
                f"new_chain must be a bool, not {new_chain!r}", path="new_chain"
            )
        if new_chain and parent is not None:
            raise InvalidInputError(
                "new_chain=True starts a chain, which has no parent; pass one or the other",
                path="new_chain",
            )
        bag = state if isinstance(state, StateBag) else None
        data = snapshot_state(state)
        meta_raw = self._encode_meta(meta)
        hint = None if changed is None else field_names(changed, field="changed")
        others = self._other_parents(merged)

        head_bytes = self._meta.get(head_key(chain))
        head = decode_head(head_bytes) if head_bytes is not None else None
        if new_chain and head is not None:
            raise ConflictError(
                f"chain {chain!r} already exists (its head is {head.head.hex()}); "
                "new_chain=True saves only a chain's first version"
            )
        if parent is not None:
            wanted = ContentId.parse(parent, field="parent")
            if head is None or head.head != wanted:
                now = head.head.hex() if head is not None else None
                raise ConflictError(
                    f"chain {chain!r} is at {now}, not at parent {wanted.hex()}; load the "
                    "head and apply the step again"
                )
        if head is not None and head.head in {mid for mid, _, _ in others}:
            raise InvalidInputError(
                f"merged names the parent {head.head.hex()} again", path="merged"
            )
        base: _FieldsTable | None = None
        extra: list[Op] = []
        if head is not None:
            try:
                parent_manifest = self._manifest(head.head)
                base = self._fields_table(parent_manifest.root)
            except (NotFoundError, IntegrityError) as exc:
                raise self._moved_under(chain, head_bytes, exc) from exc
            extra += self._leave_head(chain, head.head, parent_manifest)
            if hint is None and bag is not None and bag.base == head.head.hex():
                hint = set(bag.dirty)
        else:
            hint = None  # nothing to carry over
        parents = ([head.head] if head is not None else []) + [mid for mid, _, _ in others]
        seqs = ([head.seq] if head is not None else []) + [seq for _, seq, _ in others]
        return self._write_version(
            chain,
            data=data,
            given={},
            base=base,
            hint=hint,
            head_bytes=head_bytes,
            parents=parents,
            seq=max(seqs, default=0) + 1,
            guards=[guard for _, _, guard in others],
            extra=extra,
            meta_raw=meta_raw,
            level=level,
            hold_s=hold_s,
            bag=bag,
        )

    def _check_level(self, level: int | None) -> int:
        if level is None:
            return self._config.compression_level
        try:
            codec.compress(b"", level=level)
        except InvalidInputError as exc:
            raise InvalidInputError(str(exc), path="level") from exc
        return level

    def _other_parents(self, merged: Iterable[str] | None) -> list[tuple[bytes, int, Check]]:
        """The ``merged`` parents of a fan-in save: (id, seq, the commit's check that the
        version still exists), each read once now."""
        if merged is None:
            return []
        if isinstance(merged, (str, bytes)) or not isinstance(merged, Iterable):
            raise InvalidInputError(
                f"merged must be an iterable of manifest ids, not {merged!r}", path="merged"
            )
        found: list[tuple[bytes, int, Check]] = []
        for position, text in enumerate(merged):
            manifest_id = ContentId.parse(text, field=f"merged[{position}]")
            if any(manifest_id == mid for mid, _, _ in found):
                raise InvalidInputError(
                    f"merged names {manifest_id.hex()} twice", path=f"merged[{position}]"
                )
            key, stored = self._stored_manifest(manifest_id)
            seq = MANIFEST_DECODER.decode(stored).seq
            found.append((bytes(manifest_id), seq, Check(key, stored)))
        return found

    def _leave_head(self, chain: str, head_id: bytes, head_manifest: Manifest) -> list[Op]:
        """The ops that move ``chain``'s head away from ``head_id``: a version of another
        chain heads a forked chain, and counts it in ``fork/<id>`` meanwhile."""
        if head_manifest.chain == chain:
            return []
        return [Add(f"fork/{head_id.hex()}", -1)]

    def _write_version(
        self,
        chain: str,
        *,
        data: Mapping[str, Any],
        given: Mapping[str, Entry],
        base: _FieldsTable | None,
        hint: set[str] | frozenset[str] | None,
        head_bytes: bytes | None,
        parents: list[bytes],
        seq: int,
        guards: list[Check],
        extra: list[Op],
        meta_raw: msgspec.Raw | None,
        level: int,
        hold_s: float | None,
        bag: StateBag | None,
    ) -> CommitResult:
        """Encode and commit one version: ``data``'s fields are encoded (carried from
        ``base`` per ``hint``), ``given``'s entries are taken as they are stored."""
        started = time.perf_counter()
        timings = dict.fromkeys(("encode", "chunk", "compress", "upload", "commit"), 0.0)
        requests = {"object_puts": 0, "object_gets": 0, "meta_reads": 1, "meta_writes": 0}
        names = sorted({*data, *given})
        entries: dict[str, Entry] = {}
        new_nodes: dict[bytes, NewNode] = {}
        txn = new_txn_id()
        packer = _Packer(
            Prepare(
                self._objects,
                self._meta,
                txn=txn,
                chain=chain,
                lease=self._lease,
                submit=self._pool.submit,
                liveness=self._liveness,
            ),
            pack_size=self._config.pack_size,
        )
        found: dict[bytes, tuple[NewNode, bytes]] = {}
        # The writer's lock (see statebag.liveness) is released however the save ends.
        try:
            try:
                encoded = self._encode_state(
                    data,
                    given,
                    names,
                    base,
                    hint,
                    entries,
                    new_nodes,
                    found,
                    packer,
                    timings,
                    requests,
                    level,
                )
            except (NotFoundError, IntegrityError) as exc:
                packer.prepare.abandon()
                raise self._moved_under(chain, head_bytes, exc) from exc
            except BaseException:
                packer.prepare.abandon()
                raise
            root, packs, logical = encoded.root, encoded.packs, encoded.logical
            manifest = Manifest(
                format=FORMAT_VERSION,
                chain=chain,
                seq=seq,
                parents=parents,
                root=root,
                fields=len(entries),
                size=logical,
                time_ns=time.time_ns(),
                meta=meta_raw if meta_raw is not None else msgspec.Raw(b"\xc0"),
            )
            manifest_bytes = MANIFEST_ENCODER.encode(manifest)
            manifest_id = bytes(ContentId.of(manifest_bytes))
            tx = Transaction(
                txn=txn,
                chain=chain,
                expected_head=head_bytes,
                new_head=HeadRecord(manifest_id, manifest.seq, txn),
                manifest_id=manifest_id,
                manifest=manifest_bytes,
                bytes_logical=logical,
                root=root,
                packs=packs,
                new_nodes=new_nodes,
                lease=self._lease,
                found=found,
                guards=guards,
                extra=[
                    *extra,
                    Put(
                        version_key(chain, manifest.seq, manifest_id),
                        manifest.time_ns.to_bytes(8, "little"),
                    ),
                ],
                level=level,
            )
            if hold_s is not None:
                until = time.time_ns() + int(hold_s * 1e9)
                tx.extra.append(Put(f"hold/{manifest_id.hex()}", until.to_bytes(8, "little")))
            t = time.perf_counter()
            commit(self._objects, self._meta, tx, prepared=packer.prepare)
            timings["commit"] = time.perf_counter() - t
            timings["upload"] = tx.timings.get("upload", 0.0)
            for key, count in tx.requests.items():
                requests[key] = requests.get(key, 0) + count
            self._remember_manifest(manifest_id, manifest)
            self._remember_table(
                root,
                _FieldsTable(
                    entries,
                    {node.node_id for node in encoded.fields_nodes},
                    {name: encoded.name_hashes[name] for name in entries},
                ),
            )
            if bag is not None:
                bag.mark_saved(manifest_id.hex())
            written = [node for node_id, node in new_nodes.items() if node_id not in tx.reused_late]
            timings["total"] = time.perf_counter() - started
            return CommitResult(
                manifest_id=manifest_id.hex(),
                parent=parents[0].hex() if parents else None,
                parents=[p.hex() for p in manifest.parents],
                chain=chain,
                seq=manifest.seq,
                nodes_written=len(written),
                nodes_reused=encoded.reused + len(tx.reused_late),
                bytes_logical=logical,
                bytes_new_raw=sum(len(node.data) for node in written),
                bytes_new_stored=sum(len(data) for _, data, _ in tx.packs),
                requests=requests,
                timings=timings,
                node_ids=[node.node_id.hex() for node in written],
                pack_keys=[pack_key(pack_id) for pack_id, _, _ in tx.packs],
            )
        finally:
            packer.prepare.release()

    def _encode_state(
        self,
        data: Mapping[str, Any],
        given: Mapping[str, Entry],
        names: list[str],
        base: _FieldsTable | None,
        hint: set[str] | frozenset[str] | None,
        entries: dict[str, Entry],
        new_nodes: dict[bytes, NewNode],
        found: dict[bytes, tuple[NewNode, bytes]],
        packer: _Packer,
        timings: dict[str, float],
        requests: dict[str, int],
        level: int,
    ) -> _Encoded:
        """Encode, cut and compress the fields into ``entries`` and ``new_nodes``; ship full
        packs as they fill."""
        seen: set[bytes] = set()
        # Nodes wait here for one index lookup for several fields (a query per field cost
        # more than the lookups themselves), then go to the compression pool.
        lookup: list[NewNode] = []
        lookup_bytes = 0

        def flush() -> None:
            fresh, reused = self._select_new(lookup, seen, requests, found)
            packer.reused += reused
            for node in fresh:
                new_nodes[node.node_id] = node
            packer.add(self._submit_compress(fresh, level))
            lookup.clear()

        for name in names:
            taken = given.get(name)
            if taken is not None:
                # A merge takes this field as one side stored it: nothing to encode.
                entries[name] = taken
                packer.reused += type(taken) is TreeField
                continue
            old = base.entries.get(name) if base is not None else None
            if old is not None and hint is not None and name not in hint:
                entries[name] = old
                packer.reused += type(old) is TreeField
                continue
            t = time.perf_counter()
            encoded = self._encode_field(name, data[name])
            timings["encode"] += time.perf_counter() - t
            if len(encoded) < self._config.inline_max:
                entries[name] = InlineField(encoded)
                continue
            t = time.perf_counter()
            head_len = dag.head_length(encoded)
            body = memoryview(encoded)[head_len:]
            threads = 2 if len(body) >= _PARALLEL_CUT_BYTES else 1
            previous = self._cuts.get(old.root) if type(old) is TreeField else None
            if previous is not None:
                offsets, digests, _ = recut(
                    self._chunker,
                    previous.body,
                    previous.offsets,
                    previous.digests,
                    body,
                    threads=threads,
                )
            else:
                offsets, digests = self._chunker.cut_and_hash(body, threads=threads)
            entry, nodes = dag.split_value(encoded, offsets, digests, head=head_len, unless=old)
            if len(body) >= _RECUT_MIN_BYTES:
                self._cuts.put(
                    entry.root,
                    _Cut(body, offsets, digests),
                    replaces=old.root if type(old) is TreeField else None,
                )
            timings["chunk"] += time.perf_counter() - t
            if old == entry:
                entries[name] = old
                packer.reused += 1
                continue
            entries[name] = entry
            if type(old) is TreeField:
                # The parent's value of this field: its nodes need no lookup to be known.
                if previous is not None:
                    seen.update(previous.digests)
                else:
                    seen.update(node_id for node_id, _ in self._leaves(old))
            lookup.extend(nodes)
            lookup_bytes += len(body)
            if len(lookup) >= _LOOKUP_NODES or lookup_bytes >= _LOOKUP_BYTES:
                flush()
                lookup_bytes = 0
            packer.drain(block=False)
        flush()

        ordered = sorted(entries.items())
        name_hashes = dict(base.name_hashes) if base is not None else {}
        root, fields_nodes = dag.build_fields(ordered, hashes=name_hashes)
        known = base.node_ids if base is not None else set()
        unknown = [node for node in fields_nodes if node.node_id not in known]
        packer.reused += len(fields_nodes) - len(unknown)
        fresh, reused = self._select_new(unknown, seen, requests, found)
        packer.reused += reused
        for node in fresh:
            new_nodes[node.node_id] = node
        packer.add(self._submit_compress(fresh, level))

        t = time.perf_counter()
        packs = packer.finish()
        timings["compress"] = time.perf_counter() - t
        return _Encoded(
            root=root,
            packs=packs,
            logical=sum(dag.entry_size(entry) for entry in entries.values()),
            fields_nodes=fields_nodes,
            name_hashes=name_hashes,
            reused=packer.reused,
        )

    def _moved_under(
        self, chain: str, head_bytes: bytes | None, error: StatebagError
    ) -> StatebagError:
        """What to raise when reading the parent version failed: a ConflictError if the
        chain's head moved since the save read it (the parent, no longer the head, may have
        been deleted and collected meanwhile), else the error itself."""
        if self._meta.get(head_key(chain)) != head_bytes:
            return ConflictError(
                f"chain {chain!r} moved while the save read its parent version; load the new "
                "head and apply the step again"
            )
        return error

    def _encode_meta(self, meta: Mapping[str, Any] | None) -> msgspec.Raw | None:
        if meta is None:
            return None
        if not isinstance(meta, Mapping):
            raise InvalidInputError(
                f"meta must be a Mapping[str, Any] or None, not {type(meta).__name__}",
                path="meta",
            )
        try:
            return msgspec.Raw(codec.encode(dict(meta)))
        except InvalidInputError as exc:
            path = _field_path("meta", exc.path)
            raise InvalidInputError(f"meta: {exc}", path=path) from exc

    def _encode_field(self, name: str, value: Any) -> bytes:
        try:
            return codec.encode(value)
        except InvalidInputError as exc:
            path = _field_path(name, exc.path)
            raise InvalidInputError(f"field {name!r}: {exc}", path=path) from exc

    def _select_new(
        self,
        nodes: Sequence[NewNode],
        seen: set[bytes],
        requests: dict[str, int],
        found: dict[bytes, tuple[NewNode, bytes]],
    ) -> tuple[list[NewNode], int]:
        """The nodes not yet stored (nor already taken by this save), and how many were.

        Nodes found stored go into ``found`` with their index record: the commit checks they
        are still there (gc may sweep a node no version references while this save runs).
        Nodes of the parent version (``seen`` before the call) need no check: the parent is
        the chain's head, which cannot be deleted while the head does not move.
        """
        candidates: list[NewNode] = []
        for node in nodes:
            if node.node_id not in seen:
                seen.add(node.node_id)
                candidates.append(node)
        if not candidates:
            return [], len(nodes)
        stored = self._meta.get_many([f"node/{node.node_id.hex()}" for node in candidates])
        requests["meta_reads"] += 1
        fresh = []
        for node in candidates:
            record = stored.get(f"node/{node.node_id.hex()}")
            if record is None:
                fresh.append(node)
            else:
                found[node.node_id] = (node, record)
        return fresh, len(candidates) - len(fresh)

    def _submit_compress(
        self, nodes: list[NewNode], level: int
    ) -> list[tuple[list[NewNode], Future[list[tuple[bytes, Any]]]]]:
        jobs: list[tuple[list[NewNode], Future[list[tuple[bytes, Any]]]]] = []
        batch: list[NewNode] = []
        size = 0
        for node in nodes:
            batch.append(node)
            size += len(node.data)
            if size >= _COMPRESS_TASK_BYTES:
                jobs.append((batch, self._pool.submit(_compress_all, batch, level)))
                batch, size = [], 0
        if batch:
            if not jobs and size <= _COMPRESS_INLINE_BYTES:
                # A small save: handing a few chunks to a pool thread costs more than
                # compressing them here.
                done: Future[list[tuple[bytes, Any]]] = Future()
                done.set_result(_compress_all(batch, level))
                jobs.append((batch, done))
            else:
                jobs.append((batch, self._pool.submit(_compress_all, batch, level)))
        return jobs

    # -- reading nodes -----------------------------------------------------------------------

    def _read_nodes(self, ids: Sequence[bytes], /, *, cache: bool = False) -> dict[bytes, bytes]:
        """The bytes of nodes ``ids``, verified; IntegrityError names any that cannot be read."""
        found, pending = self._start_reads(ids)
        result = {node_id: bytes(data) for node_id, data in found.items()}
        for future in set(pending.values()):
            result.update((node_id, bytes(data)) for node_id, data in future.result().items())
        if cache:
            self._cache_structs(result)
        return result

    def _start_reads(
        self, ids: Sequence[bytes], /, *, verify: bool = True
    ) -> tuple[dict[bytes, bytes | memoryview], dict[bytes, Future[dict[bytes, memoryview]]]]:
        """Nodes found in the cache, and a future per node for the rest (shared per range).

        Nodes are read in ranges of one pack (neighbours merged across small gaps), each range
        fetched, decompressed and (unless ``verify=False``: then the caller must check every
        node's hash itself) verified on the pool, so a caller can use the first nodes while
        later ranges are still on their way.
        """
        found: dict[bytes, bytes | memoryview] = {}
        wanted: list[bytes] = []
        with self._lock:
            for node_id in ids:
                data = self._structs.get(node_id)
                if data is not None:
                    self._structs.move_to_end(node_id)
                    found[node_id] = data
                else:
                    wanted.append(node_id)
        pending: dict[bytes, Future[dict[bytes, memoryview]]] = {}
        wanted = list(dict.fromkeys(wanted))
        # Every node is located before the first range is read: a lookup releases the GIL
        # inside SQLite and then waits to take it back behind pool threads that are busy
        # with ranges already submitted, which cost more than the reads gained by starting
        # early (measured on the embedded backend).
        plans = [
            self._plan_ranges(wanted[start : start + _READ_SLICE])
            for start in range(0, len(wanted), _READ_SLICE)
        ]
        for plan in plans:
            for group in plan:
                future = self._pool.submit(self._read_range, group, verify)
                for node_id, _ in group:
                    pending[node_id] = future
        return found, pending

    def _plan_ranges(self, wanted: list[bytes]) -> list[list[tuple[bytes, IndexRecord]]]:
        """The pack ranges holding nodes ``wanted``, in the order the nodes were asked for."""
        records = self._meta.get_many([f"node/{node_id.hex()}" for node_id in wanted])
        by_pack: dict[bytes, list[tuple[bytes, IndexRecord]]] = {}
        for node_id in wanted:
            text = node_id.hex()
            stored = records.get(f"node/{text}")
            if stored is None:
                raise IntegrityError(
                    f"node {text} is referenced but not in the index", object_id=text
                )
            record = IndexRecord.decode(stored, node_id=text)
            by_pack.setdefault(record.pack_id, []).append((node_id, record))
        ranges: list[list[tuple[bytes, IndexRecord]]] = []
        for members in by_pack.values():
            members.sort(key=lambda item: item[1].offset)
            current: list[tuple[bytes, IndexRecord]] = []
            for item in members:
                if current:
                    first, last = current[0][1], current[-1][1]
                    end = last.offset + last.length
                    if (
                        item[1].offset - end > _READ_GAP
                        or item[1].offset + item[1].length - first.offset > _READ_MAX
                    ):
                        ranges.append(current)
                        current = []
                current.append(item)
            ranges.append(current)
        position = {node_id: index for index, node_id in enumerate(wanted)}
        ranges.sort(key=lambda group: min(position[node_id] for node_id, _ in group))
        return ranges

    def _read_range(
        self, group: list[tuple[bytes, IndexRecord]], verify: bool = True, moved: bool = False
    ) -> dict[bytes, memoryview]:
        """Fetch, decompress and (with ``verify``) hash-check the nodes of one pack range."""
        pack_id = group[0][1].pack_id
        start = group[0][1].offset
        end = max(record.offset + record.length for _, record in group)
        key = pack_key(pack_id)
        try:
            blob = self._objects.get(key, offset=start, length=end - start)
        except NotFoundError as exc:
            if not moved:
                # gc may have compacted the pack since the index was read: read again where
                # the index says the nodes are now.
                again = self._plan_ranges([node_id for node_id, _ in group])
                if any(part[0][1].pack_id != pack_id for part in again):
                    result: dict[bytes, memoryview] = {}
                    for part in again:
                        result.update(self._read_range(part, verify, True))
                    return result
            raise IntegrityError(
                f"pack {pack_id.hex()} is missing; it holds node {group[0][0].hex()}",
                object_id=pack_id.hex(),
            ) from exc
        view = memoryview(blob)
        frames: list[memoryview] = []
        for node_id, record in group:
            lo = record.offset - start
            frame = view[lo : lo + record.length]
            if frame.nbytes != record.length:
                raise IntegrityError(
                    f"pack {pack_id.hex()} is truncated: node {node_id.hex()} is cut short",
                    object_id=node_id.hex(),
                )
            frames.append(frame)
        datas = codec.decompress_batch(
            frames,
            sizes=[record.size for _, record in group],
            expected=[node_id for node_id, _ in group],
            verify=verify,
        )
        return {node_id: data for (node_id, _), data in zip(group, datas, strict=True)}

    def _cache_structs(self, nodes: Mapping[bytes, bytes]) -> None:
        with self._lock:
            for node_id, data in nodes.items():
                if node_id in self._structs:
                    continue
                self._structs[node_id] = data
                self._structs_bytes += len(data)
            while self._structs_bytes > _STRUCT_CACHE_BYTES and self._structs:
                _, dropped = self._structs.popitem(last=False)
                self._structs_bytes -= len(dropped)

    def _fetch_structs(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        return self._read_nodes(ids, cache=True)

    # -- manifests and fields tables ---------------------------------------------------------

    def _manifest(self, manifest_id: bytes) -> Manifest:
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached
        text = manifest_id.hex()
        stored = self._meta.get(f"manifest/{text}")
        if stored is None:
            if self._meta.get(f"tomb/{text}") is not None:
                raise NotFoundError(f"manifest {text} was deleted (a tombstone remains)")
            raise NotFoundError(f"manifest {text} does not exist")
        if ContentId.of(stored) != manifest_id:
            raise IntegrityError(
                f"manifest {text} is corrupt: its bytes hash to another id", object_id=text
            )
        try:
            manifest = MANIFEST_DECODER.decode(stored)
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"manifest {text} is malformed: {exc}", object_id=text) from exc
        self._remember_manifest(manifest_id, manifest)
        return manifest

    def _stored_manifest(self, manifest_id: bytes) -> tuple[str, bytes]:
        """The key and stored bytes of a manifest, read now (never from the cache), for a
        write conditional on its still being there; NotFoundError if it is not."""
        key = f"manifest/{manifest_id.hex()}"
        stored = self._meta.get(key)
        if stored is None:
            self._manifests.discard(manifest_id)
            if self._meta.get(f"tomb/{manifest_id.hex()}") is not None:
                raise NotFoundError(f"manifest {manifest_id.hex()} was deleted")
            raise NotFoundError(f"manifest {manifest_id.hex()} does not exist")
        return key, stored

    def _remember_manifest(self, manifest_id: bytes, manifest: Manifest) -> None:
        self._manifests.put(manifest_id, manifest)

    def _fields_table(self, root: bytes) -> _FieldsTable:
        table = self._tables.get(root)
        if table is not None:
            return table
        node_ids: set[bytes] = set()

        def fetch(ids: Sequence[bytes]) -> dict[bytes, bytes]:
            node_ids.update(ids)
            return self._fetch_structs(ids)

        entries = dict(dag.iter_fields(root, fetch))
        table = _FieldsTable(entries, node_ids, {})
        self._remember_table(root, table)
        return table

    def _remember_table(self, root: bytes, table: _FieldsTable) -> None:
        self._tables.put(root, table)

    def _resolve(self, manifest_id: str, *, field: str = "manifest_id") -> bytes:
        return ContentId.parse(manifest_id, field=field)

    # -- load --------------------------------------------------------------------------------

    def load(
        self,
        manifest_id: str,
        fields: Iterable[str] | None = None,
        lazy: bool = False,
    ) -> dict[str, Any] | LazyState:
        """The state of version ``manifest_id``: a dict, or only ``fields``, or a lazy mapping.

        Dict keys come back sorted, and nested dicts' keys too (the canonical encoding sorts
        them); values are equal to what was saved, with tuples as lists.
        """
        self._check_open()
        raw = self._resolve(manifest_id)
        try:
            manifest = self._manifest(raw)
            table = self._fields_table(manifest.root)
            entries = table.entries
            if fields is not None:
                wanted = field_names(fields, field="fields")
                missing = sorted(wanted - entries.keys())
                if missing:
                    raise NotFoundError(
                        f"version {manifest_id} has no field {', '.join(map(repr, missing))}"
                    )
                entries = {name: entries[name] for name in sorted(wanted)}
            if lazy:
                return LazyState(self, entries)
            return self._materialize(entries)
        except IntegrityError as exc:
            # A version deleted (and swept) by another handle while this one still had it in
            # its cache is gone, not corrupt.
            if self._meta.get(f"manifest/{raw.hex()}") is None:
                self._manifests.discard(raw)
                raise NotFoundError(
                    f"manifest {raw.hex()} was deleted while it was being read"
                ) from exc
            raise

    def load_latest(
        self, chain: str, fields: Iterable[str] | None = None, lazy: bool = False
    ) -> dict[str, Any] | LazyState:
        """The state at the head of ``chain``; NotFoundError when it has no version."""
        while True:
            head = self.head(chain)
            if head is None:
                raise NotFoundError(f"chain {chain!r} has no version")
            try:
                return self.load(head, fields=fields, lazy=lazy)
            except NotFoundError:
                # The head moved on and gc collected the version read as head meanwhile:
                # read the new head. A missing field or chain is raised as it is.
                if self.head(chain) == head:
                    raise

    def load_bag(self, chain_or_id: str, /) -> StateBag:
        """A :class:`StateBag` of a version (a chain's head, or an id), ready to save from."""
        manifest_id = chain_or_id if looks_like_id(chain_or_id) else self.head(chain_or_id)
        if manifest_id is None:
            raise NotFoundError(f"chain {chain_or_id!r} has no version")
        state = self.load(manifest_id)
        assert isinstance(state, dict)
        bag = StateBag(state)
        bag.mark_saved(manifest_id)
        return bag

    def _materialize(self, entries: Mapping[str, Entry]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        trees: list[tuple[str, TreeField]] = []
        for name, entry in entries.items():
            if type(entry) is InlineField:
                result[name] = codec.decode(entry.encoded)
            else:
                assert type(entry) is TreeField
                trees.append((name, entry))
        if not trees:
            return result
        leaves = dag.leaves_of_many(
            {name: (entry.root, entry.level) for name, entry in trees}, self._fetch_structs
        )
        # Chunks are hash-checked here, as they are copied, not on the pool: a pool thread
        # re-taking the GIL after every hash would wait out the switch interval each time
        # behind the decode running here, and the pool would fall behind.
        found, pending = self._start_reads(
            [node_id for chunks in leaves.values() for node_id, _ in chunks], verify=False
        )
        # Each value is assembled (head, then chunks) in one scratch buffer reused from field
        # to field: a fresh buffer per field would cost a page fault per 4 KiB.
        scratch = bytearray()
        try:
            for name, entry in trees:
                total = len(entry.head) + entry.length
                if len(scratch) < total:
                    scratch = bytearray(max(total, 2 * len(scratch)))
                view = memoryview(scratch)
                view[: len(entry.head)] = entry.head
                position = len(entry.head)
                for node_id, _ in leaves[name]:
                    data = found.get(node_id)
                    if data is None:
                        found.update(pending[node_id].result())
                        data = found[node_id]
                    codec.check_digest(data, node_id)
                    size = len(data)
                    if position + size > total:
                        break
                    view[position : position + size] = data
                    position += size
                else:
                    if position == total:
                        result[name] = codec.decode(view[:total])
                        view.release()
                        continue
                view.release()
                raise IntegrityError(
                    f"field {name!r}: its chunks do not add up to the {entry.length} bytes "
                    "its entry says",
                    object_id=entry.root.hex(),
                )
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise
        return dict(sorted(result.items()))

    def _leaves(self, entry: TreeField) -> list[tuple[bytes, int]]:
        return dag.leaves_of(entry.root, entry.level, self._fetch_structs)

    # -- chains ------------------------------------------------------------------------------

    def head(self, chain: str) -> str | None:
        """The manifest id at the head of ``chain``, or None when it has no version."""
        self._check_open()
        stored = self._meta.get(head_key(check_chain(chain)))
        return decode_head(stored).head.hex() if stored is not None else None

    def chains(self) -> Iterator[str]:
        """The names of every chain with a head, sorted."""
        self._check_open()
        for key, _ in self._meta.scan("chain/"):
            yield key[len("chain/") :]

    def log(self, chain: str, *, graph: bool = False) -> Iterator[ManifestInfo]:
        """The versions of ``chain`` from its head back along first parents, newest first,
        ending at the first version or where older versions were deleted.

        ``graph=True`` lists every ancestor of the head through all parents (merged
        branches included), each once, newest first: by seq, which is one more than the
        largest of a version's parents', so every version comes before its parents."""
        if not isinstance(graph, bool):
            raise InvalidInputError(f"graph must be a bool, not {graph!r}", path="graph")
        current = self.head(chain)
        if current is None:
            return
        if graph:
            yield from self._graph(chain, bytes.fromhex(current))
            return
        manifest_id: bytes | None = bytes.fromhex(current)
        while manifest_id is not None:
            manifest = self._ancestor(chain, manifest_id)
            if manifest is None:
                return  # the older versions were deleted: the history was pruned here
            yield self._info(manifest_id, manifest)
            manifest_id = manifest.parents[0] if manifest.parents else None

    def _ancestor(self, chain: str, manifest_id: bytes) -> Manifest | None:
        """An ancestor's manifest, or None where it was deleted (a tombstone); a parent link
        to nothing is a broken chain."""
        try:
            return self._manifest(manifest_id)
        except NotFoundError as exc:
            if self._meta.get(f"tomb/{manifest_id.hex()}") is not None:
                return None
            raise IntegrityError(
                f"chain {chain!r} is broken: version {manifest_id.hex()} is neither "
                "present nor deleted",
                object_id=manifest_id.hex(),
            ) from exc

    def _graph(self, chain: str, head: bytes) -> Iterator[ManifestInfo]:
        # Newest first by (seq, time, id): a max-heap, so versions shared by several
        # branches are listed once, after all their descendants.
        first = self._manifest(head)
        queue = [(-first.seq, -first.time_ns, head)]
        queued = {head}
        while queue:
            _, _, manifest_id = heapq.heappop(queue)
            manifest = self._ancestor(chain, manifest_id)
            if manifest is None:
                continue
            yield self._info(manifest_id, manifest)
            for parent_id in manifest.parents:
                if parent_id in queued:
                    continue
                queued.add(parent_id)
                above = self._ancestor(chain, parent_id)
                if above is not None:
                    heapq.heappush(queue, (-above.seq, -above.time_ns, parent_id))

    def _info(self, manifest_id: bytes, manifest: Manifest) -> ManifestInfo:
        return ManifestInfo(
            manifest_id=manifest_id.hex(),
            chain=manifest.chain,
            parent=manifest.parents[0].hex() if manifest.parents else None,
            parents=[p.hex() for p in manifest.parents],
            seq=manifest.seq,
            created_at=datetime.fromtimestamp(manifest.time_ns / 1e9, tz=UTC),
            meta=codec.decode(manifest.meta),
            bytes_logical=manifest.size,
        )

    def info(self, manifest_id: str, /) -> ManifestInfo:
        """The log entry of one version."""
        raw = self._resolve(manifest_id)
        return self._info(raw, self._manifest(raw))

    def _version(self, chain_or_id: str, *, field: str) -> bytes:
        """A manifest id given as itself or as a chain name (its head): chain names never
        look like ids, so the two cannot be confused."""
        if not isinstance(chain_or_id, str):
            raise InvalidInputError(
                f"{field} must be a manifest id or a chain name, not {chain_or_id!r}", path=field
            )
        if looks_like_id(chain_or_id):
            return bytes.fromhex(chain_or_id)
        head = self.head(check_chain(chain_or_id, field=field))
        if head is None:
            raise NotFoundError(f"chain {chain_or_id!r} has no version")
        return bytes.fromhex(head)

    # -- branches ----------------------------------------------------------------------------

    def fork(self, source: str, new_chain: str, /) -> str:
        """Start ``new_chain`` at ``source`` (a chain's head, or a manifest id) and return
        that version's id. Nothing is copied and no version written: ``head(new_chain)`` is
        the fork point, and the next save on ``new_chain`` has it as parent.

        ConflictError if ``new_chain`` exists; NotFoundError if ``source`` does not."""
        self._check_open()
        new_chain = check_chain(new_chain, field="new_chain")
        for _ in range(_ATTEMPTS):
            point = self._version(source, field="source")
            key, stored = self._stored_manifest(point)
            manifest = self._manifest(point)
            current = self._meta.get(head_key(new_chain))
            if current is not None:
                raise ConflictError(
                    f"chain {new_chain!r} already exists (its head is "
                    f"{decode_head(current).head.hex()}); fork into a new name"
                )
            try:
                self._move_head(
                    new_chain,
                    point,
                    manifest,
                    (key, stored),
                    expect=None,
                    also=[Add("stat/chains", 1)],
                )
            except ConditionFailed:
                continue  # the source was deleted, or the chain created, meanwhile
            return point.hex()
        raise ConflictError(f"fork of {source!r} into {new_chain!r} kept racing; retry")

    def _move_head(
        self,
        chain: str,
        to: bytes,
        manifest: Manifest,
        stored: tuple[str, bytes],
        *,
        expect: bytes | None,
        also: list[Op],
    ) -> None:
        """Point ``chain``'s head at version ``to`` in one write, without a new version (a
        fork or a reset): conditional on the version still stored as read and on the head
        record being ``expect``, stamped with a fresh txn id, counting in ``fork/<to>`` a
        head on another chain's version. ConditionFailed when a condition fails; a write
        whose answer is lost reads the head back by its txn."""
        txn = new_txn_id()
        ops: list[Op] = [
            Check(*stored),
            Put(head_key(chain), encode_record(HeadRecord(to, manifest.seq, txn)), expect=expect),
            Add("stat/epoch", 1),
            *also,
        ]
        if manifest.chain != chain:
            ops.append(Add(f"fork/{to.hex()}", 1))
        try:
            self._meta.write(ops)
        except StatebagError:
            raise
        except Exception as exc:
            now = self._meta.get(head_key(chain))
            if now is None or decode_head(now).txn != txn:
                raise BackendError(
                    f"moving the head of chain {chain!r} failed: {exc}", retryable=True
                ) from exc

    def reset(self, chain: str, manifest_id: str, /) -> ResetResult:
        """Move ``chain``'s head back to ``manifest_id``, a version on its first-parent
        history (what :meth:`log` lists). Conditional like a save: a save or reset that
        moved the head meanwhile makes this a ConflictError, and a save racing this one
        loses with ConflictError. The versions after it stay readable; gc deletes those that
        no head reaches once the grace period has passed (see :meth:`gc`)."""
        self._check_open()
        chain = check_chain(chain)
        target = bytes(self._resolve(manifest_id))
        head_bytes = self._meta.get(head_key(chain))
        if head_bytes is None:
            raise NotFoundError(f"chain {chain!r} has no version")
        head = decode_head(head_bytes)
        discarded: list[str] = []
        target_manifest: Manifest | None = None
        head_manifest: Manifest | None = None
        for info in self.log(chain):
            if head_manifest is None:
                head_manifest = self._manifest(bytes.fromhex(info.manifest_id))
            if info.manifest_id == target.hex():
                target_manifest = self._manifest(target)
                break
            discarded.append(info.manifest_id)
        if target_manifest is None or head_manifest is None:
            raise NotFoundError(
                f"version {target.hex()} is not on the history of chain {chain!r} (its log); "
                "reset moves a chain back to one of its own earlier versions"
            )
        if not discarded:
            return ResetResult(
                chain=chain, head=head.head.hex(), previous=head.head.hex(), discarded=[]
            )
        # Read again now, uncached: retention may have deleted the target since the log
        # was read, and a head must never name a deleted version.
        key, stored = self._stored_manifest(target)
        try:
            self._move_head(
                chain,
                target,
                target_manifest,
                (key, stored),
                expect=head_bytes,
                also=[*self._leave_head(chain, head.head, head_manifest), Add("stat/discards", 1)],
            )
        except ConditionFailed as exc:
            if self._meta.get(key) is None:
                raise NotFoundError(f"version {target.hex()} was deleted meanwhile") from exc
            raise ConflictError(
                f"chain {chain!r} moved while it was being reset; read its log and reset again"
            ) from exc
        return ResetResult(
            chain=chain, head=target.hex(), previous=head.head.hex(), discarded=discarded
        )

    def merge(
        self,
        target: str,
        branches: Sequence[str],
        /,
        strategy: str = "three_way",
        on_conflict: merging.OnConflict = "raise",
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> CommitResult:
        """Merge the heads of ``branches`` into ``target``: a new version of ``target``
        whose parents are the target's head then each branch's head, in order.

        Field by field, against the newest common ancestor of all the heads (an empty state
        when there is none); see :mod:`statebag.merging` and the README for the strategies.
        A field one side's outcome wins is taken as that side stored it: a merge stores only
        the values it had to compute. ConflictError naming every conflicting field (with
        ``on_conflict="raise"``), or when the target or a branch moved during the merge;
        nothing is written then.
        """
        self._check_open()
        target = check_chain(target, field="target")
        if isinstance(branches, str) or not isinstance(branches, Sequence):
            raise InvalidInputError(
                f"branches must be a sequence of chain names, not {branches!r}", path="branches"
            )
        names = [check_chain(b, field=f"branches[{i}]") for i, b in enumerate(branches)]
        if not names:
            raise InvalidInputError("branches is empty: name at least one", path="branches")
        for i, name in enumerate(names):
            if name == target or name in names[:i]:
                raise InvalidInputError(
                    f"branches[{i}] names chain {name!r} "
                    + ("the target" if name == target else "twice"),
                    path=f"branches[{i}]",
                )
        merging.check_options(strategy, on_conflict)
        meta_raw = self._encode_meta(meta)
        records: list[bytes] = []
        heads: list[HeadRecord] = []
        for chain in (target, *names):
            stored = self._meta.get(head_key(chain))
            if stored is None:
                raise NotFoundError(
                    f"chain {chain!r} has no version"
                    + ("" if chain == target else "; a branch is made by fork")
                )
            records.append(stored)
            heads.append(decode_head(stored))
        try:
            manifests = [self._manifest(h.head) for h in heads]
            tables = [self._fields_table(m.root) for m in manifests]
            base_id = self._merge_base([h.head for h in heads])
            base = (
                self._fields_table(self._manifest(base_id).root).entries
                if base_id is not None
                else {}
            )
        except (NotFoundError, IntegrityError) as exc:
            for chain, stored in zip((target, *names), records, strict=True):
                if self._meta.get(head_key(chain)) != stored:
                    raise ConflictError(
                        f"chain {chain!r} moved while the merge read it; merge again"
                    ) from exc
            raise
        given, data = self._merge_fields(
            target, base, [t.entries for t in tables], strategy, on_conflict
        )
        return self._write_version(
            target,
            data=data,
            given=given,
            base=tables[0],
            hint=None,
            head_bytes=records[0],
            parents=[h.head for h in heads],
            seq=max(h.seq for h in heads) + 1,
            guards=[
                Check(head_key(chain), stored)
                for chain, stored in zip(names, records[1:], strict=True)
            ],
            extra=self._leave_head(target, heads[0].head, manifests[0]),
            meta_raw=meta_raw,
            level=self._config.compression_level,
            hold_s=None,
            bag=None,
        )

    def merge_base(self, versions: Sequence[str], /) -> str | None:
        """The newest version that all ``versions`` (manifest ids or chain names: their
        heads) descend from, a version counting as its own descendant; None when their
        histories share no version (or it was deleted). What :meth:`merge` merges against."""
        self._check_open()
        if isinstance(versions, str) or not isinstance(versions, Sequence) or not versions:
            raise InvalidInputError(
                f"versions must be a non-empty sequence of ids or chain names, not {versions!r}",
                path="versions",
            )
        ids = [self._version(v, field=f"versions[{i}]") for i, v in enumerate(versions)]
        for manifest_id in ids:
            self._manifest(manifest_id)  # NotFoundError for an unknown id
        base = self._merge_base(ids)
        return base.hex() if base is not None else None

    def _merge_base(self, heads: list[bytes]) -> bytes | None:
        """The newest version every head descends from (itself included), or None.

        Walks back from all heads at once, newest first: a seq is larger than every
        parent's, so when a version comes off the queue all its descendants among the
        ancestors have, and it knows which heads reach it. The first reached by all is a
        common ancestor no other common ancestor descends from."""
        everyone = (1 << len(heads)) - 1
        reached: dict[bytes, int] = {}
        queue: list[tuple[int, bytes]] = []
        for position, head in enumerate(heads):
            if head not in reached:
                heapq.heappush(queue, (-self._manifest(head).seq, head))
            reached[head] = reached.get(head, 0) | (1 << position)
        while queue:
            _, manifest_id = heapq.heappop(queue)
            mask = reached[manifest_id]
            if mask == everyone:
                return manifest_id
            try:
                manifest = self._manifest(manifest_id)
            except NotFoundError:
                continue  # deleted: the history is pruned there
            for parent_id in manifest.parents:
                if parent_id not in reached:
                    try:
                        seq = self._manifest(parent_id).seq
                    except NotFoundError:
                        continue
                    reached[parent_id] = 0
                    heapq.heappush(queue, (-seq, parent_id))
                reached[parent_id] |= mask
        return None

    def _merge_fields(
        self,
        target: str,
        base: Mapping[str, Entry],
        sides: list[Mapping[str, Entry]],
        strategy: str,
        on_conflict: merging.OnConflict,
    ) -> tuple[dict[str, Entry], dict[str, Any]]:
        """The merged fields: entries taken as a side stored them, and values to encode."""
        given: dict[str, Entry] = {}
        data: dict[str, Any] = {}
        conflicts = merging.Conflicts()
        computed: list[tuple[str, Entry | None, list[Entry | None]]] = []
        names = sorted({name for side in sides for name in side} | set(base))
        for name in names:
            before = base.get(name)
            outcomes = [side.get(name) for side in sides]
            changed = [entry for entry in outcomes if entry != before]
            if not changed:
                if before is not None:
                    given[name] = before
                continue
            agreed = len(set(changed)) == 1  # entries are equal exactly when values are
            takes_last = strategy == "last_wins" or (
                strategy == "three_way" and on_conflict == "last_wins"
            )
            if takes_last or (agreed and strategy != "collect"):
                winner = changed[-1]
            elif strategy == "three_way" and on_conflict == "raise":
                conflicts.paths.append(name)
                continue
            else:
                computed.append((name, before, changed))
                continue
            if winner is not None:
                given[name] = winner
        # The values the computed fields need, read in one batch of parallel reads.
        needed = {e for _, before, changed in computed for e in (before, *changed) if e}
        keys = {entry: str(position) for position, entry in enumerate(needed)}
        loaded = self._materialize({key: entry for entry, key in keys.items()})

        def value(entry: Entry | None) -> Any:
            return merging.MISSING if entry is None else loaded[keys[entry]]

        for name, before, changed in computed:
            values = [value(entry) for entry in changed]
            if strategy == "collect":
                result = [v for v in values if v is not merging.MISSING] or merging.MISSING
            elif strategy == "deep_merge":
                result = merging.deep_merge(name, value(before), values, on_conflict, conflicts)
            else:
                result = merging.resolve(name, value(before), values, on_conflict, conflicts)
            if result is not merging.MISSING:
                data[name] = result
        conflicts.raise_if_any(target)
        return given, data

    # -- deletion and garbage collection ----------------------------------------------------

    def delete(self, manifest_id: str, /) -> None:
        """Delete version ``manifest_id``, leaving a tombstone; its data is freed by gc.

        ConflictError for a chain's head (use :meth:`delete_chain`) or a pinned version;
        NotFoundError if it does not exist. Deleting a deleted version does nothing.
        """
        self._check_open()
        self._collector.delete(self._resolve(manifest_id))

    def delete_chain(self, chain: str, /) -> int:
        """Delete ``chain``: its head first (a save racing it gets ConflictError), then every
        version, pinned ones too; the number of versions deleted. Running it again finishes
        a run that was interrupted."""
        self._check_open()
        return self._collector.delete_chain(check_chain(chain))

    def pin(self, manifest_id: str, /) -> None:
        """Keep ``manifest_id`` from retention and from :meth:`delete` until unpinned."""
        self._check_open()
        self._collector.pin(self._resolve(manifest_id), pinned=True)

    def unpin(self, manifest_id: str, /) -> None:
        self._check_open()
        self._collector.pin(self._resolve(manifest_id), pinned=False)

    def gc(
        self,
        keep_last: int | None = None,
        keep_within: float | timedelta | None = None,
        keep_daily: int | None = None,
        chains: Iterable[str] | None = None,
        grace: float | timedelta | None = None,
        dry_run: bool = False,
        *,
        compact_bytes: int = COMPACT_BYTES,
    ) -> GCReport:
        """Apply retention, then free what no version references; see docs/FORMAT.md.

        Retention (only when a ``keep_*`` rule is given) deletes the versions of ``chains``
        (default: every chain) that no rule keeps: ``keep_last`` newest, those within
        ``keep_within`` (seconds or a timedelta) of now, and the newest of each of the last
        ``keep_daily`` days that have one. Heads, pinned and held versions are always kept.
        Then nodes whose count has been zero for ``grace`` (default: the repository's, 1 h)
        are freed, dead packs deleted, and packs with much dead space compacted (at most
        ``compact_bytes`` per run). Saves whose writer is gone are rolled back.
        """
        self._check_open()
        for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily)):
            if value is not None and (type(value) is not int or value < 0):
                raise InvalidInputError(f"{name} must be an int >= 0, not {value!r}", path=name)
        if type(compact_bytes) is not int or compact_bytes < 0:
            raise InvalidInputError(
                f"compact_bytes must be an int >= 0, not {compact_bytes!r}", path="compact_bytes"
            )
        within = None if keep_within is None else as_seconds(keep_within, field="keep_within")
        grace_s = self._config.grace if grace is None else as_seconds(grace, field="grace")
        names = None
        if chains is not None:
            if isinstance(chains, str):
                raise InvalidInputError(
                    "chains must be an iterable of chain names, not one str", path="chains"
                )
            names = [check_chain(chain, field="chains") for chain in chains]
        if not isinstance(dry_run, bool):
            raise InvalidInputError(f"dry_run must be a bool, not {dry_run!r}", path="dry_run")
        return self._collector.collect(
            keep_last=keep_last,
            keep_within=within,
            keep_daily=keep_daily,
            chains=names,
            grace=grace_s,
            dry_run=dry_run,
            compact_bytes=compact_bytes,
            pack_size=self._config.pack_size,
        )

    def audit(self, repair: bool = False) -> AuditReport:
        """Recount every reference and check every reachable node and parent link; with
        ``repair``, fix counts, mark unswept garbage and delete orphan packs older than the
        grace period. ``ok`` is False when something reachable is in danger."""
        self._check_open()
        if not isinstance(repair, bool):
            raise InvalidInputError(f"repair must be a bool, not {repair!r}", path="repair")
        return self._collector.audit(repair=repair, grace=self._config.grace)

    # -- retention holds ---------------------------------------------------------------------

    def hold(self, manifest_id: str, /, ttl: float | timedelta) -> None:
        """Keep version ``manifest_id`` from retention and gc for ``ttl`` more seconds (an int,
        a float or a timedelta). Holds only extend: a shorter hold leaves a longer one be.
        NotFoundError when the version does not exist."""
        self._check_open()
        raw = self._resolve(manifest_id)
        seconds = as_seconds(ttl, field="ttl")
        until = time.time_ns() + int(seconds * 1e9)
        key = f"hold/{raw.hex()}"
        while True:
            manifest = self._meta.get(f"manifest/{raw.hex()}")
            if manifest is None:
                raise NotFoundError(f"manifest {raw.hex()} does not exist")
            stored = self._meta.get(key)
            if stored is not None and int.from_bytes(stored, "little") >= until:
                return
            # With the manifest unchanged, so that a delete racing the hold leaves no record.
            try:
                self._meta.write(
                    [
                        Check(f"manifest/{raw.hex()}", manifest),
                        Put(key, until.to_bytes(8, "little"), expect=stored),
                    ]
                )
            except ConditionFailed:
                continue
            return

    # -- diff --------------------------------------------------------------------------------

    def diff(self, a: str, b: str) -> Diff:
        """Fields added, removed and changed from version ``a`` to version ``b``, each a
        manifest id or a chain name (its head), so branches compare directly."""
        self._check_open()
        entries_a = self._fields_table(self._manifest(self._version(a, field="a")).root).entries
        entries_b = self._fields_table(self._manifest(self._version(b, field="b")).root).entries
        added = {
            name: dag.entry_size(entry)
            for name, entry in entries_b.items()
            if name not in entries_a
        }
        removed = {
            name: dag.entry_size(entry)
            for name, entry in entries_a.items()
            if name not in entries_b
        }
        changed = {
            name: (dag.entry_size(entries_a[name]), dag.entry_size(entry))
            for name, entry in entries_b.items()
            if name in entries_a and entries_a[name] != entry
        }
        return Diff(added=added, removed=removed, changed=changed)

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> RepoStats:
        """Counts and bytes of the whole repository, read from counters kept by commits."""
        self._check_open()
        totals = dict(self._meta.counters("stat/"))
        return RepoStats(
            chains=totals.get("stat/chains", 0),
            manifests=totals.get("stat/manifests", 0),
            nodes=totals.get("stat/nodes", 0),
            packs=totals.get("stat/packs", 0),
            bytes_logical=totals.get("stat/bytes_logical", 0),
            bytes_stored=totals.get("stat/bytes_stored", 0),
            bytes_dead=totals.get("stat/bytes_dead", 0),
        )

    # -- verify ------------------------------------------------------------------------------

    def verify(self, manifest_id: str | None = None, read_data: float = 1.0) -> VerifyReport:
        """Check versions (one, or every one) reach only present, intact nodes.

        Every structural node (fields and index nodes) is read and checked; of the chunks,
        each is checked to be indexed and its pack present, and a ``read_data`` fraction of
        them (chosen by id, so repeated runs with the same fraction read the same ones) is
        read back and re-hashed.
        """
        self._check_open()
        if not (isinstance(read_data, (int, float)) and 0.0 <= read_data <= 1.0):
            raise InvalidInputError(
                f"read_data must be a fraction from 0 to 1, not {read_data!r}", path="read_data"
            )
        problems: list[str] = []
        if manifest_id is not None:
            targets = [self._resolve(manifest_id)]
        else:
            targets = [
                bytes.fromhex(key[len("manifest/") :]) for key, _ in self._meta.scan("manifest/")
            ]
        threshold = math.floor(read_data * (1 << 64))
        checked_structs: set[bytes] = set()
        checked_chunks: set[bytes] = set()
        packs_present: dict[bytes, bool] = {}
        nodes_read = 0
        for target in targets:
            found, read = self._verify_version(
                target, checked_structs, checked_chunks, packs_present, threshold
            )
            nodes_read += read
            # Verifying every version while gc runs: one deleted meanwhile is not a problem.
            if found and manifest_id is None and self._meta.get(f"manifest/{target.hex()}") is None:
                self._manifests.discard(target)
                continue
            problems.extend(found)
        return VerifyReport(
            ok=not problems,
            problems=problems,
            manifests=len(targets),
            nodes_checked=len(checked_structs) + len(checked_chunks),
            nodes_read=nodes_read + len(checked_structs),
        )

    def _verify_version(
        self,
        target: bytes,
        checked_structs: set[bytes],
        checked_chunks: set[bytes],
        packs_present: dict[bytes, bool],
        threshold: int,
    ) -> tuple[list[str], int]:
        """The problems of one version, and how many chunks were read back."""
        nodes_read = 0
        try:
            manifest = self._manifest(target)
        except (NotFoundError, IntegrityError) as exc:
            return [str(exc)], 0  # the message names the manifest
        try:
            self._verify_fields(manifest.root, checked_structs)
            table = self._fields_table(manifest.root)
        except IntegrityError as exc:
            return [f"manifest {target.hex()}: fields table: {exc}"], 0
        problems: list[str] = []
        for name, entry in table.entries.items():
            if type(entry) is not TreeField:
                continue
            try:
                leaves = dag.leaves_of(
                    entry.root, entry.level, lambda ids: self._verified(ids, checked_structs)
                )
                sample: list[bytes] = []
                for node_id, _ in leaves:
                    if node_id in checked_chunks:
                        continue
                    self._check_indexed(node_id, packs_present)
                    checked_chunks.add(node_id)
                    if int.from_bytes(node_id[:8], "little") < threshold:
                        sample.append(node_id)
                for start in range(0, len(sample), 256):
                    nodes_read += len(self._read_nodes(sample[start : start + 256]))
            except IntegrityError as exc:
                problems.append(f"manifest {target.hex()}: field {name!r}: {exc}")
        return problems, nodes_read

    def _verified(self, ids: Sequence[bytes], checked: set[bytes]) -> dict[bytes, bytes]:
        """Structural nodes read from their packs (never from the cache), verified."""
        with self._lock:
            for node_id in ids:
                if node_id not in checked:
                    self._structs_bytes -= len(self._structs.pop(node_id, b""))
        found = self._read_nodes(ids, cache=True)
        checked.update(ids)
        return found

    def _verify_fields(self, root: bytes, checked: set[bytes]) -> None:
        frontier = [root]
        while frontier:
            found = self._verified(frontier, checked)
            next_frontier: list[bytes] = []
            for node_id in frontier:
                level, rows = dag.parse_fields_node(found[node_id], node_id=node_id.hex())
                if level:
                    next_frontier.extend(child for _, child, _ in rows)
            frontier = next_frontier

    def _check_indexed(self, node_id: bytes, packs_present: dict[bytes, bool]) -> None:
        text = node_id.hex()
        stored = self._meta.get(f"node/{text}")
        if stored is None:
            raise IntegrityError(f"chunk {text} is not in the index", object_id=text)
        record = IndexRecord.decode(stored, node_id=text)
        present = packs_present.get(record.pack_id)
        if present is None:
            try:
                size = self._objects.stat(pack_key(record.pack_id))
                present = size >= record.offset + record.length
            except NotFoundError:
                present = False
            packs_present[record.pack_id] = present
        if not present:
            raise IntegrityError(
                f"pack {record.pack_id.hex()} holding chunk {text} is missing or truncated",
                object_id=record.pack_id.hex(),
            )


class _Encoded(NamedTuple):
    """What encoding a state produced, for the commit and the next save."""

    root: bytes
    packs: list[tuple[bytes, bytes, list[Any]]]
    logical: int
    fields_nodes: list[NewNode]
    name_hashes: dict[str, bytes]
    reused: int


class _Packer:
    """Frames arrive from the compression pool in submission order; full packs ship at once."""

    def __init__(self, prepare: Prepare, *, pack_size: int) -> None:
        self.prepare = prepare
        self.reused = 0
        self._pack_size = pack_size
        self._jobs: deque[tuple[list[NewNode], Future[list[tuple[bytes, Any]]]]] = deque()
        self._writer = PackWriter(prepare.salt)
        self._raw = 0
        self._in_flight = 0
        self._packs: list[tuple[bytes, bytes, list[Any]]] = []

    def add(self, jobs: Iterable[tuple[list[NewNode], Future[list[tuple[bytes, Any]]]]]) -> None:
        for job in jobs:
            self._jobs.append(job)
            self._in_flight += sum(len(node.data) for node in job[0])

    def drain(self, *, block: bool) -> None:
        """Pack the frames of finished jobs, in order (all of them when ``block``).

        Also waits while more than two packs' worth of data is still being compressed, which
        bounds a save's memory and ships packs while later fields are still being encoded.
        """
        jobs = self._jobs
        while jobs and (block or jobs[0][1].done() or self._in_flight > 2 * self._pack_size):
            nodes, future = jobs.popleft()
            self._in_flight -= sum(len(node.data) for node in nodes)
            for node, (header, payload) in zip(nodes, future.result(), strict=True):
                # Packs split by raw size, so less than pack_size of new data is one pack.
                if self._raw + len(node.data) > self._pack_size and len(self._writer):
                    self._ship()
                self._writer.add(node.node_id, header, payload, len(node.data))
                self._raw += len(node.data)

    def _ship(self, *, last: bool = False) -> None:
        pack = self._writer.finish()
        self._packs.append(pack)
        self._writer, self._raw = PackWriter(self.prepare.salt), 0
        self.prepare.ship(pack[0], pack[1], last=last)

    def finish(self) -> list[tuple[bytes, bytes, list[Any]]]:
        self.drain(block=True)
        if len(self._writer):
            self._ship(last=True)
        return self._packs


def _compress_all(nodes: list[NewNode], level: int) -> list[tuple[bytes, Any]]:
    return codec.compress_batch([node.data for node in nodes], level=level)


class LazyState(Mapping[str, Any]):
    """A version's state that reads each field on first access (then keeps it)."""

    def __init__(self, repo: Repository, entries: Mapping[str, Entry]) -> None:
        self._repo = repo
        self._entries = dict(entries)
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            if name in self._values:
                return self._values[name]
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(name)
        value = self._repo._materialize({name: entry})[name]
        with self._lock:
            return self._values.setdefault(name, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def loaded(self) -> frozenset[str]:
        """The fields read so far."""
        with self._lock:
            return frozenset(self._values)

    def __repr__(self) -> str:
        return f"<LazyState fields={len(self._entries)} loaded={len(self._values)}>"
