"""The ``statebag`` command line.

Exit codes: 0 success; 1 an unexpected statebag error; 2 invalid input or usage
(``InvalidInputError``, and argparse's own usage errors); 3 integrity failure; 4 conflict;
5 not found; 6 configuration error; 7 backend failure. Each comes from the ``exit_code`` of
the error class in ``statebag.errors``.

Progress goes to stderr only when stderr is a terminal and neither ``--json`` nor
``--quiet`` is given.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__, codec
from .chunking import Chunker, backend
from .errors import StatebagError

__all__ = ["main"]


def _demo_state(size: int, seed: int) -> dict[str, Any]:
    """A JSON-like agent state of about ``size`` bytes: a message history, scratch, a blob."""
    rng = random.Random(seed)
    words = [
        "the",
        "agent",
        "called",
        "a",
        "tool",
        "and",
        "the",
        "tool",
        "returned",
        "a",
        "result",
        "to",
        "the",
        "user",
    ]
    messages: list[dict[str, Any]] = []
    total = 0
    while total < size * 3 // 4:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 600)))
        messages.append({"role": rng.choice(["user", "assistant", "tool"]), "text": text})
        total += len(text) + 32
    return {
        "messages": messages,
        "scratch": {"step": len(messages), "notes": [rng.random() for _ in range(256)]},
        "attachment": rng.randbytes(size // 4),
    }


def _cmd_demo(args: argparse.Namespace) -> int:
    # Until the repository lands, the demo measures the core on a generated state: encode each
    # field, cut and hash it, compress the chunks. DIR is accepted and not used yet.
    size = args.size_mib << 20
    state = _demo_state(size, seed=args.seed)
    progress = _progress(args)
    chunker = Chunker()
    rows: list[tuple[str, int, float]] = []

    started = time.perf_counter()
    encoded = [codec.encode(value) for value in state.values()]
    rows.append(("encode (msgpack, canonical)", sum(map(len, encoded)), _since(started)))
    blob = b"".join(encoded)

    for threads in (1, 2):
        started = time.perf_counter()
        offsets, digests = chunker.cut_and_hash(blob, threads=threads)
        rows.append((f"cut_and_hash, threads={threads}", len(blob), _since(started)))
        if progress:
            print(f"cut and hashed with {threads} thread(s)", file=sys.stderr)

    started = time.perf_counter()
    stored = 0
    start = 0
    for end in offsets:
        stored += len(codec.compress(memoryview(blob)[start:end], level=3))
        start = end
    rows.append(("zstd level 3, per chunk", len(blob), _since(started)))

    summary = {
        "backend": backend,
        "state_bytes": len(blob),
        "chunks": len(offsets),
        "unique_chunks": len(set(digests)),
        "stored_bytes": stored,
        "stages": [
            {"stage": name, "bytes": nbytes, "seconds": seconds, "mb_per_s": _rate(nbytes, seconds)}
            for name, nbytes, seconds in rows
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_demo_table(summary, args.dir)
    return 0


def _print_demo_table(summary: dict[str, Any], directory: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"statebag demo (backend: {summary['backend']})")
    table.add_column("stage")
    table.add_column("MiB", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("MB/s", justify="right")
    for stage in summary["stages"]:
        table.add_row(
            stage["stage"],
            f"{stage['bytes'] / (1 << 20):.1f}",
            f"{stage['seconds']:.3f}",
            f"{stage['mb_per_s']:.0f}",
        )
    console = Console()
    console.print(table)
    ratio = summary["state_bytes"] / max(summary["stored_bytes"], 1)
    console.print(
        f"{summary['chunks']} chunks ({summary['unique_chunks']} unique), "
        f"{summary['state_bytes']:,} bytes -> {summary['stored_bytes']:,} compressed "
        f"({ratio:.2f}x)"
    )
    if directory is not None:
        console.print(f"(DIR {directory!r} is not used until the repository lands)")


def _progress(args: argparse.Namespace) -> bool:
    return not (args.json or args.quiet) and sys.stderr.isatty()


def _since(started: float) -> float:
    return time.perf_counter() - started


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statebag", description="Content-addressed, versioned storage for application state."
    )
    parser.add_argument("--version", action="version", version=f"statebag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the main job on a generated state")
    demo.add_argument("dir", nargs="?", default=None, help="repository directory")
    demo.add_argument("--size-mib", type=int, default=32, help="size of the generated state")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated state")
    demo.add_argument("--json", action="store_true", help="print the figures as JSON")
    demo.add_argument("--quiet", action="store_true", help="no progress on stderr")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except StatebagError as exc:
        print(f"statebag: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    return result


if __name__ == "__main__":
    sys.exit(main())
