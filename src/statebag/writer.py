"""The writer: the save pipeline from a state to a committed version.

A save (:meth:`Writer.save`) reads the chain's head and the parent's fields, then
:meth:`Writer.write` runs the pipeline for a :class:`VersionPlan`:

1. **encode** each field that changed (canonical MessagePack; fields the caller says are
   unchanged, or that a merge takes as a side stored them, are carried over as entries);
2. **cut** values of at least ``inline_max`` bytes into chunks (re-cutting from the first
   edit when the value's previous cut is cached) and build their index nodes, then the
   fields tree;
3. **look up** the new nodes in the index in batches, so nodes already stored are reused;
4. **compress** the rest on the pool and **assemble packs** in submission order, shipping
   each full pack (pending entry, then upload) while later fields are still encoded;
5. hand the :class:`~statebag.commit.Transaction` to :func:`~statebag.commit.commit`.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from . import codec, dag, metering
from .bag import StateBag
from .caches import Recent
from .catalog import Catalog
from .chunking import Chunker, recut
from .commit import Transaction, commit
from .config import Config
from .dag import Entry, InlineField, NewNode, TreeField
from .errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError, StatebagError
from .ids import ContentId
from .keys import HeadRecord, encode_le64, head_key, node_key, unpacked_key, version_key
from .liveness import Liveness
from .manifests import MANIFEST_ENCODER, Manifest
from .meta import Check, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import PackWriter, pack_key
from .prepare import Prepare, new_txn_id
from .reader import FieldsTable, NodeReader
from .results import CommitResult
from .validation import field_path

__all__ = ["VersionPlan", "Writer", "encode_meta"]

MIB = 1 << 20
# Bodies from this size up are cut with a second thread scanning while this one hashes.
_PARALLEL_CUT_BYTES = 4 * MIB
# Compression tasks take about this much raw data, so the pool's overhead stays small.
_COMPRESS_TASK_BYTES = 4 * MIB
_COMPRESS_INLINE_BYTES = 256 * 1024
# New nodes are looked up in the index in batches of about this many, or this much data.
_LOOKUP_NODES = 1024
_LOOKUP_BYTES = 4 * MIB
# The cuts of recently saved values, so that saving a value again re-cuts it only from its
# first edit (an append to a long history hashes its last chunk, not the whole history).
# Values shorter than _RECUT_MIN_BYTES are cut whole: that costs tens of microseconds.
CUT_CACHE_BYTES = 128 * MIB
_RECUT_MIN_BYTES = 64 * 1024

# The tally a save opened for the write it calls (see Writer.write).
_SAVE_TALLY: contextvars.ContextVar[metering.Tally | None] = contextvars.ContextVar(
    "statebag_save_tally", default=None
)

_STAGES = ("encode", "chunk", "compress", "upload", "commit")
_Jobs = list[tuple[list[NewNode], Future[list[tuple[bytes, Any]]]]]


@contextlib.contextmanager
def _save_tally() -> Iterator[None]:
    """Count the requests of one save, for the write it calls (see Writer.write)."""
    with metering.tally() as spent:
        token = _SAVE_TALLY.set(spent)
        try:
            yield
        finally:
            _SAVE_TALLY.reset(token)


class _Cut(NamedTuple):
    """A value's body (kept alive by the cache) and the chunker's cut of it. A tree root
    names its body's bytes, so a cut found by root is the cut of that body, whichever save
    or chain put it."""

    body: memoryview
    offsets: list[int]
    digests: list[bytes]
    index_ids: frozenset[bytes]  # the tree's index nodes: known stored once it is saved


@dataclass
class VersionPlan:
    """One version to write: its fields, where they come from, and how it commits."""

    chain: str
    data: Mapping[str, Any]  # values to encode (the others come from ``given`` or ``base``)
    parents: list[bytes]
    seq: int
    head_bytes: bytes | None  # the head record the commit is conditional on
    level: int
    given: Mapping[str, Entry] = field(default_factory=dict)  # entries taken as stored
    base: FieldsTable | None = None  # the first parent's fields
    # Fields that may have changed since ``base``; None: all of them.
    hint: set[str] | frozenset[str] | None = None
    guards: list[Check] = field(default_factory=list)
    extra: list[Op] = field(default_factory=list)
    meta_raw: msgspec.Raw | None = None
    hold_s: float | None = None
    bag: StateBag | None = None


class _Encoded(NamedTuple):
    """What encoding a state produced, for the commit and the next save."""

    root: bytes
    packs: list[tuple[bytes, int, list[Any]]]
    logical: int
    fields_nodes: list[NewNode]
    name_hashes: dict[str, bytes]
    reused: int
    manifest: tuple[Manifest, bytes, bytes]  # the manifest, its bytes and its id


@dataclass
class _SaveRun:
    """The state of one save while it encodes: what it found, made and measured."""

    level: int
    packer: _Packer
    entries: dict[str, Entry] = field(default_factory=dict)
    new_nodes: dict[bytes, NewNode] = field(default_factory=dict)
    # Nodes found already indexed, with the record as read (the commit checks them).
    found: dict[bytes, tuple[NewNode, bytes]] = field(default_factory=dict)
    # Nodes looked up, or known from the parent version: never looked up again.
    seen: set[bytes] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0.0))


def _check_changed(changed: set[str], data: Mapping[str, Any], base: FieldsTable | None, /) -> None:
    """InvalidInputError naming the first field ``changed`` names that is in neither the
    state being saved nor the parent: a typo, which would otherwise leave the field it meant
    carried over from the parent, unchanged."""
    unknown = sorted(
        name for name in changed if name not in data and (base is None or name not in base.entries)
    )
    if unknown:
        raise InvalidInputError(
            f"changed names {', '.join(map(repr, unknown))}, in neither the state being saved "
            "nor the parent version: a field that was never there cannot have changed",
            path=unknown[0],
        )


class Writer:
    """Encodes, stores and commits versions; safe to share between threads."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        config: Config,
        /,
        *,
        catalog: Catalog,
        reader: NodeReader,
        pool: ThreadPoolExecutor,
        liveness: Liveness,
        lease: float,
        cache_bytes: int,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._config = config
        self._catalog = catalog
        self._reader = reader
        self._pool = pool
        self._liveness = liveness
        self._lease = lease
        self._chunker = Chunker(
            config.min_size,
            config.avg_size,
            config.max_size,
            config.seed,
            normalization=config.normalization,
        )
        self._grouping = dag.GROUPINGS[config.format]
        # One version of each value is kept (a new cut replaces its parent's), not a history
        # that would push out the values the next save needs.
        self._cuts: Recent[_Cut] = Recent(cache_bytes, weigh=lambda cut: cut.body.nbytes)

    def use_config(self, config: Config, /) -> None:
        """Write with ``config`` from now on (after an upgrade changed its format)."""
        self._config = config
        self._grouping = dag.GROUPINGS[config.format]

    def clear_cuts(self) -> None:
        """Forget the cached cuts: the next save of each value cuts it whole."""
        self._cuts.clear()

    def cached_cut(self, root: bytes, /) -> bool:
        """Whether the cut of the value with tree root ``root`` is cached."""
        return self._cuts.get(root) is not None

    # -- a save on a chain's head ------------------------------------------------------------

    def save(
        self,
        chain: str,
        data: Mapping[str, Any],
        /,
        *,
        parent: bytes | None,
        new_chain: bool,
        hint: set[str] | None,
        merged: Iterable[str] | None,
        meta_raw: msgspec.Raw | None,
        level: int,
        hold_s: float | None,
        bag: StateBag | None,
    ) -> CommitResult:
        """The next version of ``chain`` on its head (arguments already checked)."""
        with _save_tally():
            others = self._catalog.other_parents(merged)
            head_bytes, head = self._catalog.head_record(chain)
            if new_chain and head is not None:
                raise ConflictError(
                    f"chain {chain!r} already exists (its head is {head.head.hex()}); "
                    "new_chain=True saves only a chain's first version"
                )
            if parent is not None and (head is None or head.head != parent):
                now = head.head.hex() if head is not None else None
                raise ConflictError(
                    f"chain {chain!r} is at {now}, not at parent {parent.hex()}; load the "
                    "head and apply the step again"
                )
            if head is not None and head.head in {other.manifest_id for other in others}:
                raise InvalidInputError(
                    f"merged names the parent {head.head.hex()} again", path="merged"
                )
            base: FieldsTable | None = None
            extra: list[Op] = []
            if head is not None:
                try:
                    parent_manifest = self._catalog.manifest(head.head)
                    base = self._reader.fields_table(parent_manifest.root)
                except (NotFoundError, IntegrityError) as exc:
                    raise self._moved_under(chain, head_bytes, exc) from exc
                extra += self._catalog.leave_head(chain, head.head, parent_manifest)
            if hint is not None:
                _check_changed(hint, data, base)
            if head is None:
                hint = None  # nothing to carry over
            elif hint is None and bag is not None and bag.base == head.head.hex():
                hint = set(bag.dirty)
            parents = ([head.head] if head is not None else []) + [o.manifest_id for o in others]
            seqs = ([head.seq] if head is not None else []) + [other.seq for other in others]
            return self.write(
                VersionPlan(
                    chain=chain,
                    data=data,
                    parents=parents,
                    seq=max(seqs, default=0) + 1,
                    head_bytes=head_bytes,
                    level=level,
                    base=base,
                    hint=hint,
                    guards=[other.guard for other in others],
                    extra=extra,
                    meta_raw=meta_raw,
                    hold_s=hold_s,
                    bag=bag,
                )
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

    # -- the pipeline ------------------------------------------------------------------------

    def write(self, plan: VersionPlan, /) -> CommitResult:
        """Encode and commit one version: ``plan.data``'s fields are encoded (carried from
        ``plan.base`` per ``plan.hint``), ``plan.given``'s entries taken as they are stored.

        The result's ``requests`` are those of the calling :meth:`save` (with what it read
        before), or of this call alone."""
        spent = _SAVE_TALLY.get()
        if spent is None:
            with metering.tally() as own:
                return self._write(plan, own)
        _SAVE_TALLY.set(None)  # taken: a write inside this one counts on its own
        return self._write(plan, spent)

    def _write(self, plan: VersionPlan, spent: metering.Tally, /) -> CommitResult:
        started = time.perf_counter()
        txn = new_txn_id()
        prepare = Prepare(
            self._objects,
            self._meta,
            txn=txn,
            chain=plan.chain,
            lease=self._lease,
            submit=self._pool.submit,
            liveness=self._liveness,
        )
        run = _SaveRun(plan.level, _Packer(prepare, pack_size=self._config.pack_size))
        # The writer's lock (see statebag.liveness) is released however the save ends.
        try:
            try:
                encoded = self._encode_state(plan, run)
            except (NotFoundError, IntegrityError) as exc:
                prepare.abandon()
                raise self._moved_under(plan.chain, plan.head_bytes, exc) from exc
            except BaseException:
                prepare.abandon()
                raise
            return self._commit(plan, run, encoded, txn, started, spent)
        finally:
            prepare.release()

    def _commit(
        self,
        plan: VersionPlan,
        run: _SaveRun,
        encoded: _Encoded,
        txn: str,
        started: float,
        spent: metering.Tally,
    ) -> CommitResult:
        manifest, manifest_bytes, manifest_id = encoded.manifest
        extra = [
            *plan.extra,
            Put(
                version_key(plan.chain, manifest.seq, manifest_id),
                encode_le64(manifest.time_ns),
            ),
        ]
        if plan.hold_s is not None:
            extra += self._catalog.hold_ops(manifest_id, seconds=plan.hold_s)
        if self._config.format >= 2 and not encoded.packs:
            # No pack to carry the manifest: gc writes it into one (see gc.manifests).
            extra.append(Put(unpacked_key(manifest_id), b""))
        tx = Transaction(
            txn=txn,
            chain=plan.chain,
            expected_head=plan.head_bytes,
            new_head=HeadRecord(manifest_id, manifest.seq, txn),
            manifest_id=manifest_id,
            manifest=manifest_bytes,
            bytes_logical=encoded.logical,
            root=encoded.root,
            packs=encoded.packs,
            new_nodes=run.new_nodes,
            counts=self._config.count_keys,
            lease=self._lease,
            found=run.found,
            guards=plan.guards,
            extra=extra,
            level=run.level,
        )
        t = time.perf_counter()
        commit(self._objects, self._meta, tx, prepared=run.packer.prepare)
        timings = run.timings
        timings["commit"] = time.perf_counter() - t
        timings["upload"] = tx.timings.get("upload", 0.0)
        self._catalog.remember(manifest_id, manifest)
        self._reader.remember_table(
            encoded.root,
            FieldsTable(
                run.entries,
                {node.node_id for node in encoded.fields_nodes},
                {name: encoded.name_hashes[name] for name in run.entries},
                checked=True,
            ),
        )
        if plan.bag is not None:
            plan.bag.mark_saved(manifest_id.hex())
        written = [node for node_id, node in run.new_nodes.items() if node_id not in tx.reused_late]
        timings["total"] = time.perf_counter() - started
        return CommitResult(
            manifest_id=manifest_id.hex(),
            parent=plan.parents[0].hex() if plan.parents else None,
            parents=[p.hex() for p in manifest.parents],
            chain=plan.chain,
            seq=manifest.seq,
            nodes_written=len(written),
            nodes_reused=encoded.reused + len(tx.reused_late),
            bytes_logical=encoded.logical,
            bytes_new_raw=sum(len(node.data) for node in written),
            bytes_new_stored=sum(size for _, size, _ in tx.packs),
            requests=spent.counts(),
            timings=timings,
            node_ids=[node.node_id.hex() for node in written],
            pack_keys=[pack_key(pack_id) for pack_id, _, _ in tx.packs],
        )

    def _encode_state(self, plan: VersionPlan, run: _SaveRun) -> _Encoded:
        """Encode, cut and compress the fields into ``run``; ship full packs as they fill."""
        base, hint, packer, timings = plan.base, plan.hint, run.packer, run.timings
        # Nodes wait here for one index lookup for several fields (a query per field cost
        # more than the lookups themselves), then go to the compression pool.
        lookup: list[NewNode] = []
        lookup_bytes = 0

        # Tree entries taken as stored, whose lengths count in the version's logical size:
        # unless a writer made them, they are checked against their chunks first.
        unchecked: dict[str, TreeField] = {}
        base_checked = base is not None and base.checked
        names = sorted({*plan.data, *plan.given})
        name_hashes = dict(base.name_hashes) if base is not None else {}
        # Names too long for one fields node are refused before anything is stored.
        dag.check_field_names(names, grouping=self._grouping, hashes=name_hashes)
        for name in names:
            taken = plan.given.get(name)
            if taken is not None:
                # A merge takes this field as one side stored it: nothing to encode.
                run.entries[name] = taken
                packer.reused += type(taken) is TreeField
                if type(taken) is TreeField:
                    unchecked[name] = taken
                continue
            old = base.entries.get(name) if base is not None else None
            if old is not None and hint is not None and name not in hint:
                run.entries[name] = old
                packer.reused += type(old) is TreeField
                if type(old) is TreeField and not base_checked:
                    unchecked[name] = old
                continue
            t = time.perf_counter()
            encoded, rest = _encode_field(name, plan.data[name])
            timings["encode"] += time.perf_counter() - t
            if len(encoded) + len(rest) < self._config.inline_max:
                run.entries[name] = InlineField(encoded + rest)
                continue
            t = time.perf_counter()
            entry, nodes, body_size = self._cut_value(encoded, rest, old, run)
            timings["chunk"] += time.perf_counter() - t
            if old == entry:
                run.entries[name] = old
                packer.reused += 1
                continue
            run.entries[name] = entry
            lookup.extend(nodes)
            lookup_bytes += body_size
            if len(lookup) >= _LOOKUP_NODES or lookup_bytes >= _LOOKUP_BYTES:
                self._store_new(lookup, run)
                lookup.clear()
                lookup_bytes = 0
            packer.drain(block=False)
        self._store_new(lookup, run)
        self._reader.check_lengths(unchecked)

        ordered = sorted(run.entries.items())
        root, fields_nodes = dag.build_fields(ordered, grouping=self._grouping, hashes=name_hashes)
        known = base.node_ids if base is not None else set()
        unknown = [node for node in fields_nodes if node.node_id not in known]
        packer.reused += len(fields_nodes) - len(unknown)
        self._store_new(unknown, run)

        logical = sum(dag.entry_size(entry) for entry in run.entries.values())
        manifest = Manifest(
            format=self._config.format,
            chain=plan.chain,
            seq=plan.seq,
            parents=plan.parents,
            root=root,
            fields=len(run.entries),
            size=logical,
            time_ns=time.time_ns(),
            meta=plan.meta_raw if plan.meta_raw is not None else msgspec.Raw(b"\xc0"),
        )
        manifest_bytes = MANIFEST_ENCODER.encode(manifest)
        manifest_id = bytes(ContentId.of(manifest_bytes))
        t = time.perf_counter()
        # From format 2 the save's last pack carries its manifest (see statebag.rebuild).
        packs = packer.finish(
            manifest=(manifest_id, manifest_bytes) if self._config.format >= 2 else None
        )
        timings["compress"] = time.perf_counter() - t
        return _Encoded(
            root=root,
            packs=packs,
            logical=logical,
            fields_nodes=fields_nodes,
            name_hashes=name_hashes,
            reused=packer.reused,
            manifest=(manifest, manifest_bytes, manifest_id),
        )

    def _cut_value(
        self, encoded: bytes, rest: bytes, old: Entry | None, run: _SaveRun
    ) -> tuple[Entry, list[NewNode], int]:
        """A value's tree entry and nodes (re-cut from its previous cut when cached), and
        its body's size, from its encoding as :func:`codec.encode_parts` gives it. The
        parent's nodes of the field join ``run.seen``: they need no lookup to be known."""
        if rest:  # a bytes value: the head, then the value itself as the body
            head, body = encoded, memoryview(rest)
        else:
            head_len = dag.head_length(encoded)
            head, body = encoded[:head_len], memoryview(encoded)[head_len:]
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
        entry, nodes = dag.split_value(
            head, body, offsets, digests, grouping=self._grouping, unless=old
        )
        if nodes:
            index_ids = frozenset(node.node_id for node in nodes if node.children)
        else:  # unchanged: split_value listed nothing, and the tree is the parent's
            index_ids = previous.index_ids if previous is not None else frozenset()
        if len(body) >= _RECUT_MIN_BYTES:
            self._cuts.put(
                entry.root,
                _Cut(body, offsets, digests, index_ids),
                replaces=old.root if type(old) is TreeField else None,
            )
        if type(old) is TreeField and old != entry:
            # The parent's nodes need no lookup, and no check at commit: the parent is the
            # head the commit is conditional on, so none of its nodes can be swept meanwhile.
            if previous is not None:
                run.seen.update(previous.digests)
                run.seen.update(previous.index_ids)
            else:
                leaves, interior = self._reader.tree_nodes(old)
                run.seen.update(node_id for node_id, _ in leaves)
                run.seen.update(interior)
        return entry, nodes, len(body)

    def _store_new(self, nodes: Sequence[NewNode], run: _SaveRun) -> None:
        """Look ``nodes`` up in the index and send those not stored to compression.

        Nodes found stored go into ``run.found`` with their index record: the commit checks
        they are still there (gc may sweep a node no version references while this save
        runs). Nodes of the parent version (in ``run.seen`` before the call) need no check:
        the parent is the chain's head, which cannot be deleted while the head does not move.
        """
        candidates: list[NewNode] = []
        for node in nodes:
            if node.node_id not in run.seen:
                run.seen.add(node.node_id)
                candidates.append(node)
        if not candidates:
            run.packer.reused += len(nodes)
            return
        keys = [node_key(node.node_id) for node in candidates]
        stored = self._meta.get_many(keys)
        fresh = []
        for node, key in zip(candidates, keys, strict=True):
            record = stored.get(key)
            if record is None:
                fresh.append(node)
            else:
                run.found[node.node_id] = (node, record)
        run.packer.reused += len(candidates) - len(fresh)
        for node in fresh:
            run.new_nodes[node.node_id] = node
        run.packer.add(self._submit_compress(fresh, run.level))

    def _submit_compress(self, nodes: list[NewNode], level: int) -> _Jobs:
        jobs: _Jobs = []
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


def encode_meta(meta: Mapping[str, Any] | None, /) -> msgspec.Raw | None:
    """A version's user metadata in canonical form; InvalidInputError names a bad path."""
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
        raise InvalidInputError(f"meta: {exc}", path=field_path("meta", exc.path)) from exc


def _encode_field(name: str, value: Any) -> tuple[bytes, bytes]:
    try:
        return codec.encode_parts(value)
    except InvalidInputError as exc:
        raise InvalidInputError(f"field {name!r}: {exc}", path=field_path(name, exc.path)) from exc


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
        self._packs: list[tuple[bytes, int, list[Any]]] = []

    def add(self, jobs: _Jobs) -> None:
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
        pack_id, data, entries = self._writer.finish()
        self._packs.append((pack_id, len(data), entries))
        self._writer, self._raw = PackWriter(self.prepare.salt), 0
        self.prepare.ship(pack_id, data, last=last)

    def finish(self, *, manifest: tuple[bytes, bytes] | None) -> list[tuple[bytes, int, list[Any]]]:
        """Ship the last pack, carrying ``manifest`` (id, bytes) when given. A save with no
        new node ships no pack: its manifest has none to ride in."""
        self.drain(block=True)
        if len(self._writer):
            if manifest is not None:
                self._writer.add_manifest(*manifest)
            self._ship(last=True)
        return self._packs


def _compress_all(nodes: list[NewNode], level: int) -> list[tuple[bytes, Any]]:
    return codec.compress_batch([node.data for node in nodes], level=level)
