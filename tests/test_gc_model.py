"""GC against a model: a hypothesis state machine of saves, deletes, pins, retention, gc,
audits and loads on several chains.

The model is a dict manifest id -> (chain, seq, state) of the live versions, plus the pinned
ids and each chain's head. After every step every live version loads equal to its model
state and the audit is ok; retention must delete exactly the versions the model says.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statebag import ConflictError

from . import internals
from .repohelp import open_repo

CHAINS = ("a", "b", "run/3")
# A small pool of values, so that versions and chains share nodes: deleting one version
# must free only what no other version still reaches, and saves revive zero-count nodes.
POOL = [random.Random(seed).randbytes(3000 + seed * 7000) for seed in range(4)]
HISTORIES = [[f"message {i} " * 9 for i in range(n)] for n in (0, 40, 120, 400)]

states = st.fixed_dictionaries(
    {
        "blob": st.sampled_from(range(len(POOL))),
        "history": st.sampled_from(range(len(HISTORIES))),
    },
    optional={"n": st.integers(0, 3), "note": st.sampled_from(["x", "y" * 600])},
)


def materialize(choice: dict[str, Any]) -> dict[str, Any]:
    state = dict(choice)
    state["blob"] = POOL[choice["blob"]]
    state["history"] = HISTORIES[choice["history"]]
    return state


class GCMachine(RuleBasedStateMachine):
    kind = "memory"  # which repository: see tests/repohelp.py KINDS

    def __init__(self) -> None:
        super().__init__()
        self.repo = open_repo(self.kind, inline_max=64, grace=0)
        self.live: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.heads: dict[str, str] = {}
        self.pinned: set[str] = set()

    def teardown(self) -> None:
        self.repo.close()

    def non_heads(self) -> list[str]:
        # In save order, never by id: ids cover the save time, so their order differs from
        # run to run and hypothesis could not replay a draw.
        heads = set(self.heads.values())
        return [mid for mid in self.live if mid not in heads]

    @rule(chain=st.sampled_from(CHAINS), choice=states)
    def save(self, chain: str, choice: dict[str, Any]) -> None:
        state = materialize(choice)
        result = self.repo.save(chain, state)
        self.live[result.manifest_id] = (chain, result.seq, state)
        self.heads[chain] = result.manifest_id

    @precondition(lambda self: bool(self.non_heads()))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self.non_heads()))
        if victim in self.pinned:
            with pytest.raises(ConflictError):
                self.repo.delete(victim)
            return
        self.repo.delete(victim)
        del self.live[victim]

    @precondition(lambda self: bool(self.heads))
    @rule(data=st.data())
    def delete_head_is_refused(self, data: st.DataObject) -> None:
        head = data.draw(st.sampled_from([self.heads[chain] for chain in sorted(self.heads)]))
        with pytest.raises(ConflictError):
            self.repo.delete(head)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), pin=st.booleans())
    def pin(self, data: st.DataObject, pin: bool) -> None:
        target = data.draw(st.sampled_from(list(self.live)))
        if pin:
            self.repo.pin(target)
            self.pinned.add(target)
        else:
            self.repo.unpin(target)
            self.pinned.discard(target)

    @precondition(lambda self: bool(self.heads))
    @rule(data=st.data())
    def delete_chain(self, data: st.DataObject) -> None:
        chain = data.draw(st.sampled_from(sorted(self.heads)))
        count = self.repo.delete_chain(chain)
        doomed = [mid for mid, (c, _, _) in self.live.items() if c == chain]
        assert count == len(doomed)
        for mid in doomed:
            del self.live[mid]
            self.pinned.discard(mid)
        del self.heads[chain]

    @rule(keep_last=st.none() | st.integers(0, 3))
    def gc(self, keep_last: int | None) -> None:
        expected: set[str] = set()
        if keep_last is not None:
            for chain, head in self.heads.items():
                versions = sorted(
                    ((seq, mid) for mid, (c, seq, _) in self.live.items() if c == chain),
                    reverse=True,
                )
                kept = {mid for _, mid in versions[:keep_last]} | {head} | self.pinned
                expected.update(mid for _, mid in versions if mid not in kept)
        report = self.repo.gc(keep_last=keep_last)
        assert report.manifests_deleted == len(expected)
        for mid in expected:
            del self.live[mid]
        # grace 0: nothing a deleted version alone held survives
        assert list(internals.meta(self.repo).scan("zero/")) == []

    @invariant()
    def every_live_version_loads_and_audit_is_ok(self) -> None:
        stored = {key[len("manifest/") :] for key, _ in internals.meta(self.repo).scan("manifest/")}
        assert stored == set(self.live)
        for manifest_id, (_, _, state) in self.live.items():
            assert self.repo.load(manifest_id) == dict(sorted(state.items()))
        for chain, head in self.heads.items():
            assert self.repo.head(chain) == head
        report = self.repo.audit()
        assert report.ok, report
        assert not report.over_counted and not report.orphan_packs, report
        assert self.repo.stats().manifests == len(self.live)


GCMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestGCModel = GCMachine.TestCase


class BatchedGCMachine(GCMachine):
    """The same model on a metadata store that takes at most 25 operations per write."""

    kind = "batched"


BatchedGCMachine.TestCase.settings = settings(GCMachine.TestCase.settings, max_examples=15)
TestGCModelBatched = BatchedGCMachine.TestCase
