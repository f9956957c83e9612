"""The one place the tests reach inside a Repository: its stores and its named parts.

Tests use the public API, these parts' own interfaces (``Catalog``, ``NodeReader``,
``Writer``, ``Collector``), or the helpers below; nothing else in the tests touches a
private attribute of a repository, so moving an internal breaks this module alone.
"""

from __future__ import annotations

from statebag import Repository
from statebag.catalog import Catalog
from statebag.dag import Entry
from statebag.gc import Collector
from statebag.gc.nodes import ChildReader
from statebag.liveness import Liveness
from statebag.manifests import Manifest
from statebag.meta import MetaStore
from statebag.objects import ObjectStore
from statebag.reader import NodeReader
from statebag.writer import Writer


def meta(repo: Repository) -> MetaStore:
    return repo._meta


def objects(repo: Repository) -> ObjectStore:
    """The repository's object store (its request-counting wrapper)."""
    return repo._objects


def catalog(repo: Repository) -> Catalog:
    return repo._catalog


def reader(repo: Repository) -> NodeReader:
    return repo._reader


def writer(repo: Repository) -> Writer:
    return repo._writer


def collector(repo: Repository) -> Collector:
    return repo._collector


def gc_reader(repo: Repository) -> ChildReader:
    """The node reader gc's sweep and audit share (swap its ``read_nodes`` to race them)."""
    return repo._collector._child_reader


def liveness(repo: Repository) -> Liveness:
    return repo._liveness


def url(repo: Repository) -> str:
    return repo._url


def manifest(repo: Repository, manifest_id: str) -> Manifest:
    return repo._catalog.manifest(bytes.fromhex(manifest_id))


def fields(repo: Repository, manifest_id: str) -> dict[str, Entry]:
    """A version's fields as stored (entries, not values)."""
    return dict(repo._reader.fields_table(manifest(repo, manifest_id).root).entries)


def drop_caches(repo: Repository) -> None:
    """Forget every cache of the handle: manifests, nodes, fields tables and cuts."""
    repo._catalog.clear_cache()
    repo._reader.clear_caches()
    repo._writer.clear_cuts()


def count_key(repo: Repository, node_id: bytes | str) -> str:
    """The counter that holds a node's reference count in this repository."""
    raw = bytes.fromhex(node_id) if isinstance(node_id, str) else node_id
    return repo.config.count_keys.key(raw)
