"""Named crash points: the test-only fault-injection hook.

A test arms one point through :mod:`statebag.testing` (``arm_crash_point`` in a process it
started, or ``run_until_crash``, which starts one); when the process reaches that point it
ends at once (``os._exit``: no ``finally``, no flush, no lock release but the kernel's), as
a power cut or a kill would end it there. Nothing here reads the environment: normal use
cannot arm a point, and an unarmed point is one comparison with None.
"""

from __future__ import annotations

import os

__all__ = ["CRASH_EXIT_CODE", "CRASH_POINTS", "arm", "crash_point"]

CRASH_EXIT_CODE = 86

CRASH_POINTS = (
    # save (commit.py)
    "save.after_pending",  # the pending entry is recorded, no pack uploaded
    "save.after_upload",  # a pack is uploaded, nothing referenced
    "save.after_commit",  # the commit transaction landed, the writer's lock is still held
    "save.after_abandon_record",  # a lost race: dead letter written, packs not yet deleted
    "save.after_reference_batch",  # capped stores: some index entries and counts landed
    # gc (gc/)
    "gc.after_rollback_record",  # a pending entry replaced by a dead letter, packs remain
    "gc.after_delete_manifest",  # one manifest deleted by retention, nothing swept
    "gc.after_sweep",  # one sweep transaction landed (index rows gone), packs untouched
    "gc.after_sweep_slice",  # a slice of a wide node's sweep landed, more of its children remain
    "gc.after_pack_record",  # a dead pack's record replaced by a dead letter, object remains
    "gc.after_pack_delete",  # the dead pack's object deleted, its dead letter remains
    "gc.after_compact_upload",  # the compacted pack uploaded, the index not yet moved
    "gc.after_compact_index",  # the index moved to the new pack, the old one remains
    "gc.after_repack_upload",  # a repack's new pack uploaded, the index not yet moved
    "gc.after_repack_index",  # the index moved into the repack's pack, the small ones remain
    # rebuild (rebuild.py)
    "rebuild.after_batch",  # one batch of the rebuilt metadata landed, no config yet
    # delete_chain (versions.py)
    "delete_chain.after_head",  # the chain's head removed, its versions not yet deleted
)

_armed: str | None = None


def arm(name: str | None, /) -> None:
    """End this process at crash point ``name`` (None: at none). The caller has checked
    that ``name`` is one of :data:`CRASH_POINTS`."""
    global _armed
    _armed = name


def crash_point(name: str, /) -> None:
    """End the process here if a test armed this point."""
    if name == _armed:
        os._exit(CRASH_EXIT_CODE)
