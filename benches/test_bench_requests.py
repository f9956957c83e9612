"""Requests per save (group ``requests``): meta reads, meta writes and object requests of a
one-field change in a 10,000-field state, a 1% change of a 50 MB state and a save with
nothing new, on SQLite and on a metadata store of ``max_batch`` 100, on a warm and a cold
handle (see requests_per_save.py, which also measures older versions). The figures are
counts, not times: they are in ``benchmark.extra_info``; the README has the table."""

from __future__ import annotations

from typing import Any

import pytest

from requests_per_save import SAVES, STORES, measure


@pytest.mark.benchmark(group="requests")
@pytest.mark.parametrize("handle", ["warm", "cold"])
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("save", SAVES)
def test_requests_per_save(benchmark: Any, save: str, store: str, handle: str) -> None:
    got = benchmark.pedantic(
        lambda: measure(save, store, cold=handle == "cold"), rounds=1, iterations=1
    )
    benchmark.extra_info.update(got)
    if save == "nothing_new" and handle == "warm":
        assert got["object_requests"] == 0
    assert got["meta_writes"] >= 1 and got["meta_reads"] >= 1
