"""Requests of a save: counted exactly per save, and no metadata item shared between chains."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest

import statebag
from statebag.meta.counting import CountingMetaStore
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore
from statebag.testing import run_threads


def _open(*, max_batch: int | None, record_keys: bool = False) -> tuple[Any, CountingMetaStore]:
    meta = CountingMetaStore(MemoryMetaStore(max_batch=max_batch), record_keys=record_keys)
    repo = statebag.open(objects=MemoryObjectStore(), meta=meta, create=True, inline_max=64)
    return repo, meta


def _agent_state(rng: random.Random, chain: int, step: int) -> dict[str, Any]:
    return {
        "chain": chain,
        "step": step,
        "notes": [f"chain {chain} step {i} " * 4 for i in range(step + 1)],
        "blob": rng.randbytes(20_000),
    }


@pytest.mark.parametrize("max_batch", [None, 25])
def test_requests_of_concurrent_saves_add_up_to_what_the_stores_saw(
    max_batch: int | None,
) -> None:
    repo, meta = _open(max_batch=max_batch)
    with repo:
        meta_before, objects_before = meta.snapshot(), repo.io_counters()

        def saver(chain: int) -> list[dict[str, int]]:
            rng = random.Random(chain)
            return [
                repo.save(f"c{chain}", _agent_state(rng, chain, step)).requests for step in range(6)
            ]

        spent: Counter[str] = Counter()
        for requests in run_threads(4, saver):
            for one in requests:
                spent.update(one)
        seen_meta = meta.snapshot() - meta_before
        seen_objects = repo.io_counters() - objects_before
        # Every request counted once, for the save that made it, whatever ran beside it.
        assert spent["meta_reads"] == seen_meta.reads
        assert spent["meta_writes"] == seen_meta.writes
        assert spent["object_puts"] == seen_objects.puts
        assert spent["object_gets"] == seen_objects.gets
        assert spent["object_deletes"] == seen_objects.deletes
        assert spent["object_puts"] >= 4 * 6  # every step's blob is new


def test_a_save_with_nothing_new_makes_no_object_request() -> None:
    repo, _ = _open(max_batch=25)
    with repo:
        state = {"a": 1, "blob": os.urandom(100_000)}
        first = repo.save("c", state)
        assert first.requests["object_puts"] == 1
        again = repo.save("c", state)
        assert sum(v for k, v in again.requests.items() if k.startswith("object_")) == 0
        assert again.requests["meta_writes"] >= 1 and again.requests["meta_reads"] >= 1


def test_saves_on_twenty_chains_write_no_metadata_key_in_common() -> None:
    repo, meta = _open(max_batch=None, record_keys=True)
    with repo:
        meta.written_keys(clear=True)  # the configuration, written once at creation
        written: dict[str, set[str]] = {}
        for chain in range(20):
            rng = random.Random(1000 + chain)
            repo.save(f"chain-{chain}", _agent_state(rng, chain, 2))
            written[f"chain-{chain}"] = meta.written_keys(clear=True)
        owners: dict[str, list[str]] = {}
        for chain, keys in written.items():
            assert keys, f"{chain} wrote nothing"
            for key in keys:
                owners.setdefault(key, []).append(chain)
        shared = {key: chains for key, chains in owners.items() if len(chains) > 1}
        assert shared == {}, f"keys written by more than one chain: {shared}"
        # The totals are still right: sharded counters summed on read.
        assert repo.stats().chains == 20 and repo.stats().manifests == 20
