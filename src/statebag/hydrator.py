"""The claim-check hydrator: a state shrunk to a JSON payload under a byte limit, and back.

Workflow engines pass state between steps as JSON with a hard size limit (AWS Step
Functions: 256 KiB). :meth:`Hydrator.dehydrate` keeps the small fields of a state inline in
the payload and moves the rest into the repository, leaving one pointer in their place;
:meth:`Hydrator.hydrate` brings back exactly the state that went in, in one parallel load or
lazily, field by field.

Which field goes where (sizes are the field's canonical encoding, :func:`statebag.codec.encode`):

- ``hot`` names always stay inline. A hot value that JSON cannot carry exactly raises
  :class:`~statebag.errors.InvalidInputError` naming it, and so do hot fields whose JSON
  alone does not fit the limit.
- ``cold`` names, values over ``cold_min`` and a user field named ``"__statebag__"`` (the
  pointer's own key, so such a field is carried, never refused) are stored one field each.
- Other values of at most ``inline_max`` bytes that JSON carries exactly stay inline while
  they fit, smallest first.
- The rest (warm) are batched into one stored field (a dict of name -> value), so many small
  values cost one node, not one object each; ``batch_warm=False`` stores each on its own.
- When the names the pointer lists would overflow the limit, they are folded into one more
  stored field and the pointer only names it (see "Pointer" below).

"JSON carries exactly" means that ``json.loads(json.dumps(v)) == v`` with the same types
(tuples come back as lists, as from the repository), with three exclusions: bytes, floats
that are NaN or infinite, and ints beyond +-(2**53 - 1), which other JSON readers (the
workflow engine itself, JavaScript) round. Such values are offloaded and come back exact.

Storage. The offloaded fields of one dehydrate are saved as one version of the chain
:func:`offload_chain` derives from the caller's chain (``chain + "~offload"``), holding
exactly those fields: unchanged values cost nothing (content addressing dedups them, and
the hydrator tells the repository which fields changed since its last version, guarded by
that version's id), and every payload points to one immutable version, so a later
dehydrate never changes what an earlier payload hydrates to. Each version is held from
retention and gc for ``ttl`` seconds by the commit that writes it (``save(hold=)``), and a
chain's head always survives retention. ``level`` (default: the repository's) is the
compression level of the nodes a dehydrate stores; 0 stores them raw.

Pointer (format version 1; docs/FORMAT.md "Hydrator payloads"). The payload is a dict of the
inline fields plus, when anything was offloaded, the reserved key ``"__statebag__"``::

    {"v": 1, "manifest": "<64 hex>", "cold": ["name", ...],
     "warm": {"field": "<stored field>", "names": ["name", ...]}}

or, folded, ``{"v": 1, "manifest": "<64 hex>", "folded": "<stored field>"}`` where the stored
field holds ``{"cold": [...], "warm": {...}}``. ``cold`` and ``warm`` are left out when empty.
The payload carries no URL or credential: the hydrator's repository resolves the id. A
payload without the reserved key is a state with nothing offloaded. Hydrate reads the
reserved key only, never guesses from values, and refuses a malformed pointer with an
``InvalidInputError`` whose ``path`` names the bad part.

Trust. A payload is input, and may come from someone who can write workflow inputs but
not read the repository: hydrate follows a pointer only to a version of an offload chain
(``x + "~offload"``, what dehydrate writes under), checked against the chain the version's
manifest records, so an id of any other chain's version is an ``InvalidInputError`` and
reads nothing of it. Offload versions themselves are not told apart by who wrote them:
anyone who may write a chain ending in ``~offload`` writes data hydrate will follow, so
keep that suffix for hydrators.

Size. ``len(json.dumps(payload).encode())`` (the default separators and ``ensure_ascii``) is
at most ``limit``, always; the hydrator computes it exactly before it writes anything.

Cost accounting. :attr:`Hydrator.stats` describes the last call: object-store requests and
bytes from :meth:`Repository.io_counters` deltas, so work done concurrently on the same
repository handle (other threads, other hydrators) is counted in too.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec

from . import codec
from .durations import as_seconds
from .errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from .hashing import Hasher, hash_bytes
from .ids import looks_like_id
from .objects.counting import IOCounters
from .repository import LazyState, Repository
from .validation import check_chain, field_names, field_path, snapshot_state

__all__ = [
    "DEFAULT_LIMIT",
    "OFFLOAD_SUFFIX",
    "POINTER_KEY",
    "POINTER_VERSION",
    "HydratedState",
    "Hydrator",
    "HydratorStats",
    "offload_chain",
]

POINTER_KEY = "__statebag__"
POINTER_VERSION = 1
DEFAULT_LIMIT = 262_144  # AWS Step Functions' payload limit, 256 KiB
OFFLOAD_SUFFIX = "~offload"
# A payload must at least hold the folded pointer; below this no limit is useful.
_MIN_LIMIT = 512
# Concurrent dehydrates on one chain race for its head; each retry re-reads it.
_SAVE_ATTEMPTS = 8
# Chains whose last offload version this hydrator remembers (for the changed= hint).
_RECENT_CHAINS = 256
_JSON_INT_MAX = 2**53 - 1
_WARM_FIELD = "~warm"
_FOLDED_FIELD = "~folded"
_POINTER_KEYS = frozenset({"v", "manifest", "cold", "warm", "folded"})


def offload_chain(chain: str, /) -> str:
    """The chain that holds what :meth:`Hydrator.dehydrate` offloads for ``chain``.

    ``chain + "~offload"``; ``chain`` must be a valid chain name short enough that the
    derived one stays within the 256-character limit.
    """
    check_chain(chain)
    derived = chain + OFFLOAD_SUFFIX
    if len(derived) > 256:
        raise InvalidInputError(
            f"chain is {len(chain)} characters: the hydrator stores offloaded fields on "
            f"chain + {OFFLOAD_SUFFIX!r}, which must stay within 256 characters, so chain "
            f"may have at most {256 - len(OFFLOAD_SUFFIX)}",
            path="chain",
        )
    return check_chain(derived, field="chain")


class HydratorStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the last :meth:`Hydrator.dehydrate` or :meth:`Hydrator.hydrate` cost and did.

    ``requests``, ``puts``, ``gets``, ``bytes_written`` and ``bytes_read`` are object-store
    figures (``requests`` counts every kind: puts, gets, stats, deletes, lists).
    ``payload_bytes`` is the JSON size of the payload made or read; ``inline`` and
    ``offloaded`` count fields; ``folded`` says whether the pointer was folded;
    ``manifest_id`` is the version holding the offloaded fields (None when nothing was);
    ``saves`` counts commit attempts (above 1 after lost races); ``seconds`` is wall time.
    """

    operation: str = ""
    requests: int = 0
    puts: int = 0
    gets: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    payload_bytes: int = 0
    inline: int = 0
    offloaded: int = 0
    folded: bool = False
    manifest_id: str | None = None
    saves: int = 0
    seconds: float = 0.0


def _stats(operation: str, io: IOCounters, started: float, **figures: Any) -> HydratorStats:
    return HydratorStats(
        operation=operation,
        requests=io.requests,
        puts=io.puts,
        gets=io.gets,
        bytes_written=io.bytes_written,
        bytes_read=io.bytes_read,
        seconds=time.perf_counter() - started,
        **figures,
    )


# ---------------------------------------------------------------------------------------------
# JSON sizes and exactness
# ---------------------------------------------------------------------------------------------


def _json_len(value: Any) -> int:
    # ensure_ascii (the default) makes the text ASCII: its length is its size in bytes.
    return len(json.dumps(value))


def _check_size(payload: dict[str, Any], limit: int) -> int:
    size = _json_len(payload)
    if size > limit:  # a bug in the plan's arithmetic; never send such a payload
        raise AssertionError(f"statebag bug: a payload of {size} bytes is over the limit {limit}")
    return size


def _object_len(entry_total: int, count: int) -> int:
    """Size of a JSON object or array whose ``count`` members take ``entry_total``."""
    return 2 + entry_total + 2 * (count - 1) if count else 2


def _entry_len(key_len: int, value_len: int) -> int:
    return key_len + 2 + value_len  # "key": value


def _not_json_exact(value: Any, path: str) -> str | None:
    """Why ``value`` (already accepted by ``codec.encode``) would not come back exactly from
    JSON, naming where; None when it would."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if item is None or isinstance(item, (bool, str)):
            continue
        if isinstance(item, int):
            if not -_JSON_INT_MAX <= item <= _JSON_INT_MAX:
                return f"{where}: int beyond +-(2**53 - 1), which JSON readers round"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where}: {item!r} has no JSON form"
        elif isinstance(item, (bytes, bytearray, memoryview)):
            return f"{where}: bytes have no JSON form"
        elif isinstance(item, dict):
            stack.extend((child, f"{where}.{key}") for key, child in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
        else:  # pragma: no cover - codec.encode refused it already
            return f"{where}: {type(item).__name__} has no JSON form"
    return None


def _free_name(base: str, taken: Mapping[str, Any]) -> str:
    """``base``, or ``base~2``, ``base~3``...: the first not used by a field of the state."""
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}~{index}"
    return name


# ---------------------------------------------------------------------------------------------
# Pointers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Body:
    """Where the offloaded fields are in a version: the pointer's lists, or what a folded
    pointer's field holds."""

    cold: tuple[str, ...]
    warm_field: str | None
    warm: tuple[str, ...]

    def stored_fields(self) -> set[str]:
        fields = set(self.cold)
        if self.warm_field is not None:
            fields.add(self.warm_field)
        return fields

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.cold:
            body["cold"] = list(self.cold)
        if self.warm_field is not None:
            body["warm"] = {"field": self.warm_field, "names": list(self.warm)}
        return body


@dataclass(frozen=True)
class _Pointer:
    manifest: str
    body: _Body | None  # None when folded
    folded: str | None


def _bad(message: str, path: str) -> InvalidInputError:
    return InvalidInputError(f"malformed hydrator payload: {message}", path=path)


def _name_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _bad(f"{path} must be a list of field names, not {type(value).__name__}", path)
    for index, name in enumerate(value):
        if not isinstance(name, str):
            raise _bad(f"{path}[{index}] must be a str, not {name!r}", f"{path}[{index}]")
    if len(set(value)) != len(value):
        raise _bad(f"{path} lists a name twice", path)
    return tuple(value)


def _parse_body(raw: Mapping[str, Any], path: str) -> _Body:
    cold = _name_list(raw["cold"], f"{path}.cold") if "cold" in raw else ()
    warm_field: str | None = None
    warm: tuple[str, ...] = ()
    if "warm" in raw:
        group = raw["warm"]
        where = f"{path}.warm"
        if not isinstance(group, dict) or set(group) != {"field", "names"}:
            raise _bad(f"{where} must be an object with exactly field and names", where)
        warm_field = group["field"]
        if not isinstance(warm_field, str) or not warm_field:
            raise _bad(f"{where}.field must be a non-empty str", f"{where}.field")
        warm = _name_list(group["names"], f"{where}.names")
        if warm_field in cold:
            raise _bad(f"{where}.field {warm_field!r} is also a cold field", f"{where}.field")
    both = set(cold) & set(warm)
    if both:
        raise _bad(f"{sorted(both)[0]!r} is listed as both cold and warm", path)
    return _Body(cold, warm_field, warm)


def _parse_pointer(raw: object) -> _Pointer:
    path = POINTER_KEY
    if not isinstance(raw, dict):
        raise _bad(f"{path} must be an object, not {type(raw).__name__}", path)
    unknown = sorted(set(raw) - _POINTER_KEYS, key=str)
    if unknown:
        raise _bad(f"{path} has unknown key {unknown[0]!r}", f"{path}.{unknown[0]}")
    version = raw.get("v")
    if type(version) is not int or version != POINTER_VERSION:
        raise _bad(
            f"{path}.v is {version!r}; this statebag reads pointer version {POINTER_VERSION}",
            f"{path}.v",
        )
    manifest = raw.get("manifest")
    if not isinstance(manifest, str) or not looks_like_id(manifest):
        raise _bad(f"{path}.manifest must be 64 lowercase hex characters", f"{path}.manifest")
    if "folded" in raw:
        folded = raw["folded"]
        if not isinstance(folded, str) or not folded:
            raise _bad(f"{path}.folded must be a non-empty str", f"{path}.folded")
        extra = sorted({"cold", "warm"} & set(raw))
        if extra:
            raise _bad(f"a folded pointer has no {extra[0]}", f"{path}.{extra[0]}")
        return _Pointer(manifest, None, folded)
    return _Pointer(manifest, _parse_body(raw, path), None)


def _split_payload(payload: object) -> tuple[dict[str, Any], _Pointer | None]:
    if not isinstance(payload, Mapping):
        raise InvalidInputError(
            f"payload must be a Mapping (a dehydrated state), not {type(payload).__name__}",
            path="payload",
        )
    inline = {name: value for name, value in payload.items() if name != POINTER_KEY}
    if POINTER_KEY not in payload:
        return inline, None
    pointer = _parse_pointer(payload[POINTER_KEY])
    if pointer.body is not None:
        _check_disjoint(pointer.body, inline)
    return inline, pointer


def _is_offload_chain(chain: str, /) -> bool:
    """Whether ``chain`` is one a hydrator stores under: ``offload_chain(x)`` for some x."""
    return chain.endswith(OFFLOAD_SUFFIX) and len(chain) > len(OFFLOAD_SUFFIX)


def _check_followable(repo: Repository, pointer: _Pointer) -> None:
    """Refuse a pointer to any version but an offload version: payloads come from workflow
    inputs a user may write, and an id alone must not read another chain's state.

    InvalidInputError (naming neither the version's chain nor anything of it) for a version
    of another chain; NotFoundError for a missing version."""
    if not _is_offload_chain(repo.info(pointer.manifest).chain):
        path = f"{POINTER_KEY}.manifest"
        raise InvalidInputError(
            f"{path} names version {pointer.manifest}, which no hydrator stored: a payload "
            f"may only point to versions of offload chains (chain + {OFFLOAD_SUFFIX!r})",
            path=path,
        )


def _check_disjoint(body: _Body, inline: Mapping[str, Any]) -> None:
    for name in (*body.cold, *body.warm):
        if name in inline:
            raise _bad(f"field {name!r} is both inline and offloaded", name)


def _body_from_store(stored: object, pointer: _Pointer) -> _Body:
    if not isinstance(stored, dict) or not set(stored) <= {"cold", "warm"}:
        raise IntegrityError(
            f"field {pointer.folded!r} of version {pointer.manifest} is not a folded pointer",
            object_id=pointer.manifest,
        )
    try:
        return _parse_body(stored, f"{pointer.folded}")
    except InvalidInputError as exc:
        raise IntegrityError(
            f"version {pointer.manifest}: {exc}", object_id=pointer.manifest
        ) from exc


def _mismatch(manifest: str, expected: set[str], found: Iterable[str]) -> IntegrityError:
    found = set(found)
    missing, extra = sorted(expected - found), sorted(found - expected)
    return IntegrityError(
        f"version {manifest} does not hold what the pointer says (missing {missing}, "
        f"unexpected {extra}): the payload does not belong to this repository or was altered",
        object_id=manifest,
    )


def _warm_values(group: object, body: _Body, manifest: str) -> dict[str, Any]:
    if not isinstance(group, dict) or set(group) != set(body.warm):
        found = group.keys() if isinstance(group, dict) else ()
        raise _mismatch(manifest, set(body.warm), found)
    return group


# ---------------------------------------------------------------------------------------------
# The hydrator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recent:
    """The last version this hydrator saved on a chain, with a digest of each field."""

    manifest_id: str
    digests: dict[str, bytes]


@dataclass
class _Plan:
    inline: list[str]
    cold: list[str]
    warm: list[str]
    folded: bool


class Hydrator:
    """Shrinks states to JSON payloads of at most ``limit`` bytes and brings them back.

    See the module docstring for the rules. ``hot`` names stay inline; ``cold`` names and
    values encoding to more than ``cold_min`` bytes are stored one field each; other values
    of at most ``inline_max`` bytes stay inline while they fit; the rest are batched into one
    stored field when ``batch_warm`` (else stored one field each). ``ttl`` (seconds or a
    timedelta) is how long each offload version is kept from retention and gc.

    A hydrator is safe to share between threads; :attr:`stats` then describes whichever call
    finished last.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        limit: int = DEFAULT_LIMIT,
        inline_max: int = 1024,
        cold_min: int = 65_536,
        hot: Iterable[str] = (),
        cold: Iterable[str] = (),
        batch_warm: bool = True,
        ttl: float | timedelta = 14 * 86400,
        level: int | None = None,
    ) -> None:
        if not isinstance(repo, Repository):
            raise InvalidInputError(
                f"repo must be a statebag Repository, not {type(repo).__name__}", path="repo"
            )
        for name, value, low in (
            ("limit", limit, _MIN_LIMIT),
            ("inline_max", inline_max, 0),
            ("cold_min", cold_min, 0),
        ):
            if type(value) is not int or value < low:
                raise InvalidInputError(f"{name} must be an int >= {low}, not {value!r}", path=name)
        if type(batch_warm) is not bool:
            raise InvalidInputError(
                f"batch_warm must be a bool, not {batch_warm!r}", path="batch_warm"
            )
        self._hot = frozenset(field_names(hot, field="hot"))
        self._cold = frozenset(field_names(cold, field="cold"))
        both = self._hot & self._cold
        if both:
            raise InvalidInputError(f"{sorted(both)[0]!r} is named both hot and cold", path="hot")
        if POINTER_KEY in self._hot:
            raise InvalidInputError(
                f"{POINTER_KEY!r} cannot be hot: it is the pointer's key in a payload, so a "
                "field of that name is always offloaded",
                path="hot",
            )
        self._repo = repo
        self.limit = limit
        self.inline_max = inline_max
        self.cold_min = cold_min
        self.batch_warm = batch_warm
        self.ttl = as_seconds(ttl, field="ttl")
        if level is not None:
            try:
                codec.compress(b"", level=level)
            except InvalidInputError as exc:
                raise InvalidInputError(str(exc), path="level") from exc
        self.level = level
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._stats = HydratorStats()

    @property
    def repo(self) -> Repository:
        return self._repo

    @property
    def hot(self) -> frozenset[str]:
        return self._hot

    @property
    def cold(self) -> frozenset[str]:
        return self._cold

    @property
    def stats(self) -> HydratorStats:
        """Requests, bytes and figures of the last call (see :class:`HydratorStats`)."""
        return self._stats

    def __repr__(self) -> str:
        return f"<statebag.Hydrator limit={self.limit} repo={self._repo!r}>"

    # -- dehydrate ---------------------------------------------------------------------------

    def dehydrate(
        self, state: Mapping[str, Any], chain: str, *, limit: int | None = None
    ) -> dict[str, Any]:
        """A JSON-serializable payload of ``state`` whose ``json.dumps`` is at most ``limit``
        bytes (the hydrator's limit unless given); offloaded fields go to a new version of
        ``offload_chain(chain)``. Nothing is written when everything fits inline.

        Raises InvalidInputError for a state the repository cannot store (naming the field),
        a hot field JSON cannot carry exactly, or hot fields that alone overflow the limit;
        ConflictError when other dehydrates on the chain kept winning the race for its head.
        """
        started = time.perf_counter()
        before = self._repo.io_counters()
        if limit is None:
            limit = self.limit
        elif type(limit) is not int or limit < _MIN_LIMIT:
            raise InvalidInputError(
                f"limit must be an int >= {_MIN_LIMIT}, not {limit!r}", path="limit"
            )
        target = offload_chain(chain)
        data = snapshot_state(state)

        encoded: dict[str, bytes] = {}
        for name, value in data.items():
            try:
                encoded[name] = codec.encode(value)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"field {name!r}: {exc}", path=field_path(name, exc.path)
                ) from exc
        texts: dict[str, str] = {}  # JSON of every value that may go inline
        for name, value in data.items():
            if name in self._hot:
                problem = _not_json_exact(value, name)
                if problem is not None:
                    raise InvalidInputError(
                        f"hot field {name!r} must stay inline, but JSON cannot carry it "
                        f"exactly ({problem}); make it JSON-safe or do not mark it hot",
                        path=name,
                    )
                texts[name] = json.dumps(value)
            elif (
                name != POINTER_KEY
                and name not in self._cold
                and len(encoded[name]) <= min(self.inline_max, self.cold_min)
                and _not_json_exact(value, name) is None
            ):
                texts[name] = json.dumps(value)

        plan = self._plan(data, encoded, texts, limit)
        if not plan.cold and not plan.warm:
            payload = {name: data[name] for name in plan.inline}
            size = _check_size(payload, limit)
            self._stats = _stats(
                "dehydrate",
                self._repo.io_counters() - before,
                started,
                payload_bytes=size,
                inline=len(plan.inline),
            )
            return payload

        warm_field = _free_name(_WARM_FIELD, data) if plan.warm else None
        body = _Body(tuple(sorted(plan.cold)), warm_field, tuple(sorted(plan.warm)))
        folded_field = _free_name(_FOLDED_FIELD, data) if plan.folded else None
        stored: dict[str, Any] = {name: data[name] for name in body.cold}
        digests = {name: hash_bytes(encoded[name]) for name in body.cold}
        if warm_field is not None:
            stored[warm_field] = {name: data[name] for name in body.warm}
            hasher = Hasher()
            for name in body.warm:
                key = name.encode()
                hasher.update(len(key).to_bytes(8, "little") + key)
                hasher.update(hash_bytes(encoded[name]))
            digests[warm_field] = hasher.digest()
        if folded_field is not None:
            stored[folded_field] = body.as_json()
            digests[folded_field] = hash_bytes(codec.encode(stored[folded_field]))

        pointer: dict[str, Any] = {"v": POINTER_VERSION, "manifest": "0" * 64}
        if folded_field is not None:
            pointer["folded"] = folded_field
        else:
            pointer.update(body.as_json())
        payload = {name: data[name] for name in plan.inline}
        payload[POINTER_KEY] = pointer
        # The plan's arithmetic decides before anything is written; this checks it.
        size = _check_size(payload, limit)

        manifest_id, saves = self._save(target, stored, digests)
        pointer["manifest"] = manifest_id
        self._stats = _stats(
            "dehydrate",
            self._repo.io_counters() - before,
            started,
            payload_bytes=size,
            inline=len(plan.inline),
            offloaded=len(body.cold) + len(body.warm),
            folded=plan.folded,
            manifest_id=manifest_id,
            saves=saves,
        )
        return payload

    def _plan(
        self,
        data: Mapping[str, Any],
        encoded: Mapping[str, bytes],
        texts: Mapping[str, str],
        limit: int,
    ) -> _Plan:
        """Choose the inline fields: hot ones, then candidates smallest first while the
        payload, pointer included, fits. Sizes are computed, not measured, so that the
        choice costs O(fields)."""
        key_len = {name: _json_len(name) for name in data}
        entry = {name: _entry_len(key_len[name], len(texts[name])) for name in texts}
        hot = [name for name in data if name in self._hot]
        candidates = sorted(
            (name for name in texts if name not in self._hot), key=lambda n: (entry[n], n)
        )
        forced = [
            name
            for name in data
            if name not in texts
            and name not in self._hot
            and (name == POINTER_KEY or name in self._cold or len(encoded[name]) > self.cold_min)
        ]
        forced_set = set(forced)
        warm = [
            name
            for name in data
            if name not in texts and name not in self._hot and name not in forced_set
        ]
        hot_total = sum(entry[name] for name in hot)
        pointer_key_len = _json_len(POINTER_KEY)
        warm_field_len = _json_len(_free_name(_WARM_FIELD, data))
        folded_field_len = _json_len(_free_name(_FOLDED_FIELD, data))

        def names_len(names: Iterable[str]) -> tuple[int, int]:
            total = count = 0
            for name in names:
                total += key_len[name]
                count += 1
            return total, count

        forced_len = names_len(forced)
        warm_len = names_len(warm)
        # suffix[k]: (total key length, count) of candidates[k:], demoted if k are inline.
        suffix = [(0, 0)] * (len(candidates) + 1)
        for index in range(len(candidates) - 1, -1, -1):
            total, count = suffix[index + 1]
            suffix[index] = (total + key_len[candidates[index]], count + 1)
        prefix = [0]
        for name in candidates:
            prefix.append(prefix[-1] + entry[name])

        def pointer_len(demoted: tuple[int, int], *, folded: bool) -> int | None:
            """JSON size of the pointer, None when there is nothing to point to."""
            if self.batch_warm:
                cold = forced_len
                batch = (warm_len[0] + demoted[0], warm_len[1] + demoted[1])
            else:
                cold = (
                    forced_len[0] + warm_len[0] + demoted[0],
                    forced_len[1] + warm_len[1] + demoted[1],
                )
                batch = (0, 0)
            if not cold[1] and not batch[1]:
                return None
            members = [_entry_len(3, 1), _entry_len(10, 66)]  # "v": 1, "manifest": "<64>"
            if folded:
                members.append(_entry_len(8, folded_field_len))
            else:
                if cold[1]:
                    members.append(_entry_len(6, _object_len(cold[0], cold[1])))
                if batch[1]:
                    group = _object_len(
                        _entry_len(7, warm_field_len) + _entry_len(7, _object_len(*batch)), 2
                    )
                    members.append(_entry_len(6, group))
            return _object_len(sum(members), len(members))

        def payload_len(k: int, *, folded: bool) -> int:
            pointer = pointer_len(suffix[k], folded=folded)
            total, count = hot_total + prefix[k], len(hot) + k
            if pointer is not None:
                total += _entry_len(pointer_key_len, pointer)
                count += 1
            return _object_len(total, count)

        everything = len(candidates)
        if payload_len(everything, folded=False) <= limit:
            if self.batch_warm:
                return _Plan(hot + candidates, forced, warm, False)
            return _Plan(hot + candidates, forced + warm, [], False)
        # From here on something is demoted, so the pointer exists and both sizes grow with
        # k: the largest k that fits is found by walking up.
        best: tuple[int, bool] | None = None
        for folded, top in ((False, everything - 1), (True, everything)):
            k = -1
            while k < top and payload_len(k + 1, folded=folded) <= limit:
                k += 1
            if k >= 0 and (best is None or k > best[0]):
                best = (k, folded)
        if best is None:
            size = _object_len(hot_total, len(hot))
            names = ", ".join(sorted(hot, key=lambda n: (-entry[n], n))) or "(none)"
            raise InvalidInputError(
                f"the hot fields ({names}) take {size} bytes of JSON, and with the pointer to "
                f"the rest the payload cannot fit the limit of {limit} bytes; raise the limit "
                "or mark fewer or smaller fields hot",
                path=max(hot, key=lambda n: (entry[n], n)) if hot else "hot",
            )
        k, folded = best
        demoted = candidates[k:]
        if self.batch_warm:
            return _Plan(hot + candidates[:k], forced, warm + demoted, folded)
        return _Plan(hot + candidates[:k], forced + warm + demoted, [], folded)

    def _save(
        self, chain: str, stored: dict[str, Any], digests: dict[str, bytes]
    ) -> tuple[str, int]:
        """Commit ``stored`` as the next version of ``chain`` and hold it; (id, attempts)."""
        with self._lock:
            recent = self._recent.get(chain)
        attempts = 0
        while True:
            attempts += 1
            try:
                if recent is not None:
                    # The hint is only safe on top of the version the digests describe:
                    # parent= makes the save conflict if the head moved meanwhile.
                    changed = [n for n in stored if recent.digests.get(n) != digests[n]]
                    result = self._repo.save(
                        chain,
                        stored,
                        parent=recent.manifest_id,
                        changed=changed,
                        level=self.level,
                        hold=self.ttl,
                    )
                else:
                    result = self._repo.save(chain, stored, level=self.level, hold=self.ttl)
                break
            except ConflictError:
                if attempts >= _SAVE_ATTEMPTS:
                    raise ConflictError(
                        f"chain {chain!r}: {attempts} dehydrates in a row lost the race for "
                        "its head to concurrent ones; retry later"
                    ) from None
                recent = None
        with self._lock:
            self._recent[chain] = _Recent(result.manifest_id, digests)
            self._recent.move_to_end(chain)
            while len(self._recent) > _RECENT_CHAINS:
                self._recent.popitem(last=False)
        return result.manifest_id, attempts

    # -- hydrate -----------------------------------------------------------------------------

    def hydrate(
        self,
        payload: Mapping[str, Any],
        lazy: bool = False,
        fields: Iterable[str] | None = None,
    ) -> dict[str, Any] | HydratedState:
        """The state ``payload`` was made from: a dict equal to it (key order not promised),
        only ``fields`` of it, or with ``lazy`` a :class:`HydratedState` that reads each
        offloaded field on first access.

        Offloaded fields are read with one repository load (its reads run in parallel); a
        folded pointer costs one more small read when ``fields`` or ``lazy`` is given.
        A malformed payload, or one pointing to a version that is not an offload version
        (of a chain ``offload_chain(x)``), raises InvalidInputError naming the bad part; a
        missing version NotFoundError; missing or corrupt stored data IntegrityError. Never
        a partial state.
        """
        started = time.perf_counter()
        before = self._repo.io_counters()
        inline, pointer = _split_payload(payload)
        wanted = None if fields is None else frozenset(field_names(fields, field="fields"))
        if pointer is not None:
            _check_followable(self._repo, pointer)
        if lazy:
            result: dict[str, Any] | HydratedState = HydratedState(
                self._repo, inline, pointer, wanted
            )
        elif pointer is None:
            result = _select(inline, wanted)
        elif wanted is None:
            result = self._load_all(inline, pointer)
        else:
            result = self._load_some(inline, pointer, wanted)
        self._stats = _stats(
            "hydrate",
            self._repo.io_counters() - before,
            started,
            payload_bytes=_json_len(payload) if _json_safe_top(payload) else 0,
            inline=len(inline),
            offloaded=(len(result) - len(inline)) if isinstance(result, dict) else 0,
            folded=pointer is not None and pointer.folded is not None,
            manifest_id=pointer.manifest if pointer is not None else None,
        )
        return result

    def _load_all(self, inline: dict[str, Any], pointer: _Pointer) -> dict[str, Any]:
        loaded = self._repo.load(pointer.manifest)
        assert isinstance(loaded, dict)
        if pointer.folded is not None:
            if pointer.folded not in loaded:
                raise _mismatch(pointer.manifest, {pointer.folded}, loaded)
            body = _body_from_store(loaded[pointer.folded], pointer)
            _check_disjoint(body, inline)
            expected = body.stored_fields() | {pointer.folded}
        else:
            assert pointer.body is not None
            body = pointer.body
            expected = body.stored_fields()
        if set(loaded) != expected:
            raise _mismatch(pointer.manifest, expected, loaded)
        state = dict(inline)
        for name in body.cold:
            state[name] = loaded[name]
        if body.warm_field is not None:
            state.update(_warm_values(loaded[body.warm_field], body, pointer.manifest))
        return state

    def _load_some(
        self, inline: dict[str, Any], pointer: _Pointer, wanted: frozenset[str]
    ) -> dict[str, Any]:
        body = pointer.body
        if body is None:
            assert pointer.folded is not None
            folded = _load_fields(self._repo, pointer.manifest, [pointer.folded])
            body = _body_from_store(folded[pointer.folded], pointer)
            _check_disjoint(body, inline)
        known = set(inline) | set(body.cold) | set(body.warm)
        missing = sorted(wanted - known)
        if missing:
            raise NotFoundError(f"the state has no field {', '.join(map(repr, missing))}")
        reads = sorted(wanted & set(body.cold))
        warm_wanted = wanted & set(body.warm)
        if warm_wanted:
            assert body.warm_field is not None
            reads.append(body.warm_field)
        loaded = _load_fields(self._repo, pointer.manifest, reads) if reads else {}
        state = {name: inline[name] for name in wanted if name in inline}
        for name in wanted & set(body.cold):
            state[name] = loaded[name]
        if warm_wanted:
            assert body.warm_field is not None
            group = _warm_values(loaded[body.warm_field], body, pointer.manifest)
            state.update({name: group[name] for name in warm_wanted})
        return state


def _json_safe_top(payload: Mapping[str, Any]) -> bool:
    try:
        json.dumps(payload)
    except (TypeError, ValueError):
        return False
    return True


def _select(inline: dict[str, Any], wanted: frozenset[str] | None) -> dict[str, Any]:
    if wanted is None:
        return inline
    missing = sorted(wanted - inline.keys())
    if missing:
        raise NotFoundError(f"the state has no field {', '.join(map(repr, missing))}")
    return {name: inline[name] for name in wanted}


def _load_fields(repo: Repository, manifest: str, names: list[str]) -> dict[str, Any]:
    """``names`` of version ``manifest`` in one load. A version that lacks one of them is
    an IntegrityError (the pointer and the version disagree); a missing version is
    NotFoundError."""
    try:
        loaded = repo.load(manifest, fields=names)
    except NotFoundError:
        repo.info(manifest)  # raises NotFoundError itself when the version is missing
        raise _mismatch(manifest, set(names), ()) from None
    assert isinstance(loaded, dict)
    return loaded


class HydratedState(Mapping[str, Any]):
    """A hydrated state that reads offloaded fields on first access (then keeps them).

    Inline fields are there from the start; nothing is read until an offloaded field is
    accessed, except that a folded pointer's names are read once when the mapping's keys are
    first needed. :attr:`stats` sums what the reads cost (object-store counters of the
    repository handle, so concurrent work on it is counted too); :meth:`loaded` names the
    offloaded fields read so far.
    """

    def __init__(
        self,
        repo: Repository,
        inline: dict[str, Any],
        pointer: _Pointer | None,
        wanted: frozenset[str] | None,
    ) -> None:
        self._repo = repo
        self._inline = inline
        self._pointer = pointer
        self._wanted = wanted
        self._body: _Body | None = pointer.body if pointer is not None else None
        self._keys: list[str] | None = None
        self._lazy: LazyState | None = None
        self._warm: dict[str, Any] | None = None
        self._loaded: set[str] = set()
        self._io = IOCounters()
        self._lock = threading.RLock()
        if wanted is not None and (pointer is None or pointer.body is not None):
            self._check_wanted()

    def _measured(self, fetch: Any, *args: Any) -> Any:
        before = self._repo.io_counters()
        try:
            return fetch(*args)
        finally:
            spent = self._repo.io_counters() - before
            self._io = IOCounters(
                **{
                    name: getattr(self._io, name) + getattr(spent, name)
                    for name in IOCounters.__struct_fields__
                }
            )

    def _resolved(self) -> _Body | None:
        with self._lock:
            if self._body is None and self._pointer is not None:
                pointer = self._pointer
                assert pointer.folded is not None
                folded = self._measured(
                    _load_fields, self._repo, pointer.manifest, [pointer.folded]
                )
                body = _body_from_store(folded[pointer.folded], pointer)
                _check_disjoint(body, self._inline)
                self._body = body
            return self._body

    def _all_keys(self) -> list[str]:
        with self._lock:
            if self._keys is None:
                body = self._resolved()
                keys = list(self._inline)
                if body is not None:
                    keys += [*body.cold, *body.warm]
                if self._wanted is not None:
                    self._check_wanted()
                    keys = [name for name in keys if name in self._wanted]
                self._keys = keys
            return self._keys

    def _check_wanted(self) -> None:
        assert self._wanted is not None
        body = self._body
        known = set(self._inline)
        if body is not None:
            known |= {*body.cold, *body.warm}
        missing = sorted(self._wanted - known)
        if missing:
            raise NotFoundError(f"the state has no field {', '.join(map(repr, missing))}")

    def _version(self) -> LazyState:
        with self._lock:
            if self._lazy is None:
                pointer, body = self._pointer, self._body
                assert pointer is not None and body is not None
                lazy = self._measured(self._repo.load, pointer.manifest, None, True)
                assert isinstance(lazy, LazyState)
                expected = body.stored_fields()
                if pointer.folded is not None:
                    expected.add(pointer.folded)
                if set(lazy) != expected:
                    raise _mismatch(pointer.manifest, expected, lazy)
                self._lazy = lazy
            return self._lazy

    def __getitem__(self, name: str) -> Any:
        if self._wanted is not None and name not in self._wanted:
            raise KeyError(name)
        if name in self._inline:
            return self._inline[name]
        body = self._resolved()
        if body is None:
            raise KeyError(name)
        with self._lock:
            if name in body.cold:
                value = self._measured(self._version().__getitem__, name)
                self._loaded.add(name)
                return value
            if name in body.warm:
                if self._warm is None:
                    assert body.warm_field is not None and self._pointer is not None
                    group = self._measured(self._version().__getitem__, body.warm_field)
                    self._warm = _warm_values(group, body, self._pointer.manifest)
                    self._loaded.update(body.warm)
                return self._warm[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all_keys())

    def __len__(self) -> int:
        return len(self._all_keys())

    def __contains__(self, name: object) -> bool:
        if self._wanted is not None and name not in self._wanted:
            return False
        if name in self._inline:
            return True
        return name in self._all_keys()

    @property
    def stats(self) -> IOCounters:
        """Object-store requests and bytes of the reads this mapping made so far."""
        with self._lock:
            return self._io

    def loaded(self) -> frozenset[str]:
        """The offloaded fields read so far."""
        with self._lock:
            return frozenset(self._loaded)

    def __repr__(self) -> str:
        return f"<HydratedState inline={len(self._inline)} loaded={len(self._loaded)}>"
