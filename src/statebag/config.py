"""A repository's configuration: what it records at creation (the ``config`` key) and is
fixed for its life, and the checks of the options that set it."""

from __future__ import annotations

from typing import Any

import msgspec

from . import codec
from .chunking import Chunker
from .errors import ConfigError, IntegrityError, InvalidInputError, NotFoundError
from .keys import CONFIG, COUNTS_WITH_RECORDS, SEPARATE_COUNTS, CountKeys
from .manifests import MANIFEST_ENCODER
from .meta import ConditionFailed, MetaStore, Put
from .objects import ObjectStore

__all__ = [
    "CONFIG_OBJECT",
    "FORMAT_VERSION",
    "Config",
    "check_config",
    "decode_config",
    "encode_config",
    "load_or_create_config",
    "read_config_object",
    "store_config_object",
    "upgrade_config",
]

FORMAT_VERSION = 2
"""The format new repositories are created with; every format from 1 up to it is read and
written (a repository keeps its own: see :meth:`statebag.Repository.upgrade`)."""
MIB = 1 << 20
# A format-1 configuration has no ``normalization``: its repositories were all cut at level 2.
FORMAT1_NORMALIZATION = 2


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """What a repository records at creation (``config`` key); fixed for its life.

    The defaults are what a new repository records. The chunking ones were chosen by
    measurement on binary churn (docs/FORMAT.md "Chunking"); a repository keeps the ones it
    recorded, and a format-1 configuration, which has no ``normalization``, means level 2.
    """

    format: int = FORMAT_VERSION
    min_size: int = 4096
    avg_size: int = 16384
    max_size: int = 65536
    seed: int = 0
    normalization: int = 1
    compression_level: int = codec.DEFAULT_LEVEL
    pack_size: int = 16 * MIB
    inline_max: int = 512
    fsync: bool = True
    grace: int = 3600
    # Whether each node's count is the counter under its index record's key (node/<id>):
    # true for repositories created at format 2 or later; absent (false) before.
    counts_with_records: bool = True

    @property
    def count_keys(self) -> CountKeys:
        return COUNTS_WITH_RECORDS if self.counts_with_records else SEPARATE_COUNTS


_DECODER = msgspec.msgpack.Decoder(Config)

# The object-store key of a format 2 repository's configuration: the same bytes as the
# metadata's ``config``, so that the object store alone describes the repository.
CONFIG_OBJECT = "config"


def encode_config(config: Config, /) -> bytes:
    """A configuration's canonical bytes (stored in the metadata and, from format 2, as the
    ``config`` object)."""
    return MANIFEST_ENCODER.encode(config)


def store_config_object(objects: ObjectStore, config: Config, /) -> None:
    """Write ``config`` as the object store's ``config`` object (creation of a format 2
    repository, an upgrade to format 2, a rebuild)."""
    objects.put(CONFIG_OBJECT, encode_config(config))


def read_config_object(objects: ObjectStore, /) -> bytes | None:
    """The bytes of the object store's ``config`` object, or None when there is none."""
    try:
        return objects.get(CONFIG_OBJECT)
    except NotFoundError:
        return None


def load_or_create_config(
    meta: MetaStore,
    given: dict[str, Any],
    *,
    create: bool,
    where: str,
    objects: ObjectStore | None = None,
) -> Config:
    """The repository's configuration, read from ``meta``; with ``create``, made from
    ``given`` when there is none. A format 2 repository's ``config`` object is written into
    ``objects`` first, before anything else: a location holding a different one is a
    repository whose metadata was lost, and is refused (ConfigError naming rebuild)."""
    stored = meta.get(CONFIG)
    if stored is None:
        if not create:
            raise NotFoundError(f"no repository at {where} (create=False)")
        config = check_config(given)
        encoded = encode_config(config)
        if objects is not None and config.format >= 2:
            found = read_config_object(objects)
            # Equal bytes and no pack (checked by the caller): a creation that raced this
            # one or stopped before its metadata; nothing is hidden by finishing it.
            if found is not None and found != encoded:
                raise ConfigError(
                    f"{where} holds a repository configuration object but no repository "
                    f"metadata: the metadata was lost or emptied. Recover it with "
                    f"`statebag -r {where} rebuild`"
                )
            if found is None:
                store_config_object(objects, config)
        if meta.put_if_absent(CONFIG, encoded):
            return config
        stored = meta.get(CONFIG)
        assert stored is not None
    return decode_config(stored, given, where=where)


def decode_config(stored: bytes, given: dict[str, Any], /, *, where: str) -> Config:
    """The configuration stored as ``stored``, checked against the options ``given``."""
    try:
        raw = msgspec.msgpack.decode(stored)
        version = raw.get("format") if isinstance(raw, dict) else None
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"the configuration of {where} is unreadable: {exc}") from exc
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"the repository at {where} has format {version}, newer than this statebag "
            f"reads (format {FORMAT_VERSION}); upgrade statebag"
        )
    config = _decode_recorded(stored)
    for name, value in given.items():
        if getattr(config, name) != value:
            raise ConfigError(
                f"option {name}={value!r} contradicts the repository at {where}, created "
                f"with {name}={getattr(config, name)!r}; leave it out or pass the same value"
            )
    return config


def check_config(given: dict[str, Any]) -> Config:
    for name, value in given.items():
        expected = bool if name == "fsync" else int
        if type(value) is not expected:
            raise InvalidInputError(
                f"option {name} must be {expected.__name__}, not {value!r}", path=name
            )
    version = given.get("format", FORMAT_VERSION)
    if not 1 <= version <= FORMAT_VERSION:
        raise InvalidInputError(
            f"format must be from 1 to {FORMAT_VERSION}, not {version}", path="format"
        )
    made: dict[str, Any] = {"counts_with_records": version >= 2}
    if version == 1:
        # What a format-1 statebag reads: it cuts at level 2 whatever the record says.
        if given.get("normalization", FORMAT1_NORMALIZATION) != FORMAT1_NORMALIZATION:
            raise InvalidInputError(
                f"a format 1 repository is cut at normalization level "
                f"{FORMAT1_NORMALIZATION}, not {given['normalization']}",
                path="normalization",
            )
        made["normalization"] = FORMAT1_NORMALIZATION
    # A repository made at format 2 or later counts references under its nodes' own keys.
    config = Config(**{**given, **made})
    try:
        Chunker(
            config.min_size,
            config.avg_size,
            config.max_size,
            config.seed,
            normalization=config.normalization,
        )
    except ValueError as exc:
        # The chunker names the option at fault; keep its name rather than blame avg_size.
        path = exc.path if isinstance(exc, InvalidInputError) and exc.path else "avg_size"
        raise InvalidInputError(f"chunker options: {exc}", path=path) from exc
    if not 16 <= config.inline_max <= 65536:
        raise InvalidInputError(
            f"inline_max must be from 16 to 65536 bytes, not {config.inline_max}",
            path="inline_max",
        )
    if not MIB <= config.pack_size <= 1024 * MIB:
        raise InvalidInputError(
            f"pack_size must be from 1 MiB to 1 GiB, not {config.pack_size}", path="pack_size"
        )
    codec.compress(b"", level=config.compression_level)  # validates the level
    if config.grace < 0:
        raise InvalidInputError(f"grace must be seconds >= 0, not {config.grace}", path="grace")
    return config


def _decode_recorded(stored: bytes, /) -> Config:
    """A stored configuration, with what a format-1 one leaves out read as format 1 meant
    it: cut at normalization level 2, counts under ``ref/``."""
    config = _DECODER.decode(stored)
    recorded = msgspec.msgpack.decode(stored)
    absent: dict[str, Any] = {}
    if "normalization" not in recorded:
        absent["normalization"] = FORMAT1_NORMALIZATION
    if "counts_with_records" not in recorded:
        absent["counts_with_records"] = False
    return msgspec.structs.replace(config, **absent) if absent else config


def upgrade_config(
    objects: ObjectStore, meta: MetaStore, config: Config, /, *, where: str
) -> Config:
    """Record the newest format in the repository's configuration (a no-op when it has it).

    Only ``format`` changes: the chunker, the pack size, where counts live and everything
    else stay, so every node already stored is still what a save of the same value would
    reuse. The ``config`` object is written first (format 2 keeps one for a rebuild; two
    upgrades write the same bytes), then the metadata's, conditional on the configuration as
    read, so of two upgrades one writes and the other finds the result.
    """
    stored = meta.get(CONFIG)
    if stored is None:
        raise NotFoundError(f"no repository at {where}: its configuration is gone")
    current = _decode_recorded(stored)
    if current.format >= FORMAT_VERSION:
        return current
    upgraded = msgspec.structs.replace(current, format=FORMAT_VERSION)
    store_config_object(objects, upgraded)
    try:
        meta.write([Put(CONFIG, encode_config(upgraded), expect=stored)])
    except ConditionFailed:
        return _decode_recorded(meta.get(CONFIG) or b"")
    return upgraded
