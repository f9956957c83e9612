"""Telling lost metadata from an empty repository, so that nothing deletes data the
metadata no longer knows about.

Manifests live in the metadata store only (format 1), so a repository whose metadata was
deleted, emptied or swapped for an empty one still holds every pack, but no record names
them: to the audit they are orphans, and a repair would delete the only copy of the data.
The metadata *looks lost* when the object store holds packs that no save in flight or dead
letter accounts for while the metadata has no configuration, or no version and no tombstone
at all. A real repository never looks so: its first pack is named by a pending entry until
the commit that writes its first version, and deleted versions leave tombstones. Then the
audit reports it as a danger and repairs nothing, gc refuses to run, and opening refuses to
create a repository over the packs.
"""

from __future__ import annotations

from ..keys import CONFIG, LETTER, MANIFEST, PENDING, TOMB, decode_letter, decode_pending
from ..meta import MetaStore
from ..objects import ObjectStore
from ..packs import PACKS_PREFIX, pack_id_of

__all__ = ["lost_metadata"]


def lost_metadata(meta: MetaStore, objects: ObjectStore, /) -> str | None:
    """Why the metadata looks lost (a sentence), or None when it does not.

    Costs three small reads on a repository with versions; the object store is listed only
    when the metadata has no configuration or no version and no tombstone.
    """
    has_config = meta.get(CONFIG) is not None
    if has_config and (_any(meta, MANIFEST) or _any(meta, TOMB)):
        return None
    owned = {p for _, v in meta.scan(PENDING) for p in decode_pending(v).packs}
    owned.update(p for _, v in meta.scan(LETTER) for p in decode_letter(v))
    packs = 0
    for key in objects.list(PACKS_PREFIX):
        pack_id = pack_id_of(key)
        if pack_id is not None and pack_id not in owned:
            packs += 1
    if not packs:
        return None
    missing = "no configuration" if not has_config else "no version and no tombstone"
    return (
        f"the metadata has {missing}, but the object store holds {packs} pack(s) that no "
        f"save in flight accounts for: the metadata looks lost or emptied"
    )


def _any(meta: MetaStore, prefix: str) -> bool:
    return next(iter(meta.scan(prefix, limit=1)), None) is not None
