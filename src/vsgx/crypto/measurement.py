"""MRENCLAVE: the SHA-256 over ECREATE, EADD and EEXTEND records (SDM
ECREATE, EADD, EEXTEND: their "Update MRENCLAVE" steps).

Each record is 64 bytes: an 8-byte tag, the page offset from the enclave
base, then the leaf's data:
  ECREATE  "ECREATE\\0" | SSAFRAMESIZE (u32) | SIZE (u64) | 44 zero bytes
  EADD     "EADD\\0\\0\\0\\0" | offset (u64) | SECINFO bytes 0..47
  EEXTEND  "EEXTEND\\0" | offset (u64) | 48 zero bytes, then the 256 bytes
A whole page measured by the loader is one EADD and sixteen EEXTENDs.

Runs of pages are assembled with NumPy into one buffer per batch, so that the
hash, not the Python loop, sets the speed (benchmarks/measure.py).
"""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np

from vsgx.arch.constants import PAGE_SIZE

EEXTEND_CHUNK = 256
CHUNKS_PER_PAGE = PAGE_SIZE // EEXTEND_CHUNK
RECORD_SIZE = 64
_ECREATE = struct.Struct("<8sIQ44x")
_EADD = struct.Struct("<8sQQ40x")
_EEXTEND = struct.Struct("<8sQ48x")
TAG_ECREATE = b"ECREATE\0"
TAG_EADD = b"EADD\0\0\0\0"
TAG_EEXTEND = b"EEXTEND\0"
# One measured page as hashed: EADD record, then 16 x (EEXTEND record + chunk).
_MEASURED_PAGE = RECORD_SIZE + CHUNKS_PER_PAGE * (RECORD_SIZE + EEXTEND_CHUNK)
_BATCH_PAGES = 256
# Unmeasured pages hash 64 bytes each: batches this large keep NumPy's
# per-batch cost below the hash's (millions of heap pages).
_EADD_ONLY_BATCH = 4096
_FEW_PAGES = 1  # batches this small are assembled as bytes
# One measured page's records as one struct: EADD, then 16 x (EEXTEND, chunk).
_EEXTEND_FORMAT = "8sQ48x256s"  # an EEXTEND record and its chunk
_MEASURED_PAGE_RECORDS = struct.Struct("<8sQQ40x" + _EEXTEND_FORMAT * CHUNKS_PER_PAGE)
# n EEXTENDs (record, chunk) as one struct, for n = 0..16.
_EEXTEND_RECORDS = [struct.Struct("<" + _EEXTEND_FORMAT * n) for n in range(CHUNKS_PER_PAGE + 1)]
# Offsets from a batch's first page, made once: of each page, and of each
# of its 256-byte chunks.
_PAGE_STEPS = np.arange(_BATCH_PAGES, dtype="<u8") * PAGE_SIZE
_EADD_ONLY_STEPS = np.arange(_EADD_ONLY_BATCH, dtype="<u8") * PAGE_SIZE
_CHUNK_STEPS = (_PAGE_STEPS.reshape(_BATCH_PAGES, 1)
                + np.arange(CHUNKS_PER_PAGE, dtype="<u8") * EEXTEND_CHUNK)
# Batch buffers, made once and lent to one batch at a time (any enclave, any
# thread): a batch writes every byte that is not a tag or a zero of its
# records. Free ones by kind: measured pages (True), EADD records alone.
_FREE_BUFFERS: dict[bool, list[np.ndarray]] = {True: [], False: []}
_buffers_lock = threading.Lock()


def _take_buffer(measured: bool, rows: int) -> np.ndarray:
    """A buffer of at least ``rows`` records: a free one if it is large
    enough, else a new one of the next power of two (an enclave's first
    batches are small ones, stacks and code: a whole batch's buffer would
    cost them its zeroing and page faults, 0.7 ms)."""
    with _buffers_lock:
        free = _FREE_BUFFERS[measured]
        if free and len(free[-1]) >= rows:
            return free.pop()
    size = min(1 << max(rows - 1, 15).bit_length(), _BATCH_PAGES if measured else _EADD_ONLY_BATCH)
    if measured:
        buf = np.zeros((size, _MEASURED_PAGE), np.uint8)
        buf[:, 0:8] = np.frombuffer(TAG_EADD, np.uint8)
        ext = buf[:, RECORD_SIZE:].reshape(size, CHUNKS_PER_PAGE, RECORD_SIZE + EEXTEND_CHUNK)
        ext[:, :, 0:8] = np.frombuffer(TAG_EEXTEND, np.uint8)
        return buf
    buf = np.zeros((size, RECORD_SIZE), np.uint8)
    buf[:, 0:8] = np.frombuffer(TAG_EADD, np.uint8)
    return buf


def _give_buffer(measured: bool, buffer: np.ndarray) -> None:
    with _buffers_lock:
        free = _FREE_BUFFERS[measured]
        free.append(buffer)
        free.sort(key=len)  # the largest last, where _take_buffer looks
        del free[:-4]  # a few per kind (threads hashing at once), the largest


def ecreate_record(ssaframesize: int, size: int) -> bytes:
    return _ECREATE.pack(TAG_ECREATE, ssaframesize, size)


def eadd_record(offset: int, secinfo_flags: int) -> bytes:
    # SECINFO bytes 0..47: FLAGS then reserved (zero) bytes.
    return _EADD.pack(TAG_EADD, offset, secinfo_flags)


def eextend_record(offset: int) -> bytes:
    return _EEXTEND.pack(TAG_EEXTEND, offset)


class MrEnclave:
    """An incremental MRENCLAVE, fed in the order the leaves execute."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def copy(self) -> MrEnclave:
        other = MrEnclave()
        other._hash = self._hash.copy()
        return other

    def ecreate(self, ssaframesize: int, size: int) -> None:
        self._hash.update(ecreate_record(ssaframesize, size))

    def eadd(self, offset: int, secinfo_flags: int) -> None:
        self._hash.update(eadd_record(offset, secinfo_flags))

    def eextend(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        if len(chunk) != EEXTEND_CHUNK:
            raise ValueError("EEXTEND measures 256 bytes")
        self._hash.update(eextend_record(offset))
        self._hash.update(chunk)

    def eextend_chunks(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """EEXTEND of each 256-byte chunk of ``data`` (at ``offset``,
        ``offset + 256``, ...), hashed as one string."""
        count, rest = divmod(len(data), EEXTEND_CHUNK)
        if rest or count > CHUNKS_PER_PAGE:
            raise ValueError("eextend_chunks takes up to a page of 256-byte chunks")
        fields: list[bytes | int] = []
        for n in range(count):
            fields += (TAG_EEXTEND, offset + n * EEXTEND_CHUNK,
                       bytes(data[n * EEXTEND_CHUNK:(n + 1) * EEXTEND_CHUNK]))
        self._hash.update(_EEXTEND_RECORDS[count].pack(*fields))

    def add_pages(self, offset: int, data: bytes | bytearray | memoryview, secinfo_flags: int,
                  measured: bool) -> None:
        """EADD each page of ``data`` at ``offset``, ``offset + 4096``, ...
        and, if ``measured``, EEXTEND all of it."""
        count, rest = divmod(len(data), PAGE_SIZE)
        if rest:
            raise ValueError("add_pages takes whole pages")
        source = np.frombuffer(data, np.uint8)
        for first in range(0, count, _BATCH_PAGES):
            n = min(_BATCH_PAGES, count - first)
            block = source[first * PAGE_SIZE:(first + n) * PAGE_SIZE]
            self._hash_batch(offset + first * PAGE_SIZE, n, secinfo_flags,
                             block.reshape(n, CHUNKS_PER_PAGE, EEXTEND_CHUNK) if measured else None)

    def add_uniform_pages(self, offset: int, count: int, page: bytes, secinfo_flags: int,
                          measured: bool) -> None:
        """Like add_pages for ``count`` copies of one page, without building them."""
        if len(page) != PAGE_SIZE:
            raise ValueError("a page is 4096 bytes")
        chunks = np.frombuffer(page, np.uint8).reshape(1, CHUNKS_PER_PAGE, EEXTEND_CHUNK)
        batch = _BATCH_PAGES if measured else _EADD_ONLY_BATCH
        for first in range(0, count, batch):
            n = min(batch, count - first)
            self._hash_batch(offset + first * PAGE_SIZE, n, secinfo_flags,
                             chunks if measured else None)

    def _hash_batch(self, offset: int, n: int, secinfo_flags: int,
                    chunks: np.ndarray | None) -> None:
        if n <= _FEW_PAGES:
            self._hash_few(offset, n, secinfo_flags, chunks)
            return
        base = np.uint64(offset)
        flags = np.frombuffer(struct.pack("<Q", secinfo_flags), np.uint8)
        buffer = _take_buffer(chunks is not None, n)
        try:
            out = buffer[:n]
            if chunks is None:
                out[:, 8:16] = (_EADD_ONLY_STEPS[:n] + base).view(np.uint8).reshape(n, 8)
                out[:, 16:24] = flags
                self._hash.update(out.data)
                return
            out[:, 8:16] = (_PAGE_STEPS[:n] + base).view(np.uint8).reshape(n, 8)
            out[:, 16:24] = flags
            extends = out[:, RECORD_SIZE:].reshape(n, CHUNKS_PER_PAGE,
                                                   RECORD_SIZE + EEXTEND_CHUNK)
            extends[:, :, 8:16] = (_CHUNK_STEPS[:n] + base).view(np.uint8).reshape(
                n, CHUNKS_PER_PAGE, 8)
            extends[:, :, RECORD_SIZE:] = chunks
            self._hash.update(out.data)
        finally:
            _give_buffer(chunks is not None, buffer)

    def _hash_few(self, offset: int, n: int, secinfo_flags: int,
                  chunks: np.ndarray | None) -> None:
        """A batch of a page or two as bytes (NumPy's cost per batch is more
        than their hash): the same records, in the same order."""
        for i in range(n):
            page = offset + i * PAGE_SIZE
            if chunks is None:
                self.eadd(page, secinfo_flags)
                continue
            data = chunks[i if len(chunks) > 1 else 0].tobytes()
            fields: list[bytes | int] = [TAG_EADD, page, secinfo_flags]
            for chunk in range(0, PAGE_SIZE, EEXTEND_CHUNK):
                fields += (TAG_EEXTEND, page + chunk, data[chunk:chunk + EEXTEND_CHUNK])
            self._hash.update(_MEASURED_PAGE_RECORDS.pack(*fields))

    def digest(self) -> bytes:
        """The MRENCLAVE value EINIT would finalise now."""
        return self._hash.digest()
