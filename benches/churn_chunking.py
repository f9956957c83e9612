"""New chunk data per version on the binary-churn workload, for chunker parameter choices.

The workload is issue 17's: one 128 MiB binary value, 12 versions, each rewriting ~1% of it
with inserts and deletes of 1 B-64 KiB at random places (``statebag.bench.workloads.ByteChurn``,
seed 0). For every parameter set, each version is cut and hashed with the compiled chunker
(what a save of the value cuts: a ``bytes`` value's body is the bytes themselves), and the
chunks whose digest no earlier version had are what the save would have to store. Printed
per parameter set, averaged over versions 2..N:

- ``new MB/v``: bytes of new chunks per version (10**6 bytes);
- ``new/edit KiB``: the same per edit of the version;
- ``extra/edit KiB``: per edit, the new bytes beyond the bytes the edits inserted (what the
  chunker adds by cutting around an edit: the minimum any chunker must store is the inserted
  bytes themselves);
- ``chunks/v``: chunks in one version (each is a node: an index record in the metadata and an
  entry in an index node); ``new/v``: new chunks per version; ``mean KiB``: mean chunk size.

``--repos`` also saves the workload into real repositories (``statebag.open(dir, ...)``) for
the parameter sets given with ``--repo-params`` and reports the whole directory and its
breakdown: chunk frames, the other nodes (index and fields nodes), pack footers and trailers,
and ``meta.sqlite``. ``--casync`` stores every version with ``casync make --chunk-size=16384``
into one store and reports its growth per version, the peer the brief compares with.

Run with the sources to measure first on ``PYTHONPATH``::

    PYTHONPATH=src python benches/churn_chunking.py                 # the grid, ~1 min
    PYTHONPATH=src python benches/churn_chunking.py --repos --casync
    PYTHONPATH=src python benches/churn_chunking.py --size-mib 8 --versions 4 --twin  # small

``--twin`` cuts with the pure-Python twin instead (small sizes only: it scans ~1 MB/s).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from blake3 import blake3

import statebag
from statebag import _cdc_py
from statebag.bench.workloads import KIB, MIB, ByteChurn

MB = 1_000_000
FRAME_HEADER = 1  # the codec byte of a stored frame (random data is stored raw)
FOOTER_ENTRY = 48  # a pack footer's entry per node
PACK_TRAILER = 32

# (min_size, avg_size, max_size, normalization): format 1's defaults first.
GRID: tuple[tuple[int, int, int, int], ...] = (
    (4096, 16384, 65536, 2),
    (4096, 16384, 65536, 1),
    (4096, 16384, 65536, 0),
    (4096, 16384, 65536, 3),
    (2048, 16384, 65536, 1),
    (2048, 8192, 65536, 1),
    (2048, 8192, 65536, 2),
    (2048, 8192, 32768, 1),
    (2048, 8192, 32768, 0),
    (4096, 8192, 32768, 1),
    (1024, 8192, 32768, 1),
    (1024, 4096, 16384, 1),
    (1024, 4096, 16384, 2),
)


def _label(params: Sequence[int]) -> str:
    low, avg, high, level = params
    return f"{low // 1024}/{avg // 1024}/{high // 1024} KiB n={level}"


def _parse_params(text: str) -> tuple[int, int, int, int]:
    try:
        low, avg, high, level = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"parameters are min,avg,max,normalization in bytes (4096,16384,65536,2), not {text!r}"
        ) from None
    return low, avg, high, level


@dataclass
class Version:
    data: bytes
    edits: int
    inserted: int


def versions(workload: ByteChurn) -> Iterator[Version]:
    """The workload's versions with how many edits each made and how many bytes they inserted.

    The values are exactly ``workload.run()``'s (checked by digest against it in ``main``);
    the edits are counted by drawing them again from a copy of the generator's state, as
    ``ByteChurn._churn`` draws them.
    """
    rng = random.Random(workload.seed)
    first = next(iter(workload.run())).state["data"]
    data: bytes = first
    yield Version(data, 0, 0)
    for _ in range(2, workload.versions + 1):
        probe = random.Random()
        probe.setstate(rng.getstate())
        budget = max(1, round(workload.share * len(data)))
        edits = inserted = 0
        while budget > 0:
            length = min(budget, probe.randint(1, workload.max_edit))
            probe.randrange(len(data))
            if probe.random() < 0.5:
                inserted += length
            edits += 1
            budget -= length
        data = workload._churn(rng, data)
        yield Version(data, edits, inserted)


@dataclass
class Tally:
    params: tuple[int, int, int, int]
    chunker: object
    known: set[bytes] = field(default_factory=set)
    new_bytes: list[int] = field(default_factory=list)
    new_chunks: list[int] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    edits: list[int] = field(default_factory=list)
    inserted: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, version: Version) -> None:
        started = time.perf_counter()
        offsets, digests = self.chunker.cut_and_hash(version.data)  # type: ignore[attr-defined]
        self.seconds += time.perf_counter() - started
        fresh = fresh_chunks = 0
        start = 0
        for end, digest in zip(offsets, digests, strict=True):
            if digest not in self.known:
                self.known.add(digest)
                fresh += end - start
                fresh_chunks += 1
            start = end
        self.chunks.append(len(offsets))
        if version.edits:  # the first version is all new: its own row, not an average
            self.new_bytes.append(fresh)
            self.new_chunks.append(fresh_chunks)
            self.edits.append(version.edits)
            self.inserted.append(version.inserted)

    def row(self, size: int) -> str:
        n = len(self.new_bytes)
        new, edits = sum(self.new_bytes), sum(self.edits)
        extra = new - sum(self.inserted)
        return (
            f"| {_label(self.params)} | {new / n / MB:.3f} | {new / edits / KIB:.1f} | "
            f"{extra / edits / KIB:.1f} | {sum(self.chunks) / len(self.chunks):,.0f} | "
            f"{sum(self.new_chunks) / n:,.0f} | {size / self.chunks[0] / KIB:.1f} | "
            f"{self.seconds / len(self.chunks) * 1000:.0f} |"
        )


def grid(workload: ByteChurn, settings: Sequence[tuple[int, int, int, int]], *, twin: bool) -> None:
    cls = _cdc_py.Chunker if twin else statebag.Chunker
    tallies = [
        Tally(params, cls(low, avg, high, normalization=level))
        for params in settings
        for low, avg, high, level in [params]
    ]
    edits = inserted = 0
    count = 0
    for version in versions(workload):
        for tally in tallies:
            tally.add(version)
        edits += version.edits
        inserted += version.inserted
        count += 1
    print(
        f"{workload.describe()}, {count} versions; per later version: "
        f"{edits / (count - 1):.1f} edits inserting {inserted / (count - 1) / MB:.3f} MB "
        f"({'pure-Python twin' if twin else statebag.backend})\n"
    )
    print(
        "| parameters | new MB/v | new/edit KiB | extra/edit KiB | chunks/v | new/v | "
        "mean KiB | cut+hash ms/v |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for tally in tallies:
        print(tally.row(workload.size))


# ---------------------------------------------------------------------------------------------
# whole repositories
# ---------------------------------------------------------------------------------------------


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Breakdown:
    """A statebag repository directory after the workload, in bytes."""

    total: int
    chunk_frames: int  # the frames of the value's chunks
    other_nodes: int  # the frames of index and fields nodes
    pack_overhead: int  # pack footers and trailers
    meta: int  # meta.sqlite and its WAL
    nodes: int
    save_seconds: tuple[float, ...]


def save_and_measure(workload: ByteChurn, repo_dir: Path, **options: int) -> Breakdown:
    """Save every version into a new repository at ``repo_dir`` (with ``options``) and take
    its directory apart. The chunk frames are counted from the chunker the repository
    recorded: every distinct chunk of every version, plus its codec byte (random data is
    stored raw); the other nodes are what the packs hold beyond them."""
    chunk_frames: dict[bytes, int] = {}
    save_seconds: list[float] = []
    with statebag.open(repo_dir, **options) as repo:
        config = repo.config
        chunker = statebag.Chunker(
            config.min_size,
            config.avg_size,
            config.max_size,
            config.seed,
            normalization=config.normalization,
        )
        for step in workload.run():
            started = time.perf_counter()
            repo.save(step.chain, step.state)
            save_seconds.append(time.perf_counter() - started)
            offsets, digests = chunker.cut_and_hash(step.state["data"])
            start = 0
            for end, digest in zip(offsets, digests, strict=True):
                chunk_frames[digest] = end - start + FRAME_HEADER
                start = end
        stats = repo.stats()
    objects = _tree_bytes(repo_dir / "objects")
    chunks = sum(chunk_frames.values())
    overhead = FOOTER_ENTRY * stats.nodes + PACK_TRAILER * stats.packs
    return Breakdown(
        total=_tree_bytes(repo_dir),
        chunk_frames=chunks,
        other_nodes=objects - chunks - overhead,
        pack_overhead=overhead,
        meta=sum(p.stat().st_size for p in repo_dir.glob("meta.sqlite*")),
        nodes=stats.nodes,
        save_seconds=tuple(save_seconds),
    )


def repository(workload: ByteChurn, params: tuple[int, int, int, int], where: Path) -> None:
    low, avg, high, level = params
    repo_dir = where / "statebag"
    found = save_and_measure(
        workload, repo_dir, min_size=low, avg_size=avg, max_size=high, normalization=level
    )
    later = sorted(found.save_seconds[1:])
    print(
        f"| {_label(params)} | {found.total / MB:.1f} | {found.chunk_frames / MB:.1f} | "
        f"{found.other_nodes / MB:.2f} | {found.pack_overhead / MB:.2f} | "
        f"{found.meta / MB:.2f} | {found.nodes:,} | {found.save_seconds[0]:.2f} | "
        f"{later[len(later) // 2]:.2f} |"
    )
    shutil.rmtree(repo_dir)


def fresh_saves(
    workload: ByteChurn, settings: Sequence[tuple[int, int, int, int]], where: Path, *, rounds: int
) -> None:
    """Seconds of a fresh save of the first version, for each parameter set: the sets take
    turns within each round, so that a change in the machine's load hits them all alike."""
    first = next(iter(workload.run()))
    times: dict[tuple[int, int, int, int], list[float]] = {params: [] for params in settings}
    for turn in range(rounds):
        for params in settings:
            low, avg, high, level = params
            repo_dir = where / f"fresh-{turn}"
            with statebag.open(
                repo_dir, min_size=low, avg_size=avg, max_size=high, normalization=level
            ) as repo:
                started = time.perf_counter()
                repo.save(first.chain, first.state)
                times[params].append(time.perf_counter() - started)
            shutil.rmtree(repo_dir)
    print(f"\n| parameters | fresh save of {workload.size // MIB} MiB: median s | min s |")
    print("|---|---:|---:|")
    for params, seconds in times.items():
        seconds.sort()
        print(f"| {_label(params)} | {seconds[len(seconds) // 2]:.3f} | {seconds[0]:.3f} |")


def casync(workload: ByteChurn, where: Path) -> None:
    if shutil.which("casync") is None:
        print("casync: not on PATH, skipped")
        return
    store, indexes, snapshot = where / "castr", where / "indexes", where / "value.bin"
    indexes.mkdir()
    sizes: list[int] = []
    for version in versions(workload):
        snapshot.write_bytes(version.data)
        subprocess.run(
            [
                "casync",
                "make",
                f"--store={store}",
                "--chunk-size=16384",
                str(indexes / f"{len(sizes)}.caibx"),
                str(snapshot),
            ],
            check=True,
            capture_output=True,
        )
        sizes.append(_tree_bytes(store))
    growth = [b - a for a, b in pairwise(sizes)]
    print(
        f"casync --chunk-size=16384: store {sizes[-1] / MB:.1f} MB, indexes "
        f"{_tree_bytes(indexes) / MB:.2f} MB; first version {sizes[0] / MB:.1f} MB; new chunk "
        f"data per later version {sum(growth) / len(growth) / MB:.3f} MB (zstd frames)"
    )
    shutil.rmtree(store)
    shutil.rmtree(indexes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--versions", type=int, default=12)
    parser.add_argument("--params", type=_parse_params, action="append", help="min,avg,max,n")
    parser.add_argument("--twin", action="store_true", help="cut with the pure-Python twin")
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--repos", action="store_true", help="save into real repositories")
    parser.add_argument("--repo-params", type=_parse_params, action="append")
    parser.add_argument("--casync", action="store_true")
    parser.add_argument(
        "--fresh-rounds", type=int, default=0, help="time this many fresh saves per --repo-params"
    )
    args = parser.parse_args(argv)
    if args.twin and args.size_mib > 16:
        parser.error("the pure-Python twin is for small inputs: --size-mib 16 at most")
    workload = ByteChurn(args.size_mib * MIB, args.versions)
    # The counted versions must be the workload's own, or the figures describe another one.
    mine = [blake3(v.data).digest() for v in versions(workload)]
    theirs = [blake3(s.state["data"]).digest() for s in workload.run()]
    if mine != theirs:
        raise SystemExit("versions() no longer reproduces ByteChurn.run(): fix it first")
    if not args.no_grid:
        grid(workload, args.params or GRID, twin=args.twin)
    with tempfile.TemporaryDirectory(prefix="churn-chunking-") as tmp:
        if args.repos:
            print(
                "\n| parameters | repo MB | chunk frames MB | index+fields nodes MB | "
                "pack footers MB | meta.sqlite MB | nodes | fresh save s | later save p50 s |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for params in args.repo_params or [GRID[0]]:
                repository(workload, params, Path(tmp))
        if args.fresh_rounds:
            fresh_saves(
                workload, args.repo_params or [GRID[0]], Path(tmp), rounds=args.fresh_rounds
            )
        if args.casync:
            print()
            casync(workload, Path(tmp))


if __name__ == "__main__":
    main()
