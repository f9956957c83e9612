"""The metadata-store wrappers: CountingMetaStore and the fault-injecting FaultyMetaStore."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from statebag.errors import BackendError, InvalidInputError, OutcomeUnknown
from statebag.meta import Add, Check, ConditionFailed, Delete, MetaStore, Put
from statebag.meta.counting import PAGE_ITEMS, CountingMetaStore, MetaCounters
from statebag.meta.memory import MemoryMetaStore
from statebag.testing import META_FAULTS, FaultyMetaStore, MetaStoreConformance

# ---------------------------------------------------------------------------------------------
# Both wrappers keep the contract of the store they wrap
# ---------------------------------------------------------------------------------------------


class TestCountingMetaStore(MetaStoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MetaStore]:
        with CountingMetaStore(MemoryMetaStore(max_batch=100), record_keys=True) as store:
            yield store


class TestHealedFaultyMetaStore(MetaStoreConformance):
    """With no faults drawn, the wrapper is the store it wraps."""

    outcome_unknown_possible = True

    @pytest.fixture
    def store(self) -> Iterator[MetaStore]:
        with FaultyMetaStore(MemoryMetaStore(max_batch=100), seed=1, rate=0.0) as store:
            yield store


def test_outcomes_under_faults_are_applied_refused_or_declared_unknown() -> None:
    # The conformance suite's outcome check, on a store that injects every kind of fault.
    store = FaultyMetaStore(MemoryMetaStore(), seed=7, rate=0.3)
    suite = TestHealedFaultyMetaStore()
    suite.test_every_write_outcome_is_known_or_declared_unknown(store)
    injected = store.injected()
    assert injected["applied_then_unknown"] and injected["unknown_before"]
    assert injected["deferred"] and injected["definite"] and injected["add_applied_then_raises"]


# ---------------------------------------------------------------------------------------------
# CountingMetaStore
# ---------------------------------------------------------------------------------------------


def test_counting_counts_each_kind_of_request_and_records_written_keys() -> None:
    store = CountingMetaStore(MemoryMetaStore(), record_keys=True)
    # The value and the counter of "a" are one item: four operations, three items.
    store.write([Put("a", b"1"), Check("b", None), Add("n", 2), Add("a", 1)])
    store.put("c", b"2")
    store.add("m", 1)
    with pytest.raises(ConditionFailed):
        store.write([Delete("a", expect=b"nope")])
    store.get("a")
    store.get_many(["a", "b", "c"])
    store.counter("n")
    assert list(store.scan("")) == [("a", b"1"), ("c", b"2")]
    assert dict(store.counters("")) == {"a": 1, "m": 1, "n": 2}
    assert store.snapshot() == MetaCounters(
        gets=1, get_manys=1, scans=1, counter_reads=2, writes=4, ops_written=7, items_written=6
    )
    assert store.snapshot().reads == 5
    # A condition-only op writes nothing; a refused write was still tried on its key.
    assert store.written_keys(clear=True) == {"a", "c", "n", "m"}
    assert store.written_keys() == set()


def test_counting_counts_a_long_listing_by_pages() -> None:
    store = CountingMetaStore(MemoryMetaStore())
    store.write([Put(f"k/{i:04d}", b"") for i in range(2 * PAGE_ITEMS + 1)])
    before = store.snapshot()
    assert len(list(store.scan("k/"))) == 2 * PAGE_ITEMS + 1
    assert (store.snapshot() - before).scans == 3
    before = store.snapshot()
    assert list(store.scan("none/")) == []
    assert (store.snapshot() - before).scans == 1


def test_counting_records_no_keys_unless_asked() -> None:
    store = CountingMetaStore(MemoryMetaStore())
    store.put("a", b"1")
    assert store.written_keys() == set()
    assert store.max_batch is None
    assert CountingMetaStore(MemoryMetaStore(max_batch=25)).max_batch == 25


# ---------------------------------------------------------------------------------------------
# FaultyMetaStore: each fault does exactly what it says
# ---------------------------------------------------------------------------------------------


def _only(kind: str, *, land_rate: float = 0.0) -> FaultyMetaStore:
    return FaultyMetaStore(
        MemoryMetaStore(max_batch=25), seed=3, rate=1.0, faults=[kind], land_rate=land_rate
    )


def test_applied_then_unknown_applies_and_raises() -> None:
    store = _only("applied_then_unknown")
    with pytest.raises(OutcomeUnknown) as caught:
        store.write([Put("a", b"1"), Add("n", 1)])
    assert caught.value.retryable
    assert store.inner.get("a") == b"1" and store.inner.counter("n") == 1
    # A batch whose condition fails is refused as usual: ConditionFailed, nothing applied.
    with pytest.raises(ConditionFailed):
        store.write([Put("a", b"2", expect=None)])
    assert store.inner.get("a") == b"1"
    assert store.injected()["applied_then_unknown"] == 1


def test_unknown_before_applies_nothing() -> None:
    store = _only("unknown_before")
    with pytest.raises(OutcomeUnknown):
        store.put("a", b"1")
    assert store.inner.get("a") is None and store.deferred == 0
    assert store.land_deferred() == 0 and store.inner.get("a") is None
    assert store.injected()["unknown_before"] == 1


def test_deferred_lands_at_land_deferred_with_its_conditions_evaluated_then() -> None:
    store = _only("deferred")
    with pytest.raises(OutcomeUnknown):
        store.write([Put("a", b"1", expect=None)])
    with pytest.raises(OutcomeUnknown):
        store.write([Put("b", b"1", expect=None)])
    assert store.inner.get("a") is None and store.deferred == 2
    store.inner.put("b", b"taken")  # the second batch's condition no longer holds
    assert store.land_deferred() == 1
    assert store.inner.get("a") == b"1" and store.inner.get("b") == b"taken"
    assert store.deferred == 0
    counts = store.injected()
    assert counts["deferred"] == 2 and counts["landed"] == 1 and counts["dropped"] == 1


def test_deferred_lands_before_a_later_write() -> None:
    store = _only("deferred", land_rate=1.0)
    with pytest.raises(OutcomeUnknown):
        store.put("a", b"1")
    store.faults_off()
    store.put("b", b"2")  # the deferred batch lands first
    assert store.inner.get("a") == b"1" and store.inner.get("b") == b"2"
    assert store.deferred == 0 and store.injected()["landed"] == 1


def test_definite_failure_applies_nothing_and_is_not_an_unknown_outcome() -> None:
    store = _only("definite")
    retryable = set()
    for i in range(20):
        with pytest.raises(BackendError) as caught:
            store.put(f"k{i}", b"1")
        assert not isinstance(caught.value, OutcomeUnknown)
        retryable.add(caught.value.retryable)
    assert retryable == {True, False}
    assert list(store.inner.scan("")) == [] and store.deferred == 0


def test_add_applied_then_raises() -> None:
    store = _only("add_applied_then_raises")
    with pytest.raises(OutcomeUnknown):
        store.add("n", 5)
    assert store.inner.counter("n") == 5
    store.write([Put("a", b"1")])  # writes draw no fault of this kind
    assert store.inner.get("a") == b"1"


def test_bad_input_and_empty_batches_draw_no_fault() -> None:
    store = _only("applied_then_unknown")
    with pytest.raises(InvalidInputError):
        store.write([Put("a", b"1")] * 26)  # over max_batch
    with pytest.raises(InvalidInputError):
        store.write([Put("", b"1")])
    store.write([])
    assert store.injected()["applied_then_unknown"] == 0
    with pytest.raises(InvalidInputError, match="unknown fault kinds"):
        FaultyMetaStore(MemoryMetaStore(), seed=1, faults=["timeout"])
    with pytest.raises(InvalidInputError) as caught:
        FaultyMetaStore(MemoryMetaStore(), seed=1, rate=1.5)
    assert caught.value.path == "rate"


def test_faults_are_reproducible_from_the_seed_and_stop_when_turned_off() -> None:
    def run(seed: int) -> list[str]:
        store = FaultyMetaStore(MemoryMetaStore(), seed=seed, rate=0.5)
        outcomes = []
        for i in range(60):
            try:
                store.put(f"k{i}", b"1")
                outcomes.append("ok")
            except BackendError as exc:
                outcomes.append(type(exc).__name__)
        store.faults_off()
        for i in range(60):
            store.put(f"after{i}", b"1")  # no fault once healed
        return outcomes

    assert run(11) == run(11)
    assert run(11) != run(12)
    assert set(run(11)) == {"ok", "OutcomeUnknown", "BackendError"}
    assert set(META_FAULTS) >= {"deferred", "definite"}
