"""Metadata items and nodes one small save writes (group ``items``), format 1 (the wide nodes
before format 2) against format 2, on a metadata store of ``max_batch`` 100 (as DynamoDB):
an append to a 4.3 MB message history, one field of 10,000 changed, 1 KiB edited inside a
64 MiB bytes value (``statebag.bench.workloads.small_saves``). The figures are counts, in
``benchmark.extra_info``; docs/FORMAT.md ("Formats") has the table."""

from __future__ import annotations

from typing import Any

import pytest

import statebag
from statebag.bench.workloads import SMALL_SAVES, small_saves
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore

_STEPS: dict[str, Any] = {}


def _steps() -> dict[str, Any]:
    if not _STEPS:
        _STEPS.update(small_saves(1))
    return _STEPS


def _measure(save: str, fmt: int) -> dict[str, int]:
    chain, before, after = _steps()[save]
    meta = MemoryMetaStore(max_batch=100)
    with statebag.open(objects=MemoryObjectStore(), meta=meta, create=True, format=fmt) as repo:
        repo.save(chain, before)
        result = repo.save(chain, after)
    return {
        "meta_items": result.requests["meta_items"],
        "meta_writes": result.requests["meta_writes"],
        "nodes_written": result.nodes_written,
    }


@pytest.mark.benchmark(group="items")
@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("save", SMALL_SAVES)
def test_items_per_small_save(benchmark: Any, save: str, fmt: int) -> None:
    got = benchmark.pedantic(lambda: _measure(save, fmt), rounds=1, iterations=1)
    benchmark.extra_info.update(got)
    assert got["meta_items"] >= got["meta_writes"] >= 1 and got["nodes_written"] >= 1
