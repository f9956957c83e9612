"""statebag: a content-addressed, versioned storage engine for application state.

``statebag.backend`` says whether the compiled core (``"cython"``) or its pure-Python twin
(``"python"``) is active; see ``statebag.chunking``.
"""

from __future__ import annotations

from .chunking import Chunker, backend
from .errors import (
    BackendError,
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StatebagError,
)
from .ids import ContentId

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Chunker",
    "ConfigError",
    "ConflictError",
    "ContentId",
    "IntegrityError",
    "InvalidInputError",
    "NotFoundError",
    "StatebagError",
    "__version__",
    "backend",
]
