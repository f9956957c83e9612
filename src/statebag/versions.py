"""Deleting and pinning versions.

Deleting a version is one write: remove the manifest (never a chain's head, a forked
chain's head nor a pinned one), leave a tombstone, decrement its root and, if the root's
count reaches zero, put ``zero/<root>`` = the time, for the sweep. The write is conditional
on the head record of the version's chain, so it is exclusive with a save on the chain, and
on the root's count as read, so no concurrent delete or save is lost.

Part of the catalog (:class:`~statebag.catalog.Catalog` deletes and pins through it), and
used by gc's retention too; it needs only the metadata store, the manifest cache's
``forget`` and the key schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container

from ._crash import crash_point
from .errors import ConflictError, IntegrityError, NotFoundError
from .keys import (
    STAT_BYTES_LOGICAL,
    STAT_CHAINS,
    STAT_DISCARDS,
    STAT_EPOCH,
    STAT_MANIFESTS,
    VERSION,
    CountKeys,
    Tombstone,
    decode_head,
    encode_le64,
    encode_record,
    fork_key,
    head_key,
    hold_key,
    id_of,
    manifest_key,
    orphan_key,
    pin_key,
    tomb_key,
    version_key,
    version_prefix,
    zero_key,
)
from .manifests import decode_manifest
from .meta import Add, Check, CheckCounter, ConditionFailed, Delete, MetaStore, Op, Put
from .records import Records

__all__ = ["ReachabilityChanged", "VersionDeleter", "accounted_for"]

_ATTEMPTS = 16


class ReachabilityChanged(Exception):
    """A reset or chain deletion landed since the reachability pass: retention stops for
    this run rather than rank versions that may no longer be reached."""


def accounted_for(
    manifest_id: bytes, /, *, live: Container[bytes], tombstoned: Container[bytes]
) -> bool:
    """Whether a version is known: its manifest is stored, or a tombstone says it was
    deleted. A parent that is neither is lost (the chain is broken there); an id that is
    neither never existed."""
    return manifest_id in live or manifest_id in tombstoned


class _StoredTombstones:
    """The tombstones as the metadata store holds them now, one read per question."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta

    def __contains__(self, manifest_id: object, /) -> bool:
        return isinstance(manifest_id, bytes) and self._meta.get(tomb_key(manifest_id)) is not None


class VersionDeleter:
    """Deletes versions (one, or a whole chain) and pins them. ``forget`` drops a deleted
    version from the repository's caches."""

    def __init__(
        self, meta: MetaStore, /, *, forget: Callable[[bytes], None], counts: CountKeys
    ) -> None:
        self._meta = meta
        self._forget = forget
        self._counts = counts

    def delete(
        self, manifest_id: bytes, /, *, force_pinned: bool = False, discards: int | None = None
    ) -> bool:
        """Delete one version. False if it was already deleted (a tombstone exists);
        NotFoundError if it never existed; ConflictError for a head (of its chain or of a
        chain forked from it) or a pinned version. With ``discards``, the delete is also
        conditional on ``stat/discards`` still holding it (ReachabilityChanged otherwise):
        retention ranks only versions some head reaches, as seen by the reachability pass."""
        text = manifest_id.hex()
        key = manifest_key(manifest_id)
        for _ in range(_ATTEMPTS):
            stored = self._meta.get(key)
            if stored is None:
                # Just read as not stored: only a tombstone can still account for it.
                if accounted_for(manifest_id, live=(), tombstoned=_StoredTombstones(self._meta)):
                    return False
                raise NotFoundError(f"manifest {text} does not exist")
            manifest = decode_manifest(stored, manifest_id=text)
            head_bytes = self._meta.get(head_key(manifest.chain))
            if head_bytes is not None and decode_head(head_bytes).head == manifest_id:
                raise ConflictError(
                    f"manifest {text} is the head of chain {manifest.chain!r}: save a newer "
                    "version first, or delete the whole chain with delete_chain"
                )
            forks = self._meta.counter(fork_key(manifest_id))
            if forks > 0:
                raise ConflictError(
                    f"manifest {text} is the head of {forks} chain(s) forked from it: save on "
                    "or delete those first"
                )
            pinned = self._meta.get(pin_key(manifest_id))
            if pinned is not None and not force_pinned:
                raise ConflictError(f"manifest {text} is pinned; unpin it first")
            root_key = self._counts.key(manifest.root)
            count = self._meta.counter(root_key)
            if count < 1:
                # The reads above are not one snapshot: a delete of this very version may
                # have landed between them. Only a manifest still there with a count below
                # 1, both seen by one write's conditions, is an under-count.
                try:
                    self._meta.write([Check(key, stored), CheckCounter(root_key, count)])
                except ConditionFailed:
                    continue
                raise IntegrityError(
                    f"the root {manifest.root.hex()} of manifest {text} has count {count}, "
                    "below its references; run audit(repair=True) before deleting",
                    object_id=manifest.root.hex(),
                )
            now = time.time_ns()
            ops: list[Op] = [
                Check(key, stored),
                Check(head_key(manifest.chain), head_bytes),
                Check(pin_key(manifest_id), pinned),
                CheckCounter(root_key, count),
                CheckCounter(fork_key(manifest_id), 0),
                Delete(key),
                Delete(pin_key(manifest_id)),
                Delete(hold_key(manifest_id)),
                Delete(orphan_key(manifest_id)),
                Delete(version_key(manifest.chain, manifest.seq, manifest_id)),
                Put(
                    tomb_key(manifest_id),
                    encode_record(Tombstone(manifest.chain, manifest.seq, manifest.time_ns, now)),
                ),
                Add(root_key, -1),
                Add(STAT_MANIFESTS, -1),
                Add(STAT_BYTES_LOGICAL, -manifest.size),
                Add(STAT_EPOCH, 1),
            ]
            if count == 1:
                ops.append(Put(zero_key(manifest.root), encode_le64(now)))
            if discards is not None:
                ops.append(CheckCounter(STAT_DISCARDS, discards))
            try:
                self._meta.write(ops)
            except ConditionFailed:
                if discards is not None and self._meta.counter(STAT_DISCARDS) != discards:
                    raise ReachabilityChanged() from None
                continue
            self._forget(manifest_id)
            return True
        raise ConflictError(f"manifest {text} kept changing while being deleted; retry")

    def delete_chain(self, chain: str, /) -> int:
        """Remove ``chain``'s head, then every version of it, then the records beside it;
        the number of versions deleted. The head goes first, so that a save in flight on the
        chain fails its head condition."""
        head_bytes = self._meta.get(head_key(chain))
        while head_bytes is not None:
            head = decode_head(head_bytes).head
            stored = self._meta.get(manifest_key(head))
            ops: list[Op] = [
                Delete(head_key(chain), expect=head_bytes),
                Add(STAT_CHAINS, -1),
                Add(STAT_EPOCH, 1),
                # Versions of other chains this one reached may now be reached by none.
                Add(STAT_DISCARDS, 1),
            ]
            if (
                stored is not None
                and decode_manifest(stored, manifest_id=head.hex()).chain != chain
            ):
                ops.append(Add(fork_key(head), -1))
            try:
                self._meta.write(ops)
                break
            except ConditionFailed:
                head_bytes = self._meta.get(head_key(chain))
        had_head = head_bytes is not None
        crash_point("delete_chain.after_head")
        deleted = 0
        found = False
        for key, _ in list(self._meta.scan(version_prefix(chain))):
            found = True
            try:
                deleted += self.delete(id_of(key, VERSION), force_pinned=True)
            except ConflictError:
                # A new chain of the same name was started meanwhile: its head stays.
                continue
        had_records = Records(self._meta).delete(chain) > 0
        if not had_head and not found and not had_records:
            raise NotFoundError(f"chain {chain!r} does not exist")
        return deleted

    def pin(self, manifest_id: bytes, /, *, pinned: bool) -> None:
        """Pin a version (retention and gc keep it), or unpin it. Pinning is conditional on
        the manifest still being stored."""
        text = manifest_id.hex()
        if not pinned:
            self._meta.delete(pin_key(manifest_id))
            return
        stored = self._meta.get(manifest_key(manifest_id))
        if stored is None:
            raise NotFoundError(f"manifest {text} does not exist")
        try:
            self._meta.write(
                [Check(manifest_key(manifest_id), stored), Put(pin_key(manifest_id), b"")]
            )
        except ConditionFailed as exc:
            raise NotFoundError(f"manifest {text} was deleted meanwhile") from exc
