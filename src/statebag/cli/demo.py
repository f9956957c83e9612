"""``statebag demo``: a simulated agent saving its state step by step, and what storing it
cost."""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from typing import Any

from .. import backend
from ..bag import StateBag
from ..errors import ConfigError, IntegrityError
from ..repository import open as open_repository
from .shared import (
    console,
    format_size,
    print_error,
    print_json,
    progress,
    show_progress,
    status,
)

DEMO_CHAIN = "demo-agent"

# fmt: off
_VOCABULARY = (
    "the", "agent", "called", "a", "tool", "and", "it", "returned", "result", "to",
    "user", "who", "asked", "for", "plan", "with", "three", "steps", "then", "model",
    "wrote", "code", "ran", "tests", "read", "logs", "fixed", "one", "bug", "searched",
    "memory", "summarised", "state", "replied",
)
# fmt: on
_ROLES = ("user", "assistant", "tool")
_ATTACHMENT_BYTES = 2 << 20
ATTACHMENT_EVERY = 25


def _agent_message(rng: random.Random, step: int) -> dict[str, Any]:
    words = rng.choices(_VOCABULARY, k=rng.randint(20, 600))
    return {"role": rng.choice(_ROLES), "step": step, "text": " ".join(words)}


def _agent_step(bag: StateBag, rng: random.Random, step: int) -> None:
    """One step of the simulated agent, made through the bag so it tracks what changed."""
    messages = bag["messages"]
    for _ in range(rng.randint(1, 2)):
        messages.append(_agent_message(rng, step))
    bag["scratch"] = {"step": step, "activations": [rng.random() for _ in range(300)]}
    if step % ATTACHMENT_EVERY == 0:
        attachment = bytearray(bag.data["attachment"])
        at = rng.randrange(len(attachment) - 16)
        attachment[at : at + rng.randint(1, 16)] = rng.randbytes(16)
        bag["attachment"] = bytes(attachment)


def _figures(location: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    save_seconds: list[float] = []
    with open_repository(location) as repo:
        others = [chain for chain in repo.chains() if chain != DEMO_CHAIN]
        if others:
            raise ConfigError(
                f"{location} holds other chains ({', '.join(map(repr, others[:3]))}); run the "
                "demo in a new directory, or without DIR in a temporary one"
            )
        head = repo.head(DEMO_CHAIN)
        if head is not None:
            # A rerun in the same DIR resumes the agent where the last run left it.
            bag = repo.load_bag(head)
            first_step = repo.info(head).seq + 1
        else:
            bag = StateBag(
                {
                    "messages": [],
                    "scratch": {},
                    "attachment": rng.randbytes(_ATTACHMENT_BYTES),
                }
            )
            first_step = 1
        with progress(show_progress(args), "agent steps", args.steps) as ticker:
            for step in range(first_step, first_step + args.steps):
                _agent_step(bag, rng, step)
                started = time.perf_counter()
                repo.save(DEMO_CHAIN, bag)
                save_seconds.append(time.perf_counter() - started)
                ticker.advance()
        versions = list(repo.log(DEMO_CHAIN))

    # Loads and verify go through a fresh handle, so no cache of the saves helps them.
    with open_repository(location, create=False) as repo:
        started = time.perf_counter()
        repo.load(versions[0].manifest_id)
        load_latest = time.perf_counter() - started
        started = time.perf_counter()
        repo.load(versions[-1].manifest_id)
        load_first = time.perf_counter() - started
        with status(show_progress(args), "verifying every version"):
            report = repo.verify()
        stored = repo.stats().bytes_stored

    logical = sum(info.bytes_logical for info in versions)
    ordered = sorted(save_seconds)
    return {
        "steps": args.steps,
        "versions": len(versions),
        "bytes_logical": logical,
        "bytes_stored": stored,
        "ratio": logical / stored if stored else 0.0,
        "save_ms_mean": 1000 * sum(ordered) / len(ordered),
        "save_ms_p99": 1000 * ordered[math.ceil(0.99 * len(ordered)) - 1],
        "load_latest_ms": 1000 * load_latest,
        "load_first_ms": 1000 * load_first,
        "verify_ok": report.ok,
        "verify_problems": report.problems,
        "backend": backend,
        "repository": args.dir,
    }


def cmd_demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        figures = _figures(args.dir, args)
    else:
        with tempfile.TemporaryDirectory(prefix="statebag-demo-") as tmp:
            figures = _figures(tmp, args)
    if args.json:
        print_json(figures)
    else:
        _print_table(figures)
    if figures["verify_ok"]:
        return 0
    print_error(f"verify found {len(figures['verify_problems'])} problem(s)")
    return IntegrityError.exit_code


def _print_table(figures: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"statebag demo: {figures['steps']} agent steps (backend {figures['backend']})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    verify = "ok" if figures["verify_ok"] else f"{len(figures['verify_problems'])} problem(s)"
    rows = [
        ("versions", f"{figures['versions']:,}"),
        ("logical bytes (all versions)", format_size(figures["bytes_logical"])),
        ("stored bytes", format_size(figures["bytes_stored"])),
        ("ratio", f"{figures['ratio']:.1f}x"),
        ("save, mean", f"{figures['save_ms_mean']:.1f} ms"),
        ("save, p99", f"{figures['save_ms_p99']:.1f} ms"),
        ("load latest version", f"{figures['load_latest_ms']:.1f} ms"),
        ("load first version", f"{figures['load_first_ms']:.1f} ms"),
        ("verify (every version)", verify),
    ]
    for row in rows:
        table.add_row(*row)
    out = console()
    out.print(table)
    for problem in figures["verify_problems"]:
        out.print(f"  {problem}")
    if figures["repository"] is not None:
        out.print(f"repository left in {figures['repository']} (chain {DEMO_CHAIN!r})")
