"""The bench's workloads: seeded generators of a sequence of states, and the user's own.

Each workload yields :class:`Step` objects in save order: the chain, the step's number and
the chain's state after the step, a :class:`~statebag.StateBag` that was changed in place
through its tracking views (so its dirty set says which fields changed). Every tool saves
every step; the same seed gives the same states on every run and machine.

- **agent** (:class:`AgentThread`): one chat thread: a message of 20-3,000 words appended
  each step, a scratch field rewritten, a message in the middle of the history redacted
  every 50 steps, a 1-8 MiB binary attachment edited (1-8 KiB overwritten or inserted) every
  25 steps.
- **churn** (:class:`ByteChurn`): one binary value, 1% of it rewritten per version by random
  inserts and deletes of 1 B-64 KiB.
- **chains** (:class:`ManyChains`): many small workflow states (10-50 KiB) saved round-robin,
  each step appending an event and rewriting a status; they share a workflow definition.
- **states** (:class:`StatesDir`): the user's own states, one ``.json`` or ``.msgpack`` file
  per step, in name order, as one chain.

The agent's step functions are also what the repository and gc benchmarks (``benches/``)
run, so their figures and the peers bench describe the same agent.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from blake3 import blake3

from .. import codec
from ..bag import StateBag
from ..errors import InvalidInputError

__all__ = [
    "SCALES",
    "SMALL_SAVES",
    "WORKLOADS",
    "AgentThread",
    "ByteChurn",
    "ManyChains",
    "StatesDir",
    "Step",
    "Workload",
    "agent_step",
    "builtin",
    "edit_attachment",
    "message",
    "scratch_value",
    "words",
]

KIB: Final = 1 << 10
MIB: Final = 1 << 20

WORKLOADS: Final = ("agent", "churn", "chains")
SCALES: Final = ("tiny", "small", "full")


@dataclass(frozen=True)
class Step:
    """One save: ``state`` is ``chain``'s state after step ``number`` (1-based, counted over
    the whole workload)."""

    chain: str
    number: int
    state: StateBag


class Workload(Protocol):
    """A sequence of states to save."""

    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> int:
        """How many saves :meth:`run` yields."""

    def describe(self) -> str:
        """What the states are, in a few words (for the report)."""

    def run(self) -> Iterator[Step]: ...


# ---------------------------------------------------------------------------------------------
# agent
# ---------------------------------------------------------------------------------------------

# Words for generated texts, Zipf-weighted so that texts compress roughly like prose.
_VOCABULARY_TEXT = """
the of and to a in is that it for on are as with be at by this have from or one not but what
all when we there can an your which their if do will each about how up out them then some so
these would other into has more two like see time could no make than first been its now people
made over did down only way find use may long little very after words called just where most
know get through back much before go good new write our used me man too any day same right look
think also around another came come work three must because does part even place well such here
take why things help put years different away again off went old number agent tool call result
user assistant message state context memory plan step observation error retry token model prompt
response summary function argument value request
"""
_VOCABULARY = tuple(_VOCABULARY_TEXT.split())
_CUM_WEIGHTS = tuple(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(_VOCABULARY))))

REDACT_EVERY: Final = 50  # steps 50, 100, ...
# Steps 12, 37, 62, ...: never a redaction step, so each step's changed fields are known.
ATTACH_EVERY: Final = 25
ATTACH_AT: Final = 12


def words(rng: random.Random, count: int) -> str:
    """``count`` words drawn from a Zipf-weighted vocabulary, space-separated."""
    return " ".join(rng.choices(_VOCABULARY, cum_weights=_CUM_WEIGHTS, k=count))


def message(rng: random.Random, step: int) -> dict[str, Any]:
    """A chat message of 20-3,000 words."""
    count = rng.randint(20, 3000)
    return {
        "role": ("user", "assistant", "tool")[step % 3],
        "step": step,
        "text": words(rng, count),
        "words": count,
    }


def scratch_value(rng: random.Random, step: int) -> dict[str, Any]:
    """The agent's scratch field: a plan and a to-do list, rewritten every step."""
    return {
        "step": step,
        "plan": words(rng, rng.randint(50, 400)),
        "todo": [words(rng, 8) for _ in range(rng.randint(1, 8))],
        "budget": rng.random(),
    }


def edit_attachment(rng: random.Random, data: bytes, *, max_size: int) -> bytes:
    """Overwrite 1-8 KiB somewhere, or insert as much (never growing past ``max_size``)."""
    size = rng.randint(1024, 8192)
    at = rng.randrange(len(data) - size)
    patch = rng.randbytes(size)
    if rng.random() < 0.5 or len(data) + size > max_size:
        return data[:at] + patch + data[at + size :]
    return data[:at] + patch + data[at:]


def agent_step(
    state: MutableMapping[str, Any], rng: random.Random, step: int, *, attachment_max: int
) -> bool:
    """One step of the agent on its state (a StateBag tracks what it changes): a message
    appended, the scratch field rewritten, a message redacted every REDACT_EVERY steps and
    the attachment edited every ATTACH_EVERY. True when the attachment was edited."""
    messages = state["messages"]
    messages.append(message(rng, step))
    state["scratch"] = scratch_value(rng, step)
    if step % REDACT_EVERY == 0:
        messages[len(messages) // 2]["text"] = "[redacted]"
    if step % ATTACH_EVERY == ATTACH_AT:
        state["attachment"] = edit_attachment(rng, state["attachment"], max_size=attachment_max)
        return True
    return False


def agent_state(rng: random.Random, *, attachment_min: int, attachment_max: int) -> dict[str, Any]:
    """The agent's state before its first step."""
    return {
        "messages": [message(rng, 0)],
        "scratch": scratch_value(rng, 0),
        "attachment": rng.randbytes(rng.randint(attachment_min, attachment_max)),
        "settings": {"model": "bench", "temperature": 0.2, "tools": ["search", "python"]},
    }


@dataclass(frozen=True)
class AgentThread:
    """The agent: its first state, then ``steps - 1`` agent steps, on chain ``agent``."""

    steps: int
    attachment_min: int = 1 * MIB
    attachment_max: int = 8 * MIB
    seed: int = 0
    name: str = "agent"

    def describe(self) -> str:
        return (
            f"one agent thread: a message of 20-3,000 words per step, scratch rewritten, a "
            f"redaction every {REDACT_EVERY} steps, a {_size(self.attachment_min)}-"
            f"{_size(self.attachment_max)} attachment edited every {ATTACH_EVERY}"
        )

    def run(self) -> Iterator[Step]:
        rng = random.Random(self.seed)
        bag = StateBag(
            agent_state(rng, attachment_min=self.attachment_min, attachment_max=self.attachment_max)
        )
        yield Step(self.name, 1, bag)
        for number in range(2, self.steps + 1):
            agent_step(bag, rng, number - 1, attachment_max=self.attachment_max)
            yield Step(self.name, number, bag)


# ---------------------------------------------------------------------------------------------
# churn
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteChurn:
    """One random binary value (field ``data``) of ``size`` bytes; each later version
    rewrites ``share`` of it with inserts and deletes of 1 B to ``max_edit`` at random
    places, inserts and deletes equally likely, so the size stays about the same."""

    size: int
    versions: int
    share: float = 0.01
    max_edit: int = 64 * KIB
    seed: int = 0
    name: str = "churn"

    @property
    def steps(self) -> int:
        return self.versions

    def describe(self) -> str:
        return (
            f"one {_size(self.size)} binary value, {self.share:.0%} rewritten per version by "
            f"inserts and deletes of 1 B-{_size(self.max_edit)}"
        )

    def run(self) -> Iterator[Step]:
        rng = random.Random(self.seed)
        # random.randbytes stops short of 256 MiB (it draws one int of 8 * size bits); the
        # BLAKE3 extended output of the seed is as random, of any length, and fast.
        seed = b"statebag-bench-churn" + self.seed.to_bytes(8, "little", signed=True)
        bag = StateBag({"data": blake3(seed).digest(length=self.size)})
        yield Step(self.name, 1, bag)
        for number in range(2, self.versions + 1):
            bag["data"] = self._churn(rng, bag.data["data"])
            yield Step(self.name, number, bag)

    def _churn(self, rng: random.Random, data: bytes) -> bytes:
        budget = max(1, round(self.share * len(data)))
        edits: list[tuple[int, int, bool]] = []  # (offset, length, insert)
        while budget > 0:
            length = min(budget, rng.randint(1, self.max_edit))
            edits.append((rng.randrange(len(data)), length, rng.random() < 0.5))
            budget -= length
        # All edits are placed in the old value and applied in one pass, so a version costs
        # one copy of the value however many edits it has.
        view = memoryview(data)
        pieces: list[bytes | memoryview] = []
        at = 0
        for offset, length, insert in sorted(edits):
            offset = max(offset, at)
            pieces.append(view[at:offset])
            if insert:
                pieces.append(rng.randbytes(length))
                at = offset
            else:
                at = min(len(data), offset + length)
        pieces.append(view[at:])
        return b"".join(pieces)


# ---------------------------------------------------------------------------------------------
# chains
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManyChains:
    """``chains`` workflow executions of ``steps`` steps each, saved round-robin (step 1 of
    every chain, then step 2, ...), as concurrent executions of one workflow would be. A
    state is 10-50 KiB: the workflow's definition (the same in every chain), the execution's
    input document (6-40 KiB), an event log that grows by one event per step, a status
    rewritten each step, and a result rewritten every 10 steps."""

    chains: int
    steps_per_chain: int
    seed: int = 0
    name: str = "chains"

    @property
    def steps(self) -> int:
        return self.chains * self.steps_per_chain

    def describe(self) -> str:
        return (
            f"{self.chains:,} workflow executions x {self.steps_per_chain} steps, states of "
            "10-50 KiB sharing a workflow definition, saved round-robin"
        )

    def run(self) -> Iterator[Step]:
        rng = random.Random(self.seed)
        workflow = {
            "name": "bench-workflow",
            "steps": [
                {"id": f"s{index}", "tool": words(rng, 2), "prompt": words(rng, 60)}
                for index in range(8)
            ],
        }
        bags: list[StateBag] = []
        number = 0
        for step in range(self.steps_per_chain):
            for index in range(self.chains):
                chain = f"chain-{index:04d}"
                if step == 0:
                    bags.append(StateBag(_execution(rng, workflow, index)))
                else:
                    _execution_step(bags[index], rng, step)
                number += 1
                yield Step(chain, number, bags[index])


def _execution(rng: random.Random, workflow: dict[str, Any], index: int) -> dict[str, Any]:
    words_in_input = rng.randint(6 * KIB, 40 * KIB) // 6  # about 6 bytes per word
    return {
        "workflow": workflow,
        "input": {"execution": index, "document": words(rng, words_in_input)},
        "events": [],
        "status": {"step": 0, "state": "started"},
        "result": None,
    }


def _execution_step(state: MutableMapping[str, Any], rng: random.Random, step: int) -> None:
    state["events"].append(
        {"step": step, "event": words(rng, rng.randint(5, 40)), "ms": rng.randint(1, 5000)}
    )
    state["status"] = {"step": step, "state": "running", "retries": rng.randint(0, 3)}
    if step % 10 == 0:
        state["result"] = {"step": step, "summary": words(rng, rng.randint(50, 300))}


# ---------------------------------------------------------------------------------------------
# the user's states
# ---------------------------------------------------------------------------------------------

STATE_SUFFIXES: Final = (".json", ".msgpack")


@dataclass(frozen=True)
class StatesDir:
    """The user's states: every ``.json`` (bytes as ``{"$base64": ...}``, as ``statebag
    load`` writes them) or ``.msgpack`` file of ``path``, in name order, as one chain
    ``states``. :meth:`check` reads every file before anything is written."""

    path: Path
    name: str = "states"

    @property
    def files(self) -> list[Path]:
        return sorted(
            (entry for entry in self.path.iterdir() if entry.suffix in STATE_SUFFIXES),
            key=lambda entry: entry.name,
        )

    @property
    def steps(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        return f"{self.steps:,} states from {self.path}, in name order"

    def check(self) -> None:
        """InvalidInputError naming ``--states`` or the file, unless every file holds a
        state statebag can store; nothing else may be in the directory."""
        if not self.path.is_dir():
            raise InvalidInputError(f"--states {self.path}: not a directory", path="--states")
        others = sorted(
            entry.name
            for entry in self.path.iterdir()
            if entry.suffix not in STATE_SUFFIXES or not entry.is_file()
        )
        if others:
            shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            raise InvalidInputError(
                f"--states {self.path} holds {shown}: it takes only .json and .msgpack files, "
                "one state per step",
                path="--states",
            )
        if not self.files:
            raise InvalidInputError(
                f"--states {self.path} has no .json or .msgpack file: put one state per step "
                "there, named so that name order is step order (step-0001.json, ...)",
                path="--states",
            )
        for file in self.files:
            _encoded(file)

    def run(self) -> Iterator[Step]:
        for number, file in enumerate(self.files, 1):
            yield Step(self.name, number, StateBag(_read(file)))


def _read(file: Path) -> dict[str, Any]:
    from ..cli.shared import read_state

    return read_state(str(file))


def _encoded(file: Path) -> bytes:
    state = _read(file)
    try:
        return codec.encode(state)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{file}: {exc}", path=str(file)) from exc


# ---------------------------------------------------------------------------------------------
# scales
# ---------------------------------------------------------------------------------------------


def builtin(name: str, scale: str, *, seed: int = 0) -> Workload:
    """The built-in workload ``name`` at ``scale``: ``tiny`` runs in seconds (CI), ``small``
    in minutes with every peer, ``full`` is the size the README's claims are about."""
    if name == "agent":
        if scale == "tiny":
            return AgentThread(3, attachment_min=64 * KIB, attachment_max=128 * KIB, seed=seed)
        return AgentThread(40 if scale == "small" else 300, seed=seed)
    if name == "churn":
        size, versions = {"tiny": (1 * MIB, 3), "small": (32 * MIB, 10), "full": (256 * MIB, 20)}[
            scale
        ]
        return ByteChurn(size, versions, seed=seed)
    if name == "chains":
        chains, steps = {"tiny": (2, 2), "small": (8, 8), "full": (1000, 50)}[scale]
        return ManyChains(chains, steps, seed=seed)
    raise InvalidInputError(
        f"workload must be one of {', '.join(WORKLOADS)}, not {name!r}", path="--workload"
    )


def _size(nbytes: int) -> str:
    for unit, factor in (("MiB", MIB), ("KiB", KIB)):
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor} {unit}"
    return f"{nbytes} B"


# ---------------------------------------------------------------------------------------------
# small saves: what one step costs in metadata
# ---------------------------------------------------------------------------------------------

SMALL_SAVES: Final = ("append_message", "one_field_of_10000", "edit_1k_in_64m")
"""The small saves whose metadata cost format 2 bounds (docs/FORMAT.md, "Formats")."""


def small_saves(
    seed: int, /, *, shrink: int = 1
) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """Per small save: (chain, the state before, the state after).

    - ``append_message``: one message appended to a 4.3 MB message history;
    - ``one_field_of_10000``: one field changed among 10,000 small ones;
    - ``edit_1k_in_64m``: 1 KiB overwritten inside a 64 MiB bytes value.

    ``shrink`` divides the two large values' sizes (to measure the same trees with chunk
    sizes divided alike, on the slow pure-Python chunker).
    """
    rng = random.Random(seed)
    history: list[dict[str, Any]] = []
    size = 0
    while size < 4_300_000 // shrink:
        text = words(rng, rng.randint(150, 1500))
        history.append({"role": ("user", "assistant")[len(history) % 2], "text": text})
        size += len(text)
    appended = [*history, {"role": "user", "text": words(rng, 200)}]
    fields = {f"field_{i:05d}": {"value": i, "note": words(rng, 3)} for i in range(10_000)}
    changed = {**fields, "field_04242": {"value": -1, "note": "changed"}}
    blob = rng.randbytes(64 * 2**20 // shrink)
    at = len(blob) * 31 // 64
    edited = blob[:at] + rng.randbytes(1024) + blob[at + 1024 :]
    return {
        "append_message": ("history", {"messages": history}, {"messages": appended}),
        "one_field_of_10000": ("fields", fields, changed),
        "edit_1k_in_64m": ("blob", {"data": blob}, {"data": edited}),
    }
