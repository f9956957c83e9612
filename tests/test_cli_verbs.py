"""The commands a newcomer was missing and the fixes to what tripped them: ``chains``,
``delete``, ``pin``/``unpin``, ``hold`` and ``merge-base`` in real processes (``--json``
parsed, every documented exit code, the repository checked after each), id prefixes
wherever a version is named, ``save -q``, errors in the command line's own words,
``memory://`` and case-insensitive schemes, and ``log`` on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import statebag
import statebag.opening
from statebag import Repository, errors, keys
from statebag.meta import Put

from . import internals
from .clihelp import Run, child_env, process


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """main: three versions; side: forked from main's second, one save of its own;
    lone: one version, sharing nothing with the others."""
    where = tmp_path / "repo"
    with statebag.open(where, fsync=False) as repo:
        for step in range(3):
            repo.save("main", {"step": step, "text": "t" * 600})
        repo.fork(ids(repo, "main")[1], "side")
        repo.save("side", {"step": 10, "text": "s" * 600})
        repo.save("lone", {"alone": True})
    return where


def ids(repo: Repository, chain: str) -> list[str]:
    """The chain's versions, oldest first."""
    return [info.manifest_id for info in repo.log(chain)][::-1]


def cli(path: Path, *argv: str) -> tuple[int, str, str]:
    done = process("-r", str(path), *argv)
    return done.returncode, done.stdout, done.stderr


def cli_json(path: Path, *argv: str, code: int = 0) -> Any:
    got, out, err = cli(path, *argv, "--json")
    assert got == code, err
    return json.loads(out)


# -- chains -------------------------------------------------------------------------------------


def test_chains(path: Path, tmp_path: Path) -> None:
    listed = cli_json(path, "chains")
    with statebag.open(path) as repo:
        expected = [
            {
                "chain": chain,
                "head": repo.head(chain),
                "seq": repo.info(repo.head(chain) or "").seq,
                "created_at": repo.info(repo.head(chain) or "").created_at.isoformat(),
            }
            for chain in ("lone", "main", "side")
        ]
    assert listed == expected
    code, out, _ = cli(path, "chains")
    assert code == 0 and all(chain in out for chain in ("lone", "main", "side"))
    code, _, err = cli(tmp_path / "nothing", "chains")
    assert code == errors.NotFoundError.exit_code and "init" in err


# -- delete -------------------------------------------------------------------------------------


def test_delete_versions(path: Path) -> None:
    with statebag.open(path) as repo:
        main = ids(repo, "main")
    old = main[0]

    rehearsed = cli_json(path, "delete", old[:12], "--dry-run")
    assert rehearsed == {"dry_run": True, "deleted": [old], "already_deleted": []}
    with statebag.open(path) as repo:
        assert repo.info(old).manifest_id == old  # still there

    assert cli_json(path, "delete", old[:12]) == {
        "dry_run": False,
        "deleted": [old],
        "already_deleted": [],
    }
    with statebag.open(path) as repo, pytest.raises(errors.NotFoundError):
        repo.info(old)
    again = cli_json(path, "delete", old)
    assert again == {"dry_run": False, "deleted": [], "already_deleted": [old]}
    code, _, err = cli(path, "delete", old[:12])  # a prefix names stored versions only
    assert code == errors.NotFoundError.exit_code and old[:12] in err


def test_delete_failures_delete_nothing(path: Path) -> None:
    with statebag.open(path) as repo:
        main = ids(repo, "main")
        repo.pin(main[0])
        repo.fork(main[1], "pending")  # no save of its own yet: main[1] heads it
    cases = [
        ([main[2]], errors.ConflictError.exit_code, ["head of chain 'main'", "--chain main"]),
        ([main[0]], errors.ConflictError.exit_code, ["pinned"]),
        ([main[1]], errors.ConflictError.exit_code, ["forked"]),  # side's fork point
        (["main"], errors.InvalidInputError.exit_code, ["names a chain", "--chain"]),
        (["0" * 12], errors.NotFoundError.exit_code, ["0" * 12]),
        ([main[0][:6]], errors.InvalidInputError.exit_code, ["at least 8"]),
    ]
    for refs, code, words in cases:
        got, out, err = cli(path, "delete", *refs)
        assert got == code and out == "", (refs, err)
        assert all(word in err for word in words), (refs, err)
    # A deletable version, then one only the delete itself finds it cannot delete (a fork
    # point): the rehearsal fails first, so neither goes.
    with statebag.open(path) as repo:
        repo.unpin(main[0])
    got, _, err = cli(path, "delete", main[0], main[1])
    assert got == errors.ConflictError.exit_code and "forked" in err, err
    with statebag.open(path) as repo:
        assert ids(repo, "main") == main


def test_delete_chain(path: Path) -> None:
    assert cli_json(path, "delete", "--chain", "side", "--dry-run") == {
        "dry_run": True,
        "chains": {"side": 1},
    }
    with statebag.open(path) as repo:
        assert repo.head("side") is not None
    assert cli_json(path, "delete", "--chain", "side") == {"dry_run": False, "chains": {"side": 1}}
    with statebag.open(path) as repo:
        assert repo.head("side") is None and list(repo.chains()) == ["lone", "main"]
    code, _, err = cli(path, "delete", "--chain", "ghost")
    assert code == errors.NotFoundError.exit_code and "'ghost'" in err


# -- pin, unpin, hold ---------------------------------------------------------------------------


def test_pin_and_unpin(path: Path) -> None:
    with statebag.open(path) as repo:
        old = ids(repo, "main")[0]
    assert cli_json(path, "pin", old[:10]) == {"pinned": [old]}
    assert cli(path, "delete", old)[0] == errors.ConflictError.exit_code
    assert cli_json(path, "unpin", old[:10]) == {"unpinned": [old]}
    assert cli_json(path, "delete", old)["deleted"] == [old]
    for verb in ("pin", "unpin"):
        assert cli(path, verb, "ghost")[0] == errors.NotFoundError.exit_code
        assert cli(path, verb, "abc")[0] == errors.InvalidInputError.exit_code  # too short


def test_hold_keeps_a_version_from_retention(path: Path) -> None:
    with statebag.open(path) as repo:
        old = ids(repo, "main")[0]
    assert cli_json(path, "hold", old[:8], "1h") == {"manifest_id": old, "seconds": 3600.0}
    report = cli_json(path, "gc", "--keep-last", "1", "--chain", "main", "--grace", "0")
    assert report["versions_deleted"] == 1  # main's middle version; the held one stays
    with statebag.open(path) as repo:
        assert repo.info(old).manifest_id == old
    code, _, err = cli(path, "hold", old, "soon")
    assert code == errors.InvalidInputError.exit_code and "duration" in err
    assert cli(path, "hold", "f" * 64, "1h")[0] == errors.NotFoundError.exit_code


# -- merge-base ---------------------------------------------------------------------------------


def test_merge_base(path: Path) -> None:
    with statebag.open(path) as repo:
        *_, fork_point, head = ids(repo, "main")
        side = repo.head("side") or ""
    assert cli_json(path, "merge-base", "main", side[:9]) == {
        "base": fork_point,
        "versions": [head, side],
    }
    code, out, _ = cli(path, "merge-base", "side", "main")
    assert code == 0 and out == fork_point + "\n"
    none = cli_json(path, "merge-base", "main", "lone", code=errors.NotFoundError.exit_code)
    assert none["base"] is None
    code, out, err = cli(path, "merge-base", "main", "lone")
    assert code == errors.NotFoundError.exit_code and out == "" and "no ancestor" in err
    assert cli(path, "merge-base", "main", "ghost")[0] == errors.NotFoundError.exit_code


# -- save -q and --json -------------------------------------------------------------------------


def test_save_quiet_prints_the_id_alone(path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"step": 4, "text": "u"}')
    code, out, err = cli(path, "save", "main", str(state), "-q")
    assert code == 0, err
    with statebag.open(path) as repo:
        assert out == (repo.head("main") or "") + "\n"
    saved = cli_json(path, "save", "main", str(state))
    assert saved["chain"] == "main" and saved["seq"] == 5 and len(saved["manifest_id"]) == 64
    code, _, err = cli(path, "save", "main", str(state), "-q", "--json")
    assert code == 2 and "not allowed" in err


def test_msgpack_state_files_round_trip(run: Run, path: Path, tmp_path: Path) -> None:
    packed = tmp_path / "state.msgpack"
    code, _, err = run("-r", str(path), "load", "main", "-o", str(packed))
    assert code == 0, err
    with statebag.open(path) as repo:
        assert statebag.codec.decode(packed.read_bytes()) == repo.load_latest("main")
    code, out, err = run("-r", str(path), "save", "copy", str(packed), "-q")
    assert code == 0, err
    with statebag.open(path) as repo:
        assert repo.load(out.strip()) == repo.load_latest("main")
    packed.write_bytes(b"\xc1")
    code, _, err = run("-r", str(path), "save", "copy", str(packed))
    assert code == 2 and "not valid MessagePack" in err


# -- id prefixes --------------------------------------------------------------------------------


def test_id_prefixes_unique_ambiguous_too_short(run: Run, path: Path) -> None:
    with statebag.open(path) as repo:
        main = ids(repo, "main")
        first = repo.load(main[0])
        # Two made-up versions whose ids start like main's first: only their keys exist,
        # which is all a prefix lookup reads.
        # Their 11th digit differs from main's first, so that 11 characters tell them apart.
        digits = [c for c in "0123456789abcdef" if c != main[0][10]]
        twins = [main[0][:10] + c * 54 for c in digits[:2]]
        internals.meta(repo).write([Put(keys.manifest_key(bytes.fromhex(t)), b"") for t in twins])

    # Unique: the 12 characters log shows, or any unique prefix of 8 or more.
    for prefix in (main[1][:12], main[1][:8]):
        code, out, err = run("-r", str(path), "load", prefix)
        assert code == 0 and json.loads(out)["step"] == 1, err
    # Ambiguous: every candidate listed, nothing guessed.
    code, out, err = run("-r", str(path), "load", main[0][:10])
    assert code == errors.InvalidInputError.exit_code and out == ""
    assert "ambiguous" in err and all(c in err for c in (main[0], *twins))
    code, out, _ = run("-r", str(path), "load", main[0][:11])  # one more character tells
    assert code == 0 and json.loads(out) == first
    # Too short.
    code, _, err = run("-r", str(path), "load", main[0][:7])
    assert code == errors.InvalidInputError.exit_code and "at least 8" in err
    # Wherever a version is named.
    state = path.parent / "state.json"
    state.write_text('{"step": 1}')
    for argv in (
        ["diff", main[1][:12], "main"],
        ["verify", main[1][:12]],
        ["fork", main[1][:12], "from-prefix"],
        ["reset", "main", main[1][:12]],
        ["save", "main", str(state), "--parent", main[1][:8]],
        ["pin", main[1][:8]],
        ["merge-base", main[1][:8], "from-prefix"],
    ):
        code, _, err = run("-r", str(path), *argv)
        assert code == 0, (argv, err)


def test_resolve_in_the_api(path: Path) -> None:
    with statebag.open(path) as repo:
        main = ids(repo, "main")
        assert repo.resolve(main[0]) == main[0]
        assert repo.resolve(main[0][:8]) == main[0]
        assert repo.resolve("main") == main[2]
        # A chain of that name wins over an id prefix; a longer prefix still finds the id.
        repo.save(main[0][:8], {"chain": "named like a prefix"})
        assert repo.resolve(main[0][:8]) == repo.head(main[0][:8])
        assert repo.resolve(main[0][:9]) == main[0]
        with pytest.raises(errors.InvalidInputError, match="at least 8") as short:
            repo.resolve("abc", field="ID")
        assert short.value.path == "ID"
        with pytest.raises(errors.NotFoundError):
            repo.resolve("0123456789")


# -- errors in the command line's words ---------------------------------------------------------


def test_errors_name_the_command_lines_arguments(run: Run, path: Path) -> None:
    with statebag.open(path) as repo:
        repo.fork("main", "a")
        repo.fork("main", "b")
        repo.save("a", {"step": "from a"})
        repo.save("b", {"step": "from b"})
    code, _, err = run("-r", str(path), "merge", "main", "a", "b")
    assert code == errors.ConflictError.exit_code
    assert "--on-conflict last_wins" in err and "on_conflict=" not in err
    assert "step" in err and "Nothing was written" in err

    code, _, err = run("-r", str(path), "fork", "main", "")
    assert code == 2 and err.startswith("statebag: error: NEW must be") and "new_chain" not in err
    code, _, err = run("-r", str(path), "merge", "main", "a", "a")
    assert code == 2 and "BRANCH #2" in err and "branches[" not in err
    state = path.parent / "state.json"
    state.write_text("{}")
    code, _, err = run("-r", str(path), "save", "", str(state), "--json")
    assert code == 2 and "CHAIN must be" in err


# -- repository URLs ----------------------------------------------------------------------------


def test_memory_repositories_are_refused_with_the_reason(run: Run) -> None:
    for argv in (["init"], ["stats"], ["chains"]):
        code, out, err = run("-r", "memory://x", *argv)
        assert code == 2 and out == ""
        assert "lives only as long as the process" in err and "--repo" in err


def test_url_schemes_are_case_insensitive(run: Run, path: Path) -> None:
    for scheme in ("FILE", "File", "file"):
        listed = run.json("-r", f"{scheme}://{path}", "chains", "--json")
        assert [row["chain"] for row in listed] == ["lone", "main", "side"]
    with statebag.open(f"MEMORY://case-{os.getpid()}") as repo:
        repo.save("c", {"a": 1})
    assert statebag.opening.forget_memory(f"case-{os.getpid()}")


# -- log on a terminal --------------------------------------------------------------------------


def log_on_a_terminal(path: Path, *argv: str) -> tuple[int, str, str]:
    """``statebag log`` with its stdout on a pseudo-terminal (stderr a pipe)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "statebag.cli", "-r", str(path), "log", *argv],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=child_env(COLUMNS="200"),
    ) as child:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        err = child.stderr.read().decode() if child.stderr else ""
        code = child.wait(timeout=60)
    os.close(leader)
    return code, b"".join(chunks).decode("utf-8", errors="replace"), err


def test_log_pages_on_a_terminal_only(path: Path) -> None:
    with statebag.open(path) as repo:
        for step in range(3, 30):
            repo.save("main", {"step": step})
        every = ids(repo, "main")
    assert len(every) == 30

    def shown(out: str) -> list[str]:
        """The versions whose short ids the output shows, newest first."""
        return [i for i in every[::-1] if i[:12] in out]

    code, out, err = log_on_a_terminal(path, "main")
    assert code == 0 and shown(out) == every[::-1][:20]
    assert "newest 20" in err and "-n" in err and "--all" in err
    code, out, err = log_on_a_terminal(path, "main", "-n", "5")
    assert code == 0 and shown(out) == every[::-1][:5] and err == ""
    code, out, _ = log_on_a_terminal(path, "main", "--all")
    assert code == 0 and shown(out) == every[::-1]
    piped = process("-r", str(path), "log", "main")
    assert piped.returncode == 0 and shown(piped.stdout) == every[::-1] and piped.stderr == ""
    assert len(json.loads(process("-r", str(path), "log", "main", "--json").stdout)) == 30
