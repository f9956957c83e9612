"""``statebag bench`` through its command line, in subprocesses: the tiny scale of every
workload with the peers installed here, fake peers that fail, hang or write known files,
peers absent from PATH, the user's own states, the JSON report's keys, and the table's
ratios against its raw figures.

The real peers are whatever is on PATH: the checks that need one skip where it is missing
(only the restic check does), and the others assert that an installed peer ran (``ok``)
and an absent one was ``skipped``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shlex
import shutil
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import statebag
from statebag import codec
from statebag.bench.peers import PEERS
from statebag.bench.workloads import SCALES, WORKLOADS, builtin

from .clihelp import child_env, process

REPORT_KEYS = {"workload", "steps", "logical_bytes", "machine", "tools"}
TOOL_KEYS = {
    "name",
    "status",
    "settings",
    "stored_bytes",
    "save_p50_s",
    "save_p99_s",
    "restore_latest_s",
    "restore_first_s",
    "objects",
    "per_call_s",
}
FIGURES = TOOL_KEYS - {"name", "status", "settings"}
# The rows of each peer: at its defaults and, where it can be set, at 16 KiB chunks.
ROWS = {
    "statebag": ["statebag", "statebag-cli"],
    "restic": ["restic"],
    "borg": ["borg", "borg-16k"],
    "casync": ["casync", "casync-16k"],
    "bup": ["bup"],
}


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str
    seconds: float


def bench(*args: str, path: str | None = None) -> Ran:
    """``statebag bench ARGS`` in a subprocess with this statebag (``path``: its PATH)."""
    started = time.perf_counter()
    env = child_env() if path is None else child_env(PATH=path)
    done = process("bench", *args, env=env, timeout=600)
    return Ran(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def walk(directory: Path) -> tuple[int, int]:
    """Bytes and count of the regular files under ``directory``, as the test sees them."""
    sizes = [
        entry.lstat().st_size
        for entry in directory.rglob("*")
        if stat.S_ISREG(entry.lstat().st_mode)
    ]
    return sum(sizes), len(sizes)


def table_rows(out: str, workload: str) -> dict[str, list[str]]:
    """The cells of each tool's row in the markdown table of ``workload``."""
    section = out.split(f"### {workload} ")[1].split("### ")[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| tool ", "| ---")):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def check_ratio(printed: str, numerator: float, denominator: float) -> None:
    """``printed`` (``12.3x``) is numerator / denominator to the digits it shows."""
    assert printed.endswith("x"), printed
    digits = printed[:-1]
    decimals = len(digits.partition(".")[2])
    assert abs(float(digits) - numerator / denominator) <= 0.5 * 10**-decimals + 1e-9, (
        printed,
        numerator / denominator,
    )


def statuses(
    ok: set[str], failed: set[str] | None = None, peers: tuple[str, ...] = PEERS
) -> dict[str, str]:
    """The status each row of a run with ``peers`` should have: statebag's rows and the
    ``ok`` peers ok, the ``failed`` ones failed, the others skipped."""
    failed = failed or set()
    return {
        row: "ok"
        if group == "statebag" or group in ok
        else "failed"
        if group in failed
        else "skipped"
        for group in ("statebag", *peers)
        for row in ROWS[group]
    }


def check_report(report: dict[str, Any], out: str, expected: dict[str, str]) -> None:
    """The JSON report has exactly the documented keys and the ``expected`` statuses, and
    the table shows its figures, with ratios that agree with them."""
    assert set(report) == REPORT_KEYS
    assert report["steps"] >= 1 and report["logical_bytes"] > 0 and report["machine"]
    assert {tool["name"]: tool["status"] for tool in report["tools"]} == expected
    assert [tool["name"] for tool in report["tools"]] == list(expected)
    rows = table_rows(out, report["workload"])
    reference = report["tools"][0]
    for tool in report["tools"]:
        assert tool["settings"]
        if tool["status"] == "failed":
            assert set(tool) == TOOL_KEYS | {"error"} and tool["error"]
        else:
            assert set(tool) == TOOL_KEYS
        if tool["status"] != "ok":
            assert all(tool[key] is None for key in FIGURES), tool
            assert rows[tool["name"]][2:] == [tool["status"], *["-"] * 10]
            continue
        assert all(tool[key] is not None and tool[key] >= 0 for key in FIGURES), tool
        assert tool["stored_bytes"] > 0 and tool["objects"] > 0
        cells = rows[tool["name"]]
        assert cells[1:4] == [tool["settings"], "ok", f"{tool['stored_bytes']:,}"]
        check_ratio(cells[4], report["logical_bytes"], tool["stored_bytes"])
        check_ratio(cells[5], tool["stored_bytes"], reference["stored_bytes"])
        check_ratio(cells[8], tool["save_p50_s"], reference["save_p50_s"])
        assert cells[11] == f"{tool['objects']:,}"
        for cell, key in ((6, "save_p50_s"), (7, "save_p99_s"), (12, "per_call_s")):
            assert cells[cell].endswith(" ms")
            shown = float(cells[cell][:-3])
            assert abs(shown - 1000 * tool[key]) <= max(0.006, 0.006 * shown), (cell, tool)


# ---------------------------------------------------------------------------------------------
# the workloads
# ---------------------------------------------------------------------------------------------

STEPS = {
    "agent": {"tiny": 3, "small": 40, "full": 300},
    "churn": {"tiny": 3, "small": 10, "full": 20},
    "chains": {"tiny": 4, "small": 64, "full": 50_000},
}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_starts_at_every_scale(name: str, scale: str) -> None:
    """The first state of each workload at each scale (the full churn's value is 256 MiB),
    and as many steps as ``bench --help`` says."""
    workload = builtin(name, scale)
    assert workload.steps == STEPS[name][scale]
    first = next(iter(workload.run()))
    assert first.number == 1 and len(codec.encode(first.state.data)) > 1000
    if name == "churn":
        assert len(first.state.data["data"]) == {"tiny": 1, "small": 32, "full": 256}[scale] << 20


def test_workloads_are_seeded_and_change_what_they_say() -> None:
    runs = [
        [codec.encode(step.state.data) for step in builtin("churn", "tiny").run()] for _ in "ab"
    ]
    assert runs[0] == runs[1] and len(set(runs[0])) == 3
    other = [codec.encode(s.state.data) for s in builtin("churn", "tiny", seed=1).run()]
    assert other[0] != runs[0][0]
    sizes = [len(data) for data in runs[0]]  # encodings: the value and a few bytes of map
    for before, after in itertools.pairwise(sizes):
        assert abs(after - before) <= 0.01 * before + 1  # at most 1% inserted, or deleted
    chains = [(step.chain, step.number) for step in builtin("chains", "tiny").run()]
    assert chains == [("chain-0000", 1), ("chain-0001", 2), ("chain-0000", 3), ("chain-0001", 4)]


# ---------------------------------------------------------------------------------------------
# the tiny scale of every workload, with the peers installed here
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyRun:
    ran: Ran
    report: dict[str, Any]
    kept: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyRun]:
    """Each workload at tiny scale with every installed peer, its repositories kept; the
    three run at once, since most of their time is the peers' start-up."""
    root = tmp_path_factory.mktemp("tiny")

    def one(workload: str) -> TinyRun:
        kept, report = root / f"kept-{workload}", root / f"{workload}.json"
        ran = bench(
            "--workload", workload, "--scale", "tiny", "--keep", str(kept), "--json", str(report)
        )
        assert ran.code == 0, ran.err
        return TinyRun(ran, json.loads(report.read_text()), kept / workload)

    with ThreadPoolExecutor(len(WORKLOADS)) as pool:
        return dict(zip(WORKLOADS, pool.map(one, WORKLOADS), strict=True))


INSTALLED = {peer for peer in PEERS if shutil.which(peer) is not None}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_tiny_workload_with_the_installed_peers(tiny: dict[str, TinyRun], workload: str) -> None:
    run = tiny[workload]
    assert run.report["workload"] == workload
    check_report(run.report, run.ran.out, statuses(INSTALLED))
    # Every tool stored the same logical bytes; statebag's two rows hold the same versions.
    statebag_rows = run.report["tools"][:2]
    assert statebag_rows[0]["stored_bytes"] == statebag_rows[1]["stored_bytes"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_kept_repositories_are_what_was_reported(tiny: dict[str, TinyRun], workload: str) -> None:
    run = tiny[workload]
    for tool in run.report["tools"]:
        where = run.kept / tool["name"]
        if tool["status"] == "skipped":
            assert not where.exists()
            continue
        assert walk(where) == (tool["stored_bytes"], tool["objects"]), tool["name"]


def test_restic_repository_is_what_was_reported(tiny: dict[str, TinyRun]) -> None:
    if "restic" not in INSTALLED:
        pytest.skip("restic is not installed here")
    for run in tiny.values():
        restic = next(tool for tool in run.report["tools"] if tool["name"] == "restic")
        assert restic["status"] == "ok"
        stored, objects = walk(run.kept / "restic")
        assert (stored, objects) == (restic["stored_bytes"], restic["objects"])
        assert objects >= run.report["steps"] + 2  # a snapshot file per save, at least


# ---------------------------------------------------------------------------------------------
# fake peers: one that fails, one that hangs, one whose files are known, one absent
# ---------------------------------------------------------------------------------------------

FAKE_CASYNC = """\
#!{python}
# A casync that copies the file it is given into its store and writes a 100-byte index;
# every file it writes is listed in the ledger, outside the repository.
import os, shutil, sys
args = sys.argv[1:]
store = next(a for a in args if a.startswith("--store="))[len("--store="):]
index, path = [a for a in args[1:] if not a.startswith("--")]
if args[0] == "make":
    os.makedirs(store, exist_ok=True)
    blob = os.path.join(store, f"{{len(os.listdir(store))}}.blob")
    shutil.copyfile(path, blob)
    with open(index, "w") as out:
        out.write(blob.ljust(100))
    with open(os.environ["FAKE_LEDGER"], "a") as ledger:
        ledger.write(f"{{blob}} {{os.path.getsize(blob)}}\\n{{index}} 100\\n")
else:
    with open(index) as source:
        shutil.copyfile(source.read().strip(), path)
"""
FAKE_BORG = "#!/bin/sh\necho 'borg: Error: the fake repository is on fire' >&2\nexit 3\n"
# Hangs in the first workload; after that it fails at once, so the run waits out one hang.
FAKE_BUP = """\
#!/bin/sh
if [ -s {pids} ]; then echo 'bup: still stuck' >&2; exit 1; fi
echo $$ >> {pids}
exec /bin/sleep 120
"""


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, list[dict[str, Any]], Path]:
    """``--workload all --scale tiny`` with only the fakes on PATH (restic absent)."""
    root = tmp_path_factory.mktemp("fakes")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    scripts = {
        "casync": FAKE_CASYNC.format(python=sys.executable),
        "borg": FAKE_BORG,
        "bup": FAKE_BUP.format(pids=shlex.quote(str(root / "bup.pids"))),
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    os.environ["FAKE_LEDGER"] = str(root / "ledger")
    try:
        ran = bench(
            *("--workload", "all", "--scale", "tiny", "--timeout", "3"),
            *("--keep", str(root / "kept"), "--json", str(root / "report.json")),
            path=str(bin_dir),
        )
    finally:
        del os.environ["FAKE_LEDGER"]
    assert ran.code == 0, ran.err
    return ran, json.loads((root / "report.json").read_text()), root


def test_fake_peers_failing_hanging_absent(fakes: tuple[Ran, list[dict[str, Any]], Path]) -> None:
    ran, reports, _ = fakes
    assert [report["workload"] for report in reports] == list(WORKLOADS)
    for report in reports:
        check_report(report, ran.out, statuses({"casync"}, failed={"borg", "bup"}))


def test_fake_peers_are_reported_as_they_behaved(
    fakes: tuple[Ran, list[dict[str, Any]], Path],
) -> None:
    ran, reports, root = fakes
    for report in reports:
        tools = {tool["name"]: tool for tool in report["tools"]}
        assert tools["statebag"]["status"] == tools["statebag-cli"]["status"] == "ok"
        assert tools["restic"]["status"] == "skipped"
        assert set(tools["restic"]) == TOOL_KEYS and tools["restic"]["stored_bytes"] is None
        for name in ("borg", "borg-16k"):
            assert tools[name]["status"] == "failed"
            assert "exited with status 3" in tools[name]["error"]
            assert "the fake repository is on fire" in tools[name]["error"]
        assert tools["bup"]["status"] == "failed"
        if report["workload"] == WORKLOADS[0]:
            assert "did not finish within 3 s and was killed" in tools["bup"]["error"]
        else:
            assert "exited with status 1: bup: still stuck" in tools["bup"]["error"]
        for name in ("casync", "casync-16k"):
            assert tools[name]["status"] == "ok"
        assert "- borg: failed: `borg init" in ran.out
        assert "- restic: skipped: restic is not on PATH" in ran.out
    # The hung bup was killed, not left behind, and the run did not wait for it.
    (pid,) = (root / "bup.pids").read_text().split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert ran.seconds < 60


def test_fake_peer_stored_bytes_and_objects_are_exactly_its_files(
    fakes: tuple[Ran, list[dict[str, Any]], Path],
) -> None:
    _, reports, root = fakes
    written: dict[str, list[int]] = {}
    for line in (root / "ledger").read_text().splitlines():
        path, size = line.rsplit(" ", 1)
        repo = Path(path).relative_to(root / "kept")
        written.setdefault("/".join(repo.parts[:2]), []).append(int(size))
    for report in reports:
        for name in ("casync", "casync-16k"):
            tool = next(t for t in report["tools"] if t["name"] == name)
            files = written[f"{report['workload']}/{name}"]
            # One blob and one index per save: every step, and the save with nothing changed.
            assert len(files) == 2 * (report["steps"] + 1)
            assert (tool["stored_bytes"], tool["objects"]) == (sum(files), len(files))
            assert walk(root / "kept" / report["workload"] / name) == (sum(files), len(files))


# ---------------------------------------------------------------------------------------------
# --states: the user's own states
# ---------------------------------------------------------------------------------------------


def test_states_json_and_msgpack_files_with_bytes(tmp_path: Path) -> None:
    states = tmp_path / "states"
    states.mkdir()
    blob = bytes(range(256)) * 40
    first = {"step": 1, "blob": blob, "notes": ["a"] * 50}
    second = {"step": 2, "blob": blob[:5000] + b"edit" + blob[5000:], "notes": ["a"] * 51}
    third = {"step": 3, "blob": second["blob"], "notes": ["a"] * 52, "ratio": 1.5}
    encoded = {"$base64": base64.b64encode(first["blob"]).decode()}
    (states / "01.json").write_text(json.dumps({**first, "blob": encoded}))
    (states / "02.msgpack").write_bytes(msgspec.msgpack.encode(second))
    (states / "10.msgpack").write_bytes(msgspec.msgpack.encode(third))
    report_file, kept = tmp_path / "report.json", tmp_path / "kept"
    ran = bench(
        "--states", str(states), "--peers", "none", "--json", str(report_file), "--keep", str(kept)
    )
    assert ran.code == 0, ran.err
    report = json.loads(report_file.read_text())
    assert report["workload"] == "states" and report["steps"] == 3
    assert report["logical_bytes"] == sum(len(codec.encode(s)) for s in (first, second, third))
    check_report(report, ran.out, statuses(set(), peers=()))
    # Both statebag rows restored every version byte for byte (or they would have failed);
    # the kept repository holds the states as given, bytes values included.
    with statebag.open(kept / "states" / "statebag", create=False) as repo:
        versions = [info.manifest_id for info in repo.log("states")]
        assert [repo.load(v) for v in versions[::-1]] == [first, second, third, third]


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, ["--states", "no .json or .msgpack file"]),
        ({"1.json": "[1, 2]"}, ["1.json", "JSON list"]),
        ({"1.json": "{not json"}, ["1.json", "not valid JSON"]),
        ({"1.json": '{"a": 1}', "notes.txt": "x"}, ["notes.txt", ".json and .msgpack"]),
        ({"1.msgpack": b"\xc1"}, ["1.msgpack", "MessagePack"]),
    ],
    ids=["empty", "not-an-object", "bad-json", "other-file", "bad-msgpack"],
)
def test_bad_states_dir_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, files: dict[str, str | bytes], words: list[str]
) -> None:
    states = tmp_path / "states"
    states.mkdir()
    for name, content in files.items():
        target = states / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    kept, report = tmp_path / "kept", tmp_path / "report.json"
    ran = bench("--states", str(states), "--keep", str(kept), "--json", str(report))
    assert ran.code == 2, ran.err
    assert ran.out == "" and not kept.exists() and not report.exists()
    for word in words:
        assert word in ran.err, ran.err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--peers", "restic,rsync"], ["'rsync' is not a peer"]),
        (["--timeout", "0"], ["--timeout"]),
        (["--workload", "agent", "--states", "."], ["not allowed with"]),
        (["--scale", "huge"], ["invalid choice"]),
    ],
)
def test_bad_arguments_fail_before_anything_runs(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    ran = bench(*args, "--keep", str(tmp_path / "kept"))
    assert ran.code == 2 and ran.out == "" and not (tmp_path / "kept").exists()
    for word in words:
        assert word in ran.err, ran.err


def test_keep_must_be_new_or_empty(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old").write_text("x")
    ran = bench("--scale", "tiny", "--peers", "none", "--keep", str(kept))
    assert ran.code == 2 and "--keep" in ran.err and ran.out == ""
    assert [p.name for p in kept.iterdir()] == ["old"]
