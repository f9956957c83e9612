"""Verification: every version reaches only present, intact nodes, whose sizes add up.

Every structural node (fields and index nodes) is read back from its pack, never from the
cache, and hash-checked; of the chunks, each is checked to be indexed in a pack that is
present and long enough, and a ``read_data`` fraction of them (chosen by id, so repeated
runs with the same fraction read the same ones) is read back and re-hashed.

Every size is checked as a load checks it before allocating by it: each index record is
within what a node of its kind can hold, each tree's index nodes list lengths that add up
to its entry's length and each chunk's claimed length is its record's size, and the
manifest's field count and logical size are those of its fields table. Inline values are
scanned as a load scans them before decoding (well-formed, nested within the limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import codec, dag
from .catalog import Catalog
from .dag import InlineField, TreeField
from .errors import IntegrityError, NotFoundError
from .keys import IndexRecord, node_key
from .meta import MetaStore
from .objects import ObjectStore
from .packs import pack_key
from .reader import NodeReader, check_record
from .results import VerifyReport

__all__ = ["Verifier"]

# Chunks sampled for reading are read back in groups of this many.
_READ_GROUP = 256


@dataclass
class _Run:
    """What one verification has checked so far (shared by the versions it verifies)."""

    threshold: int  # chunks whose first 8 bytes (le64) are below this are read back
    structs: set[bytes] = field(default_factory=set)
    chunks: dict[bytes, int] = field(default_factory=dict)  # checked chunks, their sizes
    pack_sizes: dict[bytes, int] = field(default_factory=dict)  # -1: missing
    chunks_read: int = 0


class Verifier:
    """Checks versions against the index and the packs."""

    def __init__(
        self, catalog: Catalog, reader: NodeReader, objects: ObjectStore, meta: MetaStore, /
    ) -> None:
        self._catalog = catalog
        self._reader = reader
        self._objects = objects
        self._meta = meta

    def verify(self, manifest_id: bytes | None, /, *, read_data: float) -> VerifyReport:
        """Verify one version, or every stored one (``manifest_id=None``)."""
        every = manifest_id is None
        targets = self._catalog.manifest_ids() if manifest_id is None else [manifest_id]
        run = _Run(threshold=math.floor(read_data * (1 << 64)))
        problems: list[str] = []
        for target in targets:
            found = self._verify_version(target, run)
            # Verifying every version while gc runs: one deleted meanwhile is not a problem.
            if found and every and not self._catalog.is_stored(target):
                continue
            problems.extend(found)
        return VerifyReport(
            ok=not problems,
            problems=problems,
            manifests=len(targets),
            nodes_checked=len(run.structs) + len(run.chunks),
            nodes_read=run.chunks_read + len(run.structs),
        )

    def _verify_version(self, target: bytes, run: _Run) -> list[str]:
        """The problems of one version."""
        try:
            manifest = self._catalog.manifest(target)
        except (NotFoundError, IntegrityError) as exc:
            return [str(exc)]  # the message names the manifest
        try:
            self._verify_fields(manifest.root, run)
            table = self._reader.fields_table(manifest.root)
        except IntegrityError as exc:
            return [f"manifest {target.hex()}: fields table: {exc}"]
        problems: list[str] = []
        if manifest.fields != len(table.entries):
            problems.append(
                f"manifest {target.hex()} says {manifest.fields} fields, its fields table "
                f"holds {len(table.entries)}"
            )
        logical = 0
        for name, entry in table.entries.items():
            if type(entry) is InlineField:
                logical += dag.entry_size(entry)
                try:
                    # Cheap for values this short: what a load would refuse before decoding.
                    codec.nesting_depth(entry.encoded, what="its inline value")
                except IntegrityError as exc:
                    problems.append(f"manifest {target.hex()}: field {name!r}: {exc}")
                continue
            assert type(entry) is TreeField
            try:
                leaves = dag.leaves_of(
                    entry, lambda ids: self._reread(ids, run, self._reader.limits.index_node)
                )
                sample: list[bytes] = []
                for node_id, claimed in leaves:
                    if node_id not in run.chunks:
                        run.chunks[node_id] = self._check_indexed(node_id, run)
                        if int.from_bytes(node_id[:8], "little") < run.threshold:
                            sample.append(node_id)
                    if run.chunks[node_id] != claimed:
                        raise IntegrityError(
                            f"chunk {node_id.hex()} holds {run.chunks[node_id]} bytes by the "
                            f"index, but its tree says {claimed}",
                            object_id=node_id.hex(),
                        )
                logical += dag.entry_size(entry)
                for start in range(0, len(sample), _READ_GROUP):
                    group = sample[start : start + _READ_GROUP]
                    run.chunks_read += len(
                        self._reader.read(group, limit=self._reader.limits.chunk)
                    )
            except IntegrityError as exc:
                problems.append(f"manifest {target.hex()}: field {name!r}: {exc}")
        if not problems and manifest.size != logical:
            problems.append(
                f"manifest {target.hex()} says {manifest.size} logical bytes, its fields "
                f"hold {logical}"
            )
        return problems

    def _reread(self, ids: Sequence[bytes], run: _Run, limit: int) -> dict[bytes, bytes]:
        """Structural nodes read from their packs the first time this run meets them (not
        from the cache), verified."""
        self._reader.forget_structs([node_id for node_id in ids if node_id not in run.structs])
        found = self._reader.read(ids, cache=True, limit=limit)
        run.structs.update(ids)
        return found

    def _verify_fields(self, root: bytes, run: _Run) -> None:
        frontier = [root]
        while frontier:
            found = self._reread(frontier, run, self._reader.limits.fields_node)
            next_frontier: list[bytes] = []
            for node_id in frontier:
                level, rows = dag.parse_fields_node(found[node_id], node_id=node_id.hex())
                if level:
                    next_frontier.extend(child for _, child, _ in rows)
            frontier = next_frontier

    def _check_indexed(self, node_id: bytes, run: _Run) -> int:
        """The chunk's size by its index record, once the record is checked and its pack is
        found present and long enough."""
        text = node_id.hex()
        stored = self._meta.get(node_key(node_id))
        if stored is None:
            raise IntegrityError(f"chunk {text} is not in the index", object_id=text)
        record = check_record(
            IndexRecord.decode(stored, node_id=text), text, self._reader.limits.chunk
        )
        size = run.pack_sizes.get(record.pack_id)
        if size is None:
            try:
                size = self._objects.stat(pack_key(record.pack_id))
            except NotFoundError:
                size = -1
            run.pack_sizes[record.pack_id] = size
        if size < record.offset + record.length:
            raise IntegrityError(
                f"pack {record.pack_id.hex()} holding chunk {text} is missing or truncated",
                object_id=record.pack_id.hex(),
            )
        return record.size
