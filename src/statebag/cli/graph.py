"""The lane graph that ``log --graph`` draws."""

from __future__ import annotations

from collections.abc import Sequence

from ..ids import SHORT_LENGTH
from ..results import ManifestInfo
from .shared import format_created_at


def graph_text(infos: Sequence[ManifestInfo], *, cut: bool = False) -> list[str]:
    """``log --graph``: the graph of :func:`graph_rows` with each version's short id, chain,
    seq and time (UTC) beside its row."""
    drawn = graph_rows(infos, cut=cut)
    width = max(len(graph) for graph, _ in drawn) if drawn else 0
    chains = max((len(info.chain) for info in infos), default=0)
    seqs = max((len(str(info.seq)) for info in infos), default=0)
    lines = []
    for graph, info in drawn:
        if info is None:
            lines.append(graph)
            continue
        lines.append(
            f"{graph:<{width}}  {info.manifest_id[:SHORT_LENGTH]}  {info.chain:<{chains}}  "
            f"seq {info.seq:>{seqs}}  {format_created_at(info)}"
        )
    return lines


def graph_rows(
    infos: Sequence[ManifestInfo], *, cut: bool = False
) -> list[tuple[str, ManifestInfo | None]]:
    """Lanes for versions listed newest first, each before its parents: one row per version
    (``*`` in its lane, ``|`` in every other open lane) paired with it, and connecting rows
    paired with None.

    A lane waits for one version. A version takes the leftmost lane waiting for it; the other
    lanes waiting for it join that one first, on a line such as ``|/`` or ``|/_/`` (``_``
    runs along the bottom to the lane they join). Its first parent then continues its lane,
    and each further parent opens a lane in the first free slot to its right, on a line such
    as ``|\\`` or ``|\\ \\`` (``-`` where the way crosses to a lane further on). Lanes keep
    their slot: a lane that ends leaves a gap, which a later lane may reuse.

    A parent not listed (deleted: the history was pruned there) ends its lane, or opens
    none. With ``cut``, the list is the newest part of a longer history (``--limit``):
    every parent gets its lane, and the lanes of those below the cut run off the bottom, so
    the lines are the first lines of the whole history's graph.
    """
    listed = {info.manifest_id for info in infos}
    lanes: list[str | None] = []  # the version each lane waits for; None: a free slot
    lines: list[tuple[str, ManifestInfo | None]] = []

    def free_slot(start: int) -> int:
        for slot in range(start, len(lanes)):
            if lanes[slot] is None:
                return slot
        lanes.append(None)
        return len(lanes) - 1

    def draw(cells: list[str]) -> str:
        return "".join(cells).rstrip()

    def lane_cells(skip: Sequence[int] = ()) -> list[str]:
        cells = [" "] * (2 * len(lanes))
        for slot, waiting in enumerate(lanes):
            if waiting is not None and slot not in skip:
                cells[2 * slot] = "|"
        return cells

    for info in infos:
        waiting = [slot for slot, want in enumerate(lanes) if want == info.manifest_id]
        col = waiting[0] if waiting else free_slot(0)
        lanes[col] = info.manifest_id
        joining = waiting[1:]
        if joining:
            cells = lane_cells(skip=joining)
            for slot in joining:
                cells[2 * slot - 1] = "/"
            for at in range(2 * col + 1, 2 * joining[-1] - 1):
                if cells[at] == " ":
                    cells[at] = "_"
            lines.append((draw(cells), None))
            for slot in joining:
                lanes[slot] = None
        cells = lane_cells()
        cells[2 * col] = "*"
        lines.append((draw(cells), info))

        parents = [p if cut or p in listed else None for p in info.parents] or [None]
        lanes[col] = parents[0]
        opened = []
        for parent in parents[1:]:
            if parent is None:
                continue
            slot = free_slot(col + 1)
            lanes[slot] = parent
            opened.append(slot)
        if opened:
            cells = lane_cells(skip=opened)
            anchor = col
            for slot in opened:
                cells[2 * slot - 1] = "\\"
                for at in range(2 * anchor + 1, 2 * slot - 1):
                    if cells[at] == " ":
                        cells[at] = "-"
                anchor = slot
            lines.append((draw(cells), None))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return lines
