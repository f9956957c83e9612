"""Pure-Python twin of ``statebag._cdc``: the same FastCDC cut points and digests, slowly.

It is the reference the compiled module is tested against and the fallback where the
extension could not be built. It scans one byte at a time; the compiled module's two-byte
steps give exactly the same answers (see the header of ``ext/statebag/_cdc.pyx``).
"""

from __future__ import annotations

from blake3 import blake3

from . import _gear
from ._typing import Buffer

__all__ = ["Chunker", "common_prefix"]

_U64 = (1 << 64) - 1


def common_prefix(a: Buffer, b: Buffer, /) -> int:
    """The length of the longest common prefix of two byte buffers."""
    x, y = _gear.byte_view(a), _gear.byte_view(b)
    lo, hi = 0, min(len(x), len(y))
    # Invariant: x[:lo] == y[:lo], and the answer is at most hi.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[lo:mid] == y[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Chunker:
    """FastCDC 2020 chunker with normalized chunking (level 2 unless told) (pure Python)."""

    __slots__ = (
        "_gear",
        "_mask_l",
        "_mask_s",
        "avg_size",
        "max_size",
        "min_size",
        "normalization",
        "seed",
    )

    def __init__(
        self,
        min_size: int = _gear.DEFAULT_MIN_SIZE,
        avg_size: int = _gear.DEFAULT_AVG_SIZE,
        max_size: int = _gear.DEFAULT_MAX_SIZE,
        seed: int = 0,
        *,
        normalization: int = _gear.DEFAULT_NORMALIZATION,
    ) -> None:
        _gear.check_params(min_size, avg_size, max_size, seed, normalization)
        self.min_size = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self.seed = seed
        self.normalization = normalization
        self._gear = tuple(_gear.gear_table(seed))
        self._mask_s, self._mask_l = _gear.masks(avg_size, normalization)

    def __repr__(self) -> str:
        return (
            f"Chunker(min_size={self.min_size}, avg_size={self.avg_size}, "
            f"max_size={self.max_size}, seed={self.seed}, normalization={self.normalization})"
        )

    def gear_table(self) -> list[int]:
        """The 256 gear values in use (for tests and the format spec)."""
        return list(self._gear)

    def _chunk_length(self, data: memoryview, start: int, end: int) -> int:
        remaining = end - start
        if remaining <= self.min_size:
            return remaining
        limit = min(remaining, self.max_size)
        normal = min(self.avg_size, limit)
        gear = self._gear
        fp = 0
        length = self.min_size
        mask = self._mask_s
        for byte in data[start + self.min_size : start + normal]:
            fp = ((fp << 1) + gear[byte]) & _U64
            length += 1
            if not fp & mask:
                return length
        mask = self._mask_l
        for byte in data[start + normal : start + limit]:
            fp = ((fp << 1) + gear[byte]) & _U64
            length += 1
            if not fp & mask:
                return length
        return limit

    def cut(self, data: Buffer, /) -> list[int]:
        """End offset of every chunk of ``data``; the last equals ``len(data)``."""
        view = _gear.byte_view(data)
        end = len(view)
        offsets: list[int] = []
        pos = 0
        while pos < end:
            pos += self._chunk_length(view, pos, end)
            offsets.append(pos)
        return offsets

    def cut_and_hash(self, data: Buffer, /, threads: int = 1) -> tuple[list[int], list[bytes]]:
        """End offsets and the 32-byte BLAKE3 digest of every chunk.

        ``threads`` is accepted for API parity and validated; the twin always runs on one.
        """
        _gear.check_threads(threads)
        view = _gear.byte_view(data)
        offsets = self.cut(view)
        digests = []
        start = 0
        for end in offsets:
            digests.append(blake3(view[start:end]).digest())
            start = end
        return offsets, digests
