"""Which versions gc deletes: those no head reaches, then those the retention rules drop.

Unreached versions: only the writes that can leave a version reached from no head (reset,
delete_chain) bump ``stat/discards``; the pass runs when it moved since the last complete
pass (``gc/discards``) or versions seen unreached wait (``orphan/<id>`` = first seen so).
Manifests are listed before the heads are read: a version saved in between is not a
candidate, and one listed is reached from the heads unless it really is not. A version seen
unreached for the grace period is deleted, unless pinned or held.

Retention then ranks, per chain, only the versions some head reaches; each of its deletes is
conditional on ``stat/discards`` still holding the value the reachability pass read, so a
reset or chain deletion landing meanwhile stops retention for the run
(:class:`~statebag.versions.ReachabilityChanged`) rather than let it rank versions no
longer reached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

from .._crash import crash_point
from ..errors import ConflictError, NotFoundError
from ..keys import (
    DISCARDS_SEEN,
    HEAD,
    MANIFEST,
    ORPHAN,
    STAT_DISCARDS,
    chain_of,
    decode_head,
    decode_le64,
    encode_le64,
    head_key,
    hold_key,
    id_of,
    manifest_key,
    orphan_key,
    pin_key,
    version_of,
    version_prefix,
)
from ..manifests import decode_manifest
from ..meta import Check, ConditionFailed, Delete, MetaStore, Put
from ..versions import VersionDeleter
from .tally import Tally

__all__ = ["Retention", "select_for_deletion"]


def select_for_deletion(
    versions: Sequence[tuple[int, bytes, int]],
    /,
    *,
    keep: set[bytes],
    keep_last: int | None,
    keep_within_ns: int | None,
    keep_daily: int | None,
    now_ns: int,
) -> list[bytes]:
    """Retention for one chain: of ``versions`` (seq, manifest id, time_ns), those no rule
    keeps. ``keep`` holds the ids kept whatever the rules say (head, pinned, held). With no
    rule given nothing is selected. ``keep_daily`` keeps the newest version of each of the
    last N UTC days that have one (days without a version do not count)."""
    if keep_last is None and keep_within_ns is None and keep_daily is None:
        return []
    newest_first = sorted(versions, key=lambda v: (v[0], v[2]), reverse=True)
    kept = set(keep)
    if keep_last:
        kept.update(mid for _, mid, _ in newest_first[:keep_last])
    if keep_within_ns is not None:
        kept.update(mid for _, mid, t in newest_first if t >= now_ns - keep_within_ns)
    if keep_daily:
        days: set[object] = set()
        for _, mid, t in newest_first:
            day = datetime.fromtimestamp(t / 1e9, tz=UTC).date()
            if day not in days:
                if len(days) == keep_daily:
                    break
                days.add(day)
                kept.add(mid)
    return [mid for _, mid, _ in newest_first if mid not in kept]


class Retention:
    """The unreached-versions pass and the retention rules, deleting through ``versions``."""

    def __init__(self, meta: MetaStore, versions: VersionDeleter, /) -> None:
        self._meta = meta
        self._versions = versions

    def discard_unreachable(
        self, tally: Tally, *, now: int, grace: float
    ) -> tuple[int, set[bytes]]:
        """Delete the versions no head reaches (through all parents) once they have been
        seen so for ``grace``: those a ``reset`` left behind, or that only a deleted chain
        reached. Pinned and held versions stay. Returns ``stat/discards`` as read first and
        the versions found unreachable, which retention then leaves alone."""
        discards = self._meta.counter(STAT_DISCARDS)
        seen = self._meta.get(DISCARDS_SEEN)
        marks = dict(self._meta.scan(ORPHAN))
        if not marks and (0 if seen is None else decode_le64(seen)) == discards:
            return discards, set()
        listed = {id_of(k, MANIFEST): v for k, v in self._meta.scan(MANIFEST)}
        manifests = {mid: decode_manifest(v, manifest_id=mid.hex()) for mid, v in listed.items()}
        frontier = [decode_head(v).head for _, v in self._meta.scan(HEAD)]
        reached: set[bytes] = set()
        while frontier:
            manifest_id = frontier.pop()
            if manifest_id in reached:
                continue
            reached.add(manifest_id)
            manifest = manifests.get(manifest_id)
            if manifest is None:  # saved after the listing, or deleted
                stored = self._meta.get(manifest_key(manifest_id))
                if stored is None:
                    continue
                manifest = decode_manifest(stored, manifest_id=manifest_id.hex())
            frontier.extend(manifest.parents)
        unreachable = {mid for mid in manifests if mid not in reached}
        ids = list(unreachable)
        pins = self._meta.get_many([pin_key(mid) for mid in ids])
        holds = self._meta.get_many([hold_key(mid) for mid in ids])
        cutoff = now - int(grace * 1e9)
        for manifest_id in sorted(unreachable, key=lambda m: -manifests[m].seq):
            # Marked even when pinned or held, so that the pass runs again until it is gone.
            mark = marks.get(orphan_key(manifest_id))
            if mark is None:
                with contextlib.suppress(ConditionFailed):
                    self._meta.write(
                        [
                            Check(manifest_key(manifest_id), listed[manifest_id]),
                            Put(orphan_key(manifest_id), encode_le64(now), expect=None),
                        ]
                    )
                since = now
            else:
                since = decode_le64(mark)
            if pin_key(manifest_id) in pins:
                continue
            until = holds.get(hold_key(manifest_id))
            if until is not None and decode_le64(until) > now:
                tally.deferred += 1
                continue
            if since > cutoff:
                tally.deferred += 1
                continue
            try:
                tally.manifests_deleted += self._versions.delete(manifest_id)
            except (ConflictError, NotFoundError):
                continue  # forked from, or pinned, or deleted meanwhile
            crash_point("gc.after_delete_manifest")
        for key, value in marks.items():
            if id_of(key, ORPHAN) not in unreachable:
                with contextlib.suppress(ConditionFailed):
                    self._meta.write([Delete(key, expect=value)])  # reached again (a fork)
        self._meta.put(DISCARDS_SEEN, encode_le64(discards))
        return discards, unreachable

    def retain(
        self,
        tally: Tally,
        *,
        keep_last: int | None,
        keep_within_ns: int | None,
        keep_daily: int | None,
        chains: list[str] | None,
        now: int,
        discards: int,
        unreachable: set[bytes],
    ) -> None:
        """Retention over the versions a head reaches; the others wait for their grace
        period (:meth:`discard_unreachable`) whatever the rules say. Raises
        ReachabilityChanged when a reset or chain deletion lands meanwhile."""
        if keep_last is None and keep_within_ns is None and keep_daily is None:
            return
        names = chains if chains is not None else [chain_of(k) for k, _ in self._meta.scan(HEAD)]
        for chain in names:
            head_bytes = self._meta.get(head_key(chain))
            if head_bytes is None:
                continue
            head = decode_head(head_bytes).head
            versions: list[tuple[int, bytes, int]] = []
            for key, value in self._meta.scan(version_prefix(chain)):
                seq, manifest_id = version_of(key)
                if manifest_id not in unreachable:
                    versions.append((seq, manifest_id, decode_le64(value)))
            pins = self._meta.get_many([pin_key(mid) for _, mid, _ in versions])
            holds = self._meta.get_many([hold_key(mid) for _, mid, _ in versions])
            keep = {head}
            for _, mid, _ in versions:
                if pin_key(mid) in pins:
                    keep.add(mid)
                until = holds.get(hold_key(mid))
                if until is not None and decode_le64(until) > now:
                    keep.add(mid)
                    tally.deferred += 1
            doomed = select_for_deletion(
                versions,
                keep=keep,
                keep_last=keep_last,
                keep_within_ns=keep_within_ns,
                keep_daily=keep_daily,
                now_ns=now,
            )
            for mid in doomed:
                try:
                    tally.manifests_deleted += self._versions.delete(mid, discards=discards)
                except (ConflictError, NotFoundError):
                    continue  # became a head, was pinned or deleted meanwhile
                crash_point("gc.after_delete_manifest")
