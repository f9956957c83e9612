"""What one gc run counts as it goes, reported as a :class:`~statebag.results.GCReport`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..results import GCReport

__all__ = ["Tally"]


@dataclass
class Tally:
    """A GCReport being counted (the same fields): every part of a run adds to one."""

    manifests_deleted: int = 0
    nodes_freed: int = 0
    packs_deleted: int = 0
    packs_compacted: int = 0
    bytes_reclaimed: int = 0
    deferred: int = 0
    dead_letters_processed: int = 0
    nodes_repacked: int = 0
    bytes_repacked: int = 0

    def report(self) -> GCReport:
        return GCReport(**dataclasses.asdict(self))
