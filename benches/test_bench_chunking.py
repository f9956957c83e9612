"""Chunking, hashing and compression throughput on the ``random`` and ``state`` data sets.

Every benchmark times one call over the whole data set (``benchmark.pedantic``, a few rounds,
one iteration, no warm-up) and asserts on what that call returned. Chunk offsets, reference
digests and the peer objects are prepared outside the timed functions.

Groups:

- ``chunking``: our ``Chunker.cut`` against pyfastcdc's ``cut_buf`` (same min/avg/max and
  normalized chunking level 2; its cut points differ from ours, so only speed is compared),
  and our one-pass ``cut_and_hash`` with one and two threads;
- ``hashing``: the ``blake3`` package over the chunks our chunker finds, one call per chunk,
  and over the whole buffer in one call for reference;
- ``compress``: ``statebag.codec.compress`` of every chunk at zstd levels 1 and 3.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import pytest
from blake3 import blake3
from pyfastcdc.cy import FastCDC

import statebag
from statebag import codec

if TYPE_CHECKING:
    from conftest import Bench, Dataset

MIN_SIZE, AVG_SIZE, MAX_SIZE = 4096, 16384, 65536

# statebag._cdc runs cut_and_hash(threads=2) serially below this size (as in conftest.py).
PARALLEL_MIN_BYTES = 4 * 1024 * 1024


def _avg_chunk(nbytes: int, count: int) -> int:
    return nbytes // count if count else 0


# ---------------------------------------------------------------------------------------------
# chunking
# ---------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="chunking")
def test_ours_cut(bench: Bench, dataset: Dataset) -> None:
    chunker = statebag.Chunker(MIN_SIZE, AVG_SIZE, MAX_SIZE)
    data = dataset.data

    offsets = bench.run(lambda: chunker.cut(data))

    assert offsets[-1] == len(data)
    assert offsets == dataset.offsets
    bench.record(
        "ours_cut",
        len(data),
        chunks=len(offsets),
        avg_chunk=_avg_chunk(len(data), len(offsets)),
    )


@pytest.mark.benchmark(group="chunking")
def test_pyfastcdc_cut(bench: Bench, dataset: Dataset) -> None:
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=2)
    data = dataset.data

    def cut_all() -> int:
        # Consume the iterator at C speed, keeping only the last chunk, so that the peer pays
        # nothing per chunk beyond what its own API costs.
        (last,) = deque(cdc.cut_buf(data), maxlen=1)
        return int(last.offset + last.length)

    end = bench.run(cut_all)
    count = sum(1 for _ in cdc.cut_buf(data))  # untimed, for the sanity check below

    n = len(data)
    assert end == n
    # Every chunk but the last lies within [MIN_SIZE, MAX_SIZE].
    assert -(-n // MAX_SIZE) <= count <= n // MIN_SIZE + 1
    bench.record("pyfastcdc_cut", n, chunks=count, avg_chunk=_avg_chunk(n, count))


def _bench_cut_and_hash(bench: Bench, dataset: Dataset, threads: int, name: str) -> None:
    chunker = statebag.Chunker(MIN_SIZE, AVG_SIZE, MAX_SIZE)
    data = dataset.data

    offsets, digests = bench.run(lambda: chunker.cut_and_hash(data, threads=threads))

    assert offsets == dataset.offsets
    assert len(digests) == len(offsets)
    assert digests == dataset.digests
    bench.record(
        name,
        len(data),
        threads=threads,
        parallel=threads > 1 and len(data) >= PARALLEL_MIN_BYTES,
        chunks=len(offsets),
    )


@pytest.mark.benchmark(group="chunking")
def test_ours_cut_and_hash_t1(bench: Bench, dataset: Dataset) -> None:
    _bench_cut_and_hash(bench, dataset, threads=1, name="ours_cut_and_hash_t1")


@pytest.mark.benchmark(group="chunking")
def test_ours_cut_and_hash_t2(bench: Bench, dataset: Dataset) -> None:
    _bench_cut_and_hash(bench, dataset, threads=2, name="ours_cut_and_hash_t2")


# ---------------------------------------------------------------------------------------------
# hashing
# ---------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="hashing")
def test_blake3_per_chunk(bench: Bench, dataset: Dataset) -> None:
    view = memoryview(dataset.data)
    offsets = dataset.offsets

    def hash_chunks() -> list[bytes]:
        digests = []
        start = 0
        for end in offsets:
            digests.append(blake3(view[start:end]).digest())
            start = end
        return digests

    digests = bench.run(hash_chunks)

    assert len(digests) == len(offsets)
    assert digests == dataset.digests
    bench.record("blake3_per_chunk", len(view), chunks=len(offsets))


@pytest.mark.benchmark(group="hashing")
def test_blake3_whole(bench: Bench, dataset: Dataset) -> None:
    data = dataset.data

    digest = bench.run(lambda: blake3(data).digest())

    assert len(digest) == 32
    # Cross-check with the streaming interface over the reference chunks (untimed).
    hasher = blake3()
    view = memoryview(data)
    start = 0
    for end in dataset.offsets:
        hasher.update(view[start:end])
        start = end
    assert digest == hasher.digest()
    bench.record("blake3_whole", len(data))


# ---------------------------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------------------------


def _bench_compress(bench: Bench, dataset: Dataset, level: int) -> None:
    view = memoryview(dataset.data)
    offsets = dataset.offsets

    def compress_chunks() -> tuple[int, bytes, bytes]:
        # Sum the frame sizes; keep only the first and last frames, to check them afterwards.
        total = 0
        first = last = b""
        start = 0
        for end in offsets:
            last = codec.compress(view[start:end], level=level)
            if not start:
                first = last
            total += len(last)
            start = end
        return total, first, last

    total, first, last = bench.run(compress_chunks)

    n = len(view)
    # A frame is one codec byte plus at most the raw chunk (raw fallback).
    assert len(offsets) < total <= n + len(offsets)
    first_end = offsets[0]
    last_start = offsets[-2] if len(offsets) > 1 else 0
    assert codec.decompress(first, max_size=MAX_SIZE, expected=dataset.digests[0]) == bytes(
        view[:first_end]
    )
    assert codec.decompress(last, max_size=MAX_SIZE, expected=dataset.digests[-1]) == bytes(
        view[last_start:]
    )
    bench.record(
        f"zstd_level{level}",
        n,
        level=level,
        compressed_bytes=total,
        compressed_ratio=round(total / n, 4),
    )


@pytest.mark.benchmark(group="compress")
def test_zstd_level1(bench: Bench, dataset: Dataset) -> None:
    _bench_compress(bench, dataset, level=1)


@pytest.mark.benchmark(group="compress")
def test_zstd_level3(bench: Bench, dataset: Dataset) -> None:
    _bench_compress(bench, dataset, level=3)
