"""``statebag bench``: check, on our workloads or on your own states, what statebag stores and
how fast against restic, borg, casync and bup (see :mod:`statebag.bench`)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ..errors import InvalidInputError
from .shared import print_error, progress, write_text

DEFAULT_TIMEOUT = 600.0

EPILOG = """\
Workloads (seeded: the same states on every run): agent, one agent thread (a message of \
20-3,000 words appended per step, a scratch field rewritten, a redaction every 50 steps, a \
1-8 MiB attachment edited every 25); churn, one binary value with 1% rewritten per version by \
inserts and deletes of 1 B-64 KiB; chains, many 10-50 KiB workflow states saved round-robin. \
Steps per scale: agent 3 / 40 / 300 (tiny: a 64-128 KiB attachment); churn 3 versions of 1 \
MiB / 10 of 32 MiB / 20 of 256 MiB; chains 2x2 / 8x8 / 1,000x50. Every peer call costs its \
start-up, so full-scale chains (50,000 saves per tool) take hours with peers; tiny takes \
seconds, small minutes.

--states DIR saves your own states as one chain: every file of DIR, in name order (zero-pad \
numbers), a JSON object (bytes as {"$base64": ...}, as statebag load writes them) or a \
MessagePack map. Every file is read and checked before anything runs.

Each tool saves each step: the peers and statebag's CLI save the step's snapshot file (the \
state as canonical MessagePack), statebag in-process saves the step's StateBag. Then each \
saves once more with nothing changed (per call), restores the latest and the first version \
(checked byte for byte), and its repository directory is measured. Peers run at their \
defaults and, where the chunk size can be set (borg, casync), at about 16 KiB average \
chunks too; the settings column says which. restic's password is the fixed \
"statebag-bench". Caches (restic's, borg's) live outside the repositories and are not \
counted.

Figures: stored bytes (every file in the tool's repository directory) and objects (their \
number); logical / stored, where logical is the sum of the snapshots' sizes; save p50 and \
p99 (wall time of a step's call); restore latest and first; per call: a save with nothing \
changed. Ratios "vs statebag" divide by statebag in-process's figure.

--json FILE keys: workload, steps, logical_bytes, machine, tools (each: name, status, \
settings, stored_bytes, save_p50_s, save_p99_s, restore_latest_s, restore_first_s, \
objects, per_call_s; error when status is failed). status: ok; skipped (not on PATH: no \
figures); failed (a call exited non-zero, outlived --timeout or restored other bytes: no \
figures, and error holds the tail of its stderr). With --workload all, FILE holds a list \
of these, one per workload.

A peer that fails or hangs is reported and the run goes on. Exit codes: 0 when statebag's \
own rows are ok (whatever the peers did); 1 when one of them failed; 2 for bad arguments \
(nothing is run); 130 interrupted. Temporary repositories are removed unless --keep DIR."""


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import runner
    from ..bench.peers import PEERS
    from ..bench.report import REFERENCE, machine, markdown
    from ..bench.workloads import WORKLOADS, StatesDir, Workload, builtin

    if args.timeout <= 0:
        raise InvalidInputError("--timeout must be more than 0 seconds", path="--timeout")
    workloads: list[Workload]
    if args.states is not None:
        states = StatesDir(Path(args.states))
        states.check()
        workloads, scale = [states], "your states"
    else:
        names = WORKLOADS if args.workload == "all" else [args.workload or "agent"]
        workloads = [builtin(name, args.scale, seed=args.seed) for name in names]
        scale = f"scale {args.scale}"
    keep = _keep_dir(args.keep)
    json_file = _json_file(args.json_file)
    peers = list(PEERS) if args.peers is None else args.peers

    where = machine()
    reports = []
    for workload in workloads:
        enabled = not args.quiet and sys.stderr.isatty()
        with progress(enabled, workload.name, workload.steps) as ticker:
            report = runner.run(
                workload, peers=peers, timeout=args.timeout, keep=keep, ticker=ticker, machine=where
            )
        reports.append(report)
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        heading = (
            f"### {workload.name} ({scale}): {report.steps:,} steps, "
            f"{report.logical_bytes:,} logical bytes\n\n"
            f"{workload.describe()}. Run {date} on {where}."
        )
        write_text(markdown(report, heading=heading) + "\n")
    if keep is not None:
        write_text(f"repositories kept in {keep}/WORKLOAD/TOOL\n")
    if json_file is not None:
        documents = [report.to_builtins() for report in reports]
        json_file.write_bytes(
            msgspec.json.format(
                msgspec.json.encode(documents if args.workload == "all" else documents[0])
            )
            + b"\n"
        )
    failed = [
        f"{report.workload}/{tool.name}"
        for report in reports
        for tool in report.tools
        if tool.name.startswith(REFERENCE) and tool.status != "ok"
    ]
    if failed:
        print_error(f"statebag's own rows failed: {', '.join(failed)}")
        return 1
    return 0


def _keep_dir(text: str | None) -> Path | None:
    """--keep DIR: new or empty, so that what it holds afterwards is this run's alone."""
    if text is None:
        return None
    path = Path(text)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(
            f"--keep {text}: give a new or empty directory (it holds something already)",
            path="--keep",
        )
    return path


def _json_file(text: str | None) -> Path | None:
    """--json FILE: checked now, so that a long run does not end unable to write it."""
    if text is None:
        return None
    path = Path(text)
    parent = path.parent
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InvalidInputError(
            f"--json {text}: cannot write a file there (its directory must exist and be writable)",
            path="--json",
        )
    return path
