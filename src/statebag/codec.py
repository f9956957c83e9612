"""Bytes on the wire: the canonical value encoding, and compressed frames.

Two layers, used one after the other when a state is turned into nodes:

1. **Canonical value encoding** (:func:`encode`, :func:`decode`). A JSON-like value (dict
   with str keys, list, tuple, str, bytes, int, float, bool, None) is encoded with msgspec
   MessagePack in deterministic order: dict keys are sorted, floats are always float64, so
   the same value always gives the same bytes whatever the dict insertion order. Anything
   else (set, datetime, Decimal, Enum, dataclass, msgspec Struct, non-str keys, ints outside
   ``-2**63 <= i < 2**64``, cycles, lone surrogates) is refused with an
   :class:`~statebag.errors.InvalidInputError` whose ``path`` names the place, such as
   ``messages[3].body`` (``$`` is the root). Types round-trip exactly, except that tuples
   come back as lists, bytearray and memoryview as bytes, and subclasses of dict, list,
   str, int and float as the base type.

   Nesting is bounded by :data:`NESTING_LIMIT` (512 levels), the same on both sides and
   independent of the caller's stack: :func:`encode` refuses a deeper value (the walk that
   checks types counts levels in a loop), and :func:`decode` scans the bytes' type bytes in a
   loop before msgspec sees them, so a crafted deeper buffer is an
   :class:`~statebag.errors.IntegrityError`, never a ``RecursionError`` or a crash. msgspec
   itself recurses once per level; when the caller's stack has too little room left for
   that, both sides fall back to msgspec calls on slices of the value a few levels deep each
   (:func:`_encode_in_pieces`, :func:`_decode_in_pieces`), which give the same result.

2. **Frames** (:func:`compress`, :func:`decompress`). A frame is one codec byte followed by
   the payload: :data:`CODEC_RAW` (the bytes as they are) or :data:`CODEC_ZSTD` (one zstd
   frame that declares its content size, without checksum). Compression falls back to raw
   when zstd does not make the bytes smaller. Decompression is bounded: a zstd frame that
   declares more than ``max_size`` bytes is refused before any work is done. Node ids are
   the BLAKE3-256 digest of the uncompressed bytes
   (:func:`statebag.hashing.hash_bytes`); given the expected id,
   :func:`decompress` re-hashes and refuses a mismatch with an
   :class:`~statebag.errors.IntegrityError`.
"""

from __future__ import annotations

import json
import struct
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from itertools import chain
from typing import Any, NoReturn

import msgspec
import zstandard

from ._typing import Buffer
from .chunking import backend
from .errors import IntegrityError, InvalidInputError
from .hashing import DIGEST_SIZE, hash_bytes

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "DEFAULT_LEVEL",
    "NESTING_LIMIT",
    "check_digest",
    "compress",
    "compress_batch",
    "decode",
    "decompress",
    "decompress_batch",
    "encode",
    "encode_parts",
    "nesting_depth",
]

CODEC_RAW = 0
CODEC_ZSTD = 1
DEFAULT_LEVEL = 3

_MIN_LEVEL = -7
_MAX_LEVEL = 22
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

NESTING_LIMIT = 512
"""How deeply lists and dicts may nest in one value: ``[]`` is 1 level, ``[[]]`` 2. The same
on save (:class:`InvalidInputError` naming the path) and on load (:class:`IntegrityError`),
whatever the caller's stack depth and recursion limit."""
# The scanners' own bound on a limit: it sizes one allocation.
_SCAN_LIMIT_MAX = 1 << 20

# ---------------------------------------------------------------------------------------------
# Canonical value encoding
# ---------------------------------------------------------------------------------------------

# Exact leaf types msgspec encodes the way we want. bytearray and memoryview become msgpack
# bin and decode as bytes.
_LEAVES: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), bytes, bytearray, memoryview}
)


def _enc_hook(obj: Any) -> Any:
    # msgspec only calls this for types it does not encode natively. The validation walk lets
    # nothing reach it except subclasses of str, int and float, which become the base type.
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    raise TypeError(f"unsupported type {type(obj).__qualname__}")


class _ExtensionFound(Exception):
    """A msgpack extension type in a buffer: our encoder never writes one."""


def _ext_hook(code: int, data: memoryview) -> Any:
    raise _ExtensionFound(f"msgpack extension type {code} is not part of the format")


# Exact types needing no check beyond their type (str and int have content checks).
_PLAIN_LEAVES: frozenset[type] = _LEAVES - {str, int}

_ENCODER = msgspec.msgpack.Encoder(order="deterministic", enc_hook=_enc_hook)
_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode(value: Any, /) -> bytes:
    """Encode a JSON-like value to canonical MessagePack bytes.

    Raises :class:`InvalidInputError` (a ``ValueError``) naming the path of the first value
    that cannot be stored exactly, a container nested deeper than :data:`NESTING_LIMIT`
    included. The result does not depend on how deep in its own stack the caller is, nor on
    its recursion limit.
    """
    # The quick check counts a level only for a container holding something other than an
    # exact leaf, so it refuses every value nested deeper than the limit, and a few at the
    # limit (a subclassed leaf innermost): for those the full walk finds nothing to report.
    if not _quick_check_impl(value, NESTING_LIMIT - 1):
        _diagnose(value, NESTING_LIMIT)
    try:
        return _encode_nested(value)
    except (TypeError, ValueError, OverflowError) as exc:
        # Out-of-range ints, non-str keys and lone surrogates land here; the full walk
        # below finds where they are.
        failure = exc
    _diagnose(value, NESTING_LIMIT)
    raise InvalidInputError(f"value at $ cannot be encoded: {failure}", path="$") from failure


def encode_parts(value: Any, /) -> tuple[bytes, bytes]:
    """:func:`encode`'s result as two parts that concatenate to it.

    A ``bytes`` value is its encoding's body: the parts are then the bin head and the value
    itself, not copied (bytes are immutable, so the parts stay what they were). Any other
    value gives ``(encode(value), b"")``.
    """
    if type(value) is bytes:
        return _bin_head(len(value)), value
    return encode(value), b""


def _bin_head(size: int) -> bytes:
    """The head msgspec writes before ``size`` bytes: the smallest bin form that holds it."""
    if size < 1 << 8:
        return bytes((0xC4, size))
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise InvalidInputError(
        f"bytes at $ are {size} long; MessagePack holds at most 2**32 - 1", path="$"
    )


def decode(data: bytes | bytearray | memoryview, /, *, limit: int = NESTING_LIMIT) -> Any:
    """Decode canonical MessagePack bytes; dicts iterate in sorted key order.

    A malformed buffer, or one nested deeper than ``limit`` (a value's bound; a record that
    holds values, such as a manifest, adds its own levels), raises :class:`IntegrityError`
    before anything is decoded.
    """
    nesting_depth(data, limit=limit)
    try:
        try:
            return _DECODER.decode(data)
        except RecursionError:
            # Within the limit, so it is the caller's stack that is short.
            return _in_steps(lambda step: _decode_in_pieces(data, step, limit))
    except (msgspec.DecodeError, _ExtensionFound) as exc:
        # What the scan does not look at: UTF-8 of str, float and int forms.
        raise IntegrityError(f"malformed encoded value: {exc}") from exc


_SCAN_ERRORS = {
    1: "is nested more than {limit} levels deep",
    2: "ends inside a value",
    3: "holds a type byte the format never writes",
    4: "has a map key that is not a str",
    5: "has bytes after its value",
}


def nesting_depth(data: Buffer, /, *, limit: int = NESTING_LIMIT, what: str = "") -> int:
    """How deeply the one MessagePack value in ``data`` nests (0 for a scalar, 1 for ``[]``).

    Raises :class:`IntegrityError` (naming ``what``, e.g. "node <id>") unless ``data`` is one
    well-formed value of the format's types, with str map keys, nested at most ``limit``
    deep. Reads the type bytes only, in a loop: nothing recurses and nothing is allocated.
    """
    depth, error, offset = _msgpack_depth_impl(data, limit)
    if error:
        subject = what or "encoded value"
        detail = _SCAN_ERRORS[error].format(limit=limit)
        raise IntegrityError(f"{subject} {detail} (byte {offset})")
    return depth


# Per type byte: (kind, a, b). _FIXED: a value of `a` bytes; _SIZED: a str or bin whose length
# is the next `a` bytes; _ARRAY and _MAP: a container whose entry count is `b` (fix forms,
# a = 0) or the next `a` bytes; _BAD: never written by the format.
_FIXED, _SIZED, _ARRAY, _MAP, _BAD = range(5)


def _type_table() -> tuple[tuple[int, int, int], ...]:
    table: list[tuple[int, int, int]] = []
    for b in range(256):
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            table.append((_FIXED, 1, 0))
        elif b <= 0x8F:
            table.append((_MAP, 0, b & 0x0F))
        elif b <= 0x9F:
            table.append((_ARRAY, 0, b & 0x0F))
        elif b <= 0xBF:
            table.append((_FIXED, 1 + (b & 0x1F), 0))
        elif b in (0xC4, 0xD9):
            table.append((_SIZED, 1, 0))
        elif b in (0xC5, 0xDA):
            table.append((_SIZED, 2, 0))
        elif b in (0xC6, 0xDB):
            table.append((_SIZED, 4, 0))
        elif b in (0xCC, 0xD0):
            table.append((_FIXED, 2, 0))
        elif b in (0xCD, 0xD1):
            table.append((_FIXED, 3, 0))
        elif b in (0xCA, 0xCE, 0xD2):
            table.append((_FIXED, 5, 0))
        elif b in (0xCB, 0xCF, 0xD3):
            table.append((_FIXED, 9, 0))
        elif b in (0xDC, 0xDE):
            table.append((_ARRAY if b == 0xDC else _MAP, 2, 0))
        elif b in (0xDD, 0xDF):
            table.append((_ARRAY if b == 0xDD else _MAP, 4, 0))
        else:  # 0xc1, the ext families 0xc7..0xc9 and 0xd4..0xd8
            table.append((_BAD, 0, 0))
    return tuple(table)


_TYPES = _type_table()
_STR_TYPES = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}


def _msgpack_depth(
    data: Buffer, limit: int, spans: list[list[int]] | None = None, every: int = 0
) -> tuple[int, int, int]:
    """(depth, error, offset) of the MessagePack value in ``data``: see :func:`nesting_depth`.

    This is the pure-Python twin of ``statebag._walk.msgpack_depth``, which must give the
    same answer for every buffer and limit (its header states the algorithm): change the two
    together. With ``spans``, also lists ``[start, end, parent]`` of every container at
    levels ``1 + every``, ``1 + 2 * every``, ... in the order they start (``parent``: the
    index of the nearest listed container around it, or -1), for :func:`_decode_in_pieces`.
    """
    if not 0 <= limit <= _SCAN_LIMIT_MAX:
        raise ValueError(f"limit must be from 0 to {_SCAN_LIMIT_MAX}, not {limit}")
    view = memoryview(data).cast("B") if type(data) is not bytes else data
    n = len(view)
    types = _TYPES
    owed = [1]  # items each open container still owes, the top level first
    maps = [False]
    opened: list[int] = [-1]  # the span each open container started, or -1
    around = [-1]  # the innermost listed span around each open container
    depth = pos = 0
    while True:
        while owed and owed[-1] == 0:
            owed.pop()
            maps.pop()
            around.pop()
            started = opened.pop()
            if started >= 0 and spans is not None:
                spans[started][1] = pos
        if not owed:
            break
        if pos >= n:
            return depth, 2, n
        b = view[pos]
        if maps[-1] and not owed[-1] & 1 and b not in _STR_TYPES:
            return depth, 4, pos
        owed[-1] -= 1
        kind, a, count = types[b]
        if kind == _FIXED:
            size = a
        elif kind == _SIZED:
            if n - pos < 1 + a:
                return depth, 2, n
            size = 1 + a + int.from_bytes(view[pos + 1 : pos + 1 + a], "big")
        elif kind == _BAD:
            return depth, 3, pos
        else:
            size = 1 + a
            if a:
                if n - pos < size:
                    return depth, 2, n
                count = int.from_bytes(view[pos + 1 : pos + 1 + a], "big")
            level = len(owed)
            if level > limit:
                return depth, 1, pos
            depth = max(depth, level)
            owed.append(2 * count if kind == _MAP else count)
            maps.append(kind == _MAP)
            span = -1
            if spans is not None and level > 1 and (level - 1) % every == 0:
                span = len(spans)
                spans.append([pos, -1, around[-1]])
            opened.append(span)
            around.append(span if span >= 0 else around[-1])
        if size > n - pos:
            return depth, 2, n
        pos += size
    if pos != n:
        return depth, 5, pos
    return depth, 0, 0


# Steps of the piecewise fallbacks: levels per msgspec call, tried in turn until the caller's
# stack has room for one (a call needs about one recursion level per nesting level).
_STEPS = (64, 8, 1)


def _in_steps(attempt: Callable[[int], Any]) -> Any:
    """``attempt(step)`` with the first step the caller's stack has room for."""
    for step in _STEPS[:-1]:
        try:
            return attempt(step)
        except RecursionError:
            continue
    return attempt(_STEPS[-1])


def _encode_nested(value: Any) -> bytes:
    """msgspec's encoding of a value checked to nest at most NESTING_LIMIT deep."""
    try:
        return _ENCODER.encode(value)
    except RecursionError:
        # Within the limit, so it is the caller's stack that is short.
        encoded: bytes = _in_steps(lambda step: _encode_in_pieces(value, step))
        return encoded


def _encode_in_pieces(value: Any, step: int) -> bytes:
    """The encoding msgspec gives ``value``, built from calls that each nest at most
    ``step`` levels: every container at levels ``1 + step``, ``1 + 2 * step``, ... is encoded
    first and enters its parent's copy as ``msgspec.Raw``, which msgspec writes verbatim.

    Containers are copied as plain dicts and lists (read the way msgspec reads them: a
    subclass through the base type's storage), so the bytes are exactly the direct ones.
    """
    top: list[Any] = []
    # Frames: (children as (key, child) pairs, the copy being built, its level, its key).
    stack: list[tuple[Iterator[tuple[Any, Any]], Any, int, Any]] = [
        (iter(((None, value),)), top, 0, None)
    ]
    while stack:
        children, copy, level, _ = stack[-1]
        for key, item in children:
            if isinstance(item, dict):
                stack.append((iter(dict.items(item)), {}, level + 1, key))
                break
            if isinstance(item, list):
                stack.append((((None, x) for x in list.__iter__(item)), [], level + 1, key))
                break
            if type(item) is tuple:
                stack.append((((None, x) for x in item), [], level + 1, key))
                break
            _put(copy, key, item)
        else:
            _, copy, level, key = stack.pop()
            if stack:
                piece = copy
                if level > 1 and (level - 1) % step == 0:
                    piece = msgspec.Raw(_ENCODER.encode(copy))
                _put(stack[-1][1], key, piece)
    return _ENCODER.encode(top[0])


def _put(container: Any, key: Any, item: Any) -> None:
    if type(container) is list:
        container.append(item)
    else:
        container[key] = item


# A placeholder for a decoded piece: fixext 4 of type 0 holding the piece's index. The scan
# refused every ext type in the data, so a placeholder is the only one a piece holds.
_PIECE = b"\xd6\x00"


def _decode_in_pieces(data: Buffer, step: int, limit: int = NESTING_LIMIT) -> Any:
    """What msgspec decodes from ``data`` (already scanned), from calls that each nest at most
    ``step`` levels: the containers at levels ``1 + step``, ``1 + 2 * step``, ... are decoded
    innermost first, and each enters its parent's bytes as a placeholder that the decoder's
    ext hook turns into the decoded piece. Map keys are str (the scan checked), so a
    placeholder only ever stands where a value does."""
    spans: list[list[int]] = []
    _msgpack_depth(data, limit, spans, step)
    inner: list[list[int]] = [[] for _ in spans]
    top: list[int] = []
    for index, (_, _, parent) in enumerate(spans):
        (inner[parent] if parent >= 0 else top).append(index)
    pieces: list[Any] = [None] * len(spans)
    view = memoryview(data)

    def piece(_: int, ref: memoryview) -> Any:
        return pieces[int.from_bytes(ref, "big")]

    decoder = msgspec.msgpack.Decoder(ext_hook=piece)

    def decode_span(start: int, end: int, children: list[int]) -> Any:
        parts: list[Buffer] = []
        cursor = start
        for child in children:
            parts += (view[cursor : spans[child][0]], _PIECE + child.to_bytes(4, "big"))
            cursor = spans[child][1]
        parts.append(view[cursor:end])
        decoded = decoder.decode(b"".join(parts))
        for child in children:
            pieces[child] = None
        return decoded

    # Spans are listed in the order they start, so every span comes after the one around it.
    for index in reversed(range(len(spans))):
        start, end, _ = spans[index]
        pieces[index] = decode_span(start, end, inner[index])
    return decode_span(0, len(view), top)


def _quick_check(value: object, max_depth: int) -> bool:
    """Cheap first pass: True when msgspec may encode ``value`` as it is.

    Only refuses what msgspec would silently accept with another meaning (set, datetime,
    Enum, Struct, dataclass, tuple subclasses ...) and nesting deeper than ``max_depth``, which
    is also how a cycle shows up. Anything msgspec refuses by itself (non-str keys, ints out of
    range, lone surrogates) is left to it. On False, :func:`_diagnose` finds the culprit.

    This is the pure-Python twin of ``statebag._walk.quick_check``, which must give the same
    answer for every value: change the two together.
    """
    leaves = _LEAVES
    stack: list[Iterator[Any]] = [iter((value,))]
    push = stack.append
    children: Iterator[Any]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind in leaves:
                continue
            if kind is dict:
                children = iter(item.values())
            elif kind is list or kind is tuple:
                children = iter(item)
            elif isinstance(item, Enum):  # Rare from here on: subclasses.
                return False
            elif isinstance(item, dict):
                children = iter(dict.values(item))
            elif isinstance(item, list):
                children = list.__iter__(item)
            elif isinstance(item, (str, int, float)):
                continue
            else:
                return False
            # Tight loop over the leaves of the container; stop at the first non-leaf.
            for child in children:
                if type(child) not in leaves:
                    break
            else:
                continue
            if len(stack) > max_depth:
                return False
            push(chain((child,), children))
            break
        else:
            stack.pop()
    return True


# encode() runs the compiled walk whenever the compiled chunker is active. That follows
# statebag.chunking's choice: STATEBAG_NO_EXTENSIONS=1 selects the twin here too, and a build
# without extensions selects it after chunking has already warned. Only a build that has the
# chunker but not the walk is left to warn about here.
_quick_check_impl: Callable[[object, int], bool] = _quick_check
_msgpack_depth_impl: Callable[[Buffer, int], tuple[int, int, int]] = _msgpack_depth
if backend == "cython":
    try:
        from ._walk import msgpack_depth as _compiled_msgpack_depth
        from ._walk import quick_check as _compiled_quick_check
    except ImportError as exc:
        warnings.warn(
            f"statebag's compiled validation walk is not available ({exc}); codec.encode "
            "checks values with its pure-Python twin, which gives the same results more "
            "slowly. Reinstall statebag to rebuild its extensions.",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        _quick_check_impl = _compiled_quick_check
        _msgpack_depth_impl = _compiled_msgpack_depth


def _child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


def _show(path: str) -> str:
    return path or "$"


def _check_str(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} at {_show(path)} is not valid Unicode (lone surrogate at position "
            f"{exc.start})",
            path=_show(path),
        ) from exc


def _diagnose(value: object, max_depth: int) -> None:
    """Full walk with paths: raise InvalidInputError at the first problem found, if any.

    Refuses everything :func:`_quick_check` refuses, and what msgspec refuses by itself.
    """
    # Each frame: (children as (key, child) pairs, path of the container or None for the
    # pseudo-container around the root, id of the container).
    stack: list[tuple[Iterator[tuple[str | int, Any]], str | None, int]] = [
        (iter((("", value),)), None, 0)
    ]
    on_path: dict[int, str] = {}  # id of each container on the current path -> its path
    while stack:
        children, parent, _ = stack[-1]
        for key, item in children:
            path = "" if parent is None else _child_path(parent, key)
            kind = type(item)
            if kind in _PLAIN_LEAVES:
                continue
            if isinstance(item, Enum):
                _unsupported(item, path)
            if isinstance(item, str):
                _check_str(item, path, "string")
                continue
            if isinstance(item, int):
                if not _INT_MIN <= item <= _INT_MAX:
                    raise InvalidInputError(
                        f"int at {_show(path)} is out of range: {item} is not within "
                        "-2**63 .. 2**64-1",
                        path=_show(path),
                    )
                continue
            if isinstance(item, float):
                continue
            pairs: Iterator[tuple[str | int, Any]]
            if isinstance(item, dict):
                for k in dict.keys(item):
                    if not isinstance(k, str):
                        raise InvalidInputError(
                            f"dict at {_show(path)} has key {k!r} of type "
                            f"{type(k).__qualname__}; only str keys can be stored",
                            path=_show(path),
                        )
                    _check_str(k, path, f"dict key {k!r}")
                pairs = iter(dict.items(item))
            elif kind is tuple or isinstance(item, list):
                pairs = enumerate(item)
            else:
                _unsupported(item, path)
            ident = id(item)
            if ident in on_path:
                raise InvalidInputError(
                    f"cycle at {_show(path)}: the value contains itself (it is the same "
                    f"object as {_show(on_path[ident])})",
                    path=_show(path),
                )
            if len(stack) > max_depth:
                raise InvalidInputError(
                    f"value at {_show(path)} is nested more than {max_depth} levels deep",
                    path=_show(path),
                )
            on_path[ident] = path
            stack.append((pairs, path, ident))
            break
        else:
            _, parent, ident = stack.pop()
            if parent is not None:
                del on_path[ident]


def _unsupported(item: object, path: str) -> NoReturn:
    raise InvalidInputError(
        f"unsupported type {type(item).__qualname__} at {_show(path)}: only dict (with str "
        "keys), list, tuple, str, bytes, int, float, bool and None can be stored",
        path=_show(path),
    )


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

_RAW_HEADER = bytes([CODEC_RAW])
_ZSTD_HEADER = bytes([CODEC_ZSTD])


class _Contexts(threading.local):
    """zstandard contexts are not thread-safe: each thread keeps its own."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor: zstandard.ZstdDecompressor | None = None


_contexts = _Contexts()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    compressor = _contexts.compressors.get(level)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False
        )
        _contexts.compressors[level] = compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = _contexts.decompressor
    if decompressor is None:
        decompressor = _contexts.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def compress(raw: bytes | memoryview, /, *, level: int = DEFAULT_LEVEL) -> bytes:
    """Return a frame holding ``raw``: zstd at ``level``, or raw when zstd does not pay.

    ``level`` is 0 (store raw without trying), 1..22, or a fast level -1..-7.
    """
    if type(level) is not int or not _MIN_LEVEL <= level <= _MAX_LEVEL:
        raise InvalidInputError(
            f"level must be an int from {_MIN_LEVEL} to {_MAX_LEVEL} (0 stores raw), not {level!r}",
            path="level",
        )
    if level:
        packed = _compressor(level).compress(raw)
        if len(packed) < len(raw):
            return _ZSTD_HEADER + packed
    return _RAW_HEADER + raw


def compress_batch(
    raws: Sequence[bytes | memoryview], /, *, level: int = DEFAULT_LEVEL
) -> list[tuple[bytes, Buffer]]:
    """Frames of many inputs at once, each as (codec byte, payload): ``header + payload`` is
    exactly ``compress(raw, level=level)``.

    One call into zstd compresses the whole batch without taking the GIL in between, so a
    thread compressing a batch leaves the interpreter to the others; the frames stay in two
    parts so that writing them into a pack is the only copy.
    """
    if type(level) is not int or not _MIN_LEVEL <= level <= _MAX_LEVEL:
        raise InvalidInputError(
            f"level must be an int from {_MIN_LEVEL} to {_MAX_LEVEL} (0 stores raw), not {level!r}",
            path="level",
        )
    if not level or not raws:
        return [(_RAW_HEADER, raw) for raw in raws]
    # zstd refuses empty inputs in a batch; an empty frame is raw anyway.
    present: list[bytes | bytearray | memoryview] = [raw for raw in raws if len(raw)]
    segments: list[Any] = []
    if present:
        packed = _compressor(level).multi_compress_to_buffer(present, threads=1)
        # The stubs do not say that the collection is a sequence of buffers; it is.
        segments = [packed[index] for index in range(len(packed))]
    frames: list[tuple[bytes, Buffer]] = []
    compressed = iter(segments)
    for raw in raws:
        segment = next(compressed) if len(raw) else None
        if segment is not None and len(segment) < len(raw):
            frames.append((_ZSTD_HEADER, memoryview(segment)))
        else:
            frames.append((_RAW_HEADER, raw))
    return frames


def decompress(
    frame: bytes | memoryview, /, *, max_size: int, expected: bytes | None = None
) -> bytes:
    """Return the bytes held in ``frame``, at most ``max_size`` of them.

    With ``expected`` (a 32-byte BLAKE3 digest), the result must hash to it. Any malformed,
    truncated, oversized or mismatching frame raises :class:`IntegrityError`.
    """
    if type(max_size) is not int or max_size < 0:
        raise InvalidInputError(
            f"max_size must be a non-negative int, not {max_size!r}", path="max_size"
        )
    object_id: str | None = None
    if expected is not None:
        if len(expected) != DIGEST_SIZE:
            raise InvalidInputError(
                f"expected must be a {DIGEST_SIZE}-byte digest, not {len(expected)} bytes",
                path="expected",
            )
        object_id = bytes(expected).hex()
    where = f" of object {object_id}" if object_id else ""

    view = memoryview(frame)
    if not view.nbytes:
        raise IntegrityError(f"empty frame{where}: no codec byte", object_id=object_id)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    codec = view[0]
    payload = view[1:]
    if codec == CODEC_RAW:
        if len(payload) > max_size:
            raise IntegrityError(
                f"raw frame{where} holds {len(payload)} bytes, more than the maximum {max_size}",
                object_id=object_id,
            )
        raw = bytes(payload)
    elif codec == CODEC_ZSTD:
        raw = _unzstd(payload, max_size, where, object_id)
    else:
        raise IntegrityError(
            f"frame{where} has unknown codec byte {codec} (known: {CODEC_RAW} raw, "
            f"{CODEC_ZSTD} zstd)",
            object_id=object_id,
        )
    if expected is not None:
        actual = hash_bytes(raw)
        if actual != expected:
            raise IntegrityError(
                f"object {object_id} is corrupt: its bytes hash to {actual.hex()}",
                object_id=object_id,
            )
    return raw


def decompress_batch(
    frames: Sequence[memoryview],
    /,
    *,
    sizes: Sequence[int],
    expected: Sequence[bytes],
    verify: bool = True,
) -> list[memoryview]:
    """The bytes held in many frames, each exactly ``sizes[i]`` long and hashing to
    ``expected[i]``; raises :class:`IntegrityError` naming the first that fails.
    ``verify=False`` skips the hash check (sizes are still checked): the caller then checks
    each result with :func:`check_digest` before using it.

    The zstd frames are decompressed in one call that does not take the GIL in between, so
    a thread reading a pack range leaves the interpreter to a thread decoding values. The
    results are views (of the raw frames, or of one buffer holding the decompressed ones).
    """
    if not len(frames) == len(sizes) == len(expected):
        raise InvalidInputError("frames, sizes and expected must have one entry each", path="sizes")
    results: list[memoryview | None] = [None] * len(frames)
    packed: list[bytes | bytearray | memoryview] = []
    packed_at: list[int] = []
    for index, frame in enumerate(frames):
        codec = frame[0] if frame.nbytes else -1
        if codec == CODEC_RAW and frame.nbytes - 1 == sizes[index]:
            results[index] = frame[1:]
        elif codec == CODEC_ZSTD:
            packed.append(frame[1:])
            packed_at.append(index)
        else:  # empty, unknown codec, or a raw frame of the wrong size: let the slow path say
            decompress(frame, max_size=sizes[index], expected=expected[index])
            raise IntegrityError(  # pragma: no cover - decompress() raised above
                f"object {bytes(expected[index]).hex()} is malformed"
            )
    if packed:
        wanted = struct.pack(f"={len(packed)}Q", *(sizes[index] for index in packed_at))
        try:
            output = _decompressor().multi_decompress_to_buffer(
                packed, decompressed_sizes=wanted, threads=1
            )
        except zstandard.ZstdError as exc:
            # Find the culprit frame by frame, for an error that names it.
            for index in packed_at:
                frame = frames[index]
                if len(decompress(frame, max_size=sizes[index])) != sizes[index]:
                    raise IntegrityError(
                        f"object {bytes(expected[index]).hex()} holds a different size than "
                        "its index says",
                        object_id=bytes(expected[index]).hex(),
                    ) from None
            first = bytes(expected[packed_at[0]]).hex()
            raise IntegrityError(
                f"zstd frames of objects {first} and {len(packed_at) - 1} more do not "
                f"decompress together, though each does alone: {exc}",
                object_id=first,
            ) from exc
        for position, index in enumerate(packed_at):
            results[index] = memoryview(output[position])  # type: ignore[arg-type]
    views: list[memoryview] = []
    for index, view in enumerate(results):
        assert view is not None
        if verify:
            check_digest(view, expected[index])
        views.append(view)
    return views


def check_digest(data: Buffer, expected: bytes, /) -> None:
    """Raise :class:`IntegrityError` unless ``data`` hashes to ``expected``."""
    actual = hash_bytes(data)
    if actual != expected:
        object_id = bytes(expected).hex()
        raise IntegrityError(
            f"object {object_id} is corrupt: its bytes hash to {actual.hex()}",
            object_id=object_id,
        )


def _unzstd(payload: memoryview, max_size: int, where: str, object_id: str | None) -> bytes:
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError as exc:
        raise IntegrityError(
            f"zstd frame{where} has a malformed header: {exc}", object_id=object_id
        ) from exc
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise IntegrityError(
            f"zstd frame{where} does not declare its content size", object_id=object_id
        )
    if declared > max_size:
        raise IntegrityError(
            f"zstd frame{where} declares {declared} bytes, more than the maximum {max_size}",
            object_id=object_id,
        )
    try:
        raw = _decompressor().decompress(payload, max_output_size=declared, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"zstd frame{where} is corrupt: {exc}", object_id=object_id) from exc
    if len(raw) != declared:
        raise IntegrityError(
            f"zstd frame{where} declares {declared} bytes but holds {len(raw)}",
            object_id=object_id,
        )
    return raw
