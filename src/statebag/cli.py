"""The ``statebag`` command line: a face over :class:`statebag.Repository`.

Commands: ``init``, ``save``, ``load``, ``log``, ``diff``, ``fork``, ``merge``, ``reset``,
``verify``, ``stats``, ``gc`` and ``audit`` work on the repository named by ``-r/--repo
PATH_OR_URL`` (before or after the command) or, failing that, the ``STATEBAG_REPO``
environment variable. ``demo [DIR]`` runs a simulated agent workflow in DIR (or in a
temporary directory it removes) and reports what storage cost.

Only ``init`` creates a repository and only ``init`` passes configuration options: a
repository records its options at creation, and an open that contradicts them fails.

States travel as JSON. ``bytes`` values, which JSON lacks, are written by ``load`` as
``{"$base64": "<standard base64>"}`` objects, and ``save`` turns such a one-key object back
into bytes, so a state written by ``load`` saves back unchanged. Floats that are NaN or
infinite are written as the non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity``
(as Python's json module writes and reads them; strict JSON parsers refuse them).

Exit codes: 0 success; 1 an unexpected statebag error; 2 invalid input or usage
(``InvalidInputError``, and argparse's own usage errors); 3 integrity failure (also
``verify`` or ``demo`` finding a problem, and ``audit`` finding danger: something reachable
missing or under-counted, or a broken chain; leaks alone exit 0); 4 conflict (a stale
``--parent``, a chain moved by another writer, a merge conflict, ``fork`` onto an existing
chain); 5 not found; 6 configuration error; 7 backend failure; 130 interrupted. Each
of 1 to 7 comes from the ``exit_code`` of the error class in :mod:`statebag.errors`.

Durations (``gc --keep-within`` and ``--grace``, ``init --grace``) are a number of seconds or
a number with a unit: ``30s``, ``15m``, ``1h``, ``7d``, ``2w``.

Progress goes to stderr only when stderr is a terminal and neither ``--json`` nor
``--quiet`` is given.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import random
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from . import __version__, backend
from .bag import StateBag
from .errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StatebagError,
)
from .ids import SHORT_LENGTH, looks_like_id
from .merging import ON_CONFLICT, STRATEGIES
from .repository import Repository
from .repository import open as open_repository
from .results import AuditReport, CommitResult, ManifestInfo

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]

REPO_ENV = "STATEBAG_REPO"
DEMO_CHAIN = "demo-agent"

_EXIT_CODES = """\
exit codes:
  0    success
  1    unexpected statebag error
  2    invalid input or usage (bad JSON file, bad option, no repository given)
  3    integrity failure (also: verify or demo found a problem; audit found danger:
       reachable data missing or under-counted, or a broken chain)
  4    conflict (another writer moved the chain; a stale --parent; a merge conflict;
       fork onto a chain that exists)
  5    not found (no such repository, chain, version or field)
  6    configuration error (options contradict the repository)
  7    backend failure (storage I/O)
  130  interrupted

The repository is -r/--repo PATH_OR_URL (a directory, file:///abs/path or memory://name),
before or after the command, or else the STATEBAG_REPO environment variable.
"""

_JSON_NOTE = """\
JSON: bytes values are written as {"$base64": "<standard base64>"} objects, and save turns
such a one-key object back into bytes. NaN and infinite floats are written as the
non-standard tokens NaN, Infinity and -Infinity (Python's json reads them; strict parsers
refuse them). Keys are sorted; the text is UTF-8.
"""


# ---------------------------------------------------------------------------------------------
# JSON in and out
# ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, indent=indent, default=_json_default
    )


def _loads(data: bytes | str, *, source: str) -> Any:
    """Parse JSON text, turning ``{"$base64": ...}`` objects back into bytes."""

    def hook(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and isinstance(obj.get("$base64"), str):
            try:
                return base64.b64decode(obj["$base64"], validate=True)
            except binascii.Error as exc:
                raise InvalidInputError(
                    f'{source}: a {{"$base64": ...}} object holds invalid base64: {exc}',
                    path=source,
                ) from exc
        return obj

    try:
        return json.loads(data, object_hook=hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{source} is not valid JSON: {exc}", path=source) from exc
    except RecursionError as exc:
        raise InvalidInputError(f"{source} is nested too deeply to parse", path=source) from exc


def _read_state(file: str) -> dict[str, Any]:
    source = "<stdin>" if file == "-" else file
    try:
        if file == "-":
            data: bytes | str = (
                sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
            )
        else:
            data = Path(file).read_bytes()
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read {source}: {exc.strerror or exc}", path=source
        ) from exc
    state = _loads(data, source=source)
    if not isinstance(state, dict):
        raise InvalidInputError(
            f"{source} holds a JSON {type(state).__name__}; a state is a JSON object "
            "of field names to values",
            path=source,
        )
    return state


def _write_text(text: str, stream: IO[str] | None = None) -> None:
    """Write ``text`` as UTF-8 whatever the locale, since JSON output must be UTF-8."""
    stream = stream if stream is not None else sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def _print_json(value: Any) -> None:
    _write_text(_dumps(value) + "\n")


def _names(text: str) -> list[str]:
    """A comma-separated list of field names (argparse type)."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """Seconds from ``90``, ``1.5``, ``30s``, ``15m``, ``1h``, ``7d`` or ``2w`` (argparse type)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: seconds, or a number with a unit s, m, h, d or w "
            "(30s, 15m, 1h, 7d, 2w)"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration")
    return seconds


def _whole_duration(text: str) -> int:
    """A duration of whole seconds (argparse type), as the repository records ``grace``."""
    seconds = _duration(text)
    if seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(seconds)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def _console(stream: IO[str] | None = None) -> Console:
    from rich.console import Console

    # Markup and emoji off: chain names, field names and meta are user data, printed as is.
    return Console(
        file=stream if stream is not None else sys.stdout,
        markup=False,
        emoji=False,
        highlight=False,
    )


def _show_progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "json", False) or getattr(args, "quiet", False)) and (
        sys.stderr.isatty()
    )


@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr; yields the function that advances it by one."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console(sys.stderr),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


@contextmanager
def _status(enabled: bool, message: str) -> Iterator[None]:
    """A spinner on stderr for work that reports no steps."""
    if not enabled:
        yield
        return
    with _console(sys.stderr).status(message):
        yield


def _print_fields(rows: Sequence[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    _write_text("".join(f"{name:<{width}}  {value}\n" for name, value in rows))


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{nbytes:,} ({value:.1f} {unit})"


def _error(message: str) -> None:
    print(f"statebag: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Opening the repository
# ---------------------------------------------------------------------------------------------


@contextmanager
def _open(args: argparse.Namespace) -> Iterator[Repository]:
    # No options here: they are fixed at init, and repeating them could only contradict.
    try:
        repo = open_repository(args.repo, create=False)
    except NotFoundError as exc:
        raise NotFoundError(
            f"no repository at {args.repo}; create one with `statebag -r {args.repo} init`"
        ) from exc
    with repo:
        yield repo


def _resolve(repo: Repository, ref: str) -> str:
    """A manifest id from an id (64 lowercase hex characters) or a chain name (its head)."""
    if looks_like_id(ref):
        return ref
    head = repo.head(ref)
    if head is None:
        raise NotFoundError(f"chain {ref!r} has no version")
    return head


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

_INIT_OPTIONS = (
    "min_size",
    "avg_size",
    "max_size",
    "compression_level",
    "pack_size",
    "inline_max",
    "grace",
)


def _cmd_init(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        name: getattr(args, name) for name in _INIT_OPTIONS if getattr(args, name) is not None
    }
    if args.no_fsync:
        options["fsync"] = False
    # Opening without create first tells a new repository from an existing one; open()
    # itself does not say which it did.
    try:
        repo = open_repository(args.repo, create=False, **options)
        created = False
    except NotFoundError:
        repo = open_repository(args.repo, create=True, **options)
        created = True
    with repo:
        config = msgspec.structs.asdict(repo.config)
    if args.json:
        _print_json({"repository": args.repo, "created": created, "config": config})
        return 0
    verb = "created" if created else "already exists, options agree:"
    _write_text(f"repository {args.repo} {verb}\n")
    _print_fields(list(config.items()))
    return 0


def _meta(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--meta`` JSON object, or None."""
    if args.meta is None:
        return None
    meta = _loads(args.meta, source="--meta")
    if not isinstance(meta, dict):
        raise InvalidInputError("--meta must be a JSON object", path="--meta")
    return meta


def _commit_rows(result: CommitResult) -> list[tuple[str, object]]:
    """What ``save`` and ``merge`` print after the parent rows."""
    return [
        ("nodes", f"{result.nodes_written} written, {result.nodes_reused} reused"),
        ("logical", _size(result.bytes_logical)),
        ("new raw", _size(result.bytes_new_raw)),
        ("new stored", _size(result.bytes_new_stored)),
        ("time", f"{result.timings.get('total', 0.0) * 1000:.1f} ms"),
    ]


def _cmd_save(args: argparse.Namespace) -> int:
    state = _read_state(args.file)
    meta = _meta(args)
    with _open(args) as repo:
        result = repo.save(args.chain, state, parent=args.parent, changed=args.changed, meta=meta)
    if args.json:
        _print_json(msgspec.to_builtins(result))
        return 0
    _print_fields(
        [
            ("manifest", result.manifest_id),
            ("chain", f"{result.chain} (seq {result.seq})"),
            ("parent", result.parent or "-"),
            *_commit_rows(result),
        ]
    )
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        if looks_like_id(args.ref):
            state = repo.load(args.ref, fields=args.fields)
        else:
            state = repo.load_latest(args.ref, fields=args.fields)
    text = _dumps(dict(state), indent=None if args.compact else 2) + "\n"
    if args.output is None:
        _write_text(text)
        return 0
    try:
        Path(args.output).write_bytes(text.encode("utf-8"))
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {args.output}: {exc.strerror or exc}", path="--output"
        ) from exc
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        if repo.head(args.chain) is None:
            raise NotFoundError(f"chain {args.chain!r} has no version")
        # One more than --limit tells a cut-off history (whose lanes run on) from a whole one.
        limit = None if args.limit is None else args.limit + 1
        infos = list(islice(repo.log(args.chain, graph=args.graph), limit))
        cut = args.limit is not None and len(infos) > args.limit
        if cut:
            del infos[args.limit :]
    if args.json:
        rows = []
        for info in infos:
            row = msgspec.structs.asdict(info)
            row["created_at"] = info.created_at.isoformat()
            rows.append(row)
        _print_json(rows)
        return 0
    if args.graph:
        _write_text("".join(line + "\n" for line in _graph_text(infos, cut=cut)))
        return 0
    from rich.table import Table

    table = Table(title=f"chain {args.chain}, newest first")
    table.add_column("manifest")
    table.add_column("seq", justify="right")
    table.add_column("created_at (UTC)")
    table.add_column("bytes_logical", justify="right")
    table.add_column("meta", overflow="fold")
    for info in infos:
        table.add_row(
            info.manifest_id[:SHORT_LENGTH],
            str(info.seq),
            _time(info),
            f"{info.bytes_logical:,}",
            _dumps(info.meta, indent=None) if info.meta is not None else "",
        )
    _console().print(table)
    return 0


def _time(info: ManifestInfo) -> str:
    return info.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _graph_text(infos: Sequence[ManifestInfo], *, cut: bool = False) -> list[str]:
    """``log --graph``: the graph of :func:`_graph` with each version's short id, chain,
    seq and time (UTC) beside its row."""
    drawn = _graph(infos, cut=cut)
    width = max(len(graph) for graph, _ in drawn) if drawn else 0
    chains = max((len(info.chain) for info in infos), default=0)
    seqs = max((len(str(info.seq)) for info in infos), default=0)
    lines = []
    for graph, info in drawn:
        if info is None:
            lines.append(graph)
            continue
        lines.append(
            f"{graph:<{width}}  {info.manifest_id[:SHORT_LENGTH]}  {info.chain:<{chains}}  "
            f"seq {info.seq:>{seqs}}  {_time(info)}"
        )
    return lines


def _graph(
    infos: Sequence[ManifestInfo], *, cut: bool = False
) -> list[tuple[str, ManifestInfo | None]]:
    """Lanes for versions listed newest first, each before its parents: one row per version
    (``*`` in its lane, ``|`` in every other open lane) paired with it, and connecting rows
    paired with None.

    A lane waits for one version. A version takes the leftmost lane waiting for it; the other
    lanes waiting for it join that one first, on a line such as ``|/`` or ``|/_/`` (``_``
    runs along the bottom to the lane they join). Its first parent then continues its lane,
    and each further parent opens a lane in the first free slot to its right, on a line such
    as ``|\\`` or ``|\\ \\`` (``-`` where the way crosses to a lane further on). Lanes keep
    their slot: a lane that ends leaves a gap, which a later lane may reuse.

    A parent not listed (deleted: the history was pruned there) ends its lane, or opens
    none. With ``cut``, the list is the newest part of a longer history (``--limit``):
    every parent gets its lane, and the lanes of those below the cut run off the bottom, so
    the lines are the first lines of the whole history's graph.
    """
    listed = {info.manifest_id for info in infos}
    lanes: list[str | None] = []  # the version each lane waits for; None: a free slot
    lines: list[tuple[str, ManifestInfo | None]] = []

    def free_slot(start: int) -> int:
        for slot in range(start, len(lanes)):
            if lanes[slot] is None:
                return slot
        lanes.append(None)
        return len(lanes) - 1

    def draw(cells: list[str]) -> str:
        return "".join(cells).rstrip()

    def lane_cells(skip: Sequence[int] = ()) -> list[str]:
        cells = [" "] * (2 * len(lanes))
        for slot, waiting in enumerate(lanes):
            if waiting is not None and slot not in skip:
                cells[2 * slot] = "|"
        return cells

    for info in infos:
        waiting = [slot for slot, want in enumerate(lanes) if want == info.manifest_id]
        col = waiting[0] if waiting else free_slot(0)
        lanes[col] = info.manifest_id
        joining = waiting[1:]
        if joining:
            cells = lane_cells(skip=joining)
            for slot in joining:
                cells[2 * slot - 1] = "/"
            for at in range(2 * col + 1, 2 * joining[-1] - 1):
                if cells[at] == " ":
                    cells[at] = "_"
            lines.append((draw(cells), None))
            for slot in joining:
                lanes[slot] = None
        cells = lane_cells()
        cells[2 * col] = "*"
        lines.append((draw(cells), info))

        parents = [p if cut or p in listed else None for p in info.parents] or [None]
        lanes[col] = parents[0]
        opened = []
        for parent in parents[1:]:
            if parent is None:
                continue
            slot = free_slot(col + 1)
            lanes[slot] = parent
            opened.append(slot)
        if opened:
            cells = lane_cells(skip=opened)
            anchor = col
            for slot in opened:
                cells[2 * slot - 1] = "\\"
                for at in range(2 * anchor + 1, 2 * slot - 1):
                    if cells[at] == " ":
                        cells[at] = "-"
                anchor = slot
            lines.append((draw(cells), None))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return lines


def _cmd_diff(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        a = _resolve(repo, args.a)
        b = _resolve(repo, args.b)
        diff = repo.diff(a, b)
    if args.json:
        _print_json(
            {
                "a": a,
                "b": b,
                "added": diff.added,
                "removed": diff.removed,
                "changed": {name: list(sizes) for name, sizes in diff.changed.items()},
            }
        )
        return 0
    header = f"{a[:SHORT_LENGTH]} -> {b[:SHORT_LENGTH]}"
    if not (diff.added or diff.removed or diff.changed):
        _write_text(f"{header}: no differences\n")
        return 0
    from rich.table import Table

    table = Table(title=header)
    table.add_column("")
    table.add_column("field", overflow="fold")
    table.add_column("old bytes", justify="right")
    table.add_column("new bytes", justify="right")
    rows: list[tuple[str, str, str, str]] = []
    rows += [("+", name, "", f"{size:,}") for name, size in diff.added.items()]
    rows += [("-", name, f"{size:,}", "") for name, size in diff.removed.items()]
    rows += [("~", name, f"{old:,}", f"{new:,}") for name, (old, new) in diff.changed.items()]
    for row in sorted(rows, key=lambda row: row[1]):
        table.add_row(*row)
    _console().print(table)
    _write_text(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed\n"
    )
    return 0


def _cmd_fork(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        point = repo.fork(args.source, args.chain)
        info = repo.info(point)
    if args.json:
        _print_json({"chain": args.chain, "source": args.source, "head": point})
        return 0
    _print_fields(
        [
            ("chain", args.chain),
            ("head", point),
            ("forked from", f"{info.chain} (seq {info.seq})"),
        ]
    )
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    meta = _meta(args)
    with _open(args) as repo:
        result = repo.merge(
            args.target,
            args.branches,
            strategy=args.strategy,
            on_conflict=args.on_conflict,
            meta=meta,
        )
    if args.json:
        _print_json(msgspec.to_builtins(result))
        return 0
    rows: list[tuple[str, object]] = [
        ("manifest", result.manifest_id),
        ("chain", f"{result.chain} (seq {result.seq})"),
        ("parent", result.parent or "-"),
    ]
    rows += [
        ("merged", f"{parent} ({branch})")
        for branch, parent in zip(args.branches, result.parents[1:], strict=False)
    ]
    rows.append(("strategy", args.strategy))
    _print_fields(rows + _commit_rows(result))
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        result = repo.reset(args.chain, args.manifest_id)
    if args.json:
        _print_json(msgspec.to_builtins(result))
        return 0
    _print_fields(
        [
            ("chain", result.chain),
            ("head", result.head),
            ("previous", result.previous),
            ("discarded", len(result.discarded)),
        ]
    )
    for manifest_id in result.discarded:
        _write_text(f"  discarded {manifest_id}\n")
    if result.discarded:
        _write_text(
            "discarded versions stay loadable by id until gc collects them (pin one to keep it)\n"
        )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        target = _resolve(repo, args.ref) if args.ref is not None else None
        with _status(_show_progress(args), "verifying"):
            report = repo.verify(target, read_data=args.read_data)
    if args.json:
        _print_json(msgspec.to_builtins(report))
    else:
        _print_fields(
            [
                ("result", "ok" if report.ok else f"{len(report.problems)} problem(s)"),
                ("manifests", report.manifests),
                ("nodes checked", report.nodes_checked),
                ("nodes read", report.nodes_read),
            ]
        )
        for problem in report.problems:
            _write_text(f"  {problem}\n")
    if report.ok:
        return 0
    _error(f"verify found {len(report.problems)} problem(s)")
    return IntegrityError.exit_code


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as repo:
        stats = repo.stats()
    if args.json:
        _print_json(msgspec.to_builtins(stats))
        return 0
    ratio = stats.bytes_logical / stats.bytes_stored if stats.bytes_stored else 0.0
    _print_fields(
        [
            ("chains", stats.chains),
            ("versions", stats.manifests),
            ("nodes", stats.nodes),
            ("packs", stats.packs),
            ("logical", _size(stats.bytes_logical)),
            ("stored", _size(stats.bytes_stored)),
            ("ratio", f"{ratio:.2f}x"),
        ]
    )
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    rules = (args.keep_last, args.keep_within, args.keep_daily)
    if args.chains and all(rule is None for rule in rules):
        raise InvalidInputError(
            "--chain only limits retention: give --keep-last, --keep-within or --keep-daily",
            path="--chain",
        )
    with _open(args) as repo:
        message = "collecting garbage (dry run)" if args.dry_run else "collecting garbage"
        with _status(_show_progress(args), message):
            report = repo.gc(
                keep_last=args.keep_last,
                keep_within=args.keep_within,
                keep_daily=args.keep_daily,
                chains=args.chains,
                grace=args.grace,
                dry_run=args.dry_run,
            )
    if args.json:
        _print_json(msgspec.to_builtins(report))
        return 0
    if args.dry_run:
        _write_text("dry run: nothing was deleted; a gc would have done this\n")
    _print_fields(
        [
            ("versions deleted", report.manifests_deleted),
            ("nodes freed", report.nodes_freed),
            ("packs deleted", report.packs_deleted),
            ("packs compacted", report.packs_compacted),
            ("reclaimed", _size(report.bytes_reclaimed)),
            ("deferred", report.deferred),
            ("dead letters", report.dead_letters_processed),
        ]
    )
    return 0


# What an audit lists, in the order printed: (AuditReport field, label, danger).
_AUDIT_FINDINGS = (
    ("under_counted", "under-counted", True),
    ("missing_nodes", "missing", True),
    ("broken_chains", "broken chain", True),
    ("over_counted", "over-counted", False),
    ("unswept", "unswept", False),
    ("orphan_packs", "orphan pack", False),
)
_AUDIT_SHOWN = 20  # ids listed per finding in the human output; --json lists them all


def _cmd_audit(args: argparse.Namespace) -> int:
    with _open(args) as repo, _status(_show_progress(args), "auditing every reference"):
        report = repo.audit(repair=args.repair)
    if args.json:
        _print_json(msgspec.to_builtins(report))
    else:
        _print_audit(report, repair=args.repair)
    if report.ok:
        return 0
    danger = sum(len(getattr(report, name)) for name, _, bad in _AUDIT_FINDINGS if bad)
    _error(f"audit found {danger} problem(s) that put reachable data in danger")
    return IntegrityError.exit_code


def _print_audit(report: AuditReport, *, repair: bool) -> None:
    leaks = sum(len(getattr(report, name)) for name, _, bad in _AUDIT_FINDINGS if not bad)
    if not report.ok:
        result = "DANGER"
    elif leaks:
        result = f"ok, {leaks} leak(s)"
    else:
        result = "ok"
    rows: list[tuple[str, object]] = [
        ("result", result),
        ("versions", report.manifests),
        ("nodes", report.nodes),
    ]
    rows += [(label, len(getattr(report, name))) for name, label, _ in _AUDIT_FINDINGS]
    rows.append(("saves in flight", len(report.in_flight)))
    if repair:
        rows.append(("repaired", report.repaired))
    _print_fields(rows)
    for name, label, _ in _AUDIT_FINDINGS:
        ids: list[str] = getattr(report, name)
        for found in ids[:_AUDIT_SHOWN]:
            _write_text(f"  {label} {found}\n")
        if len(ids) > _AUDIT_SHOWN:
            _write_text(f"  ... and {len(ids) - _AUDIT_SHOWN} more {label} (--json lists all)\n")
    if repair and report.repaired:
        _write_text("repairs made; the lists above are what the audit found before them\n")


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------

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
_ATTACHMENT_EVERY = 25


def _demo_message(rng: random.Random, step: int) -> dict[str, Any]:
    words = rng.choices(_VOCABULARY, k=rng.randint(20, 600))
    return {"role": rng.choice(_ROLES), "step": step, "text": " ".join(words)}


def _demo_step(bag: StateBag, rng: random.Random, step: int) -> None:
    """One step of the simulated agent, made through the bag so it tracks what changed."""
    messages = bag["messages"]
    for _ in range(rng.randint(1, 2)):
        messages.append(_demo_message(rng, step))
    bag["scratch"] = {"step": step, "activations": [rng.random() for _ in range(300)]}
    if step % _ATTACHMENT_EVERY == 0:
        attachment = bytearray(bag.data["attachment"])
        at = rng.randrange(len(attachment) - 16)
        attachment[at : at + rng.randint(1, 16)] = rng.randbytes(16)
        bag["attachment"] = bytes(attachment)


def _demo_figures(location: str, args: argparse.Namespace) -> dict[str, Any]:
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
        with _progress(_show_progress(args), "agent steps", args.steps) as advance:
            for step in range(first_step, first_step + args.steps):
                _demo_step(bag, rng, step)
                started = time.perf_counter()
                repo.save(DEMO_CHAIN, bag)
                save_seconds.append(time.perf_counter() - started)
                advance()
        versions = list(repo.log(DEMO_CHAIN))

    # Loads and verify go through a fresh handle, so no cache of the saves helps them.
    with open_repository(location, create=False) as repo:
        started = time.perf_counter()
        repo.load(versions[0].manifest_id)
        load_latest = time.perf_counter() - started
        started = time.perf_counter()
        repo.load(versions[-1].manifest_id)
        load_first = time.perf_counter() - started
        with _status(_show_progress(args), "verifying every version"):
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


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        figures = _demo_figures(args.dir, args)
    else:
        with tempfile.TemporaryDirectory(prefix="statebag-demo-") as tmp:
            figures = _demo_figures(tmp, args)
    if args.json:
        _print_json(figures)
    else:
        _print_demo_table(figures)
    if figures["verify_ok"]:
        return 0
    _error(f"verify found {len(figures['verify_problems'])} problem(s)")
    return IntegrityError.exit_code


def _print_demo_table(figures: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"statebag demo: {figures['steps']} agent steps (backend {figures['backend']})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    verify = "ok" if figures["verify_ok"] else f"{len(figures['verify_problems'])} problem(s)"
    rows = [
        ("versions", f"{figures['versions']:,}"),
        ("logical bytes (all versions)", _size(figures["bytes_logical"])),
        ("stored bytes", _size(figures["bytes_stored"])),
        ("ratio", f"{figures['ratio']:.1f}x"),
        ("save, mean", f"{figures['save_ms_mean']:.1f} ms"),
        ("save, p99", f"{figures['save_ms_p99']:.1f} ms"),
        ("load latest version", f"{figures['load_latest_ms']:.1f} ms"),
        ("load first version", f"{figures['load_first_ms']:.1f} ms"),
        ("verify (every version)", verify),
    ]
    for row in rows:
        table.add_row(*row)
    console = _console()
    console.print(table)
    for problem in figures["verify_problems"]:
        console.print(f"  {problem}")
    if figures["repository"] is not None:
        console.print(f"repository left in {figures['repository']} (chain {DEMO_CHAIN!r})")


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------


def _wrap(text: str) -> str:
    """Fill each one-line paragraph; paragraphs laid out by hand keep their lines."""
    return "\n\n".join(
        paragraph if "\n" in paragraph else textwrap.fill(paragraph, width=88)
        for paragraph in text.split("\n\n")
    )


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="statebag",
        description="Content-addressed, versioned storage for application state.",
        epilog=_EXIT_CODES,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"statebag {__version__}")
    repo_help = f"repository path or URL (default: ${REPO_ENV})"
    parser.add_argument("-r", "--repo", metavar="PATH_OR_URL", default=None, help=repo_help)
    # The same option after the command; SUPPRESS keeps a value given before it.
    with_repo = argparse.ArgumentParser(add_help=False)
    with_repo.add_argument(
        "-r", "--repo", metavar="PATH_OR_URL", default=argparse.SUPPRESS, help=repo_help
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], summary: str, epilog: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[with_repo],
            help=summary,
            description=summary,
            epilog=_wrap(epilog) or None,
            formatter_class=formatter,
        )
        sub.set_defaults(handler=handler, needs_repo=True)
        return sub

    init = command(
        "init",
        _cmd_init,
        "create the repository and print its configuration",
        "Running init again with the same options (or none) is fine; an option that "
        "contradicts the recorded configuration fails with exit code 6.",
    )
    init.add_argument("--min-size", type=int, help="smallest chunk, bytes (default 4096)")
    init.add_argument("--avg-size", type=int, help="average chunk, bytes (default 16384)")
    init.add_argument("--max-size", type=int, help="largest chunk, bytes (default 65536)")
    init.add_argument("--compression-level", type=int, help="zstd level (default 3)")
    init.add_argument("--pack-size", type=int, help="target pack size, bytes (default 16 MiB)")
    init.add_argument(
        "--inline-max", type=int, help="values under this many bytes stay inline (default 512)"
    )
    init.add_argument(
        "--grace",
        type=_whole_duration,
        metavar="DURATION",
        help="how long gc leaves unreferenced data before freeing it, and audit --repair an "
        "orphan pack (default 1h; 0 allowed)",
    )
    init.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not wait for the disk on commit (fast, unsafe on power loss)",
    )
    init.add_argument("--json", action="store_true", help="print the configuration as JSON")

    save = command(
        "save",
        _cmd_save,
        "save a JSON state as the next version of a chain",
        "FILE holds one JSON object, the state (- reads stdin).\n\n" + _JSON_NOTE,
    )
    save.add_argument("chain", metavar="CHAIN", help="chain name")
    save.add_argument("file", metavar="FILE", help="JSON file holding the state, - for stdin")
    save.add_argument(
        "--parent",
        metavar="ID",
        help="the version this state was made from; fails (exit 4) if the head moved on",
    )
    save.add_argument(
        "--changed",
        metavar="A,B",
        type=_names,
        help="the only fields that changed since the parent; the others are carried over "
        "from it unread (trusted, not checked)",
    )
    save.add_argument("--meta", metavar="JSON", help="a JSON object stored with the version")
    save.add_argument("--json", action="store_true", help="print the whole result as JSON")

    load = command(
        "load",
        _cmd_load,
        "print a version's state as JSON",
        "ID_OR_CHAIN of 64 lowercase hex characters is a manifest id; anything else is a "
        "chain name, meaning its newest version.\n\n" + _JSON_NOTE,
    )
    load.add_argument("ref", metavar="ID_OR_CHAIN", help="manifest id or chain name")
    load.add_argument("--fields", metavar="A,B", type=_names, help="load only these fields")
    load.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    load.add_argument("--compact", action="store_true", help="one line, no indentation")

    log = command(
        "log",
        _cmd_log,
        "list the versions of a chain, newest first",
        "Without --graph: the chain's head and its first parents (a forked chain's history "
        "goes on into the chain it was forked from). With --graph: every ancestor through all "
        "parents, merged branches included, each once, newest first, drawn in lanes: * marks "
        "a version in its lane, | another open lane, a |\\ line a merge opening a lane for "
        "each further parent and a |/ line lanes joining at a version they share. Each row "
        "gives the short id, the chain the version was saved on, its seq and its time (UTC).\n\n"
        "--json keys of each version: manifest_id, chain, parent, parents, seq, created_at, "
        "meta, bytes_logical.",
    )
    log.add_argument("chain", metavar="CHAIN", help="chain name")
    log.add_argument("--limit", type=_positive, metavar="N", help="at most N versions")
    log.add_argument(
        "--graph", action="store_true", help="every ancestor through all parents, as a graph"
    )
    log.add_argument("--json", action="store_true", help="print a JSON list (full ids)")

    diff = command(
        "diff",
        _cmd_diff,
        "list the fields added, removed and changed from A to B, with sizes",
        "A and B are manifest ids or chain names (a chain means its newest version). "
        "Sizes are bytes of the fields' canonical encodings.",
    )
    diff.add_argument("a", metavar="A", help="old version: id or chain")
    diff.add_argument("b", metavar="B", help="new version: id or chain")
    diff.add_argument("--json", action="store_true", help="print the diff as JSON")

    fork = command(
        "fork",
        _cmd_fork,
        "start a new chain at a version: no version is written and no data copied",
        "SOURCE is a chain (its newest version) or a manifest id. The new chain's head is "
        "that version, and its next save has it as parent. Fails with exit 4 if NEW already "
        "has a version, and exit 2 if NEW looks like a manifest id (64 hex characters).\n\n"
        "--json keys: chain, source, head (the version the new chain starts at).",
    )
    fork.add_argument("source", metavar="SOURCE", help="chain or manifest id to fork from")
    fork.add_argument("chain", metavar="NEW", help="name of the new chain")
    fork.add_argument("--json", action="store_true", help="print the result as JSON")

    merge = command(
        "merge",
        _cmd_merge,
        "merge the heads of BRANCH chains into TARGET as one new version with several parents",
        "Every strategy works field by field against the newest common ancestor of all the "
        "heads; a side (TARGET, then each BRANCH in the order given) changed a field when it "
        "differs there from the ancestor. three_way (default): a field changed on one side "
        "takes that side's value; changed on several sides to different values is a "
        "conflict. deep_merge: the same, but conflicting objects merge key by key and lists "
        "get the elements each side appended, in side order. last_wins: the last side that "
        "changed a field wins. collect: a changed field becomes the list of the changed "
        "sides' values, in side order.\n\n"
        "--on-conflict raise (default) fails with exit 4 naming every conflicting field and "
        "writes nothing; last_wins takes the last changed side's value. The branches keep "
        "their heads.\n\n"
        "--json keys: those of save; parents lists TARGET's head, then each BRANCH's head.",
    )
    merge.add_argument("target", metavar="TARGET", help="chain that gets the merged version")
    merge.add_argument(
        "branches", metavar="BRANCH", nargs="+", help="chains whose heads are merged in"
    )
    merge.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="three_way",
        help="how fields combine (default three_way)",
    )
    merge.add_argument(
        "--on-conflict",
        choices=ON_CONFLICT,
        default="raise",
        help="what a conflict does (default raise: exit 4, nothing written)",
    )
    merge.add_argument("--meta", metavar="JSON", help="a JSON object stored with the version")
    merge.add_argument("--json", action="store_true", help="print the whole result as JSON")

    reset = command(
        "reset",
        _cmd_reset,
        "move a chain's head back to an earlier version of its history",
        "ID must be a version that `log CHAIN` lists (the head itself changes nothing). Fails "
        "with exit 4 if another writer moves the chain meanwhile. The versions after ID are "
        "no longer in the chain's log but stay loadable by id until gc collects them, once "
        "no head reaches them, nothing pins or holds them and the grace period has passed.\n\n"
        "--json keys: chain, head (the new head), previous (the old head), discarded (the "
        "ids log no longer lists, newest first).",
    )
    reset.add_argument("chain", metavar="CHAIN", help="chain name")
    reset.add_argument("manifest_id", metavar="ID", help="the version to move the head back to")
    reset.add_argument("--json", action="store_true", help="print the result as JSON")

    verify = command(
        "verify",
        _cmd_verify,
        "check that versions reach only present, intact data",
        "Without ID every version is checked. Exits 3 when a problem is found.",
    )
    verify.add_argument(
        "ref", metavar="ID", nargs="?", default=None, help="one version: id or chain name"
    )
    verify.add_argument(
        "--read-data",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="fraction of chunks read back and re-hashed (default 1: all; the others are "
        "only checked to be indexed in a present pack)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    stats = command("stats", _cmd_stats, "print counts and bytes of the whole repository")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")

    gc = command(
        "gc",
        _cmd_gc,
        "delete old versions by retention rules, then free what no version references",
        "Retention runs only when a --keep-* rule is given; a version any rule keeps stays, "
        "and chain heads and pinned versions always stay. Without a rule gc only frees the "
        "data of versions already deleted. Data unreferenced for less than the grace period "
        "(the repository's, 1h by default) is left for a later run and counted as deferred.\n\n"
        "DURATION is seconds or a number with a unit: 30s, 15m, 1h, 7d, 2w.\n\n"
        "--json keys: manifests_deleted, nodes_freed, packs_deleted, packs_compacted, "
        "bytes_reclaimed, deferred, dead_letters_processed. A dry run rehearses the whole "
        "gc without writing anything and reports what it would do.",
    )
    gc.add_argument(
        "--keep-last", type=_count, metavar="N", help="keep the newest N versions of each chain"
    )
    gc.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help="keep the versions saved within DURATION of now",
    )
    gc.add_argument(
        "--keep-daily",
        type=_count,
        metavar="N",
        help="keep the newest version of each of the last N days that have one",
    )
    gc.add_argument(
        "--chain",
        dest="chains",
        action="append",
        metavar="NAME",
        help="apply retention to this chain only (repeatable; default: every chain)",
    )
    gc.add_argument(
        "--grace",
        type=_duration,
        metavar="DURATION",
        help="free data unreferenced for at least this long (default: the repository's; 0: "
        "everything unreferenced now)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what gc would do, write nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")

    audit = command(
        "audit",
        _cmd_audit,
        "recount every reference and check every reachable node and parent link",
        "Danger (exit 3): a reachable node under-counted (gc could free it) or missing, or a "
        "chain whose parent link leads nowhere. Leaks (over-counted or unswept nodes, orphan "
        "packs) are listed but exit 0. --repair fixes the counts, marks unswept nodes for gc, "
        "deletes orphan packs older than the repository's grace period and records a lost "
        "parent as pruned (a tombstone); it cannot bring back missing data. The report lists "
        "what the audit found before repairing: run audit again to confirm.\n\n"
        "--json keys: ok, under_counted, over_counted, missing_nodes, orphan_packs, "
        "broken_chains, in_flight, repaired, unswept, manifests, nodes.",
    )
    audit.add_argument(
        "--repair", action="store_true", help="fix counts and free leaks (never reachable data)"
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")

    demo = commands.add_parser(
        "demo",
        help="simulate an agent workflow and report what storing it cost",
        description=(
            f"Simulate an agent of --steps steps, saving its state to chain {DEMO_CHAIN!r} "
            "after each: chat messages appended, a scratch field rewritten, and a 2 MiB "
            f"attachment edited every {_ATTACHMENT_EVERY} steps. Reports versions, logical "
            "and stored bytes, save and load times, and a verify of every version (exit 3 "
            "if it fails)."
        ),
        epilog=(
            "DIR is created if missing and kept; a rerun continues the chain. Without DIR the "
            "demo runs in a temporary directory removed afterwards. The demo never uses "
            f"-r/--repo or ${REPO_ENV}, so it cannot write into a repository by accident. "
            "--json keys: steps, versions, bytes_logical (sum over every version), "
            "bytes_stored, ratio, save_ms_mean, save_ms_p99, load_latest_ms, load_first_ms, "
            "verify_ok, verify_problems, backend, repository (DIR, or null)."
        ),
    )
    demo.add_argument("dir", metavar="DIR", nargs="?", default=None, help="repository directory")
    demo.add_argument("--steps", type=_positive, default=200, help="agent steps (default 200)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    demo.add_argument("--json", action="store_true", help="print the figures as JSON")
    demo.add_argument("--quiet", action="store_true", help="no progress on stderr")
    demo.set_defaults(handler=_cmd_demo, needs_repo=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (argparse usage errors exit 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.needs_repo:
        args.repo = args.repo or os.environ.get(REPO_ENV) or None
        if args.repo is None:
            parser.error(
                f"no repository given: pass -r/--repo PATH_OR_URL or set {REPO_ENV} "
                "to the repository's path or URL"
            )
    elif args.repo is not None:
        parser.error(f"{args.command} takes its directory as DIR, not -r/--repo")
    try:
        result: int = args.handler(args)
    except StatebagError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`statebag load x | head`); stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
