"""The handlers of the commands that work on a repository: each takes the parsed
arguments and returns the exit code."""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from ..errors import IntegrityError, InvalidInputError, NotFoundError
from ..ids import SHORT_LENGTH, looks_like_id
from ..repository import open as open_repository
from ..results import AuditReport, CommitResult
from .graph import graph_text
from .shared import (
    console,
    dumps,
    format_created_at,
    format_size,
    loads,
    open_repo,
    print_error,
    print_fields,
    print_json,
    read_state,
    resolve_ref,
    show_progress,
    status,
    write_text,
)

_INIT_OPTIONS = (
    "min_size",
    "avg_size",
    "max_size",
    "compression_level",
    "pack_size",
    "inline_max",
    "grace",
)


def cmd_init(args: argparse.Namespace) -> int:
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
        print_json({"repository": args.repo, "created": created, "config": config})
        return 0
    verb = "created" if created else "already exists, options agree:"
    write_text(f"repository {args.repo} {verb}\n")
    print_fields(list(config.items()))
    return 0


def _meta(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--meta`` JSON object, or None."""
    if args.meta is None:
        return None
    meta = loads(args.meta, source="--meta")
    if not isinstance(meta, dict):
        raise InvalidInputError("--meta must be a JSON object", path="--meta")
    return meta


def _commit_rows(result: CommitResult) -> list[tuple[str, object]]:
    """What ``save`` and ``merge`` print after the parent rows."""
    return [
        ("nodes", f"{result.nodes_written} written, {result.nodes_reused} reused"),
        ("logical", format_size(result.bytes_logical)),
        ("new raw", format_size(result.bytes_new_raw)),
        ("new stored", format_size(result.bytes_new_stored)),
        ("time", f"{result.timings.get('total', 0.0) * 1000:.1f} ms"),
    ]


def cmd_save(args: argparse.Namespace) -> int:
    state = read_state(args.file)
    meta = _meta(args)
    with open_repo(args) as repo:
        result = repo.save(args.chain, state, parent=args.parent, changed=args.changed, meta=meta)
    if args.json:
        print_json(msgspec.to_builtins(result))
        return 0
    print_fields(
        [
            ("manifest", result.manifest_id),
            ("chain", f"{result.chain} (seq {result.seq})"),
            ("parent", result.parent or "-"),
            *_commit_rows(result),
        ]
    )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        if looks_like_id(args.ref):
            state = repo.load(args.ref, fields=args.fields)
        else:
            state = repo.load_latest(args.ref, fields=args.fields)
    text = dumps(dict(state), indent=None if args.compact else 2) + "\n"
    if args.output is None:
        write_text(text)
        return 0
    try:
        Path(args.output).write_bytes(text.encode("utf-8"))
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {args.output}: {exc.strerror or exc}", path="--output"
        ) from exc
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
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
        print_json(rows)
        return 0
    if args.graph:
        write_text("".join(line + "\n" for line in graph_text(infos, cut=cut)))
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
            format_created_at(info),
            f"{info.bytes_logical:,}",
            dumps(info.meta, indent=None) if info.meta is not None else "",
        )
    console().print(table)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        a = resolve_ref(repo, args.a)
        b = resolve_ref(repo, args.b)
        diff = repo.diff(a, b)
    if args.json:
        print_json(
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
        write_text(f"{header}: no differences\n")
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
    console().print(table)
    write_text(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed\n"
    )
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        point = repo.fork(args.source, args.chain)
        info = repo.info(point)
    if args.json:
        print_json({"chain": args.chain, "source": args.source, "head": point})
        return 0
    print_fields(
        [
            ("chain", args.chain),
            ("head", point),
            ("forked from", f"{info.chain} (seq {info.seq})"),
        ]
    )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    meta = _meta(args)
    with open_repo(args) as repo:
        result = repo.merge(
            args.target,
            args.branches,
            strategy=args.strategy,
            on_conflict=args.on_conflict,
            meta=meta,
        )
    if args.json:
        print_json(msgspec.to_builtins(result))
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
    print_fields(rows + _commit_rows(result))
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        result = repo.reset(args.chain, args.manifest_id)
    if args.json:
        print_json(msgspec.to_builtins(result))
        return 0
    print_fields(
        [
            ("chain", result.chain),
            ("head", result.head),
            ("previous", result.previous),
            ("discarded", len(result.discarded)),
        ]
    )
    for manifest_id in result.discarded:
        write_text(f"  discarded {manifest_id}\n")
    if result.discarded:
        write_text(
            "discarded versions stay loadable by id until gc collects them (pin one to keep it)\n"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        target = resolve_ref(repo, args.ref) if args.ref is not None else None
        with status(show_progress(args), "verifying"):
            report = repo.verify(target, read_data=args.read_data)
    if args.json:
        print_json(msgspec.to_builtins(report))
    else:
        print_fields(
            [
                ("result", "ok" if report.ok else f"{len(report.problems)} problem(s)"),
                ("manifests", report.manifests),
                ("nodes checked", report.nodes_checked),
                ("nodes read", report.nodes_read),
            ]
        )
        for problem in report.problems:
            write_text(f"  {problem}\n")
    if report.ok:
        return 0
    print_error(f"verify found {len(report.problems)} problem(s)")
    return IntegrityError.exit_code


def cmd_stats(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        stats = repo.stats()
    if args.json:
        print_json(msgspec.to_builtins(stats))
        return 0
    ratio = stats.bytes_logical / stats.bytes_stored if stats.bytes_stored else 0.0
    print_fields(
        [
            ("chains", stats.chains),
            ("versions", stats.manifests),
            ("nodes", stats.nodes),
            ("packs", stats.packs),
            ("logical", format_size(stats.bytes_logical)),
            ("stored", format_size(stats.bytes_stored)),
            ("ratio", f"{ratio:.2f}x"),
        ]
    )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    rules = (args.keep_last, args.keep_within, args.keep_daily)
    if args.chains and all(rule is None for rule in rules):
        raise InvalidInputError(
            "--chain only limits retention: give --keep-last, --keep-within or --keep-daily",
            path="--chain",
        )
    with open_repo(args) as repo:
        message = "collecting garbage (dry run)" if args.dry_run else "collecting garbage"
        with status(show_progress(args), message):
            report = repo.gc(
                keep_last=args.keep_last,
                keep_within=args.keep_within,
                keep_daily=args.keep_daily,
                chains=args.chains,
                grace=args.grace,
                dry_run=args.dry_run,
            )
    if args.json:
        print_json(msgspec.to_builtins(report))
        return 0
    if args.dry_run:
        write_text("dry run: nothing was deleted; a gc would have done this\n")
    print_fields(
        [
            ("versions deleted", report.manifests_deleted),
            ("nodes freed", report.nodes_freed),
            ("packs deleted", report.packs_deleted),
            ("packs compacted", report.packs_compacted),
            ("reclaimed", format_size(report.bytes_reclaimed)),
            ("deferred", report.deferred),
            ("dead letters", report.dead_letters_processed),
        ]
    )
    return 0


# What an audit lists, in the order printed: (AuditReport field, label, danger); danger
# None is neither a danger nor a leak, only worth showing.
_AUDIT_FINDINGS: tuple[tuple[str, str, bool | None], ...] = (
    ("metadata_lost", "metadata lost", True),
    ("under_counted", "under-counted", True),
    ("missing_nodes", "missing", True),
    ("broken_chains", "broken chain", True),
    ("over_counted", "over-counted", False),
    ("unswept", "unswept", False),
    ("orphan_packs", "orphan pack", False),
    ("stray_objects", "stray file", None),
)
_AUDIT_SHOWN = 20  # ids listed per finding in the human output; --json lists them all


def cmd_audit(args: argparse.Namespace) -> int:
    with open_repo(args) as repo, status(show_progress(args), "auditing every reference"):
        report = repo.audit(repair=args.repair)
    if args.json:
        print_json(msgspec.to_builtins(report))
    else:
        _print_audit(report, repair=args.repair)
    if report.ok:
        return 0
    danger = sum(len(getattr(report, name)) for name, _, bad in _AUDIT_FINDINGS if bad)
    print_error(f"audit found {danger} problem(s) that put reachable data in danger")
    return IntegrityError.exit_code


def _print_audit(report: AuditReport, *, repair: bool) -> None:
    leaks = sum(len(getattr(report, name)) for name, _, bad in _AUDIT_FINDINGS if bad is False)
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
    print_fields(rows)
    for name, label, _ in _AUDIT_FINDINGS:
        ids: list[str] = getattr(report, name)
        for found in ids[:_AUDIT_SHOWN]:
            write_text(f"  {label} {found}\n")
        if len(ids) > _AUDIT_SHOWN:
            write_text(f"  ... and {len(ids) - _AUDIT_SHOWN} more {label} (--json lists all)\n")
    if repair and report.repaired:
        write_text("repairs made; the lists above are what the audit found before them\n")
