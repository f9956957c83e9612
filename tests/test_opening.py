"""Opening: failures leave nothing behind, packs without metadata are never taken for an
empty location, and read-only repositories are read without a single write.

Tests run as root in CI's containers, where permission bits stop no write: a repository is
made read-only with ``chmod`` (statebag goes by the bits, not by what root may do), and the
subprocess tests drop the capabilities that let root ignore them, so that the kernel itself
refuses every write.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConfigError, InvalidInputError, NotFoundError, opening
from statebag.meta.sqlite import SQLiteMetaStore
from statebag.objects.local import LocalObjectStore

from . import internals

STATE = {"blob": bytes(range(256)) * 400, "n": 1, "doc": {"k": "v"}}


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and modification time."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def make_repo(path: Path, versions: int = 3) -> list[str]:
    with statebag.open(path, fsync=False) as repo:
        return [repo.save("c", {**STATE, "n": n}).manifest_id for n in range(versions)]


def chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        bits = stat.S_IMODE(mode)
        os.chmod(path, bits | stat.S_IWUSR if writable else bits & ~0o222)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Makes a tree read-only; gives write permission back at the end so it can be removed."""
    made: list[Path] = []

    def make(root: Path) -> None:
        chmod_tree(root, writable=False)
        made.append(root)

    yield make
    for root in made:
        chmod_tree(root, writable=True)


# -- init and open failures ---------------------------------------------------------------------


def test_init_under_a_regular_file_names_it(tmp_path: Path, run: Any) -> None:
    (tmp_path / "file").write_text("x")
    before = tree(tmp_path)
    for target in (tmp_path / "file", tmp_path / "file" / "sub" / "repo"):
        code, _, err = run("-r", str(target), "init")
        assert code == ConfigError.exit_code, err
        assert f"{tmp_path / 'file'} exists and is not a directory" in err
        with pytest.raises(ConfigError):
            statebag.open(target)
    assert tree(tmp_path) == before


def test_init_under_a_read_only_parent_makes_nothing(
    tmp_path: Path, run: Any, read_only: Callable[[Path], None]
) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    read_only(parent)
    before = tree(tmp_path)
    for target in (parent, parent / "repo", parent / "a" / "b"):
        code, _, err = run("-r", str(target), "init")
        assert code == ConfigError.exit_code, err
        assert f"{parent} is read-only" in err
    assert tree(tmp_path) == before


def test_bad_options_are_refused_before_anything_is_made(tmp_path: Path, run: Any) -> None:
    code, _, err = run("-r", str(tmp_path / "new" / "repo"), "init", "--min-size", "0")
    assert code == InvalidInputError.exit_code and "min_size" in err
    with pytest.raises(InvalidInputError):
        statebag.open(f"file://{tmp_path}/x", min_size=0)
    with pytest.raises(InvalidInputError):
        statebag.open("memory://bad-options", min_size=0)
    with pytest.raises(NotFoundError):
        statebag.open("memory://bad-options", create=False)
    assert list(tmp_path.iterdir()) == []


def test_relative_file_url_is_refused(
    tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("-r", "file:relative", "init")
    assert code == ConfigError.exit_code and "file:///abs/path" in err, err
    assert list(tmp_path.iterdir()) == []
    # A directory of that name is still reachable as a path.
    with statebag.open("./file:relative", fsync=False) as repo:
        repo.save("c", {"a": 1})
    assert (tmp_path / "file:relative" / "meta.sqlite").is_file()


@pytest.mark.parametrize("step", ["load_or_create_config", "FileLiveness"])
def test_a_failed_open_removes_what_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A failure before the configuration is written, and one after everything but the
    handle was made."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("injected")

    monkeypatch.setattr(opening, step, fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "a" / "b" / "repo", empty):
        with pytest.raises(ConfigError, match="injected"):
            statebag.open(path)
    assert list(tmp_path.iterdir()) == [empty]
    assert list(empty.iterdir()) == []
    if step == "load_or_create_config":
        with pytest.raises(ConfigError, match="injected"):
            statebag.open("memory://failed-open")
        assert not opening.forget_memory("failed-open")  # its stores were dropped


def test_a_failed_open_keeps_a_repository_that_existed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(tmp_path / "repo", versions=1)
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match="contradicts"):
        statebag.open(tmp_path / "repo", inline_max=64)
    assert set(tree(tmp_path)) == set(before)
    with statebag.open(tmp_path / "repo") as repo:
        assert repo.load(repo.head("c") or "")["n"] == 0


# -- packs without metadata -----------------------------------------------------------------------


def drop_metadata(path: Path) -> None:
    for name in ("meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()


def test_open_and_init_refuse_packs_without_metadata(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "repo"
    make_repo(path)
    drop_metadata(path)
    before = tree(tmp_path)
    for create in (True, False):
        with pytest.raises(ConfigError) as info:
            statebag.open(path, create=create)
        assert "rebuild" in str(info.value) and str(path) in str(info.value)
    for argv in (["init"], ["log", "c"], ["audit", "--repair"]):
        code, _, err = run("-r", str(path), *argv)
        assert code == ConfigError.exit_code and "rebuild" in err, (argv, err)
    assert tree(tmp_path) == before


def test_open_refuses_emptied_metadata(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    make_repo(path)
    with sqlite3.connect(path / "meta.sqlite") as db:
        db.execute("DELETE FROM kv")
        db.execute("DELETE FROM counters")
    db.close()
    with pytest.raises(ConfigError, match="rebuild"):
        statebag.open(path)
    with sqlite3.connect(path / "meta.sqlite") as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    db.close()


def test_memory_repository_without_its_config_is_refused() -> None:
    url = "memory://config-lost"
    try:
        with statebag.open(url) as repo:
            repo.save("c", STATE)
            internals.meta(repo).delete("config")
        with pytest.raises(ConfigError, match="rebuild"):
            statebag.open(url)
    finally:
        opening.forget_memory("config-lost")


# -- read-only repositories ---------------------------------------------------------------------


def read_everything(repo: statebag.Repository, ids: list[str]) -> dict[str, Any]:
    return {
        "loads": [repo.load(i) for i in ids],
        "lazy": repo.load(ids[0], lazy=True)["doc"],
        "log": [info.manifest_id for info in repo.log("c")],
        "diff": repo.diff(ids[0], ids[-1]),
        "stats": repo.stats(),
        "verify": repo.verify(read_data=1.0).ok,
        "audit": repo.audit().ok,
        "gc": repo.gc(keep_last=1, grace=0, dry_run=True),
    }


def test_read_only_repository_is_read_and_never_written(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    path = tmp_path / "repo"
    ids = make_repo(path)
    with statebag.open(path) as repo:
        repo.delete(ids[0])  # garbage for a gc that would have to write
        ids = ids[1:]
        expected = read_everything(repo, ids)
    shutil.rmtree(path / "locks")
    shutil.rmtree(path / "objects" / ".tmp")
    read_only(path)
    before = tree(path)
    with statebag.open(path) as repo:
        assert internals.meta(repo).read_only  # type: ignore[attr-defined]
        assert read_everything(repo, ids) == expected
        for write in (
            lambda: repo.save("c", {"new": 1}),
            lambda: repo.gc(grace=0),
            lambda: repo.delete_chain("c"),
        ):
            with pytest.raises(ConfigError) as info:
                write()
            assert "read-only" in str(info.value)
            assert str(path / "meta.sqlite") in str(info.value)
    assert tree(path) == before


def test_read_only_repository_with_a_write_ahead_log(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    """Copied while open: its last commits are only in meta.sqlite-wal, and immutable=1
    would not see them."""
    path, copy = tmp_path / "repo", tmp_path / "copy"
    with statebag.open(path, fsync=False) as repo:
        ids = [repo.save("c", {**STATE, "n": n}).manifest_id for n in range(3)]
        shutil.copytree(path, copy)
    assert (copy / "meta.sqlite-wal").stat().st_size > 0
    read_only(copy)
    with statebag.open(copy) as repo:
        assert internals.meta(repo).read_only  # type: ignore[attr-defined]
        assert [repo.load(i)["n"] for i in ids] == [0, 1, 2]
        assert repo.head("c") == ids[-1] and repo.verify().ok
        with pytest.raises(ConfigError, match="read-only"):
            repo.save("c", {"new": 1})


def test_read_only_mount_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount may leave every write bit set: statvfs says so instead."""
    path = tmp_path / "repo"
    ids = make_repo(path, versions=1)
    real = os.statvfs

    class ReadOnlyMount:
        def __init__(self, inner: os.statvfs_result) -> None:
            self._inner = inner
            self.f_flag = inner.f_flag | os.ST_RDONLY

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    def statvfs(target: Any) -> Any:
        inside = os.path.abspath(target).startswith(str(path))
        return ReadOnlyMount(real(target)) if inside else real(target)

    monkeypatch.setattr(os, "statvfs", statvfs)
    with statebag.open(path) as repo:
        assert repo.load(ids[0])["n"] == 0
        with pytest.raises(ConfigError, match="read-only"):
            repo.save("c", {"new": 1})


def test_read_only_stores_refuse_writes(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", versions=1)
    store = LocalObjectStore(tmp_path / "repo" / "objects", read_only=True)
    key = next(iter(store.list("packs/")))
    assert store.get(key)
    for write in (
        lambda: store.put("packs/x", b"x"),
        lambda: store.put_if_absent("packs/x", b"x"),
        lambda: store.delete(key),
    ):
        with pytest.raises(ConfigError, match="read-only"):
            write()
    assert store.get(key)
    meta = SQLiteMetaStore(tmp_path / "repo" / "meta.sqlite", read_only=True)
    with meta:
        assert meta.get("config") is not None
        with pytest.raises(ConfigError, match="read-only"):
            meta.put("config", b"")
    with pytest.raises(ConfigError, match="no statebag metadata"):
        (tmp_path / "empty.sqlite").touch()
        SQLiteMetaStore(tmp_path / "empty.sqlite", read_only=True)


# -- the same, with permissions the kernel enforces -----------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_bypass() -> None:
    # After exec, root's capabilities come from the bounding set: without these two, file
    # permissions apply to it as to anyone.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(99)


_CLI_CALLS = """
import contextlib, io, json, sys
from statebag.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    # The CLI writes binary output (a MessagePack load) through stdout's buffer.
    out = io.TextIOWrapper(io.BytesIO())
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def cli_as_unprivileged(*calls: list[str]) -> list[tuple[int, str]]:
    """Exit code and stderr of each CLI call, run in one process whose file permissions are
    enforced by the kernel."""
    done = subprocess.run(
        [sys.executable, "-c", _CLI_CALLS, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_drop_permission_bypass if os.geteuid() == 0 else None,
    )
    if done.returncode == 99:
        pytest.skip("this process may not drop capabilities")
    assert done.returncode == 0, done.stderr
    return [(code, err) for code, err in json.loads(done.stdout)]


@pytest.fixture
def enforced() -> None:
    if sys.platform != "linux":
        pytest.skip("dropping capabilities is Linux-only")


@pytest.mark.usefixtures("enforced")
def test_read_only_repository_with_enforced_permissions(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    path, logged = tmp_path / "repo", tmp_path / "logged"
    with statebag.open(path, fsync=False) as repo:
        ids = [repo.save("c", {**STATE, "n": n}).manifest_id for n in range(3)]
        shutil.copytree(path, logged)
    unreadable = tmp_path / "no-shm"
    shutil.copytree(logged, unreadable)
    (unreadable / "meta.sqlite-shm").unlink()
    state = tmp_path / "state.json"
    state.write_text('{"new": 1}')
    for root in (path, logged, unreadable):
        read_only(root)
    before = tree(tmp_path)
    reads = [["load", ids[1]], ["log", "c"], ["diff", ids[0], "c"], ["stats"]]
    reads.append(["verify", "--read-data", "1"])
    for root in (path, logged):
        results = cli_as_unprivileged(
            *[["-r", str(root), *argv] for argv in reads],
            ["-r", str(root), "save", "c", str(state)],
        )
        assert [code for code, _ in results] == [0] * len(reads) + [ConfigError.exit_code], (
            root,
            results,
        )
        assert "read-only" in results[-1][1]
    [(code, err)] = cli_as_unprivileged(["-r", str(unreadable), "stats"])
    assert code == ConfigError.exit_code and "meta.sqlite-shm" in err, err
    assert {k: v for k, v in tree(tmp_path).items() if not k.endswith("-shm")} == {
        k: v for k, v in before.items() if not k.endswith("-shm")
    }
    assert set(tree(tmp_path)) == set(before)


@pytest.mark.usefixtures("enforced")
def test_init_where_the_kernel_refuses_names_the_path(tmp_path: Path) -> None:
    """A directory whose write bit belongs to someone else: the bits allow writes, the
    kernel refuses them to this process."""
    parent = tmp_path / "parent"
    parent.mkdir()
    if os.geteuid() == 0:
        os.chown(parent, 12345, 12345)
    else:
        os.chmod(parent, 0o555)
    try:
        results = cli_as_unprivileged(
            ["-r", str(parent / "repo"), "init"], ["-r", str(parent / "a" / "repo"), "init"]
        )
        for code, err in results:
            assert code == ConfigError.exit_code and str(parent) in err, err
        assert list(parent.iterdir()) == []
    finally:
        os.chmod(parent, 0o755)
