# statebag._cdc: FastCDC 2020 content-defined chunking and the chunk-and-hash pipeline.
#
# Compiler directives live in one place, setup.py: language_level=3, boundscheck=False,
# wraparound=False, cdivision=True, initializedcheck=False, embedsignature=True.
#
# Algorithm (FastCDC 2020, Xia et al.), for one chunk starting at offset 0 of p[0:n]:
#
#   if n <= MIN: the chunk is the whole rest (only ever the last chunk).
#   LIMIT  = min(n, MAX); NORMAL = min(AVG, LIMIT)
#   fp = 0; the first MIN bytes are skipped, never hashed ("cut-point skipping").
#   for i in MIN .. NORMAL-1: fp = (fp << 1) + GEAR[p[i]]  (mod 2**64); cut after i if fp & MASK_S == 0
#   for i in NORMAL .. LIMIT-1: same with MASK_L
#   otherwise cut at LIMIT.
#
# MASK_S has log2(AVG) + N ones and MASK_L log2(AVG) - N ones (normalized chunking level N,
# 0..3; format 1 is level 2), both ending at bit 59; GEAR and the masks come from
# statebag._gear, shared with the pure-Python twin, which scans byte by byte.
#
# Two-byte rolling: the loop consumes bytes a, b in one step. With x = fp << 2,
#   x + GEAR_LS[a]                   equals (hash after a) << 1, where GEAR_LS[v] = GEAR[v] << 1,
#   x + (GEAR_LS[a] + GEAR[b])       equals the hash after b.
# The first is tested against MASK << 1, which is exact because the masks leave bits 60..63
# clear, so the shifted-out bit can never be a mask bit. Adding the pair sum to x keeps one
# shift and one add on the loop-carried dependency per two bytes.
#
# Invariants (tests/test_chunking*.py check them on both twins):
#   - cut points depend only on the bytes and (MIN, AVG, MAX, seed, N), never on how the input
#     is batched or on the number of threads;
#   - every chunk but the last is at least MIN + 1 and at most MAX bytes long; offsets are
#     strictly increasing and the last equals len(data); empty input gives no chunk;
#   - cut_and_hash returns exactly the offsets of cut() and BLAKE3-256 of each chunk.
#   - a cut at offset e of a chunk starting at s depends only on p[s:e] and on whether the
#     data ends at e; so after an edit at offset P, every chunk of the old cut that ends at
#     e <= P with e < len(old) is also a chunk of the new cut, and cutting the new data from
#     the end of the last such chunk gives the rest (statebag.chunking.recut relies on this;
#     common_prefix finds P without the GIL).
#
# The scans run `with nogil`. Hashing goes through the blake3 package (one call per chunk,
# which needs the GIL to start). With threads > 1 a second thread scans the whole buffer
# without ever taking the GIL, publishing each cut through an atomic counter, while the
# calling thread hashes the chunks already cut.

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

import threading

from blake3 import blake3 as _blake3

from statebag import _gear

# With threads=1, cut_and_hash scans a batch and then hashes it: small enough that the batch
# is still in the L2 cache when it is hashed, large enough that leaving and re-entering nogil
# costs nothing measurable. Below PARALLEL_MIN_BYTES, a second thread would cost more to
# start than it saves.
cdef enum:
    BATCH_BYTES = 512 * 1024
    BATCH_CHUNKS = 1024
    PARALLEL_MIN_BYTES = 4 * 1024 * 1024


# common_prefix compares blocks with memcmp and looks for the first difference byte by byte
# only inside the first block that differs.
cdef enum:
    PREFIX_BLOCK = 4096


cdef size_t _common_prefix(const uint8_t* a, const uint8_t* b, size_t n) noexcept nogil:
    cdef size_t i = 0
    cdef size_t step
    while i < n:
        step = n - i if n - i < PREFIX_BLOCK else PREFIX_BLOCK
        if memcmp(a + i, b + i, step) != 0:
            while a[i] == b[i]:
                i += 1
            return i
        i += step
    return n


def common_prefix(a, b, /):
    """The length of the longest common prefix of two byte buffers."""
    cdef const uint8_t[::1] x = _gear.byte_view(a)
    cdef const uint8_t[::1] y = _gear.byte_view(b)
    cdef size_t n = min(x.shape[0], y.shape[0])
    cdef size_t result
    if n == 0:
        return 0
    with nogil:
        result = _common_prefix(&x[0], &y[0], n)
    return result


cdef struct _Params:
    size_t min_size
    size_t avg_size
    size_t max_size
    uint64_t mask_s
    uint64_t mask_l
    uint64_t gear[256]
    uint64_t gear_ls[256]


cdef inline size_t _find_cut(_Params* c, const uint8_t* p, size_t i, size_t end,
                             uint64_t* fp_io, uint64_t mask) noexcept nogil:
    """Offset just past the first byte of p[i:end] whose hash has no bit of mask, else 0.

    Eight bytes (four two-byte steps) per iteration: the unrolled body keeps one bounds check
    per eight bytes, which measured 10-15% faster than one per step.
    """
    cdef const uint64_t* gear = c.gear
    cdef const uint64_t* gear_ls = c.gear_ls
    cdef uint64_t fp = fp_io[0]
    cdef uint64_t mask_ls = mask << 1
    cdef uint64_t x, first
    cdef const uint8_t* q = p + i
    cdef const uint8_t* stop = p + end
    while q + 8 <= stop:
        x = fp << 2
        first = gear_ls[q[0]]
        if ((x + first) & mask_ls) == 0:
            return <size_t>(q - p) + 1
        fp = x + (first + gear[q[1]])
        if (fp & mask) == 0:
            return <size_t>(q - p) + 2
        x = fp << 2
        first = gear_ls[q[2]]
        if ((x + first) & mask_ls) == 0:
            return <size_t>(q - p) + 3
        fp = x + (first + gear[q[3]])
        if (fp & mask) == 0:
            return <size_t>(q - p) + 4
        x = fp << 2
        first = gear_ls[q[4]]
        if ((x + first) & mask_ls) == 0:
            return <size_t>(q - p) + 5
        fp = x + (first + gear[q[5]])
        if (fp & mask) == 0:
            return <size_t>(q - p) + 6
        x = fp << 2
        first = gear_ls[q[6]]
        if ((x + first) & mask_ls) == 0:
            return <size_t>(q - p) + 7
        fp = x + (first + gear[q[7]])
        if (fp & mask) == 0:
            return <size_t>(q - p) + 8
        q += 8
    while q < stop:
        fp = (fp << 1) + gear[q[0]]
        if (fp & mask) == 0:
            return <size_t>(q - p) + 1
        q += 1
    fp_io[0] = fp
    return 0


cdef inline size_t _chunk_length(_Params* c, const uint8_t* p, size_t remaining) noexcept nogil:
    if remaining <= c.min_size:
        return remaining
    cdef size_t limit = remaining if remaining < c.max_size else c.max_size
    cdef size_t normal = c.avg_size if c.avg_size < limit else limit
    cdef uint64_t fp = 0
    cdef size_t cut = _find_cut(c, p, c.min_size, normal, &fp, c.mask_s)
    if cut:
        return cut
    cut = _find_cut(c, p, normal, limit, &fp, c.mask_l)
    if cut:
        return cut
    return limit


cdef inline size_t _max_chunks(_Params* c, size_t n) noexcept nogil:
    # Every chunk but the last is longer than min_size.
    return n // (c.min_size + 1) + 1


cdef size_t _cut_batch(_Params* c, const uint8_t* p, size_t start, size_t n,
                       size_t* ends, size_t max_chunks, size_t max_bytes) noexcept nogil:
    """Cut chunks from start until max_chunks are found, max_bytes are passed or n is reached."""
    cdef size_t count = 0
    cdef size_t pos = start
    while pos < n and count < max_chunks and pos - start < max_bytes:
        pos += _chunk_length(c, p + pos, n - pos)
        ends[count] = pos
        count += 1
    return count


cdef extern from *:
    """
    #include <sched.h>
    static inline size_t statebag_load_acquire(const size_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void statebag_store_release(size_t* p, size_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    """
    size_t statebag_load_acquire(const size_t* p) noexcept nogil
    void statebag_store_release(size_t* p, size_t v) noexcept nogil
    int sched_yield() noexcept nogil


cdef struct _Scan:
    _Params* params
    const uint8_t* data
    size_t n
    size_t* ends        # ends[k] is written once, before published becomes > k
    size_t published    # number of ends written; only the scanning thread stores it
    size_t finished     # 1 once published is final


cdef void _scan_publishing(_Scan* s) noexcept nogil:
    cdef size_t pos = 0
    cdef size_t count = 0
    while pos < s.n:
        pos += _chunk_length(s.params, s.data + pos, s.n - pos)
        s.ends[count] = pos
        count += 1
        statebag_store_release(&s.published, count)
    statebag_store_release(&s.finished, 1)


cdef void _wait_beyond(_Scan* s, size_t seen) noexcept nogil:
    while statebag_load_acquire(&s.published) == seen and not statebag_load_acquire(&s.finished):
        sched_yield()


cdef class _ScanJob:
    """The scanning side of cut_and_hash(threads > 1): runs on its own thread, without the GIL.

    It never touches a Python object while scanning, so the hashing thread (which needs the
    GIL for every blake3 call) never waits for it, and it never waits for the GIL.
    """

    cdef _Scan scan
    cdef object owner   # keeps the buffer and the chunker alive while the thread runs

    def __cinit__(self, Chunker chunker, object view, size_t capacity):
        cdef const uint8_t[::1] data = view
        self.owner = (chunker, view)
        self.scan.params = &chunker._params
        self.scan.data = &data[0]
        self.scan.n = data.shape[0]
        self.scan.published = 0
        self.scan.finished = 0
        self.scan.ends = <size_t*>malloc(capacity * sizeof(size_t))
        if self.scan.ends == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.scan.ends)

    def run(self):
        with nogil:
            _scan_publishing(&self.scan)


cdef class Chunker:
    """FastCDC 2020 chunker with normalized chunking (level 2 unless told) (compiled).

    Immutable once built, so one instance may be shared by many threads.
    """

    cdef _Params _params
    cdef readonly object seed
    cdef readonly object normalization

    def __cinit__(self, min_size=_gear.DEFAULT_MIN_SIZE, avg_size=_gear.DEFAULT_AVG_SIZE,
                  max_size=_gear.DEFAULT_MAX_SIZE, seed=0, *,
                  normalization=_gear.DEFAULT_NORMALIZATION):
        _gear.check_params(min_size, avg_size, max_size, seed, normalization)
        self._params.min_size = min_size
        self._params.avg_size = avg_size
        self._params.max_size = max_size
        self._params.mask_s, self._params.mask_l = _gear.masks(avg_size, normalization)
        cdef int i
        for i, value in enumerate(_gear.gear_table(seed)):
            self._params.gear[i] = value
            self._params.gear_ls[i] = <uint64_t>value << 1
        self.seed = seed
        self.normalization = normalization

    @property
    def min_size(self):
        return self._params.min_size

    @property
    def avg_size(self):
        return self._params.avg_size

    @property
    def max_size(self):
        return self._params.max_size

    def __repr__(self):
        return (
            f"Chunker(min_size={self.min_size}, avg_size={self.avg_size}, "
            f"max_size={self.max_size}, seed={self.seed}, normalization={self.normalization})"
        )

    def gear_table(self):
        """The 256 gear values in use (for tests and the format spec)."""
        return [self._params.gear[i] for i in range(256)]

    def cut(self, data, /):
        """End offset of every chunk of ``data``; the last equals ``len(data)``."""
        cdef const uint8_t[::1] view = _gear.byte_view(data)
        cdef size_t n = view.shape[0]
        cdef size_t count
        if n == 0:
            return []
        cdef size_t capacity = _max_chunks(&self._params, n)
        cdef size_t* ends = <size_t*>malloc(capacity * sizeof(size_t))
        if ends == NULL:
            raise MemoryError()
        try:
            with nogil:
                count = _cut_batch(&self._params, &view[0], 0, n, ends, capacity, n)
            return [ends[k] for k in range(count)]
        finally:
            free(ends)

    def cut_and_hash(self, data, /, threads=1):
        """End offsets and the 32-byte BLAKE3 digest of every chunk, in one pass.

        With ``threads > 1`` (and at least 4 MiB of data) one thread scans while the calling
        thread hashes the chunks already cut; the results are identical to ``threads=1``.
        More than two threads would only contend for the GIL that every ``blake3`` call
        takes, so ``threads > 2`` behaves as ``threads=2``.
        """
        _gear.check_threads(threads)
        py_view = _gear.byte_view(data)
        cdef const uint8_t[::1] view = py_view
        cdef size_t n = view.shape[0]
        if n == 0:
            return [], []
        if threads > 1 and n >= PARALLEL_MIN_BYTES:
            return self._cut_and_hash_parallel(py_view, n)
        return self._cut_and_hash_serial(view, py_view)

    cdef tuple _cut_and_hash_serial(self, const uint8_t[::1] view, object py_view):
        cdef size_t n = view.shape[0]
        cdef size_t pos = 0
        cdef size_t count, k, end
        cdef list offsets = []
        cdef list digests = []
        cdef size_t ends[BATCH_CHUNKS]
        while pos < n:
            with nogil:
                count = _cut_batch(&self._params, &view[0], pos, n, ends, BATCH_CHUNKS, BATCH_BYTES)
            for k in range(count):
                end = ends[k]
                digests.append(_blake3(py_view[pos:end]).digest())
                offsets.append(end)
                pos = end
        return offsets, digests

    cdef tuple _cut_and_hash_parallel(self, object py_view, size_t n):
        # One thread scans (no GIL) and publishes each cut; this thread hashes right behind it.
        cdef _ScanJob job = _ScanJob(self, py_view, _max_chunks(&self._params, n))
        cdef _Scan* scan = &job.scan
        cdef size_t hashed = 0
        cdef size_t available, start = 0, end
        cdef list digests = []
        thread = threading.Thread(target=job.run, name="statebag-cdc-scan", daemon=True)
        thread.start()
        try:
            while True:
                available = statebag_load_acquire(&scan.published)
                if hashed == available:
                    if statebag_load_acquire(&scan.finished) and \
                            hashed == statebag_load_acquire(&scan.published):
                        break
                    with nogil:
                        _wait_beyond(scan, hashed)
                    continue
                while hashed < available:
                    end = scan.ends[hashed]
                    digests.append(_blake3(py_view[start:end]).digest())
                    start = end
                    hashed += 1
        finally:
            thread.join()
        return [scan.ends[k] for k in range(hashed)], digests
