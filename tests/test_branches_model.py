"""Branches against a model: a hypothesis state machine of saves, forks, merges, resets,
pins and gc on a few chains.

The model keeps every live version (its state, parents and seq), each chain's head and the
pinned ids, and computes on its own what the repository must do: a merge's base (the
newest common ancestor) and result (``last_wins`` and ``collect``, the strategies that
never conflict), what a reset discards, and which versions ``gc(grace=0)`` deletes: exactly
those no head reaches through all parents and no pin keeps. After every step every live
version loads equal to its model state, every log follows the model's first parents and the
audit is ok.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import statebag

from . import internals
from .repohelp import open_repo

CHAINS = ("a", "b", "c", "a/x")
FIELDS = ("f", "g", "h")
# Values long enough to be stored as nodes (inline_max is 64 below) and shared across
# versions, so that gc frees only what no live version reaches.
VALUES = [None, 1, "v" * 100, ["w" * 80, 2], {"k": "z" * 90}]

states = st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(range(len(VALUES))))


class BranchMachine(RuleBasedStateMachine):
    kind = "memory"  # which repository: see tests/repohelp.py KINDS

    def __init__(self) -> None:
        super().__init__()
        self.repo = open_repo(self.kind, inline_max=64, grace=0)
        self.states: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, list[str]] = {}
        self.seqs: dict[str, int] = {}
        self.heads: dict[str, str] = {}
        self.pinned: set[str] = set()

    def teardown(self) -> None:
        self.repo.close()

    # -- the model's own graph walks -------------------------------------------------------

    def ancestors(self, version: str) -> set[str]:
        seen: set[str] = set()
        frontier = [version]
        while frontier:
            current = frontier.pop()
            if current in seen or current not in self.states:
                continue
            seen.add(current)
            frontier.extend(self.parents[current])
        return seen

    def first_parents(self, version: str) -> list[str]:
        out = []
        current: str | None = version
        while current is not None and current in self.states:
            out.append(current)
            current = self.parents[current][0] if self.parents[current] else None
        return out

    def merge_bases(self, heads: list[str]) -> set[str]:
        """The newest common ancestors: those no other common ancestor descends from, and of
        those (several in criss-cross histories) the ones of the highest seq, any of which
        the repository may take."""
        common = set.intersection(*(self.ancestors(h) for h in heads))
        newest = [c for c in common if not any(c in self.ancestors(o) - {o} for o in common)]
        top = max((self.seqs[c] for c in newest), default=None)
        return {c for c in newest if self.seqs[c] == top}

    def record(self, result: statebag.CommitResult, state: dict[str, Any]) -> None:
        self.states[result.manifest_id] = state
        self.parents[result.manifest_id] = list(result.parents)
        self.seqs[result.manifest_id] = result.seq
        self.heads[result.chain] = result.manifest_id

    # -- rules --------------------------------------------------------------------------------

    @rule(chain=st.sampled_from(CHAINS), choice=states)
    def save(self, chain: str, choice: dict[str, int]) -> None:
        state = {name: VALUES[index] for name, index in choice.items()}
        parent = self.heads.get(chain)
        result = self.repo.save(chain, state)
        assert result.parents == ([parent] if parent else [])
        assert result.seq == (self.seqs[parent] + 1 if parent else 1)
        self.record(result, state)

    @precondition(lambda self: bool(self.heads))
    @rule(data=st.data(), new=st.sampled_from(CHAINS))
    def fork(self, data: st.DataObject, new: str) -> None:
        source = data.draw(st.sampled_from(sorted(self.heads)))
        if new in self.heads:
            return
        point = self.repo.fork(source, new)
        assert point == self.heads[source]
        self.heads[new] = point

    @precondition(lambda self: len(self.heads) >= 2)
    @rule(data=st.data(), strategy=st.sampled_from(["last_wins", "collect"]))
    def merge(self, data: st.DataObject, strategy: str) -> None:
        names = sorted(self.heads)
        target = data.draw(st.sampled_from(names))
        branches = data.draw(
            st.lists(st.sampled_from([n for n in names if n != target]), min_size=1, unique=True)
        )
        heads = [self.heads[c] for c in (target, *branches)]
        base_id = self.repo.merge_base(heads)
        candidates = self.merge_bases(heads)
        assert base_id in candidates if candidates else base_id is None
        base = self.states[base_id] if base_id is not None else {}
        sides = [self.states[h] for h in heads]
        expected: dict[str, Any] = {}
        for name in sorted({*base, *(n for side in sides for n in side)}):
            missing = object()
            before = base.get(name, missing)
            changed = [s.get(name, missing) for s in sides if s.get(name, missing) != before]
            changed = [c for c in changed if not (c is missing and before is missing)]
            if not changed:
                if before is not missing:
                    expected[name] = before
            elif strategy == "last_wins":
                if changed[-1] is not missing:
                    expected[name] = changed[-1]
            else:
                values = [c for c in changed if c is not missing]
                if values:
                    expected[name] = values
        result = self.repo.merge(target, branches, strategy=strategy)
        assert result.parents == heads
        self.record(result, expected)

    @precondition(lambda self: bool(self.heads))
    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        chain = data.draw(st.sampled_from(sorted(self.heads)))
        history = self.first_parents(self.heads[chain])
        position = data.draw(st.integers(0, len(history) - 1))
        result = self.repo.reset(chain, history[position])
        assert result.discarded == history[:position]
        self.heads[chain] = history[position]

    @precondition(lambda self: bool(self.states))
    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        # In save order, never by id: ids cover the save time, so hypothesis could not
        # replay a draw ordered by them.
        version = data.draw(st.sampled_from(list(self.states)))
        if version in self.pinned:
            self.repo.unpin(version)
            self.pinned.discard(version)
        else:
            self.repo.pin(version)
            self.pinned.add(version)

    @rule()
    def gc(self) -> None:
        reached = set().union(*(self.ancestors(h) for h in self.heads.values()))
        doomed = {v for v in self.states if v not in reached and v not in self.pinned}
        report = self.repo.gc(grace=0)
        assert report.manifests_deleted == len(doomed)
        for version in doomed:
            del self.states[version]
        assert {
            k[len("manifest/") :] for k, _ in internals.meta(self.repo).scan("manifest/")
        } == set(self.states)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def versions_load_and_logs_follow_first_parents(self) -> None:
        for version, state in self.states.items():
            assert self.repo.load(version) == dict(sorted(state.items())), version
        for chain, head in self.heads.items():
            assert self.repo.head(chain) == head
            assert [i.manifest_id for i in self.repo.log(chain)] == self.first_parents(head)
            graph = [i.manifest_id for i in self.repo.log(chain, graph=True)]
            assert set(graph) == self.ancestors(head) and len(graph) == len(set(graph))
            assert graph[0] == head

    @invariant()
    def audit_is_clean(self) -> None:
        report = self.repo.audit()
        assert report.ok, report
        assert not report.over_counted and not report.in_flight, report


TestBranchMachine = BranchMachine.TestCase
TestBranchMachine.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class BatchedBranchMachine(BranchMachine):
    """The same model on a metadata store that takes at most 25 operations per write."""

    kind = "batched"


BatchedBranchMachine.TestCase.settings = settings(BranchMachine.TestCase.settings, max_examples=20)
TestBranchMachineBatched = BatchedBranchMachine.TestCase
