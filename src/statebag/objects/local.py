"""An object store in a local directory: the embedded default of statebag.

Layout: the object ``a/b/c`` is the file ``<root>/a/b/c``. Directories are created on demand
and removed again when a delete leaves them empty. ``<root>/.tmp/`` holds files being
written; no key can start with ``.``, so nothing there is ever listed or read as an object.

Why each operation is safe:

- ``put`` writes the whole object to a fresh temp file, fsyncs it, renames it over the final
  name with ``os.replace`` (atomic on POSIX and Windows), then fsyncs the directory so the
  rename itself survives a power cut. Readers hold an open file, so they see the old inode or
  the new one, never a mix. A crash leaves at most a temp file, which stale-file cleanup on
  open removes later.
- ``put_if_absent`` writes a temp file the same way and then publishes it with
  ``os.link(tmp, final)``, which fails with ``EEXIST`` if any process got there first: an
  atomic create-if-absent that also never exposes a partly written file.
- Concurrent puts and deletes may race on directories (a delete prunes ``a/`` just as a put
  is about to rename into it); puts notice the missing directory, recreate it and retry.

``fsync=False`` skips every fsync: much faster, still atomic against readers and crashes of
the process, but a power cut may lose recent writes. Tests and scratch repositories use it.

``read_only=True`` makes nothing and sweeps nothing on open, and refuses every write with
``ConfigError`` naming the store: for a repository that cannot be written (or must not be).

OS errors become ``BackendError`` naming the key, the action and the errno, with the
``OSError`` kept as ``__cause__``; a missing file on ``get`` or ``stat`` is ``NotFoundError``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import stat
import time
from collections.abc import Iterator

from .._typing import Buffer
from ..errors import BackendError, ConfigError, InvalidInputError, NotFoundError
from .base import ObjectStore, check_data, check_key, check_range

__all__ = ["TEMP_DIR", "TEMP_MAX_AGE", "LocalObjectStore"]

TEMP_DIR = ".tmp"
# A temp file older than this belongs to a writer that died: no put takes an hour.
TEMP_MAX_AGE = 3600.0
# How often a put retries when concurrent deletes keep pruning the directories it needs.
_PLACE_ATTEMPTS = 32

_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
# Directory fsync is how POSIX makes a rename durable; Windows cannot open directories.
_CAN_SYNC_DIRS = os.name == "posix"

_RETRYABLE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN",
        "EWOULDBLOCK",
        "EINTR",
        "EBUSY",
        "ETIMEDOUT",
        "EMFILE",
        "ENFILE",
        "ESTALE",
        "ENOLCK",
    )
    if hasattr(errno, name)
)
_HINTS = {
    errno.ENOSPC: "free space on the device and retry",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.EACCES: "check the permissions of the store's directory",
    errno.EPERM: "check the permissions of the store's directory",
    errno.EIO: "the device reported an I/O error; check the disk",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "the disk quota is exhausted; free space and retry"


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; safe for many threads and many processes at once."""

    __slots__ = ("_fsync", "_read_only", "_root", "_tmp")

    def __init__(
        self, root: str | os.PathLike[str], *, fsync: bool = True, read_only: bool = False
    ) -> None:
        self._root = os.path.abspath(os.fspath(root))
        self._tmp = os.path.join(self._root, TEMP_DIR)
        self._fsync = bool(fsync)
        self._read_only = bool(read_only)
        if self._read_only:
            return
        try:
            os.makedirs(self._tmp, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot use {self._root!r} as a local object store: {exc.strerror}"
            ) from exc
        self._sweep_temp()

    def __repr__(self) -> str:
        mode = ", read_only=True" if self._read_only else ""
        return f"LocalObjectStore({self._root!r}, fsync={self._fsync}{mode})"

    @property
    def root(self) -> str:
        """The absolute path of the store's directory."""
        return self._root

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _writable(self, action: str, key: str) -> None:
        if self._read_only:
            raise ConfigError(
                f"local object store {self._root} is read-only (its repository cannot be "
                f"written): could not {action} object {key!r}; nothing was written"
            )

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, data: Buffer, /) -> None:
        key = check_key(key)
        data = _contiguous(check_data(data))
        self._writable("write", key)
        try:
            tmp = self._write_temp(data)
            try:
                self._place(tmp, key, link=False)
            finally:
                # After a successful rename the temp name is gone; this only matters on failure.
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except OSError as exc:
            raise self._error(exc, "write", key) from exc

    def put_if_absent(self, key: str, data: Buffer, /) -> bool:
        key = check_key(key)
        data = _contiguous(check_data(data))
        self._writable("create", key)
        final = self._path(key)
        # Packs are content-addressed, so the common "already there" case skips all writing.
        if os.path.isfile(final):
            return False
        try:
            tmp = self._write_temp(data)
            try:
                return self._place(tmp, key, link=True)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except OSError as exc:
            raise self._error(exc, "create", key) from exc

    def delete(self, key: str, /) -> None:
        key = check_key(key)
        self._writable("delete", key)
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if os.path.isdir(path):
                return  # a directory is not an object: nothing to delete
            raise self._error(exc, "delete", key) from exc
        # No directory fsync here: a delete lost to a power cut only leaks an object, which
        # the audit finds; it can never lose data a manifest needs.
        self._prune(key)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str, /, *, offset: int = 0, length: int | None = None) -> bytes:
        key = check_key(key)
        offset, length = check_range(offset, length)
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFoundError(f"object {key!r} does not exist") from exc
        except OSError as exc:
            raise self._error(exc, "read", key) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotFoundError(f"object {key!r} does not exist")
            # Clamp to the real size: a caller's huge length must not allocate a huge buffer.
            end = info.st_size if length is None else min(info.st_size, offset + length)
            if end <= offset:
                return b""
            return _read_exactly(fd, offset, end - offset)
        except OSError as exc:
            raise self._error(exc, "read", key) from exc
        finally:
            os.close(fd)

    def stat(self, key: str, /) -> int:
        return self._stat(key).st_size

    def modified_ns(self, key: str, /) -> int:
        return self._stat(key).st_mtime_ns

    def _stat(self, key: str, /) -> os.stat_result:
        key = check_key(key)
        try:
            info = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"object {key!r} does not exist") from exc
        except OSError as exc:
            raise self._error(exc, "stat", key) from exc
        if not stat.S_ISREG(info.st_mode):
            raise NotFoundError(f"object {key!r} does not exist")
        return info

    def list(self, prefix: str = "", /) -> Iterator[str]:
        prefix = check_key(prefix, prefix=True)
        # Start at the deepest directory the prefix names completely: "packs/ab/12" walks
        # only packs/ab/, not the whole store.
        head = prefix.rpartition("/")[0]
        start = self._path(head) if head else self._root
        return self._walk(start, head + "/" if head else "", prefix)

    # -- internals -------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self._root, *key.split("/"))

    def _walk(self, directory: str, rel: str, prefix: str) -> Iterator[str]:
        try:
            with os.scandir(directory) as it:
                # Objects are regular files (get and stat say so too); a FIFO or socket
                # dropped here would block a read or fail it. Linked directories are not
                # followed, so a link back up cannot make the walk endless.
                entries = [
                    (entry.name, entry.is_dir(follow_symlinks=False))
                    for entry in it
                    if entry.is_file() or entry.is_dir(follow_symlinks=False)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing under this prefix, or it vanished while we walked
        except OSError as exc:
            raise self._error(exc, "list", rel or "") from exc
        # Sorting a directory's entries with "/" appended to subdirectory names yields keys in
        # global string order: every key below "x/" sorts exactly where "x/" does.
        ordered = sorted((name + "/" if is_dir else name, is_dir) for name, is_dir in entries)
        for name, is_dir in ordered:
            key = rel + name
            if name.startswith("."):
                continue  # .tmp/, and foreign files such as NFS silly-renames
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(os.path.join(directory, name[:-1]), key, prefix)
            elif key.startswith(prefix) and _is_key(key):
                yield key

    def _write_temp(self, data: Buffer) -> str:
        for _ in range(2):
            tmp = os.path.join(self._tmp, f"{os.getpid()}-{secrets.token_hex(8)}")
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC, 0o666
                )
            except FileNotFoundError:
                # Someone removed .tmp/ under us; recreate it once.
                os.makedirs(self._tmp, exist_ok=True)
                continue
            try:
                with open(fd, "wb", closefd=True) as f:
                    f.write(data)
                    f.flush()
                    if self._fsync:
                        os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return tmp
        raise FileNotFoundError(errno.ENOENT, "temp directory keeps disappearing", self._tmp)

    def _place(self, tmp: str, key: str, *, link: bool) -> bool:
        """Publish ``tmp`` as ``key``; False only if ``link`` and the key already exists."""
        final = self._path(key)
        for attempt in range(_PLACE_ATTEMPTS):
            if attempt >= 4:
                # Deletes pruning this directory keep winning: let them finish first.
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** (attempt - 4))))
            try:
                if link:
                    os.link(tmp, final)
                else:
                    os.replace(tmp, final)
            except FileNotFoundError:
                if not os.path.exists(tmp):
                    raise
                # The parent directory is missing: a new key, or a delete pruned it just now.
                with contextlib.suppress(FileNotFoundError):
                    self._make_parents(key)
                continue
            except NotADirectoryError as exc:
                raise self._nested(key) from exc
            except (FileExistsError, IsADirectoryError) as exc:
                try:
                    is_dir = stat.S_ISDIR(os.lstat(final).st_mode)
                except FileNotFoundError:
                    continue  # whatever was there is gone: try again
                if not is_dir:
                    if link:
                        return False
                    raise
                # An empty directory left by a racing delete may be removed; a full one
                # means another key lives below this one.
                try:
                    os.rmdir(final)
                except FileNotFoundError:
                    pass
                except OSError as rmdir_exc:
                    if rmdir_exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise self._nested(key) from exc
                    raise
                continue
            self._sync_dir(os.path.dirname(final))
            return True
        raise BackendError(
            f"local object store {self._root}: could not place object {key!r}: its directory "
            f"kept disappearing under concurrent deletes",
            retryable=True,
        )

    def _make_parents(self, key: str) -> None:
        path = self._root
        for part in key.split("/")[:-1]:
            parent, path = path, os.path.join(path, part)
            try:
                os.mkdir(path)
            except FileExistsError:
                # One stat call, so that a directory pruned and recreated by other threads
                # meanwhile cannot look like a file.
                try:
                    is_dir = stat.S_ISDIR(os.stat(path).st_mode)
                except FileNotFoundError:
                    # An empty directory a concurrent delete pruned just now; the caller
                    # retries the whole placement.
                    raise FileNotFoundError(errno.ENOENT, "directory vanished", path) from None
                if not is_dir:
                    raise self._nested(key) from None
                continue
            # The new directory entry must be durable before the object inside it is.
            self._sync_dir(parent)

    def _prune(self, key: str) -> None:
        # Remove directories the delete left empty, so that a later key may take their name
        # and listings do not wade through dead directories.
        parts = key.split("/")[:-1]
        while parts:
            try:
                os.rmdir(os.path.join(self._root, *parts))
            except OSError:
                return  # not empty (or already gone): stop climbing
            parts.pop()

    def _sync_dir(self, directory: str) -> None:
        if not (self._fsync and _CAN_SYNC_DIRS):
            return
        fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sweep_temp(self) -> None:
        cutoff = time.time() - TEMP_MAX_AGE
        try:
            with os.scandir(self._tmp) as it:
                stale = [e.path for e in it if e.is_file() and e.stat().st_mtime < cutoff]
        except OSError:
            return  # cleanup is best effort; a later open tries again
        for path in stale:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _nested(self, key: str) -> InvalidInputError:
        return InvalidInputError(
            f"object key {key!r} collides with another key in the local store at {self._root}: "
            f"a key cannot also be a directory prefix of another key (such as 'a' and 'a/b')",
            path="key",
        )

    def _error(self, exc: OSError, action: str, key: str) -> BackendError:
        code = exc.errno if exc.errno is not None else 0
        name = errno.errorcode.get(code, "unknown error")
        hint = _HINTS.get(code, "")
        detail = exc.strerror or str(exc)
        message = (
            f"local object store {self._root}: could not {action} object {key!r}: {detail} ({name})"
        )
        if hint:
            message += f"; {hint}"
        return BackendError(message, retryable=code in _RETRYABLE_ERRNOS)


def _contiguous(data: Buffer) -> Buffer:
    # File writes need a C-contiguous buffer; a strided memoryview is copied once.
    if isinstance(data, memoryview) and not data.c_contiguous:
        return data.tobytes()
    return data


def _read_exactly(fd: int, offset: int, size: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, size)
    if len(data) == size:
        return data
    # A short read is legal (signals, huge sizes on some systems); keep reading until done.
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _is_key(key: str) -> bool:
    # Files that are not valid keys (dropped in by hand, editor backups) are not objects.
    try:
        check_key(key)
    except InvalidInputError:
        return False
    return True
