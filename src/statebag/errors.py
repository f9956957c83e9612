"""The one exception tree of statebag, grouped by what a caller does about an error.

- ``InvalidInputError``: fix the input and call again (also a ``ValueError``).
- ``NotFoundError``: the id, chain or key does not exist (also a ``KeyError``).
- ``ConflictError``: another writer moved first; reload and retry the step.
- ``IntegrityError``: stored bytes do not match their id; restore or repair, never retry.
- ``ConfigError``: the repository or environment is set up wrongly; fix the setting named.
- ``BackendError``: the object or metadata store failed; ``retryable`` says if a retry may help.
  ``OutcomeUnknown``, one of them, says a write may or may not have been applied, now or
  later: read back before acting on it.

Every class has a stable ``kind`` code and a CLI ``exit_code``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BackendError",
    "ConfigError",
    "ConflictError",
    "IntegrityError",
    "InvalidInputError",
    "NotFoundError",
    "OutcomeUnknown",
    "StatebagError",
]


class StatebagError(Exception):
    """Root of every error statebag raises on purpose."""

    kind: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its argument; every class prints its message plainly.
        return str(self.args[0]) if self.args else self.kind


class InvalidInputError(StatebagError, ValueError):
    """The caller passed something statebag cannot store or use; nothing was written.

    ``path`` names the field, key or argument at fault, for example ``messages[3].body``.
    """

    kind: ClassVar[str] = "invalid_input"
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class IntegrityError(StatebagError):
    """Stored data failed a check (hash mismatch, truncated or malformed frame)."""

    kind: ClassVar[str] = "integrity"
    exit_code: ClassVar[int] = 3

    def __init__(self, message: str, *, object_id: str | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id


class ConflictError(StatebagError):
    """A conditional write lost a race: another writer moved the head first."""

    kind: ClassVar[str] = "conflict"
    exit_code: ClassVar[int] = 4


class NotFoundError(StatebagError, KeyError):
    """The named id, chain or key does not exist."""

    kind: ClassVar[str] = "not_found"
    exit_code: ClassVar[int] = 5


class ConfigError(StatebagError):
    """The repository, an option or the environment is set up wrongly."""

    kind: ClassVar[str] = "config"
    exit_code: ClassVar[int] = 6


class BackendError(StatebagError):
    """A storage backend failed; the backend's own error is kept as ``__cause__``."""

    kind: ClassVar[str] = "backend"
    exit_code: ClassVar[int] = 7

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class OutcomeUnknown(BackendError):
    """A write may or may not have been applied, now or later (a timeout, a lost answer, a
    transaction still landing after its client gave up). Retryable: what it wrote is
    conditional, so a retry applies at most once; read back to learn which happened.

    A store raises it only for writes; any other error from a write means nothing of it was
    applied. A save that meets it and cannot read its commit back leaves its pending entry
    for garbage collection to roll back once the lease has passed.
    """

    kind: ClassVar[str] = "outcome_unknown"
    exit_code: ClassVar[int] = 8

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)
