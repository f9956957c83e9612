"""The handlers of the commands that work on a repository: each takes the parsed
arguments and returns the exit code."""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from ..ids import SHORT_LENGTH, looks_like_id
from ..merging import MergeConflictError, conflict_summary
from ..rebuild import rebuild
from ..repository import Repository
from ..repository import open as open_repository
from ..results import AuditReport, CommitResult, ManifestInfo
from .graph import graph_text
from .shared import (
    check_repo_url,
    console,
    dumps,
    encode_state,
    format_created_at,
    format_size,
    loads,
    open_repo,
    print_error,
    print_fields,
    print_json,
    print_note,
    read_state,
    show_progress,
    state_format,
    status,
    stdout_is_terminal,
    write_bytes,
    write_text,
)

# Rows `log` shows when stdout is a terminal and no -n/--max-count is given, as git pages.
LOG_TERMINAL_ROWS = 20

_INIT_OPTIONS = (
    "min_size",
    "avg_size",
    "max_size",
    "compression_level",
    "pack_size",
    "inline_max",
    "grace",
    "format",
)


def cmd_init(args: argparse.Namespace) -> int:
    check_repo_url(args.repo)
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
    state = read_state(args.file, fmt=args.format)
    meta = _meta(args)
    with open_repo(args) as repo:
        parent = None if args.parent is None else repo.resolve(args.parent, field="--parent")
        result = repo.save(args.chain, state, parent=parent, changed=args.changed, meta=meta)
    if args.json:
        print_json(msgspec.to_builtins(result))
        return 0
    if args.quiet:
        write_text(result.manifest_id + "\n")
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
    fmt = state_format(args.output, args.format)
    with open_repo(args) as repo:
        manifest_id = repo.resolve(args.ref, field="ID_OR_CHAIN")
        state = repo.load(manifest_id, fields=args.fields)
    data = encode_state(dict(state), fmt=fmt, compact=args.compact)
    if args.output is None:
        write_bytes(data)
        return 0
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write {args.output}: {exc.strerror or exc}", path="--output"
        ) from exc
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    shown = args.limit
    if shown is None and not (args.all or args.json) and stdout_is_terminal():
        shown = LOG_TERMINAL_ROWS
    with open_repo(args) as repo:
        if repo.head(args.chain) is None:
            raise NotFoundError(f"chain {args.chain!r} has no version")
        # One more than the limit tells a cut-off history (whose lanes run on) from a whole one.
        stop = None if shown is None else shown + 1
        infos = list(islice(repo.log(args.chain, graph=args.graph), stop))
        cut = shown is not None and len(infos) > shown
        if cut:
            del infos[shown:]
    if cut and args.limit is None:
        print_note(f"the newest {shown} versions shown; -n N shows N, --all every one")
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
        a = repo.resolve(args.a, field="A")
        b = repo.resolve(args.b, field="B")
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
        point = repo.fork(repo.resolve(args.source, field="SOURCE"), args.chain)
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
        try:
            result = repo.merge(
                args.target,
                args.branches,
                strategy=args.strategy,
                on_conflict=args.on_conflict,
                meta=meta,
            )
        except MergeConflictError as exc:
            raise ConflictError(
                f"{conflict_summary(exc.target, exc.paths)}. Nothing was written: pass "
                "--on-conflict last_wins to take the last changed side's value, or "
                "--strategy last_wins or collect, which never conflict"
            ) from exc
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
        result = repo.reset(args.chain, repo.resolve(args.manifest_id, field="ID"))
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
        target = repo.resolve(args.ref, field="ID") if args.ref is not None else None
        with status(show_progress(args), "verifying"):
            report = repo.verify(target, read_data=args.read_data)
    if args.json:
        print_json(_with_versions(msgspec.to_builtins(report), "manifests", "versions"))
    else:
        print_fields(
            [
                ("result", "ok" if report.ok else f"{len(report.problems)} problem(s)"),
                ("versions", report.manifests),
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


def _with_versions(figures: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The CLI says "versions" where the API says "manifests": the JSON carries the CLI's
    word too, and keeps the old key for the scripts that read it."""
    return {**figures, new: figures[old]}


def cmd_stats(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        stats = repo.stats()
    if args.json:
        print_json(_with_versions(msgspec.to_builtins(stats), "manifests", "versions"))
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


def cmd_upgrade(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        before = repo.config.format
        after = repo.upgrade()
    if args.json:
        print_json({"format_before": before, "format": after})
    elif before == after:
        print(f"the repository already has format {after}")
    else:
        print(f"upgraded from format {before} to format {after}")
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
        print_json(
            _with_versions(msgspec.to_builtins(report), "manifests_deleted", "versions_deleted")
        )
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


def cmd_rebuild(args: argparse.Namespace) -> int:
    check_repo_url(args.repo)
    with status(show_progress(args), "reading every pack"):
        report = rebuild(args.repo, dry_run=args.dry_run)
    if args.json:
        print_json(msgspec.to_builtins(report))
    else:
        verb = "would restore" if args.dry_run else "restored"
        write_text(
            f"{verb} {report.versions} version(s) on {report.chains} chain(s), "
            f"{report.nodes} node(s) in {report.packs} pack(s)\n"
        )
        for problem in report.problems:
            print_note(problem)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with open_repo(args) as repo, status(show_progress(args), "auditing every reference"):
        report = repo.audit(repair=args.repair)
    if args.json:
        print_json(_with_versions(msgspec.to_builtins(report), "manifests", "versions"))
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


# ---------------------------------------------------------------------------------------------
# chains, delete, pin, unpin, hold, merge-base
# ---------------------------------------------------------------------------------------------


def cmd_chains(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        heads: list[ManifestInfo] = []
        names: list[str] = []
        for chain in repo.chains():
            head = repo.head(chain)
            if head is not None:  # None: deleted since the listing read it
                names.append(chain)
                heads.append(repo.info(head))
    if args.json:
        print_json(
            [
                {
                    "chain": chain,
                    "head": info.manifest_id,
                    "seq": info.seq,
                    "created_at": info.created_at.isoformat(),
                }
                for chain, info in zip(names, heads, strict=True)
            ]
        )
        return 0
    if not names:
        write_text("no chains\n")
        return 0
    from rich.table import Table

    table = Table(title=f"{len(names)} chain(s)")
    table.add_column("chain", overflow="fold")
    table.add_column("head")
    table.add_column("seq", justify="right")
    table.add_column("created_at (UTC)")
    for chain, info in zip(names, heads, strict=True):
        table.add_row(
            chain, info.manifest_id[:SHORT_LENGTH], str(info.seq), format_created_at(info)
        )
    console().print(table)
    return 0


def _delete_versions(repo: Repository, ids: list[str]) -> list[bool]:
    return [repo.delete(manifest_id) for manifest_id in ids]


def _delete_chains(repo: Repository, chains: list[str]) -> dict[str, int]:
    return {chain: repo.delete_chain(chain) for chain in chains}


def cmd_delete(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        if args.chain:
            # The rehearsal runs the same deletes on a handle that writes nothing: whatever
            # would fail fails there first, so a real run does all of it or none.
            with repo.rehearsal() as trial:
                counts = _delete_chains(trial, args.refs)
            if not args.dry_run:
                counts = _delete_chains(repo, args.refs)
        else:
            ids = [_version_to_delete(repo, ref) for ref in args.refs]
            with repo.rehearsal() as trial:
                done = _delete_versions(trial, ids)
            if not args.dry_run:
                done = _delete_versions(repo, ids)
    if args.chain:
        if args.json:
            print_json({"dry_run": args.dry_run, "chains": counts})
            return 0
        verb = "would delete" if args.dry_run else "deleted"
        for chain, count in counts.items():
            write_text(f"{verb} chain {chain} ({count} version(s))\n")
    else:
        deleted = [i for i, now in zip(ids, done, strict=True) if now]
        already = [i for i, now in zip(ids, done, strict=True) if not now]
        if args.json:
            print_json({"dry_run": args.dry_run, "deleted": deleted, "already_deleted": already})
            return 0
        verb = "would delete" if args.dry_run else "deleted"
        write_text("".join(f"{verb} {manifest_id}\n" for manifest_id in deleted))
        write_text("".join(f"already deleted {manifest_id}\n" for manifest_id in already))
    if args.dry_run:
        write_text("dry run: nothing was deleted\n")
    else:
        write_text("the data is freed by a later gc, once no version references it\n")
    return 0


def _version_to_delete(repo: Repository, ref: str) -> str:
    """The version ``delete`` without --chain removes: never a head, which only deleting its
    whole chain removes, so a chain name is refused rather than read as its head."""
    if not looks_like_id(ref) and repo.head(ref) is not None:
        raise InvalidInputError(
            f"ID {ref!r} names a chain: `statebag delete --chain {ref}` deletes the whole "
            "chain; a version is named by its id or an id prefix",
            path="ID",
        )
    manifest_id = repo.resolve(ref, field="ID")
    try:
        chain = repo.info(manifest_id).chain
    except NotFoundError:
        return manifest_id  # deleted already, or never was: the delete itself says which
    if repo.head(chain) == manifest_id:
        raise ConflictError(
            f"version {manifest_id} is the head of chain {chain!r}: save a newer version "
            f"first, or delete the whole chain with `statebag delete --chain {chain}`"
        )
    return manifest_id


def _pin(args: argparse.Namespace, *, pinned: bool) -> int:
    with open_repo(args) as repo:
        ids = [repo.resolve(ref, field="ID") for ref in args.refs]
        for manifest_id in ids:
            if pinned:
                repo.pin(manifest_id)
            else:
                repo.unpin(manifest_id)
    verb = "pinned" if pinned else "unpinned"
    if args.json:
        print_json({verb: ids})
        return 0
    write_text("".join(f"{verb} {manifest_id}\n" for manifest_id in ids))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    return _pin(args, pinned=True)


def cmd_unpin(args: argparse.Namespace) -> int:
    return _pin(args, pinned=False)


def cmd_hold(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        manifest_id = repo.resolve(args.ref, field="ID")
        repo.hold(manifest_id, args.duration)
    if args.json:
        print_json({"manifest_id": manifest_id, "seconds": args.duration})
        return 0
    write_text(
        f"held {manifest_id} for {args.duration:g} s: retention and gc keep it at least that "
        "long (a longer hold stays)\n"
    )
    return 0


def cmd_merge_base(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        ids = [repo.resolve(ref, field="REF") for ref in args.refs]
        base = repo.merge_base(ids)
    if args.json:
        print_json({"base": base, "versions": ids})
    elif base is not None:
        write_text(base + "\n")
    if base is None:
        print_error("the versions share no ancestor")
        return NotFoundError.exit_code
    return 0
