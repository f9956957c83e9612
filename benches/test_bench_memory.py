"""Peak memory of saving and of loading one large bytes value.

Group ``memory``: a bytes value of 500 MB times STATEBAG_BENCH_SCALE (incompressible), saved into
an empty embedded repository and loaded back, each in a subprocess of its own
(``peak_memory.py``) so that nothing else this session allocated counts. The figure is the
peak resident memory above the baseline just before the call, as a multiple of the value's
size: for a save the value is already resident at the baseline (the figure is what the save
adds), for a load the result is part of the peak. Targets: at most 0.5 for the save and 1.5
for the load. The timings are of the whole subprocess (start, data, the call) and mean
nothing; the figures are recorded in ``extra_info`` and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MEMORY_DATASET, Bench, scaled

VALUE_BYTES = 500_000_000
PROBE = Path(__file__).with_name("peak_memory.py")


def probe(op: str, where: Path, size: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(PROBE), op, str(where), str(size)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def size() -> int:
    return scaled(VALUE_BYTES)


@pytest.fixture(scope="module")
def saved(workspace: Path, size: int) -> Iterator[Path]:
    """A repository holding the value (saved once, untimed)."""
    where = workspace / "saved"
    probe("save", where, size)
    yield where


@pytest.fixture
def mbench(bench_on: Callable[[str, int], Bench], size: int) -> Bench:
    return bench_on(MEMORY_DATASET, size)


@pytest.mark.benchmark(group="memory")
def test_peak_memory_of_a_save(mbench: Bench, workspace: Path, size: int) -> None:
    results: list[dict[str, Any]] = []
    counter = iter(range(1 << 30))

    def save() -> None:
        results.append(probe("save", workspace / f"save-{next(counter)}", size))

    mbench.run(save, rounds=1)
    _record_peak(mbench, "save", results, size)


@pytest.mark.benchmark(group="memory")
def test_peak_memory_of_a_load(mbench: Bench, saved: Path, size: int) -> None:
    results: list[dict[str, Any]] = []

    def load() -> None:
        results.append(probe("load", saved, size))

    mbench.run(load, rounds=1)
    _record_peak(mbench, "load", results, size)


def _record_peak(mbench: Bench, stage: str, results: list[dict[str, Any]], size: int) -> None:
    peak = max(result["peak"] for result in results)
    mbench.record(f"peak_{stage}", size, peak_bytes=peak)
    mbench.figures(
        **{
            f"{stage}_peak_bytes": peak,
            f"{stage}_peak_ratio": peak / size,
            f"{stage}_seconds": results[-1]["seconds"],
            f"{stage}_peak_exact": results[-1]["exact"],
        }
    )
