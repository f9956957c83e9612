"""Four processes saving and one collecting garbage in a loop, on one SQLite repository.

The savers also reset one of their chains now and then (gc deletes what that discards) and
fork, save on, merge and delete a branch.

The savers share a pool of values, so they keep finding nodes stored by others, including
nodes whose versions retention has just deleted: the races between a save reusing a node
and the sweep freeing it happen for real. gc runs with ``grace=0``, the tightest setting.
Afterwards every live version verifies and loads what was saved, and the audit is ok.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import statebag

from . import internals

SECONDS = float(os.environ.get("STATEBAG_RACE_SECONDS", "20"))

POOL = r"""
import random
# Many values, each in few live versions: retention keeps making values garbage that a
# later save brings back, which is where a save and the sweep race.
BLOBS = [random.Random(seed).randbytes(20_000 + seed * 1000) for seed in range(40)]
HISTORIES = [[f"step {i} {k} " + "w" * (i % 50) for i in range(300)] for k in range(8)]

def state(blob, history, n, tag):
    return {"blob": BLOBS[blob], "history": HISTORIES[history], "n": n, "tag": tag}
"""

SAVER = (
    POOL
    + r"""
import json, sys, time
import statebag
from statebag import ConflictError, NotFoundError

path, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rng = random.Random(name)
committed = []
deadline = time.monotonic() + seconds
with statebag.open(path) as repo:
    step = 0
    while time.monotonic() < deadline:
        chain = rng.choice([f"{name}-a", f"{name}-b", "shared"])
        choice = [rng.randrange(40), rng.randrange(8), rng.randrange(3)]
        tag = f"{name}-{step}"
        try:
            result = repo.save(chain, state(*choice, tag))
        except ConflictError:
            continue  # the shared chain moved: fine, the next step saves again
        committed.append([result.manifest_id, *choice, tag])
        step += 1
        if chain != "shared":
            # This chain's head, which nothing may delete: it must read back whole now,
            # whatever the collector swept while the save ran.
            assert repo.load(result.manifest_id) == state(*choice, tag), tag
        if step % 5 == 0:
            # Roll the b chain back: what it discards is gc's to delete (grace 0) while
            # other savers may be reusing its nodes.
            history = [info.manifest_id for info in repo.log(f"{name}-b")]
            if len(history) > 2:
                try:
                    repo.reset(f"{name}-b", history[rng.randrange(1, len(history))])
                except (ConflictError, NotFoundError):
                    pass  # retention deleted that version meanwhile
        if step % 11 == 0:
            branch = f"{name}-br{step}"
            repo.fork(f"{name}-a", branch)
            repo.save(branch, state(rng.randrange(40), rng.randrange(8), 0, branch))
            merged = repo.merge(f"{name}-a", [branch], strategy="last_wins")
            assert repo.load(merged.manifest_id)["tag"] == branch
            repo.delete_chain(branch)
        if step % 7 == 0:
            old = [info.manifest_id for info in repo.log(f"{name}-a")][1:]
            if old:
                try:
                    repo.delete(rng.choice(old))
                except (ConflictError, NotFoundError):
                    pass
print(json.dumps(committed))
"""
)

COLLECTOR = r"""
import json, sys, time
import statebag
from statebag import ConflictError

path, stop = sys.argv[1], sys.argv[2]
runs = freed = audits = 0
with statebag.open(path) as repo:
    import os
    while not os.path.exists(stop):
        report = repo.gc(keep_last=2, grace=0)
        runs += 1
        freed += report.nodes_freed
        if runs % 5 == 0:
            try:
                assert repo.audit().ok
                audits += 1
            except ConflictError:
                pass  # the repository kept changing under the audit: expected here
print(json.dumps({"runs": runs, "freed": freed, "audits": audits}))
"""


def test_four_savers_and_a_collector_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    statebag.open(path, fsync=False).close()
    stop = tmp_path / "stop"
    savers = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path), f"w{index}", str(SECONDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    collector = subprocess.Popen(
        [sys.executable, "-c", COLLECTOR, str(path), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    committed: list[list[object]] = []
    try:
        for saver in savers:
            out, err = saver.communicate(timeout=SECONDS + 300)
            assert saver.returncode == 0, err
            committed.extend(json.loads(out))
        stop.touch()
        out, err = collector.communicate(timeout=300)
        assert collector.returncode == 0, err
    finally:
        stop.touch()
        for process in (*savers, collector):
            if process.returncode is None:
                process.kill()
            process.communicate()  # closes the pipes, whatever happened above
    gc_stats = json.loads(out)
    assert time.monotonic() - started >= SECONDS
    assert gc_stats["runs"] >= 2 and gc_stats["freed"] > 0, gc_stats
    assert len(committed) > 40

    namespace: dict[str, object] = {}
    exec(POOL, namespace)
    make = namespace["state"]
    with statebag.open(path) as repo:
        live = {key[len("manifest/") :] for key, _ in internals.meta(repo).scan("manifest/")}
        assert live
        checked = 0
        for manifest_id, blob, history, n, tag in committed:
            if manifest_id not in live:
                continue  # deleted by retention or by a saver
            assert repo.load(manifest_id) == make(blob, history, n, tag)  # type: ignore[operator]
            checked += 1
        assert checked >= 4
        for manifest_id in live:
            assert repo.verify(manifest_id).ok, manifest_id
        report = repo.audit()
        assert report.ok, report
        assert not report.under_counted and not report.missing_nodes
        repo.gc(grace=0)
        final = repo.audit()
        assert final.ok and not final.over_counted and not final.unswept, final
        assert not final.orphan_packs and not final.in_flight, final
