"""A metadata store held in dicts, for tests and ``memory://`` repositories.

It is the reference behaviour of the metadata store interface: one lock serialises every
call, so a batch is trivially atomic. ``max_batch`` may be set to rehearse a backend with a
batch limit (DynamoDB transactions take at most 100 operations) without that backend.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from ..errors import ConfigError
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

__all__ = ["MemoryMetaStore"]

_V = TypeVar("_V")


class MemoryMetaStore(MetaStore):
    """Values and counters in process memory; lost when the store is garbage collected."""

    def __init__(self, *, max_batch: int | None = None) -> None:
        if max_batch is not None and (
            not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1
        ):
            raise ConfigError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._kv: dict[str, bytes] = {}
        self._counters: dict[str, int] = {}
        # Sorted key lists for scans, rebuilt lazily after keys are added or removed: value
        # updates (the common write) keep them valid.
        self._kv_order: list[str] | None = []
        self._counter_order: list[str] | None = []

    def __repr__(self) -> str:
        return (
            f"MemoryMetaStore(<{len(self._kv)} values, {len(self._counters)} counters>, "
            f"max_batch={self.max_batch})"
        )

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        key = check_meta_key(key)
        with self._lock:
            return self._kv.get(key)

    def get_many(self, keys: Iterable[str], /) -> dict[str, bytes]:
        wanted = check_keys(keys)
        with self._lock:
            kv = self._kv
            return {key: kv[key] for key in wanted if key in kv}

    def scan(
        self, prefix: str, /, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, bytes]]:
        prefix, start_after, limit = check_scan_args(prefix, start_after, limit)
        with self._lock:
            if self._kv_order is None:
                self._kv_order = sorted(self._kv)
            keys = _range(self._kv_order, prefix, start_after, limit)
            items = [(key, self._kv[key]) for key in keys]
        return iter(items)

    def counter(self, key: str, /) -> int:
        key = check_meta_key(key)
        with self._lock:
            return self._counters.get(key, 0)

    def counters(self, prefix: str, /) -> Iterator[tuple[str, int]]:
        prefix = check_meta_key(prefix, path="prefix", allow_empty=True)
        with self._lock:
            if self._counter_order is None:
                self._counter_order = sorted(self._counters)
            keys = _range(self._counter_order, prefix, None, None)
            items = [(key, self._counters[key]) for key in keys]
        return iter(items)

    # -- writes ----------------------------------------------------------------------------

    def write(self, ops: Sequence[Op], /, *, durable: bool = True) -> None:
        # Nothing here survives the process anyway: durable changes nothing.
        plan = plan_batch(ops, max_batch=self.max_batch)
        if plan.empty:
            return
        with self._lock:
            self._apply(plan)

    def add(self, key: str, delta: int, /) -> int:
        key = check_meta_key(key)
        plan = plan_batch([Add(key, delta)], max_batch=None)
        with self._lock:
            value = self._apply(plan)[key]
        assert value is not None  # an Add never drops its counter
        return value

    def _apply(self, plan: BatchPlan) -> dict[str, int | None]:
        # Decide everything before changing anything: a failed condition or an overflowing
        # counter must leave the store untouched.
        kv = self._kv
        counters = self._counters
        stored = {key: counters[key] for key in plan.counter_reads() if key in counters}
        failure = plan.failure({key: kv[key] for key in plan.checks if key in kv}, stored)
        if failure is not None:
            raise failure
        results = plan.counter_results(stored)
        if _update(kv, plan.writes):
            self._kv_order = None
        if _update(counters, results):
            self._counter_order = None
        return results


def _update(target: dict[str, _V], changes: dict[str, _V | None]) -> bool:
    """Apply ``changes`` (None: remove); True if the set of keys changed."""
    reshaped = False
    for key, value in changes.items():
        if value is None:
            if target.pop(key, None) is not None:
                reshaped = True
        else:
            if key not in target:
                reshaped = True
            target[key] = value
    return reshaped


def _range(order: list[str], prefix: str, start_after: str | None, limit: int | None) -> list[str]:
    if start_after is not None and start_after >= prefix:
        lo = bisect_right(order, start_after)
    else:
        lo = bisect_left(order, prefix)
    out: list[str] = []
    for i in range(lo, len(order)):
        if limit is not None and len(out) >= limit:
            break
        key = order[i]
        if not key.startswith(prefix):
            break
        out.append(key)
    return out
