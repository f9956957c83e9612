"""Records beside chains: small named values a caller keeps with a chain.

A record is ``bytes`` under a name, kept beside one chain (``rec/<chain hash>/<name>`` in
the metadata store; docs/FORMAT.md, "Records beside chains"). Records are not part of any
version: they do not change a version's id, are not content-addressed and cost one metadata
value each, so a caller can add to what a chain holds without writing a version, and even
before the chain's first version is committed (the LangGraph adapter keeps a checkpoint's
pending writes so: LangGraph may send them while the checkpoint itself is still being put).

- A write of records is one atomic metadata write. With ``replace=False`` a name that
  already holds a record keeps it (an idempotent insert); with ``replace=True`` it is
  overwritten.
- ``delete_chain`` deletes the chain's records after its versions, in one write conditional
  on the counter ``recs/<chain hash>`` that every records write bumps, so a write that
  lands while the delete scans makes the delete read again instead of leaving a record
  behind. Records written after that (or beside a chain that never gets a version) stay
  until ``delete_chain`` names the chain again.

Sizes are bounded so that every metadata store can hold a record in one item: a name is 1 to
:data:`MAX_RECORD_NAME_BYTES` bytes of UTF-8 without NUL, a value at most
:data:`MAX_RECORD_BYTES`. A caller with larger values splits them over several records (one
write holds any number).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConflictError, InvalidInputError
from .keys import record_key, record_name_of, record_prefix, records_counter_key
from .meta import Add, CheckCounter, ConditionFailed, Delete, DropCounter, MetaStore, Op, Put

__all__ = ["MAX_RECORD_BYTES", "MAX_RECORD_NAME_BYTES", "Records", "check_records"]

MAX_RECORD_BYTES = 256 * 1024
MAX_RECORD_NAME_BYTES = 512
_ATTEMPTS = 16


def check_records(records: object, /) -> dict[str, bytes]:
    """``records`` as a dict of checked names and bytes; InvalidInputError names the first
    bad name or value (path ``records[<name>]``)."""
    if not isinstance(records, Mapping):
        raise InvalidInputError(
            f"records must be a Mapping[str, bytes], not {type(records).__name__}",
            path="records",
        )
    checked: dict[str, bytes] = {}
    for name, value in records.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(
                f"a record name must be a non-empty str, not {name!r}", path="records"
            )
        path = f"records[{name!r}]"
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"record name {name!r} is not valid Unicode", path=path
            ) from exc
        if "\x00" in name or size > MAX_RECORD_NAME_BYTES:
            raise InvalidInputError(
                f"record name {name[:40]!r}... must be 1..{MAX_RECORD_NAME_BYTES} bytes of "
                "UTF-8 without NUL",
                path=path,
            )
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"record {name!r} must be bytes, not {type(value).__name__}", path=path
            )
        data = bytes(value)
        if len(data) > MAX_RECORD_BYTES:
            raise InvalidInputError(
                f"record {name!r} is {len(data)} bytes, more than {MAX_RECORD_BYTES}; split it "
                "over several records",
                path=path,
            )
        checked[name] = data
    return checked


class Records:
    """Writes, reads and deletes the records beside chains; safe to share between threads."""

    def __init__(self, meta: MetaStore, /) -> None:
        self._meta = meta

    def put(self, chain: str, records: dict[str, bytes], /, *, replace: bool) -> int:
        """Write ``records`` beside ``chain`` in one write; the number written (with
        ``replace=False``, names that already hold a record are skipped)."""
        if not records:
            return 0
        keys = {name: record_key(chain, name) for name in records}
        for _ in range(_ATTEMPTS):
            names = list(records)
            if not replace:
                present = self._meta.get_many(keys.values())
                names = [name for name in names if keys[name] not in present]
                if not names:
                    return 0
            # Without replace, a name must still be absent: a writer that put it meanwhile
            # wins, and this write reads again.
            ops: list[Op] = [
                Put(keys[name], records[name])
                if replace
                else Put(keys[name], records[name], expect=None)
                for name in names
            ]
            ops.append(Add(records_counter_key(chain), 1))
            try:
                self._meta.write(ops)
            except ConditionFailed:
                continue
            return len(names)
        raise ConflictError(f"the records of chain {chain!r} kept changing while written; retry")

    def get(self, chain: str, /) -> dict[str, bytes]:
        """Every record beside ``chain``, in name order (empty when it has none)."""
        return {
            record_name_of(key, chain): value
            for key, value in self._meta.scan(record_prefix(chain))
        }

    def delete(self, chain: str, /) -> int:
        """Delete every record beside ``chain``, conditional on no records write landing
        since the scan; the number deleted. One write, or on a store that caps a write
        (``max_batch``) several, each conditional on the same count: a write landing between
        two of them makes the delete scan again."""
        counter = records_counter_key(chain)
        # Two operations of each write are the condition and, in the last, the drop.
        step = None if self._meta.max_batch is None else max(1, self._meta.max_batch - 2)
        for _ in range(_ATTEMPTS):
            written = self._meta.counter(counter)
            keys = [key for key, _ in self._meta.scan(record_prefix(chain))]
            if not keys and not written:
                return 0
            batches = (
                [keys] if step is None else [keys[i : i + step] for i in range(0, len(keys), step)]
            ) or [[]]
            try:
                for index, batch in enumerate(batches):
                    ops: list[Op] = [
                        CheckCounter(counter, written),
                        *(Delete(key) for key in batch),
                    ]
                    if index == len(batches) - 1:
                        ops.append(DropCounter(counter))
                    self._meta.write(ops)
            except ConditionFailed:
                continue
            return len(keys)
        raise ConflictError(f"the records of chain {chain!r} kept changing while deleted; retry")
