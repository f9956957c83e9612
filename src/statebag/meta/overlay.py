"""A metadata store whose writes stay in memory over a base store it never changes.

``gc(dry_run=True)`` runs the very code of a real gc against an overlay (and an object store
that discards writes), so that its report says what a gc would do, cascades included,
without writing anything. Reads see the overlay's changes on top of the base as it is now;
conditions are decided against that view. Conflicts with writers of the base are not
detected: an overlay is for a rehearsal, not for transactions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from .base import (
    Add,
    BatchPlan,
    MetaStore,
    Op,
    check_keys,
    check_meta_key,
    check_scan_args,
    plan_batch,
)

__all__ = ["OverlayMetaStore"]


class OverlayMetaStore(MetaStore):
    """``base`` plus the writes made through this store (``None``: deleted)."""

    def __init__(self, base: MetaStore, /) -> None:
        self._base = base
        self.max_batch = base.max_batch
        self._values: dict[str, bytes | None] = {}
        self._counters: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OverlayMetaStore({self._base!r}, <{len(self._values)} values changed>)"

    def get(self, key: str, /) -> bytes | None:
        key = check_meta_key(key)
        with self._lock:
            if key in self._values:
                return self._values[key]
        return self._base.get(key)

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        wanted = check_keys(keys)
        with self._lock:
            changed = {key: self._values[key] for key in wanted if key in self._values}
        found = self._base.get_many([key for key in wanted if key not in changed])
        found.update({key: value for key, value in changed.items() if value is not None})
        return found

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        prefix, start_after, limit = check_scan_args(prefix, start_after, limit)
        merged = dict(self._base.scan(prefix, start_after=start_after))
        with self._lock:
            for key, value in self._values.items():
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
        items = sorted(merged.items())
        return iter(items if limit is None else items[:limit])

    def counter(self, key: str, /) -> int:
        key = check_meta_key(key)
        with self._lock:
            if key in self._counters:
                return self._counters[key] or 0
        return self._base.counter(key)

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        prefix = check_meta_key(prefix, path="prefix", allow_empty=True)
        merged = dict(self._base.counters(prefix))
        with self._lock:
            for key, value in self._counters.items():
                if key.startswith(prefix):
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
        return iter(sorted(merged.items()))

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        plan = plan_batch(ops, max_batch=self.max_batch)
        if not plan.empty:
            self._apply(plan)

    def add(self, key: str, delta: int, /) -> int:
        key = check_meta_key(key)
        value = self._apply(plan_batch([Add(key, delta)], max_batch=None))[key]
        assert value is not None  # an Add never drops its counter
        return value

    def _apply(self, plan: BatchPlan) -> dict[str, int | None]:
        with self._lock:
            current: dict[str, bytes] = {}
            for key in plan.checks:
                value = self._values[key] if key in self._values else self._base.get(key)
                if value is not None:
                    current[key] = value
            stored: dict[str, int] = {}
            for key in plan.counter_reads():
                if key not in self._counters:
                    stored[key] = self._base.counter(key)
                elif (count := self._counters[key]) is not None:
                    stored[key] = count
            failure = plan.failure(current, stored)
            if failure is not None:
                raise failure
            results = plan.counter_results(stored)
            self._values.update(plan.writes)
            self._counters.update(results)
            return results
