"""A repository's configuration: what it records at creation (the ``config`` key) and is
fixed for its life, and the checks of the options that set it."""

from __future__ import annotations

from typing import Any

import msgspec

from . import codec
from .chunking import Chunker
from .errors import ConfigError, IntegrityError, InvalidInputError, NotFoundError
from .keys import CONFIG
from .manifests import MANIFEST_ENCODER
from .meta import MetaStore

__all__ = ["FORMAT_VERSION", "Config", "check_config", "load_or_create_config"]

FORMAT_VERSION = 2
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


_DECODER = msgspec.msgpack.Decoder(Config)


def load_or_create_config(
    meta: MetaStore, given: dict[str, Any], *, create: bool, where: str
) -> Config:
    stored = meta.get(CONFIG)
    if stored is None:
        if not create:
            raise NotFoundError(f"no repository at {where} (create=False)")
        config = check_config(given)
        if meta.put_if_absent(CONFIG, MANIFEST_ENCODER.encode(config)):
            return config
        stored = meta.get(CONFIG)
        assert stored is not None
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
    config = _DECODER.decode(stored)
    if "normalization" not in raw:
        config = msgspec.structs.replace(config, normalization=FORMAT1_NORMALIZATION)
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
    config = Config(**given)
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
