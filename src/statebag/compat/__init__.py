"""The seed-compatible API: users of the Step Functions + Lambda "Smart StateBag" switch to
statebag by changing their imports.

- :class:`StateVersioningService`: versioned state per execution (``save_state_delta``,
  ``load_latest_state``, ``load_state``) and workflow manifests (``create_manifest``,
  ``verify_segment_config``, ``verify_manifest_integrity``).
- :class:`StateHydrator`, :func:`get_hydrator`, :func:`_reset_for_test`: the claim-check
  hydrator (:mod:`statebag.hydrator`) configured the seed's way.
- :func:`open_state_bag`, :func:`seal_state_bag`: the kernel protocol between Lambda steps.

This layer is a face (docs/ARCHITECTURE.md, "Layers"): it is the only one that reads environment
variables (``STATEBAG_REPO``, ``USE_BATCHING``, ``USE_ZSTD``, ``ZSTD_LEVEL``, ``GC_DLQ_URL``,
``AN_STRICT_MODE``; ``S3_BUCKET``, ``SKELETON_S3_BUCKET`` and ``MANIFESTS_TABLE`` name the
cloud backend, not available yet). Where the seed lost data, this API fails loudly: missing
configuration is a ConfigError naming what to set, nothing falls back to another store, no
field is dropped, a load is whole or raises, and one execution never reads another's state.
"""

from __future__ import annotations

from ._env import content_hash, execution_chain, workflow_chain
from .hydrator import StateHydrator, _reset_for_test, get_hydrator
from .kernel import UNSCOPED_EXECUTION, open_state_bag, seal_state_bag, strict_mode
from .versioning import StateVersioningService

__all__ = [
    "UNSCOPED_EXECUTION",
    "StateHydrator",
    "StateVersioningService",
    "_reset_for_test",
    "content_hash",
    "execution_chain",
    "get_hydrator",
    "open_state_bag",
    "seal_state_bag",
    "strict_mode",
    "workflow_chain",
]
