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

import time

from ..errors import NotFoundError
from ..keys import CONFIG, LETTER, MANIFEST, PENDING, TOMB, decode_letter, decode_pending
from ..meta import MetaStore
from ..objects import ObjectStore
from ..packs import PACKS_PREFIX, pack_id_of

__all__ = ["lost_metadata"]


def lost_metadata(meta: MetaStore, objects: ObjectStore, /, *, young_s: float) -> str | None:
    """Why the metadata looks lost (a sentence), or None when it does not.

    With the configuration present, packs modified less than ``young_s`` seconds ago do not
    count: a save rolled back while one of its uploads was in flight leaves a pack that no
    record names, until the audit deletes it as an orphan once the grace period has passed;
    in a repository with no version yet it would look like lost metadata. gc and the audit
    pass the repository's grace: the audit deletes no orphan younger than that either.

    Costs three small reads on a repository with versions; the object store is listed only
    when the metadata has no configuration or no version and no tombstone.
    """
    has_config = meta.get(CONFIG) is not None
    if has_config and (_any(meta, MANIFEST) or _any(meta, TOMB)):
        return None
    owned = {p for _, v in meta.scan(PENDING) for p in decode_pending(v).packs}
    owned.update(p for _, v in meta.scan(LETTER) for p in decode_letter(v))
    packs = 0
    cutoff = time.time_ns() - int(young_s * 1e9)
    for key in objects.list(PACKS_PREFIX):
        pack_id = pack_id_of(key)
        if pack_id is None or pack_id in owned:
            continue
        if has_config and _modified_after(objects, key, cutoff):
            continue
        packs += 1
    if not packs:
        return None
    missing = "no configuration" if not has_config else "no version and no tombstone"
    return (
        f"the metadata has {missing}, but the object store holds {packs} pack(s) that no "
        f"save in flight accounts for: the metadata looks lost or emptied"
    )


def _modified_after(objects: ObjectStore, key: str, cutoff: int) -> bool:
    try:
        return objects.modified_ns(key) > cutoff
    except NotFoundError:
        return True  # deleted meanwhile: not a pack the metadata lost


def _any(meta: MetaStore, prefix: str) -> bool:
    return next(iter(meta.scan(prefix, limit=1)), None) is not None
