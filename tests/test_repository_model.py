"""The repository against a model: a hypothesis state machine of saves, loads and races.

The model is a dict chain -> list of (manifest id, state). Every rule does the same thing to
the repository and the model; invariants compare them after every step, and the teardown
verifies every pack and recounts every reference.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import statebag
from statebag import ConflictError, NotFoundError

from .repohelp import open_repo, recount, same, stored_counts

CHAINS = ("a", "b", "exec/1")
FIELD_NAMES = ("messages", "scratch", "blob", "n", "cfg", "x")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
)
small = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=10,
)
large = st.builds(
    lambda seed, n: random.Random(seed).randbytes(n),
    st.integers(0, 2**16),
    st.integers(100, 40_000),
) | st.builds(
    lambda seed, n: [
        f"message {i} " + "w" * random.Random(seed + i).randint(0, 90) for i in range(n)
    ],
    st.integers(0, 2**16),
    st.integers(1, 400),
)
states = st.dictionaries(st.sampled_from(FIELD_NAMES), small | large, max_size=6)


class RepositoryMachine(RuleBasedStateMachine):
    kind = "memory"  # which repository: see tests/repohelp.py KINDS
    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.repo = open_repo(self.kind, inline_max=48)
        self.model: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def teardown(self) -> None:
        try:
            report = self.repo.verify()
            assert report.ok, report.problems
            counts, reached = recount(self.repo)
            assert stored_counts(self.repo) == counts
            assert self.repo.stats().nodes == len(reached)
        finally:
            self.repo.close()

    @rule(target=versions, chain=st.sampled_from(CHAINS), state=states, hint=st.booleans())
    def save(self, chain: str, state: dict[str, Any], hint: bool) -> tuple[str, str]:
        history = self.model.setdefault(chain, [])
        changed = None
        if hint and history:
            previous = history[-1][1]
            changed = [
                key
                for key in state
                if key not in previous
                or previous[key] != state[key]
                or type(previous[key]) is not type(state[key])
            ]
        result = self.repo.save(chain, state, changed=changed)
        assert result.parent == (history[-1][0] if history else None)
        assert result.seq == len(history) + 1
        history.append((result.manifest_id, state))
        return chain, result.manifest_id

    @rule(chain=st.sampled_from(CHAINS), mutate=st.sampled_from(FIELD_NAMES), value=small)
    def save_through_a_bag(self, chain: str, mutate: str, value: Any) -> None:
        history = self.model.get(chain)
        if not history:
            return
        bag = self.repo.load_bag(chain)
        bag[mutate] = value
        result = self.repo.save(chain, bag)
        state = dict(history[-1][1])
        state[mutate] = value
        history.append((result.manifest_id, state))

    @precondition(lambda self: any(len(h) >= 2 for h in self.model.values()))
    @rule(data=st.data())
    def stale_parent_conflicts(self, data: st.DataObject) -> None:
        chain = data.draw(st.sampled_from([c for c, h in self.model.items() if len(h) >= 2]))
        stale = self.model[chain][-2][0]
        with pytest.raises(ConflictError):
            self.repo.save(chain, {"n": 1}, parent=stale)

    @rule(
        version=versions,
        fields=st.sets(st.sampled_from(FIELD_NAMES), max_size=3),
        lazy=st.booleans(),
    )
    def load(self, version: tuple[str, str], fields: set[str], lazy: bool) -> None:
        chain, manifest_id = version
        state = dict(self.model[chain])[manifest_id]
        loaded = self.repo.load(manifest_id, lazy=lazy)
        same(state, dict(loaded) if lazy else loaded)
        present = sorted(fields & state.keys())
        same({name: state[name] for name in present}, self.repo.load(manifest_id, fields=present))
        if fields - state.keys():
            with pytest.raises(NotFoundError):
                self.repo.load(manifest_id, fields=sorted(fields))

    @rule(a=versions, b=versions)
    def diff(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        state_a = dict(self.model[a[0]])[a[1]]
        state_b = dict(self.model[b[0]])[b[1]]
        diff = self.repo.diff(a[1], b[1])
        assert set(diff.added) == state_b.keys() - state_a.keys()
        assert set(diff.removed) == state_a.keys() - state_b.keys()
        expected_changed = {
            key
            for key in state_a.keys() & state_b.keys()
            if statebag.codec.encode(state_a[key]) != statebag.codec.encode(state_b[key])
        }
        assert set(diff.changed) == expected_changed

    @rule(version=consumes(versions))
    def forget(self, version: tuple[str, str]) -> None:
        """Drop a version from the bundle (not from the repository), to vary what is drawn."""

    @invariant()
    def heads_and_logs_match(self) -> None:
        for chain, history in self.model.items():
            assert self.repo.head(chain) == history[-1][0]
            assert [info.manifest_id for info in self.repo.log(chain)] == [
                manifest_id for manifest_id, _ in reversed(history)
            ]
        assert sorted(self.repo.chains()) == sorted(self.model)
        stats = self.repo.stats()
        assert stats.manifests == sum(len(h) for h in self.model.values())
        assert stats.chains == len(self.model)


RepositoryMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestRepositoryModel = RepositoryMachine.TestCase


class BatchedRepositoryMachine(RepositoryMachine):
    """The same model on a metadata store that takes at most 25 operations per write."""

    kind = "batched"


BatchedRepositoryMachine.TestCase.settings = settings(
    RepositoryMachine.TestCase.settings, max_examples=10
)
TestRepositoryModelBatched = BatchedRepositoryMachine.TestCase
