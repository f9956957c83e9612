"""The kernel protocol: open the state bag at the start of a Lambda step, seal it at the end.

``seal_state_bag`` merges the step's result into the state, offloads through the
process-wide hydrator (:func:`~statebag.compat.get_hydrator`) so that the whole sealed
output, wrapper included, stays within the hydrator's limit (256 KiB), and returns::

    {"state_data": {"bag": <payload>, "current_manifest_id": <id or None>},
     "next_action": <action>}

``current_manifest_id`` is the version holding what this seal offloaded (None when the
whole state fit inline). The payload sits under ``state_data.bag`` so that no field of the
user's state can be mistaken for the protocol's own keys.

``open_state_bag`` looks for the bag in ``state_data.bag``, then ``state_data``, then the
event itself, and hydrates it when it carries a pointer. ``AN_STRICT_MODE`` is read on
every call: when true, an empty or non-dict bag raises ``ValueError`` (an
:class:`~statebag.errors.InvalidInputError`); otherwise it opens as an empty state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from ..hydrator import _MIN_LIMIT, POINTER_KEY
from ._env import env_flag
from .hydrator import get_hydrator

__all__ = ["UNSCOPED_EXECUTION", "open_state_bag", "seal_state_bag", "strict_mode"]

# The execution whose chain holds what seals without an execution id offload. Payloads
# point to immutable versions, so seals sharing it never see each other's state; they only
# share a chain's head (and retry when they race for it).
UNSCOPED_EXECUTION = "kernel-unscoped"


def strict_mode() -> bool:
    """``AN_STRICT_MODE`` now (read on every call; unset means off)."""
    return bool(env_flag("AN_STRICT_MODE"))


def _find_bag(event: object) -> object:
    if not isinstance(event, Mapping):
        return event
    if "state_data" in event:
        state_data = event["state_data"]
        if isinstance(state_data, Mapping) and "bag" in state_data:
            return state_data["bag"]
        return state_data
    return event


def open_state_bag(event: Any) -> dict[str, Any]:
    """The state a step starts from: the bag found in ``event`` (see the module docstring),
    hydrated when it carries a pointer."""
    strict = strict_mode()
    bag = _find_bag(event)
    if not isinstance(bag, Mapping) or not bag:
        if strict:
            what = "not a dict" if not isinstance(bag, Mapping) else "empty"
            raise InvalidInputError(
                f"AN_STRICT_MODE: the state bag is {what} (looked in state_data.bag, then "
                "state_data, then the event)",
                path="event",
            )
        return {}
    if POINTER_KEY in bag:
        return get_hydrator().hydrate(bag)
    return dict(bag)


def _mapping(value: object, *, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"{field} must be a Mapping[str, Any] or None, not {type(value).__name__}",
            path=field,
        )
    return dict(value.items())


def seal_state_bag(
    base_state: Mapping[str, Any] | None,
    result_delta: Mapping[str, Any] | None,
    action: Any = "sync",
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge ``result_delta`` into ``base_state`` and seal the result for the next step.

    ``context`` may give ``execution_id`` (whose offload chain takes the offloaded fields;
    without it they go to the chain of :data:`UNSCOPED_EXECUTION`), ``owner_id`` and
    ``workflow_id``. A ``base_state`` that is itself a sealed payload (it carries the
    pointer) is hydrated first, so its offloaded fields are carried, not nested.
    """
    hydrator = get_hydrator()
    base = _mapping(base_state, field="base_state")
    if POINTER_KEY in base:
        base = hydrator.hydrate(base)
    merged = {**base, **_mapping(result_delta, field="result_delta")}
    scope = _mapping(context, field="context")
    execution_id = scope.get("execution_id") or UNSCOPED_EXECUTION
    owner_id = scope.get("owner_id") or ""
    workflow_id = scope.get("workflow_id") or ""
    try:
        # The wrapper's own bytes, with room for a manifest id, come out of the limit.
        shell = {
            "state_data": {"bag": {}, "current_manifest_id": "0" * 64},
            "next_action": action,
        }
        overhead = len(json.dumps(shell)) - len("{}")
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"action must be JSON-serializable: {exc}", path="action") from exc
    room = hydrator.limit - overhead
    if room < _MIN_LIMIT:
        raise InvalidInputError(
            f"action is too large: with it the sealed output's wrapper takes {overhead:,} of "
            f"the {hydrator.limit:,} bytes allowed, which leaves {max(room, 0):,} for the "
            f"state's payload, and that needs at least {_MIN_LIMIT:,}",
            path="action",
        )
    payload = hydrator.dehydrate(merged, owner_id, workflow_id, execution_id, limit=room)
    pointer = payload.get(POINTER_KEY)
    current = pointer["manifest"] if isinstance(pointer, dict) else None
    return {
        "state_data": {"bag": payload, "current_manifest_id": current},
        "next_action": action,
    }
