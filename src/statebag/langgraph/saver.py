"""``StatebagSaver``: LangGraph checkpoints as statebag versions.

Layout (everything through the public :class:`statebag.Repository` API):

- **One chain per checkpoint**, named ``langgraph/<thread>/<namespace>/<checkpoint id>`` (each
  part percent-encoded; a thread or namespace longer than 80 characters encoded is replaced
  by ``#`` and 32 hex digits of its BLAKE3). Looking a checkpoint up by id is then one head
  read (``Repository.head``), whatever the thread holds; a thread or a namespace is one
  range scan of chain names (``Repository.chains(prefix=...)``), ordered by checkpoint id.
- **The checkpoint's version** is the chain's only version. It is saved with
  ``new_chain=True`` and, when LangGraph names a parent checkpoint, ``merged=[parent's
  version]``, so the version descends from its LangGraph parent (forks and time travel
  included) and the commit checks the parent is still stored. Its fields:

  - ``checkpoint``: the checkpoint without its channel values, as ``[type, bytes]`` from the
    serializer (``serde.dumps_typed``); ``metadata`` likewise;
  - ``l/<channel>`` for a channel whose value is a ``list``: the list of its items, each
    serialized on its own as ``[type, bytes]``; ``v/<channel>`` for any other value, whole.

  A field is content-addressed and chunked by content, so a channel that did not change
  stores nothing new (its nodes are found in the index), and a message history that grew
  by a few messages stores those messages and the chunk they were appended to: the list's
  length is kept out of its body (docs/FORMAT.md, "Values: inline or tree"), and each item's
  bytes do not depend on its neighbours.
- **The version's metadata** (``Repository.info(id).meta``) holds the thread, namespace,
  checkpoint and parent ids, and the checkpoint metadata's values that statebag encodes
  exactly (dicts of str keys, lists, str, int, float, bool, None), so ``list(filter=...)``
  reads one manifest per candidate, not its fields.
- **Pending writes** are records beside the checkpoint's chain (``Repository.put_records``):
  one per (task, index), written without rewriting the checkpoint, and possibly before it
  (LangGraph sends a step's writes while its checkpoint may still be being put). Regular
  writes are inserted only where absent (idempotent per task and index); the special
  channels of ``WRITES_IDX_MAP`` (errors, interrupts, ...) replace. A value larger than a
  record holds is split over several.

Deleting a checkpoint is ``Repository.delete_chain`` of its chain (its records go with it);
``Repository.gc`` then frees what no version references any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

import msgspec
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from ..errors import ConflictError, InvalidInputError, NotFoundError
from ..hashing import hash_bytes
from ..records import MAX_RECORD_BYTES
from ..repository import Repository

__all__ = ["CHAIN_ROOT", "StatebagSaver"]

CHAIN_ROOT = "langgraph/"
"""Every chain the saver writes starts with this."""

# Parts of a chain name: each at most this long encoded (thread and namespace are hashed
# beyond it; a longer checkpoint id is refused), so a name stays within 256 characters.
_PART_LIMIT = 80
_ATTEMPTS = 16
_LIST = "l/"
_VALUE = "v/"
_WRITE = "w/"
# A write's first record carries its header; the rest of a large value follows in parts.
_PART_BYTES = MAX_RECORD_BYTES - 16 * 1024
_META_VERSION = 1
# Versions whose stored form the saver keeps after putting them (see StatebagSaver).
_RECENT_VERSIONS = 4

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


class _WriteHeader(msgspec.Struct, array_like=True):
    """The first record of one pending write."""

    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str
    parts: int
    data: bytes


def _quote(text: str) -> str:
    # quote() escapes "/", "%", "#", controls and every non-ASCII character (bidirectional
    # formatting characters included), so a part never contains a separator or a hash mark.
    return quote(text, safe=":|=,;@+!$&'()*")


def _part(text: str) -> str:
    encoded = _quote(text)
    if len(encoded) <= _PART_LIMIT:
        return encoded
    return "#" + hash_bytes(text.encode("utf-8", "surrogatepass")).hex()[:32]


def _id_part(checkpoint_id: str) -> str:
    if not isinstance(checkpoint_id, str) or not checkpoint_id:
        raise InvalidInputError(
            f"checkpoint_id must be a non-empty str, not {checkpoint_id!r}", path="checkpoint_id"
        )
    encoded = _quote(checkpoint_id)
    if len(encoded) > _PART_LIMIT:
        raise InvalidInputError(
            f"checkpoint_id {checkpoint_id[:40]!r}... is longer than {_PART_LIMIT} characters "
            "percent-encoded",
            path="checkpoint_id",
        )
    return encoded


def _thread_prefix(thread_id: str) -> str:
    return f"{CHAIN_ROOT}{_part(thread_id)}/"


def _ns_prefix(thread_id: str, checkpoint_ns: str) -> str:
    return f"{_thread_prefix(thread_id)}{_part(checkpoint_ns)}/"


def _chain(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
    return _ns_prefix(thread_id, checkpoint_ns) + _id_part(checkpoint_id)


def _parse_chain(chain: str) -> tuple[str, str] | None:
    """``(namespace part, checkpoint id)`` of one of the saver's chain names, or None."""
    if not chain.startswith(CHAIN_ROOT):
        return None
    pieces = chain[len(CHAIN_ROOT) :].split("/")
    if len(pieces) != 3 or not pieces[2]:
        return None
    return pieces[1], unquote(pieces[2])


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether statebag stores ``value`` so that it loads back equal and of the same
    types (no tuples, no non-str keys, no objects)."""
    if depth > 64:
        return False
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, float):
        return not math.isnan(value)
    if type(value) is list:
        return all(_plain(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _configurable(config: RunnableConfig) -> Mapping[str, Any]:
    configurable = config.get("configurable")
    if not isinstance(configurable, Mapping) or "thread_id" not in configurable:
        raise InvalidInputError(
            "config must carry configurable.thread_id", path="config.configurable.thread_id"
        )
    return configurable


def _thread_of(configurable: Mapping[str, Any]) -> str:
    thread_id = configurable["thread_id"]
    if not isinstance(thread_id, str):
        thread_id = str(thread_id)
    return thread_id


class StatebagSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on a statebag repository; see the module docstring for
    what it stores. ``serde`` is the LangGraph serializer for channel values, checkpoints,
    metadata and writes (LangGraph's ``JsonPlusSerializer`` by default).

    The saver does not own ``repo``: close the repository when done. Sync and async
    methods are both available; the async ones run the sync ones on a worker thread (a
    :class:`~statebag.Repository` is safe to share between threads). Several processes may
    use one repository at once."""

    def __init__(self, repo: Repository, /, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(repo, Repository):
            raise InvalidInputError(
                f"repo must be a statebag.Repository, not {type(repo).__name__}", path="repo"
            )
        super().__init__(serde=serde)
        self.repo = repo
        # The stored form (fields of [type, bytes]) of the versions this saver put last, by
        # manifest id: LangGraph reads the checkpoint it just put at the start of the next
        # run, and a version never changes, so that read needs no storage. Values are
        # deserialized afresh on every read, so no caller shares an object with another.
        self._recent: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # -- serialization ------------------------------------------------------------------------

    def _typed(self, value: Any) -> list[Any]:
        kind, data = self.serde.dumps_typed(value)
        return [kind, bytes(data)]

    def _untyped(self, stored: Any) -> Any:
        kind, data = stored
        return self.serde.loads_typed((kind, data))

    def _state(self, checkpoint: Checkpoint, metadata: CheckpointMetadata) -> dict[str, Any]:
        rest: dict[str, Any] = dict(checkpoint)
        values: dict[str, Any] = rest.pop("channel_values", None) or {}
        state: dict[str, Any] = {
            "checkpoint": self._typed(rest),
            "metadata": self._typed(metadata),
        }
        for channel, value in values.items():
            if type(value) is list:
                # Item by item, so that a list that grew shares its stored prefix.
                state[_LIST + channel] = [self._typed(item) for item in value]
            else:
                state[_VALUE + channel] = self._typed(value)
        return state

    def _checkpoint_of(self, state: Mapping[str, Any]) -> Checkpoint:
        checkpoint = self._untyped(state["checkpoint"])
        values: dict[str, Any] = {}
        for name, stored in state.items():
            if name.startswith(_LIST):
                values[name[len(_LIST) :]] = [self._untyped(item) for item in stored]
            elif name.startswith(_VALUE):
                values[name[len(_VALUE) :]] = self._untyped(stored)
        checkpoint["channel_values"] = values
        return checkpoint  # type: ignore[no-any-return]

    # -- reading ------------------------------------------------------------------------------

    def _meta_of(self, manifest_id: str) -> dict[str, Any] | None:
        try:
            meta = self.repo.info(manifest_id).meta
        except NotFoundError:
            return None
        if not isinstance(meta, dict) or meta.get("langgraph") != _META_VERSION:
            return None
        return meta

    def _remember(self, manifest_id: str, state: Mapping[str, Any]) -> None:
        with self._recent_lock:
            self._recent[manifest_id] = state
            self._recent.move_to_end(manifest_id)
            while len(self._recent) > _RECENT_VERSIONS:
                self._recent.popitem(last=False)

    def _stored(self, manifest_id: str) -> Mapping[str, Any] | None:
        with self._recent_lock:
            state = self._recent.get(manifest_id)
        if state is not None:
            return state
        try:
            loaded = self.repo.load(manifest_id)
        except NotFoundError:
            return None  # deleted meanwhile
        assert isinstance(loaded, dict)
        return loaded

    def _tuple(
        self, chain: str, manifest_id: str, meta: Mapping[str, Any]
    ) -> CheckpointTuple | None:
        state = self._stored(manifest_id)
        if state is None:
            return None
        thread_id, ns = meta["thread_id"], meta["checkpoint_ns"]
        parent_id = meta.get("parent_checkpoint_id")
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": meta["checkpoint_id"],
                }
            },
            checkpoint=self._checkpoint_of(state),
            metadata=self._untyped(state["metadata"]),
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent_id,
                    }
                }
                if parent_id
                else None
            ),
            pending_writes=self._writes_of(self.repo.records(chain)),
        )

    def _writes_of(self, records: Mapping[str, bytes]) -> list[tuple[str, str, Any]]:
        found: list[tuple[tuple[str, str, int], tuple[str, str, Any]]] = []
        for name, value in records.items():
            if not (name.startswith(_WRITE) and name.endswith("/0")):
                continue
            header = msgspec.msgpack.decode(value, type=_WriteHeader)
            data = header.data
            if header.parts > 1:
                stem = name[:-1]
                data += b"".join(records[f"{stem}{k}"] for k in range(1, header.parts))
            found.append(
                (
                    writes_sort_key(header.task_path, header.task_id, header.idx),
                    (header.task_id, header.channel, self._untyped((header.type, data))),
                )
            )
        found.sort(key=lambda item: item[0])
        return [write for _, write in found]

    def _matches(self, manifest_id: str, meta: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
        plain: Mapping[str, Any] = meta.get("metadata") or {}
        if meta.get("metadata_whole") or all(key in plain for key in query):
            return all(plain.get(key) == value for key, value in query.items())
        try:
            stored = self.repo.load(manifest_id, fields=["metadata"])
        except NotFoundError:
            return False
        metadata = self._untyped(stored["metadata"])
        return all(metadata.get(key) == value for key, value in query.items())

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the newest of its
        thread and namespace; None when there is none."""
        configurable = _configurable(config)
        thread_id = _thread_of(configurable)
        ns = configurable.get("checkpoint_ns", "") or ""
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            chains = [_chain(thread_id, ns, checkpoint_id)]
        else:
            listed = self._listed(_ns_prefix(thread_id, ns))
            chains = [chain for _, chain in listed]
        for chain in chains:
            manifest_id = self.repo.head(chain)
            if manifest_id is None:
                continue
            meta = self._meta_of(manifest_id)
            if meta is None:
                continue
            found = self._tuple(chain, manifest_id, meta)
            if found is not None:
                return found
        return None

    def _listed(self, prefix: str) -> list[tuple[str, str]]:
        """``(checkpoint id, chain)`` under ``prefix``, newest checkpoint first."""
        listed = []
        for chain in self.repo.chains(prefix=prefix):
            parsed = _parse_chain(chain)
            if parsed is not None:
                listed.append((parsed[1], chain))
        listed.sort(reverse=True)
        return listed

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first (by checkpoint id): of ``config``'s thread (and
        namespace, when it names one; and only its ``checkpoint_id``, when it names one),
        or of every thread with ``config=None``; whose metadata has every ``filter`` item;
        older than ``before``'s checkpoint; at most ``limit``."""
        if limit is not None and limit <= 0:
            return
        wanted_id: str | None = None
        if config is None:
            prefix = CHAIN_ROOT
        else:
            configurable = _configurable(config)
            thread_id = _thread_of(configurable)
            ns = configurable.get("checkpoint_ns")
            prefix = _thread_prefix(thread_id) if ns is None else _ns_prefix(thread_id, ns)
            wanted_id = get_checkpoint_id(config)
        before_id = get_checkpoint_id(before) if before else None
        count = 0
        for checkpoint_id, chain in self._listed(prefix):
            if wanted_id and checkpoint_id != wanted_id:
                continue
            if before_id and checkpoint_id >= before_id:
                continue
            manifest_id = self.repo.head(chain)
            if manifest_id is None:
                continue
            meta = self._meta_of(manifest_id)
            if meta is None:
                continue
            if filter and not self._matches(manifest_id, meta, filter):
                continue
            found = self._tuple(chain, manifest_id, meta)
            if found is None:
                continue
            yield found
            count += 1
            if limit is not None and count >= limit:
                return

    # -- writing ------------------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` as a new version descending from its parent's (the
        ``checkpoint_id`` of ``config``); the config naming it. Channel values are stored
        whatever ``new_versions`` says: content addressing makes an unchanged one cost
        nothing."""
        configurable = _configurable(config)
        thread_id = _thread_of(configurable)
        ns = configurable.get("checkpoint_ns", "") or ""
        parent_id = configurable.get("checkpoint_id")
        full_metadata = get_checkpoint_metadata(config, metadata)
        state = self._state(checkpoint, full_metadata)
        plain = {key: value for key, value in full_metadata.items() if _plain(value)}
        meta = {
            "langgraph": _META_VERSION,
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": parent_id,
            "metadata": plain,
            "metadata_whole": len(plain) == len(full_metadata),
        }
        chain = _chain(thread_id, ns, checkpoint["id"])
        parent_chain = _chain(thread_id, ns, parent_id) if parent_id else None
        self._save(chain, state, meta, parent_chain)
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _save(
        self,
        chain: str,
        state: Mapping[str, Any],
        meta: Mapping[str, Any],
        parent_chain: str | None,
    ) -> str:
        """Commit ``state`` as the version of ``chain``, descending from the version of
        ``parent_chain`` when there is one; the new version's id. Putting a checkpoint id
        again replaces its version (its pending writes carried over), as LangGraph's
        savers do."""
        for _ in range(_ATTEMPTS):
            parent = self.repo.head(parent_chain) if parent_chain is not None else None
            previous = self.repo.head(chain)
            merged = [parent] if parent is not None and parent != previous else None
            try:
                if previous is None:
                    saved = self.repo.save(chain, state, new_chain=True, merged=merged, meta=meta)
                else:
                    saved = self.repo.save(chain, state, parent=previous, merged=merged, meta=meta)
            except (ConflictError, NotFoundError):
                # The chain moved, or the parent was deleted, since they were read (a parent
                # deleted before the save is NotFoundError, during it ConflictError).
                continue
            self._remember(saved.manifest_id, state)
            if previous is None:
                return saved.manifest_id
            # Replaced again, or deleted, meanwhile: then nothing of ours is left to remove.
            with contextlib.suppress(ConflictError, NotFoundError):
                self.repo.delete(previous)
            return saved.manifest_id
        raise ConflictError(f"chain {chain!r} kept changing while the checkpoint was saved")

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Keep ``writes`` beside the checkpoint ``config`` names, without rewriting it.
        A (task, index) written before keeps its first value, except the special channels
        (errors, interrupts, ...), which replace it."""
        configurable = _configurable(config)
        thread_id = _thread_of(configurable)
        ns = configurable.get("checkpoint_ns", "") or ""
        checkpoint_id = configurable.get("checkpoint_id")
        if not checkpoint_id:
            raise InvalidInputError(
                "put_writes needs configurable.checkpoint_id",
                path="config.configurable.checkpoint_id",
            )
        task_hash = hash_bytes(task_id.encode("utf-8", "surrogatepass")).hex()[:32]
        regular: dict[str, bytes] = {}
        special: dict[str, bytes] = {}
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            kind, data = self.serde.dumps_typed(value)
            data = bytes(data)
            parts = [data[i : i + _PART_BYTES] for i in range(0, len(data), _PART_BYTES)] or [b""]
            stem = f"{_WRITE}{task_hash}/{idx}/"
            target = special if idx < 0 else regular
            target[stem + "0"] = _ENCODER.encode(
                _WriteHeader(task_id, task_path, idx, channel, kind, len(parts), parts[0])
            )
            for k, part in enumerate(parts[1:], start=1):
                target[f"{stem}{k}"] = part
        # Beside the checkpoint's chain, which LangGraph may still be putting.
        chain = _chain(thread_id, ns, checkpoint_id)
        self.repo.put_records(chain, regular, replace=False)
        self.repo.put_records(chain, special, replace=True)

    # -- deleting and copying -----------------------------------------------------------------

    def _delete_chain(self, chain: str) -> None:
        with contextlib.suppress(NotFoundError):  # deleted meanwhile
            self.repo.delete_chain(chain)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of ``thread_id``, in every namespace; gc frees
        the data no other checkpoint shares."""
        for chain in list(self.repo.chains(prefix=_thread_prefix(str(thread_id)))):
            self._delete_chain(chain)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint (and its writes), in every thread, whose metadata's
        ``run_id`` is one of ``run_ids``."""
        wanted = set(run_ids)
        if not wanted:
            return
        for chain in list(self.repo.chains(prefix=CHAIN_ROOT)):
            manifest_id = self.repo.head(chain)
            if manifest_id is None:
                continue
            meta = self._meta_of(manifest_id)
            if meta is None:
                continue
            plain = meta.get("metadata") or {}
            run_id = plain.get("run_id")
            if run_id is None and not meta.get("metadata_whole"):
                try:
                    stored = self.repo.load(manifest_id, fields=["metadata"])
                except NotFoundError:
                    continue
                run_id = self._untyped(stored["metadata"]).get("run_id")
            if isinstance(run_id, str) and run_id in wanted:
                self._delete_chain(chain)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint of ``source_thread_id`` (every namespace, with its writes
        and metadata) to ``target_thread_id``. The copies share the source's stored data:
        only their manifests and records are new."""
        source, target = str(source_thread_id), str(target_thread_id)
        chains = list(self.repo.chains(prefix=_thread_prefix(source)))
        found = []
        for chain in chains:
            manifest_id = self.repo.head(chain)
            meta = self._meta_of(manifest_id) if manifest_id is not None else None
            if manifest_id is not None and meta is not None:
                found.append((meta["checkpoint_id"], manifest_id, meta, chain))
        # Parents before children (checkpoint ids grow with time), so each copy descends
        # from its parent's copy.
        found.sort(key=lambda item: item[0])
        for checkpoint_id, manifest_id, meta, chain in found:
            try:
                state = self.repo.load(manifest_id)
            except NotFoundError:
                continue
            assert isinstance(state, dict)
            ns, parent_id = meta["checkpoint_ns"], meta.get("parent_checkpoint_id")
            copied = {**meta, "thread_id": target}
            copy = _chain(target, ns, checkpoint_id)
            records = self.repo.records(chain)
            if records:
                self.repo.put_records(copy, records, replace=True)
            self._save(copy, state, copied, _chain(target, ns, parent_id) if parent_id else None)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep only the newest checkpoint of each namespace of each thread
        (with its writes); ``delete``: delete the threads. ``Repository.gc`` then frees the
        data no kept checkpoint shares."""
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInputError(
                f"strategy must be 'keep_latest' or 'delete', not {strategy!r}", path="strategy"
            )
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            newest: dict[str, str] = {}
            chains = list(self.repo.chains(prefix=_thread_prefix(str(thread_id))))
            for chain in chains:
                parsed = _parse_chain(chain)
                if parsed is None:
                    continue
                ns_part, checkpoint_id = parsed
                kept = newest.get(ns_part)
                if kept is None or checkpoint_id > kept:
                    newest[ns_part] = checkpoint_id
            for chain in chains:
                parsed = _parse_chain(chain)
                if parsed is not None and newest[parsed[0]] != parsed[1]:
                    self._delete_chain(chain)

    def get_next_version(self, current: object, channel: None) -> str:
        """The next channel version: the counter of ``current`` plus one, and a random
        fraction, as LangGraph's reference savers make them (a fork never reuses a
        version its sibling branch took)."""
        if current is None:
            number = 0
        elif isinstance(current, (int, float)):
            number = int(current)
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- async --------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in found:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)
