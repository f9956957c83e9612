"""Verification: every version reaches only present, intact nodes.

Every structural node (fields and index nodes) is read back from its pack, never from the
cache, and hash-checked; of the chunks, each is checked to be indexed in a pack that is
present and long enough, and a ``read_data`` fraction of them (chosen by id, so repeated
runs with the same fraction read the same ones) is read back and re-hashed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import dag
from .catalog import Catalog
from .dag import TreeField
from .errors import IntegrityError, NotFoundError
from .keys import IndexRecord, node_key
from .meta import MetaStore
from .objects import ObjectStore
from .packs import pack_key
from .reader import NodeReader
from .results import VerifyReport

__all__ = ["Verifier"]

# Chunks sampled for reading are read back in groups of this many.
_READ_GROUP = 256


@dataclass
class _Run:
    """What one verification has checked so far (shared by the versions it verifies)."""

    threshold: int  # chunks whose first 8 bytes (le64) are below this are read back
    structs: set[bytes] = field(default_factory=set)
    chunks: set[bytes] = field(default_factory=set)
    packs_present: dict[bytes, bool] = field(default_factory=dict)
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
        for name, entry in table.entries.items():
            if type(entry) is not TreeField:
                continue
            try:
                leaves = dag.leaves_of(entry.root, entry.level, lambda ids: self._reread(ids, run))
                sample: list[bytes] = []
                for node_id, _ in leaves:
                    if node_id in run.chunks:
                        continue
                    self._check_indexed(node_id, run)
                    run.chunks.add(node_id)
                    if int.from_bytes(node_id[:8], "little") < run.threshold:
                        sample.append(node_id)
                for start in range(0, len(sample), _READ_GROUP):
                    run.chunks_read += len(self._reader.read(sample[start : start + _READ_GROUP]))
            except IntegrityError as exc:
                problems.append(f"manifest {target.hex()}: field {name!r}: {exc}")
        return problems

    def _reread(self, ids: Sequence[bytes], run: _Run) -> dict[bytes, bytes]:
        """Structural nodes read from their packs the first time this run meets them (not
        from the cache), verified."""
        self._reader.forget_structs([node_id for node_id in ids if node_id not in run.structs])
        found = self._reader.read(ids, cache=True)
        run.structs.update(ids)
        return found

    def _verify_fields(self, root: bytes, run: _Run) -> None:
        frontier = [root]
        while frontier:
            found = self._reread(frontier, run)
            next_frontier: list[bytes] = []
            for node_id in frontier:
                level, rows = dag.parse_fields_node(found[node_id], node_id=node_id.hex())
                if level:
                    next_frontier.extend(child for _, child, _ in rows)
            frontier = next_frontier

    def _check_indexed(self, node_id: bytes, run: _Run) -> None:
        text = node_id.hex()
        stored = self._meta.get(node_key(node_id))
        if stored is None:
            raise IntegrityError(f"chunk {text} is not in the index", object_id=text)
        record = IndexRecord.decode(stored, node_id=text)
        present = run.packs_present.get(record.pack_id)
        if present is None:
            try:
                size = self._objects.stat(pack_key(record.pack_id))
                present = size >= record.offset + record.length
            except NotFoundError:
                present = False
            run.packs_present[record.pack_id] = present
        if not present:
            raise IntegrityError(
                f"pack {record.pack_id.hex()} holding chunk {text} is missing or truncated",
                object_id=record.pack_id.hex(),
            )
