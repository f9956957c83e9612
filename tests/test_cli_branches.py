"""The branch commands (``fork``, ``merge``, ``reset``, ``log --graph``, ``diff`` across
branches), in-process through ``cli.main``: what they write (checked on the repository, not
only in the text), their JSON, and that bad input fails with a clear error and writes
nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import Repository, errors
from statebag.cli.graph import graph_rows, graph_text
from statebag.results import CommitResult, ManifestInfo, ResetResult

from . import internals
from .clihelp import Run

COMMIT_KEYS = set(CommitResult.__struct_fields__)
RESET_KEYS = set(ResetResult.__struct_fields__)
INFO_KEYS = set(ManifestInfo.__struct_fields__)
HEX_NAME = "cd" * 32  # a chain name shaped like a manifest id: refused everywhere

BASE = {"shared": "s" * 600, "notes": ["n0"], "config": {"mode": "a", "depth": 1}}


def open_repo(path: Path) -> Repository:
    return statebag.open(path, fsync=False)


def snapshot(repo: Repository) -> tuple[list[Any], list[Any], list[str]]:
    """Every metadata key and counter, and every stored object: what a write would change."""
    return (
        list(internals.meta(repo).scan("")),
        list(internals.meta(repo).counters("")),
        sorted(internals.objects(repo).list("")),
    )


def fields(out: str) -> dict[str, list[str]]:
    """The ``name  value`` lines of a command's human output (two spaces or more apart);
    a name given on several lines keeps every value."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        pair = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if len(pair) == 2:
            found.setdefault(pair[0], []).append(pair[1])
    return found


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A repository whose chain ``main`` holds BASE (one version)."""
    where = tmp_path / "repo"
    with open_repo(where) as repo:
        repo.save("main", BASE)
    return where


def branches(path: Path) -> dict[str, str]:
    """Fork ``a`` and ``b`` from main's head (through the API); each changes its own field
    once, and main changes ``config``. Returns the heads, and ``base``: the fork point."""
    with open_repo(path) as repo:
        base = repo.fork("main", "a")
        repo.fork("main", "b")
        repo.save("a", {**BASE, "a_only": [1, 2]})
        repo.save("b", {**BASE, "notes": ["n0", "from b"]})
        repo.save("main", {**BASE, "config": {"mode": "b", "depth": 1}})
        heads = {chain: repo.head(chain) for chain in ("main", "a", "b")}
    assert all(heads.values())
    return {"base": base, **{chain: head for chain, head in heads.items() if head}}


# -- fork ---------------------------------------------------------------------------------------


def test_fork_starts_a_chain_at_the_head_without_writing_data(run: Run, path: Path) -> None:
    with open_repo(path) as repo:
        head = repo.head("main")
        manifests = repo.stats().manifests
        objects = sorted(internals.objects(repo).list(""))

    result = run.json("-r", str(path), "fork", "main", "exec/branch-0", "--json")

    assert result == {"chain": "exec/branch-0", "source": "main", "head": head}
    with open_repo(path) as repo:
        assert repo.head("exec/branch-0") == head and repo.head("main") == head
        assert repo.stats().manifests == manifests  # no version written...
        assert sorted(internals.objects(repo).list("")) == objects  # ...and no data copied
        assert repo.load_latest("exec/branch-0") == BASE
        saved = repo.save("exec/branch-0", {**BASE, "notes": []})
        assert saved.parents == [head] and saved.seq == 2
        assert repo.head("main") == head  # the source did not move


def test_fork_from_an_older_version_by_id_and_human_output(run: Run, path: Path) -> None:
    with open_repo(path) as repo:
        first = repo.head("main")
        repo.save("main", {**BASE, "notes": ["later"]})
    assert first is not None

    code, out, err = run("-r", str(path), "fork", first, "replay")

    assert code == 0, err
    shown = fields(out)
    assert shown["chain"] == ["replay"] and shown["head"] == [first]
    assert shown["forked from"] == ["main (seq 1)"]
    with open_repo(path) as repo:
        assert repo.head("replay") == first
        assert repo.load_latest("replay") == BASE


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["main", "main"], errors.ConflictError.exit_code, ["'main'", "already exists"]),
        (["nowhere", "new"], errors.NotFoundError.exit_code, ["'nowhere'"]),
        (["ab" * 32, "new"], errors.NotFoundError.exit_code, ["ab" * 32]),
        (["main", HEX_NAME], errors.InvalidInputError.exit_code, [HEX_NAME, "manifest id"]),
        (["main", "bad\nname"], errors.InvalidInputError.exit_code, ["control character"]),
    ],
)
def test_fork_bad_input_fails_clearly_and_writes_nothing(
    run: Run, path: Path, argv: list[str], code: int, words: list[str]
) -> None:
    with open_repo(path) as repo:
        before = snapshot(repo)
    got, out, err = run("-r", str(path), "fork", *argv, "--json")
    assert got == code and out == ""
    assert err.startswith("statebag: error: ")
    for word in words:
        assert word in err
    with open_repo(path) as repo:
        assert snapshot(repo) == before


# -- merge --------------------------------------------------------------------------------------


def test_merge_three_way_json_parents_and_state(run: Run, path: Path) -> None:
    heads = branches(path)

    result = run.json("-r", str(path), "merge", "main", "a", "b", "--json")

    assert set(result) == COMMIT_KEYS
    assert result["chain"] == "main" and result["seq"] == 3
    assert result["parents"] == [heads["main"], heads["a"], heads["b"]]
    assert result["parent"] == heads["main"]
    with open_repo(path) as repo:
        assert repo.head("main") == result["manifest_id"]
        assert repo.head("a") == heads["a"] and repo.head("b") == heads["b"]  # kept
        assert repo.info(result["manifest_id"]).parents == result["parents"]
        assert repo.load_latest("main") == {
            "shared": BASE["shared"],
            "notes": ["n0", "from b"],
            "config": {"mode": "b", "depth": 1},
            "a_only": [1, 2],
        }
        assert repo.verify().ok


def test_merge_human_output_names_each_branch_head(run: Run, path: Path) -> None:
    heads = branches(path)
    code, out, err = run("-r", str(path), "merge", "main", "b", "a", "--meta", '{"by": "cli"}')
    assert code == 0, err
    shown = fields(out)
    assert shown["parent"] == [heads["main"]]
    assert shown["merged"] == [f"{heads['b']} (b)", f"{heads['a']} (a)"]  # in the order given
    assert shown["strategy"] == ["three_way"] and shown["chain"] == ["main (seq 3)"]
    with open_repo(path) as repo:
        head = repo.head("main")
        assert head == shown["manifest"][0]
        info = repo.info(head)
        assert info.parents == [heads["main"], heads["b"], heads["a"]]
        assert info.meta == {"by": "cli"}


def conflicting(path: Path) -> None:
    """Branches ``a`` and ``b`` from main, both changing ``notes`` (each appending) and
    ``config`` (``mode`` on both sides, ``depth`` on ``a`` only), ``a`` also adding ``x``."""
    with open_repo(path) as repo:
        repo.fork("main", "a")
        repo.fork("main", "b")
        config = {"mode": "c", "depth": 2}
        repo.save("a", {**BASE, "notes": ["n0", "a1"], "config": config})
        repo.save("a", {**BASE, "notes": ["n0", "a1", "a2"], "config": config, "x": 1})
        repo.save("b", {**BASE, "notes": ["n0", "b1"], "config": {"mode": "b", "depth": 1}})


def test_merge_conflict_exits_4_naming_the_fields_and_writes_nothing(run: Run, path: Path) -> None:
    conflicting(path)
    with open_repo(path) as repo:
        before = snapshot(repo)
        head = repo.head("main")

    code, out, err = run("-r", str(path), "merge", "main", "a", "b")

    assert code == errors.ConflictError.exit_code == 4 and out == ""
    assert err.startswith("statebag: error: ")
    assert "config, notes" in err  # every conflicting field, sorted
    assert ", x" not in err  # only a changed x: no conflict
    with open_repo(path) as repo:
        assert snapshot(repo) == before
        assert repo.head("main") == head

    # deep_merge resolves the appended list but config still conflicts (depth and mode).
    code, _, err = run("-r", str(path), "merge", "main", "a", "b", "--strategy", "deep_merge")
    assert code == 4 and "config.mode" in err and "notes" not in err
    with open_repo(path) as repo:
        assert snapshot(repo) == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--on-conflict", "last_wins"],
            {"notes": ["n0", "b1"], "config": {"mode": "b", "depth": 1}, "x": 1},
        ),
        (
            ["--strategy", "last_wins"],
            {"notes": ["n0", "b1"], "config": {"mode": "b", "depth": 1}, "x": 1},
        ),
        (
            ["--strategy", "deep_merge", "--on-conflict", "last_wins"],
            {"notes": ["n0", "a1", "a2", "b1"], "config": {"mode": "b", "depth": 2}, "x": 1},
        ),
        (
            ["--strategy", "collect"],
            {
                "notes": [["n0", "a1", "a2"], ["n0", "b1"]],
                "config": [{"mode": "c", "depth": 2}, {"mode": "b", "depth": 1}],
                "x": [1],
            },
        ),
    ],
)
def test_merge_strategies_and_on_conflict(
    run: Run, path: Path, argv: list[str], expected: dict[str, Any]
) -> None:
    conflicting(path)
    with open_repo(path) as repo:
        parents = [repo.head(chain) for chain in ("main", "a", "b")]

    result = run.json("-r", str(path), "merge", "main", "a", "b", *argv, "--json")

    assert result["parents"] == parents
    with open_repo(path) as repo:
        assert repo.head("main") == result["manifest_id"]
        assert repo.load_latest("main") == {"shared": BASE["shared"], **expected}


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["main", "a", "--strategy", "octopus"], 2, ["--strategy", "invalid choice", "octopus"]),
        (["main", "a", "--on-conflict", "first"], 2, ["--on-conflict", "invalid choice"]),
        (["main"], 2, ["BRANCH"]),
        (["main", "ghost"], errors.NotFoundError.exit_code, ["'ghost'"]),
        (["ghost", "a"], errors.NotFoundError.exit_code, ["'ghost'"]),
        (["main", "main"], errors.InvalidInputError.exit_code, ["'main'", "target"]),
        (["main", "a", "a"], errors.InvalidInputError.exit_code, ["'a'", "twice"]),
        (["main", HEX_NAME], errors.InvalidInputError.exit_code, [HEX_NAME, "manifest id"]),
        ([HEX_NAME, "a"], errors.InvalidInputError.exit_code, [HEX_NAME, "manifest id"]),
        (["main", "a", "--meta", "[1]"], errors.InvalidInputError.exit_code, ["--meta"]),
    ],
)
def test_merge_bad_input_fails_clearly_and_writes_nothing(
    run: Run, path: Path, argv: list[str], code: int, words: list[str]
) -> None:
    branches(path)
    with open_repo(path) as repo:
        before = snapshot(repo)
    got, out, err = run("-r", str(path), "merge", *argv, "--json")
    assert got == code and out == ""
    for word in words:
        assert word in err
    with open_repo(path) as repo:
        assert snapshot(repo) == before


# -- reset --------------------------------------------------------------------------------------


def four_versions(path: Path) -> list[str]:
    with open_repo(path) as repo:
        ids = [repo.head("main")]
        for step in range(1, 4):
            ids.append(repo.save("main", {**BASE, "notes": [f"n{step}"]}).manifest_id)
    return [manifest_id for manifest_id in ids if manifest_id]


def test_reset_moves_the_head_back_and_keeps_the_discarded_readable(run: Run, path: Path) -> None:
    ids = four_versions(path)

    result = run.json("-r", str(path), "reset", "main", ids[1], "--json")

    assert set(result) == RESET_KEYS
    assert result == {
        "chain": "main",
        "head": ids[1],
        "previous": ids[3],
        "discarded": [ids[3], ids[2]],
    }
    with open_repo(path) as repo:
        assert repo.head("main") == ids[1]
        assert [info.manifest_id for info in repo.log("main")] == [ids[1], ids[0]]
        assert repo.load(ids[3])["notes"] == ["n3"]  # still readable until gc
        assert repo.load_latest("main")["notes"] == ["n1"]
        assert repo.save("main", BASE).parents == [ids[1]]


def test_reset_human_output_lists_the_discarded(run: Run, path: Path) -> None:
    ids = four_versions(path)
    code, out, err = run("-r", str(path), "reset", "main", ids[2])
    assert code == 0, err
    shown = fields(out)
    assert shown["head"] == [ids[2]] and shown["previous"] == [ids[3]]
    assert shown["discarded"] == ["1"]
    assert f"discarded {ids[3]}" in out and "until gc" in out

    # To the head itself: nothing moves, nothing is discarded.
    assert run.json("-r", str(path), "reset", "main", ids[2], "--json")["discarded"] == []
    with open_repo(path) as repo:
        assert repo.head("main") == ids[2]


def test_reset_bad_input_fails_clearly_and_writes_nothing(run: Run, path: Path) -> None:
    ids = four_versions(path)
    with open_repo(path) as repo:
        other = repo.save("other", {"x": 1}).manifest_id
        repo.fork(ids[1], "side")
        side = repo.save("side", {"y": 2}).manifest_id
        before = snapshot(repo)
    cases = [
        (["main", ids[1][:7]], errors.InvalidInputError.exit_code, [ids[1][:7], "at least 8"]),
        (["main", "nochain"], errors.NotFoundError.exit_code, ["'nochain'"]),
        (["main", other], errors.NotFoundError.exit_code, [other, "'main'"]),
        (["main", side], errors.NotFoundError.exit_code, [side]),  # a later branch of it
        (["ghost", ids[0]], errors.NotFoundError.exit_code, ["'ghost'"]),
        ([HEX_NAME, ids[0]], errors.InvalidInputError.exit_code, [HEX_NAME, "manifest id"]),
    ]
    for argv, code, words in cases:
        got, out, err = run("-r", str(path), "reset", *argv, "--json")
        assert got == code and out == "", (argv, err)
        for word in words:
            assert word in err, (argv, err)
    with open_repo(path) as repo:
        assert snapshot(repo) == before


# -- log --graph --------------------------------------------------------------------------------


def merged_history(path: Path) -> dict[str, str]:
    """main: m1; a: a1, a2 and b: b1 forked from m1; main: m2; then main merges a and b."""
    with open_repo(path) as repo:
        ids = {"m1": repo.head("main") or ""}
        repo.fork("main", "a")
        repo.fork("main", "b")
        ids["a1"] = repo.save("a", {**BASE, "a_only": 1}).manifest_id
        ids["b1"] = repo.save("b", {**BASE, "b_only": 1}).manifest_id
        ids["a2"] = repo.save("a", {**BASE, "a_only": 2}).manifest_id
        ids["m2"] = repo.save("main", {**BASE, "config": {}}).manifest_id
        ids["merge"] = repo.merge("main", ["a", "b"]).manifest_id
    return ids


def test_log_graph_draws_every_ancestor_in_lanes(run: Run, path: Path) -> None:
    ids = merged_history(path)
    with open_repo(path) as repo:
        order = list(repo.log("main", graph=True))
    assert {info.manifest_id for info in order} == set(ids.values())

    code, out, err = run("-r", str(path), "log", "main", "--graph")

    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if "*" in line]
    assert len(rows) == len(ids)  # one row per version, in the order of log(graph=True)
    for line, entry in zip(rows, order, strict=True):
        graph, text = line.split("  ", 1)
        words = text.split()
        assert graph.count("*") == 1
        assert words[0] == entry.manifest_id[:12] and words[1] == entry.chain
        assert words[2:4] == ["seq", str(entry.seq)]
        assert " ".join(words[4:]) == entry.created_at.strftime("%Y-%m-%d %H:%M:%S")
    assert ids["merge"] not in out  # short ids only
    # The merge opens two lanes, the fork point joins them again, and between the two every
    # row has its version in a lane of its own chain.
    assert lines[0].startswith("*  ") and lines[1] == "|\\ \\"
    assert lines[-2] == "|/_/" and lines[-1].split()[:2] == ["*", ids["m1"][:12]]
    lane = {row.split("  ", 1)[1].split()[1]: row.index("*") for row in rows[1:-1]}
    assert lane == {"main": 0, "a": 2, "b": 4}
    for row in rows[1:-1]:
        assert row.split("  ", 1)[0].count("|") == 2  # the two other lanes stay open

    # Without --graph: first parents only.
    rows_json = run.json("-r", str(path), "log", "main", "--json")
    assert [row["manifest_id"] for row in rows_json] == [ids["merge"], ids["m2"], ids["m1"]]


def test_log_graph_json_lists_every_ancestor_with_chain_and_parents(run: Run, path: Path) -> None:
    ids = merged_history(path)
    rows = run.json("-r", str(path), "log", "main", "--graph", "--json")
    assert all(set(row) == INFO_KEYS for row in rows)
    by_id = {row["manifest_id"]: row for row in rows}
    assert set(by_id) == set(ids.values()) and len(rows) == len(ids)
    assert by_id[ids["merge"]]["parents"] == [ids["m2"], ids["a2"], ids["b1"]]
    assert by_id[ids["a1"]]["chain"] == "a" and by_id[ids["a1"]]["parents"] == [ids["m1"]]
    assert by_id[ids["b1"]]["chain"] == "b"
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs, reverse=True) and rows[0]["manifest_id"] == ids["merge"]

    limited = run.json("-r", str(path), "log", "main", "--graph", "--json", "--limit", "2")
    assert [row["manifest_id"] for row in limited] == [row["manifest_id"] for row in rows[:2]]
    code, _, err = run("-r", str(path), "log", "ghost", "--graph")
    assert code == 5 and "'ghost'" in err


def info(name: str, chain: str, seq: int, parents: list[str]) -> ManifestInfo:
    """A log entry for drawing: ``name`` repeated into an id."""
    return ManifestInfo(
        manifest_id=(name * 64)[:64],
        chain=chain,
        parent=(parents[0] * 64)[:64] if parents else None,
        parents=[(parent * 64)[:64] for parent in parents],
        seq=seq,
        created_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        meta=None,
        bytes_logical=0,
    )


def graph_of(infos: list[ManifestInfo]) -> list[str]:
    """The graph part of each line of ``log --graph``."""
    return [graph for graph, _ in graph_rows(infos)]


def test_graph_drawing_rules() -> None:
    # An octopus merge of three branches forked from one point.
    infos = [
        info("9", "main", 5, ["6", "3", "5"]),
        info("5", "c", 4, ["4"]),
        info("6", "main", 3, ["1"]),
        info("3", "b", 2, ["1"]),
        info("4", "c", 2, ["1"]),
        info("1", "main", 1, []),
    ]
    assert graph_of(infos) == [
        "*",
        "|\\ \\",  # the merge opens a lane for each further parent
        "| | *",
        "* | |",
        "| * |",
        "| | *",
        "|/_/",  # the lanes waiting for the fork point join there
        "*",
    ]
    lines = graph_text(infos)
    assert lines[0] == "*      999999999999  main  seq 5  2030-01-02 03:04:05"
    assert lines[1] == "|\\ \\"
    assert lines[2] == "| | *  555555555555  c     seq 4  2030-01-02 03:04:05"


def test_graph_lanes_cross_and_reuse_free_slots() -> None:
    # The second merge's extra lane opens right of an open lane, crossing it ("-"), and
    # joins back across it ("_"). Parents not listed (deleted, or cut by --limit) get no
    # lane; a lane that ends leaves its slot free for the next one to open.
    infos = [
        info("9", "main", 10, ["8", "5"]),
        info("8", "main", 9, ["7", "6"]),
        info("7", "main", 8, ["4"]),
        info("6", "x", 7, ["4"]),
        info("5", "y", 6, ["3"]),
        info("4", "main", 5, ["3"]),
        info("3", "main", 4, ["2", "1"]),
        info("2", "z", 3, ["gone"]),
        info("1", "main", 2, []),
    ]
    assert graph_of(infos) == [
        "*",
        "|\\",
        "* |",
        "|-|\\",
        "* | |",
        "| | *",
        "| * |",
        "|_|/",
        "* |",
        "|/",
        "*",
        "|\\",  # slot 1, free again, is reused
        "* |",  # z's parent is not listed: its lane ends...
        "  *",  # ...and main's stays in its slot
    ]
    # A merge whose first parent was deleted: its lane ends, and the merged branch's lane
    # opens beside it rather than taking the first parent's place.
    assert graph_of([info("9", "main", 3, ["gone", "3"]), info("3", "b", 2, [])]) == [
        "*",
        " \\",
        "  *",
    ]


def test_graph_cut_by_limit_is_the_top_of_the_whole_graph() -> None:
    # Octopus merge, then a later merge of one more branch: every cut of the list draws the
    # first lines of the whole graph, lanes of parents below the cut running off the bottom.
    infos = [
        info("b", "main", 7, ["a", "8"]),
        info("8", "late", 6, ["9"]),
        info("a", "main", 6, ["9"]),
        info("9", "main", 5, ["6", "3", "5"]),
        info("5", "c", 4, ["4"]),
        info("6", "main", 3, ["1"]),
        info("3", "b", 2, ["1"]),
        info("4", "c", 2, ["1"]),
        info("1", "main", 1, []),
    ]
    whole = graph_of(infos)
    for count in range(1, len(infos)):
        top = [graph for graph, _ in graph_rows(infos[:count], cut=True)]
        assert top == whole[: len(top)], count
        assert sum("*" in line for line in top) == count
    # Cut below the octopus merge: its three lanes stay open, and the first parent's lane
    # is still the first (a branch's version is not drawn in it).
    assert [graph for graph, _ in graph_rows(infos[:5], cut=True)] == [
        "*",
        "|\\",
        "| *",
        "* |",
        "|/",
        "*",
        "|\\ \\",
        "| | *",
    ]


def normal(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def test_log_graph_limit_shows_the_top_of_the_graph(run: Run, path: Path) -> None:
    merged_history(path)
    code, whole, err = run("-r", str(path), "log", "main", "--graph")
    assert code == 0, err
    for limit in range(1, 7):
        code, out, err = run("-r", str(path), "log", "main", "--graph", "--limit", str(limit))
        assert code == 0, err
        assert normal(out) == normal(whole)[: len(out.splitlines())]
        assert sum("*" in line for line in out.splitlines()) == limit
    # Below the merge, main's first parent keeps the first lane even when cut off.
    code, out, _ = run("-r", str(path), "log", "main", "--graph", "--limit", "3")
    assert [line.split("  ", 1)[0].rstrip() for line in out.splitlines()] == [
        "*",
        "|\\ \\",
        "| * |",
        "* | |",
    ]


# -- diff across branches -----------------------------------------------------------------------


def test_diff_across_branches_by_chain_name(run: Run, path: Path) -> None:
    heads = branches(path)

    diff = run.json("-r", str(path), "diff", "a", "b", "--json")

    assert diff["a"] == heads["a"] and diff["b"] == heads["b"]
    assert set(diff["removed"]) == {"a_only"} and diff["added"] == {}
    assert set(diff["changed"]) == {"notes"}
    with open_repo(path) as repo:
        assert msgspec_diff(repo.diff(heads["a"], heads["b"])) == {
            key: diff[key] for key in ("added", "removed", "changed")
        }
    # An id on one side, a chain on the other; a fork compares equal to its fork point.
    mixed = run.json("-r", str(path), "diff", heads["base"], "main", "--json")
    assert mixed["b"] == heads["main"] and set(mixed["changed"]) == {"config"}
    with open_repo(path) as repo:
        repo.fork(heads["base"], "c")
    assert run("-r", str(path), "diff", "c", heads["base"])[1].endswith("no differences\n")
    code, _, err = run("-r", str(path), "diff", "a", "ghost")
    assert code == 5 and "'ghost'" in err


def msgspec_diff(diff: Any) -> dict[str, Any]:
    return {
        "added": diff.added,
        "removed": diff.removed,
        "changed": {name: list(sizes) for name, sizes in diff.changed.items()},
    }
