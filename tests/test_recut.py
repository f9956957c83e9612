"""Incremental re-cutting: ``recut`` must give exactly what a whole ``cut_and_hash`` gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statebag import _cdc_py, chunking
from statebag.errors import InvalidInputError

from .conftest import CHUNKER_TWINS
from .datagen import json_like_bytes, random_bytes

# Small chunks, so that a few tens of KB make dozens of them and every edit position matters.
PARAMS = {"min_size": 64, "avg_size": 256, "max_size": 1024}

PREFIX_TWINS = [_cdc_py.common_prefix]
if CHUNKER_TWINS["cython"] is not None:
    from statebag import _cdc

    PREFIX_TWINS.append(_cdc.common_prefix)


@pytest.mark.parametrize("common_prefix", PREFIX_TWINS)
@given(
    shared=st.binary(max_size=20_000),
    a=st.binary(max_size=50),
    b=st.binary(max_size=50),
)
def test_common_prefix_finds_the_first_difference(
    common_prefix: Any, shared: bytes, a: bytes, b: bytes
) -> None:
    left, right = shared + a, shared + b
    expected = len(shared)
    while expected < min(len(left), len(right)) and left[expected] == right[expected]:
        expected += 1
    assert common_prefix(left, right) == expected
    assert common_prefix(right, memoryview(left)) == expected


@pytest.mark.parametrize("common_prefix", PREFIX_TWINS)
def test_common_prefix_on_long_equal_and_empty_buffers(common_prefix: Any) -> None:
    data = random_bytes(100_000, seed=9)
    assert common_prefix(data, data) == len(data)
    assert common_prefix(data, data[:-1]) == len(data) - 1
    assert common_prefix(b"", data) == 0
    edited = bytearray(data)
    edited[50_000] ^= 0xFF
    assert common_prefix(data, edited) == 50_000
    assert common_prefix(edited, data) == 50_000


EDIT_KINDS = ["append", "insert", "delete", "replace", "truncate", "same", "prepend"]


def _edit(data: bytes, kind: str, position: int, payload: bytes) -> bytes:
    position = min(position, len(data))
    if kind == "append":
        return data + payload
    if kind == "insert":
        return data[:position] + payload + data[position:]
    if kind == "delete":
        return data[:position] + data[position + len(payload) :]
    if kind == "replace":
        return data[:position] + payload + data[position + len(payload) :]
    if kind == "truncate":
        return data[:position]
    if kind == "prepend":
        return payload + data
    return data


@settings(max_examples=150)
@given(
    structured=st.booleans(),
    size=st.integers(min_value=0, max_value=30_000),
    seed=st.integers(min_value=0, max_value=50),
    kind=st.sampled_from(EDIT_KINDS),
    position=st.integers(min_value=0, max_value=30_000),
    payload=st.binary(min_size=1, max_size=3_000),
)
def test_recut_equals_a_whole_cut_after_any_edit(
    chunker_cls: Any,
    structured: bool,
    size: int,
    seed: int,
    kind: str,
    position: int,
    payload: bytes,
) -> None:
    chunker = chunker_cls(**PARAMS)
    old = (json_like_bytes if structured else random_bytes)(size, seed=seed)
    new = _edit(old, kind, position, payload)
    old_offsets, old_digests = chunker.cut_and_hash(old)
    offsets, digests, kept = chunking.recut(chunker, old, old_offsets, old_digests, new)
    assert (offsets, digests) == chunker.cut_and_hash(new)
    assert 0 <= kept <= len(old_offsets)
    assert offsets[:kept] == old_offsets[:kept]


def test_an_append_keeps_every_chunk_but_the_last(chunker_cls: Any) -> None:
    chunker = chunker_cls(**PARAMS)
    old = json_like_bytes(40_000, seed=3)
    old_offsets, old_digests = chunker.cut_and_hash(old)
    new = old + json_like_bytes(500, seed=4)
    offsets, digests, kept = chunking.recut(chunker, old, old_offsets, old_digests, new)
    assert kept == len(old_offsets) - 1 > 50
    assert (offsets, digests) == chunker.cut_and_hash(new)


def test_an_edit_in_the_middle_keeps_the_chunks_before_it(chunker_cls: Any) -> None:
    chunker = chunker_cls(**PARAMS)
    old = random_bytes(40_000, seed=5)
    old_offsets, old_digests = chunker.cut_and_hash(old)
    new = old[:20_000] + b"edit" + old[20_004:]
    _, _, kept = chunking.recut(chunker, old, old_offsets, old_digests, new)
    assert old_offsets[kept - 1] <= 20_000 < old_offsets[kept]


@pytest.mark.parametrize(
    ("offsets", "digests"),
    [([10], []), ([5], [b"\x00" * 32]), ([], [b"\x00" * 32])],
)
def test_a_cut_that_does_not_cover_old_is_refused(offsets: list[int], digests: list[bytes]) -> None:
    with pytest.raises(InvalidInputError) as info:
        chunking.recut(chunking.Chunker(), b"0123456789", offsets, digests, b"0123456789x")
    assert info.value.path == "old_offsets"


def test_a_chunk_whose_last_byte_changed_is_cut_again(chunker_cls: Any) -> None:
    chunker = chunker_cls(**PARAMS)
    old = random_bytes(20_000, seed=6)
    old_offsets, old_digests = chunker.cut_and_hash(old)
    for end in old_offsets[3:8]:
        new = bytearray(old)
        new[end - 1] ^= 0xFF  # the common prefix ends one byte before this chunk does
        offsets, digests, kept = chunking.recut(chunker, old, old_offsets, old_digests, new)
        assert old_offsets[kept - 1] < end
        assert (offsets, digests) == chunker.cut_and_hash(new)
