"""The repository: the public face of one object store and one metadata store.

``statebag.open(url)`` opens (and by default creates) a repository (see
:mod:`statebag.opening` for the URL schemes). A :class:`Repository` checks its arguments
and hands each call to the part that owns it:

- :class:`~statebag.catalog.Catalog`: manifests, heads, tombstones, fork counts, holds;
- :class:`~statebag.reader.NodeReader`: nodes from packs, fields tables, materialised values;
- :class:`~statebag.writer.Writer`: the save pipeline and its commit;
- :class:`~statebag.branches.Branches`: fork, reset, merge, merge base, graph log;
- :class:`~statebag.verify.Verifier`: verification;
- :class:`~statebag.gc.Collector`: deletion, retention, gc and the audit.

A Repository is safe to use from many threads at once, and several processes may use one
local repository at once: every version is committed by the protocol of
:mod:`statebag.commit`, whose conditional head move makes a lost race a
:class:`~statebag.errors.ConflictError` and never a lost version. docs/ARCHITECTURE.md
shows how a save and a load flow through the parts.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, NoReturn, Self

from . import codec, dag, merging
from .bag import StateBag, loaded_bag
from .branches import Branches
from .catalog import Catalog
from .config import FORMAT_VERSION, Config, upgrade_config
from .dag import Entry, NodeLimits
from .durations import as_seconds
from .errors import IntegrityError, InvalidInputError, NotFoundError, StatebagError
from .gc import COMPACT_BYTES, REPACK_BYTES, Collector
from .ids import ContentId
from .liveness import Liveness, Rehearsal
from .meta import MetaStore
from .meta.counting import CountingMetaStore
from .meta.overlay import OverlayMetaStore
from .metering import ContextPool
from .objects import ObjectStore
from .objects.counting import CountingObjectStore, IOCounters
from .objects.discarding import DiscardingObjectStore
from .opening import open
from .prepare import DEFAULT_LEASE
from .reader import LazyState, NodeReader
from .records import Records, check_records
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
from .validation import check_chain, check_handle_options, field_names, snapshot_state
from .verify import Verifier
from .writer import CUT_CACHE_BYTES, Writer, encode_meta

__all__ = ["FORMAT_VERSION", "Config", "LazyState", "Repository", "open"]


def _parse_id(manifest_id: str, /, *, field: str = "manifest_id") -> bytes:
    return bytes(ContentId.parse(manifest_id, field=field))


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
        check_handle_options(threads=threads, cache_bytes=cache_bytes)
        # Every request is counted, so callers (the hydrator, benchmarks) can report the
        # object-store cost of an operation without wrapping the store themselves.
        self._counting = CountingObjectStore(objects, meter=True)
        self._objects: ObjectStore = self._counting
        self._meta = meta
        # Metadata requests are counted too, for CommitResult.requests (statebag.metering).
        counted_meta = CountingMetaStore(meta, meter=True)
        self._config = config
        self._url = url
        self._liveness = liveness if liveness is not None else Liveness()
        self._pool = ContextPool(
            max_workers=threads or min(4, os.cpu_count() or 2),
            thread_name_prefix="statebag",
        )
        self._lock = threading.Lock()
        self._closed = False
        self._catalog = Catalog(counted_meta, counts=config.count_keys)
        self._reader = NodeReader(
            self._objects,
            counted_meta,
            self._pool,
            NodeLimits.of(max_size=config.max_size, inline_max=config.inline_max),
        )
        self._writer = Writer(
            self._objects,
            counted_meta,
            config,
            catalog=self._catalog,
            reader=self._reader,
            pool=self._pool,
            liveness=self._liveness,
            lease=lease,
            cache_bytes=CUT_CACHE_BYTES if cache_bytes is None else cache_bytes,
        )
        self._branches = Branches(self._catalog, self._reader, self._writer)
        self._records = Records(counted_meta)
        self._verifier = Verifier(self._catalog, self._reader, self._objects, counted_meta)
        self._collector = Collector(
            self._objects,
            counted_meta,
            liveness=self._liveness,
            read_nodes=self._reader.read,
            forget=self._catalog.forget,
            lease=lease,
            grace=config.grace,
            counts=config.count_keys,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def rehearsal(self) -> Repository:
        """A handle on this repository whose writes change nothing: every call reads what is
        stored, runs as it would here and fails as it would, and what it "wrote" is seen only
        by later calls on the same rehearsal. For trying deletes, pins or a gc first (the
        CLI's ``--dry-run``); what a rehearsal saves cannot be loaded back. Close it when
        done; this handle stays open."""
        self._check_open()
        return Repository(
            DiscardingObjectStore(self._objects),
            OverlayMetaStore(self._meta),
            self._config,
            threads=1,
            url=self._url,
            cache_bytes=0,
            liveness=Rehearsal(self._liveness),
        )

    @property
    def config(self) -> Config:
        return self._config

    def upgrade(self) -> int:
        """Move a repository of an older format to the newest (``FORMAT_VERSION``); returns
        the format it has now. Nothing stored is rewritten: versions saved before stay as
        they are and read as before, and saves from now on write the new format's nodes
        (docs/FORMAT.md, "Formats"). Other handles already open keep writing the format they
        opened with until reopened, which every format reads."""
        self._check_open()
        with self._lock:
            self._config = upgrade_config(
                self._objects, self._meta, self._config, where=self._url or "here"
            )
            self._writer.use_config(self._config)
            return self._config.format

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
        meta_raw = encode_meta(meta)
        hint = None if changed is None else field_names(changed, field="changed")
        return self._writer.save(
            chain,
            data,
            parent=None if parent is None else _parse_id(parent, field="parent"),
            new_chain=new_chain,
            hint=hint,
            merged=merged,
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
        raw = _parse_id(manifest_id)
        try:
            manifest = self._catalog.manifest(raw)
            entries = self._reader.fields_table(manifest.root).entries
            if fields is not None:
                wanted = field_names(fields, field="fields")
                missing = sorted(wanted - entries.keys())
                if missing:
                    raise NotFoundError(
                        f"version {manifest_id} has no field {', '.join(map(repr, missing))}"
                    )
                entries = {name: entries[name] for name in sorted(wanted)}
            if lazy:
                return LazyState(
                    self._reader, entries, on_error=functools.partial(self._read_failed, raw)
                )
            return self._reader.materialize(entries)
        except IntegrityError as exc:
            self._read_failed(raw, exc)

    def _read_failed(self, raw: bytes, exc: IntegrityError) -> NoReturn:
        """Raise what ``exc``, met reading version ``raw``, means: a version deleted (and
        swept) meanwhile, by another handle or since a lazy state of it was returned, is
        gone (NotFoundError), not corrupt."""
        if self._catalog.is_stored(raw):
            raise exc
        raise NotFoundError(f"manifest {raw.hex()} was deleted while it was being read") from exc

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
        self._check_open()
        manifest_id = self._catalog.version(chain_or_id, field="chain_or_id").hex()
        state = self.load(manifest_id)
        assert isinstance(state, dict)
        return loaded_bag(state, manifest_id)

    def _fields(self, manifest_id: bytes) -> dict[str, Entry]:
        return self._reader.fields_table(self._catalog.manifest(manifest_id).root).entries

    # -- chains ------------------------------------------------------------------------------

    def head(self, chain: str) -> str | None:
        """The manifest id at the head of ``chain``, or None when it has no version."""
        self._check_open()
        head = self._catalog.head(check_chain(chain))
        return head.hex() if head is not None else None

    def chains(self, *, prefix: str = "") -> Iterator[str]:
        """The names of every chain with a head, sorted; with ``prefix``, only the names
        that start with it (one range scan, however many other chains there are)."""
        self._check_open()
        if not isinstance(prefix, str):
            raise InvalidInputError(f"prefix must be a str, not {prefix!r}", path="prefix")
        yield from self._catalog.chains(prefix=prefix)

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
            yield from self._branches.graph(chain, bytes.fromhex(current))
        else:
            yield from self._catalog.log(chain, bytes.fromhex(current))

    def resolve(self, ref: str, /, *, field: str = "ref") -> str:
        """The manifest id ``ref`` names: a manifest id (returned as is), a chain name (its
        head), or a prefix of at least 8 hex characters of exactly one stored version's id,
        as ``log`` shows them. A chain of that name wins over an id prefix. NotFoundError
        when nothing matches; InvalidInputError naming ``field`` for an ambiguous prefix
        (listing the candidates) or one shorter than 8 characters."""
        self._check_open()
        return self._catalog.resolve(ref, field=field).hex()

    def info(self, manifest_id: str, /) -> ManifestInfo:
        """The log entry of one version."""
        raw = _parse_id(manifest_id)
        return self._catalog.info(raw, self._catalog.manifest(raw))

    # -- records beside chains ---------------------------------------------------------------

    def put_records(
        self, chain: str, records: Mapping[str, bytes], /, *, replace: bool = True
    ) -> int:
        """Keep ``records`` (names to bytes) beside ``chain``, in one atomic write; the
        number written. With ``replace=False`` a name that already holds a record keeps it
        (an idempotent insert). The chain need not have a version yet.

        Records are no part of any version (no id, field or size changes); ``delete_chain``
        deletes them. A name is 1..512 bytes of UTF-8 without NUL, a value at most 256 KiB
        (``statebag.records.MAX_RECORD_BYTES``). InvalidInputError names a bad record, and
        nothing is written."""
        self._check_open()
        chain = check_chain(chain)
        if not isinstance(replace, bool):
            raise InvalidInputError(f"replace must be a bool, not {replace!r}", path="replace")
        return self._records.put(chain, check_records(records), replace=replace)

    def records(self, chain: str, /) -> dict[str, bytes]:
        """The records beside ``chain``, in name order; empty when it has none."""
        self._check_open()
        return self._records.get(check_chain(chain))

    # -- branches ----------------------------------------------------------------------------

    def fork(self, source: str, new_chain: str, /) -> str:
        """Start ``new_chain`` at ``source`` (a chain's head, or a manifest id) and return
        that version's id. Nothing is copied and no version written: ``head(new_chain)`` is
        the fork point, and the next save on ``new_chain`` has it as parent.

        ConflictError if ``new_chain`` exists; NotFoundError if ``source`` does not."""
        self._check_open()
        new_chain = check_chain(new_chain, field="new_chain")
        return self._branches.fork(source, new_chain).hex()

    def reset(self, chain: str, manifest_id: str, /) -> ResetResult:
        """Move ``chain``'s head back to ``manifest_id``, a version on its first-parent
        history (what :meth:`log` lists). Conditional like a save: a save or reset that
        moved the head meanwhile makes this a ConflictError, and a save racing this one
        loses with ConflictError. The versions after it stay readable; gc deletes those that
        no head reaches once the grace period has passed (see :meth:`gc`)."""
        self._check_open()
        return self._branches.reset(check_chain(chain), _parse_id(manifest_id))

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
        meta_raw = encode_meta(meta)
        return self._branches.merge(
            target,
            names,
            strategy=strategy,
            on_conflict=on_conflict,
            meta_raw=meta_raw,
            level=self._config.compression_level,
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
        ids = [self._catalog.version(v, field=f"versions[{i}]") for i, v in enumerate(versions)]
        for manifest_id in ids:
            self._catalog.manifest(manifest_id)  # NotFoundError for an unknown id
        base = self._branches.merge_base(ids)
        return base.hex() if base is not None else None

    # -- deletion and garbage collection ----------------------------------------------------

    def delete(self, manifest_id: str, /) -> bool:
        """Delete version ``manifest_id``, leaving a tombstone; its data is freed by gc.
        True when this call deleted it; False when it was deleted already (nothing done).

        ConflictError for a chain's head (use :meth:`delete_chain`) or a pinned version;
        NotFoundError if it does not exist.
        """
        self._check_open()
        return self._catalog.delete(_parse_id(manifest_id))

    def delete_chain(self, chain: str, /) -> int:
        """Delete ``chain``: its head first (a save racing it gets ConflictError), then every
        version, pinned ones too, then the records beside it (:meth:`put_records`); the
        number of versions deleted. Running it again finishes a run that was interrupted.
        NotFoundError when the chain has no head, version or record."""
        self._check_open()
        return self._catalog.delete_chain(check_chain(chain))

    def pin(self, manifest_id: str, /) -> None:
        """Keep ``manifest_id`` from retention and from :meth:`delete` until unpinned."""
        self._check_open()
        self._catalog.pin(_parse_id(manifest_id), pinned=True)

    def unpin(self, manifest_id: str, /) -> None:
        self._check_open()
        self._catalog.pin(_parse_id(manifest_id), pinned=False)

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
        repack_bytes: int = REPACK_BYTES,
    ) -> GCReport:
        """Apply retention, then free what no version references; see docs/FORMAT.md.

        Retention (only when a ``keep_*`` rule is given) deletes the versions of ``chains``
        (default: every chain) that no rule keeps: ``keep_last`` newest, those within
        ``keep_within`` (seconds or a timedelta) of now, and the newest of each of the last
        ``keep_daily`` days that have one. Heads, pinned and held versions are always kept.
        Then nodes whose count has been zero for ``grace`` (default: the repository's, 1 h)
        are freed, dead packs deleted, and packs with much dead space compacted (at most
        ``compact_bytes`` per run). The nodes of the chains' latest versions that sit
        scattered over small packs are gathered into packs of up to ``pack_size``, newest
        chains first (at most ``repack_bytes`` per run; 0 turns it off), so that a load
        reads few packs. Saves whose writer is gone are rolled back.
        """
        self._check_open()
        for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily)):
            if value is not None and (type(value) is not int or value < 0):
                raise InvalidInputError(f"{name} must be an int >= 0, not {value!r}", path=name)
        for name, budget in (("compact_bytes", compact_bytes), ("repack_bytes", repack_bytes)):
            if type(budget) is not int or budget < 0:
                raise InvalidInputError(f"{name} must be an int >= 0, not {budget!r}", path=name)
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
        options: dict[str, Any] = {
            "keep_last": keep_last,
            "keep_within": within,
            "keep_daily": keep_daily,
            "chains": names,
            "grace": grace_s,
            "compact_bytes": compact_bytes,
            "repack_bytes": repack_bytes,
            "pack_size": self._config.pack_size,
        }
        if dry_run:
            # The same run on a rehearsal: it reports what gc would do, cascades included,
            # and writes nothing.
            with self.rehearsal() as rehearsal:
                return rehearsal._collector.collect(**options)
        return self._collector.collect(**options)

    def audit(self, repair: bool = False) -> AuditReport:
        """Recount every reference and check that every reachable node is indexed in a pack
        that exists, and every parent link (the chunks' data is :meth:`verify`'s to check);
        with ``repair``, fix counts, mark unswept garbage and delete orphan packs older than
        the grace period. ``ok`` is False when something reachable is in danger."""
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
        raw = _parse_id(manifest_id)
        seconds = as_seconds(ttl, field="ttl")
        self._catalog.hold(raw, until_ns=time.time_ns() + int(seconds * 1e9))

    # -- diff --------------------------------------------------------------------------------

    def diff(self, a: str, b: str) -> Diff:
        """Fields added, removed and changed from version ``a`` to version ``b``, each a
        manifest id or a chain name (its head), so branches compare directly."""
        self._check_open()
        entries_a = self._fields(self._catalog.version(a, field="a"))
        entries_b = self._fields(self._catalog.version(b, field="b"))
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
        totals = self._catalog.totals()
        return RepoStats(
            chains=totals.get("chains", 0),
            manifests=totals.get("manifests", 0),
            nodes=totals.get("nodes", 0),
            packs=totals.get("packs", 0),
            bytes_logical=totals.get("bytes_logical", 0),
            bytes_stored=totals.get("bytes_stored", 0),
            bytes_dead=totals.get("bytes_dead", 0),
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
        target = None if manifest_id is None else _parse_id(manifest_id)
        return self._verifier.verify(target, read_data=read_data)
