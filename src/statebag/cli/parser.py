"""The argument parser of the ``statebag`` command, its argument types and help texts."""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from collections.abc import Callable

from .. import __version__
from ..bench.peers import PEERS
from ..bench.workloads import SCALES, WORKLOADS
from ..merging import ON_CONFLICT, STRATEGIES

# The handlers are looked up on their modules each time the parser is built, so one replaced
# there (as the tests replace cmd_stats) is the one that runs.
from . import bench, commands, demo
from .shared import STATE_FORMATS

REPO_ENV = "STATEBAG_REPO"

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

The repository is -r/--repo PATH_OR_URL (a directory or file:///abs/path), before or after
the command, or else the STATEBAG_REPO environment variable.

A version (ID) is named by its id, by a unique prefix of at least 8 hex characters of it (as
log shows them), or by a chain name, meaning the chain's newest version; a chain of that
name wins over an id prefix. An ambiguous prefix fails (exit 2) listing the candidates.
"""

_VERSION = "version: id, id prefix (8+ hex) or chain name"

_JSON_NOTE = """\
JSON: bytes values are written as {"$base64": "<standard base64>"} objects, and save turns
such a one-key object back into bytes. NaN and infinite floats are written as the
non-standard tokens NaN, Infinity and -Infinity (Python's json reads them; strict parsers
refuse them). Keys are sorted; the text is UTF-8.
"""


def name_list(text: str) -> list[str]:
    """A comma-separated list of field names (argparse type)."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return names


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
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


def whole_duration(text: str) -> int:
    """A duration of whole seconds (argparse type), as the repository records ``grace``."""
    seconds = duration(text)
    if seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(seconds)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def peer_list(text: str) -> list[str]:
    """``--peers``: names from PEERS, comma-separated, or ``none`` (argparse type)."""
    if text.strip() == "none":
        return []
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(map(repr, unknown))} is not a peer: give some of "
            f"{','.join(PEERS)}, or none"
        )
    return list(dict.fromkeys(names))


def _wrap(text: str) -> str:
    """Fill each one-line paragraph; paragraphs laid out by hand keep their lines."""
    return "\n\n".join(
        paragraph if "\n" in paragraph else textwrap.fill(paragraph, width=88)
        for paragraph in text.split("\n\n")
    )


def build_parser() -> argparse.ArgumentParser:
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
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        summary: str,
        epilog: str = "",
        *,
        names: dict[str, str] | None = None,
    ) -> argparse.ArgumentParser:
        """A command on the repository; ``names`` maps the API's argument names to this
        command's, so that an error about one is worded as the user typed it."""
        sub = subcommands.add_parser(
            name,
            parents=[with_repo],
            help=summary,
            description=summary,
            epilog=_wrap(epilog) or None,
            formatter_class=formatter,
        )
        sub.set_defaults(handler=handler, needs_repo=True, cli_names=names or {})
        return sub

    init = command(
        "init",
        commands.cmd_init,
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
        type=whole_duration,
        metavar="DURATION",
        help="how long gc leaves unreferenced data before freeing it, and audit --repair an "
        "orphan pack (default 1h; 0 allowed)",
    )
    init.add_argument(
        "--format",
        type=int,
        help="the format to create (default the newest; 1 for a repository that statebag "
        "versions before format 2 can read too)",
    )
    init.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not wait for the disk on commit (fast, unsafe on power loss)",
    )
    init.add_argument("--json", action="store_true", help="print the configuration as JSON")

    save = command(
        "save",
        commands.cmd_save,
        "save a state (JSON or MessagePack) as the next version of a chain",
        "FILE holds the state: one JSON object, or one MessagePack map when FILE ends in "
        ".msgpack or --format msgpack is given (- reads stdin, JSON unless --format says "
        "otherwise). Prints a table of what the save wrote; -q prints only the new version's "
        "id, --json the whole result (keys: those of CommitResult: manifest_id, chain, seq, "
        "parent, parents, nodes_written, nodes_reused, bytes_logical, bytes_new_raw, "
        "bytes_new_stored, timings, node_ids, pack_keys).\n\n" + _JSON_NOTE,
        names={"chain": "CHAIN", "changed": "--changed", "parent": "--parent"},
    )
    save.add_argument("chain", metavar="CHAIN", help="chain name")
    save.add_argument("file", metavar="FILE", help="the state's file, - for stdin")
    save.add_argument(
        "--format",
        choices=STATE_FORMATS,
        help="FILE's format (default: msgpack for a name ending in .msgpack, else json)",
    )
    save.add_argument(
        "--parent",
        metavar="ID",
        help="the version this state was made from; fails (exit 4) if the head moved on",
    )
    save.add_argument(
        "--changed",
        metavar="A,B",
        type=name_list,
        help="the only fields that changed since the parent; the others are carried over "
        "from it unread (trusted, not checked)",
    )
    save.add_argument("--meta", metavar="JSON", help="a JSON object stored with the version")
    save_output = save.add_mutually_exclusive_group()
    save_output.add_argument(
        "-q", "--quiet", action="store_true", help="print only the new version's id"
    )
    save_output.add_argument("--json", action="store_true", help="print the whole result as JSON")

    load = command(
        "load",
        commands.cmd_load,
        "print a version's state as JSON (or write it as MessagePack)",
        "ID_OR_CHAIN is a manifest id, a unique prefix of at least 8 hex characters of one, "
        "or a chain name (its newest version). The state is written as JSON, or as "
        "canonical MessagePack when -o FILE ends in .msgpack or --format msgpack is given; "
        "save reads either back to the same state.\n\n" + _JSON_NOTE,
    )
    load.add_argument("ref", metavar="ID_OR_CHAIN", help=_VERSION)
    load.add_argument("--fields", metavar="A,B", type=name_list, help="load only these fields")
    load.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    load.add_argument(
        "--format",
        choices=STATE_FORMATS,
        help="output format (default: msgpack for -o FILE ending in .msgpack, else json)",
    )
    load.add_argument("--compact", action="store_true", help="JSON on one line, no indentation")

    log = command(
        "log",
        commands.cmd_log,
        "list the versions of a chain, newest first",
        "Without --graph: the chain's head and its first parents (a forked chain's history "
        "goes on into the chain it was forked from). With --graph: every ancestor through all "
        "parents, merged branches included, each once, newest first, drawn in lanes: * marks "
        "a version in its lane, | another open lane, a |\\ line a merge opening a lane for "
        "each further parent and a |/ line lanes joining at a version they share. Each row "
        "gives the short id, the chain the version was saved on, its seq and its time (UTC).\n\n"
        f"When stdout is a terminal, log shows the newest {commands.LOG_TERMINAL_ROWS} "
        "versions unless -n N or --all says otherwise (and says so on stderr when it cut); "
        "piped or with --json it lists every version.\n\n"
        "--json keys of each version: manifest_id, chain, parent, parents, seq, created_at, "
        "meta, bytes_logical.",
        names={"chain": "CHAIN"},
    )
    log.add_argument("chain", metavar="CHAIN", help="chain name")
    log_count = log.add_mutually_exclusive_group()
    log_count.add_argument(
        "-n",
        "--max-count",
        "--limit",
        dest="limit",
        type=positive,
        metavar="N",
        help="at most N versions",
    )
    log_count.add_argument("--all", action="store_true", help="every version, even on a terminal")
    log.add_argument(
        "--graph", action="store_true", help="every ancestor through all parents, as a graph"
    )
    log.add_argument("--json", action="store_true", help="print a JSON list (full ids)")

    diff = command(
        "diff",
        commands.cmd_diff,
        "list the fields added, removed and changed from A to B, with sizes",
        "A and B are manifest ids, id prefixes (8+ hex characters) or chain names (a chain "
        "means its newest version). Sizes are bytes of the fields' canonical encodings.",
    )
    diff.add_argument("a", metavar="A", help="old " + _VERSION)
    diff.add_argument("b", metavar="B", help="new " + _VERSION)
    diff.add_argument("--json", action="store_true", help="print the diff as JSON")

    fork = command(
        "fork",
        commands.cmd_fork,
        "start a new chain at a version: no version is written and no data copied",
        "SOURCE is a chain (its newest version), a manifest id or an id prefix (8+ hex "
        "characters). The new chain's head is "
        "that version, and its next save has it as parent. Fails with exit 4 if NEW already "
        "has a version, and exit 2 if NEW looks like a manifest id (64 hex characters).\n\n"
        "--json keys: chain, source, head (the version the new chain starts at).",
        names={"new_chain": "NEW", "source": "SOURCE"},
    )
    fork.add_argument("source", metavar="SOURCE", help=_VERSION + ", to fork from")
    fork.add_argument("chain", metavar="NEW", help="name of the new chain")
    fork.add_argument("--json", action="store_true", help="print the result as JSON")

    merge = command(
        "merge",
        commands.cmd_merge,
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
        names={"target": "TARGET", "branches": "BRANCH"},
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
        commands.cmd_reset,
        "move a chain's head back to an earlier version of its history",
        "ID must be a version that `log CHAIN` lists (the head itself changes nothing). Fails "
        "with exit 4 if another writer moves the chain meanwhile. The versions after ID are "
        "no longer in the chain's log but stay loadable by id until gc collects them, once "
        "no head reaches them, nothing pins or holds them and the grace period has passed.\n\n"
        "--json keys: chain, head (the new head), previous (the old head), discarded (the "
        "ids log no longer lists, newest first).",
        names={"chain": "CHAIN"},
    )
    reset.add_argument("chain", metavar="CHAIN", help="chain name")
    reset.add_argument(
        "manifest_id", metavar="ID", help="the version to move the head back to: id or id prefix"
    )
    reset.add_argument("--json", action="store_true", help="print the result as JSON")

    verify = command(
        "verify",
        commands.cmd_verify,
        "check that versions reach only present, intact data",
        "Without ID every version is checked. Exits 3 when a problem is found.",
    )
    verify.add_argument("ref", metavar="ID", nargs="?", default=None, help="one " + _VERSION)
    verify.add_argument(
        "--read-data",
        type=fraction,
        default=1.0,
        metavar="FRACTION",
        help="fraction of chunks read back and re-hashed (default 1: all; the others are "
        "only checked to be indexed in a present pack)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    stats = command(
        "stats",
        commands.cmd_stats,
        "print counts and bytes of the whole repository",
        "--json keys: chains, versions (also as manifests, its older name), nodes, packs, "
        "bytes_logical, bytes_stored, bytes_dead.",
    )
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")

    upgrade = command(
        "upgrade",
        commands.cmd_upgrade,
        "move the repository to the newest format (nothing stored is rewritten)",
        "Versions saved before stay as they are; saves from then on write the new format. "
        "--json keys: format_before, format.",
    )
    upgrade.add_argument("--json", action="store_true", help="print the result as JSON")

    gc = command(
        "gc",
        commands.cmd_gc,
        "delete old versions by retention rules, then free what no version references",
        "Retention runs only when a --keep-* rule is given; a version any rule keeps stays, "
        "and chain heads and pinned versions always stay. Without a rule gc only frees the "
        "data of versions already deleted. Data unreferenced for less than the grace period "
        "(the repository's, 1h by default) is left for a later run and counted as deferred.\n\n"
        "DURATION is seconds or a number with a unit: 30s, 15m, 1h, 7d, 2w.\n\n"
        "--json keys: versions_deleted (also as manifests_deleted, its older name), "
        "nodes_freed, packs_deleted, packs_compacted, bytes_reclaimed, deferred, "
        "dead_letters_processed. A dry run rehearses the whole gc without writing anything "
        "and reports what it would do.",
        names={"chains": "--chain"},
    )
    gc.add_argument(
        "--keep-last", type=count, metavar="N", help="keep the newest N versions of each chain"
    )
    gc.add_argument(
        "--keep-within",
        type=duration,
        metavar="DURATION",
        help="keep the versions saved within DURATION of now",
    )
    gc.add_argument(
        "--keep-daily",
        type=count,
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
        type=duration,
        metavar="DURATION",
        help="free data unreferenced for at least this long (default: the repository's; 0: "
        "everything unreferenced now)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what gc would do, write nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")

    audit = command(
        "audit",
        commands.cmd_audit,
        "recount every reference and check that every reachable node is indexed in a pack "
        "that exists, and every parent link (verify checks the data itself)",
        "Danger (exit 3): a reachable node under-counted (gc could free it) or missing, or a "
        "chain whose parent link leads nowhere. Leaks (over-counted or unswept nodes, orphan "
        "packs) are listed but exit 0. --repair fixes the counts, marks unswept nodes for gc, "
        "deletes orphan packs older than the repository's grace period and records a lost "
        "parent as pruned (a tombstone); it cannot bring back missing data. The report lists "
        "what the audit found before repairing: run audit again to confirm.\n\n"
        "--json keys: ok, under_counted, over_counted, missing_nodes, orphan_packs, "
        "broken_chains, in_flight, repaired, unswept, versions (also as manifests, its older "
        "name), nodes.",
    )
    audit.add_argument(
        "--repair", action="store_true", help="fix counts and free leaks (never reachable data)"
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")

    rebuild = command(
        "rebuild",
        commands.cmd_rebuild,
        "recreate a repository's lost metadata from its object store alone",
        "Reads every pack and writes, into an empty metadata store, the node index, every "
        "version a pack carries whose state is whole, the version index, reference counts, "
        "totals and one head per chain (its highest seq). What the packs do not hold is not "
        "restored: resets, deletions, pins, holds, records beside chains, forks never saved "
        "on (see docs/FORMAT.md, Rebuild); each problem found is printed. A metadata store "
        "that is not empty is refused (exit 6).\n\n"
        "--json keys: chains, versions, nodes, packs, problems.",
    )
    rebuild.add_argument(
        "--dry-run", action="store_true", help="report what would be restored, write nothing"
    )
    rebuild.add_argument("--json", action="store_true", help="print the report as JSON")

    chains = command(
        "chains",
        commands.cmd_chains,
        "list the chains and their newest versions",
        "--json: a list with, for each chain in name order, chain, head (its newest version), "
        "seq and created_at (of the head, UTC).",
    )
    chains.add_argument("--json", action="store_true", help="print a JSON list")

    delete = command(
        "delete",
        commands.cmd_delete,
        "delete versions, or whole chains with --chain",
        "Each ID is a version (id or id prefix); its data is freed by a later gc once no "
        "version references it. A chain's head is deleted only with its whole chain: "
        "--chain takes chain names and deletes each chain's head, then every version saved "
        "on it, pinned ones too. Every delete is rehearsed first, so one that would fail "
        "(exit 4: a head, a pinned version, a fork point; exit 5: unknown) fails before "
        "anything is deleted; --dry-run stops after the rehearsal.\n\n"
        "--json keys: dry_run, and deleted (ids deleted now, or that would be) and "
        "already_deleted; with --chain: dry_run and chains (each chain's number of versions "
        "deleted).",
        names={"chain": "CHAIN"},
    )
    delete.add_argument("refs", metavar="ID", nargs="+", help="versions (chains with --chain)")
    delete.add_argument(
        "--chain", action="store_true", help="the arguments are chains: delete them whole"
    )
    delete.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    delete.add_argument("--json", action="store_true", help="print the result as JSON")

    for verb, handler, summary in (
        (
            "pin",
            commands.cmd_pin,
            "keep versions from retention, gc and delete until unpinned",
        ),
        ("unpin", commands.cmd_unpin, "let retention and delete have versions again"),
    ):
        sub = command(
            verb,
            handler,
            summary,
            f"Each ID is a {_VERSION}. Pinning a pinned version (or unpinning one that is "
            f"not) changes nothing. --json keys: {verb}ned (the ids).",
        )
        sub.add_argument("refs", metavar="ID", nargs="+", help="versions")
        sub.add_argument("--json", action="store_true", help="print the ids as JSON")

    hold = command(
        "hold",
        commands.cmd_hold,
        "keep a version from retention and gc for a while",
        "DURATION is seconds or a number with a unit: 30s, 15m, 1h, 7d, 2w. Holds only "
        "extend: a shorter hold leaves a longer one as it is. --json keys: manifest_id, "
        "seconds.",
    )
    hold.add_argument("ref", metavar="ID", help=_VERSION)
    hold.add_argument("duration", metavar="DURATION", type=duration, help="how long")
    hold.add_argument("--json", action="store_true", help="print the result as JSON")

    merge_base = command(
        "merge-base",
        commands.cmd_merge_base,
        "print the newest version all the given versions descend from",
        "What merge merges against: the newest common ancestor, a version counting as its "
        "own. Exits 5 when the versions share no ancestor (or it was deleted); --json then "
        "prints base null. --json keys: base, versions (the ids the arguments named).",
    )
    merge_base.add_argument("refs", metavar="REF", nargs="+", help="versions: " + _VERSION)
    merge_base.add_argument("--json", action="store_true", help="print the result as JSON")

    demo_command = subcommands.add_parser(
        "demo",
        help="simulate an agent workflow and report what storing it cost",
        description=(
            f"Simulate an agent of --steps steps, saving its state to chain {demo.DEMO_CHAIN!r} "
            "after each: chat messages appended, a scratch field rewritten, and a 2 MiB "
            f"attachment edited every {demo.ATTACHMENT_EVERY} steps. Reports versions, logical "
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
    demo_command.add_argument(
        "dir", metavar="DIR", nargs="?", default=None, help="repository directory"
    )
    demo_command.add_argument(
        "--steps", type=positive, default=200, help="agent steps (default 200)"
    )
    demo_command.add_argument(
        "--seed", type=int, default=0, help="seed of the simulation (default 0)"
    )
    demo_command.add_argument("--json", action="store_true", help="print the figures as JSON")
    demo_command.add_argument("--quiet", action="store_true", help="no progress on stderr")
    demo_command.set_defaults(handler=demo.cmd_demo, needs_repo=False)
    bench_command = subcommands.add_parser(
        "bench",
        help="measure statebag against restic, borg, casync and bup on the same states",
        description=_wrap(
            "Save a sequence of states with statebag (in-process, and through one `statebag "
            "save` per step) and with each peer on PATH (one call per step, as a pipeline "
            "shells out), each into a fresh repository, then restore the latest and the "
            "first version, and compare. Prints one markdown table per workload on stdout; "
            "progress goes to stderr on a terminal."
        ),
        epilog=_wrap(bench.EPILOG),
        formatter_class=formatter,
    )
    source = bench_command.add_mutually_exclusive_group()
    source.add_argument(
        "--workload",
        choices=(*WORKLOADS, "all"),
        default=None,
        help="built-in seeded workload (default agent; all: each in turn)",
    )
    source.add_argument(
        "--states",
        metavar="DIR",
        help="your own states instead: one .json or .msgpack file per step, in name order",
    )
    bench_command.add_argument(
        "--scale",
        choices=SCALES,
        default="small",
        help="size of the built-in workloads (default small; tiny runs in seconds)",
    )
    bench_command.add_argument(
        "--peers",
        type=peer_list,
        default=None,
        metavar="LIST",
        help=f"comma-separated, of {','.join(PEERS)}; none for statebag alone "
        "(default: all of them; those not on PATH are reported as skipped)",
    )
    bench_command.add_argument(
        "--json", dest="json_file", metavar="FILE", help="also write the report to FILE as JSON"
    )
    bench_command.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the repositories in DIR/WORKLOAD/TOOL (DIR must be new or empty)",
    )
    bench_command.add_argument(
        "--timeout",
        type=duration,
        default=bench.DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"longest a single peer call may take before it is killed and the peer reported "
        f"as failed (default {bench.DEFAULT_TIMEOUT:g} s)",
    )
    bench_command.add_argument(
        "--seed", type=int, default=0, help="seed of the built-in workloads (default 0)"
    )
    bench_command.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bench_command.set_defaults(handler=bench.cmd_bench, needs_repo=False)
    return parser
