"""Writing many small independent changes within a store's ``max_batch``.

gc, compaction and audit repair each make changes that are safe one by one: an *item* is a
short list of operations whose own conditions guard its own changes (a count fixed on
condition that it still holds the value read, an index record moved on condition that it is
unchanged). Items are packed into as few writes as ``max_batch`` allows (one write when the
store has no limit); an item whose condition fails is dropped, left for the next run, and
the rest of its write is written again. Every write may carry the same extra operations
(``head``: conditions that guard every item, such as a compaction's pending entry;
``tail``: ``stat/epoch`` + 1, so that an audit reading meanwhile starts over).

Counter additions of the items of one write are summed per key (one ``Add`` each, after
every item's conditions), so many items adding to one counter (``dead/<pack>``) cost one
operation per write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..meta import Add, ConditionFailed, MetaStore, Op

__all__ = ["HeadFailed", "write_items"]

Item = Sequence[Op]


class HeadFailed(Exception):
    """A condition of ``head`` failed: the items of that write were not applied. ``key`` is
    the key of the condition; ``applied`` the indexes of the items applied before."""

    def __init__(self, key: str, applied: list[int]) -> None:
        super().__init__(key)
        self.key = key
        self.applied = applied


def _layout(
    items: Sequence[Item], chosen: Sequence[int], head: Sequence[Op], tail: Sequence[Op]
) -> tuple[list[Op], list[int]]:
    """One write: head, each chosen item's non-Add ops, the items' Adds summed per key, tail.
    Also the position where each chosen item's ops start (and one past the last)."""
    ops: list[Op] = list(head)
    starts: list[int] = []
    sums: dict[str, int] = {}
    for index in chosen:
        starts.append(len(ops))
        for op in items[index]:
            if isinstance(op, Add):
                sums[op.key] = sums.get(op.key, 0) + op.delta
            else:
                ops.append(op)
    starts.append(len(ops))
    ops.extend(Add(key, delta) for key, delta in sums.items() if delta)
    ops.extend(tail)
    return ops, starts


def _size(item: Item, added: set[str]) -> int:
    """Operations ``item`` adds to a write whose Adds already touch ``added``."""
    size = 0
    for op in item:
        if isinstance(op, Add):
            if op.key not in added:
                size += 1
        else:
            size += 1
    return size


def write_items(
    meta: MetaStore,
    items: Sequence[Item],
    /,
    *,
    head: Callable[[], Sequence[Op]] = lambda: (),
    tail: Sequence[Op] = (),
) -> list[int]:
    """Write ``items`` in writes of at most ``meta.max_batch`` operations; the indexes of
    the items applied (an item whose condition failed is not among them).

    ``head()`` is called for each write (so a condition it holds may change between
    writes); a failed head condition raises :class:`HeadFailed`. An item that cannot fit
    in one write beside ``head`` and ``tail`` is a ValueError: the caller slices it.
    """
    limit = meta.max_batch
    applied: list[int] = []
    remaining = list(range(len(items)))
    while remaining:
        fixed = list(head())
        room = None if limit is None else limit - len(fixed) - len(tail)
        chosen: list[int] = []
        added: set[str] = set()
        used = 0
        for index in remaining:
            size = _size(items[index], added)
            if room is not None and used + size > room:
                if not chosen:
                    raise ValueError(
                        f"an item of {len(items[index])} operations does not fit in a write "
                        f"of {limit}"
                    )
                break
            chosen.append(index)
            used += size
            added.update(op.key for op in items[index] if isinstance(op, Add))
        ops, starts = _layout(items, chosen, fixed, tail)
        try:
            meta.write(ops)
        except ConditionFailed as exc:
            if exc.index < len(fixed):
                raise HeadFailed(exc.key, applied) from exc
            # The item holding the failed condition is dropped; the others are tried again.
            failed = next(
                (i for i, start in enumerate(starts[:-1]) if start <= exc.index < starts[i + 1]),
                None,
            )
            if failed is None:
                raise
            remaining.remove(chosen[failed])
            continue
        applied.extend(chosen)
        chosen_set = set(chosen)
        remaining = [index for index in remaining if index not in chosen_set]
    return applied
