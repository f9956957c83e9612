"""statebag.langgraph.StatebagSaver: the conformance suite, real graphs against LangGraph's
InMemorySaver, another process on the same repository, concurrent writes, and what a
checkpoint costs."""

from __future__ import annotations

import asyncio
import json
import operator
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, Send, interrupt

import statebag
from statebag import InvalidInputError, Repository
from statebag.langgraph import CHAIN_ROOT, StatebagSaver
from statebag.meta.memory import MemoryMetaStore
from statebag.objects.memory import MemoryObjectStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with statebag.open(str(tmp_path / "repo")) as repository:
        yield repository


@pytest.fixture
def saver(repo: Repository) -> StatebagSaver:
    return StatebagSaver(repo)


def _config(thread: str, **more: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, **more}}


# -- the conformance suite ----------------------------------------------------------------------


def _open_kind(kind: str, tmp_path: Path) -> Repository:
    """A repository of ``kind``: ``local``, ``memory``, or ``capped`` (stores supplied, the
    metadata store taking at most 25 operations per write, as a remote one caps them)."""
    if kind == "capped":
        return statebag.open(
            objects=MemoryObjectStore(), meta=MemoryMetaStore(max_batch=25), create=True
        )
    where = str(tmp_path / uuid.uuid4().hex) if kind == "local" else f"memory://{uuid.uuid4()}"
    return statebag.open(where)


@pytest.mark.parametrize("url", ["local", "memory", "capped"])
def test_the_conformance_suite_passes_in_full(tmp_path: Path, url: str) -> None:
    async def make() -> Any:
        with _open_kind(url, tmp_path) as repository:
            yield StatebagSaver(repository)

    registered = checkpointer_test(name=f"StatebagSaver-{url}")(make)
    report = asyncio.run(validate(registered))
    failures = [f for result in report.results.values() for f in result.failures]
    assert failures == []
    assert all(result.detected for result in report.results.values()), report.to_dict()
    assert report.conformance_level() == "FULL"


# -- real graphs, compared with InMemorySaver ---------------------------------------------------


def _messages(values: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(m.type, m.content) for m in values.get("messages", [])]


def _history(graph: Any, config: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a user sees of a thread: every snapshot, newest first, without the ids that
    differ from run to run (message and checkpoint ids)."""
    return [
        (
            json.dumps(
                {k: v for k, v in s.values.items() if k != "messages"}, sort_keys=True, default=str
            ),
            _messages(s.values),
            s.next,
            s.metadata.get("source") if s.metadata else None,
            s.metadata.get("step") if s.metadata else None,
            [(t.name, [i.value for i in t.interrupts]) for t in s.tasks],
        )
        for s in graph.get_state_history(config)
    ]


def _chat_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def chat(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1].content
        words = " ".join(f"{last}-{n}" for n in range(40 + len(state["messages"]) * 3))
        return {"messages": [AIMessage(words)]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    return builder.compile(checkpointer=saver)


def _both(
    repo: Repository, scenario: Callable[[BaseCheckpointSaver[Any]], list[Any]]
) -> tuple[list[Any], list[Any]]:
    return scenario(InMemorySaver()), scenario(StatebagSaver(repo))


def test_a_chat_over_many_turns_matches_in_memory_saver(repo: Repository) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        graph = _chat_graph(saver)
        config = _config("chat")
        for turn in range(25):
            graph.invoke({"messages": [HumanMessage(f"q{turn}")]}, config)
        return _history(graph, config)

    expected, got = _both(repo, scenario)
    assert len(got) == 75  # an input and two loop checkpoints per turn
    assert got == expected
    assert len(got[0][1]) == 50


def test_an_async_chat_matches_in_memory_saver(repo: Repository) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        graph = _chat_graph(saver)
        config = _config("async-chat")

        async def run() -> list[Any]:
            for turn in range(6):
                await graph.ainvoke({"messages": [HumanMessage(f"q{turn}")]}, config)
            snapshots = [s async for s in graph.aget_state_history(config)]
            return [(_messages(s.values), s.next, s.metadata["step"]) for s in snapshots]

        return asyncio.run(run())

    expected, got = _both(repo, scenario)
    assert len(got) == 18
    assert got == expected


class _Approval(TypedDict):
    request: str
    answer: str
    log: Annotated[list[str], operator.add]


def test_interrupt_and_resume_match_in_memory_saver(repo: Repository) -> None:
    def ask(state: _Approval) -> dict[str, Any]:
        answer = interrupt({"question": f"approve {state['request']}?"})
        return {"answer": answer, "log": [f"asked {state['request']}"]}

    def act(state: _Approval) -> dict[str, Any]:
        return {"log": [f"acted on {state['answer']}"]}

    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        builder = StateGraph(_Approval)
        builder.add_node("ask", ask)
        builder.add_node("act", act)
        builder.add_edge(START, "ask")
        builder.add_edge("ask", "act")
        builder.add_edge("act", END)
        graph = builder.compile(checkpointer=saver)
        config = _config("approval")
        first = graph.invoke({"request": "refund", "log": []}, config)
        assert "__interrupt__" in first
        waiting = graph.get_state(config)
        assert waiting.next == ("ask",)
        final = graph.invoke(Command(resume="yes"), config)
        return [final["log"], final["answer"], *_history(graph, config)]

    expected, got = _both(repo, scenario)
    assert got[0] == ["asked refund", "acted on yes"]
    assert got == expected


class _Outer(TypedDict):
    text: str
    trail: Annotated[list[str], operator.add]


def test_a_subgraph_with_an_interrupt_matches_in_memory_saver(repo: Repository) -> None:
    def inner_step(state: _Outer) -> dict[str, Any]:
        note = interrupt("note?")
        return {"trail": [f"inner {state['text']} {note}"]}

    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        inner = StateGraph(_Outer)
        inner.add_node("inner_step", inner_step)
        inner.add_edge(START, "inner_step")
        outer = StateGraph(_Outer)
        outer.add_node("prepare", lambda s: {"trail": ["prepared"]})
        outer.add_node("sub", inner.compile())
        outer.add_edge(START, "prepare")
        outer.add_edge("prepare", "sub")
        graph = outer.compile(checkpointer=saver)
        config = _config("subgraph")
        graph.invoke({"text": "hello", "trail": []}, config)
        paused = graph.get_state(config, subgraphs=True)
        sub_state = paused.tasks[0].state
        assert sub_state is not None and sub_state.next == ("inner_step",)
        sub_ns = sub_state.config["configurable"]["checkpoint_ns"]
        assert sub_ns.startswith("sub:")
        final = graph.invoke(Command(resume="noted"), config)
        sub_history = list(saver.list(_config("subgraph", checkpoint_ns=sub_ns)))
        return [final["trail"], len(sub_history), *_history(graph, config)]

    expected, got = _both(repo, scenario)
    assert got[0][-1] == "inner hello noted"
    assert got[1] > 0
    assert got == expected


class _FanOut(TypedDict):
    items: list[int]
    results: Annotated[list[int], operator.add]


def test_send_fan_out_matches_in_memory_saver(repo: Repository) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        builder = StateGraph(_FanOut)
        builder.add_node("plan", lambda s: {})
        builder.add_node("square", lambda s: {"results": [s["n"] ** 2]})
        builder.add_edge(START, "plan")
        builder.add_conditional_edges(
            "plan", lambda s: [Send("square", {"n": n}) for n in s["items"]], ["square"]
        )
        builder.add_edge("square", END)
        graph = builder.compile(checkpointer=saver)
        config = _config("fan-out")
        final = graph.invoke({"items": list(range(12)), "results": []}, config)
        return [sorted(final["results"]), *_history(graph, config)]

    expected, got = _both(repo, scenario)
    assert got[0] == sorted(n * n for n in range(12))
    assert got == expected


def test_time_travel_and_update_state_match_in_memory_saver(repo: Repository) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        graph = _chat_graph(saver)
        config = _config("travel")
        for turn in range(4):
            graph.invoke({"messages": [HumanMessage(f"q{turn}")]}, config)
        history = list(graph.get_state_history(config))
        # Back to the state after turn 1, and on from there: a fork inside the thread.
        earlier = next(s for s in history if len(s.values.get("messages", [])) == 4)
        forked = graph.invoke({"messages": [HumanMessage("other")]}, earlier.config)
        updated = graph.update_state(config, {"messages": [HumanMessage("edited")]})
        after = graph.invoke({"messages": [HumanMessage("last")]}, config)
        everything = list(graph.get_state_history(config))
        # Every checkpoint of both branches stays listable.
        assert {s.config["configurable"]["checkpoint_id"] for s in history} <= {
            s.config["configurable"]["checkpoint_id"] for s in everything
        }
        assert updated["configurable"]["checkpoint_id"] in {
            s.config["configurable"]["checkpoint_id"] for s in everything
        }
        return [
            _messages(forked),
            _messages(after),
            len(everything),
            [(_messages(s.values), s.metadata["source"]) for s in everything],
        ]

    expected, got = _both(repo, scenario)
    assert got[0][-2:][0] == ("human", "other")
    assert ("human", "edited") in got[1]
    assert got == expected


# -- another process ---------------------------------------------------------------------------

_LIST_SCRIPT = """
import json, sys
import statebag
from statebag.langgraph import StatebagSaver
with statebag.open(sys.argv[1]) as repo:
    saver = StatebagSaver(repo)
    if sys.argv[2] == "write":
        from langchain_core.messages import HumanMessage
        sys.path.insert(0, sys.argv[3])
        from tests.test_langgraph import _chat_graph
        graph = _chat_graph(saver)
        for turn in range(3):
            graph.invoke({"messages": [HumanMessage(f"child {turn}")]},
                         {"configurable": {"thread_id": "from-child"}})
    rows = [
        [t.config["configurable"]["thread_id"], t.checkpoint["id"], t.metadata["step"],
         [m.content for m in t.checkpoint["channel_values"].get("messages", [])],
         [list(w[:2]) for w in t.pending_writes]]
        for t in saver.list(None)
    ]
    print(json.dumps(rows))
"""


def _rows(saver: StatebagSaver) -> list[list[Any]]:
    return [
        [
            t.config["configurable"]["thread_id"],
            t.checkpoint["id"],
            t.metadata["step"],
            [m.content for m in t.checkpoint["channel_values"].get("messages", [])],
            [list(w[:2]) for w in t.pending_writes or []],
        ]
        for t in saver.list(None)
    ]


def test_another_process_sees_the_same_history_and_adds_to_it(tmp_path: Path) -> None:
    where = str(tmp_path / "shared")
    with statebag.open(where) as repo:
        saver = StatebagSaver(repo)
        graph = _chat_graph(saver)
        for turn in range(5):
            graph.invoke({"messages": [HumanMessage(f"q{turn}")]}, _config("from-parent"))
        here = _rows(saver)

    def child(mode: str) -> list[list[Any]]:
        out = subprocess.run(
            [sys.executable, "-c", _LIST_SCRIPT, where, mode, str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    assert child("read") == here
    there = child("write")
    with statebag.open(where) as repo:
        again = _rows(StatebagSaver(repo))
    assert again == there
    assert {row[0] for row in again} == {"from-parent", "from-child"}
    assert [row for row in again if row[0] == "from-parent"] == here


# -- writes --------------------------------------------------------------------------------------


def _put(saver: StatebagSaver, thread: str, values: dict[str, Any], parent: str | None = None):  # type: ignore[no-untyped-def]
    checkpoint = generate_checkpoint(channel_values=values)
    checkpoint["channel_versions"] = {k: saver.get_next_version(None, None) for k in values}
    config = _config(thread, checkpoint_ns="")
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent
    return saver.put(config, checkpoint, generate_metadata(), checkpoint["channel_versions"])


def test_concurrent_put_writes_from_threads_keep_every_write_once(saver: StatebagSaver) -> None:
    stored = _put(saver, "t", {"x": 1})
    barrier = threading.Barrier(8)

    def task(n: int) -> None:
        barrier.wait()
        for _ in range(3):  # the same task's writes again: idempotent per (task, index)
            saver.put_writes(stored, [(f"ch{i}", f"{n}-{i}") for i in range(5)], f"task-{n}")

    threads = [threading.Thread(target=task, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = saver.get_tuple(stored)
    assert found is not None and found.pending_writes is not None
    assert sorted(found.pending_writes) == sorted(
        (f"task-{n}", f"ch{i}", f"{n}-{i}") for n in range(8) for i in range(5)
    )


def test_special_channels_replace_and_regular_writes_keep_their_first_value(
    saver: StatebagSaver,
) -> None:
    from langgraph.checkpoint.serde.types import ERROR

    stored = _put(saver, "t", {"x": 1})
    saver.put_writes(stored, [("ch", "first"), (ERROR, "boom")], "task")
    saver.put_writes(stored, [("ch", "second"), (ERROR, "boom again")], "task")
    found = saver.get_tuple(stored)
    assert found is not None
    assert sorted(found.pending_writes or []) == [
        ("task", "__error__", "boom again"),
        ("task", "ch", "first"),
    ]


def test_a_write_larger_than_a_record_round_trips(saver: StatebagSaver) -> None:
    stored = _put(saver, "t", {"x": 1})
    big = bytes(range(256)) * 5000  # 1.28 MB: split over several records
    saver.put_writes(stored, [("blob", big), ("small", 1)], "task")
    found = saver.get_tuple(stored)
    assert found is not None
    assert found.pending_writes == [("task", "blob", big), ("task", "small", 1)]


def test_writes_may_come_before_their_checkpoint(saver: StatebagSaver) -> None:
    checkpoint = generate_checkpoint(channel_values={"x": 1})
    config = _config("early", checkpoint_ns="", checkpoint_id=checkpoint["id"])
    saver.put_writes(config, [("ch", "v")], "task")
    assert saver.get_tuple(config) is None
    saver.put(_config("early", checkpoint_ns=""), checkpoint, generate_metadata(), {"x": 1})
    found = saver.get_tuple(config)
    assert found is not None and found.pending_writes == [("task", "ch", "v")]


# -- what it stores ------------------------------------------------------------------------------


def _history_messages(count: int) -> list[BaseMessage]:
    return [
        (HumanMessage if n % 2 == 0 else AIMessage)(
            " ".join(f"word{(n * 7 + k) % 997}" for k in range(150))
        )
        for n in range(count)
    ]


def test_a_grown_history_stores_about_its_new_messages(repo: Repository) -> None:
    saver = StatebagSaver(repo)
    messages = _history_messages(200)
    first = _put(saver, "t", {"messages": messages, "topic": "x" * 2000})
    before = repo.stats().bytes_stored
    added = _history_messages(202)[200:]
    second = _put(
        saver,
        "t",
        {"messages": messages + added, "topic": "x" * 2000},
        parent=first["configurable"]["checkpoint_id"],
    )
    grown = repo.stats().bytes_stored - before
    whole = len(json.dumps([m.content for m in messages + added]))
    new = len(json.dumps([m.content for m in added]))
    # The new messages, the chunk they were appended to, an index node and a fields node;
    # never the whole history again (it is 100x the new messages).
    assert grown < whole / 8, (grown, whole, new)
    # An unchanged state costs a fields node and a manifest, nothing per message.
    before = repo.stats().bytes_stored
    _put(
        saver,
        "t",
        {"messages": messages + added, "topic": "x" * 2000},
        parent=second["configurable"]["checkpoint_id"],
    )
    assert repo.stats().bytes_stored - before < 2000
    found = saver.get_tuple(second)
    assert found is not None
    assert [m.content for m in found.checkpoint["channel_values"]["messages"]] == [
        m.content for m in messages + added
    ]


def test_a_checkpoint_is_found_by_id_without_listing_the_thread(
    saver: StatebagSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = [_put(saver, "t", {"x": n}) for n in range(5)]

    def no_scans(**_: Any) -> Iterator[str]:
        raise AssertionError("the thread was listed")

    monkeypatch.setattr(saver.repo, "chains", no_scans)
    for n, config in enumerate(stored):
        found = saver.get_tuple(config)
        assert found is not None and found.checkpoint["channel_values"] == {"x": n}


def test_delete_thread_and_gc_free_what_the_thread_stored(repo: Repository) -> None:
    saver = StatebagSaver(repo)
    graph = _chat_graph(saver)
    for turn in range(4):
        graph.invoke({"messages": [HumanMessage(f"q{turn}")]}, _config("gone"))
    graph.invoke({"messages": [HumanMessage("kept")]}, _config("kept"))
    saver.delete_thread("gone")
    assert list(saver.list(_config("gone"))) == []
    assert all(not c.startswith(CHAIN_ROOT + "gone/") for c in repo.chains())
    report = repo.gc(grace=0)
    assert report.nodes_freed > 0
    assert repo.audit().ok
    kept = saver.get_tuple(_config("kept"))
    assert kept is not None and kept.checkpoint["channel_values"]["messages"][-1].content


def test_prune_keep_latest_then_gc_keeps_the_latest_loadable(repo: Repository) -> None:
    saver = StatebagSaver(repo)
    graph = _chat_graph(saver)
    for turn in range(5):
        graph.invoke({"messages": [HumanMessage(f"q{turn}")]}, _config("p"))
    latest = saver.get_tuple(_config("p"))
    saver.prune(["p"])
    repo.gc(grace=0)
    assert [t.checkpoint["id"] for t in saver.list(_config("p"))] == [latest.checkpoint["id"]]  # type: ignore[union-attr]
    assert graph.get_state(_config("p")).values["messages"][-1].content
    assert repo.verify().ok


def test_bad_input_is_refused_by_name(saver: StatebagSaver) -> None:
    with pytest.raises(InvalidInputError) as info:
        saver.put_writes(_config("t", checkpoint_ns=""), [("ch", 1)], "task")
    assert info.value.path == "config.configurable.checkpoint_id"
    checkpoint = generate_checkpoint(checkpoint_id="x" * 200)
    with pytest.raises(InvalidInputError) as info:
        saver.put(_config("t", checkpoint_ns=""), checkpoint, generate_metadata(), {})
    assert info.value.path == "checkpoint_id"
    assert list(saver.list(None)) == []
    with pytest.raises(InvalidInputError) as info:
        saver.prune(["t"], strategy="everything")
    assert info.value.path == "strategy"
    with pytest.raises(InvalidInputError) as info:
        StatebagSaver("state-repo")  # type: ignore[arg-type]
    assert info.value.path == "repo"


def test_long_and_odd_thread_ids_and_namespaces(saver: StatebagSaver) -> None:
    for thread in ("a/b", "%2F", "#x", "t" * 300, "emoji \u202e \U0001f600"):
        for ns in ("", "node:1|sub:2", "n" * 200):
            checkpoint = generate_checkpoint(channel_values={"who": [thread, ns]})
            config = _config(thread, checkpoint_ns=ns)
            stored = saver.put(config, checkpoint, generate_metadata(), {"who": 1})
            found = saver.get_tuple(config)
            assert found is not None and found.config == stored
            assert found.checkpoint["channel_values"]["who"] == [thread, ns]
        assert len(list(saver.list(_config(thread)))) == 3


def test_the_core_does_not_import_langgraph() -> None:
    # Every core module by its file (pkgutil.walk_packages would import the adapter's
    # package itself to walk into it).
    core = sorted(
        ".".join(("statebag", *path.relative_to(ROOT / "src" / "statebag").with_suffix("").parts))
        for path in (ROOT / "src" / "statebag").rglob("*.py")
        if "langgraph" not in path.parts and path.stem != "__main__"
    )
    assert "statebag.repository" in core and len(core) > 40
    code = (
        "import sys, importlib\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name.removesuffix('.__init__'))\n"
        "roots = ('langgraph', 'langchain_core')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in roots))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_a_put_racing_the_deletion_of_its_parent_reads_again(
    saver: StatebagSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = _put(saver, "t", {"x": 1})
    parent_id = parent["configurable"]["checkpoint_id"]
    save = saver.repo.save
    calls: list[str] = []

    def save_after_the_parent_went(chain: str, state: Any, **options: Any) -> Any:
        if not calls:  # the parent's chain is deleted between the put's reads and its save
            saver.delete_thread("t")
        calls.append(chain)
        return save(chain, state, **options)

    monkeypatch.setattr(saver.repo, "save", save_after_the_parent_went)
    child = _put(saver, "t", {"x": 2}, parent=parent_id)
    assert len(calls) == 2  # the first save lost its race with the delete and was retried
    found = saver.get_tuple(child)
    assert found is not None and found.checkpoint["channel_values"] == {"x": 2}
    assert found.parent_config is not None  # LangGraph's parent id is kept as it was given
    assert saver.get_tuple(parent) is None
    assert saver.repo.audit().ok


def test_putting_a_checkpoint_id_again_replaces_it_and_keeps_its_writes(
    saver: StatebagSaver,
) -> None:
    checkpoint = generate_checkpoint(channel_values={"x": 1})
    config = _config("t", checkpoint_ns="")
    stored = saver.put(config, checkpoint, generate_metadata(step=1), {"x": 1})
    saver.put_writes(stored, [("ch", "w")], "task")
    again = {**checkpoint, "channel_values": {"x": 2}}
    assert saver.put(config, again, generate_metadata(step=2), {"x": 2}) == stored
    found = saver.get_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == {"x": 2}
    assert found.metadata["step"] == 2
    assert found.pending_writes == [("task", "ch", "w")]
    assert len(list(saver.list(None))) == 1
    assert saver.repo.stats().manifests == 1  # the replaced version was deleted
