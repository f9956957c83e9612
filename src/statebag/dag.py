"""State -> nodes and back: the Merkle DAG of one version.

A state is a mapping of field names to values. Each field is encoded on its own with the
canonical encoding (:func:`statebag.codec.encode`) and stored in one of two ways:

- **inline**: an encoding shorter than ``inline_max`` bytes stays in the fields table;
- **tree**: a longer encoding (always a str, bin, array or map, since scalars are at most 9
  bytes) is split into its MessagePack *head* (the 1..5 bytes that say the type and the
  length, kept in the fields table) and its *body* (everything after), and the body is cut
  by the chunker into *chunks*. One chunk is the whole tree; more are listed by *index
  nodes* (level 1 lists chunks, level k lists index nodes of level k - 1), split the same
  content-defined way until one root remains.

Keeping the head out of the body matters: the head of an array or a string holds its length,
so an append would otherwise change the first chunk as well as the last. Cutting the
canonical encoding by content means that an append to a list rewrites the last chunk or two,
an edit in the middle of a list, a dict or a string rewrites one or two chunks, and the
index node above them: O(1) nodes whatever the value's size, with the encoding and the cut
running in C. (A prolly tree over elements would need one encode call per element, which
costs more than the whole rest of a save for lists of small records.)

The **fields table** maps every field name to its entry, sorted by name. It is stored as a
tree of *fields nodes*: a level 0 node lists entries; a level k node lists (first name,
child id, field count) of nodes of level k - 1. A group ends after a name whose BLAKE3 has a
chosen byte with its low bits zero (:class:`Grouping`), which depends only on the name:
changing a field's value never moves a boundary, and changing one field of 10,000 rewrites
one leaf and the path above it.

Everything here is a pure transform: nodes come in and go out as bytes keyed by id; reading
and writing them is the repository's business. Byte layouts are in docs/FORMAT.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from . import codec
from ._typing import Buffer
from .errors import IntegrityError, InvalidInputError
from .hashing import DIGEST_SIZE, hash_bytes

__all__ = [
    "FIELDS_MAX",
    "FIELDS_NAMES_MAX",
    "GROUPINGS",
    "INDEX_MAX",
    "TREE_LEVEL_MAX",
    "Entry",
    "Grouping",
    "Groupings",
    "InlineField",
    "NewNode",
    "NodeLimits",
    "TreeField",
    "build_fields",
    "build_index",
    "check_field_names",
    "children_of",
    "children_of_fields_node",
    "entry_size",
    "iter_fields",
    "parse_fields_node",
    "parse_index_node",
    "split_value",
]

# --- index nodes -------------------------------------------------------------------------------

INDEX_TAG = 0x69  # "i"
_INDEX_ENTRY = struct.Struct("<32sQ")
INDEX_ENTRY_SIZE = _INDEX_ENTRY.size  # 40
INDEX_MAX = 4096  # the most children an index node of any format has (a reader's bound)

# --- fields nodes ------------------------------------------------------------------------------

FIELDS_MAX = 1024  # the most rows a fields node of any format has (a reader's bound)


class Grouping(NamedTuple):
    """How one format groups the children of a level into nodes, by content.

    Every child has a 32-bit *key*: an index node's child ``le32(child_id[28:32])``, a fields
    row the name hash's bytes for its level (:func:`_fields_keys`). Format 1 (``window`` 0)
    ends a group after a key with ``key & mask == 0`` once the group holds ``least`` children.
    Format 2 (``window`` k > 0) ends a group after the child whose key is the largest of the
    keys within k positions on either side (ties go to the leftmost), from the (k+1)-th child
    of the list on. Either way a group also ends when it reaches ``most`` children, and the
    last ends with the list. docs/FORMAT.md gives the numbers and why.
    """

    window: int
    least: int
    mask: int
    most: int

    def groups(self, keys: list[int], /) -> Iterator[tuple[int, int]]:
        """The ``(start, end)`` slices of the groups of ``keys``, in order."""
        if self.window:
            return _local_max_groups(keys, self.window, self.most)
        return _threshold_groups(keys, self.least, self.mask, self.most)


class Groupings(NamedTuple):
    """The groupings of one format: index nodes, and each level of the fields tree (level 0
    may hold groups of one row; higher levels need two, so the tree always narrows)."""

    index_nodes: Grouping
    fields: Grouping
    fields_upper: Grouping


GROUPINGS: dict[int, Groupings] = {
    # Format 1: wide nodes (1,024-4,096 children, ~64 rows). Every rewritten node takes a
    # reference on each child, so a 1 KiB edit in 64 MiB wrote ~2,900 metadata items.
    1: Groupings(
        index_nodes=Grouping(0, 1024, 0x3FF, 4096),
        fields=Grouping(0, 1, 0x3F, 1024),
        fields_upper=Grouping(0, 2, 0x3F, 1024),
    ),
    # Format 2: narrow nodes (about 9 children, 13 rows), so a change writes
    # O(depth x fan-out) items; local maxima, so an edit moves no boundary far from itself.
    2: Groupings(
        index_nodes=Grouping(4, 0, 0, 48),
        fields=Grouping(6, 0, 0, 64),
        fields_upper=Grouping(6, 0, 0, 64),
    ),
}


KIND_INLINE = 0
KIND_TREE = 1
# The UTF-8 bytes of the names one fields node lists (field names in a level 0 node, first
# names above) are at most this: the one part of a fields node the configuration does not
# bound. A save that would write more is refused, so a reader can bound every node.
FIELDS_NAMES_MAX = 4 * 1024 * 1024
# A fields node is [level, rows], each row an array of scalars and bins: three levels.
_FIELDS_NESTING = 3


def _threshold_groups(
    keys: list[int], least: int, mask: int, most: int
) -> Iterator[tuple[int, int]]:
    start = 0
    count = len(keys)
    for position in range(count):
        size = position + 1 - start
        if size >= most or (size >= least and keys[position] & mask == 0):
            yield start, position + 1
            start = position + 1
    if start < count or count == 0:
        yield start, count


def _local_max_groups(keys: list[int], window: int, most: int) -> Iterator[tuple[int, int]]:
    # A local maximum depends on the keys within the window only, never on where the group
    # began: an edit changes the groups within a window of it, and nothing cascades. Two
    # local maxima are more than ``window`` apart, so groups but the last (and one a forced
    # end at ``most`` leaves behind) hold more than ``window`` children.
    start = 0
    count = len(keys)
    for position in range(count):
        size = position + 1 - start
        key = keys[position]
        if size >= most or (
            position >= window
            and key > max(keys[position - window : position])
            and key >= max(keys[position + 1 : position + 1 + window], default=0)
        ):
            yield start, position + 1
            start = position + 1
    if start < count or count == 0:
        yield start, count


# --- trees -------------------------------------------------------------------------------------

# Index levels a value's tree can have: every index node but the last of a level has more
# than the window's children (4 in format 2), so a tree of level 24 would list more than
# 5**23 chunks (more than 2**53: no value is that long).
TREE_LEVEL_MAX = 24

_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_DECODER = msgspec.msgpack.Decoder()


class InlineField(NamedTuple):
    """A value whose canonical encoding is shorter than the inline threshold."""

    encoded: bytes


class TreeField(NamedTuple):
    """A value stored as nodes: its MessagePack head, and the tree of its body."""

    head: bytes
    root: bytes  # a chunk id when level == 0, else the id of an index node of that level
    length: int  # bytes of the body
    level: int


Entry = InlineField | TreeField


class NewNode(NamedTuple):
    """A node produced by a split: its id, uncompressed bytes, and the ids it references.

    ``children`` lists one id per reference, duplicates included: a node's reference count is
    the number of references to it from other nodes and manifests.
    """

    node_id: bytes
    data: bytes | memoryview
    children: tuple[bytes, ...]


class NodeLimits(NamedTuple):
    """The most bytes a node of each kind can hold in a repository of a configuration, so
    that a size read from storage is checked before anything of that size is allocated.

    - a chunk: the chunker's ``max_size``;
    - an index node: tag and level, then at most ``INDEX_MAX`` entries of 40 bytes;
    - a fields node: at most ``FIELDS_MAX`` rows, each at most its largest MessagePack form
      without the name (an inline row holds an encoding shorter than ``inline_max``), plus
      at most ``FIELDS_NAMES_MAX`` bytes of names.
    """

    chunk: int
    index_node: int
    fields_node: int

    @classmethod
    def of(cls, *, max_size: int, inline_max: int) -> NodeLimits:
        # Row bytes besides the name: fixarray (1) + str header (5) + kind (1) and then
        # inline: bin header (3) + E (inline_max - 1), or tree: head bin (7) + root bin (34)
        # + length (9) + level (1). Rows of levels >= 1 (1 + 5 + 34 + 9) are smaller. The
        # node: fixarray (1) + level (9) + rows array header (3).
        row = max(inline_max + 9, 58)
        return cls(
            chunk=max_size,
            index_node=2 + INDEX_MAX * INDEX_ENTRY_SIZE,
            fields_node=13 + FIELDS_MAX * row + FIELDS_NAMES_MAX,
        )

    @property
    def largest(self) -> int:
        """The bound for a node of unknown kind."""
        return max(self)


def entry_size(entry: Entry, /) -> int:
    """The length of the field's canonical encoding (its logical bytes)."""
    if type(entry) is InlineField:
        return len(entry.encoded)
    assert type(entry) is TreeField
    return len(entry.head) + entry.length


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def head_length_or_none(encoded: bytes | memoryview, /) -> int | None:
    """Length of the MessagePack head (type and length) of a str, bin, array or map; None
    for any other type byte."""
    first = encoded[0]
    if 0x80 <= first <= 0xBF:  # fixmap, fixarray, fixstr
        return 1
    if first in (0xD9, 0xC4):  # str8, bin8
        return 2
    if first in (0xDA, 0xC5, 0xDC, 0xDE):  # str16, bin16, array16, map16
        return 3
    if first in (0xDB, 0xC6, 0xDD, 0xDF):  # str32, bin32, array32, map32
        return 5
    return None


def head_length(encoded: bytes | memoryview, /) -> int:
    """Length of the MessagePack head (type and length) of a str, bin, array or map."""
    length = head_length_or_none(encoded)
    if length is not None:
        return length
    first = encoded[0]
    raise InvalidInputError(
        f"a value of {len(encoded)} encoded bytes must be a str, bytes, list or dict "
        f"(MessagePack type byte 0x{first:02x})",
        path="inline_max",
    )


def split_value(
    head: bytes,
    body: Buffer,
    offsets: Sequence[int],
    digests: Sequence[bytes],
    /,
    *,
    grouping: Groupings,
    unless: Entry | None = None,
) -> tuple[TreeField, list[NewNode]]:
    """The tree of a value whose encoding is ``head`` (:func:`head_length` bytes) then
    ``body``, which the chunker cut at ``offsets``.

    Returns the entry and every node of the tree (chunks first, then index nodes bottom up),
    new or not; the caller decides which it already has. Chunks are views of ``body``. When
    the entry equals ``unless`` (the value did not change), no node is listed: the caller
    has them all.
    """
    view = memoryview(body)
    if not digests or len(offsets) != len(digests) or offsets[-1] != view.nbytes:
        raise AssertionError("chunk offsets must cover the body")
    starts = [0, *offsets[:-1]]
    lengths = [end - start for start, end in zip(starts, offsets, strict=True)]
    root, level, index_nodes = build_index(list(digests), lengths, grouping=grouping)
    entry = TreeField(head, root, view.nbytes, level)
    if entry == unless:
        return entry, []
    nodes = [
        NewNode(digest, view[start:end], ())
        for start, end, digest in zip(starts, offsets, digests, strict=True)
    ]
    nodes.extend(index_nodes)
    return entry, nodes


def build_index(
    ids: list[bytes], lengths: list[int], /, *, grouping: Groupings
) -> tuple[bytes, int, list[NewNode]]:
    """Index nodes over chunks ``ids`` of ``lengths`` bytes: (root id, root level, nodes)."""
    nodes: list[NewNode] = []
    level = 0
    while len(ids) > 1:
        level += 1
        next_ids: list[bytes] = []
        next_lengths: list[int] = []
        for lo, hi in _index_groups(ids, grouping.index_nodes):
            group_ids = ids[lo:hi]
            group_lengths = lengths[lo:hi]
            data = bytes((INDEX_TAG, level)) + b"".join(
                _INDEX_ENTRY.pack(i, n) for i, n in zip(group_ids, group_lengths, strict=False)
            )
            node_id = hash_bytes(data)
            nodes.append(NewNode(node_id, data, tuple(group_ids)))
            next_ids.append(node_id)
            next_lengths.append(sum(group_lengths))
        ids, lengths = next_ids, next_lengths
    return ids[0], level, nodes


def _index_groups(ids: list[bytes], grouping: Grouping) -> Iterator[tuple[int, int]]:
    return grouping.groups([int.from_bytes(node_id[28:], "little") for node_id in ids])


def parse_index_node(data: bytes, /, *, node_id: str) -> tuple[int, list[tuple[bytes, int]]]:
    """(level, [(child id, bytes below it)]) of an index node; IntegrityError if malformed."""
    if (
        len(data) < 2 + INDEX_ENTRY_SIZE
        or data[0] != INDEX_TAG
        or data[1] == 0
        or (len(data) - 2) % INDEX_ENTRY_SIZE
    ):
        raise IntegrityError(f"node {node_id} is not a valid index node", object_id=node_id)
    return data[1], list(_INDEX_ENTRY.iter_unpack(memoryview(data)[2:]))


def leaves_of(
    entry: TreeField, fetch: Callable[[Sequence[bytes]], Mapping[bytes, bytes]], /
) -> list[tuple[bytes, int]]:
    """The (chunk id, length) list of one tree, reading index nodes through ``fetch``."""
    return leaves_of_many({"": entry}, fetch)[""]


def leaves_of_many(
    trees: Mapping[str, TreeField],
    fetch: Callable[[Sequence[bytes]], Mapping[bytes, bytes]],
    /,
) -> dict[str, list[tuple[bytes, int]]]:
    """The chunk lists of trees (by name), reading the index nodes of every tree one level
    at a time: one ``fetch`` per level, not one per tree.

    Each chunk comes with the length its parent claims for it (a level 0 tree: the entry's
    length). Claims are checked on the way down, before anyone allocates by them: the
    lengths an index node lists add up to what its parent (or the entry) claims for it, and
    each is at least 1; otherwise :class:`IntegrityError` names the node. Whether each chunk
    really holds its claimed length is for the caller to check against the index.
    """
    lists: dict[str, list[tuple[bytes, int]]] = {}
    # Per tree: the nodes of the current level, each with the bytes its parent claims below it.
    frontier: dict[str, list[tuple[bytes, int]]] = {}
    depth: dict[str, int] = {}
    for name, entry in trees.items():
        if entry.level == 0:
            lists[name] = [(entry.root, entry.length)]
        else:
            frontier[name] = [(entry.root, entry.length)]
            depth[name] = entry.level
    while frontier:
        found = fetch(list(dict.fromkeys(i for ids in frontier.values() for i, _ in ids)))
        next_frontier: dict[str, list[tuple[bytes, int]]] = {}
        for name, nodes in frontier.items():
            field = f"field {name!r}: " if name else ""
            children: list[tuple[bytes, int]] = []
            for node_id, claimed in nodes:
                text = node_id.hex()
                level, entries = parse_index_node(found[node_id], node_id=text)
                if level != depth[name]:
                    raise IntegrityError(
                        f"{field}index node {text} has level {level}, expected {depth[name]}",
                        object_id=text,
                    )
                below = 0
                for _, length in entries:
                    if length < 1:
                        raise IntegrityError(
                            f"{field}index node {text} lists a child of {length} bytes",
                            object_id=text,
                        )
                    below += length
                if below != claimed:
                    raise IntegrityError(
                        f"{field}index node {text} lists {below} bytes below it, but its "
                        f"parent says {claimed}",
                        object_id=text,
                    )
                children.extend(entries)
            if depth[name] == 1:
                lists[name] = children
            else:
                depth[name] -= 1
                next_frontier[name] = children
        frontier = next_frontier
    return lists


# ---------------------------------------------------------------------------------------------
# Fields table
# ---------------------------------------------------------------------------------------------


def _entry_row(name: str, entry: Entry) -> list[Any]:
    if type(entry) is InlineField:
        return [name, KIND_INLINE, entry.encoded]
    assert type(entry) is TreeField
    return [name, KIND_TREE, entry.head, entry.root, entry.length, entry.level]


def name_hash(name: str, /) -> bytes:
    """BLAKE3 of the name's UTF-8: byte ``level`` of it decides fields-node boundaries."""
    return hash_bytes(name.encode("utf-8"))


def build_fields(
    entries: Sequence[tuple[str, Entry]],
    /,
    *,
    grouping: Groupings,
    hashes: dict[str, bytes] | None = None,
) -> tuple[bytes, list[NewNode]]:
    """The fields tree of ``entries`` (sorted by name, unique): (root id, all its nodes).

    ``hashes`` caches name hashes: those it has are used, those it lacks are added.
    """
    known = hashes if hashes is not None else {}
    name_hashes = []
    for name, _ in entries:
        digest = known.get(name)
        if digest is None:
            digest = known[name] = name_hash(name)
        name_hashes.append(digest)
    nodes: list[NewNode] = []
    rows: list[list[Any]] = [_entry_row(name, entry) for name, entry in entries]
    child_refs: list[tuple[bytes, ...]] = [
        (entry.root,) if type(entry) is TreeField else () for _, entry in entries
    ]
    counts = [1] * len(entries)
    firsts = [name for name, _ in entries]
    level = 0
    while True:
        groups = list(_fields_groups(name_hashes, level, grouping))
        next_rows: list[list[Any]] = []
        next_refs: list[tuple[bytes, ...]] = []
        next_counts: list[int] = []
        next_firsts: list[str] = []
        next_hashes: list[bytes] = []
        for lo, hi in groups:
            _check_names(firsts[lo:hi])
            data = _ENCODER.encode([level, rows[lo:hi]])
            node_id = hash_bytes(data)
            refs = tuple(ref for refs in child_refs[lo:hi] for ref in refs)
            nodes.append(NewNode(node_id, data, refs))
            if len(groups) == 1:
                return node_id, nodes
            count = sum(counts[lo:hi])
            next_rows.append([firsts[lo], node_id, count])
            next_refs.append((node_id,))
            next_counts.append(count)
            next_firsts.append(firsts[lo])
            next_hashes.append(name_hashes[lo])
        rows, child_refs, counts, firsts, name_hashes = (
            next_rows,
            next_refs,
            next_counts,
            next_firsts,
            next_hashes,
        )
        level += 1


def check_field_names(
    names: Sequence[str], /, *, grouping: Groupings, hashes: dict[str, bytes] | None = None
) -> None:
    """InvalidInputError, naming the longest, if the fields tree of ``names`` (sorted,
    unique) would put more than FIELDS_NAMES_MAX bytes of names in one node: what
    :func:`build_fields` refuses, told from the names alone before anything is encoded or
    stored. ``hashes`` caches name hashes as in :func:`build_fields`."""
    if 4 * sum(map(len, names)) <= FIELDS_NAMES_MAX:
        return  # no node can hold more names than all of them
    known = hashes if hashes is not None else {}
    firsts = list(names)
    name_hashes = [known.get(name) or known.setdefault(name, name_hash(name)) for name in names]
    level = 0
    while True:
        groups = list(_fields_groups(name_hashes, level, grouping))
        for lo, hi in groups:
            _check_names(firsts[lo:hi])
        if len(groups) <= 1:
            return
        firsts = [firsts[lo] for lo, _ in groups]
        name_hashes = [name_hashes[lo] for lo, _ in groups]
        level += 1


def _check_names(names: list[str]) -> None:
    """InvalidInputError, naming the longest, if ``names`` (one node's) pass FIELDS_NAMES_MAX."""
    # A character is at most 4 UTF-8 bytes: most nodes need no encoding to tell.
    if 4 * sum(map(len, names)) <= FIELDS_NAMES_MAX:
        return
    if sum(len(name.encode("utf-8")) for name in names) <= FIELDS_NAMES_MAX:
        return
    longest = max(names, key=len)
    raise InvalidInputError(
        f"field names are too long: those stored together with {longest[:40]!r}... take more "
        f"than {FIELDS_NAMES_MAX} bytes of UTF-8 (names are grouped by their hashes)",
        path=longest,
    )


def _fields_groups(
    name_hashes: list[bytes], level: int, groupings: Groupings
) -> Iterator[tuple[int, int]]:
    grouping = groupings.fields if level == 0 else groupings.fields_upper
    return grouping.groups(_fields_keys(name_hashes, level, grouping))


def _fields_keys(name_hashes: list[bytes], level: int, grouping: Grouping) -> list[int]:
    """Each row's key at ``level``: format 1 byte ``level mod 32`` of the name hash, format
    2 ``le32`` of bytes ``4 * (level mod 8)`` onwards (another part of the hash per level,
    so a level's boundaries are not its children's)."""
    if not grouping.window:
        byte = level % DIGEST_SIZE
        return [digest[byte] for digest in name_hashes]
    at = 4 * (level % 8)
    return [int.from_bytes(digest[at : at + 4], "little") for digest in name_hashes]


def parse_fields_node(data: bytes, /, *, node_id: str) -> tuple[int, list[Any]]:
    """(level, rows) of a fields node, rows checked for shape; IntegrityError if malformed.

    Level 0 rows are ``(name, entry)``; higher rows ``(first name, child id, field count)``.
    """
    try:
        # Shape first, by a scan that never recurses: a crafted node nested deeper than a
        # fields node can be must not reach msgspec's recursive decoder.
        codec.nesting_depth(data, limit=_FIELDS_NESTING, what="the node")
        decoded = _DECODER.decode(data)
        level, rows = decoded
        if type(level) is not int or type(rows) is not list or level < 0:
            raise ValueError("not [level, rows]")
        parsed: list[Any] = []
        if level == 0:
            for row in rows:
                name, kind = row[0], row[1]
                if type(name) is not str:
                    raise ValueError("name is not a str")
                if kind == KIND_INLINE and len(row) == 3 and type(row[2]) is bytes and row[2]:
                    parsed.append((name, InlineField(row[2])))
                elif kind == KIND_TREE and len(row) == 6:
                    head, root, length, lvl = row[2:]
                    if not (
                        type(head) is bytes
                        and type(root) is bytes
                        and len(root) == DIGEST_SIZE
                        and type(length) is int
                        and type(lvl) is int
                    ):
                        raise ValueError(f"bad tree entry for {name!r}")
                    _check_tree(name, head, length, lvl)
                    parsed.append((name, TreeField(head, root, length, lvl)))
                else:
                    raise ValueError(f"bad entry for {name!r}")
        else:
            for first, child, count in rows:
                if not (
                    type(first) is str
                    and type(child) is bytes
                    and len(child) == DIGEST_SIZE
                    and type(count) is int
                    and count >= 1
                ):
                    raise ValueError("bad child row")
                parsed.append((first, child, count))
        return level, parsed
    except (msgspec.DecodeError, IntegrityError, ValueError, TypeError, IndexError) as exc:
        raise IntegrityError(
            f"node {node_id} is not a valid fields node: {exc}", object_id=node_id
        ) from exc


# str8/16/32, bin8/16/32: the head holds the body's length in bytes. array16/32, map16/32 and
# the fix forms hold a count of items, each at least one byte (a map entry two).
_SIZED_HEADS = frozenset({0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6})


def _check_tree(name: str, head: bytes, length: int, level: int) -> None:
    """ValueError unless a tree row's numbers can describe a stored value: a head of one of
    the forms split_value writes, and a body length that head allows (equal to a str's or
    bin's length; at least an array's or map's item count), at a possible level."""
    if not 0 <= level <= TREE_LEVEL_MAX:
        raise ValueError(f"field {name!r}: tree level {level} is not within 0..{TREE_LEVEL_MAX}")
    if not head or head_length_or_none(head) != len(head):
        raise ValueError(f"field {name!r}: head {head.hex()} is not a str, bin, array or map head")
    first = head[0]
    if len(head) == 1:
        declared = first & (0x1F if 0xA0 <= first <= 0xBF else 0x0F)
    else:
        declared = int.from_bytes(head[1:], "big")
    if 0xA0 <= first <= 0xBF or first in _SIZED_HEADS:
        fits = length == declared
    else:
        fits = length >= (2 * declared if first <= 0x8F or first >= 0xDE else declared)
    if length < 1 or not fits:
        raise ValueError(f"field {name!r}: a body of {length} bytes under head {head.hex()}")


def children_of_fields_node(data: bytes, /, *, node_id: str) -> list[bytes]:
    """Every id a fields node references (child nodes, or the roots of its tree fields)."""
    level, rows = parse_fields_node(data, node_id=node_id)
    if level:
        return [child for _, child, _ in rows]
    return [entry.root for _, entry in rows if type(entry) is TreeField]


def children_of(data: bytes, /, *, node_id: str) -> list[bytes]:
    """Every id an interior node (index or fields node) references, one per reference."""
    if data[:1] == bytes((INDEX_TAG,)):
        return [child for child, _ in parse_index_node(data, node_id=node_id)[1]]
    return children_of_fields_node(data, node_id=node_id)


def iter_fields(
    root: bytes,
    fetch: Callable[[Sequence[bytes]], Mapping[bytes, bytes]],
    /,
    *,
    names: Iterable[str] | None = None,
) -> Iterator[tuple[str, Entry]]:
    """The entries of a fields tree in name order (only ``names`` when given).

    With ``names``, only the nodes on the paths to them are read.
    """
    wanted = None if names is None else frozenset(names)
    frontier = [root]
    while frontier:
        found = fetch(frontier)
        next_frontier: list[bytes] = []
        for node_id in frontier:
            level, rows = parse_fields_node(found[node_id], node_id=node_id.hex())
            if level == 0:
                for name, entry in rows:
                    if wanted is None or name in wanted:
                        yield name, entry
                continue
            if wanted is None:
                next_frontier.extend(child for _, child, _ in rows)
                continue
            firsts = [first for first, _, _ in rows]
            for index, (_, child, _) in enumerate(rows):
                upper = firsts[index + 1] if index + 1 < len(firsts) else None
                lower = firsts[index] if index else None
                if any(
                    (lower is None or name >= lower) and (upper is None or name < upper)
                    for name in wanted
                ):
                    next_frontier.append(child)
        frontier = next_frontier


def decode_value(head: bytes, chunks: Iterable[bytes | memoryview], /) -> Any:
    """The value whose encoding is ``head`` followed by the chunks of its body."""
    return codec.decode(b"".join((head, *chunks)))
