"""The command line: every command in-process through ``cli.main``, one real process, the
demo's figures and the exit codes."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import cli, errors
from statebag.cli import commands
from statebag.results import VerifyReport

from .clihelp import Run, child_env, process


@pytest.fixture
def repo_dir(run: Run, tmp_path: Path) -> str:
    """A new local repository, created by ``init`` without fsync for speed."""
    path = str(tmp_path / "repo")
    code, _, err = run("-r", path, "init", "--no-fsync")
    assert code == 0, err
    return path


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def fields_of(out: str) -> dict[str, str]:
    """The ``name  value`` rows of a command's text output (two spaces or more apart)."""
    pairs = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def flat(text: str) -> str:
    """Rich draws boxes and wraps to the terminal width; compare words on single spaces."""
    return " ".join(
        word for word in text.split() if not all(0x2500 <= ord(c) < 0x2580 for c in word)
    )


# -- init ---------------------------------------------------------------------------------------


def test_init_prints_config_and_is_idempotent(run: Run, tmp_path: Path) -> None:
    path = str(tmp_path / "r")
    first = run.json("init", "-r", path, "--no-fsync", "--avg-size", "8192", "--json")
    assert first["created"] is True
    assert first["config"]["avg_size"] == 8192 and first["config"]["fsync"] is False
    again = run.json("-r", path, "init", "--avg-size", "8192", "--no-fsync", "--json")
    assert again["created"] is False and again["config"] == first["config"]
    code, out, _ = run("-r", path, "init")  # no options: nothing to contradict
    assert code == 0 and "already exists" in out and "avg_size" in out

    code, _, err = run("-r", path, "init", "--avg-size", "32768")
    assert code == errors.ConfigError.exit_code == 6
    assert err.startswith("statebag: error: ") and "avg_size" in err


def test_init_rejects_impossible_options(run: Run, tmp_path: Path) -> None:
    code, _, err = run("-r", str(tmp_path / "r"), "init", "--inline-max", "1")
    assert code == 2 and "inline_max" in err


def test_commands_other_than_init_never_create(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    code, _, err = run("-r", str(missing), "stats")
    assert code == errors.NotFoundError.exit_code
    assert "statebag -r" in err and "init" in err
    assert not missing.exists()


# -- save and load ------------------------------------------------------------------------------


def test_save_and_load_round_trip_through_files_and_stdin(
    run: Run, repo_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = {"text": "héllo ✓", "n": 2**64 - 1, "x": 1.5, "nested": {"b": [1, None, True]}}
    code, out, err = run("-r", repo_dir, "save", "run-1", write_json(tmp_path / "s1.json", first))
    assert code == 0, err
    assert "seq 1" in out
    first_id = out.split()[1]  # the line "manifest <id>" comes first
    assert len(first_id) == 64

    second = {**first, "n": 3, "big": "word " * 2000}
    stdin = io.TextIOWrapper(io.BytesIO(json.dumps(second).encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    result = run.json("save", "run-1", "-", "-r", repo_dir, "--json")  # -r after the command
    assert result["seq"] == 2 and result["parent"] == first_id and result["chain"] == "run-1"
    assert result["nodes_written"] >= 1 and result["bytes_logical"] > 10_000

    assert run.json("-r", repo_dir, "load", "run-1") == second
    assert run.json("-r", repo_dir, "load", first_id) == first
    assert run.json("-r", repo_dir, "load", "run-1", "--fields", "n,x") == {"n": 3, "x": 1.5}

    output = tmp_path / "out.json"
    code, out, _ = run("-r", repo_dir, "load", first_id, "--output", str(output))
    assert code == 0 and out == ""
    text = output.read_text(encoding="utf-8")
    assert "héllo ✓" in text  # UTF-8, not \u escapes
    assert json.loads(text) == first
    assert list(json.loads(text)) == sorted(first)


def test_repository_from_the_environment(
    run: Run, repo_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.REPO_ENV, repo_dir)
    code, _, err = run("save", "c", write_json(tmp_path / "s.json", {"a": 1}))
    assert code == 0, err
    assert run.json("load", "c") == {"a": 1}


def test_bytes_and_non_finite_floats_in_json(run: Run, repo_dir: str, tmp_path: Path) -> None:
    with statebag.open(repo_dir) as repo:
        manifest_id = repo.save(
            "c", {"blob": b"\x00\x01\xfe\xff", "nested": [b"", b"ok"], "nan": math.nan}
        ).manifest_id
        repo.save("c", {"inf": [math.inf, -math.inf]})
    code, out, _ = run("-r", repo_dir, "load", manifest_id, "--compact")
    assert code == 0
    assert '"blob": {"$base64": "AAH+/w=="}' in out and '"nan": NaN' in out
    loaded = json.loads(out)
    assert loaded["nested"] == [{"$base64": ""}, {"$base64": "b2s="}]
    _, out, _ = run("-r", repo_dir, "load", "c")
    assert "Infinity" in out and "-Infinity" in out

    # What load writes, save reads back: the bytes stay bytes.
    dumped = tmp_path / "dumped.json"
    assert run("-r", repo_dir, "load", manifest_id, "-o", str(dumped))[0] == 0
    assert run("-r", repo_dir, "save", "copy", str(dumped))[0] == 0
    with statebag.open(repo_dir) as repo:
        state = repo.load_latest("copy")
    assert state["blob"] == b"\x00\x01\xfe\xff" and state["nested"] == [b"", b"ok"]
    assert math.isnan(state["nan"])


def test_help_documents_json_conventions_and_exit_codes(run: Run) -> None:
    code, out, _ = run("load", "--help")
    assert code == 0 and "$base64" in out and "NaN" in out and "Infinity" in out
    code, out, _ = run("--help")
    assert code == 0 and "exit codes" in out and "STATEBAG_REPO" in out
    for line in ("2    invalid input", "3    integrity", "4    conflict", "5    not found"):
        assert line in out


def test_audit_help_says_what_it_checks(run: Run) -> None:
    # audit checks presence and counts; reading the data back is verify's.
    code, out, _ = run("audit", "--help")
    text = " ".join(out.split())
    assert code == 0 and "indexed in a pack that exists" in text and "verify" in text
    assert "check every reachable node" not in text


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"), ("", "not valid")],
)
def test_save_rejects_a_file_that_is_not_a_json_object(
    run: Run, repo_dir: str, tmp_path: Path, content: str, problem: str
) -> None:
    bad = tmp_path / "bad-state.json"
    bad.write_text(content, encoding="utf-8")
    code, _, err = run("-r", repo_dir, "save", "c", str(bad))
    assert code == errors.InvalidInputError.exit_code == 2
    assert "bad-state.json" in err and problem in err
    with statebag.open(repo_dir) as repo:
        assert repo.head("c") is None


def test_save_names_a_missing_file_and_bad_base64(run: Run, repo_dir: str, tmp_path: Path) -> None:
    code, _, err = run("-r", repo_dir, "save", "c", str(tmp_path / "nowhere.json"))
    assert code == 2 and "nowhere.json" in err
    bad = write_json(tmp_path / "b64.json", {"blob": {"$base64": "not base64!"}})
    code, _, err = run("-r", repo_dir, "save", "c", bad)
    assert code == 2 and "b64.json" in err and "base64" in err


def test_save_with_a_stale_parent_is_a_conflict(run: Run, repo_dir: str, tmp_path: Path) -> None:
    state = write_json(tmp_path / "s.json", {"a": 1})
    first = run.json("-r", repo_dir, "save", "c", state, "--json")["manifest_id"]
    run.json("-r", repo_dir, "save", "c", state, "--parent", first, "--json")
    code, _, err = run("-r", repo_dir, "save", "c", state, "--parent", first)
    assert code == errors.ConflictError.exit_code == 4
    assert "statebag: error:" in err and first in err


def test_save_changed_hint_carries_other_fields_over(
    run: Run, repo_dir: str, tmp_path: Path
) -> None:
    assert (
        run("-r", repo_dir, "save", "c", write_json(tmp_path / "a.json", {"a": 1, "b": 1}))[0] == 0
    )
    second = write_json(tmp_path / "b.json", {"a": 2, "b": 2})
    assert run("-r", repo_dir, "save", "c", second, "--changed", "a")[0] == 0
    # b was named unchanged, so the parent's value is kept: the hint is trusted.
    assert run.json("-r", repo_dir, "load", "c") == {"a": 2, "b": 1}


def test_save_changed_naming_no_field_is_refused(run: Run, repo_dir: str, tmp_path: Path) -> None:
    assert run("-r", repo_dir, "save", "c", write_json(tmp_path / "a.json", {"a": 1}))[0] == 0
    second = write_json(tmp_path / "b.json", {"a": 2})
    code, _, err = run("-r", repo_dir, "save", "c", second, "--changed", "aa")
    assert code == errors.InvalidInputError.exit_code == 2
    assert "'aa'" in err
    assert len(run.json("-r", repo_dir, "log", "c", "--json")) == 1


def test_load_of_missing_things_is_not_found(run: Run, repo_dir: str, tmp_path: Path) -> None:
    code, _, err = run("-r", repo_dir, "load", "no-such-chain")
    assert code == errors.NotFoundError.exit_code == 5
    assert err == "statebag: error: chain 'no-such-chain' has no version\n"
    code, _, _ = run("-r", repo_dir, "load", "0" * 64)
    assert code == 5
    run.json("-r", repo_dir, "save", "c", write_json(tmp_path / "s.json", {"a": 1}), "--json")
    code, _, err = run("-r", repo_dir, "load", "c", "--fields", "a,zzz")
    assert code == 5 and "zzz" in err


def test_missing_repository_option_is_a_usage_error(run: Run) -> None:
    code, _, err = run("stats")
    assert code == 2
    assert "-r/--repo" in err and "STATEBAG_REPO" in err


# -- log and diff -------------------------------------------------------------------------------


def test_log_newest_first_table_and_json(run: Run, repo_dir: str, tmp_path: Path) -> None:
    ids = []
    for step in range(3):
        state = write_json(tmp_path / f"s{step}.json", {"step": step, "pad": "x" * step})
        ids.append(run.json("-r", repo_dir, "save", "c", state, "--json")["manifest_id"])

    rows = run.json("-r", repo_dir, "log", "c", "--json")
    assert [row["manifest_id"] for row in rows] == ids[::-1]
    assert [row["seq"] for row in rows] == [3, 2, 1]
    assert {row["chain"] for row in rows} == {"c"}
    assert set(rows[0]) == {
        "manifest_id",
        "chain",
        "parent",
        "parents",
        "seq",
        "created_at",
        "meta",
        "bytes_logical",
    }
    assert rows[0]["parent"] == ids[1] and rows[-1]["parent"] is None
    assert rows[0]["created_at"].endswith("+00:00") and rows[0]["meta"] is None
    assert all(isinstance(row["bytes_logical"], int) for row in rows)
    assert len(run.json("-r", repo_dir, "log", "c", "--json", "--limit", "2")) == 2

    code, out, _ = run("-r", repo_dir, "log", "c")
    assert code == 0
    shorts = [manifest_id[:12] for manifest_id in ids]
    positions = [out.index(short) for short in shorts]
    assert positions == sorted(positions, reverse=True)  # newest first
    assert ids[0] not in out  # the table shows short ids

    code, _, err = run("-r", repo_dir, "log", "nothing-here")
    assert code == 5 and "nothing-here" in err


def test_meta_given_to_save_shows_in_log(run: Run, repo_dir: str, tmp_path: Path) -> None:
    state = write_json(tmp_path / "s.json", {"a": 1})
    code, _, err = run("-r", repo_dir, "save", "c", state, "--meta", '{"step": 7}')
    assert code == 0, err
    assert run.json("-r", repo_dir, "log", "c", "--json")[0]["meta"] == {"step": 7}


def test_meta_must_be_a_json_object(run: Run, repo_dir: str, tmp_path: Path) -> None:
    state = write_json(tmp_path / "s.json", {"a": 1})
    for meta in ("[1]", "{bad"):
        code, _, err = run("-r", repo_dir, "save", "c", state, "--meta", meta)
        assert code == 2 and "--meta" in err


def test_diff_by_chain_and_id(run: Run, repo_dir: str, tmp_path: Path) -> None:
    old = write_json(tmp_path / "old.json", {"keep": 1, "gone": "g" * 40, "edit": "a"})
    new = write_json(tmp_path / "new.json", {"keep": 1, "edit": "bbbb", "fresh": [1, 2, 3]})
    first = run.json("-r", repo_dir, "save", "c", old, "--json")["manifest_id"]
    second = run.json("-r", repo_dir, "save", "c", new, "--json")["manifest_id"]

    diff = run.json("-r", repo_dir, "diff", first, "c", "--json")
    assert diff["a"] == first and diff["b"] == second
    assert diff["added"] == {"fresh": 4}
    assert diff["removed"] == {"gone": 42}
    assert diff["changed"] == {"edit": [2, 5]}

    code, out, _ = run("-r", repo_dir, "diff", first, second)
    assert code == 0
    text = flat(out)
    assert first[:12] in text and second[:12] in text
    assert "+ fresh" in text and "- gone" in text and "~ edit" in text
    assert "1 added, 1 removed, 1 changed" in text

    code, out, _ = run("-r", repo_dir, "diff", "c", second)
    assert code == 0 and "no differences" in out
    code, _, _ = run("-r", repo_dir, "diff", first, "no-such-chain")
    assert code == 5


# -- verify and stats ---------------------------------------------------------------------------


def test_verify_ok_then_exit_3_after_a_pack_is_corrupted(
    run: Run, repo_dir: str, tmp_path: Path
) -> None:
    state = {"blob": bytes(range(256)) * 400, "text": "word " * 5000}
    with statebag.open(repo_dir) as repo:
        manifest_id = repo.save("c", state).manifest_id

    report = run.json("-r", repo_dir, "verify", "--json")
    assert report["ok"] is True and report["problems"] == [] and report["manifests"] == 1
    code, out, _ = run("-r", repo_dir, "verify", "c", "--read-data", "0.5")
    assert code == 0 and "ok" in out

    packs = [path for path in Path(repo_dir, "objects", "packs").rglob("*") if path.is_file()]
    assert packs
    for pack in packs:
        data = bytearray(pack.read_bytes())
        data[len(data) // 3] ^= 0x40
        pack.write_bytes(bytes(data))

    code, out, err = run("-r", repo_dir, "verify", "--read-data", "1")
    assert code == errors.IntegrityError.exit_code == 3
    assert "problem" in out and manifest_id in out
    assert err.startswith("statebag: error: verify found")
    code, out, _ = run("-r", repo_dir, "verify", manifest_id, "--read-data", "1", "--json")
    assert code == 3 and json.loads(out)["ok"] is False


def test_verify_rejects_a_fraction_out_of_range(run: Run, repo_dir: str) -> None:
    code, _, err = run("-r", repo_dir, "verify", "--read-data", "1.5")
    assert code == 2 and "fraction" in err


def test_stats_json_equals_the_api(run: Run, repo_dir: str, tmp_path: Path) -> None:
    for step in range(3):
        state = {"step": step, "body": "text " * 3000 + str(step)}
        run.json(
            "-r", repo_dir, "save", "c", write_json(tmp_path / f"{step}.json", state), "--json"
        )
    figures = run.json("-r", repo_dir, "stats", "--json")
    with statebag.open(repo_dir) as repo:
        expected = repo.stats()
    # The CLI's word for a version is "versions", in text and JSON; "manifests" stays for
    # the scripts written before.
    api = {name: getattr(expected, name) for name in expected.__struct_fields__}
    assert figures == {**api, "versions": expected.manifests}
    assert figures["versions"] == figures["manifests"] == 3 and figures["chains"] == 1
    code, out, _ = run("-r", repo_dir, "stats")
    assert code == 0 and "ratio" in out
    assert fields_of(out)["versions"] == "3" and "manifests" not in out


# -- demo ---------------------------------------------------------------------------------------


def test_demo_json_in_a_temporary_directory_it_removes(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    figures = run.json("demo", "--steps", "30", "--json", "--seed", "1")
    assert list(scratch.iterdir()) == []
    assert set(figures) >= {
        "steps",
        "versions",
        "bytes_logical",
        "bytes_stored",
        "ratio",
        "save_ms_mean",
        "save_ms_p99",
        "load_latest_ms",
        "load_first_ms",
        "verify_ok",
        "backend",
    }
    assert figures["steps"] == figures["versions"] == 30
    assert figures["verify_ok"] is True and figures["verify_problems"] == []
    assert figures["ratio"] > 1
    assert figures["ratio"] == pytest.approx(figures["bytes_logical"] / figures["bytes_stored"])
    assert figures["backend"] == statebag.backend
    assert 0 < figures["save_ms_mean"] <= figures["save_ms_p99"]
    assert figures["load_latest_ms"] > 0 and figures["load_first_ms"] > 0


def test_demo_leaves_a_repository_in_dir(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "demo"
    code, out, err = run("demo", str(target), "--steps", "30", "--quiet")
    assert code == 0, err
    text = flat(out)
    assert "statebag demo" in text and "versions" in text and "verify" in text
    assert str(target) in text
    with statebag.open(target) as repo:
        log = list(repo.log(cli.DEMO_CHAIN))
        assert len(log) == 30 and [info.seq for info in log] == list(range(30, 0, -1))
        state = repo.load(log[0].manifest_id)
        assert list(repo.chains()) == [cli.DEMO_CHAIN]
    assert isinstance(state, dict)
    assert state["scratch"]["step"] == 30
    assert len(state["attachment"]) == 2 << 20
    assert 30 <= len(state["messages"]) <= 60
    assert {message["role"] for message in state["messages"]} <= {"user", "assistant", "tool"}


def test_demo_refuses_a_repository_holding_other_chains(
    run: Run, repo_dir: str, tmp_path: Path
) -> None:
    run.json("-r", repo_dir, "save", "mine", write_json(tmp_path / "s.json", {"a": 1}), "--json")
    code, _, err = run("demo", repo_dir, "--steps", "2", "--quiet")
    assert code == errors.ConfigError.exit_code and "'mine'" in err
    code, _, err = run("-r", repo_dir, "demo", "--steps", "2")
    assert code == 2 and "DIR" in err


def test_demo_exits_3_when_verify_fails(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(self: statebag.Repository, *args: Any, **kwargs: Any) -> VerifyReport:
        return VerifyReport(ok=False, problems=["node 00ff: hash mismatch"])

    monkeypatch.setattr(statebag.Repository, "verify", failing)
    code, out, err = run("demo", "--steps", "2", "--json")
    assert code == errors.IntegrityError.exit_code
    assert json.loads(out)["verify_ok"] is False
    assert "statebag: error: verify found 1 problem" in err


# -- errors and the entry point -----------------------------------------------------------------


def test_statebag_errors_become_their_exit_code(
    run: Run, monkeypatch: pytest.MonkeyPatch, repo_dir: str
) -> None:
    def fail(_args: object) -> int:
        raise errors.BackendError("pack 00ff could not be read", retryable=True)

    monkeypatch.setattr(commands, "cmd_stats", fail)
    code, _, err = run("-r", repo_dir, "stats")
    assert code == errors.BackendError.exit_code == 7
    assert err == "statebag: error: pack 00ff could not be read\n"


def test_usage_errors_exit_2(run: Run) -> None:
    assert run("no-such-command")[0] == 2
    assert run("-r", "x", "log")[0] == 2  # CHAIN missing
    assert run("demo", "--steps", "0")[0] == 2


def test_version(run: Run) -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"statebag {statebag.__version__}"


def test_a_real_process(tmp_path: Path) -> None:
    env = child_env(**{cli.REPO_ENV: str(tmp_path / "repo")})

    def statebag_cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return process(*argv, env=env, stdin=stdin, timeout=120)

    assert statebag_cli("init", "--no-fsync").returncode == 0
    saved = statebag_cli("save", "c", "-", "--json", stdin='{"a": [1, "two"]}')
    assert saved.returncode == 0, saved.stderr
    loaded = statebag_cli("load", json.loads(saved.stdout)["manifest_id"])
    assert loaded.returncode == 0 and json.loads(loaded.stdout) == {"a": [1, "two"]}
    missing = statebag_cli("load", "nope")
    assert missing.returncode == 5
    assert missing.stderr == "statebag: error: chain 'nope' has no version\n"
