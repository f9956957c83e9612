"""What the commands share: JSON in and out (with ``{"$base64": ...}`` for bytes), state
files (JSON or MessagePack), the console, progress on stderr, error lines, sizes, times, and
opening the repository a command names."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .. import codec
from ..errors import IntegrityError, InvalidInputError, NotFoundError
from ..opening import scheme_of
from ..repository import Repository
from ..repository import open as open_repository
from ..results import ManifestInfo

if TYPE_CHECKING:
    from rich.console import Console

# ---------------------------------------------------------------------------------------------
# JSON in and out
# ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, indent=indent, default=_json_default
    )


def loads(data: bytes | str, *, source: str) -> Any:
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


STATE_FORMATS = ("json", "msgpack")
MSGPACK_SUFFIX = ".msgpack"


def state_format(file: str | None, given: str | None) -> str:
    """The format of a state file: ``given`` (``--format``), else msgpack for a name ending
    in ``.msgpack`` and JSON for any other name, stdin and stdout."""
    if given is not None:
        return given
    if file is not None and file != "-" and file.endswith(MSGPACK_SUFFIX):
        return "msgpack"
    return "json"


def read_state(file: str, *, fmt: str | None = None) -> dict[str, Any]:
    """The state in ``file`` (``-``: stdin), a JSON object or a MessagePack map; ``fmt``
    as :func:`state_format` decides when None."""
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
    if state_format(file, fmt) == "json":
        state = loads(data, source=source)
        kind = f"a JSON {type(state).__name__}; a state is a JSON object"
    else:
        try:
            state = codec.decode(data.encode("utf-8") if isinstance(data, str) else data)
        except IntegrityError as exc:
            raise InvalidInputError(
                f"{source} is not valid MessagePack: {exc.__cause__ or exc}", path=source
            ) from exc
        kind = f"a MessagePack {type(state).__name__}; a state is a MessagePack map"
    if not isinstance(state, dict):
        raise InvalidInputError(f"{source} holds {kind} of field names to values", path=source)
    return state


def encode_state(state: dict[str, Any], *, fmt: str, compact: bool = False) -> bytes:
    """A state as ``load`` writes it: JSON text (UTF-8, a final newline) or canonical
    MessagePack, which ``save`` reads back to the same state."""
    if fmt == "msgpack":
        return codec.encode(state)
    return (dumps(state, indent=None if compact else 2) + "\n").encode("utf-8")


def write_text(text: str, stream: IO[str] | None = None) -> None:
    """Write ``text`` as UTF-8 whatever the locale, since JSON output must be UTF-8."""
    stream = stream if stream is not None else sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def write_bytes(data: bytes) -> None:
    """Write ``data`` to stdout as it is (a state as JSON or MessagePack)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def print_json(value: Any) -> None:
    write_text(dumps(value) + "\n")


# ---------------------------------------------------------------------------------------------
# The terminal
# ---------------------------------------------------------------------------------------------


def console(stream: IO[str] | None = None) -> Console:
    from rich.console import Console

    # Markup and emoji off: chain names, field names and meta are user data, printed as is.
    return Console(
        file=stream if stream is not None else sys.stdout,
        markup=False,
        emoji=False,
        highlight=False,
    )


def show_progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "json", False) or getattr(args, "quiet", False)) and (
        sys.stderr.isatty()
    )


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


class Ticker:
    """What a progress bar yields: ``advance()`` one step, ``describe(text)`` what runs now.
    A disabled one does nothing."""

    def __init__(self, advance: Callable[[], None], describe: Callable[[str], None]) -> None:
        self.advance = advance
        self.describe = describe


@contextmanager
def progress(enabled: bool, description: str, total: int) -> Iterator[Ticker]:
    """A progress bar on stderr, transient: it is gone when the block ends."""
    if not enabled:
        yield Ticker(lambda: None, lambda _: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(sys.stderr),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield Ticker(lambda: bar.advance(task), lambda text: bar.update(task, description=text))


@contextmanager
def status(enabled: bool, message: str) -> Iterator[None]:
    """A spinner on stderr for work that reports no steps."""
    if not enabled:
        yield
        return
    with console(sys.stderr).status(message):
        yield


def print_fields(rows: Sequence[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    write_text("".join(f"{name:<{width}}  {value}\n" for name, value in rows))


def format_size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{nbytes:,} ({value:.1f} {unit})"


def print_error(message: str) -> None:
    print(f"statebag: error: {message}", file=sys.stderr)


def print_note(message: str) -> None:
    print(f"statebag: {message}", file=sys.stderr)


def format_created_at(info: ManifestInfo) -> str:
    return info.created_at.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Opening the repository
# ---------------------------------------------------------------------------------------------


def check_repo_url(url: str) -> None:
    """Refuse a repository no command could find again: a ``memory://`` one lives only as
    long as the process that opened it, and every command is a process of its own."""
    if scheme_of(url) == "memory":
        raise InvalidInputError(
            f"-r/--repo {url}: a memory:// repository lives only as long as the process that "
            "opens it, and each statebag command is a process of its own, so the next "
            "command would find nothing; use a directory or file:///abs/path (memory:// is "
            "for Python code: statebag.open('memory://name'))",
            path="--repo",
        )


@contextmanager
def open_repo(args: argparse.Namespace) -> Iterator[Repository]:
    check_repo_url(args.repo)
    # No options here: they are fixed at init, and repeating them could only contradict.
    try:
        repo = open_repository(args.repo, create=False)
    except NotFoundError as exc:
        raise NotFoundError(
            f"no repository at {args.repo}; create one with `statebag -r {args.repo} init`"
        ) from exc
    with repo:
        yield repo
