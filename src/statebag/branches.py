"""Branches: fork, reset, merge, the merge base and the graph log.

A fork and a reset move a head without writing a version (the catalog's head move); a merge
computes the merged fields against the merge base and hands a plan to the writer, which
commits it like a save with guards on every branch's head. See docs/FORMAT.md, "Branches".
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from . import merging
from .catalog import Catalog
from .dag import Entry
from .errors import ConflictError, IntegrityError, NotFoundError
from .keys import STAT_CHAINS, STAT_DISCARDS, HeadRecord, head_key, stat_shard
from .manifests import Manifest
from .meta import Add, Check, ConditionFailed
from .reader import NodeReader
from .results import CommitResult, ManifestInfo, ResetResult
from .writer import VersionPlan, Writer

__all__ = ["Branches"]

_ATTEMPTS = 16


class Branches:
    """Forks, resets and merges of one repository's chains (arguments already checked)."""

    def __init__(self, catalog: Catalog, reader: NodeReader, writer: Writer, /) -> None:
        self._catalog = catalog
        self._reader = reader
        self._writer = writer

    def fork(self, source: str, new_chain: str, /) -> bytes:
        """Start ``new_chain`` at ``source`` (a chain's head, or a manifest id); the fork
        point's id. ConflictError if ``new_chain`` exists; NotFoundError if ``source`` does
        not."""
        catalog = self._catalog
        for _ in range(_ATTEMPTS):
            point = catalog.version(source, field="source")
            stored = catalog.stored_manifest(point)
            manifest = catalog.manifest(point)
            _, current = catalog.head_record(new_chain)
            if current is not None:
                raise ConflictError(
                    f"chain {new_chain!r} already exists (its head is "
                    f"{current.head.hex()}); fork into a new name"
                )
            try:
                catalog.move_head(
                    new_chain,
                    point,
                    manifest,
                    stored,
                    expect=None,
                    also=[Add(stat_shard(STAT_CHAINS, new_chain), 1)],
                )
            except ConditionFailed:
                continue  # the source was deleted, or the chain created, meanwhile
            return point
        raise ConflictError(f"fork of {source!r} into {new_chain!r} kept racing; retry")

    def reset(self, chain: str, target: bytes, /) -> ResetResult:
        """Move ``chain``'s head back to ``target``, a version on its first-parent history."""
        catalog = self._catalog
        head_bytes, head = catalog.head_record(chain)
        if head_bytes is None or head is None:
            raise NotFoundError(f"chain {chain!r} has no version")
        discarded: list[str] = []
        target_manifest: Manifest | None = None
        head_manifest: Manifest | None = None
        for info in catalog.log(chain, head.head):
            if head_manifest is None:
                head_manifest = catalog.manifest(bytes.fromhex(info.manifest_id))
            if info.manifest_id == target.hex():
                target_manifest = catalog.manifest(target)
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
        key, stored = catalog.stored_manifest(target)
        try:
            catalog.move_head(
                chain,
                target,
                target_manifest,
                (key, stored),
                expect=head_bytes,
                also=[
                    *catalog.leave_head(chain, head.head, head_manifest),
                    Add(STAT_DISCARDS, 1),
                ],
            )
        except ConditionFailed as exc:
            if not catalog.is_stored(target):
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
        branches: list[str],
        /,
        *,
        strategy: str,
        on_conflict: merging.OnConflict,
        meta_raw: msgspec.Raw | None,
        level: int,
    ) -> CommitResult:
        """Merge the heads of ``branches`` into ``target`` (see :meth:`Repository.merge`)."""
        catalog = self._catalog
        records: list[bytes] = []
        heads: list[HeadRecord] = []
        for chain in (target, *branches):
            stored, head = catalog.head_record(chain)
            if stored is None or head is None:
                raise NotFoundError(
                    f"chain {chain!r} has no version"
                    + ("" if chain == target else "; a branch is made by fork")
                )
            records.append(stored)
            heads.append(head)
        try:
            manifests = [catalog.manifest(h.head) for h in heads]
            tables = [self._reader.fields_table(m.root) for m in manifests]
            base_id = self.merge_base([h.head for h in heads])
            base = (
                self._reader.fields_table(catalog.manifest(base_id).root).entries
                if base_id is not None
                else {}
            )
        except (NotFoundError, IntegrityError) as exc:
            for chain, stored in zip((target, *branches), records, strict=True):
                if catalog.head_record(chain)[0] != stored:
                    raise ConflictError(
                        f"chain {chain!r} moved while the merge read it; merge again"
                    ) from exc
            raise
        given, data = self._merge_fields(
            target, base, [t.entries for t in tables], strategy, on_conflict
        )
        return self._writer.write(
            VersionPlan(
                chain=target,
                data=data,
                given=given,
                base=tables[0],
                parents=[h.head for h in heads],
                seq=max(h.seq for h in heads) + 1,
                head_bytes=records[0],
                level=level,
                guards=[
                    Check(head_key(chain), stored)
                    for chain, stored in zip(branches, records[1:], strict=True)
                ],
                extra=catalog.leave_head(target, heads[0].head, manifests[0]),
                meta_raw=meta_raw,
            )
        )

    def merge_base(self, heads: Sequence[bytes], /) -> bytes | None:
        """The newest version every head descends from (itself included), or None.

        Walks back from all heads at once, newest first: a seq is larger than every
        parent's, so when a version comes off the queue all its descendants among the
        ancestors have, and it knows which heads reach it. The first reached by all is a
        common ancestor no other common ancestor descends from."""
        catalog = self._catalog
        everyone = (1 << len(heads)) - 1
        reached: dict[bytes, int] = {}
        queue: list[tuple[int, bytes]] = []
        for position, head in enumerate(heads):
            if head not in reached:
                heapq.heappush(queue, (-catalog.manifest(head).seq, head))
            reached[head] = reached.get(head, 0) | (1 << position)
        while queue:
            _, manifest_id = heapq.heappop(queue)
            mask = reached[manifest_id]
            if mask == everyone:
                return manifest_id
            try:
                manifest = catalog.manifest(manifest_id)
            except NotFoundError:
                continue  # deleted: the history is pruned there
            for parent_id in manifest.parents:
                if parent_id not in reached:
                    try:
                        seq = catalog.manifest(parent_id).seq
                    except NotFoundError:
                        continue
                    reached[parent_id] = 0
                    heapq.heappush(queue, (-seq, parent_id))
                reached[parent_id] |= mask
        return None

    def graph(self, chain: str, head: bytes, /) -> Iterator[ManifestInfo]:
        """Every ancestor of ``head`` through all parents, each once, newest first."""
        catalog = self._catalog
        # Newest first by (seq, time, id): a max-heap, so versions shared by several
        # branches are listed once, after all their descendants.
        first = catalog.manifest(head)
        queue = [(-first.seq, -first.time_ns, head)]
        queued = {head}
        while queue:
            _, _, manifest_id = heapq.heappop(queue)
            manifest = catalog.ancestor(chain, manifest_id)
            if manifest is None:
                continue
            yield catalog.info(manifest_id, manifest)
            for parent_id in manifest.parents:
                if parent_id in queued:
                    continue
                queued.add(parent_id)
                above = catalog.ancestor(chain, parent_id)
                if above is not None:
                    heapq.heappush(queue, (-above.seq, -above.time_ns, parent_id))

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
        loaded = self._reader.materialize({key: entry for entry, key in keys.items()})

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
