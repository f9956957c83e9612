"""Benchmark fixtures: seeded data sets, and the end-of-run ratios report.

Data (built once per session, never inside a timed function):

- ``random_256mib``: 256 MiB of BLAKE3 extended output of a fixed seed (incompressible);
- ``state_64mib``: a generated JSON-like application state of about 64 MiB, as a dict;
- ``state_64mib_bytes``: that state's fields encoded one by one with ``statebag.codec.encode``
  and concatenated, which is what the engine hands to the chunker;
- ``dataset``: parametrized over ``random`` and ``state``; each carries the data with its
  reference chunk offsets and BLAKE3 digests (computed once, untimed), so every benchmark can
  assert on its result cheaply.

``STATEBAG_BENCH_SCALE`` (float, default 1.0) multiplies every data size, for quick runs;
``STATEBAG_BENCH_ROUNDS`` (int, default 3) sets the rounds of every benchmark.

Each benchmark runs through the ``bench`` fixture (``bench.run(fn)`` is
``benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)``) and records its
median time with ``bench.record(...)``; at the end of the
session ``pytest_terminal_summary`` prints the ratios and throughput tables and, when
benchmarks ran, writes them to ``.benchmarks/ratios.json`` (relative to the invocation
directory). See README.md for what the ratios mean.

Benchmarks over a data set of their own (the ``repository`` and ``agent`` groups of
test_bench_repository.py) get their ``Bench`` from ``bench_on(name, size)``; they may also
record per-stage times (``Bench.stages``) and figures measured inside one round
(``Bench.figures``), which the report shows with the ratios. A ratio row says which direction
is good: ``>=`` (a throughput ratio) or ``<=`` (a time ratio).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import pytest
from blake3 import blake3

import statebag
from statebag import Repository, codec

MIB = 1 << 20
MB = 1_000_000  # throughputs are reported in MB/s (10**6 bytes per second)
SEED = 0

DATASETS = ("random", "state")


def _env_number(
    name: str, kind: type[float] | type[int], default: float, low: float, high: float
) -> Any:
    """``name`` from the environment as ``kind``, within [low, high]; a bad value stops the run."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise pytest.UsageError(f"{name} must be a {kind.__name__}, not {raw!r}") from None
    if not low <= value <= high:
        raise pytest.UsageError(f"{name} must be within [{low}, {high}], not {value}")
    return value


SCALE: float = _env_number("STATEBAG_BENCH_SCALE", float, 1.0, 1e-6, 4.0)
ROUNDS: int = _env_number("STATEBAG_BENCH_ROUNDS", int, 3, 1, 1000)


def scaled(size: int) -> int:
    """``size`` times STATEBAG_BENCH_SCALE, at least 1 byte."""
    return max(1, int(size * SCALE))


# ---------------------------------------------------------------------------------------------
# Data generators
# ---------------------------------------------------------------------------------------------


def random_bytes(size: int, seed: int = SEED) -> bytes:
    """Deterministic incompressible bytes: the BLAKE3 extended output of the seed."""
    return blake3(b"statebag-bench" + seed.to_bytes(8, "little")).digest(length=size)


# A small vocabulary; the population repeats each word about (rank + 1) ** -1 * 60 times so
# that uniform draws from it follow a Zipf-like law (uniform `choices` is 4x faster than
# `choices(cum_weights=...)`), which makes the texts compress roughly like prose.
_WORD_TEXT = """
the of and to a in is that it for was on are as with be at by this have from or one had not
but what all were when we there can an your which their said if do will each about how up out
them then she many some so these would other into has more her two like him see time could no
make than first been its who now people my made over did down only way find use may water long
little very after words called just where most know get through back much before go good new
write our used me man too any day same right look think also around another came come work
three word must because does part even place well such here take why things help put years
different away again off went old number agent tool call result user assistant message state
context memory plan step observation error retry token model prompt response summary function
argument value request commit branch snapshot chunk store version merge
"""
_WORDS = tuple(_WORD_TEXT.split())

_POPULATION: tuple[str, ...] = tuple(
    word for rank, word in enumerate(_WORDS) for _ in range(max(1, round(60 / (rank + 1))))
)
_AVG_WORD = sum(len(w) + 1 for w in _POPULATION) / len(_POPULATION)  # with the space
_ROLES = ("system", "user", "assistant", "tool")
_TAGS = ("draft", "final", "cached", "retry", "error", "long", "short", "pinned", "todo", "ok")


def _text(rng: random.Random, approx_chars: int) -> str:
    count = max(1, int(approx_chars / _AVG_WORD))
    return " ".join(rng.choices(_POPULATION, k=count))


def _records(rng: random.Random, budget: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    used = 0
    while used < budget:
        text = _text(rng, rng.randint(40, 2400))
        tags = rng.sample(_TAGS, rng.randint(0, 4))
        records.append(
            {
                "role": rng.choice(_ROLES),
                "text": text,
                "score": rng.random(),
                "tags": tags,
            }
        )
        used += len(text) + 40 + 6 * len(tags)
    return records


def _numbers(rng: random.Random, budget: int) -> list[int] | list[float]:
    count = max(1, budget // 9)  # a msgpack float64 takes 9 bytes, an int 1 to 9
    if rng.random() < 0.5:
        return [rng.random() * 1000.0 for _ in range(count)]
    return [rng.randrange(-(2**40), 2**40) for _ in range(count)]


def _scalar(rng: random.Random) -> Any:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.randrange(1_000_000)
    if choice == 1:
        return rng.random()
    if choice == 2:
        return rng.random() < 0.5
    if choice == 3:
        return None
    return _text(rng, rng.randint(10, 200))


def make_state(target: int, seed: int = SEED, fields: int = 200) -> dict[str, Any]:
    """A deterministic JSON-like state whose encoded fields total roughly ``target`` bytes.

    About ``fields`` fields: long texts (45% of the bytes), lists of records with role, text,
    score and tags (45%), lists of numbers (10%), and a few small scalars.
    """
    rng = random.Random(seed)
    kinds = ["text"] * 70 + ["records"] * 70 + ["numbers"] * 30 + ["scalar"] * 30
    kinds = (kinds * (fields // len(kinds) + 1))[:fields]
    rng.shuffle(kinds)
    share = {"text": 0.45, "records": 0.45, "numbers": 0.10}
    per_field = {kind: target * share[kind] / kinds.count(kind) for kind in share}
    state: dict[str, Any] = {}
    for index, kind in enumerate(kinds):
        name = f"{kind}_{index:03d}"
        if kind == "scalar":
            state[name] = _scalar(rng)
            continue
        budget = max(1, int(per_field[kind] * rng.uniform(0.25, 1.75)))
        if kind == "text":
            state[name] = _text(rng, budget)
        elif kind == "records":
            state[name] = _records(rng, budget)
        else:
            state[name] = _numbers(rng, budget)
    return state


def encode_state(state: dict[str, Any]) -> bytes:
    """The state's fields encoded one by one (canonical msgpack), concatenated."""
    return b"".join(codec.encode(value) for value in state.values())


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def random_256mib() -> bytes:
    """256 MiB (times the scale) of deterministic pseudo-random bytes."""
    return random_bytes(scaled(256 * MIB))


@pytest.fixture(scope="session")
def state_64mib() -> dict[str, Any]:
    """A generated JSON-like state of about 64 MiB (times the scale) once encoded."""
    return make_state(scaled(64 * MIB))


@pytest.fixture(scope="session")
def state_64mib_bytes(state_64mib: dict[str, Any]) -> bytes:
    """``state_64mib``'s fields encoded one by one with ``codec.encode``, concatenated."""
    return encode_state(state_64mib)


@dataclass(frozen=True)
class Dataset:
    """A benchmark input with its reference chunking (computed once, untimed)."""

    name: str
    data: bytes
    offsets: list[int]  # statebag.Chunker().cut(data)
    digests: list[bytes]  # blake3 of every chunk

    @property
    def size(self) -> int:
        return len(self.data)


_FIXTURE_OF = {"random": "random_256mib", "state": "state_64mib_bytes"}


@pytest.fixture(scope="session", params=DATASETS)
def dataset(request: pytest.FixtureRequest) -> Dataset:
    """Each data set in turn, with the offsets our chunker finds and the chunks' digests."""
    name: str = request.param
    data: bytes = request.getfixturevalue(_FIXTURE_OF[name])
    offsets = statebag.Chunker().cut(data)
    assert offsets and offsets[-1] == len(data)
    view = memoryview(data)
    digests = [blake3(view[start:end]).digest() for start, end in pairwise([0, *offsets])]
    return Dataset(name=name, data=data, offsets=offsets, digests=digests)


# ---------------------------------------------------------------------------------------------
# Results collector and the ratios report
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    dataset: str
    name: str
    group: str
    nbytes: int
    median: float  # seconds
    best: float  # seconds (min)
    rounds: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.median / MB


@dataclass
class Collector:
    results: dict[tuple[str, str], Result] = field(default_factory=dict)
    load_at_start: tuple[float, float, float] | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    # (data set, benchmark) -> stage -> median seconds over the rounds (e.g. CommitResult.timings)
    stages: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    # data set -> figures measured inside a benchmark's round (e.g. the agent-thread workload)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


_COLLECTOR = pytest.StashKey[Collector]()


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not available on this platform
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_COLLECTOR] = Collector(load_at_start=_load())


def _collector(config: pytest.Config) -> Collector:
    if _COLLECTOR not in config.stash:
        config.stash[_COLLECTOR] = Collector(load_at_start=_load())
    return config.stash[_COLLECTOR]


class Labelled(Protocol):
    """What a benchmark's data set must say about itself: its id and its size in bytes."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Label:
    """A data set known by id and size only (see ``bench_on``)."""

    name: str
    size: int


Setup = Callable[[], tuple[tuple[Any, ...], dict[str, Any]] | None]


class Bench:
    """What each benchmark test uses: ``run(fn)`` to time it, then ``record(name, nbytes)``."""

    def __init__(self, benchmark: Any, dataset: Labelled, collector: Collector) -> None:
        self.benchmark = benchmark
        self.dataset = dataset
        self.collector = collector

    def run(
        self, fn: Callable[..., Any], *, setup: Setup | None = None, rounds: int | None = None
    ) -> Any:
        """Time ``fn()`` for ROUNDS rounds of one call each, and return its (last) result.

        With ``setup``, it runs before every round, untimed, and returns ``(args, kwargs)``
        for ``fn`` (or None). ``rounds`` overrides ROUNDS (the agent workload runs once).
        Under ``--benchmark-disable`` it runs ``setup`` and ``fn`` once, untimed.
        """
        return self.benchmark.pedantic(
            fn,
            setup=setup,
            rounds=ROUNDS if rounds is None else rounds,
            iterations=1,
            warmup_rounds=0,
        )

    def record(self, name: str, nbytes: int, **extra: Any) -> None:
        """Set ``extra_info`` and store the median for the ratios report; call after ``run``.

        ``extra_info`` gets bytes, MB_per_s (from the median), MB_per_s_best (from the min) and
        ``extra``. Without stats (``--benchmark-disable``) only bytes and ``extra`` are set.
        """
        benchmark = self.benchmark
        benchmark.extra_info["dataset"] = self.dataset.name
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["backend"] = statebag.backend
        benchmark.extra_info.update(extra)
        metadata = getattr(benchmark, "stats", None)
        stats = getattr(metadata, "stats", None)
        if stats is None or not stats.data:
            return
        median, best = float(stats.median), float(stats.min)
        if median > 0:
            benchmark.extra_info["MB_per_s"] = round(nbytes / median / MB, 1)
        if best > 0:
            benchmark.extra_info["MB_per_s_best"] = round(nbytes / best / MB, 1)
        self.collector.sizes[self.dataset.name] = self.dataset.size
        self.collector.results[(self.dataset.name, name)] = Result(
            dataset=self.dataset.name,
            name=name,
            group=str(benchmark.group),
            nbytes=nbytes,
            median=median,
            best=best,
            rounds=len(stats.data),
        )

    def stages(self, name: str, seconds: dict[str, float]) -> None:
        """Per-stage times of benchmark ``name`` (medians over its rounds), for the report."""
        shown = {stage: round(value * 1e3, 2) for stage, value in seconds.items()}
        self.benchmark.extra_info.setdefault("stages_ms", {})[name] = shown
        self.collector.stages[(self.dataset.name, name)] = dict(seconds)

    def figures(self, **figures: Any) -> None:
        """Figures measured inside the round(s), for ``extra_info`` and the report."""
        self.benchmark.extra_info.update(figures)
        self.collector.figures.setdefault(self.dataset.name, {}).update(figures)


@pytest.fixture
def bench(benchmark: Any, dataset: Dataset, pytestconfig: pytest.Config) -> Bench:
    """The ``benchmark`` fixture bound to the current data set and the session collector."""
    return Bench(benchmark, dataset, _collector(pytestconfig))


@pytest.fixture
def bench_on(benchmark: Any, pytestconfig: pytest.Config) -> Callable[[str, int], Bench]:
    """``bench_on(name, size)``: the ``benchmark`` fixture bound to a data set of its own."""
    collector = _collector(pytestconfig)

    def make(name: str, size: int) -> Bench:
        return Bench(benchmark, Label(name, size), collector)

    return make


# statebag._cdc runs cut_and_hash(threads=2) serially below this size.
PARALLEL_MIN_BYTES = 4 * MIB

# Targets (reported, never asserted: the machine is shared and noisy).
TARGET_CUT_VS_PYFASTCDC = 1.1
TARGET_CAH1_VS_H = 0.85
TARGET_T2_VS_T1 = 1.7

# The groups whose data sets get the chunking rows.
CHUNKING_GROUPS = frozenset({"chunking", "hashing", "compress"})

# The repository group: its data set, and its targets.
REPO_DATASET = "state100"
TARGET_FRESH_VS_ZSTD = 0.8  # T(fresh_save) / T(ref_zstd_2threads), >=
DELTA_SHARE = 0.02  # the delta budget: this share of a fresh save, plus the durable-commit floor
TARGET_DELTA_HINTED = 1.0  # t(delta_hinted) / (0.02 t(fresh_save) + t(ref_durable_commit)), <=
TARGET_DELTA_UNHINTED = 1.2  # t(delta_unhinted) / t(ref_encode_cut_hash), <=
TARGET_LOAD_VS_FLOOR = 0.7  # T(load_latest) / min(T(ref_decode), T(ref_unzstd_2threads)), >=

# The agent-thread workload: its data set, and its targets.
AGENT_DATASET = "agent"
TARGET_AGENT_DEDUP = 60.0  # sum of logical bytes over all saves / bytes stored, >=
TARGET_AGENT_P50 = 0.05  # p50 save (steps without an attachment edit) / median fresh save, <=

# Peak memory of one large bytes value (test_bench_memory.py): its data set, and its targets.
MEMORY_DATASET = "bytes500"
TARGET_SAVE_PEAK = 0.5  # peak resident bytes above the baseline of a save / value bytes, <=
TARGET_LOAD_PEAK = 1.5  # the same for a load, the result included, <=


def _row(
    dataset: str,
    metric: str,
    measured: float | None,
    target: float | None,
    direction: str = ">=",
    *,
    meaningful: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A ratio row; ``met`` is None when the measure is missing, not meaningful or untargeted."""
    met: bool | None = None
    if measured is not None and target is not None and meaningful:
        met = measured >= target if direction == ">=" else measured <= target
    return {
        "dataset": dataset,
        "metric": metric,
        "measured": measured,
        "target": target,
        "direction": direction,
        "met": met,
        **extra,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compute_ratios(
    results: dict[tuple[str, str], Result], figures: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The ratio rows from the median times of one run (and the figures of the agent workload).

    See README.md for the formulas: the chunking rows per data set of the chunking, hashing
    and compress groups, then the repository rows, then the agent-thread rows, then the
    peak-memory rows.
    """
    rows = _chunking_rows(results)
    rows += _repository_rows(results)
    rows += _agent_rows((figures or {}).get(AGENT_DATASET))
    rows += _memory_rows((figures or {}).get(MEMORY_DATASET))
    return rows


def _chunking_rows(results: dict[tuple[str, str], Result]) -> list[dict[str, Any]]:
    """The chunking rows, per data set, from the median times of one run.

    Throughput T = bytes / median seconds. H = 1 / (1/T_pyfastcdc + 1/T_blake3_per_chunk) is
    the throughput of cutting with pyfastcdc and then hashing the chunks, one after the other.
    The t2 row also gives its ceiling, min(T_cut, T_blake3_per_chunk) / T_cut_and_hash_t1:
    overlapping the scan and the hashing cannot be faster than the slower of the two.
    """

    def throughput(ds: str, name: str) -> float | None:
        result = results.get((ds, name))
        return None if result is None or result.median <= 0 else result.mb_per_s

    rows: list[dict[str, Any]] = []
    seen = {ds for (ds, _), result in results.items() if result.group in CHUNKING_GROUPS}
    for ds in [d for d in DATASETS if d in seen] + sorted(seen - set(DATASETS)):
        cut = throughput(ds, "ours_cut")
        peer = throughput(ds, "pyfastcdc_cut")
        hashing = throughput(ds, "blake3_per_chunk")
        cah1 = throughput(ds, "ours_cut_and_hash_t1")
        cah2 = throughput(ds, "ours_cut_and_hash_t2")
        h = None if peer is None or hashing is None else 1.0 / (1.0 / peer + 1.0 / hashing)
        # Two threads overlap scanning and hashing, so T(t2) cannot beat the slower of the two.
        bound = None if cut is None or hashing is None else min(cut, hashing)
        t2_extra: dict[str, Any] = {"ceiling": _ratio(bound, cah1)}
        t2_result = results.get((ds, "ours_cut_and_hash_t2"))
        if t2_result is not None and t2_result.nbytes < PARALLEL_MIN_BYTES:
            t2_extra["note"] = "serial below 4 MiB: not meaningful"
        for metric, measured, target, extra in (
            ("cut / pyfastcdc", _ratio(cut, peer), TARGET_CUT_VS_PYFASTCDC, {}),
            ("cut_and_hash(t1) / H", _ratio(cah1, h), TARGET_CAH1_VS_H, {"H_MB_per_s": h}),
            ("cut_and_hash(t2) / cut_and_hash(t1)", _ratio(cah2, cah1), TARGET_T2_VS_T1, t2_extra),
        ):
            rows.append(_row(ds, metric, measured, target, meaningful="note" not in extra, **extra))
    return rows


def _repository_rows(results: dict[tuple[str, str], Result]) -> list[dict[str, Any]]:
    """The repository rows: the engine against references run in the same session.

    Throughputs are over the state's total encoded bytes, so a throughput ratio is the inverse
    of the time ratio. Time ratios (``<=``) compare medians directly.
    """
    ds = REPO_DATASET
    if not any(d == ds for d, _ in results):
        return []

    def median(name: str) -> float | None:
        result = results.get((ds, name))
        return None if result is None or result.median <= 0 else result.median

    def throughput(name: str) -> float | None:
        result = results.get((ds, name))
        return None if result is None or result.median <= 0 else result.mb_per_s

    fresh = median("fresh_save")
    durable = median("ref_durable_commit")
    budget = None if fresh is None or durable is None else DELTA_SHARE * fresh + durable
    decode, unzstd = throughput("ref_decode"), throughput("ref_unzstd_2threads")
    floors = [(t, name) for t, name in ((decode, "decode"), (unzstd, "unzstd")) if t is not None]
    floor, floor_name = min(floors) if len(floors) == 2 else (None, None)
    zstd = throughput("ref_zstd_2threads")
    return [
        _row(
            ds,
            "fresh_save / zstd level 3 on 2 threads",
            _ratio(throughput("fresh_save"), zstd),
            TARGET_FRESH_VS_ZSTD,
            detail=None if zstd is None else f"zstd {zstd:.0f} MB/s",
        ),
        _row(
            ds,
            f"delta_hinted / ({DELTA_SHARE:g} x fresh_save + durable_commit)",
            _ratio(median("delta_hinted"), budget),
            TARGET_DELTA_HINTED,
            "<=",
            detail=None if budget is None else f"budget {budget * 1e3:.1f} ms",
            budget_s=budget,
        ),
        _row(
            ds,
            "delta_unhinted / encode+cut_and_hash",
            _ratio(median("delta_unhinted"), median("ref_encode_cut_hash")),
            TARGET_DELTA_UNHINTED,
            "<=",
        ),
        _row(
            ds,
            "load_latest / min(decode, unzstd on 2 threads)",
            _ratio(throughput("load_latest"), floor),
            TARGET_LOAD_VS_FLOOR,
            detail=None if floor is None else f"{floor_name} {floor:.0f} MB/s",
        ),
    ]


def _agent_rows(figures: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The agent-thread rows, from the figures its single round measured."""
    if not figures:
        return []
    ds = AGENT_DATASET
    fresh = figures.get("fresh_median_s")
    return [
        _row(
            ds,
            "logical bytes of all saves / bytes stored",
            _ratio(figures.get("bytes_logical_sum"), figures.get("bytes_stored")),
            TARGET_AGENT_DEDUP,
        ),
        _row(
            ds,
            "p50 save (no attachment edit) / fresh save",
            _ratio(figures.get("p50_s"), fresh),
            TARGET_AGENT_P50,
            "<=",
            detail=None if fresh is None else f"fresh median {fresh * 1e3:.0f} ms",
        ),
        _row(
            ds,
            "p99 save (no attachment edit) / fresh save",
            _ratio(figures.get("p99_s"), fresh),
            None,
            "<=",
        ),
    ]


def _memory_rows(figures: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The peak-memory rows, from the figures of the memory group."""
    if not figures:
        return []
    return [
        _row(
            MEMORY_DATASET,
            f"peak RSS above baseline of a {kind} / value bytes",
            figures.get(f"{kind}_peak_ratio"),
            target,
            "<=",
        )
        for kind, target in (("save", TARGET_SAVE_PEAK), ("load", TARGET_LOAD_PEAK))
        if f"{kind}_peak_ratio" in figures
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| dataset | metric | measured | target | met? |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        if row["target"] is None:
            met, target = "info", "-"
        else:
            met = "n/a" if row["met"] is None else ("yes" if row["met"] else "NO")
            target = f"{row.get('direction', '>=')} {row['target']:.2f}"
        metric = row["metric"]
        if row.get("H_MB_per_s") is not None:
            metric += f" (H = {row['H_MB_per_s']:.0f} MB/s)"
        if row.get("ceiling") is not None:
            metric += f" (ceiling {row['ceiling']:.2f})"
        if row.get("detail"):
            metric += f" ({row['detail']})"
        if row.get("note"):
            metric += f" ({row['note']})"
        measured = _fmt(row["measured"])
        lines.append(f"| {row['dataset']} | {metric} | {measured} | {target} | {met} |")
    return lines


def _throughput_lines(results: dict[tuple[str, str], Result]) -> list[str]:
    lines = [
        "| dataset | benchmark | group | MiB | median ms | MB/s (median) | MB/s (best) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate(DATASETS)}
    for result in sorted(
        results.values(), key=lambda r: (order.get(r.dataset, len(order)), r.dataset, r.group)
    ):
        lines.append(
            f"| {result.dataset} | {result.name} | {result.group} "
            f"| {result.nbytes / MIB:.1f} | {result.median * 1e3:.1f} "
            f"| {result.mb_per_s:.0f} | {result.nbytes / result.best / MB:.0f} |"
        )
    return lines


def _stage_lines(stages: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """One row per benchmark that recorded stages, one column per stage (ms)."""
    columns: list[str] = []
    for seconds in stages.values():
        columns += [name for name in seconds if name not in columns]
    lines = [
        "| dataset | benchmark | " + " | ".join(f"{name} ms" for name in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for (ds, name), seconds in stages.items():
        cells = [_fmt(None if c not in seconds else seconds[c] * 1e3, 1) for c in columns]
        lines.append(f"| {ds} | {name} | " + " | ".join(cells) + " |")
    return lines


def _figure_lines(figures: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for ds, values in figures.items():
        shown = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in values.items()
        )
        lines.append(f"{ds}: {shown}")
    return lines


def _benchmarks_disabled(config: pytest.Config) -> bool:
    session = getattr(config, "_benchmarksession", None)  # set by pytest-benchmark
    if session is not None:
        return bool(session.disabled or session.skip)
    return bool(config.getoption("benchmark_disable", default=True))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector = _collector(config)
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "statebag benchmark ratios")
    if _benchmarks_disabled(config) or not collector.results:
        write("no benchmark timings in this run (benchmarks disabled or skipped): no ratios")
        return
    load_end = _load()
    write(
        f"backend={statebag.backend} scale={SCALE:g} rounds={ROUNDS} cpus={os.cpu_count()} "
        f"loadavg at start={_fmt_load(collector.load_at_start)} at end={_fmt_load(load_end)}"
    )
    write("ratios from median times of this run; reported, not asserted")
    write("")
    rows = compute_ratios(collector.results, collector.figures)
    for line in _ratio_lines(rows):
        write(line)
    write("")
    for line in _throughput_lines(collector.results):
        write(line)
    if collector.stages:
        write("")
        write("stages (median seconds over the rounds, in ms)")
        for line in _stage_lines(collector.stages):
            write(line)
    if collector.figures:
        write("")
        for line in _figure_lines(collector.figures):
            write(line)

    out_dir = Path(config.invocation_params.dir) / ".benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "ratios.json"
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "statebag": statebag.__version__,
        "backend": statebag.backend,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "scale": SCALE,
        "rounds": ROUNDS,
        "loadavg_start": collector.load_at_start,
        "loadavg_end": load_end,
        "dataset_bytes": collector.sizes,
        "ratios": rows,
        "benchmarks": [
            {**asdict(result), "MB_per_s": result.mb_per_s} for result in collector.results.values()
        ],
        "stages": [
            {"dataset": ds, "name": name, "seconds": seconds}
            for (ds, name), seconds in collector.stages.items()
        ],
        "figures": collector.figures,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    write("")
    write(f"ratios written to {out}")


def _fmt_load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{x:.2f}" for x in load)


# -- scratch repositories ------------------------------------------------------------------


class Scratch:
    """Repositories in fresh temporary directories; ``clear`` closes and deletes them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: list[Path] = []
        self.repos: list[Repository] = []

    def new(self) -> Repository:
        """An empty repository (fsync on, the default) in a new directory."""
        path = Path(tempfile.mkdtemp(prefix="repo-", dir=self.root))
        self.dirs.append(path)
        self.repos.append(statebag.open(path))
        return self.repos[-1]

    def open(self, path: Path) -> Repository:
        """A new Repository object on an existing repository (not deleted by ``clear``)."""
        self.repos.append(statebag.open(path, create=False))
        return self.repos[-1]

    def close(self) -> None:
        for repo in self.repos:
            repo.close()
        self.repos.clear()

    def clear(self) -> None:
        self.close()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A temporary directory per bench module, for its scratch repositories."""
    with tempfile.TemporaryDirectory(prefix="statebag-bench-") as root:
        yield Path(root)


@pytest.fixture
def scratch(workspace: Path) -> Iterator[Scratch]:
    repos = Scratch(workspace)
    yield repos
    repos.clear()
