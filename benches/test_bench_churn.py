"""Group ``churn``: stored bytes on issue 17's binary churn, statebag beside casync and bup.

The workload: one 128 MiB binary value, 12 versions, each rewriting ~1% of it with inserts
and deletes of 1 B-64 KiB (``ByteChurn``, seed 0); 1 MiB and 3 versions under
``--benchmark-disable``, so that the CI smoke run stays short. statebag saves it into a new
repository at the defaults a new repository records; the peers save each version's snapshot
file (canonical MessagePack, as ``statebag bench`` hands them) with their own tools, casync at
16 KiB chunks and bup at its defaults. A peer not on PATH is skipped, with the reason in
``extra_info``.

One round; ``extra_info`` holds every tool's whole repository directory in bytes and
statebag's breakdown: chunk frames, the other nodes (index and fields nodes), pack footers
and trailers, ``meta.sqlite``, and the chunker parameters in use
(``benches/churn_chunking.py`` explores other parameters on the same workload).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from churn_chunking import Breakdown, save_and_measure
from conftest import Bench, _benchmarks_disabled
from statebag import codec
from statebag.bench.peers import Bup, Casync16k, Tool
from statebag.bench.workloads import MIB, ByteChurn
from statebag.config import Config

TIMEOUT = 600.0
PEERS: tuple[type[Tool], ...] = (Casync16k, Bup)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _peer_bytes(cls: type[Tool], workload: ByteChurn, where: Path) -> int | str:
    """The peer's repository after every version, or why it did not run."""
    tool = cls(where / "repo", where / "home", timeout=TIMEOUT)
    missing = tool.missing()
    if missing is not None:
        return f"skipped: {missing}"
    tool.home.mkdir(parents=True)
    snapshot = where / f"{workload.name}.msgpack"
    tool.start()
    for step in workload.run():
        snapshot.write_bytes(codec.encode(step.state.data))
        tool.save(step, snapshot)
    tool.close()
    return _tree_bytes(tool.repo)


@pytest.mark.benchmark(group="churn")
def test_churn_stored_bytes(
    bench_on: Callable[[str, int], Bench], pytestconfig: pytest.Config
) -> None:
    tiny = _benchmarks_disabled(pytestconfig)
    workload = ByteChurn(1 * MIB, 3) if tiny else ByteChurn(128 * MIB, 12)

    def run() -> tuple[Breakdown, dict[str, int | str]]:
        with tempfile.TemporaryDirectory(prefix="statebag-churn-") as tmp:
            ours = save_and_measure(workload, Path(tmp) / "statebag")
            peers = {}
            for cls in PEERS:
                peers[cls.name] = _peer_bytes(cls, workload, Path(tmp) / cls.name)
                shutil.rmtree(Path(tmp) / cls.name, ignore_errors=True)
        return ours, peers

    ours, peers = bench_on("churn", workload.size).run(run, rounds=1)

    assert ours.chunk_frames >= workload.size  # every byte of the first version is stored
    # The parts add up to the directory: objects hold chunks, other nodes and pack overhead.
    assert ours.total == ours.chunk_frames + ours.other_nodes + ours.pack_overhead + ours.meta
    assert ours.other_nodes > 0 and ours.meta > 0
    config = Config()
    figures: dict[str, float | int | str] = {
        "versions": workload.versions,
        "value_bytes": workload.size,
        "chunker": (
            f"{config.min_size}/{config.avg_size}/{config.max_size} "
            f"normalization {config.normalization}"
        ),
        "statebag_bytes": ours.total,
        "statebag_chunk_frames": ours.chunk_frames,
        "statebag_index_and_fields_nodes": ours.other_nodes,
        "statebag_pack_footers": ours.pack_overhead,
        "statebag_meta": ours.meta,
        "statebag_nodes": ours.nodes,
        "statebag_fresh_save_s": ours.save_seconds[0],
    }
    for name, found in peers.items():
        if isinstance(found, str):
            figures[f"{name}_status"] = found
            continue
        assert found > workload.size // 2, (name, found)  # a peer that stored nothing failed
        figures[f"{name}_bytes"] = found
        figures[f"{name}_vs_statebag"] = found / ours.total
    bench = bench_on("churn", workload.size)
    bench.figures(**figures)
    bench.record("churn", workload.size, versions=workload.versions)
