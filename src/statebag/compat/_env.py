"""What the seed-compatible API shares: environment flags, opening the repository, chain
names and the one content hash.

This is the only place below which nothing reads the environment (docs/ARCHITECTURE.md, "Layers"):
each flag is parsed strictly (:func:`statebag.flags.env_flag`), and a value that is neither
clearly on nor clearly off is a :class:`~statebag.errors.ConfigError` naming the variable,
never a silent default.
"""

from __future__ import annotations

import os
from typing import Any

from .. import codec
from ..errors import ConfigError, InvalidInputError
from ..flags import env_flag
from ..hashing import Hasher
from ..hydrator import OFFLOAD_SUFFIX
from ..repository import Repository
from ..repository import open as open_repository
from ..validation import check_chain

__all__ = [
    "REPO_ENV",
    "content_hash",
    "env_flag",
    "env_int",
    "execution_chain",
    "resolve_repository",
    "workflow_chain",
]

REPO_ENV = "STATEBAG_REPO"
# Chains of executions leave room for the hydrator's suffix (statebag.hydrator.offload_chain).
_PLAIN_MAX = 256 - len(OFFLOAD_SUFFIX)
CLOUD_VARIABLES = ("S3_BUCKET", "SKELETON_S3_BUCKET", "MANIFESTS_TABLE")


def env_int(name: str, /, *, low: int, high: int) -> int | None:
    """The integer environment variable ``name`` within [low, high]; None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range: set it from {low} to {high}")
    return value


def content_hash(value: Any, /) -> str:
    """BLAKE3-256 of the canonical encoding of ``value`` (:func:`statebag.codec.encode`:
    MessagePack, dict keys sorted), as 64 lowercase hex characters. The writer and the
    verifiers of workflow manifests use this one formula."""
    return Hasher(codec.encode(value)).hexdigest()


def _hashed(text: str) -> str:
    # surrogatepass: an id with a lone surrogate still names one chain, deterministically.
    return Hasher(text.encode("utf-8", "surrogatepass")).hexdigest()


def execution_chain(execution_id: object, /) -> str:
    """The chain of one execution.

    The execution id itself when it is a valid chain name of at most 248 characters without
    ``~``; otherwise ``"execution~" + BLAKE3(id as UTF-8).hex()``. Plain names never contain
    ``~``, so the two forms cannot collide, nor collide with workflow chains or the
    hydrator's ``~offload`` chains.
    """
    if not isinstance(execution_id, str) or not execution_id:
        raise InvalidInputError(
            f"execution_id must be a non-empty str, not {execution_id!r}", path="execution_id"
        )
    if len(execution_id) <= _PLAIN_MAX and "~" not in execution_id:
        try:
            return check_chain(execution_id, field="execution_id")
        except InvalidInputError:
            pass  # escaped below: any str names exactly one chain
    return "execution~" + _hashed(execution_id)


def workflow_chain(workflow_id: object, /) -> str:
    """The chain of a workflow's manifests (``create_manifest``): ``"workflow~" + id`` when
    the id is a valid chain name part without ``~``, else ``"workflow~~" + BLAKE3 hex``."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise InvalidInputError(
            f"workflow_id must be a non-empty str, not {workflow_id!r}", path="workflow_id"
        )
    plain = "workflow~" + workflow_id
    if len(plain) <= _PLAIN_MAX and "~" not in workflow_id:
        try:
            return check_chain(plain, field="workflow_id")
        except InvalidInputError:
            pass
    return "workflow~~" + _hashed(workflow_id)


def _cloud_hint(given: dict[str, object]) -> str:
    named = [name for name, value in given.items() if value]
    named += [name for name in CLOUD_VARIABLES if os.environ.get(name)]
    if not named:
        return ""
    return (
        f" ({', '.join(named)} name the S3 + DynamoDB backend, which this version of "
        "statebag does not have yet)"
    )


def resolve_repository(
    repo: Repository | str | os.PathLike[str] | None,
    /,
    *,
    who: str,
    cloud: dict[str, object] | None = None,
    from_environment: bool = True,
) -> tuple[Repository, bool]:
    """The repository ``who`` works on, and whether it was opened here (and so is closed by
    its user): ``repo`` (a Repository or a URL), else (``from_environment``) the URL in
    ``STATEBAG_REPO``.

    Without ``repo``, cloud settings given to ``who`` (a bucket, a table) are a ConfigError
    even when ``STATEBAG_REPO`` is set: they ask for the S3 + DynamoDB backend, and using
    another repository instead would be a silent fallback.
    """
    if repo is None:
        asked = [name for name, value in (cloud or {}).items() if value]
        configured = os.environ.get(REPO_ENV, "").strip() if from_environment else ""
        if asked or not configured:
            where = f"or set {REPO_ENV}" if from_environment else "(a local path works today)"
            raise ConfigError(
                f"{who} needs a repository: pass repo= (a statebag Repository or a URL such "
                f"as a path or memory://name) {where}{_cloud_hint(cloud or {})}"
            )
        repo = configured
    if isinstance(repo, Repository):
        return repo, False
    if not isinstance(repo, (str, os.PathLike)):
        raise InvalidInputError(
            f"repo must be a statebag Repository or a URL, not {type(repo).__name__}",
            path="repo",
        )
    return open_repository(repo), True
