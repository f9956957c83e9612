"""Seeded random damage to a small repository: load, verify, audit and rebuild answer right
or raise.

Each trial damages one thing, as a failing disk, a bad copy or a hand with write access to
the stores could: a byte of a pack (frames, footer or trailer), a field of a footer entry,
the trailer's count, a pack's length; a field of an index record (offset, frame length,
size, flags), or its length; a manifest's bytes; or a version crafted with consistent
hashes whose fields table rewrites a tree entry's length, level or root, or an inline
value's bytes. Then every version is loaded, the repository verified and audited, and its
metadata rebuilt from its packs into an empty store, with every cache dropped. Each call
either gives the right answer or raises a StatebagError, never another exception, and
never allocates (tracemalloc peak) more than a small multiple of the repository's state.
For damage to stored bytes (not crafted versions), a version that fails to load must also
fail ``verify(read_data=1.0)``, and a repository that verifies must load every version as
saved; for damage to the metadata alone, a rebuild restores every version. The damage is
undone after each trial.

Time-bounded: the trials stop after ``BUDGET_S`` seconds (the seed fixes their order).
"""

from __future__ import annotations

import random
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import dag
from statebag.errors import StatebagError
from statebag.keys import head_key
from statebag.meta.memory import MemoryMetaStore
from statebag.packs import FOOTER_ENTRY_SIZE, TRAILER_SIZE

from . import internals
from .crafting import craft_version, retree

SEED = 21
# Damage to the metadata alone: a rebuild from the packs restores everything.
METADATA_ONLY = frozenset({"index_record", "manifest"})
BUDGET_S = 10.0  # per backend
MIN_TRIALS = 60
# Peak allocation of one call, as a multiple of the bytes of every saved state, plus slack
# for the fixed costs (caches, small reads, a traceback).
ALLOWED_FACTOR = 4
ALLOWED_SLACK = 2_000_000

U64 = (0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1)
U32 = (0, 1, 2, 4095, 65536, 65537, 2**31, 2**32 - 1)


def make_states(rng: random.Random) -> list[dict[str, Any]]:
    words = ["alpha", "beta", "gamma", "delta", "state", "agent", "step"]
    text = [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(3000)]
    first = {
        "blob": rng.randbytes(150_000),  # incompressible: raw frames, several chunks
        "text": text,  # compressible: zstd frames
        "small": {"a": [1, 2.5, None], "b": "x" * 300},  # inline
        "n": 1,
    }
    second = {**first, "text": [*text, "appended line"], "n": 2}
    return [first, second]


@pytest.fixture(params=["memory", "local"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[statebag.Repository]:
    url = f"memory://{uuid.uuid4().hex}" if request.param == "memory" else str(tmp_path / "r")
    with statebag.open(url, fsync=False) as repository:
        yield repository


class Trial:
    """One damage, its undo, and whether it crafted a version (so no answer is "right")."""

    def __init__(self, repo: statebag.Repository, rng: random.Random) -> None:
        self.repo = repo
        self.rng = rng
        self.meta = internals.meta(repo)
        self.objects = internals.objects(repo)
        self.undo: list[Callable[[], None]] = []
        self.crafted = False
        self.what = ""

    # -- helpers --

    def _set_object(self, key: str, data: bytes) -> None:
        original = self.objects.get(key)
        self.undo.append(lambda: self.objects.put(key, original))
        self.objects.put(key, data)

    def _set_meta(self, key: str, data: bytes) -> None:
        original = self.meta.get(key)
        assert original is not None
        self.undo.append(lambda: self.meta.put(key, original))
        self.meta.put(key, data)

    def _pick_pack(self) -> tuple[str, bytearray]:
        key = self.rng.choice(sorted(self.objects.list("packs/")))
        return key, bytearray(self.objects.get(key))

    def _pick_meta(self, prefix: str) -> tuple[str, bytearray]:
        key, value = self.rng.choice(sorted(self.meta.scan(prefix)))
        return key, bytearray(value)

    def _poke(self, data: bytearray, at: int, width: int, values: tuple[int, ...]) -> None:
        value = self.rng.choice(values) % (1 << (8 * width))
        data[at : at + width] = value.to_bytes(width, "little")

    # -- damage --

    def pack_byte(self) -> None:
        key, data = self._pick_pack()
        at = self.rng.randrange(len(data))
        data[at] ^= self.rng.randrange(1, 256)
        self._set_object(key, bytes(data))

    def pack_footer(self) -> None:
        key, data = self._pick_pack()
        count = int.from_bytes(data[-16:-12], "little")
        entry = len(data) - TRAILER_SIZE - (count - self.rng.randrange(count)) * FOOTER_ENTRY_SIZE
        where = self.rng.choice(("offset", "length", "size", "count"))
        if where == "offset":
            self._poke(data, entry + 32, 8, U64)
        elif where == "length":
            self._poke(data, entry + 40, 4, U32)
        elif where == "size":
            self._poke(data, entry + 44, 4, U32)
        else:
            self._poke(data, len(data) - 16, 4, U32)
        self._set_object(key, bytes(data))

    def pack_length(self) -> None:
        key, data = self._pick_pack()
        self._set_object(key, bytes(data[: self.rng.randrange(len(data))]))

    def index_record(self) -> None:
        key, data = self._pick_meta("node/")
        where = self.rng.choice(("offset", "length", "size", "flags", "cut", "byte"))
        if where == "offset":
            self._poke(data, 32, 8, U64)
        elif where == "length":
            self._poke(data, 40, 4, U32)
        elif where == "size":
            self._poke(data, 44, 4, U32)
        elif where == "flags":
            self._poke(data, 48, 1, (0, 1, 2, 255))
        elif where == "cut":
            data = data[: self.rng.randrange(len(data))]
        else:
            data[self.rng.randrange(len(data))] ^= self.rng.randrange(1, 256)
        self._set_meta(key, bytes(data))

    def manifest(self) -> None:
        key, data = self._pick_meta("manifest/")
        if self.rng.random() < 0.5:
            data[self.rng.randrange(len(data))] ^= self.rng.randrange(1, 256)
        else:
            data = data[: self.rng.randrange(len(data))]
        self._set_meta(key, bytes(data))

    def crafted_entry(self) -> None:
        self.crafted = True
        repo = self.repo
        head = repo.head("c")
        assert head is not None
        entries = internals.fields(repo, head)
        name = self.rng.choice(sorted(entries))
        entry = entries[name]
        if isinstance(entry, dag.TreeField):
            change = self.rng.choice(("length", "level", "root"))
            if change == "length":
                value: Any = self.rng.choice(
                    (0, -1, 1, entry.length - 1, entry.length + 1, 8 << 30, 1 << 40, 2**64 - 1)
                )
                entry = retree(entry, length=value)
            elif change == "level":
                entry = retree(entry, level=self.rng.choice((0, 1, 2, 3, 9, -1)))
            else:
                other = self.rng.choice([e for e in entries.values() if e != entry])
                root = other.root if isinstance(other, dag.TreeField) else bytes(32)
                entry = retree(entry, root=root)
        else:
            encoded = bytearray(entry.encoded)
            encoded[self.rng.randrange(len(encoded))] ^= self.rng.randrange(1, 256)
            entry = dag.InlineField(bytes(encoded))
        record = self.meta.get(head_key("c"))
        assert record is not None
        before_meta = {key for key, _ in self.meta.scan("")}
        before_objects = set(self.objects.list(""))
        craft_version(repo, "c", {**entries, name: entry})

        def undo() -> None:
            self.meta.put(head_key("c"), record)
            for key in {key for key, _ in self.meta.scan("")} - before_meta:
                self.meta.delete(key)
            for key in set(self.objects.list("")) - before_objects:
                self.objects.delete(key)

        self.undo.append(undo)

    def damage(self) -> None:
        kind = self.rng.choice(
            (
                self.pack_byte,
                self.pack_footer,
                self.pack_length,
                self.index_record,
                self.index_record,
                self.manifest,
                self.crafted_entry,
                self.crafted_entry,
            )
        )
        self.what = kind.__name__
        kind()

    def restore(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()


def measured(repo: statebag.Repository, call: Callable[[], Any], allowed: int) -> tuple[Any, Any]:
    """(result, None) or (None, error) of ``call`` with caches dropped; fails on any
    exception but a StatebagError, or on a peak allocation above ``allowed`` bytes."""
    internals.drop_caches(repo)
    tracemalloc.start()
    try:
        try:
            return call(), None
        except StatebagError as exc:
            return None, exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak <= allowed, f"peak {peak} > {allowed}"
    finally:
        tracemalloc.stop()


def test_damaged_storage_gives_right_answers_or_statebag_errors(
    repo: statebag.Repository,
) -> None:
    rng = random.Random(SEED)
    states = make_states(rng)
    versions = {
        repo.save("c", state, meta={"step": i}).manifest_id: state for i, state in enumerate(states)
    }
    assert repo.verify().ok and repo.audit().ok
    total = sum(len(statebag.codec.encode(state)) for state in states)
    allowed = ALLOWED_FACTOR * total + ALLOWED_SLACK
    started = time.perf_counter()
    trials = 0
    kinds: dict[str, int] = {}
    while trials < MIN_TRIALS or time.perf_counter() - started < BUDGET_S:
        trial = Trial(repo, rng)
        trial.damage()
        kinds[trial.what] = kinds.get(trial.what, 0) + 1
        try:
            failed_loads = []
            for manifest_id, state in versions.items():
                loaded, error = measured(repo, lambda m=manifest_id: repo.load(m), allowed)
                if error is not None:
                    failed_loads.append(manifest_id)
                elif not trial.crafted:
                    assert loaded == state, (trial.what, manifest_id)
            head = repo.head("c")
            if trial.crafted and head is not None:
                measured(repo, lambda h=head: repo.load(h), allowed)
            report, _ = measured(repo, lambda: repo.verify(read_data=1.0), allowed)
            measured(repo, lambda: repo.audit(), allowed)
            rebuilt, _ = measured(
                repo,
                lambda: statebag.rebuild((internals.objects(repo), MemoryMetaStore())),
                allowed,
            )
            if trial.what in METADATA_ONLY:
                # The packs are whole: the object store alone restores every version.
                assert rebuilt is not None and rebuilt.versions == len(versions), rebuilt
            if not trial.crafted and report is not None:
                assert report.ok == (not failed_loads), (trial.what, report, failed_loads)
        finally:
            trial.restore()
        trials += 1
    internals.drop_caches(repo)
    assert repo.verify().ok and repo.audit().ok
    assert all(repo.load(m) == state for m, state in versions.items())
    assert len(kinds) == 6, kinds  # every kind of damage was tried
