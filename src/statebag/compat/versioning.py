"""``StateVersioningService``: the seed's state-versioning API over a statebag repository.

Each execution has its own chain (:func:`~statebag.compat.execution_chain`), never one per
workflow, so no execution can read another's state. ``save_state_delta`` commits the next
version of that chain: fields absent from the delta are carried over from the parent by
reference (their values are not read or re-encoded), ``deleted`` drops fields, and a stale
``previous_manifest_id`` is a :class:`~statebag.errors.ConflictError`, never a silent
overwrite. Workflow manifests (``create_manifest``) are versions of a chain per workflow
holding the configuration, the segment manifest and their hashes, computed by
:func:`~statebag.compat.content_hash` for the writer and the verifiers alike.

``use_2pc=False`` is accepted for compatibility only: statebag always commits in two phases.
``dynamodb_table``, ``s3_bucket`` and ``gc_dlq_url`` are kept as attributes; building the
service from them needs the cloud backend, which this version does not have, so without
``repo=`` the constructor raises :class:`ConfigError` saying to pass it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import codec, merging
from ..errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from ..ids import ContentId
from ..repository import Repository
from ..validation import field_names
from ._env import content_hash, execution_chain, resolve_repository, workflow_chain

__all__ = ["StateVersioningService"]

# New versions on top of an unpinned head retry this many times when another writer of the
# same execution moved it meanwhile.
_UNPINNED_ATTEMPTS = 4
_MANIFEST_KIND = "statebag.compat.workflow_manifest"
_MANIFEST_FIELDS = ("config_hash", "segment_hashes", "segment_manifest", "workflow_config")


class _NotRead:
    """Stands for a field carried over from the parent by ``changed=``: the repository
    carries such fields by reference without reading them. The codec refuses this type, so
    a value that were ever read by mistake would fail loudly, never be stored."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<carried over unread>"


_NOT_READ = _NotRead()


def _mapping(value: object, *, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"{field} must be a Mapping[str, Any], not {type(value).__name__}", path=field
        )
    data = dict(value.items())
    for name in data:
        if not isinstance(name, str):
            raise InvalidInputError(f"{field} has key {name!r}, which is not a str", path=field)
    return data


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return codec.encode(a) == codec.encode(b)  # exact: NaN equals itself, 0.0 != -0.0
    except InvalidInputError:
        return False


def _previous(value: object) -> tuple[str | None, list[str] | None]:
    """``previous_manifest_id`` as (the parent, the further parents of a fan-in)."""
    if value is None or isinstance(value, str):
        return value, None
    if not isinstance(value, Sequence) or not value:
        raise InvalidInputError(
            "previous_manifest_id must be a manifest id, a non-empty list of them (fan-in: "
            f"the execution's head first), or None, not {value!r}",
            path="previous_manifest_id",
        )
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInputError(
                f"previous_manifest_id[{position}] must be a manifest id, not {item!r}",
                path=f"previous_manifest_id[{position}]",
            )
    first, *rest = value
    return first, rest


def _text(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{field} must be a non-empty str, not {value!r}", path=field)
    return value


class StateVersioningService:
    """Versioned state per execution; see the module docstring.

    ``repo`` is a :class:`~statebag.Repository` or a URL (a path, ``file://``,
    ``memory://name``), and required until the cloud backend exists. A repository opened here
    is closed by :meth:`close` (the service is also a context manager).
    """

    def __init__(
        self,
        dynamodb_table: str | None = None,
        s3_bucket: str | None = None,
        use_2pc: bool = True,
        gc_dlq_url: str | None = None,
        repo: Repository | str | os.PathLike[str] | None = None,
    ) -> None:
        self.dynamodb_table = dynamodb_table
        self.s3_bucket = s3_bucket
        self.use_2pc = bool(use_2pc)  # accepted; commits are always two-phase
        self.gc_dlq_url = gc_dlq_url
        self.repo, self._owned = resolve_repository(
            repo,
            who="StateVersioningService",
            cloud={"dynamodb_table": dynamodb_table, "s3_bucket": s3_bucket},
            from_environment=False,
        )

    def close(self) -> None:
        """Close the repository if this service opened it."""
        if self._owned:
            self.repo.close()

    def __enter__(self) -> StateVersioningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- execution state -----------------------------------------------------------------------

    def save_state_delta(
        self,
        delta: Mapping[str, Any],
        workflow_id: str,
        execution_id: str,
        owner_id: str,
        segment_id: Any,
        previous_manifest_id: str | Sequence[str] | None = None,
        dirty_keys: Iterable[str] | None = None,
        full_state: Mapping[str, Any] | None = None,
        deleted: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Commit the next version of the execution's state and describe it.

        Returns exactly ``success`` (True; failures raise), ``manifest_id``,
        ``blocks_uploaded`` (nodes this save stored), ``manifest_hash`` (the manifest id: the
        BLAKE3 of the canonical manifest, which covers its parent and every field),
        ``segment_id`` (as given), ``block_ids`` and ``s3_paths`` (the ids of the nodes
        written and the object-store keys of the packs written; both empty when the save
        found everything stored already).

        The new state is the parent's with ``delta`` applied and ``deleted`` dropped, or
        ``full_state`` when given (``delta`` and ``deleted`` must then agree with it).
        ``dirty_keys`` is passed to the repository as the ``changed`` hint: fields present in
        both versions and not named are carried over from the parent. The parent is
        ``previous_manifest_id`` (ConflictError unless it is the execution's head) or, when
        None, the head, retried if another writer moves it meanwhile.

        A list of ids is a fan-in: the first is the parent as above, the others (the
        branches' last versions, for instance) become further parents of the new version,
        and must still exist when it commits. An execution with no state yet whose
        ``previous_manifest_id`` is a version of another execution of the same workflow
        and owner starts from it (a Parallel or Map branch): the chain is forked there.
        """
        chain = execution_chain(execution_id)
        previous_manifest_id, merged = _previous(previous_manifest_id)
        workflow_id = _text(workflow_id, field="workflow_id")
        owner_id = _text(owner_id, field="owner_id")
        changes = _mapping({} if delta is None else delta, field="delta")
        dropped = set() if deleted is None else field_names(deleted, field="deleted")
        both = sorted(dropped & changes.keys())
        if both:
            raise InvalidInputError(
                f"field {both[0]!r} is both in delta and deleted", path=f"deleted.{both[0]}"
            )
        hint = None if dirty_keys is None else field_names(dirty_keys, field="dirty_keys")
        whole: dict[str, Any] | None = None
        if full_state is not None:
            whole = _mapping(full_state, field="full_state")
            for name, value in changes.items():
                if name not in whole or not _same(whole[name], value):
                    raise InvalidInputError(
                        f"delta field {name!r} disagrees with full_state, which is the whole "
                        "new state",
                        path=f"delta.{name}",
                    )
            for name in sorted(dropped & whole.keys()):
                raise InvalidInputError(
                    f"field {name!r} is deleted but present in full_state", path="deleted"
                )
        elif hint is not None:
            loose = sorted(hint - changes.keys() - dropped)
            if loose:
                raise InvalidInputError(
                    f"dirty key {loose[0]!r} has no new value in delta and is not deleted",
                    path="dirty_keys",
                )
        meta = {
            "workflow_id": workflow_id,
            "owner_id": owner_id,
            "execution_id": execution_id,
            "segment_id": segment_id,
        }
        attempts = 0
        while True:
            attempts += 1
            parent = previous_manifest_id
            if parent is None:
                parent = self.repo.head(chain)
            try:
                result = self._save(chain, parent, merged, changes, dropped, hint, whole, meta)
                break
            except ConflictError:
                if previous_manifest_id is not None or attempts >= _UNPINNED_ATTEMPTS:
                    raise
        return {
            "success": True,
            "manifest_id": result.manifest_id,
            "blocks_uploaded": result.nodes_written,
            "manifest_hash": result.manifest_id,
            "segment_id": segment_id,
            "block_ids": list(result.node_ids),
            "s3_paths": list(result.pack_keys),
        }

    def _save(
        self,
        chain: str,
        parent: str | None,
        merged: list[str] | None,
        changes: dict[str, Any],
        dropped: set[str],
        hint: set[str] | None,
        whole: dict[str, Any] | None,
        meta: dict[str, Any],
    ) -> Any:
        if parent is None:
            return self.repo.save(
                chain,
                whole if whole is not None else changes,
                meta=meta,
                new_chain=True,
                merged=merged,
            )
        ContentId.parse(parent, field="previous_manifest_id")
        head = self.repo.head(chain)
        if head is None:
            head = self._fork_branch(chain, parent, meta)
        if head != parent:
            # Checked before anything of the parent is read: an id of another execution's
            # chain is refused here, exactly like a stale one of this chain.
            raise ConflictError(
                f"execution chain {chain!r} is at {head}, not at previous_manifest_id "
                f"{parent}; load the latest state and apply the segment again"
            )
        info = self.repo.info(parent)
        self._check_owner(info.meta, meta, parent, forked=info.chain != chain)
        if whole is not None:
            return self.repo.save(
                chain, whole, parent=parent, changed=hint, meta=meta, merged=merged
            )
        base = self.repo.load(parent, lazy=True)  # names only: no value is read
        state: dict[str, Any] = {
            name: _NOT_READ for name in base if name not in dropped and name not in changes
        }
        state.update(changes)
        changed = set(changes) if hint is None else hint
        return self.repo.save(
            chain, state, parent=parent, changed=changed, meta=meta, merged=merged
        )

    def _fork_branch(self, chain: str, parent: str, meta: dict[str, Any]) -> str | None:
        """Start a new execution's chain at ``parent``, a version of another execution of
        the same workflow and owner; the head after (None if ``parent`` does not exist)."""
        try:
            stored = self.repo.info(parent).meta
        except NotFoundError:
            return None
        self._check_owner(stored, meta, parent, forked=True)
        # ConflictError: another writer started this execution meanwhile; the caller
        # compares the parent with that head.
        with contextlib.suppress(ConflictError):
            self.repo.fork(parent, chain)
        return self.repo.head(chain)

    @staticmethod
    def _check_owner(
        stored: Any, given: dict[str, Any], manifest_id: str, *, forked: bool = False
    ) -> None:
        """A version is continued only by its own execution, or (``forked``) started from by
        another execution of the same workflow and owner."""
        if not isinstance(stored, dict):
            return
        keys = (
            ("owner_id", "workflow_id") if forked else ("execution_id", "owner_id", "workflow_id")
        )
        for key in keys:
            if key in stored and stored[key] != given[key]:
                raise InvalidInputError(
                    f"version {manifest_id} belongs to {key} {stored[key]!r}, not "
                    f"{given[key]!r}: an execution only continues its own chain",
                    path=key,
                )

    def aggregate_branch_results(
        self,
        results: Sequence[Any],
        merge_strategy: str = "deep_merge",
        *,
        execution_id: str | None = None,
        on_conflict: Any = "raise",
    ) -> dict[str, Any]:
        """Merge the last versions of parallel branches into their parent execution
        (:meth:`statebag.Repository.merge`): the fan-in after a Parallel or Map state.

        ``results`` lists, per branch, what its last ``save_state_delta`` returned (or that
        ``manifest_id``); each must still be the head of its branch's chain (ConflictError
        if the branch saved again since). ``merge_strategy`` is ``"deep_merge"``,
        ``"last_wins"`` or ``"collect"`` (or ``"three_way"``); ``on_conflict`` as for
        :meth:`~statebag.Repository.merge`. The merge goes into ``execution_id``'s chain,
        by default the execution the first branch was started from (forked).
        Returns the keys of :meth:`save_state_delta` plus ``parents`` and ``execution_chain``.
        """
        if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
            raise InvalidInputError(
                f"results must be a list of branch results, not {type(results).__name__}",
                path="results",
            )
        if not results:
            raise InvalidInputError("results is empty: there is no branch to merge", path="results")
        merging.check_options(merge_strategy, on_conflict)
        ids: list[str] = []
        for position, item in enumerate(results):
            where = f"results[{position}]"
            manifest_id = item.get("manifest_id") if isinstance(item, Mapping) else item
            if not isinstance(manifest_id, str):
                raise InvalidInputError(
                    f"{where} must be a save_state_delta result (with manifest_id) or a "
                    f"manifest id, not {item!r}",
                    path=where,
                )
            ContentId.parse(manifest_id, field=where)
            ids.append(manifest_id)
        branches: list[str] = []
        for position, manifest_id in enumerate(ids):
            chain = self.repo.info(manifest_id).chain
            if self.repo.head(chain) != manifest_id:
                raise ConflictError(
                    f"results[{position}] ({manifest_id}) is no longer the head of branch chain "
                    f"{chain!r}: the branch saved again; aggregate its latest result"
                )
            branches.append(chain)
        if execution_id is not None:
            target = execution_chain(execution_id)
        else:
            origin = next(
                (info.chain for info in self.repo.log(branches[0]) if info.chain != branches[0]),
                None,
            )
            if origin is None:
                raise InvalidInputError(
                    f"branch chain {branches[0]!r} was not started from another execution, "
                    "so there is no parent execution to merge into; pass execution_id",
                    path="execution_id",
                )
            target = origin
        result = self.repo.merge(target, branches, strategy=merge_strategy, on_conflict=on_conflict)
        return {
            "success": True,
            "manifest_id": result.manifest_id,
            "blocks_uploaded": result.nodes_written,
            "manifest_hash": result.manifest_id,
            "block_ids": list(result.node_ids),
            "s3_paths": list(result.pack_keys),
            "parents": list(result.parents),
            "execution_chain": target,
        }

    def load_latest_state(
        self,
        execution_id: str | None = None,
        *,
        workflow_id: str | None = None,
        owner_id: str | None = None,
    ) -> dict[str, Any]:
        """The full state at the head of the execution's chain.

        Without ``execution_id`` this raises InvalidInputError: the "latest state of a
        workflow" is whichever of its executions saved last, so it would hand one execution
        another's state. ``workflow_id`` and ``owner_id``, when given, must match what the
        execution was saved with (else NotFoundError). A missing or corrupt block raises
        IntegrityError; the state is whole or not at all.
        """
        if execution_id is None:
            raise InvalidInputError(
                "load_latest_state needs execution_id: the latest state of a workflow is "
                "whichever of its executions saved last, so loading it by workflow_id (and "
                "owner_id) would read another execution's state; pass the execution's id",
                path="execution_id",
            )
        chain = execution_chain(execution_id)
        head = self.repo.head(chain)
        if head is None:
            raise NotFoundError(f"execution {execution_id!r} has no saved state")
        stored = self.repo.info(head).meta
        if isinstance(stored, dict):
            for key, value in (("workflow_id", workflow_id), ("owner_id", owner_id)):
                if value is not None and key in stored and stored[key] != value:
                    raise NotFoundError(
                        f"execution {execution_id!r} has no saved state for {key} {value!r}"
                    )
        state = self.repo.load(head)
        assert isinstance(state, dict)
        return state

    def load_state(self, manifest_id: str) -> dict[str, Any]:
        """The full state of one version (NotFoundError, IntegrityError: never partial)."""
        state = self.repo.load(manifest_id)
        assert isinstance(state, dict)
        return state

    # -- workflow manifests ----------------------------------------------------------------------

    def create_manifest(
        self,
        workflow_id: str,
        workflow_config: Any,
        segment_manifest: Sequence[Any],
        parent_manifest_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a workflow's configuration and segment manifest as the next version of the
        workflow's chain; returns exactly ``manifest_id``, ``version`` (its sequence number
        in the chain, from 1), ``parent_hash`` (the previous version's id or None),
        ``manifest_hash`` (= manifest_id), ``config_hash`` and ``segment_hashes``
        (:func:`content_hash` of the configuration and of each segment).

        ``parent_manifest_id`` pins the parent (ConflictError when it is not the head);
        None saves on top of the chain's head.
        """
        chain = workflow_chain(workflow_id)
        if isinstance(segment_manifest, (str, bytes, Mapping)) or not isinstance(
            segment_manifest, Sequence
        ):
            raise InvalidInputError(
                "segment_manifest must be a sequence of segment configurations, not "
                f"{type(segment_manifest).__name__}",
                path="segment_manifest",
            )
        segments = list(segment_manifest)
        try:
            config_hash = content_hash(workflow_config)
        except InvalidInputError as exc:
            raise InvalidInputError(f"workflow_config: {exc}", path="workflow_config") from exc
        segment_hashes = []
        for index, segment in enumerate(segments):
            try:
                segment_hashes.append(content_hash(segment))
            except InvalidInputError as exc:
                where = f"segment_manifest[{index}]"
                raise InvalidInputError(f"{where}: {exc}", path=where) from exc
        state = {
            "kind": _MANIFEST_KIND,
            "workflow_id": workflow_id,
            "workflow_config": workflow_config,
            "segment_manifest": segments,
            "config_hash": config_hash,
            "segment_hashes": segment_hashes,
        }
        result = self.repo.save(
            chain,
            state,
            parent=parent_manifest_id,
            meta={"kind": _MANIFEST_KIND, "workflow_id": workflow_id},
        )
        return {
            "manifest_id": result.manifest_id,
            "version": result.seq,
            "parent_hash": result.parent,
            "manifest_hash": result.manifest_id,
            "config_hash": config_hash,
            "segment_hashes": segment_hashes,
        }

    def _workflow_manifest(self, manifest_id: str, fields: Iterable[str]) -> dict[str, Any]:
        self.repo.info(manifest_id)  # NotFoundError for an unknown id
        try:
            stored = self.repo.load(manifest_id, fields=["kind", *fields])
        except NotFoundError:
            stored = {}
        assert isinstance(stored, dict)
        if stored.get("kind") != _MANIFEST_KIND:
            raise InvalidInputError(
                f"version {manifest_id} is not a workflow manifest (made by create_manifest)",
                path="manifest_id",
            )
        return stored

    def verify_segment_config(
        self, segment_config: Any, manifest_id: str, segment_index: int
    ) -> bool:
        """True when ``segment_config`` is segment ``segment_index`` of the manifest: its
        :func:`content_hash` equals the recorded one, and the recorded segment still hashes
        to it. False otherwise, also for an index out of range; a corrupt manifest is False."""
        if type(segment_index) is not int:
            raise InvalidInputError(
                f"segment_index must be an int, not {segment_index!r}", path="segment_index"
            )
        try:
            stored = self._workflow_manifest(manifest_id, ["segment_hashes", "segment_manifest"])
        except IntegrityError:
            return False
        hashes, segments = stored["segment_hashes"], stored["segment_manifest"]
        if not 0 <= segment_index < len(hashes) or len(hashes) != len(segments):
            return False
        expected = hashes[segment_index]
        try:
            given = content_hash(segment_config)
        except InvalidInputError:
            return False  # a value that cannot be stored was never recorded
        return bool(given == expected and content_hash(segments[segment_index]) == expected)

    def verify_manifest_integrity(self, manifest_id: str) -> bool:
        """True when every node of the manifest is present and intact (all data re-hashed)
        and its recorded hashes equal those recomputed from its configuration and segments.
        NotFoundError when there is no such version."""
        self.repo.info(manifest_id)
        if not self.repo.verify(manifest_id, read_data=1.0).ok:
            return False
        try:
            stored = self._workflow_manifest(manifest_id, _MANIFEST_FIELDS)
        except IntegrityError:
            return False
        segments, hashes = stored["segment_manifest"], stored["segment_hashes"]
        return bool(
            isinstance(segments, list)
            and isinstance(hashes, list)
            and content_hash(stored["workflow_config"]) == stored["config_hash"]
            and [content_hash(segment) for segment in segments] == hashes
        )
