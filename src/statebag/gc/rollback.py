"""Rolling back abandoned saves and draining dead letters.

A pending save whose writer is gone (its lock is free) or, where that cannot be known, whose
lease expired, is replaced by a dead letter naming its packs, in one write conditional on
the entry: a commit deletes the entry in its own write, so exactly one of the two lands, and
the writer is fenced. Then its packs are deleted and the letter removed. A letter left by a
crash or a failed delete (a rollback's, a lost save race's, a retired pack's) is drained
first by the next gc: its packs are deleted again (idempotent), then the letter, on
condition that it is unchanged.
"""

from __future__ import annotations

import contextlib

from .._crash import crash_point
from ..keys import (
    LETTER,
    PENDING,
    STAT_EPOCH,
    decode_letter,
    decode_pending,
    encode_letter,
    letter_key,
    txn_of,
    undo_added,
)
from ..liveness import Liveness
from ..meta import Add, ConditionFailed, Delete, MetaStore, Put
from ..objects import ObjectStore
from ..packs import pack_key
from .packs import PackReclaimer
from .tally import Tally

__all__ = ["Rollback"]


class Rollback:
    """Rolls back the pending saves whose writers are gone and drains dead letters."""

    def __init__(
        self,
        objects: ObjectStore,
        meta: MetaStore,
        /,
        *,
        liveness: Liveness,
        packs: PackReclaimer,
    ) -> None:
        self._objects = objects
        self._meta = meta
        self._liveness = liveness
        self._packs = packs

    def drain_letters(self, tally: Tally) -> None:
        for key, value in list(self._meta.scan(LETTER)):
            left = self._discard(key, value)
            if left is not None:
                with contextlib.suppress(ConditionFailed):
                    self._meta.write([Delete(key, expect=left)])
            tally.dead_letters_processed += 1

    def roll_back(self, tally: Tally, *, now: int) -> None:
        for key, value in list(self._meta.scan(PENDING)):
            txn = txn_of(key)
            record = decode_pending(value)
            with self._liveness.claim(txn) as gone:
                if gone is False or (gone is None and record.lease_until_ns > now):
                    tally.deferred += 1
                    continue
                letter = letter_key(txn)
                try:
                    self._meta.write(
                        [
                            Delete(key, expect=value),
                            Put(letter, encode_letter(record.packs)),
                            Add(STAT_EPOCH, 1),
                            # What the save added to the totals before its commit.
                            *(Add(counter, delta) for counter, delta in undo_added(record)),
                        ]
                    )
                except ConditionFailed:
                    continue  # it committed, or was rolled back, meanwhile
                crash_point("gc.after_rollback_record")
                left = self._discard(letter, encode_letter(record.packs))
                if left is not None:
                    with contextlib.suppress(ConditionFailed):
                        self._meta.write([Delete(letter, expect=left)])

    def _discard(self, letter: str, value: bytes) -> bytes | None:
        """Delete the packs of dead letter ``letter`` (as ``value``) that no committed write
        indexed; return the letter as it is then (None once gone). A save whose references
        went in several batches (any handle on a capped store may have written them) may
        have indexed nodes into its packs before it failed: such a pack is kept (recorded,
        its other frames dead) for the sweep and compaction to handle, and taken out of the
        letter in the same write (see :meth:`PackReclaimer.keep_indexed`)."""
        current: bytes | None = value
        for pack_id in decode_letter(value):
            if current is None:
                return None  # another collector finished the letter
            if pack_id not in decode_letter(current):
                continue
            settled = self._packs.keep_indexed(pack_id, letter=letter, value=current)
            if settled.delete:
                self._objects.delete(pack_key(pack_id))
            current = settled.letter
        return current
