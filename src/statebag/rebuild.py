"""Rebuilding a repository's metadata from its object store alone.

From format 2 every pack a save writes carries that save's manifest, and the object store
holds the repository's configuration (the ``config`` object), so the packs say everything
the metadata knew about the data: which nodes exist and where, which versions exist, and
what references what. :func:`rebuild` reads every pack and writes, into an empty metadata
store, the node index, the manifests, the version index, the reference counts, the pack
records, the dead-byte counters, the totals, zero marks for the nodes no version reaches,
and one head per chain. docs/FORMAT.md "Rebuild" gives the rules, and what a rebuild cannot
know (resets, deletions, pins, holds, records beside chains).

Crash safety: the first write puts the ``rebuild`` marker, the last one puts ``config`` and
removes the marker. A store with the marker and no ``config`` is a rebuild that stopped
part-way (nothing else writes such a store: ``open`` refuses a location without ``config``
whose object store holds packs); a rerun clears it and starts again, so it ends with the
same metadata as a rebuild that never stopped.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import codec, dag
from ._crash import crash_point
from .config import (
    CONFIG_OBJECT,
    FORMAT_VERSION,
    Config,
    check_config,
    decode_config,
    encode_config,
    read_config_object,
    store_config_object,
)
from .dag import TreeField
from .errors import ConfigError, IntegrityError, InvalidInputError, StatebagError
from .hashing import hash_bytes
from .keys import (
    CONFIG,
    FLAG_INTERIOR,
    REBUILDING,
    STAT_BYTES_DEAD,
    STAT_BYTES_LOGICAL,
    STAT_BYTES_STORED,
    STAT_CHAINS,
    STAT_EPOCH,
    STAT_MANIFESTS,
    STAT_NODES,
    STAT_PACKS,
    HeadRecord,
    IndexRecord,
    PackRecord,
    Tombstone,
    dead_key,
    encode_le64,
    encode_record,
    head_key,
    manifest_key,
    node_key,
    pack_record_key,
    tomb_key,
    version_key,
    zero_key,
)
from .manifests import Manifest, decode_manifest
from .meta import Add, Delete, DropCounter, MetaStore, Op, Put
from .objects import ObjectStore
from .packs import PACKS_PREFIX, manifest_bytes, pack_id_of, parse_pack
from .prepare import new_txn_id
from .results import RebuildReport

__all__ = ["rebuild"]

# Operations per metadata write where the store sets no cap: small enough that one write
# never holds much memory, large enough that a rebuild is few writes.
_UNCAPPED_BATCH = 2000
# First bytes of a node that may be interior (an index node's tag; a fields node's
# ``[level, rows]`` array): their bytes are kept while the packs are read, for the walk of
# the versions' trees; chunks that happen to start so cost a little memory, nothing else.
_MAYBE_INTERIOR = frozenset((dag.INDEX_TAG, 0x92))


@dataclass
class _Packs:
    """What the packs hold, as read."""

    # node id -> (pack id, offset, frame length, size) of each valid copy, in pack order
    copies: dict[bytes, list[tuple[bytes, int, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    interior_bytes: dict[bytes, bytes] = field(default_factory=dict)
    manifests: dict[bytes, tuple[bytes, Manifest]] = field(default_factory=dict)
    sizes: dict[bytes, int] = field(default_factory=dict)  # pack id -> object size
    frames: dict[bytes, int] = field(default_factory=dict)  # pack id -> node frame bytes
    dead: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    problems: list[str] = field(default_factory=list)


def rebuild(
    url_or_stores: str | os.PathLike[str] | tuple[ObjectStore, MetaStore],
    /,
    *,
    dry_run: bool = False,
) -> RebuildReport:
    """Recreate a repository's metadata from its object store alone.

    ``url_or_stores`` is a repository path or URL (as :func:`statebag.open` takes) or an
    ``(objects, meta)`` pair of stores. The metadata store must be empty (``ConfigError``
    otherwise), or hold what a rebuild that stopped part-way wrote (it is cleared and the
    rebuild starts again). With ``dry_run`` nothing is written: the report says what a
    rebuild would restore. Versions, nodes or packs that cannot be restored are named in
    the report's ``problems``; see docs/FORMAT.md "Rebuild".
    """
    if isinstance(url_or_stores, tuple):
        if len(url_or_stores) != 2 or not isinstance(url_or_stores[0], ObjectStore):
            raise InvalidInputError(
                "url_or_stores must be a path, a URL or an (objects, meta) pair",
                path="url_or_stores",
            )
        objects, meta = url_or_stores
        if not isinstance(meta, MetaStore):
            raise InvalidInputError(
                f"meta must be a MetaStore, not {type(meta).__name__}", path="url_or_stores"
            )
        return _rebuild(objects, meta, where="the given stores", dry_run=dry_run)
    from .opening import _locate

    location = _locate(url_or_stores, create=True)
    meta_store: MetaStore | None = None
    object_store: ObjectStore | None = None
    try:
        meta_store = location.open_meta(fsync=True)
        object_store = location.open_objects(fsync=True)
        report = _rebuild(object_store, meta_store, where=str(url_or_stores), dry_run=dry_run)
    except BaseException:
        for store in (object_store, meta_store):
            if store is not None:
                store.close()
        location.abandon()
        raise
    for store in (object_store, meta_store):
        store.close()
    if dry_run:
        location.abandon()  # a dry run leaves no trace, not even an empty metadata file
    return report


def _rebuild(objects: ObjectStore, meta: MetaStore, *, where: str, dry_run: bool) -> RebuildReport:
    _check_empty(meta, where=where, dry_run=dry_run)
    problems: list[str] = []
    stored = read_config_object(objects)
    config = (
        decode_config(stored, {}, where=f"the object {CONFIG_OBJECT!r} of {where}")
        if stored is not None
        else None
    )
    packs = _read_packs(objects, config or Config())
    if config is None:
        # A format 1 repository (or one whose configuration object was deleted): the
        # defaults, in the format the packs show. Reads do not depend on the chunker's
        # parameters; a chunk longer than the default max_size would be refused.
        config = check_config({"format": FORMAT_VERSION if packs.manifests else 1})
        problems.append(
            f"no {CONFIG_OBJECT!r} object: the repository's options are unknown, so the "
            f"defaults were recorded (format {config.format})"
        )
    problems += packs.problems
    chosen = _choose_copies(packs)
    versions, flags, refs = _walk_versions(packs, chosen, problems)
    if config.format < 2 and not packs.manifests:
        problems.append(
            f"format {config.format}: packs carry no manifests, so no version can be recovered; "
            f"{len(chosen)} node(s) are indexed without zero marks, and with no version the "
            f"metadata reads as lost: gc and audit --repair delete none of them"
        )
    heads = _heads(versions)
    ops = list(_metadata_ops(config, packs, chosen, versions, flags, refs, heads, problems))
    if not dry_run:
        if config.format >= 2 and read_config_object(objects) is None:
            store_config_object(objects, config)
        _write(meta, ops)
    return RebuildReport(
        chains=len(heads),
        versions=len(versions),
        nodes=len(chosen),
        packs=len(packs.sizes),
        problems=problems,
    )


def _check_empty(meta: MetaStore, *, where: str, dry_run: bool) -> None:
    """ConfigError unless ``meta`` is empty; a store a stopped rebuild wrote is cleared."""
    keys = [key for key, _ in meta.scan("", limit=2)]
    counters = [key for key, _ in _first(meta.counters(""))]
    if not keys and not counters:
        return
    if meta.get(CONFIG) is None and meta.get(REBUILDING) is not None:
        if not dry_run:
            _clear(meta)
        return
    raise ConfigError(
        f"the metadata store of {where} is not empty: rebuild writes only into an empty one "
        f"(it would otherwise mix its records with the ones there)"
    )


def _first(items: Iterator[tuple[str, int]]) -> list[tuple[str, int]]:
    return [item for item, _ in zip(items, range(1), strict=False)]


def _clear(meta: MetaStore) -> None:
    """Remove everything a stopped rebuild wrote, the marker last."""
    ops: list[Op] = [Delete(key) for key, _ in meta.scan("") if key != REBUILDING]
    ops += [DropCounter(key) for key, _ in meta.counters("")]
    batch = meta.max_batch or _UNCAPPED_BATCH
    for start in range(0, len(ops), batch):
        meta.write(ops[start : start + batch])
    meta.write([Delete(REBUILDING)])


def _read_packs(objects: ObjectStore, config: Config) -> _Packs:
    packs = _Packs()
    limits = dag.NodeLimits.of(max_size=config.max_size, inline_max=config.inline_max)
    for key in sorted(objects.list(PACKS_PREFIX)):
        pack_id = pack_id_of(key)
        if pack_id is None:
            continue  # not a pack (a stray file): never read as one
        try:
            data = objects.get(key)
            if hash_bytes(data) != pack_id:
                raise IntegrityError(f"pack {pack_id.hex()} does not hash to its id")
            contents = parse_pack(data, pack_id=pack_id.hex())
        except StatebagError as exc:
            packs.problems.append(f"pack {pack_id.hex()} skipped: {exc}")
            continue
        packs.sizes[pack_id] = len(data)
        packs.frames[pack_id] = sum(entry.length for entry in contents.nodes)
        for entry in contents.nodes:
            frame = memoryview(data)[entry.offset : entry.offset + entry.length]
            try:
                if entry.size > limits.largest:
                    raise IntegrityError(f"a size of {entry.size} bytes")
                raw = codec.decompress(frame, max_size=entry.size, expected=entry.node_id)
                if len(raw) != entry.size:
                    raise IntegrityError(f"{len(raw)} bytes, not the {entry.size} listed")
            except StatebagError as exc:
                packs.problems.append(
                    f"pack {pack_id.hex()}: node {entry.node_id.hex()} is unreadable ({exc}); "
                    "its frame is counted dead"
                )
                packs.dead[pack_id] += entry.length
                continue
            packs.copies[entry.node_id].append((pack_id, entry.offset, entry.length, entry.size))
            if raw[:1] and raw[0] in _MAYBE_INTERIOR:
                packs.interior_bytes[entry.node_id] = raw
        for entry in contents.manifests:
            try:
                raw = manifest_bytes(data, entry, pack_id=pack_id.hex())
                manifest = decode_manifest(raw, manifest_id=entry.node_id.hex())
            except StatebagError as exc:
                packs.problems.append(str(exc))
                continue
            packs.manifests.setdefault(entry.node_id, (raw, manifest))
    return packs


def _choose_copies(packs: _Packs) -> dict[bytes, tuple[bytes, int, int, int]]:
    """One copy of each node (the first, in pack id order, then offset); the frames of the
    others are dead bytes of their packs."""
    chosen = {}
    for node_id, copies in packs.copies.items():
        first, *others = sorted(copies)
        chosen[node_id] = first
        for pack_id, _, length, _ in others:
            packs.dead[pack_id] += length
    return chosen


def _walk_versions(
    packs: _Packs, chosen: dict[bytes, tuple[bytes, int, int, int]], problems: list[str]
) -> tuple[dict[bytes, tuple[bytes, Manifest]], set[bytes], dict[bytes, int]]:
    """The versions whose whole tree is in the packs, the interior nodes found on the way,
    and the references each node has from interior nodes (counted once per listing node,
    by multiplicity) and from those versions' manifests."""
    interior: dict[bytes, list[bytes]] = {}  # interior node -> its children

    def walk(root: bytes) -> bool:
        """Whether the tree of fields under ``root`` is complete in the packs; records the
        interior nodes it reads."""
        stack: list[tuple[bytes, str, int]] = [(root, "fields", 0)]
        seen: set[bytes] = set()
        while stack:
            node_id, kind, level = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            if node_id not in chosen:
                return False
            if kind == "chunk":
                continue
            data = packs.interior_bytes.get(node_id)
            if data is None:
                return False
            try:
                if kind == "index":
                    node_level, entries = dag.parse_index_node(data, node_id=node_id.hex())
                    if node_level != level:
                        return False
                    below = "chunk" if level == 1 else "index"
                    children = [child for child, _ in entries]
                    stack += [(child, below, level - 1) for child in children]
                else:
                    node_level, rows = dag.parse_fields_node(data, node_id=node_id.hex())
                    if node_level:
                        children = [child for _, child, _ in rows]
                        stack += [(child, "fields", 0) for child in children]
                    else:
                        trees = [entry for _, entry in rows if type(entry) is TreeField]
                        children = [entry.root for entry in trees]
                        stack += [
                            (entry.root, "index" if entry.level else "chunk", entry.level)
                            for entry in trees
                        ]
            except IntegrityError:
                return False
            interior[node_id] = children
        return True

    versions: dict[bytes, tuple[bytes, Manifest]] = {}
    for manifest_id, (raw, manifest) in sorted(packs.manifests.items()):
        if walk(manifest.root):
            if _claims_hold(manifest, packs, chosen):
                versions[manifest_id] = (raw, manifest)
            else:
                problems.append(
                    f"version {manifest_id.hex()} of chain {manifest.chain!r} is not restored: "
                    "its manifest's field count or size, or a length its trees claim, is not "
                    "what its nodes hold"
                )
        else:
            problems.append(
                f"version {manifest_id.hex()} of chain {manifest.chain!r} (seq {manifest.seq}) "
                "is not restored: its state is not whole in the packs (it was deleted and "
                "collected, or a pack is missing)"
            )
    # Interior nodes are those a restored version reaches; a walk that failed part-way may
    # have read some that no restored version reaches: they count too (their bytes list
    # their children, and they are indexed as interior, so gc releases them).
    refs: dict[bytes, int] = defaultdict(int)
    for children in interior.values():
        for child in children:
            refs[child] += 1
    for _, manifest in versions.values():
        refs[manifest.root] += 1
    return versions, set(interior), refs


def _claims_hold(
    manifest: Manifest, packs: _Packs, chosen: dict[bytes, tuple[bytes, int, int, int]]
) -> bool:
    """Whether what a manifest claims (fields, logical size) is what its fields table holds,
    and each tree's lengths are what its chunks hold: a rebuild counts nothing in the
    totals that a save would not have checked first."""

    def fetch(ids: Sequence[bytes]) -> dict[bytes, bytes]:
        return {node_id: packs.interior_bytes[node_id] for node_id in ids}

    try:
        entries = list(dag.iter_fields(manifest.root, fetch))
        if len(entries) != manifest.fields:
            return False
        if sum(dag.entry_size(entry) for _, entry in entries) != manifest.size:
            return False
        trees = {name: entry for name, entry in entries if type(entry) is TreeField}
        for chunks in dag.leaves_of_many(trees, fetch).values():
            if any(chosen[chunk][3] != claimed for chunk, claimed in chunks):
                return False
    except (IntegrityError, KeyError):
        return False
    return True


def _heads(versions: dict[bytes, tuple[bytes, Manifest]]) -> dict[str, tuple[bytes, Manifest]]:
    """Each chain's head: its version of the highest seq, the newest ``time_ns`` on a tie
    (then the highest id, so that the rule always picks one)."""
    heads: dict[str, tuple[bytes, Manifest]] = {}
    for manifest_id, (_, manifest) in versions.items():
        current = heads.get(manifest.chain)
        rank = (manifest.seq, manifest.time_ns, manifest_id)
        if current is None or rank > (current[1].seq, current[1].time_ns, current[0]):
            heads[manifest.chain] = (manifest_id, manifest)
    return heads


def _metadata_ops(
    config: Config,
    packs: _Packs,
    chosen: dict[bytes, tuple[bytes, int, int, int]],
    versions: dict[bytes, tuple[bytes, Manifest]],
    interior: set[bytes],
    refs: dict[bytes, int],
    heads: dict[str, tuple[bytes, Manifest]],
    problems: list[str],
) -> Iterator[Op]:
    now = time.time_ns()
    for node_id, (pack_id, offset, length, size) in sorted(chosen.items()):
        flags = FLAG_INTERIOR if node_id in interior else 0
        yield Put(node_key(node_id), IndexRecord(pack_id, offset, length, size, flags).encode())
        count = refs.get(node_id, 0)
        if count:
            yield Add(config.count_keys.key(node_id), count)
        elif config.format >= 2:
            # Reached by no version: garbage, which the sweep collects after the grace period.
            yield Put(zero_key(node_id), encode_le64(now))
    for pack_id, size in sorted(packs.sizes.items()):
        yield Put(pack_record_key(pack_id), PackRecord(size, packs.frames[pack_id]).encode())
        if packs.dead.get(pack_id):
            yield Add(dead_key(pack_id), packs.dead[pack_id])
    for manifest_id, (raw, manifest) in sorted(versions.items()):
        yield Put(manifest_key(manifest_id), raw)
        yield Put(
            version_key(manifest.chain, manifest.seq, manifest_id), encode_le64(manifest.time_ns)
        )
    lost: dict[bytes, Manifest | None] = {}
    for _, manifest in versions.values():
        for parent in manifest.parents:
            if parent not in versions:
                lost[parent] = packs.manifests.get(parent, (b"", None))[1]
    for parent, known in sorted(lost.items(), key=lambda item: item[0]):
        # A parent the packs do not hold whole: pruned, as far as anyone can tell now.
        tomb = (
            Tombstone(known.chain, known.seq, known.time_ns, now)
            if known is not None
            else Tombstone("", 0, 0, now)
        )
        yield Put(tomb_key(parent), encode_record(tomb))
    if lost:
        problems.append(
            f"{len(lost)} parent version(s) are not in the packs and were recorded as deleted"
        )
    for chain, (manifest_id, manifest) in sorted(heads.items()):
        yield Put(
            head_key(chain), encode_record(HeadRecord(manifest_id, manifest.seq, new_txn_id()))
        )
    dead_total = sum(packs.dead.values())
    yield from (
        Add(name, value)
        for name, value in (
            (STAT_CHAINS, len(heads)),
            (STAT_MANIFESTS, len(versions)),
            (STAT_NODES, len(chosen)),
            (STAT_PACKS, len(packs.sizes)),
            (STAT_BYTES_LOGICAL, sum(m.size for _, m in versions.values())),
            (STAT_BYTES_STORED, sum(packs.sizes.values())),
            (STAT_BYTES_DEAD, dead_total),
            (STAT_EPOCH, 1),
        )
        if value
    )
    yield Put(CONFIG, encode_config(config))


def _write(meta: MetaStore, ops: list[Op]) -> None:
    """Write ``ops`` in batches the store takes: the marker alone first, ``config`` (the
    last op) with the marker's removal last, so that a store is a repository only once
    everything else landed."""
    batch = meta.max_batch or _UNCAPPED_BATCH
    meta.write([Put(REBUILDING, encode_le64(time.time_ns()))])
    body, last = ops[:-1], ops[-1:]
    for start in range(0, len(body), batch):
        meta.write(body[start : start + batch])
        crash_point("rebuild.after_batch")
    meta.write([*last, Delete(REBUILDING)])
