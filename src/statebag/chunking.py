"""Content-defined chunking: FastCDC 2020 with normalized chunking.

``Chunker(min_size=4096, avg_size=16384, max_size=65536, seed=0, *, normalization=2)`` cuts a
buffer into chunks whose boundaries depend on content only, so an edit moves at most a few
boundaries. ``normalization`` (0-3) is the level: 2 is format 1's and the default, so that
``Chunker()`` cuts as it always did; a format-2 repository records its own (1 by default,
chosen by measurement: docs/FORMAT.md "Chunking") and builds its chunker from its config.

- ``Chunker.cut(data) -> list[int]``: the end offset of every chunk;
- ``Chunker.cut_and_hash(data, threads=1) -> (offsets, digests)``: the same offsets and the
  BLAKE3-256 digest of every chunk, in one pass; ``threads > 1`` overlaps scan and hashing;
- ``recut(chunker, old, old_offsets, old_digests, new) -> (offsets, digests, kept)``: the
  ``cut_and_hash`` of ``new`` computed from a previous cut of ``old``, scanning and hashing
  only from the first chunk an edit touched (an append costs the last chunk, not the whole).

The class is the compiled ``statebag._cdc.Chunker`` when the extension is available and the
pure-Python twin ``statebag._cdc_py.Chunker`` otherwise; both give identical results.
``backend`` says which one is active. ``STATEBAG_NO_EXTENSIONS=1`` forces the twin (read once,
at import; ``0`` or empty does not, and any other value is a ConfigError naming it); a missing
extension warns once.
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ._gear import byte_view
from ._typing import Buffer
from .errors import InvalidInputError
from .flags import env_flag

__all__ = ["Chunker", "backend", "common_prefix", "recut"]

backend: Literal["cython", "python"]

# A value that is neither on nor off (see statebag.flags) fails the import, naming the
# variable: ignoring it would run on a twin the user did not ask for, or not on the one asked.
_FORCE_TWIN = bool(env_flag("STATEBAG_NO_EXTENSIONS"))

if TYPE_CHECKING:
    from ._cdc import Chunker as Chunker
    from ._cdc import common_prefix as common_prefix
elif _FORCE_TWIN:
    from ._cdc_py import Chunker, common_prefix

    backend = "python"
else:
    try:
        from ._cdc import Chunker, common_prefix
    except ImportError as exc:
        from ._cdc_py import Chunker, common_prefix

        backend = "python"
        warnings.warn(
            f"statebag's compiled extension is not available ({exc}); running on the "
            "pure-Python twin, which gives the same results far more slowly. Reinstall "
            "statebag where a C compiler is available, or set STATEBAG_NO_EXTENSIONS=1 to "
            "choose the twin on purpose.",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        backend = "cython"


def recut(
    chunker: Chunker,
    old: Buffer,
    old_offsets: Sequence[int],
    old_digests: Sequence[bytes],
    new: Buffer,
    /,
    *,
    threads: int = 1,
) -> tuple[list[int], list[bytes], int]:
    """``chunker.cut_and_hash(new)``, reusing the cut ``(old_offsets, old_digests)`` of ``old``.

    A cut at offset e depends only on the bytes of its chunk and on whether the data ends at
    e, so every old chunk that ends within the common prefix of ``old`` and ``new`` (and not
    at the end of ``old``) is a chunk of ``new`` too; the rest of ``new`` is cut and hashed
    from the end of the last of them. Returns the offsets, the digests and how many leading
    chunks were kept. The result equals ``chunker.cut_and_hash(new)`` exactly (tested on both
    twins); ``old_offsets`` must be the chunker's own cut of ``old``.
    """
    old_view, new_view = byte_view(old), byte_view(new)
    if len(old_offsets) != len(old_digests) or (old_offsets and old_offsets[-1] != len(old_view)):
        raise InvalidInputError(
            f"old_offsets ({len(old_offsets)}) and old_digests ({len(old_digests)}) must be a "
            f"cut of old ({len(old_view)} bytes): one digest per offset, the last offset at "
            "its end",
            path="old_offsets",
        )
    prefix = common_prefix(old_view, new_view)
    kept = bisect_right(old_offsets, prefix)
    if kept == len(old_offsets) and kept and len(new_view) != len(old_view):
        kept -= 1  # the last old chunk ended where the old data did, not at a content cut
    start = old_offsets[kept - 1] if kept else 0
    offsets, digests = chunker.cut_and_hash(new_view[start:], threads=threads)
    return (
        [*old_offsets[:kept], *(start + end for end in offsets)],
        [*old_digests[:kept], *digests],
        kept,
    )
