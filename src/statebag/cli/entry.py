"""The entry point: parse the arguments, run the command, turn its errors into exit
codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from ..errors import InvalidInputError, StatebagError
from .parser import REPO_ENV, build_parser
from .shared import print_error


def in_cli_terms(exc: InvalidInputError, names: Mapping[str, str]) -> str:
    """The error's message with the API argument it names (its ``path``, which the message
    starts with) said as the command's own: ``new_chain`` is fork's ``NEW``, and
    ``branches[1]`` merge's ``BRANCH #2``."""
    message, path = str(exc), exc.path or ""
    root, bracket, rest = path.partition("[")
    said = names.get(root)
    if said is None or not message.startswith(path):
        return message
    if bracket:
        index = rest.partition("]")[0]
        if not index.isdigit():
            return message
        said = f"{said} #{int(index) + 1}"
    return said + message[len(path) :]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (argparse usage errors exit 2)."""
    parser = build_parser()
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
    except InvalidInputError as exc:
        print_error(in_cli_terms(exc, getattr(args, "cli_names", {})))
        return exc.exit_code
    except StatebagError as exc:
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
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
