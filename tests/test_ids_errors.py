"""Content ids, the hash, and the error tree."""

from __future__ import annotations

import pickle

import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

import statebag
from statebag import errors, hashing
from statebag.ids import ContentId, looks_like_id


@given(st.binary(max_size=5000))
def test_content_id_is_blake3_and_round_trips_through_hex(data: bytes) -> None:
    cid = ContentId.of(data)
    assert cid == blake3(data).digest() == hashing.hash_bytes(data)
    assert str(cid) == cid.hex() and len(str(cid)) == 64
    assert ContentId.parse(str(cid)) == cid
    assert cid.short() == str(cid)[:12]
    assert looks_like_id(str(cid))


def test_content_id_behaves_as_its_bytes() -> None:
    cid = ContentId.of(b"x")
    assert {cid: 1}[blake3(b"x").digest()] == 1
    assert pickle.loads(pickle.dumps(cid)) == cid
    assert repr(cid) == f"ContentId('{cid.hex()}')"


@pytest.mark.parametrize(
    "text",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0" * 64 + "\n", 7],
)
def test_parse_refuses_anything_but_64_lowercase_hex(text: object) -> None:
    with pytest.raises(statebag.InvalidInputError) as info:
        ContentId.parse(text, field="manifest_id")  # type: ignore[arg-type]
    assert info.value.path == "manifest_id"
    assert "manifest_id" in str(info.value)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_content_id_requires_32_bytes(size: int) -> None:
    with pytest.raises(statebag.InvalidInputError, match="32 bytes"):
        ContentId(b"\0" * size)


def test_error_tree_groups_by_what_callers_do() -> None:
    for name in errors.__all__:
        cls = getattr(statebag, name)
        assert cls is getattr(errors, name)
        assert issubclass(cls, statebag.StatebagError)
    assert issubclass(statebag.InvalidInputError, ValueError)
    assert issubclass(statebag.NotFoundError, KeyError)
    kinds = {getattr(errors, name).kind for name in errors.__all__}
    assert len(kinds) == len(errors.__all__)  # each class has its own stable code
    codes = {getattr(errors, name).exit_code for name in errors.__all__}
    assert len(codes) == len(errors.__all__)


def test_not_found_prints_its_message_unquoted() -> None:
    # KeyError would print "'chain exec-1 has no version'"; the message must read plainly.
    assert str(statebag.NotFoundError("chain exec-1 has no version")) == (
        "chain exec-1 has no version"
    )


def test_backend_error_keeps_retryable_and_cause() -> None:
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError as cause:
            raise statebag.BackendError("PUT packs/ab failed", retryable=True) from cause
    except statebag.BackendError as exc:
        assert exc.retryable is True
        assert isinstance(exc.__cause__, TimeoutError)
