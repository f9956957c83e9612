"""Tests for statebag.codec: canonical value encoding and compressed frames."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
import os
import random
import re
import struct
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
import zstandard
from blake3 import blake3
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from statebag import codec
from statebag.codec import (
    CODEC_RAW,
    CODEC_ZSTD,
    DEFAULT_LEVEL,
    compress,
    decode,
    decompress,
    encode,
)
from statebag.errors import IntegrityError, InvalidInputError
from statebag.hashing import hash_bytes as digest

# ---------------------------------------------------------------------------------------------
# Helpers and strategies
# ---------------------------------------------------------------------------------------------


def float_bits(x: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


def bits_float(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def expected_after_round_trip(value: Any) -> Any:
    """What decode(encode(value)) must give: tuples become lists, bytes-likes become bytes."""
    if isinstance(value, dict):
        return {str(k): expected_after_round_trip(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [expected_after_round_trip(v) for v in value]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def assert_identical(actual: Any, expected: Any, path: str = "$") -> None:
    """Exact comparison: same types, floats bit for bit (NaN payloads, -0.0), dicts sorted."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, float):
        assert float_bits(actual) == float_bits(expected), f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, dict):
        assert list(actual) == sorted(actual), f"{path}: keys not in sorted order"
        assert sorted(actual) == sorted(expected), f"{path}: keys differ"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


# Any 64-bit pattern, so NaNs with payloads (quiet and signalling) and subnormals show up.
any_float = st.one_of(
    st.floats(),
    st.integers(min_value=0, max_value=2**64 - 1).map(bits_float),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    any_float,
    st.text(),
    st.binary(),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=10), children, max_size=6),
    )


json_values = st.recursive(scalars, _extend, max_leaves=40)

# Inputs that are accepted but change type on the way (tuple -> list, bytearray -> bytes).
loose_scalars = st.one_of(scalars, st.binary().map(bytearray), st.binary().map(memoryview))
loose_values = st.recursive(
    loose_scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=6),
        st.lists(c, max_size=6).map(tuple),
        st.dictionaries(st.text(max_size=10), c, max_size=6),
    ),
    max_leaves=40,
)


def reinsert_dicts(value: Any, rnd: random.Random) -> Any:
    """The same value with every dict rebuilt in a shuffled insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reinsert_dicts(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [reinsert_dicts(v, rnd) for v in value]
    return value


def invalid(value: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        encode(value)
    assert isinstance(info.value, ValueError)
    return info.value


# ---------------------------------------------------------------------------------------------
# Canonical value encoding
# ---------------------------------------------------------------------------------------------


@given(json_values)
def test_round_trip_is_exact(value: Any) -> None:
    assert_identical(decode(encode(value)), value)


@given(loose_values)
def test_round_trip_of_tuples_and_bytes_likes(value: Any) -> None:
    assert_identical(decode(encode(value)), expected_after_round_trip(value))


@given(json_values)
def test_encoding_is_canonical(value: Any) -> None:
    # Re-encoding the decoded value gives the same bytes.
    data = encode(value)
    assert encode(decode(data)) == data


@given(st.dictionaries(st.text(max_size=10), json_values, min_size=2, max_size=5), st.randoms())
def test_dict_insertion_order_does_not_change_bytes(value: dict[str, Any], rnd: Any) -> None:
    shuffled = reinsert_dicts({"outer": value, **value}, rnd)
    assert encode(shuffled) == encode({"outer": value, **value})
    decoded = decode(encode(shuffled))
    assert list(decoded) == sorted(decoded)
    assert list(decoded["outer"]) == sorted(value)


@given(st.data())
def test_permuted_keys_give_identical_bytes(data: st.DataObject) -> None:
    items = data.draw(
        st.lists(st.tuples(st.text(), scalars), min_size=1, max_size=10, unique_by=lambda t: t[0])
    )
    order = data.draw(st.permutations(items))
    assert encode(dict(items)) == encode(dict(order))


def test_golden_bytes() -> None:
    # Freezes the format: sorted keys, float64, bin for bytes.
    assert encode({"b": 1, "a": 2}) == bytes.fromhex("82a16102a16201")
    assert encode({"f": 1.5}) == bytes.fromhex("81a166cb3ff8000000000000")
    assert encode([None, True, b"x", "y"]) == bytes.fromhex("94c0c3c40178a179")


@given(any_float)
def test_floats_are_always_float64(x: float) -> None:
    assert encode(x) == b"\xcb" + struct.pack(">d", x)


@pytest.mark.parametrize(
    "bits",
    [
        0x7FF8000000000000,  # the usual quiet NaN
        0x7FF8000000000001,  # quiet NaN with payload
        0xFFF8DEADBEEF0001,  # negative quiet NaN with payload
        0x7FF0000000000001,  # signalling NaN
        0x8000000000000000,  # -0.0
        0x7FF0000000000000,  # inf
        0xFFF0000000000000,  # -inf
        0x0000000000000001,  # smallest subnormal
    ],
)
def test_special_floats_are_bit_exact(bits: int) -> None:
    x = bits_float(bits)
    out = decode(encode({"x": [x]}))["x"][0]
    assert type(out) is float
    assert float_bits(out) == bits


def test_types_are_preserved() -> None:
    value = {"i": 1, "b": True, "f": 1.0, "s": "1", "y": b"1", "n": None, "big": 2**64 - 1}
    out = decode(encode(value))
    assert_identical(out, value)
    assert type(out["b"]) is bool
    assert type(out["i"]) is int


def test_ints_at_the_limits() -> None:
    for i in (-(2**63), 2**64 - 1, 2**63, -1, 0):
        assert decode(encode(i)) == i


def test_accepted_subclasses_become_the_base_type() -> None:
    class MyStr(str):
        pass

    class MyInt(int):
        pass

    class MyFloat(float):
        pass

    class MyDict(dict[str, Any]):
        pass

    class MyList(list[Any]):
        pass

    value = MyDict(b=MyList([MyStr("s"), MyInt(3), MyFloat(2.5)]), a=collections.OrderedDict(z=1))
    value[MyStr("c")] = 1
    out = decode(encode(value))
    assert_identical(out, {"a": {"z": 1}, "b": ["s", 3, 2.5], "c": 1})
    assert encode(value) == encode({"c": 1, "a": {"z": 1}, "b": ["s", 3, 2.5]})


def test_shared_references_are_not_cycles() -> None:
    shared = [1, {"x": 2}]
    assert decode(encode({"a": shared, "b": shared, "c": [shared, shared]})) == {
        "a": shared,
        "b": shared,
        "c": [shared, shared],
    }


def test_non_str_key_names_path_and_key() -> None:
    err = invalid({"a": [1, {2: "x"}]})
    assert err.path == "a[1]"
    assert "a[1]" in str(err)
    assert "key 2" in str(err)


def test_set_is_refused_with_path() -> None:
    err = invalid({"a": {"b": {1, 2}}})
    assert err.path == "a.b"
    assert "a.b" in str(err)
    assert "set" in str(err)


def test_nested_path_format() -> None:
    err = invalid({"messages": [{"body": "ok"}] * 3 + [{"body": {1}}]})
    assert err.path == "messages[3].body"
    err = invalid({"odd key": [frozenset()]})
    assert err.path == '["odd key"][0]'


@pytest.mark.parametrize(
    "value",
    [
        object(),
        datetime.datetime(2024, 1, 1),
        datetime.date(2024, 1, 1),
        uuid.UUID(int=1),
        decimal.Decimal("1.5"),
        {1, 2},
        frozenset({1}),
        collections.namedtuple("Pair", "a b")(1, 2),
        msgspec.Struct,
        complex(1, 2),
        range(3),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_types_are_refused_at_root(value: Any) -> None:
    err = invalid(value)
    assert err.path == "$"
    assert "$" in str(err)


def test_enums_dataclasses_and_structs_are_refused() -> None:
    import dataclasses

    class Color(enum.IntEnum):
        RED = 1

    class Name(enum.StrEnum):
        A = "a"

    @dataclasses.dataclass
    class Point:
        x: int

    class Item(msgspec.Struct):
        x: int

    for bad in (Color.RED, Name.A, Point(1), Item(1)):
        err = invalid({"k": [bad]})
        assert err.path == "k[0]"
        assert type(bad).__name__ in str(err)


def test_list_cycle_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    err = invalid({"a": loop})
    assert "cycle" in str(err)
    assert err.path == "a[1]"


def test_dict_cycle_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    err = invalid(loop)
    assert "cycle" in str(err)
    assert err.path == "self"


def test_indirect_cycle_is_refused() -> None:
    a: dict[str, Any] = {}
    b: list[Any] = [a]
    a["b"] = b
    err = invalid({"root": a})
    assert "cycle" in str(err)
    assert err.path == "root.b[0]"


@pytest.mark.parametrize("i", [2**64, -(2**63) - 1, 10**30])
def test_out_of_range_ints_are_refused(i: int) -> None:
    err = invalid({"n": [0, i]})
    assert err.path == "n[1]"
    assert "range" in str(err)


def test_lone_surrogates_are_refused() -> None:
    assert invalid({"s": "\ud800"}).path == "s"
    assert invalid({"\udfff": 1}).path == "$"


def test_bytes_subclass_is_refused() -> None:
    class MyBytes(bytes):
        pass

    assert invalid([MyBytes(b"x")]).path == "[0]"


def test_deep_nesting_gives_invalid_input_not_recursion_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    err = invalid(deep)
    assert "deep" in str(err)


def test_moderate_nesting_is_fine() -> None:
    deep: Any = "leaf"
    for _ in range(200):
        deep = {"d": [deep]}
    out = decode(encode(deep))
    for _ in range(200):
        out = out["d"][0]
    assert out == "leaf"


def test_decode_refuses_malformed_buffers() -> None:
    good = encode({"a": [1, 2, "x"]})
    for bad, says in (
        (b"", "ends inside a value (byte 0)"),
        (good[:-1], "ends inside a value"),
        (good + b"\x00", f"has bytes after its value (byte {len(good)})"),
        (b"\xc1", "type byte the format never writes (byte 0)"),
        (memoryview(good)[:3], "ends inside a value"),
        (b"\x81\x01\x02", "map key that is not a str (byte 1)"),
    ):
        with pytest.raises(IntegrityError, match=re.escape(says)):
            decode(bad)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_encode_parts_of_bytes_are_the_encoding_without_a_copy(size: int) -> None:
    value = os.urandom(size)
    head, body = codec.encode_parts(value)
    assert head + body == encode(value)
    assert body is value
    for other in (bytearray(value), [value], "x" * size):
        assert codec.encode_parts(other) == (encode(other), b"")


def test_decode_refuses_extension_types() -> None:
    with pytest.raises(IntegrityError):
        decode(msgspec.msgpack.encode(msgspec.msgpack.Ext(5, b"x")))


def test_decode_accepts_memoryview() -> None:
    assert decode(memoryview(encode([1, "a"]))) == [1, "a"]


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

LEVELS = [0, 1, DEFAULT_LEVEL, 19]


@given(st.binary(max_size=5000), st.sampled_from(LEVELS))
def test_frame_round_trip(data: bytes, level: int) -> None:
    frame = compress(data, level=level)
    assert frame[0] in (CODEC_RAW, CODEC_ZSTD)
    assert decompress(frame, max_size=len(data), expected=digest(data)) == data
    assert decompress(memoryview(frame), max_size=len(data)) == data


@given(st.text(alphabet="ab ", max_size=3000), st.sampled_from([1, DEFAULT_LEVEL, 19, -3]))
def test_compressible_round_trip(text: str, level: int) -> None:
    data = text.encode()
    frame = compress(memoryview(data), level=level)
    assert decompress(frame, max_size=len(data), expected=digest(data)) == data


def test_compressible_data_uses_zstd() -> None:
    data = b"the same words again and again " * 1000
    frame = compress(data)
    assert frame[0] == CODEC_ZSTD
    assert len(frame) < len(data) // 10
    # Content size in the zstd header, no checksum.
    params = zstandard.get_frame_parameters(frame[1:])
    assert params.content_size == len(data)
    assert not params.has_checksum
    assert decompress(frame, max_size=len(data)) == data


def test_random_data_is_stored_raw() -> None:
    data = os.urandom(10_000)
    frame = compress(data)
    assert frame == bytes([CODEC_RAW]) + data
    assert decompress(frame, max_size=len(data)) == data


def test_level_zero_stores_raw_without_trying(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(level: int) -> None:
        raise AssertionError("compressor used at level 0")

    monkeypatch.setattr(codec, "_compressor", boom)
    data = b"a" * 1000
    assert compress(data, level=0) == b"\x00" + data


def test_empty_input() -> None:
    for level in LEVELS:
        frame = compress(b"", level=level)
        assert decompress(frame, max_size=0, expected=digest(b"")) == b""


def test_expected_is_blake3_of_uncompressed_bytes() -> None:
    data = b"node" * 100
    frame = compress(data)
    assert frame[0] == CODEC_ZSTD
    assert decompress(frame, max_size=len(data), expected=blake3(data).digest()) == data
    with pytest.raises(IntegrityError):
        decompress(frame, max_size=len(data), expected=blake3(frame).digest())


@pytest.mark.parametrize("level", [-8, 23, 100, 1.5, "3", True, None])
def test_invalid_level_is_refused(level: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        compress(b"data", level=level)
    assert info.value.path == "level"
    assert "level" in str(info.value)


@pytest.mark.parametrize("level", [-7, -1, 1, 22])
def test_extreme_valid_levels(level: int) -> None:
    data = b"abc" * 500
    assert decompress(compress(data, level=level), max_size=len(data)) == data


def test_expected_digest_mismatch() -> None:
    data = b"hello " * 100
    wrong = digest(b"something else")
    for level in (0, DEFAULT_LEVEL):
        with pytest.raises(IntegrityError) as info:
            decompress(compress(data, level=level), max_size=1000, expected=wrong)
        assert info.value.object_id == wrong.hex()
        assert wrong.hex() in str(info.value)


def test_expected_must_be_a_digest() -> None:
    with pytest.raises(InvalidInputError):
        decompress(compress(b"x"), max_size=10, expected=b"short")


def test_empty_frame_and_unknown_codec() -> None:
    with pytest.raises(IntegrityError, match="empty"):
        decompress(b"", max_size=10)
    with pytest.raises(IntegrityError, match="codec byte 7"):
        decompress(b"\x07abc", max_size=10)
    with pytest.raises(IntegrityError, match="codec byte 255"):
        decompress(b"\xff", max_size=10)


def test_raw_frame_larger_than_max_size() -> None:
    frame = compress(os.urandom(100), level=0)
    assert len(decompress(frame, max_size=100)) == 100
    with pytest.raises(IntegrityError):
        decompress(frame, max_size=99)


def test_zstd_frame_larger_than_max_size() -> None:
    data = b"z" * 10_000
    frame = compress(data)
    assert decompress(frame, max_size=10_000) == data
    with pytest.raises(IntegrityError, match="declares 10000 bytes, more than the maximum 9999"):
        decompress(frame, max_size=9_999)


def _bomb(size: int) -> bytes:
    """A zstd frame declaring ``size`` zero bytes, built without holding them in memory."""
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=True).compressobj(size=size)
    chunk = bytes(1 << 20)
    parts = [cobj.compress(chunk) for _ in range(size // len(chunk))]
    parts.append(cobj.flush())
    return bytes([CODEC_ZSTD]) + b"".join(parts)


def test_bomb_is_refused_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _bomb(100 << 20)
    assert len(frame) < 100_000

    class Tripwire:
        def decompress(self, *args: Any, **kwargs: Any) -> bytes:
            raise AssertionError("decompress was called")

    monkeypatch.setattr(codec, "_decompressor", Tripwire)
    with pytest.raises(IntegrityError) as info:
        decompress(frame, max_size=1 << 20)
    assert f"declares {100 << 20} bytes" in str(info.value)
    # The tripwire is live: with a large enough maximum, decompression is attempted.
    with pytest.raises(AssertionError, match="decompress was called"):
        decompress(frame, max_size=200 << 20)


def test_frame_without_content_size_is_refused() -> None:
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = bytes([CODEC_ZSTD]) + cobj.compress(b"a" * 1000) + cobj.flush()
    with pytest.raises(IntegrityError, match="content size"):
        decompress(frame, max_size=10_000)


def test_declared_size_must_match_output() -> None:
    # A frame that declares 10 bytes but holds 20.
    real = zstandard.ZstdCompressor(write_content_size=True).compress(b"q" * 20)
    header = zstandard.frame_header_size(real)
    params = zstandard.get_frame_parameters(real)
    assert params.content_size == 20
    # Single-segment frames store the content size as the last header byte when it is < 256.
    forged = bytearray(real)
    assert forged[header - 1] == 20
    forged[header - 1] = 10
    with pytest.raises(IntegrityError):
        decompress(bytes([CODEC_ZSTD]) + bytes(forged), max_size=100)


@given(st.binary(min_size=1, max_size=2000), st.sampled_from([0, DEFAULT_LEVEL]), st.data())
def test_truncated_frame_is_refused(data: bytes, level: int, draw: st.DataObject) -> None:
    frame = compress(data, level=level)
    cut = draw.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(IntegrityError):
        decompress(frame[:cut], max_size=len(data), expected=digest(data))


def test_every_truncation_of_a_zstd_frame_is_refused() -> None:
    data = b"truncate me please " * 200
    frame = compress(data)
    assert frame[0] == CODEC_ZSTD
    for cut in range(len(frame)):
        with pytest.raises(IntegrityError):
            decompress(frame[:cut], max_size=len(data))


compressible = st.lists(
    st.sampled_from([b"alpha ", b"beta ", b"gamma ", b"delta ", b"\x00\x01", b"x"]),
    min_size=20,
    max_size=800,
).map(b"".join)


@settings(max_examples=300)
@given(compressible, st.sampled_from([1, DEFAULT_LEVEL, 19]), st.data())
def test_inverted_byte_anywhere_in_zstd_frame_is_refused(
    data: bytes, level: int, draw: st.DataObject
) -> None:
    frame = compress(data, level=level)
    assume(frame[0] == CODEC_ZSTD)  # short inputs may not compress at all
    pos = draw.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    broken = bytearray(frame)
    broken[pos] ^= 0xFF
    try:
        out = decompress(bytes(broken), max_size=len(data) + 1000, expected=digest(data))
    except IntegrityError:
        return
    # zstd ignores a few bits (the frame header's unused bit, padding after an FSE table), so
    # a flip there still decodes to the very same bytes; anything else must be refused.
    assert out == data


@given(st.binary(max_size=500), st.sampled_from([0, DEFAULT_LEVEL]), st.data())
def test_any_flip_never_yields_wrong_bytes(data: bytes, level: int, draw: st.DataObject) -> None:
    frame = compress(data, level=level)
    pos = draw.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    mask = draw.draw(st.integers(min_value=1, max_value=255))
    broken = bytearray(frame)
    broken[pos] ^= mask
    try:
        out = decompress(bytes(broken), max_size=len(data) + 1000, expected=digest(data))
    except IntegrityError:
        return
    assert out == data
    # Only zstd frames have bits that do not matter; in a raw frame every bit counts.
    assert frame[0] == CODEC_ZSTD


@pytest.mark.parametrize("level", [1, DEFAULT_LEVEL, 19])
def test_every_inverted_byte_of_a_known_frame_is_refused(level: int) -> None:
    data = b"".join(b"record %d: some text that repeats\n" % (i % 37) for i in range(300))
    frame = compress(data, level=level)
    assert frame[0] == CODEC_ZSTD
    expected = digest(data)
    for pos in range(len(frame)):
        broken = bytearray(frame)
        broken[pos] ^= 0xFF
        with pytest.raises(IntegrityError):
            decompress(bytes(broken), max_size=len(data) + 1000, expected=expected)


def test_flip_without_expected_is_caught_by_zstd_or_size() -> None:
    data = b"abcdefgh" * 500
    frame = compress(data)
    caught = 0
    for pos in range(1, len(frame)):
        broken = bytearray(frame)
        broken[pos] ^= 0xFF
        try:
            out = decompress(bytes(broken), max_size=len(data) * 2)
        except IntegrityError as exc:
            caught += 1
            assert exc.object_id is None
        else:
            assert len(out) <= len(data) * 2
    assert caught > 0


def test_zstd_errors_keep_their_cause() -> None:
    frame = bytearray(compress(b"hello world " * 100))
    frame[1] ^= 0xFF  # breaks the zstd magic number
    with pytest.raises(IntegrityError) as info:
        decompress(bytes(frame), max_size=10_000)
    assert isinstance(info.value.__cause__, zstandard.ZstdError)


def test_compression_is_deterministic() -> None:
    data = b"deterministic output " * 300
    assert compress(data) == compress(bytes(data)) == compress(memoryview(data))


def test_contexts_are_per_thread() -> None:
    here = (codec._compressor(DEFAULT_LEVEL), codec._decompressor())
    assert codec._compressor(DEFAULT_LEVEL) is here[0]
    assert codec._decompressor() is here[1]
    there: list[Any] = []
    thread = threading.Thread(
        target=lambda: there.extend([codec._compressor(DEFAULT_LEVEL), codec._decompressor()])
    )
    thread.start()
    thread.join()
    assert there[0] is not here[0]
    assert there[1] is not here[1]


def test_threads_compress_and_decompress_correctly() -> None:
    rnd = random.Random(1234)
    inputs = []
    for i in range(200):
        size = rnd.randrange(0, 200_000)
        if i % 3 == 0:
            data = rnd.randbytes(size)
        else:
            words = [
                rnd.choice([b"lorem ", b"ipsum ", b"dolor ", b"%d " % i]) for _ in range(size // 6)
            ]
            data = b"".join(words)
        inputs.append((data, [1, DEFAULT_LEVEL, 9, -1][i % 4]))
    single = [compress(data, level=level) for data, level in inputs]

    def work(i: int) -> tuple[bytes, bytes]:
        data, level = inputs[i]
        frame = compress(data, level=level)
        return frame, decompress(frame, max_size=len(data), expected=digest(data))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(len(inputs))))
    for (data, _), frame, (threaded_frame, out) in zip(inputs, single, results, strict=True):
        assert out == data
        assert threaded_frame == frame


@pytest.mark.parametrize("tail", [b"\x00", b"junk", codec.compress(b"x" * 1000)[1:]])
def test_bytes_after_the_zstd_frame_are_refused(tail: bytes) -> None:
    raw = b"statebag " * 500
    frame = codec.compress(raw)
    assert frame[0] == codec.CODEC_ZSTD
    assert codec.decompress(frame, max_size=len(raw)) == raw
    with pytest.raises(IntegrityError):
        codec.decompress(frame + tail, max_size=len(raw), expected=blake3(raw).digest())


@settings(max_examples=50, deadline=None)
@given(
    raws=st.lists(st.binary(max_size=3000) | st.just(b"abc" * 2000), min_size=0, max_size=12),
    level=st.sampled_from([0, 1, 3, -2, 9]),
)
def test_compress_batch_gives_the_frames_of_compress(raws: list[bytes], level: int) -> None:
    frames = codec.compress_batch([memoryview(raw) for raw in raws], level=level)
    assert len(frames) == len(raws)
    for raw, (header, payload) in zip(raws, frames, strict=True):
        frame = header + bytes(payload)
        assert frame == codec.compress(raw, level=level)
        assert codec.decompress(frame, max_size=len(raw)) == raw


def test_compress_batch_refuses_a_bad_level() -> None:
    with pytest.raises(InvalidInputError, match="level"):
        codec.compress_batch([b"x"], level=99)


def test_decompress_batch_returns_what_compress_batch_took() -> None:
    raws = [b"", b"x", b"abc" * 3000, os.urandom(5000), b"state " * 500]
    frames = [memoryview(codec.compress(raw)) for raw in raws]
    ids = [blake3(raw).digest() for raw in raws]
    out = codec.decompress_batch(frames, sizes=[len(r) for r in raws], expected=ids)
    assert [bytes(view) for view in out] == raws


@pytest.mark.parametrize("damage", ["flip", "size", "codec", "empty", "hash"])
def test_decompress_batch_names_the_bad_frame(damage: str) -> None:
    raws = [b"abc" * 3000, b"state " * 500, os.urandom(3000)]
    frames = [bytearray(codec.compress(raw)) for raw in raws]
    ids = [blake3(raw).digest() for raw in raws]
    sizes = [len(raw) for raw in raws]
    if damage == "flip":
        frames[1][len(frames[1]) // 2] ^= 0x55
    elif damage == "size":
        sizes[1] += 1
    elif damage == "codec":
        frames[1][0] = 7
    elif damage == "empty":
        frames[1] = bytearray()
    else:
        ids[1] = blake3(b"other").digest()
    with pytest.raises(IntegrityError) as info:
        codec.decompress_batch([memoryview(f) for f in frames], sizes=sizes, expected=ids)
    if damage != "flip" or info.value.object_id is not None:
        assert info.value.object_id in (None, ids[1].hex())


def test_decompress_batch_without_verify_leaves_the_hash_check_to_the_caller() -> None:
    raws = [b"abc" * 3000, os.urandom(3000)]
    frames = [memoryview(codec.compress(raw)) for raw in raws]
    wrong = [blake3(b"other").digest()] * 2
    sizes = [len(raw) for raw in raws]
    out = codec.decompress_batch(frames, sizes=sizes, expected=wrong, verify=False)
    assert [bytes(view) for view in out] == raws
    with pytest.raises(IntegrityError):
        codec.check_digest(out[0], wrong[0])
    with pytest.raises(IntegrityError):  # sizes are still checked
        codec.decompress_batch(frames, sizes=[sizes[0] + 1, sizes[1]], expected=wrong, verify=False)
    with pytest.raises(IntegrityError):
        codec.decompress_batch(frames, sizes=sizes, expected=wrong)
