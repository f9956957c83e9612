"""statebag: a content-addressed, versioned storage engine for application state.

``statebag.open(url)`` opens a :class:`Repository`; ``StateBag`` is a dict-like state that
records which fields changed. ``statebag.backend`` says whether the compiled core
(``"cython"``) or its pure-Python twin (``"python"``) is active; see ``statebag.chunking``.
"""

from __future__ import annotations

from .bag import StateBag
from .chunking import Chunker, backend
from .errors import (
    BackendError,
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OutcomeUnknown,
    StatebagError,
)
from .hydrator import Hydrator, HydratorStats
from .ids import ContentId
from .merging import MISSING
from .rebuild import rebuild
from .repository import LazyState, Repository, open
from .results import (
    AuditReport,
    CommitResult,
    Diff,
    GCReport,
    ManifestInfo,
    RebuildReport,
    RepoStats,
    ResetResult,
    VerifyReport,
)

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "AuditReport",
    "BackendError",
    "Chunker",
    "CommitResult",
    "ConfigError",
    "ConflictError",
    "ContentId",
    "Diff",
    "GCReport",
    "Hydrator",
    "HydratorStats",
    "IntegrityError",
    "InvalidInputError",
    "LazyState",
    "ManifestInfo",
    "NotFoundError",
    "OutcomeUnknown",
    "RebuildReport",
    "RepoStats",
    "Repository",
    "ResetResult",
    "StateBag",
    "StatebagError",
    "VerifyReport",
    "__version__",
    "backend",
    "open",
    "rebuild",
]
