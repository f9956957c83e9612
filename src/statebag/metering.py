"""What one operation cost in requests, measured where the requests are made.

The repository wraps its stores in counting wrappers (:mod:`statebag.objects.counting`,
:mod:`statebag.meta.counting`); each request they count is also added to every
:class:`Tally` open in the context of the thread that made it. A save opens one for its
duration, so its ``CommitResult.requests`` is exact however many saves run at once on
other threads. Work handed to the repository's pool carries its caller's context
(:class:`ContextPool`), so uploads and reads made on pool threads count for the operation
that asked for them.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["REQUEST_KINDS", "ContextPool", "Tally", "note", "tally"]

REQUEST_KINDS = (
    "object_puts",
    "object_gets",
    "object_deletes",
    "object_stats",
    "object_lists",
    "meta_reads",
    "meta_writes",
    "meta_items",
)
"""The kinds of request a tally counts (the keys of ``CommitResult.requests``).

``meta_items`` is not a request but what the metadata writes carried: the items of every
write (:func:`statebag.meta.base.batch_items`: its distinct keys, conditions included, a
key's value and counter being one item), as a transactional store such as DynamoDB counts
the items of a transaction."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Tally:
    """Requests by kind (:data:`REQUEST_KINDS`); safe to add to from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REQUEST_KINDS, 0)

    def add(self, kind: str, times: int = 1) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + times

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# Every tally open in this context, innermost last: a request counts for each of them.
_open: contextvars.ContextVar[tuple[Tally, ...]] = contextvars.ContextVar(
    "statebag_tallies", default=()
)


@contextlib.contextmanager
def tally() -> Iterator[Tally]:
    """Count the requests made in this context (and in pool work it submits) until exit."""
    spent = Tally()
    token = _open.set((*_open.get(), spent))
    try:
        yield spent
    finally:
        _open.reset(token)


def note(kind: str, times: int = 1) -> None:
    """Add a request of ``kind`` to every tally open in this context (none: nothing)."""
    for spent in _open.get():
        spent.add(kind, times)


class ContextPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of their submitter's context."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        context = contextvars.copy_context()
        call: Callable[..., Any] = context.run
        return super().submit(call, fn, *args, **kwargs)
