"""The node reader: locates nodes in the index, plans ranged reads of their packs, fetches,
decompresses and hash-checks them on the pool, and decodes versions' fields.

Structural nodes (fields and index nodes) read with ``cache=True`` stay in one bounded
cache (by bytes), and the decoded fields tables of recent versions in another (by count),
so a save's parent and a chain's next load need no reads. Chunks are never cached.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

import msgspec

from . import codec, dag
from .caches import Recent
from .dag import Entry, InlineField, NodeLimits, TreeField
from .errors import IntegrityError, NotFoundError
from .keys import IndexRecord, node_key
from .meta import MetaStore
from .objects import ObjectStore
from .packs import pack_key

__all__ = ["FieldsTable", "LazyState", "NodeReader", "check_record"]

MIB = 1 << 20
# Ranged reads of nodes in one pack merge when the gap between them is at most this.
_READ_GAP = 256 * 1024
_READ_MAX = 1 * MIB
# Nodes are located in the index in slices of this many (one get_many each).
_READ_SLICE = 512
_STRUCT_CACHE_BYTES = 64 * MIB
_FIELDS_CACHE = 64
# A value's chunks are read at most about this many (uncompressed) bytes ahead of the copy
# that assembles it, so a large value costs its own size plus this, not twice its size.
_READ_AHEAD = 32 * MIB
# Heads of a bin (bytes) value: its body is the value, assembled without a decode.
_BIN_HEADS = frozenset({0xC4, 0xC5, 0xC6})


class FieldsTable(msgspec.Struct):
    """A version's fields, kept in memory so the next save need not read them again.

    ``checked``: every tree entry's length is known to be what its chunks hold (a writer's
    own table); a table read from storage holds the lengths its fields nodes claim.
    """

    entries: dict[str, Entry]
    node_ids: set[bytes]
    name_hashes: dict[str, bytes]
    checked: bool = False


class NodeReader:
    """Reads nodes by id from the packs the index names; safe to share between threads."""

    def __init__(
        self, objects: ObjectStore, meta: MetaStore, pool: ThreadPoolExecutor, limits: NodeLimits
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._pool = pool
        self._limits = limits
        self._structs: Recent[bytes] = Recent(_STRUCT_CACHE_BYTES, weigh=len)
        self._tables: Recent[FieldsTable] = Recent(_FIELDS_CACHE)

    @property
    def limits(self) -> NodeLimits:
        return self._limits

    def read(
        self, ids: Sequence[bytes], /, *, cache: bool = False, limit: int | None = None
    ) -> dict[bytes, bytes]:
        """The bytes of nodes ``ids``, verified; IntegrityError names any that cannot be read.

        ``limit`` bounds each node's size (default: the largest node of any kind); an index
        record that says more is refused before anything is read.
        """
        found, pending = self.start_reads(ids, limit=limit)
        result = {node_id: bytes(data) for node_id, data in found.items()}
        for future in set(pending.values()):
            result.update((node_id, bytes(data)) for node_id, data in future.result().items())
        if cache:
            self._structs.add_many(result.items())
        return result

    def start_reads(
        self, ids: Sequence[bytes], /, *, verify: bool = True, limit: int | None = None
    ) -> tuple[dict[bytes, bytes | memoryview], dict[bytes, Future[dict[bytes, memoryview]]]]:
        """Nodes found in the cache, and a future per node for the rest (shared per range).

        Nodes are read in ranges of one pack (neighbours merged across small gaps), each range
        fetched, decompressed and (unless ``verify=False``: then the caller must check every
        node's hash itself) verified on the pool, so a caller can use the first nodes while
        later ranges are still on their way.
        """
        cached, wanted = self._structs.get_many(ids)
        found: dict[bytes, bytes | memoryview] = dict(cached)
        pending: dict[bytes, Future[dict[bytes, memoryview]]] = {}
        wanted = list(dict.fromkeys(wanted))
        # Every node is located before the first range is read: a lookup releases the GIL
        # inside SQLite and then waits to take it back behind pool threads that are busy
        # with ranges already submitted, which cost more than the reads gained by starting
        # early (measured on the embedded backend).
        plans = [
            self.plan_ranges(wanted[start : start + _READ_SLICE], limit=limit)
            for start in range(0, len(wanted), _READ_SLICE)
        ]
        for plan in plans:
            for group in plan:
                future = self._pool.submit(self.read_range, group, verify)
                for node_id, _ in group:
                    pending[node_id] = future
        return found, pending

    def plan_ranges(
        self, wanted: list[bytes], *, limit: int | None = None
    ) -> list[list[tuple[bytes, IndexRecord]]]:
        """The pack ranges holding nodes ``wanted``, in the order the nodes were asked for;
        every index record checked (:func:`check_record`) against ``limit`` (default: the
        largest node of any kind)."""
        by_pack: dict[bytes, list[tuple[bytes, IndexRecord]]] = {}
        for node_id, record in self._locate(wanted, limit):
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

    def _locate(
        self, wanted: Sequence[bytes], limit: int | None
    ) -> list[tuple[bytes, IndexRecord]]:
        """The index record of each node of ``wanted`` (one lookup), checked against
        ``limit`` (default: the largest node of any kind)."""
        bound = self._limits.largest if limit is None else limit
        records = self._meta.get_many([node_key(node_id) for node_id in wanted])
        located = []
        for node_id in wanted:
            text = node_id.hex()
            stored = records.get(node_key(node_id))
            if stored is None:
                raise IntegrityError(
                    f"node {text} is referenced but not in the index", object_id=text
                )
            located.append(
                (node_id, check_record(IndexRecord.decode(stored, node_id=text), text, bound))
            )
        return located

    def read_range(
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
                again = self.plan_ranges(
                    [node_id for node_id, _ in group],
                    limit=max(record.size for _, record in group),
                )
                if any(part[0][1].pack_id != pack_id for part in again):
                    result: dict[bytes, memoryview] = {}
                    for part in again:
                        result.update(self.read_range(part, verify, True))
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

    def structs(self, ids: Sequence[bytes], /, *, limit: int | None = None) -> dict[bytes, bytes]:
        """Structural nodes, through the cache."""
        return self.read(ids, cache=True, limit=limit)

    def index_nodes(self, ids: Sequence[bytes], /) -> dict[bytes, bytes]:
        """Index nodes, through the cache, each at most an index node's size."""
        return self.read(ids, cache=True, limit=self._limits.index_node)

    def fields_nodes(self, ids: Sequence[bytes], /) -> dict[bytes, bytes]:
        """Fields nodes, through the cache, each at most a fields node's size."""
        return self.read(ids, cache=True, limit=self._limits.fields_node)

    def clear_caches(self, *, structs: bool = True, tables: bool = True) -> None:
        """Forget cached nodes and fields tables (all reads then go to the packs)."""
        if structs:
            self._structs.clear()
        if tables:
            self._tables.clear()

    def forget_structs(self, ids: Sequence[bytes]) -> None:
        """Drop nodes from the cache, so the next read checks them in their packs."""
        self._structs.discard_many(ids)

    def fields_table(self, root: bytes) -> FieldsTable:
        table = self._tables.get(root)
        if table is not None:
            return table
        node_ids: set[bytes] = set()

        def fetch(ids: Sequence[bytes]) -> dict[bytes, bytes]:
            node_ids.update(ids)
            return self.fields_nodes(ids)

        entries = dict(dag.iter_fields(root, fetch))
        table = FieldsTable(entries, node_ids, {})
        self.remember_table(root, table)
        return table

    def remember_table(self, root: bytes, table: FieldsTable) -> None:
        self._tables.put(root, table)

    def materialize(self, entries: Mapping[str, Entry]) -> dict[str, Any]:
        """The values of ``entries``, by name, in name order.

        Every length the trees claim is checked before a buffer of that length exists: the
        index nodes' lengths add up to each entry's (:func:`dag.leaves_of_many`), and each
        chunk's claimed length is the size its index record gives, which is at most a
        chunk's (:func:`check_record`) and exactly what its frame decompresses to.
        """
        result: dict[str, Any] = {}
        trees: dict[str, TreeField] = {}
        for name, entry in entries.items():
            if type(entry) is InlineField:
                result[name] = codec.decode(entry.encoded)
            else:
                assert type(entry) is TreeField
                trees[name] = entry
        if not trees:
            return result
        leaves = dag.leaves_of_many(trees, self.index_nodes)
        order = [node_id for chunks in leaves.values() for node_id, _ in chunks]
        unique = list(dict.fromkeys(order))
        groups = [
            group
            for start in range(0, len(unique), _READ_SLICE)
            for group in self.plan_ranges(
                unique[start : start + _READ_SLICE], limit=self._limits.chunk
            )
        ]
        _check_claims(
            leaves, {node_id: record.size for group in groups for node_id, record in group}
        )
        feed = _Feed(lambda group: self._pool.submit(self.read_range, group, False), groups, order)
        # Each value is assembled (head, then chunks) in one scratch buffer reused from field
        # to field: a fresh buffer per field would cost a page fault per 4 KiB. A bytes value
        # is its body: that is assembled straight into the result instead.
        scratch = bytearray()
        try:
            for name, entry in trees.items():
                if entry.head[0] in _BIN_HEADS:
                    body = io.BytesIO()
                    for node_id, _ in leaves[name]:
                        body.write(feed.take(node_id))
                    result[name] = body.getvalue()
                    continue
                total = len(entry.head) + entry.length
                if len(scratch) < total:
                    scratch = bytearray(max(total, 2 * len(scratch)))
                with memoryview(scratch) as view:
                    view[: len(entry.head)] = entry.head
                    position = len(entry.head)
                    for node_id, size in leaves[name]:
                        view[position : position + size] = feed.take(node_id)
                        position += size
                    result[name] = codec.decode(view[:total])
        finally:
            feed.close()
        return dict(sorted(result.items()))

    def leaves(self, entry: TreeField) -> list[tuple[bytes, int]]:
        return dag.leaves_of(entry, self.index_nodes)

    def tree_nodes(self, entry: TreeField) -> tuple[list[tuple[bytes, int]], set[bytes]]:
        """The (chunk id, length) list of a tree, and the ids of its index nodes."""
        interior: set[bytes] = set()

        def fetch(ids: Sequence[bytes]) -> Mapping[bytes, bytes]:
            interior.update(ids)
            return self.index_nodes(ids)

        return dag.leaves_of(entry, fetch), interior

    def check_lengths(self, trees: Mapping[str, TreeField]) -> None:
        """IntegrityError naming the field unless each entry's length is what its chunks
        hold, by the index nodes and the chunks' index records (as :meth:`materialize`
        checks before it allocates), so that nothing is computed from a claimed length."""
        if not trees:
            return
        leaves = dag.leaves_of_many(trees, self.index_nodes)
        wanted = list(dict.fromkeys(node_id for chunks in leaves.values() for node_id, _ in chunks))
        sizes = {
            node_id: record.size
            for start in range(0, len(wanted), _READ_SLICE)
            for node_id, record in self._locate(
                wanted[start : start + _READ_SLICE], self._limits.chunk
            )
        }
        _check_claims(leaves, sizes)


def _check_claims(
    leaves: Mapping[str, list[tuple[bytes, int]]], sizes: Mapping[bytes, int]
) -> None:
    """IntegrityError unless every chunk's claimed length (by its tree) is its size."""
    for name, chunks in leaves.items():
        for node_id, claimed in chunks:
            if sizes[node_id] != claimed:
                raise IntegrityError(
                    f"field {name!r}: chunk {node_id.hex()} holds {sizes[node_id]} bytes by "
                    f"the index, but its tree says {claimed}",
                    object_id=node_id.hex(),
                )


def check_record(record: IndexRecord, node_id: str, limit: int) -> IndexRecord:
    """``record`` if it can describe a node of at most ``limit`` bytes, else IntegrityError.

    A frame is a codec byte and at most the node's bytes (zstd is used only when smaller), so
    ``1 <= length <= size + 1``; a range read and a decompression sized by the record are
    then bounded by what a node of that kind can be.
    """
    if record.size > limit:
        raise IntegrityError(
            f"index record of node {node_id} says it holds {record.size} bytes, more than a "
            f"node of its kind can in this repository ({limit})",
            object_id=node_id,
        )
    if not 1 <= record.length <= record.size + 1:
        raise IntegrityError(
            f"index record of node {node_id} says its frame is {record.length} bytes for "
            f"{record.size} bytes of node",
            object_id=node_id,
        )
    return record


class _Feed:
    """The chunks of a materialisation, in the order it copies them, read a window ahead.

    Ranges (``groups``, in the order their first chunk is needed) are submitted to the pool
    while the bytes submitted and not yet used up stay under ``_READ_AHEAD``, and always up
    to the range of the chunk asked for. A chunk is dropped after its last use (``order``
    may repeat a chunk), and a range's bytes are counted free once all its chunks are.
    A range's chunks are hash-checked here, when it arrives, not on the pool: a pool thread
    re-taking the GIL after every hash would wait out the switch interval each time behind
    the copying here.
    """

    def __init__(
        self,
        read: Callable[[list[tuple[bytes, IndexRecord]]], Future[dict[bytes, memoryview]]],
        groups: list[list[tuple[bytes, IndexRecord]]],
        order: list[bytes],
    ) -> None:
        self._read = read  # starts reading a range (unverified) on the pool
        self._groups = groups
        self._sizes = [sum(record.size for _, record in group) for group in groups]
        self._group_of = {node_id: index for index, g in enumerate(groups) for node_id, _ in g}
        self._uses = Counter(order)
        self._left = [len(group) for group in groups]
        self._futures: dict[int, Future[dict[bytes, memoryview]]] = {}
        self._data: dict[bytes, memoryview] = {}
        self._submitted = 0
        self._ahead = 0

    def take(self, node_id: bytes) -> memoryview:
        index = self._group_of[node_id]
        while self._submitted <= index or (
            self._ahead < _READ_AHEAD and self._submitted < len(self._groups)
        ):
            self._futures[self._submitted] = self._read(self._groups[self._submitted])
            self._ahead += self._sizes[self._submitted]
            self._submitted += 1
        data = self._data.get(node_id)
        if data is None:
            arrived = self._futures.pop(index).result()
            for arrived_id, arrived_data in arrived.items():
                codec.check_digest(arrived_data, arrived_id)
            self._data.update(arrived)
            data = self._data[node_id]
        self._uses[node_id] -= 1
        if not self._uses[node_id]:
            del self._data[node_id]
            self._left[index] -= 1
            if not self._left[index]:
                self._ahead -= self._sizes[index]
        return data

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._data.clear()


class LazyState(Mapping[str, Any]):
    """A version's state that reads each field on first access (then keeps it).

    ``on_error`` raises what an IntegrityError reading a field means (the repository's
    facade tells a version deleted since from a corrupt one).
    """

    def __init__(
        self,
        reader: NodeReader,
        entries: Mapping[str, Entry],
        *,
        on_error: Callable[[IntegrityError], NoReturn],
    ) -> None:
        self._reader = reader
        self._on_error = on_error
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
        try:
            value = self._reader.materialize({name: entry})[name]
        except IntegrityError as exc:
            self._on_error(exc)
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
