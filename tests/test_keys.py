"""The key schema: every builder's key parses back to what built it, families never share a
prefix, and the records round-trip byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statebag import keys

ids = st.binary(min_size=32, max_size=32)

ID_FAMILIES = [
    (keys.manifest_key, keys.MANIFEST),
    (keys.tomb_key, keys.TOMB),
    (keys.pin_key, keys.PIN),
    (keys.hold_key, keys.HOLD),
    (keys.orphan_key, keys.ORPHAN),
    (keys.fork_key, keys.FORK),
    (keys.node_key, keys.NODE),
    (keys.zero_key, keys.ZERO),
    (keys.COUNTS_WITH_RECORDS.key, keys.NODE),
    (keys.SEPARATE_COUNTS.key, keys.REF),
    (keys.pack_record_key, keys.PACK),
    (keys.dead_key, keys.DEAD),
]


@pytest.mark.parametrize(("build", "prefix"), ID_FAMILIES)
@given(object_id=ids)
def test_id_keys_parse_back(build, prefix, object_id: bytes) -> None:
    key = build(object_id)
    assert key == prefix + object_id.hex()
    assert keys.id_of(key, prefix) == object_id


def test_prefixes_are_distinct_and_none_is_a_prefix_of_another() -> None:
    prefixes = [prefix for _, prefix in ID_FAMILIES] + [
        keys.HEAD,
        keys.PENDING,
        keys.LETTER,
        keys.STAT,
        keys.VERSION,
    ]
    for a in prefixes:
        for b in prefixes:
            assert a == b or not b.startswith(a), (a, b)


def test_id_of_refuses_a_key_of_another_family() -> None:
    with pytest.raises(ValueError, match="not under"):
        keys.id_of(keys.node_key(bytes(32)), keys.REF)


@given(chain=st.text(min_size=1, max_size=50), seq=st.integers(0, 2**63), mid=ids)
def test_version_keys_sort_by_seq_and_name_their_manifest(chain: str, seq: int, mid: bytes) -> None:
    key = keys.version_key(chain, seq, mid)
    assert key.startswith(keys.version_prefix(chain))
    assert keys.id_of(key, keys.VERSION) == mid
    assert keys.version_key(chain, seq, mid) < keys.version_key(chain, seq + 1, mid)


@given(chain=st.text(min_size=1, max_size=50))
def test_head_and_pending_keys_parse_back(chain: str) -> None:
    assert keys.chain_of(keys.head_key(chain)) == chain
    assert keys.txn_of(keys.pending_key("ab" * 16)) == "ab" * 16


def test_records_round_trip() -> None:
    head = keys.HeadRecord(bytes(range(32)), 7, "t" * 32)
    assert keys.decode_head(keys.encode_record(head)) == head
    pending = keys.PendingRecord("c", 1, 2, [bytes(32)])
    assert keys.decode_pending(keys.encode_record(pending)) == pending
    tomb = keys.Tombstone("c", 3, 4, 5)
    assert keys.decode_tombstone(keys.encode_record(tomb)) == tomb
    assert keys.decode_letter(keys.encode_letter([bytes(32), b"\x01" * 32])) == [
        bytes(32),
        b"\x01" * 32,
    ]
    assert keys.decode_le64(keys.encode_le64(2**63 + 5)) == 2**63 + 5
    record = keys.IndexRecord(bytes(32), 10, 20, 30, keys.FLAG_INTERIOR)
    assert len(record.encode()) == 49
    assert keys.IndexRecord.decode(record.encode(), node_id="x") == record
    assert keys.PackRecord.decode(keys.PackRecord(5, 6).encode(), pack_id="p") == (5, 6)


def test_head_record_bytes_are_frozen() -> None:
    # Format 1: a head record is the msgpack array [bin id, seq, txn].
    head = keys.HeadRecord(b"\xaa" * 32, 1, "t")
    assert keys.encode_record(head) == b"\x93\xc4\x20" + b"\xaa" * 32 + b"\x01\xa1t"


@given(st.text(min_size=1, max_size=40))
def test_stat_shards_belong_to_their_total_and_differ_per_chain(chain: str) -> None:
    shard = keys.stat_shard(keys.STAT_EPOCH, chain)
    assert shard.startswith(keys.STAT_EPOCH + "/")
    assert keys.stat_name(shard) == "epoch"
    assert keys.stat_shard(keys.STAT_EPOCH, chain + "x") != shard


def test_totals_sum_the_global_counter_and_every_shard() -> None:
    counters = [
        (keys.STAT_NODES, 5),
        (keys.stat_shard(keys.STAT_NODES, "a"), 3),
        (keys.stat_shard(keys.STAT_NODES, "b"), -1),
        (keys.stat_shard(keys.STAT_EPOCH, "a"), 2),
        ("stat/nodes/not-a-shard", 100),  # not a shard key: not counted
        ("stat/unknown", 7),
    ]
    assert keys.sum_totals(counters) == {"nodes": 7, "epoch": 2}
