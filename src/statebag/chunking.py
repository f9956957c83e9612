"""Content-defined chunking: FastCDC 2020 with normalized chunking level 2.

``Chunker(min_size=4096, avg_size=16384, max_size=65536, seed=0)`` cuts a buffer into chunks
whose boundaries depend on content only, so an edit moves at most a few boundaries:

- ``Chunker.cut(data) -> list[int]``: the end offset of every chunk;
- ``Chunker.cut_and_hash(data, threads=1) -> (offsets, digests)``: the same offsets and the
  BLAKE3-256 digest of every chunk, in one pass; ``threads > 1`` overlaps scan and hashing.

The class is the compiled ``statebag._cdc.Chunker`` when the extension is available and the
pure-Python twin ``statebag._cdc_py.Chunker`` otherwise; both give identical results.
``backend`` says which one is active. ``STATEBAG_NO_EXTENSIONS=1`` forces the twin (read once,
at import); a missing extension warns once.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Literal

__all__ = ["Chunker", "backend"]

backend: Literal["cython", "python"]

_FORCE_TWIN = os.environ.get("STATEBAG_NO_EXTENSIONS", "").strip().lower() in {
    "1",
    "true",
    "yes",
    "on",
}

if TYPE_CHECKING:
    from ._cdc import Chunker as Chunker
elif _FORCE_TWIN:
    from ._cdc_py import Chunker

    backend = "python"
else:
    try:
        from ._cdc import Chunker
    except ImportError as exc:
        from ._cdc_py import Chunker

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
