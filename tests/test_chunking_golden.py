"""Golden test: the cut points and chunk digests of a fixed grid, folded into one constant.

Why this constant must never change: chunk boundaries decide which bytes become which
node, and so which nodes an existing repository can reuse. A change to the gear table, the
masks, the minimum skip, the normalization or the two-byte stepping would silently cut every
new save differently from everything already stored, and deduplication against existing
repositories would be lost without any error. Any optimisation must keep this test green
on both twins. If the format ever has to change, that is a new repository format version
with a new constant, never an edit of this one.
"""

from __future__ import annotations

from typing import Any

from blake3 import blake3

from .datagen import json_like_bytes, random_bytes

SIZES = [0, 1, 63, 64, 4095, 4096, 4097, 16384, 65535, 65536, 65537, 300_001, 1 << 20, 8 << 20]
PARAMETER_SETS = [
    {"min_size": 4096, "avg_size": 16384, "max_size": 65536, "seed": 0},
    {"min_size": 512, "avg_size": 2048, "max_size": 8192, "seed": 1},
    {"min_size": 16384, "avg_size": 65536, "max_size": 262144, "seed": 0},
]
DATA_KINDS = {"random": random_bytes, "json": json_like_bytes}

GOLDEN = "d453e1cf1dc2b7d419c548b369b5dbbe90dc17d385604b60b012e716fd4b20e5"


def fold_grid(chunker_cls: Any) -> str:
    folded = blake3()
    for params in PARAMETER_SETS:
        chunker = chunker_cls(**params)
        for kind, make in DATA_KINDS.items():
            for size in SIZES:
                data = make(size, seed=size)
                offsets, digests = chunker.cut_and_hash(data, threads=2)
                assert offsets == chunker.cut(data)
                folded.update(repr((sorted(params.items()), kind, size)).encode())
                folded.update(repr(offsets).encode())
                folded.update(b"".join(digests))
    return folded.hexdigest()


def test_golden_cut_points_and_digests(chunker_cls: Any) -> None:
    assert fold_grid(chunker_cls) == GOLDEN
