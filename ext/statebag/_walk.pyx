# statebag._walk: the validation walk codec.encode runs before msgspec sees a value, and the
# nesting scan codec.decode runs before msgspec decodes one.
#
# Compiler directives live in one place, setup.py: language_level=3, boundscheck=False,
# wraparound=False, cdivision=True, initializedcheck=False, embedsignature=True.
#
# Two functions, each the compiled twin of a function in statebag.codec:
#
#   quick_check(value, max_depth)   twin of codec._quick_check   (values, before encoding)
#   msgpack_depth(data, limit)      twin of codec._msgpack_depth (bytes, before decoding)
#
# ---- quick_check -----------------------------------------------------------------------------
#
# quick_check(value, max_depth) is the compiled twin of statebag.codec._quick_check: True when
# msgspec may encode `value` as it is, False when msgspec would silently change something in it
# or the nesting is too deep. Both twins must give the same answer for every value
# (tests/test_walk.py checks them against each other). Rules, for an item met at level L
# (the root is at level 1, a container's children one level below the container):
#
#   - exact str, int, float, bool, None, bytes, bytearray, memoryview: accepted;
#   - exact dict (its values; keys are msgspec's business), list, tuple: a container;
#   - an Enum member: refused, before the subclass rules (so IntEnum and StrEnum are refused);
#   - a dict or list subclass: a container, walked through the base type's storage;
#   - another str, int or float subclass: accepted (the encoder turns it into the base type);
#   - anything else (tuple subclasses, set, datetime, Struct, dataclass, ...): refused.
#   - A container at level L holding at least one child that is not an exact leaf is refused
#     when L > max_depth; a container of exact leaves only never is. A cycle is refused
#     through this bound. Int ranges, str contents and dict keys are not looked at: msgspec
#     refuses what is wrong there by itself.
#
# Walk: an explicit stack of frames (container, position), never C recursion, at most
# max_depth frames. Entering a container, a tight loop skips leaves by comparing Py_TYPE
# with the eight exact leaf types, a few ns per item; the first other child is examined one
# level down, then the container's remaining children one at a time. The order of work
# follows the twin's, so the same type tests run on the same objects in the same order.
#
# Faithful to the twin where Python code can run: a type whose metaclass is not `type` may
# define __eq__ and __hash__, so for it leaf membership goes through the same frozenset as
# `type(x) in _LEAVES`; subclass tests use PyObject_IsInstance, which is what isinstance()
# calls, __class__ fallback included (Cython's own isinstance(x, dict) would not look at
# __class__). Dicts advance with PyDict_Next under the checks a dict iterator makes, raising
# the same RuntimeError when the dict changes during the walk.
#
# The walk holds the GIL throughout: it reads Python objects, and its slow path can run
# Python code (__class__ properties, metaclass __eq__/__hash__), which may mutate a container
# under walk, as may another thread getting the GIL meanwhile. Memory-safe because:
#   - every container on the stack, and the item being examined, is a strong reference, so
#     nothing the walk still reads can be freed under it;
#   - list and tuple sizes are read at every step, never cached, exactly as list iterators do,
#     so a list that shrinks ends its loop instead of being read past its end;
#   - a dict's size is compared at every step with its size at entry; PyDict_Next bounds
#     the position by the dict's current table;
#   - a borrowed reference (PyList_GET_ITEM, PyTuple_GET_ITEM, PyDict_Next) is used only
#     before anything that can run Python code, or after a Py_INCREF. The fast path
#     allocates nothing, so not even the garbage collector runs inside it.

# ---- msgpack_depth ---------------------------------------------------------------------------
#
# msgpack_depth(data, limit) -> (depth, error, offset) reads MessagePack bytes as one value
# and reports how deeply its arrays and maps nest, without building anything: msgspec's
# decoder recurses once per level, so a crafted buffer nested deeper than the Python
# recursion limit would raise RecursionError, and deeper than the C stack (under a raised
# limit) crash the process. The scan is what lets codec.decode refuse such a buffer first.
#
#   depth   the largest nesting level seen: 0 for a scalar, 1 for [] or [1], 2 for [[1]], ...;
#   error   0 (the buffer is one well-formed value nested at most `limit` deep), or the first
#           problem met: 1 a container at a level past `limit`, 2 the buffer ends inside a
#           value, 3 a type byte the format never writes (0xc1, the ext families), 4 a map
#           key that is not a str, 5 bytes after the value;
#   offset  where the problem is (the type byte; the end for 2; the first extra byte for 5).
#
# Walk: one pass over the type bytes, skipping str/bin payloads and fixed-size scalars by
# their lengths. An explicit stack holds, per open container, the number of items it still
# owes (twice the entry count for a map, so an even count means a key comes next); a
# container is pushed when its header is read (a level check first) and popped when it owes
# nothing. Every item consumes at least one byte, so the loop runs at most len(data) times
# whatever counts a crafted header claims, and the stack never holds more than limit + 1
# frames (one for the top-level value). Lengths and counts are read as unsigned 32-bit at
# most and compared with the bytes left before any use, so nothing reads past the buffer.
# The loop touches only C memory: it runs without the GIL.

from cpython.object cimport PyObject, PyObject_IsInstance, PyTypeObject
from cpython.set cimport PySet_Contains
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

from enum import Enum

cdef extern from "Python.h":
    PyTypeObject PyUnicode_Type
    PyTypeObject PyFloat_Type
    PyTypeObject PyLong_Type
    PyTypeObject PyBool_Type
    PyTypeObject PyBytes_Type
    PyTypeObject PyByteArray_Type
    PyTypeObject PyMemoryView_Type
    PyTypeObject PyDict_Type
    PyTypeObject PyList_Type
    PyTypeObject PyTuple_Type
    PyTypeObject PyType_Type
    # Declared on PyObject* rather than object: Cython then adds no reference counting of
    # its own, and every reference taken or dropped below is an explicit one.
    PyTypeObject* _type_of "Py_TYPE"(PyObject* o) noexcept
    void _incref "Py_INCREF"(PyObject* o) noexcept
    void _decref "Py_DECREF"(PyObject* o) noexcept
    Py_ssize_t _list_size "PyList_GET_SIZE"(PyObject* o) noexcept
    PyObject* _list_item "PyList_GET_ITEM"(PyObject* o, Py_ssize_t i) noexcept
    Py_ssize_t _tuple_size "PyTuple_GET_SIZE"(PyObject* o) noexcept
    PyObject* _tuple_item "PyTuple_GET_ITEM"(PyObject* o, Py_ssize_t i) noexcept
    Py_ssize_t _dict_size "PyDict_GET_SIZE"(PyObject* o) noexcept
    int _dict_next "PyDict_Next"(PyObject* o, Py_ssize_t* pos, PyObject** key,
                                 PyObject** value) noexcept
    bint _is_dict "PyDict_Check"(PyObject* o) noexcept
    bint _is_list "PyList_Check"(PyObject* o) noexcept

# Must equal statebag.codec._LEAVES (a test compares them through leaf_types()).
cdef frozenset _LEAVES = frozenset(
    {str, int, float, bool, type(None), bytes, bytearray, memoryview}
)
cdef PyTypeObject* _NONE_TYPE = _type_of(<PyObject*>None)
cdef object _ENUM = Enum
cdef tuple _SCALARS = (str, int, float)
cdef object _DICT = dict
cdef object _LIST = list
# Called only on objects whose __class__ claims dict or list without being one: they raise
# the TypeError the twin's dict.values(item) and list.__iter__(item) raise.
cdef object _dict_values = dict.values
cdef object _list_iter = list.__iter__

cdef enum:
    LEAF = 0
    REFUSED = 1
    DICT = 2
    LIST = 3
    TUPLE = 4
    FIRST_CAPACITY = 32


cdef struct _Frame:
    PyObject* obj       # the container, a strong reference once pushed
    Py_ssize_t pos      # next index (list, tuple) or PyDict_Next position (dict)
    Py_ssize_t used     # dict: its size on entry, as a dict iterator records it
    Py_ssize_t left     # dict: values it may still yield, as a dict iterator counts them
    int kind


cdef struct _Stack:
    _Frame* frames
    Py_ssize_t n
    Py_ssize_t capacity
    PyObject* item      # the item being examined, a strong reference, or NULL


cdef inline bint _exact_leaf(PyTypeObject* t) noexcept:
    # Most frequent first: the text and number leaves of a JSON-like state.
    return (
        t is &PyUnicode_Type
        or t is &PyFloat_Type
        or t is &PyLong_Type
        or t is &PyBool_Type
        or t is _NONE_TYPE
        or t is &PyBytes_Type
        or t is &PyByteArray_Type
        or t is &PyMemoryView_Type
    )


cdef int _in_leaves(object item) except -1:
    # The caller holds `item`; the type is held here because a metaclass __eq__ may reassign
    # item.__class__ and drop the last other reference to it in the middle of the lookup.
    cdef object kind = type(item)
    return PySet_Contains(_LEAVES, kind)


cdef int _unless_leaf(PyObject* p, PyObject** out) except -1:
    """Slow leaf test, for a type whose metaclass is not `type`: the twin's frozenset lookup.

    1 with a new reference to p in out[0] when p is not a leaf, else 0.
    """
    # Held across the lookup, which may run Python code dropping p's other references.
    cdef object item = <object>p
    if _in_leaves(item):
        return 0
    _incref(p)
    out[0] = p
    return 1


cdef int _classify_other(object item) except -1:
    """The twin's isinstance chain, for items of no exact container or leaf type."""
    if PyObject_IsInstance(item, _ENUM):
        return REFUSED
    if PyObject_IsInstance(item, _DICT):
        if not _is_dict(<PyObject*>item):
            _dict_values(item)
            raise TypeError(f"{type(item).__qualname__} claims to be a dict but is not one")
        return DICT
    if PyObject_IsInstance(item, _LIST):
        if not _is_list(<PyObject*>item):
            _list_iter(item)
            raise TypeError(f"{type(item).__qualname__} claims to be a list but is not one")
        return LIST
    if PyObject_IsInstance(item, _SCALARS):
        return LEAF
    return REFUSED


cdef inline int _classify(PyObject* item) except -1:
    """LEAF, REFUSED or the container kind of `item`, which the caller holds."""
    cdef PyTypeObject* t = _type_of(item)
    # Containers first: most items examined here are containers, most leaves having been
    # skipped by the tight loops. The exact types are disjoint, so the order changes nothing.
    if t is &PyDict_Type:
        return DICT
    if t is &PyList_Type:
        return LIST
    if _exact_leaf(t):
        return LEAF
    if t is &PyTuple_Type:
        return TUPLE
    # Exact dict, list and tuple have metaclass `type`, so testing them before leaf
    # membership gives what the twin's membership-first order gives.
    if _type_of(<PyObject*>t) is not &PyType_Type and _in_leaves(<object>item):
        return LEAF
    return _classify_other(<object>item)


cdef inline int _dict_step(_Frame* f, PyObject** value) except -1:
    """One step of a dict values iterator: 1 and a borrowed value, 0 at the end."""
    cdef PyObject* key
    if _dict_size(f.obj) != f.used:
        raise RuntimeError("dictionary changed size during iteration")
    if not _dict_next(f.obj, &f.pos, &key, value):
        return 0
    if f.left == 0:
        raise RuntimeError("dictionary keys changed during iteration")
    f.left -= 1
    return 1


cdef inline int _found(PyObject* p, PyObject** out) except -1:
    """For a child of no exact leaf type: 1 with a new reference to it, 0 if still a leaf.

    Only a type whose metaclass is not `type` can still be a leaf, by the frozenset lookup.
    """
    if _type_of(<PyObject*>_type_of(p)) is &PyType_Type:
        _incref(p)
        out[0] = p
        return 1
    return _unless_leaf(p, out)


# One loop per container kind, so that the list and tuple loops keep their index and size in
# registers: nothing in their fast path calls out or writes memory.

cdef int _first_other_list(_Frame* f, PyObject** out) except -1:
    cdef PyObject* seq = f.obj
    cdef Py_ssize_t i = f.pos
    cdef PyObject* p
    while i < _list_size(seq):
        p = _list_item(seq, i)
        i += 1
        if _exact_leaf(_type_of(p)):
            continue
        f.pos = i
        if _found(p, out):
            return 1
    f.pos = i
    return 0


cdef int _first_other_tuple(_Frame* f, PyObject** out) except -1:
    cdef PyObject* seq = f.obj
    cdef Py_ssize_t i = f.pos
    cdef PyObject* p
    while i < _tuple_size(seq):
        p = _tuple_item(seq, i)
        i += 1
        if _exact_leaf(_type_of(p)):
            continue
        f.pos = i
        if _found(p, out):
            return 1
    f.pos = i
    return 0


cdef int _first_other_dict(_Frame* f, PyObject** out) except -1:
    cdef PyObject* p
    while _dict_step(f, &p):
        if _exact_leaf(_type_of(p)):
            continue
        if _found(p, out):
            return 1
    return 0


cdef inline int _first_other(_Frame* f, PyObject** out) except -1:
    """Skip leaves from f.pos; 1 with a new reference to the first other child, 0 at the end."""
    if f.kind == LIST:
        return _first_other_list(f, out)
    if f.kind == TUPLE:
        return _first_other_tuple(f, out)
    return _first_other_dict(f, out)


cdef int _next_child(_Frame* f, PyObject** out) except -1:
    """1 with a new reference to the next child of f, whatever its type; 0 at the end."""
    cdef PyObject* p
    if f.kind == LIST:
        if f.pos >= _list_size(f.obj):
            return 0
        p = _list_item(f.obj, f.pos)
        f.pos += 1
    elif f.kind == TUPLE:
        if f.pos >= _tuple_size(f.obj):
            return 0
        p = _tuple_item(f.obj, f.pos)
        f.pos += 1
    elif not _dict_step(f, &p):
        return 0
    _incref(p)
    out[0] = p
    return 1


cdef int _reserve(_Stack* st) except -1:
    cdef Py_ssize_t capacity
    cdef _Frame* frames
    if st.n < st.capacity:
        return 0
    capacity = st.capacity * 2 if st.capacity else FIRST_CAPACITY
    frames = <_Frame*>realloc(st.frames, <size_t>capacity * sizeof(_Frame))
    if frames == NULL:
        raise MemoryError()
    st.frames = frames
    st.capacity = capacity
    return 0


cdef void _release(_Stack* st) noexcept:
    # Each pointer is cleared before its DECREF, which may run a finalizer.
    cdef PyObject* p = st.item
    st.item = NULL
    if p != NULL:
        _decref(p)
    while st.n > 0:
        st.n -= 1
        _decref(st.frames[st.n].obj)
    free(st.frames)
    st.frames = NULL
    st.capacity = 0


cdef int _run(_Stack* st, Py_ssize_t max_depth) except -1:
    """1 when everything under st.item passes, 0 at the first refusal."""
    cdef _Frame entering
    cdef PyObject* item
    cdef PyObject* child
    cdef int kind
    while True:
        item = st.item
        if item != NULL:
            # Examine item at level st.n + 1; st.item owns it meanwhile.
            kind = _classify(item)
            if kind == REFUSED:
                return 0
            if kind != LEAF:
                entering.obj = item
                entering.pos = 0
                entering.kind = kind
                if kind == DICT:
                    entering.used = entering.left = _dict_size(item)
                # Room for a frame before a child is owned, so MemoryError cannot leak it.
                if st.n < max_depth:
                    _reserve(st)
                if _first_other(&entering, &child):
                    if st.n >= max_depth:
                        _decref(child)
                        return 0
                    st.frames[st.n] = entering  # takes over st.item's reference
                    st.n += 1
                    st.item = child
                    continue
            st.item = NULL
            _decref(item)
        if st.n == 0:
            return 1
        if _next_child(&st.frames[st.n - 1], &child):
            st.item = child
        else:
            st.n -= 1
            _decref(st.frames[st.n].obj)


def quick_check(value, Py_ssize_t max_depth) -> bool:
    """True when msgspec may encode ``value`` as it is; the twin of codec._quick_check."""
    cdef _Stack st
    st.frames = NULL
    st.n = 0
    st.capacity = 0
    _incref(<PyObject*>value)
    st.item = <PyObject*>value
    try:
        return _run(&st, max_depth) == 1
    finally:
        _release(&st)


def leaf_types():
    """The exact types accepted without a look inside (for tests: must equal codec's)."""
    return _LEAVES


# ---- msgpack_depth ---------------------------------------------------------------------------

cdef enum:
    SCAN_OK = 0
    SCAN_TOO_DEEP = 1
    SCAN_TRUNCATED = 2
    SCAN_BAD_TYPE = 3
    SCAN_KEY_NOT_STR = 4
    SCAN_TRAILING = 5
    # Far above any limit the codec asks for; bounds the one allocation below.
    SCAN_LIMIT_MAX = 1 << 20

# Set in a frame's count for a map. Counts stay below 2**33 (twice a 32-bit entry count), so
# the bit never meets them, and the parity of the count is untouched by it.
cdef uint64_t _MAP = (<uint64_t>1) << 63


cdef struct _Scan:
    Py_ssize_t depth
    Py_ssize_t offset
    int error


cdef inline uint64_t _be(const uint8_t* p, int width) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(width):
        value = (value << 8) | p[i]
    return value


cdef inline bint _is_str(uint8_t b) noexcept nogil:
    return 0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB


# Per type byte: what it starts (K_*) and a number: a fixed item's size, or the byte width of
# a str/bin length or of a container's count (0 for the fix forms, whose count is in b & 0x0f).
cdef enum:
    K_FIXED = 0
    K_SIZED = 1
    K_ARRAY = 2
    K_MAP = 3
    K_BAD = 4

cdef uint8_t _KIND[256]
cdef uint8_t _ARG[256]


cdef void _fill_tables() noexcept:
    cdef int b
    for b in range(256):
        _KIND[b] = K_BAD
        _ARG[b] = 0
        if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            _KIND[b] = K_FIXED
            _ARG[b] = 1
        elif b <= 0x8F:
            _KIND[b] = K_MAP
        elif b <= 0x9F:
            _KIND[b] = K_ARRAY
        elif b <= 0xBF:
            _KIND[b] = K_FIXED
            _ARG[b] = 1 + (b & 0x1F)
        elif b == 0xC4 or b == 0xD9:
            _KIND[b] = K_SIZED
            _ARG[b] = 1
        elif b == 0xC5 or b == 0xDA:
            _KIND[b] = K_SIZED
            _ARG[b] = 2
        elif b == 0xC6 or b == 0xDB:
            _KIND[b] = K_SIZED
            _ARG[b] = 4
        elif b == 0xCC or b == 0xD0:
            _KIND[b] = K_FIXED
            _ARG[b] = 2
        elif b == 0xCD or b == 0xD1:
            _KIND[b] = K_FIXED
            _ARG[b] = 3
        elif b == 0xCA or b == 0xCE or b == 0xD2:
            _KIND[b] = K_FIXED
            _ARG[b] = 5
        elif b == 0xCB or b == 0xCF or b == 0xD3:
            _KIND[b] = K_FIXED
            _ARG[b] = 9
        elif b == 0xDC or b == 0xDD:
            _KIND[b] = K_ARRAY
            _ARG[b] = 2 if b == 0xDC else 4
        elif b == 0xDE or b == 0xDF:
            _KIND[b] = K_MAP
            _ARG[b] = 2 if b == 0xDE else 4


_fill_tables()


cdef void _scan(const uint8_t* p, Py_ssize_t n, Py_ssize_t limit, uint64_t* owed,
                _Scan* out) noexcept nogil:
    """Fill `out` for the value in p[0:n]; `owed` has room for limit + 1 frames."""
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t top = 0         # owed[top]: the innermost open container (0: the top level)
    cdef uint64_t count, size
    cdef int width, kind
    cdef uint8_t b
    owed[0] = 1
    out.depth = 0
    out.offset = 0
    out.error = SCAN_OK
    while True:
        while (owed[top] & ~_MAP) == 0:
            top -= 1
            if top < 0:
                if pos != n:
                    out.error = SCAN_TRAILING
                    out.offset = pos
                return
        if pos >= n:
            out.error = SCAN_TRUNCATED
            out.offset = n
            return
        b = p[pos]
        if (owed[top] & _MAP) and (owed[top] & 1) == 0 and not _is_str(b):
            out.error = SCAN_KEY_NOT_STR
            out.offset = pos
            return
        owed[top] -= 1
        kind = _KIND[b]
        width = _ARG[b]
        if kind == K_FIXED:
            size = width
        elif kind == K_SIZED:
            if n - pos < 1 + width:
                out.error = SCAN_TRUNCATED
                out.offset = n
                return
            size = 1 + width + _be(p + pos + 1, width)
        elif kind == K_BAD:  # 0xc1, and the ext families 0xc7..0xc9 and 0xd4..0xd8
            out.error = SCAN_BAD_TYPE
            out.offset = pos
            return
        else:
            size = 1 + width
            if width == 0:
                count = b & 0x0F
            elif <uint64_t>(n - pos) < size:
                out.error = SCAN_TRUNCATED
                out.offset = n
                return
            else:
                count = _be(p + pos + 1, width)
            if top + 1 > limit:
                out.error = SCAN_TOO_DEEP
                out.offset = pos
                return
            top += 1
            if top > out.depth:
                out.depth = top
            owed[top] = (2 * count) | _MAP if kind == K_MAP else count
        if size > <uint64_t>(n - pos):
            out.error = SCAN_TRUNCATED
            out.offset = n
            return
        pos += <Py_ssize_t>size


def msgpack_depth(data, Py_ssize_t limit) -> tuple:
    """(depth, error, offset) of the MessagePack value in ``data``; the twin of
    codec._msgpack_depth."""
    cdef const uint8_t[::1] view = data
    cdef Py_ssize_t n = view.shape[0]
    cdef const uint8_t* p = &view[0] if n else NULL
    cdef uint64_t* owed
    cdef _Scan out
    if not 0 <= limit <= SCAN_LIMIT_MAX:
        raise ValueError(f"limit must be from 0 to {SCAN_LIMIT_MAX}, not {limit}")
    owed = <uint64_t*>malloc(<size_t>(limit + 1) * sizeof(uint64_t))
    if owed == NULL:
        raise MemoryError()
    try:
        with nogil:
            _scan(p, n, limit, owed, &out)
    finally:
        free(owed)
    return (out.depth, out.error, out.offset)
