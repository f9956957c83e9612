"""Group ``peers``: statebag against restic, borg, casync and bup, through the runner of
``statebag bench`` (``statebag.bench.runner``), one benchmark per built-in workload.

Each is one round of the whole workload: every tool saves every step, then restores the
latest and the first version. The figures come from inside the round (the benchmark's own
time is the whole run, all tools together): for each tool that ran, its ratio of logical to
stored bytes, its stored bytes and its save p50 against statebag in-process's. Peers not on
PATH are skipped, as the bench reports them.

The scale is ``STATEBAG_BENCH_PEERS_SCALE`` (tiny, small or full; default small), and tiny
under ``--benchmark-disable``, so that the CI smoke run stays short.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from conftest import Bench, _benchmarks_disabled
from statebag.bench import runner
from statebag.bench.peers import PEERS
from statebag.bench.report import REFERENCE, Report, machine
from statebag.bench.workloads import SCALES, WORKLOADS, builtin
from statebag.cli.shared import progress

SCALE_ENV = "STATEBAG_BENCH_PEERS_SCALE"
TIMEOUT = 600.0


def _scale(config: pytest.Config) -> str:
    if _benchmarks_disabled(config):
        return "tiny"
    scale = os.environ.get(SCALE_ENV, "small").strip()
    if scale not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV} must be one of {', '.join(SCALES)}, not {scale!r}")
    return scale


@pytest.mark.benchmark(group="peers")
@pytest.mark.parametrize("name", WORKLOADS)
def test_peers(
    name: str, bench_on: Callable[[str, int], Bench], pytestconfig: pytest.Config
) -> None:
    workload = builtin(name, _scale(pytestconfig))

    def run() -> Report:
        with progress(False, name, workload.steps) as ticker:
            return runner.run(
                workload, peers=PEERS, timeout=TIMEOUT, keep=None, ticker=ticker, machine=machine()
            )

    report: Report = bench_on(f"peers-{name}", 0).run(run, rounds=1)

    assert report.steps == workload.steps and report.logical_bytes > 0
    reference = report.tool(REFERENCE)
    assert reference is not None and reference.status == "ok", reference
    assert reference.stored_bytes is not None and reference.save_p50_s is not None
    figures: dict[str, float | int | str] = {"steps": report.steps, "logical": report.logical_bytes}
    for tool in report.tools:
        if tool.status != "ok":
            figures[f"{tool.name}_status"] = tool.status
            continue
        assert tool.stored_bytes is not None and tool.save_p50_s is not None
        figures[f"{tool.name}_ratio"] = report.logical_bytes / tool.stored_bytes
        figures[f"{tool.name}_stored_vs_statebag"] = tool.stored_bytes / reference.stored_bytes
        figures[f"{tool.name}_p50_vs_statebag"] = tool.save_p50_s / reference.save_p50_s
    bench = bench_on(f"peers-{name}", report.logical_bytes)
    bench.figures(**figures)
    bench.record(f"peers_{name}", report.logical_bytes, steps=report.steps)
