"""The catalog: versions and chains as the metadata store records them.

It owns manifests (read, hash-checked and cached), tombstones (is a version deleted, or
lost?), head records, fork counts, holds, and the head moves of forks and resets (one
conditional write each, read back by txn when the answer is lost). It knows nothing of
nodes or packs: a manifest's root is an id it hands on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import msgspec

from . import codec
from .caches import Recent
from .errors import (
    BackendError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StatebagError,
)
from .ids import MIN_PREFIX_LENGTH, ContentId, looks_like_hex, looks_like_id
from .keys import (
    MANIFEST,
    STAT,
    STAT_EPOCH,
    CountKeys,
    HeadRecord,
    chain_of,
    decode_head,
    decode_le64,
    encode_le64,
    encode_record,
    fork_key,
    head_key,
    hold_key,
    id_of,
    manifest_key,
    stat_shard,
    sum_totals,
    tomb_key,
)
from .manifests import Manifest, decode_manifest
from .meta import Add, Check, ConditionFailed, MetaStore, Op, Put
from .prepare import new_txn_id
from .results import ManifestInfo
from .validation import check_chain
from .versions import VersionDeleter

__all__ = ["Catalog", "OtherParent"]

_MANIFEST_CACHE = 4096
_CANDIDATES_SHOWN = 10  # ids an ambiguous prefix's error lists


class OtherParent(msgspec.Struct, frozen=True):
    """A fan-in save's parent after the first: its id and seq, and the commit's check that
    it is still stored when the commit lands."""

    manifest_id: bytes
    seq: int
    guard: Check


class Catalog:
    """Manifests, heads, tombstones and fork counts of one repository; thread-safe."""

    def __init__(self, meta: MetaStore, /, *, counts: CountKeys) -> None:
        self._meta = meta
        self._manifests: Recent[Manifest] = Recent(_MANIFEST_CACHE)
        self._versions = VersionDeleter(meta, forget=self.forget, counts=counts)

    # -- manifests -------------------------------------------------------------------------

    def manifest(self, manifest_id: bytes, /) -> Manifest:
        """The manifest of a version (cached); NotFoundError when it does not exist or was
        deleted, IntegrityError when its stored bytes do not hash to its id."""
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached
        text = manifest_id.hex()
        stored = self._meta.get(manifest_key(manifest_id))
        if stored is None:
            if self.is_deleted(manifest_id):
                raise NotFoundError(f"manifest {text} was deleted (a tombstone remains)")
            raise NotFoundError(f"manifest {text} does not exist")
        if ContentId.of(stored) != manifest_id:
            raise IntegrityError(
                f"manifest {text} is corrupt: its bytes hash to another id", object_id=text
            )
        manifest = decode_manifest(stored, manifest_id=text)
        self.remember(manifest_id, manifest)
        return manifest

    def stored_manifest(self, manifest_id: bytes, /) -> tuple[str, bytes]:
        """The key and stored bytes of a manifest, read now (never from the cache), for a
        write conditional on its still being there; NotFoundError if it is not."""
        key = manifest_key(manifest_id)
        stored = self._meta.get(key)
        if stored is None:
            self.forget(manifest_id)
            if self.is_deleted(manifest_id):
                raise NotFoundError(f"manifest {manifest_id.hex()} was deleted")
            raise NotFoundError(f"manifest {manifest_id.hex()} does not exist")
        return key, stored

    def is_stored(self, manifest_id: bytes, /) -> bool:
        """Whether the version is stored now (read, not cached); forgets it when not."""
        if self._meta.get(manifest_key(manifest_id)) is not None:
            return True
        self.forget(manifest_id)
        return False

    def is_deleted(self, manifest_id: bytes, /) -> bool:
        """Whether a tombstone records the version's deletion (pruned, not lost)."""
        return self._meta.get(tomb_key(manifest_id)) is not None

    def remember(self, manifest_id: bytes, manifest: Manifest, /) -> None:
        self._manifests.put(manifest_id, manifest)

    def forget(self, manifest_id: bytes, /) -> None:
        """Drop a cached manifest (its version was deleted)."""
        self._manifests.discard(manifest_id)

    def clear_cache(self) -> None:
        """Forget every cached manifest (reads then go to the metadata store)."""
        self._manifests.clear()

    def manifest_ids(self) -> list[bytes]:
        """Every stored version's id, in key order."""
        return [id_of(key, MANIFEST) for key, _ in self._meta.scan(MANIFEST)]

    def ancestor(self, chain: str, manifest_id: bytes, /) -> Manifest | None:
        """An ancestor's manifest, or None where it was deleted (a tombstone); a parent link
        to nothing is a broken chain."""
        try:
            return self.manifest(manifest_id)
        except NotFoundError as exc:
            if self.is_deleted(manifest_id):
                return None
            raise IntegrityError(
                f"chain {chain!r} is broken: version {manifest_id.hex()} is neither "
                "present nor deleted",
                object_id=manifest_id.hex(),
            ) from exc

    def info(self, manifest_id: bytes, manifest: Manifest, /) -> ManifestInfo:
        return ManifestInfo(
            manifest_id=manifest_id.hex(),
            chain=manifest.chain,
            parent=manifest.parents[0].hex() if manifest.parents else None,
            parents=[p.hex() for p in manifest.parents],
            seq=manifest.seq,
            created_at=datetime.fromtimestamp(manifest.time_ns / 1e9, tz=UTC),
            meta=codec.decode(manifest.meta),
            bytes_logical=manifest.size,
        )

    # -- chains ----------------------------------------------------------------------------

    def head_record(self, chain: str, /) -> tuple[bytes | None, HeadRecord | None]:
        """The head record of ``chain`` as stored (for a write conditional on it) and
        decoded; (None, None) when the chain has no version."""
        stored = self._meta.get(head_key(chain))
        return stored, decode_head(stored) if stored is not None else None

    def head(self, chain: str, /) -> bytes | None:
        _, record = self.head_record(chain)
        return record.head if record is not None else None

    def chains(self, *, prefix: str = "") -> Iterator[str]:
        for key, _ in self._meta.scan(head_key(prefix)):
            yield chain_of(key)

    def log(self, chain: str, head: bytes, /) -> Iterator[ManifestInfo]:
        """From ``head`` back along first parents, ending at the first version or where
        older versions were deleted."""
        manifest_id: bytes | None = head
        while manifest_id is not None:
            manifest = self.ancestor(chain, manifest_id)
            if manifest is None:
                return  # the older versions were deleted: the history was pruned here
            yield self.info(manifest_id, manifest)
            manifest_id = manifest.parents[0] if manifest.parents else None

    def version(self, chain_or_id: str, /, *, field: str) -> bytes:
        """A manifest id given as itself or as a chain name (its head): chain names never
        look like ids, so the two cannot be confused."""
        if not isinstance(chain_or_id, str):
            raise InvalidInputError(
                f"{field} must be a manifest id or a chain name, not {chain_or_id!r}", path=field
            )
        if looks_like_id(chain_or_id):
            return bytes.fromhex(chain_or_id)
        head = self.head(check_chain(chain_or_id, field=field))
        if head is None:
            raise NotFoundError(f"chain {chain_or_id!r} has no version")
        return head

    def ids_starting(self, prefix: str, /, *, limit: int) -> list[bytes]:
        """Up to ``limit`` stored versions whose id starts with ``prefix`` (lowercase hex),
        in id order: one scan of the manifest keys."""
        return [id_of(key, MANIFEST) for key, _ in self._meta.scan(MANIFEST + prefix, limit=limit)]

    def resolve(self, ref: str, /, *, field: str) -> bytes:
        """A version named by its id, by a chain name (its head) or by a unique prefix of
        at least MIN_PREFIX_LENGTH hex characters of its id. A chain of that name wins over
        a prefix (a longer prefix or the full id still names the version); an ambiguous or
        too short prefix is an InvalidInputError naming ``field``."""
        if not isinstance(ref, str):
            raise InvalidInputError(
                f"{field} must be a manifest id, an id prefix or a chain name, not {ref!r}",
                path=field,
            )
        if looks_like_id(ref):
            return bytes.fromhex(ref)
        head = self.head(check_chain(ref, field=field))
        if head is not None:
            return head
        if not looks_like_hex(ref):
            raise NotFoundError(f"chain {ref!r} has no version")
        if len(ref) < MIN_PREFIX_LENGTH:
            raise InvalidInputError(
                f"{field} {ref!r} is no chain with a version, and too short for a version id "
                f"prefix: give at least {MIN_PREFIX_LENGTH} hex characters of the id",
                path=field,
            )
        found = self.ids_starting(ref, limit=_CANDIDATES_SHOWN + 1)
        if not found:
            raise NotFoundError(f"no chain is named {ref!r} and no version id starts with it")
        if len(found) > 1:
            shown = ", ".join(f.hex() for f in found[:_CANDIDATES_SHOWN])
            more = " and more" if len(found) > _CANDIDATES_SHOWN else ""
            raise InvalidInputError(
                f"{field} {ref!r} is ambiguous: it starts the ids of {shown}{more}; "
                "give more characters",
                path=field,
            )
        return found[0]

    def other_parents(self, merged: Iterable[str] | None, /) -> list[OtherParent]:
        """The ``merged`` parents of a fan-in save, each read once now."""
        if merged is None:
            return []
        if isinstance(merged, (str, bytes)) or not isinstance(merged, Iterable):
            raise InvalidInputError(
                f"merged must be an iterable of manifest ids, not {merged!r}", path="merged"
            )
        found: list[OtherParent] = []
        for position, text in enumerate(merged):
            manifest_id = bytes(ContentId.parse(text, field=f"merged[{position}]"))
            if any(manifest_id == other.manifest_id for other in found):
                raise InvalidInputError(
                    f"merged names {manifest_id.hex()} twice", path=f"merged[{position}]"
                )
            key, stored = self.stored_manifest(manifest_id)
            seq = decode_manifest(stored, manifest_id=manifest_id.hex()).seq
            found.append(OtherParent(manifest_id, seq, Check(key, stored)))
        return found

    # -- head moves ------------------------------------------------------------------------

    def leave_head(self, chain: str, head_id: bytes, head_manifest: Manifest, /) -> list[Op]:
        """The ops that move ``chain``'s head away from ``head_id``: a version of another
        chain heads a forked chain, and counts it in ``fork/<id>`` meanwhile."""
        if head_manifest.chain == chain:
            return []
        return [Add(fork_key(head_id), -1)]

    def move_head(
        self,
        chain: str,
        to: bytes,
        manifest: Manifest,
        stored: tuple[str, bytes],
        /,
        *,
        expect: bytes | None,
        also: list[Op],
    ) -> None:
        """Point ``chain``'s head at version ``to`` in one write, without a new version (a
        fork or a reset): conditional on the version still stored as read and on the head
        record being ``expect``, stamped with a fresh txn id, counting in ``fork/<to>`` a
        head on another chain's version. ConditionFailed when a condition fails; a write
        whose answer is lost reads the head back by its txn."""
        txn = new_txn_id()
        ops: list[Op] = [
            Check(*stored),
            Put(head_key(chain), encode_record(HeadRecord(to, manifest.seq, txn)), expect=expect),
            Add(stat_shard(STAT_EPOCH, chain), 1),
            *also,
        ]
        if manifest.chain != chain:
            ops.append(Add(fork_key(to), 1))
        try:
            self._meta.write(ops)
        except StatebagError:
            raise
        except Exception as exc:
            _, now = self.head_record(chain)
            if now is None or now.txn != txn:
                raise BackendError(
                    f"moving the head of chain {chain!r} failed: {exc}", retryable=True
                ) from exc

    # -- deleting and pinning --------------------------------------------------------------

    def delete(self, manifest_id: bytes, /) -> bool:
        """Delete a version, leaving a tombstone (see :class:`VersionDeleter`); False when it
        was deleted already."""
        return self._versions.delete(manifest_id)

    def delete_chain(self, chain: str, /) -> int:
        return self._versions.delete_chain(chain)

    def pin(self, manifest_id: bytes, /, *, pinned: bool) -> None:
        self._versions.pin(manifest_id, pinned=pinned)

    # -- holds and totals ------------------------------------------------------------------

    def hold(self, manifest_id: bytes, /, *, until_ns: int) -> None:
        """Keep a version from retention until ``until_ns``; holds only extend.
        NotFoundError when the version does not exist."""
        key = hold_key(manifest_id)
        while True:
            manifest = self._meta.get(manifest_key(manifest_id))
            if manifest is None:
                raise NotFoundError(f"manifest {manifest_id.hex()} does not exist")
            stored = self._meta.get(key)
            if stored is not None and decode_le64(stored) >= until_ns:
                return
            # With the manifest unchanged, so that a delete racing the hold leaves no record.
            try:
                self._meta.write(
                    [
                        Check(manifest_key(manifest_id), manifest),
                        Put(key, encode_le64(until_ns), expect=stored),
                    ]
                )
            except ConditionFailed:
                continue
            return

    def totals(self) -> dict[str, int]:
        """The repository's counters by name (``chains``, ``manifests``, …)."""
        return sum_totals(self._meta.counters(STAT))

    def hold_ops(self, manifest_id: bytes, /, *, seconds: float) -> list[Op]:
        """The op that holds a version being committed for ``seconds`` from now."""
        until = time.time_ns() + int(seconds * 1e9)
        return [Put(hold_key(manifest_id), encode_le64(until))]
