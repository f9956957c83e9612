"""``StateHydrator`` and ``get_hydrator``: the seed's hydrator API over
:class:`statebag.hydrator.Hydrator`.

The flags do what they say:

- ``use_batching`` / ``USE_BATCHING``: warm fields are batched into one stored field (on), or
  stored one field each (off, the seed's default).
- ``use_zstd`` / ``USE_ZSTD`` and ``compression_level`` / ``ZSTD_LEVEL``: the compression of
  the frames this hydrator stores: zstd at ``compression_level`` (default 3) when on, raw
  when off (the seed's default). Every frame names its codec, so one repository holds both.
- ``GC_DLQ_URL`` is kept as :attr:`StateHydrator.gc_dlq_url`: it will name the dead-letter
  queue of the cloud backend.

``get_hydrator()`` builds one process-wide instance from the environment the first time
(``STATEBAG_REPO``; ``S3_BUCKET``/``SKELETON_S3_BUCKET`` with ``MANIFESTS_TABLE`` name the
cloud backend, which this version does not have, so they raise ConfigError saying to set
``STATEBAG_REPO``) and returns it afterwards; ``_reset_for_test()`` drops it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, InvalidInputError
from ..hydrator import DEFAULT_LIMIT, HydratedState, Hydrator
from ..repository import Repository
from ._env import CLOUD_VARIABLES, env_flag, env_int, execution_chain, resolve_repository

__all__ = ["StateHydrator", "_reset_for_test", "get_hydrator"]

_MIN_LEVEL, _MAX_LEVEL = -7, 22
_DEFAULT_LEVEL = 3


def _level(use_zstd: bool, compression_level: int) -> int:
    """The compression level the flags ask for (0: raw)."""
    if type(compression_level) is not int or not _MIN_LEVEL <= compression_level <= _MAX_LEVEL:
        raise InvalidInputError(
            f"compression_level must be an int from {_MIN_LEVEL} to {_MAX_LEVEL}, not "
            f"{compression_level!r}",
            path="compression_level",
        )
    if type(use_zstd) is not bool:
        raise InvalidInputError(f"use_zstd must be a bool, not {use_zstd!r}", path="use_zstd")
    if not use_zstd:
        return 0
    level = compression_level
    if level == 0:
        raise InvalidInputError(
            "use_zstd=True needs a compression level other than 0 (0 stores raw)",
            path="compression_level",
        )
    return level


class StateHydrator:
    """Dehydrates states into payloads under the Step Functions limit (256 KiB) and back.

    ``repo`` is a :class:`~statebag.Repository` or a URL; without it ``STATEBAG_REPO``
    names one (``bucket_name`` alone needs the cloud backend: ConfigError). See the module
    docstring for the flags. :attr:`hydrator` is the underlying
    :class:`~statebag.hydrator.Hydrator`, with its ``stats``.
    """

    def __init__(
        self,
        bucket_name: str | None = None,
        use_batching: bool = False,
        use_zstd: bool = False,
        compression_level: int = _DEFAULT_LEVEL,
        repo: Repository | str | os.PathLike[str] | None = None,
        *,
        limit: int = DEFAULT_LIMIT,
        gc_dlq_url: str | None = None,
    ) -> None:
        if type(use_batching) is not bool:
            raise InvalidInputError(
                f"use_batching must be a bool, not {use_batching!r}", path="use_batching"
            )
        level = _level(use_zstd, compression_level)
        self.bucket_name = bucket_name
        self.gc_dlq_url = gc_dlq_url
        self.use_batching = use_batching
        self.repo, self._owned = resolve_repository(
            repo, who="StateHydrator", cloud={"bucket_name": bucket_name}
        )
        self.compression_level = level
        self.use_zstd = use_zstd
        self.hydrator = Hydrator(self.repo, limit=limit, batch_warm=use_batching, level=level)

    @property
    def limit(self) -> int:
        return self.hydrator.limit

    def dehydrate(
        self,
        state: Mapping[str, Any],
        owner_id: str,
        workflow_id: str,
        execution_id: str,
        *,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A payload of ``state`` under the limit; offloaded fields go to the execution's
        offload chain. ``owner_id`` and ``workflow_id`` are checked to be strings."""
        for field, value in (("owner_id", owner_id), ("workflow_id", workflow_id)):
            if not isinstance(value, str):
                raise InvalidInputError(f"{field} must be a str, not {value!r}", path=field)
        return self.hydrator.dehydrate(state, execution_chain(execution_id), limit=limit)

    def hydrate(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The whole state of a payload made by :meth:`dehydrate` (``event`` is the payload
        itself; :func:`~statebag.compat.open_state_bag` unwraps a Lambda event)."""
        state = self.hydrator.hydrate(event)
        assert not isinstance(state, HydratedState)
        return state

    def close(self) -> None:
        """Close the repository if this hydrator opened it."""
        if self._owned:
            self.repo.close()

    def __repr__(self) -> str:
        return (
            f"<StateHydrator batching={self.use_batching} level={self.compression_level} "
            f"repo={self.repo!r}>"
        )


_instance: StateHydrator | None = None
_instance_lock = threading.Lock()


def _from_environment(use_batching: bool | None, use_zstd: bool | None) -> StateHydrator:
    batching = use_batching if use_batching is not None else env_flag("USE_BATCHING")
    zstd = use_zstd if use_zstd is not None else env_flag("USE_ZSTD")
    level = env_int("ZSTD_LEVEL", low=_MIN_LEVEL, high=_MAX_LEVEL)
    cloud = [name for name in CLOUD_VARIABLES if os.environ.get(name)]
    if cloud:
        raise ConfigError(
            f"{', '.join(cloud)} name the S3 + DynamoDB backend, which this version of "
            "statebag does not have yet: unset them and set STATEBAG_REPO to a repository URL"
        )
    return StateHydrator(
        use_batching=bool(batching),
        use_zstd=bool(zstd),
        compression_level=_DEFAULT_LEVEL if level is None else level,
        repo=None,
        gc_dlq_url=os.environ.get("GC_DLQ_URL") or None,
    )


def get_hydrator(
    use_batching: bool | None = None,
    use_zstd: bool | None = None,
    reset_for_test: bool = False,
) -> StateHydrator:
    """The process-wide :class:`StateHydrator`, built from the environment on first use.

    ``use_batching`` and ``use_zstd`` override ``USE_BATCHING`` and ``USE_ZSTD`` when the
    instance is built; asking an existing instance for other settings is a ConfigError
    (call ``_reset_for_test()`` or pass ``reset_for_test=True`` to rebuild it).
    """
    global _instance
    with _instance_lock:
        if reset_for_test:
            _drop()
        if _instance is None:
            _instance = _from_environment(use_batching, use_zstd)
            return _instance
        current = _instance
        if use_batching is not None and use_batching != current.use_batching:
            raise ConfigError(
                f"the process-wide hydrator was built with use_batching={current.use_batching}; "
                "pass reset_for_test=True (or call _reset_for_test()) to rebuild it"
            )
        if use_zstd is not None and use_zstd != current.use_zstd:
            raise ConfigError(
                f"the process-wide hydrator was built with use_zstd={current.use_zstd}; "
                "pass reset_for_test=True (or call _reset_for_test()) to rebuild it"
            )
        return current


def _drop() -> None:
    global _instance
    if _instance is not None:
        _instance.close()
        _instance = None


def _reset_for_test() -> None:
    """Forget the process-wide hydrator (closing a repository it opened)."""
    with _instance_lock:
        _drop()
