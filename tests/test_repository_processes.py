"""Several processes writing one local (SQLite) repository at once: nothing lost or corrupt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import statebag

from . import internals
from .repohelp import recount, stored_counts

# Each worker saves STEPS versions; on the shared chain it retries a lost race from the new
# head, as a pipeline would. It prints every manifest id it committed, with the state's tag.
WORKER = r"""
import json, random, sys
import statebag
from statebag import ConflictError

path, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(name)
committed = []
with statebag.open(path) as repo:
    for step in range(steps):
        for chain in ("shared", f"own-{name}"):
            tag = f"{name}-{chain}-{step}"
            state = {"tag": tag, "blob": rng.randbytes(rng.randint(1000, 60000)),
                     "text": " ".join(rng.choice(["a", "bb", "ccc"]) for _ in range(3000))}
            while True:
                parent = repo.head(chain)
                try:
                    result = repo.save(chain, state, parent=parent)
                except ConflictError:
                    continue
                committed.append([chain, result.manifest_id, tag])
                break
print(json.dumps(committed))
"""


def test_processes_saving_to_shared_and_own_chains(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    statebag.open(path, fsync=False).close()
    steps = 12
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), f"w{index}", str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(3)
    ]
    committed: list[list[str]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        committed.extend(json.loads(out))
    assert len(committed) == 3 * steps * 2
    with statebag.open(path) as repo:
        shared = [info.manifest_id for info in repo.log("shared")]
        assert len(shared) == 3 * steps
        assert len(set(shared)) == len(shared)
        seqs = [info.seq for info in repo.log("shared")]
        assert seqs == list(range(3 * steps, 0, -1))
        for chain, manifest_id, tag in committed:
            if chain == "shared":
                assert manifest_id in shared
            else:
                assert manifest_id in {info.manifest_id for info in repo.log(chain)}
            assert repo.load(manifest_id, fields=["tag"]) == {"tag": tag}
        assert sorted(repo.chains()) == ["own-w0", "own-w1", "own-w2", "shared"]
        assert repo.verify().ok
        counts, reached = recount(repo)
        assert stored_counts(repo) == counts
        stats = repo.stats()
        assert stats.manifests == 6 * steps
        assert stats.nodes == len(reached)
        assert list(internals.meta(repo).scan("pending/")) == []
