"""Golden tests: the cut points and chunk digests of fixed grids, each folded into one constant.

Why this constant must never change: chunk boundaries decide which bytes become which
node, and so which nodes an existing repository can reuse. A change to the gear table, the
masks, the minimum skip, the normalization or the two-byte stepping would silently cut every
new save differently from everything already stored, and deduplication against existing
repositories would be lost without any error. Any optimisation must keep this test green
on both twins. If the format ever has to change, that is a new repository format version
with a new constant, never an edit of this one.

``GOLDEN`` freezes format 1 (normalization level 2, which format-1 repositories always use).
``GOLDEN_FORMAT2`` freezes what format 2 added: the normalization level as a parameter, with
the defaults a new repository records (``statebag.config.Config``) and every other level.
"""

from __future__ import annotations

from typing import Any

from blake3 import blake3

from statebag.config import Config

from .datagen import json_like_bytes, random_bytes

SIZES = [0, 1, 63, 64, 4095, 4096, 4097, 16384, 65535, 65536, 65537, 300_001, 1 << 20, 8 << 20]
PARAMETER_SETS = [
    {"min_size": 4096, "avg_size": 16384, "max_size": 65536, "seed": 0},
    {"min_size": 512, "avg_size": 2048, "max_size": 8192, "seed": 1},
    {"min_size": 16384, "avg_size": 65536, "max_size": 262144, "seed": 0},
]
DATA_KINDS = {"random": random_bytes, "json": json_like_bytes}

GOLDEN = "d453e1cf1dc2b7d419c548b369b5dbbe90dc17d385604b60b012e716fd4b20e5"

FORMAT2_DEFAULTS = {"min_size": 4096, "avg_size": 16384, "max_size": 65536, "seed": 0}
FORMAT2_PARAMETER_SETS = [
    {**FORMAT2_DEFAULTS, "normalization": 1},
    {**FORMAT2_DEFAULTS, "normalization": 0},
    {"min_size": 512, "avg_size": 2048, "max_size": 8192, "seed": 1, "normalization": 3},
    {"min_size": 2048, "avg_size": 8192, "max_size": 65536, "seed": 0, "normalization": 1},
]
# Up to 1 MiB: the pure-Python twin folds this grid too, at about 1 MB/s.
FORMAT2_SIZES = [0, 1, 2048, 2049, 4097, 16384, 65537, 300_001, 1 << 20]
GOLDEN_FORMAT2 = "cfa9f7312e4c37ce7cd5059a2bf1b9f6e319d7867f23eb32736e5c1c51cd44ab"


def fold_grid(
    chunker_cls: Any,
    parameter_sets: list[dict[str, int]] = PARAMETER_SETS,
    sizes: list[int] = SIZES,
) -> str:
    folded = blake3()
    for params in parameter_sets:
        # Format 1's sets name no level: its chunkers are built at level 2 explicitly (not by
        # relying on the default), and its fold stays what it always was.
        chunker = chunker_cls(**{"normalization": 2, **params})
        for kind, make in DATA_KINDS.items():
            for size in sizes:
                data = make(size, seed=size)
                offsets, digests = chunker.cut_and_hash(data, threads=2)
                assert offsets == chunker.cut(data)
                folded.update(repr((sorted(params.items()), kind, size)).encode())
                folded.update(repr(offsets).encode())
                folded.update(b"".join(digests))
    return folded.hexdigest()


def test_golden_cut_points_and_digests(chunker_cls: Any) -> None:
    assert fold_grid(chunker_cls) == GOLDEN


def test_format1_grid_is_level_2_and_differs_at_other_levels(chunker_cls: Any) -> None:
    # The fold above would not notice a level the chunker ignored; this does.
    data = random_bytes(1 << 20, seed=11)
    cuts = {level: chunker_cls(normalization=level).cut(data) for level in range(4)}
    assert chunker_cls().cut(data) == cuts[2]
    assert len({tuple(offsets) for offsets in cuts.values()}) == 4


def test_golden_format2_cut_points_and_digests(chunker_cls: Any) -> None:
    assert fold_grid(chunker_cls, FORMAT2_PARAMETER_SETS, FORMAT2_SIZES) == GOLDEN_FORMAT2


def test_format2_grid_holds_the_defaults_of_a_new_repository() -> None:
    config = Config()
    assert config.format == 2
    assert FORMAT2_PARAMETER_SETS[0] == {
        "min_size": config.min_size,
        "avg_size": config.avg_size,
        "max_size": config.max_size,
        "seed": config.seed,
        "normalization": config.normalization,
    }
