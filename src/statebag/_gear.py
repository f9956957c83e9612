"""Parameters shared by both chunker twins: validation, the gear table and the masks.

Both ``statebag._cdc`` (compiled) and ``statebag._cdc_py`` (pure Python) take their tables
and their input checks from here, so the two cannot drift apart. The tables and masks are part
of the repository format: changing one changes cut points and so breaks deduplication against
existing data (``tests/test_chunking_golden.py`` guards it).

Gear table: ``GEAR[i]`` is the little-endian ``uint64`` at byte offset ``8 * i`` of the 2048-byte
BLAKE3 extended output of ``b"statebag/gear/v1" + seed.to_bytes(8, "little")``.

Masks (normalized chunking, level ``n``; format 1 is always level 2): with
``bits = log2(avg_size)``, ``MASK_S`` has ``bits + n`` ones and ``MASK_L`` has ``bits - n`` ones,
both ending at bit 59 (the most significant bit used). Level 0 is one mask of ``bits`` ones on
both sides of ``avg_size``: a cut then depends on content alone, not on how far the chunk has
come. Bits 60..63 stay clear so that a multi-byte step may compare ``h << k`` with
``mask << k`` for ``k <= 4`` and still give exactly the byte-wise answer.
"""

from __future__ import annotations

from blake3 import blake3

from ._typing import Buffer
from .errors import InvalidInputError

__all__ = [
    "DEFAULT_AVG_SIZE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_NORMALIZATION",
    "GEAR_DOMAIN",
    "MASK_TOP_BIT",
    "MAX_NORMALIZATION",
    "byte_view",
    "check_params",
    "check_threads",
    "gear_table",
    "masks",
]

DEFAULT_MIN_SIZE = 4096
DEFAULT_AVG_SIZE = 16384
DEFAULT_MAX_SIZE = 65536
# Format 1's level, and the chunker's default, so that ``Chunker()`` cuts as it always did.
DEFAULT_NORMALIZATION = 2
# Above 3, MASK_L of the smallest average (2**8) would keep 4 bits: a cut every 16 bytes.
MAX_NORMALIZATION = 3

MIN_SIZE_FLOOR = 64
AVG_SIZE_FLOOR = 256
MAX_SIZE_CEILING = 1 << 30
SEED_LIMIT = 1 << 64

GEAR_DOMAIN = b"statebag/gear/v1"
MASK_TOP_BIT = 59


def check_params(
    min_size: int,
    avg_size: int,
    max_size: int,
    seed: int,
    normalization: int = DEFAULT_NORMALIZATION,
) -> None:
    """Refuse chunker parameters that the format does not allow, naming the one at fault."""
    for name, value in (
        ("min_size", min_size),
        ("avg_size", avg_size),
        ("max_size", max_size),
        ("seed", seed),
        ("normalization", normalization),
    ):
        if type(value) is not int:
            raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}", path=name)
    if min_size < MIN_SIZE_FLOOR:
        raise InvalidInputError(
            f"min_size must be at least {MIN_SIZE_FLOOR}, got {min_size}", path="min_size"
        )
    if avg_size < AVG_SIZE_FLOOR or avg_size & (avg_size - 1):
        raise InvalidInputError(
            f"avg_size must be a power of two of at least {AVG_SIZE_FLOOR}, got {avg_size}",
            path="avg_size",
        )
    if not min_size < avg_size < max_size:
        raise InvalidInputError(
            "chunk sizes must satisfy min_size < avg_size < max_size, got "
            f"{min_size} / {avg_size} / {max_size}",
            path="max_size" if avg_size >= max_size else "min_size",
        )
    if max_size > MAX_SIZE_CEILING:
        raise InvalidInputError(
            f"max_size must be at most {MAX_SIZE_CEILING}, got {max_size}", path="max_size"
        )
    if not 0 <= seed < SEED_LIMIT:
        raise InvalidInputError(f"seed must be in [0, 2**64), got {seed}", path="seed")
    if not 0 <= normalization <= MAX_NORMALIZATION:
        raise InvalidInputError(
            f"normalization must be from 0 to {MAX_NORMALIZATION}, got {normalization}",
            path="normalization",
        )


def gear_table(seed: int) -> list[int]:
    """The 256 gear values for ``seed``, as documented in the module docstring."""
    stream = blake3(GEAR_DOMAIN + seed.to_bytes(8, "little")).digest(length=256 * 8)
    return [int.from_bytes(stream[8 * i : 8 * i + 8], "little") for i in range(256)]


def masks(avg_size: int, normalization: int = DEFAULT_NORMALIZATION) -> tuple[int, int]:
    """``(MASK_S, MASK_L)`` for normalized chunking level ``normalization`` around
    ``avg_size``."""
    bits = avg_size.bit_length() - 1
    top = MASK_TOP_BIT + 1
    small, large = bits + normalization, bits - normalization
    mask_s = ((1 << small) - 1) << (top - small)
    mask_l = ((1 << large) - 1) << (top - large)
    return mask_s, mask_l


def byte_view(data: Buffer) -> memoryview:
    """A one-dimensional, C-contiguous memoryview of unsigned bytes over ``data``."""
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidInputError(
            f"data must be a bytes-like object, got {type(data).__name__}", path="data"
        ) from None
    if not view.c_contiguous:
        raise InvalidInputError("data must be a C-contiguous buffer", path="data")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_threads(threads: int) -> None:
    """Refuse a thread count that is not a positive int."""
    if type(threads) is not int or threads < 1:
        raise InvalidInputError(f"threads must be an int >= 1, got {threads!r}", path="threads")
