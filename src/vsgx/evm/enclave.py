"""An enclave's state inside the EVM: the SECS with its hidden fields (SDM
"SGX Enclave Control Structure (SECS)": EID, MRENCLAVE update state,
PADDING, child count...), its memory, the linear-page → EPC-page map, the
page-table permissions the application set, and the epoch tracking of
ETRACK (SDM ETRACK).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vsgx.arch.constants import PAGE_SIZE, Attribute
from vsgx.crypto.keys import PKCS1_PADDING
from vsgx.crypto.measurement import MrEnclave
from vsgx.evm.epc import EpcmEntry
from vsgx.image.plan import PageRunSet

if TYPE_CHECKING:  # vsgx.evm.executor imports this module
    from vsgx.evm.executor import Closable, ThreadExecutor

PROT_R, PROT_W, PROT_X = 1, 2, 4
_ZERO_PAGE = bytes(PAGE_SIZE)
# plain ints: an int & an IntFlag member runs the enum's __and__ in Python (2 us)
_INIT, _DEBUG = int(Attribute.INIT), int(Attribute.DEBUG)
PROT_ALL = PROT_R | PROT_W | PROT_X
# Page changes an enclave remembers for its executors' incremental syncs;
# an executor further behind re-reads every page.
JOURNAL_LIMIT = 4096


class EnclaveMemory:
    """The enclave's linear range, backed by a sparse memfd: page contents
    of EPC pages live here at their offset from BASEADDR. Shared mappings
    let an executor (a Unicorn engine, or a native runner process) see the
    same bytes."""

    def __init__(self, size: int, hold_limit: int = 4096):
        self.size = size
        self.fd = os.memfd_create("vsgx-enclave", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, OverflowError, ValueError) as exc:
            os.close(self.fd)
            raise MemoryError(f"the EVM cannot map an ELRANGE of {size:#x} bytes "
                              f"({size >> 20} MiB): {exc}") from None
        self.view = memoryview(self.map)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        # Offsets of pages that left the EPC whose memory is still held, in
        # the order they left (see release).
        self._held: dict[int, None] = {}
        self.hold_limit = max(self.RELEASE_BATCH, hold_limit)
        self.punched = 0

    def page(self, offset: int) -> memoryview:
        return self.view[offset:offset + PAGE_SIZE]

    RELEASE_BATCH = 64
    FILL_BLOCK = 256  # pages written per slice by fill()

    def release(self, offset: int) -> None:
        """A page left the EPC (EWB, EREMOVE). Its memory is kept for a
        while: a page that comes back soon (ELDU) is written where memory
        already is — a fresh page of a memfd costs a fault that takes longer
        than the AES-GCM of the page. Past ``hold_limit`` held pages the
        oldest are given back to the host, a batch per madvise. Nobody sees
        a held page: no EPCM entry maps it, and whoever takes it next
        rewrites all of it (ELDU, EADD, EAUG)."""
        self.release_pages((offset,))

    def release_pages(self, offsets: Iterable[int]) -> None:
        """release() of each offset in turn (a batch of EWB)."""
        held = self._held
        for offset in offsets:
            held[offset] = None
        while len(held) > self.hold_limit:
            oldest = []
            for key in held:
                oldest.append(key)
                if len(oldest) == self.RELEASE_BATCH:
                    break
            for key in oldest:
                del held[key]
            self._punch_offsets(oldest)

    def discard(self, offset: int) -> None:
        """A page whose contents must go at once (what a failed ELDU
        decrypted before its MAC said no): given back to the host, so it
        reads as zeros and holds no memory."""
        self._held.pop(offset, None)
        self._punch(offset, PAGE_SIZE)

    def reuse(self, offset: int) -> None:
        self._held.pop(offset, None)

    def reuse_pages(self, offsets: Iterable[int]) -> None:
        """reuse() of each offset (a batch of ELDU)."""
        held = self._held
        if held:
            for offset in offsets:
                held.pop(offset, None)

    def _punch_offsets(self, offsets: list[int]) -> None:
        start = previous = None
        for offset in [*sorted(offsets), None]:
            if start is not None and offset == previous + PAGE_SIZE:  # type: ignore[operator]
                previous = offset
                continue
            if start is not None:
                self._punch(start, previous + PAGE_SIZE - start)  # type: ignore[operator]
            start = previous = offset
        self.punched += len(offsets)

    def fill_from(self, offset: int, data: bytes | memoryview) -> None:
        """Write whole pages of ``data`` from ``offset`` on."""
        held = self._held
        if held:
            for position in range(offset, offset + len(data), PAGE_SIZE):
                held.pop(position, None)
        self._write(offset, data)

    def fill(self, offset: int, count: int, page: bytes) -> None:
        """Write ``count`` copies of one page from ``offset`` on. Zeros are
        written only where memory is held: every other page of the memfd
        reads as zero already (never written, or given back)."""
        held = self._held
        if page == _ZERO_PAGE:  # a memcmp (bytes.count(0) takes ~30 us a page)
            if held:
                for position in range(offset, offset + count * PAGE_SIZE, PAGE_SIZE):
                    if held.pop(position, 0) is None:
                        self.view[position:position + PAGE_SIZE] = page
            return
        if held:
            for position in range(offset, offset + count * PAGE_SIZE, PAGE_SIZE):
                held.pop(position, None)
        block = memoryview(page * min(count, self.FILL_BLOCK))
        end = offset + count * PAGE_SIZE
        for position in range(offset, end, len(block)):
            self._write(position, block[:min(len(block), end - position)])

    def _write(self, offset: int, data: bytes | memoryview) -> None:
        """Write through the file, not the mapping: a fresh page of the memfd
        then costs no fault in this process (160 stack pages: 0.47 ms through
        the mapping, 0.17 ms by pwrite), and whoever maps it sees the bytes."""
        data = memoryview(data).cast("B")
        while data:
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def _punch(self, offset: int, length: int) -> None:
        try:
            self.map.madvise(mmap.MADV_REMOVE, offset, length)
        except (AttributeError, OSError):
            self.view[offset:offset + length] = bytes(length)

    def close(self) -> None:
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # an executor still holds a pointer; the memory goes with it
        os.close(self.fd)


@dataclass
class EnclaveState:
    secs_page: int
    eid: int
    base: int
    size: int
    ssaframesize: int
    miscselect: int
    attributes: int
    xfrm: int
    configid: bytes = bytes(64)
    configsvn: int = 0
    cet_attributes: int = 0
    mrenclave_builder: MrEnclave | None = field(default_factory=MrEnclave)
    mrenclave: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    isvprodid: int = 0
    isvsvn: int = 0
    isvfamilyid: bytes = bytes(16)
    isvextprodid: bytes = bytes(16)
    padding: bytes = bytes(352)
    child_count: int = 0
    memory: EnclaveMemory | None = None
    # linear page address -> EPCM entry of the page mapped there
    pages: dict[int, EpcmEntry] = field(default_factory=dict)
    # application page-table permissions of linear pages (default: all)
    pte: dict[int, int] = field(default_factory=dict)
    epoch: int = 0
    tracked_epoch: int = -1
    # TCS of each logical processor inside the enclave -> its entry epoch
    inside: dict[int, int] = field(default_factory=dict)
    # bumped whenever EPCM or page-table permissions of a page change
    generation: int = 0
    # fast-exit mode (vsgx.evm.fast_exits): the ENCLUs rewritten into INT3,
    # the runner's exit gate page (0: none) and its entries in use (entry
    # address -> the EEXIT ENCLU that jumps there)
    exit_sites: frozenset[int] = frozenset()
    exit_gate: int = 0
    exit_gates: dict[int, int] = field(default_factory=dict)
    # the pages behind generation bumps, in order (see note_change), from
    # change number journal_start on
    journal: list[int] = field(default_factory=list)
    journal_start: int = 0
    # pages EADDed as uniform runs that have no EPC page yet (linear page ->
    # (SECINFO.FLAGS, fill page)); EADD hashed them in order, and the first
    # touch loads them as ELDU would (see encls.eadd_uniform)
    deferred: PageRunSet[tuple[int, int]] = field(default_factory=PageRunSet)
    # The accessed bits of the application's page-table entries for ELRANGE,
    # kept inverted: pages whose bit the driver cleared (age) and no access
    # has set since. Clearing one is a change executors hear of (they drop
    # their TLB); an executor that tracks access reports the first touch
    # after it (touch), as the page walk on a TLB miss sets the bit.
    old: set[int] = field(default_factory=set)
    # called after every change of ``generation`` (native runners that
    # enter on their own hold grants that such a change revokes)
    on_change: list[Callable[[], None]] = field(default_factory=list)
    # executors keep per-TCS state here (see vsgx.evm.thread)
    threads: dict[int, Closable] = field(default_factory=dict)  # TCS -> EnclaveThread
    exec_lock: threading.Lock = field(default_factory=threading.Lock)
    running: ThreadExecutor | None = None  # the executor holding exec_lock
    # an executor started ahead, for the first TCS that needs one (native
    # runners: NativeExecutorFactory.prepare); it goes with the enclave
    spare_executor: Closable | None = None

    @property
    def initialized(self) -> bool:
        return bool(self.attributes & _INIT)

    @property
    def debug(self) -> bool:
        return bool(self.attributes & _DEBUG)

    def in_elrange(self, address: int, length: int = 1) -> bool:
        return self.base <= address and address + length <= self.base + self.size

    def page_view(self, linaddr: int) -> memoryview:
        assert self.memory is not None
        return self.memory.page(linaddr - self.base)

    def pte_permissions(self, page: int) -> int:
        return self.pte.get(page, PROT_ALL)

    def age(self, pages: list[int]) -> list[bool]:
        """Test and clear the accessed bit of each page (the reclaimer's
        ptep_test_and_clear_young): True where the page was touched since
        its bit was last cleared (a page's bit starts clear when it gets
        its EPC page)."""
        old, resident = self.old, self.pages
        result = []
        for page in pages:
            if page not in resident:
                result.append(False)
                continue
            result.append(page not in old)
            old.add(page)
            self.note_change(page)
        return result

    def touch(self, page: int) -> None:
        """An access sets the page's accessed bit (no executor needs to
        hear of it: each sees the next touches of its own)."""
        self.old.discard(page)

    # The journal lets an executor re-read only the pages that changed: a
    # change made through note_change is one generation and one journal
    # entry; a bare ``generation += 1`` (any page) breaks the count, and the
    # executor then re-reads all pages.
    def note_change(self, page: int) -> None:
        self.generation += 1
        journal = self.journal
        journal.append(page)
        if len(journal) > JOURNAL_LIMIT:
            self._cut_journal()
        for hook in self.on_change:
            hook()

    def note_changes(self, pages: list[int]) -> None:
        """note_change() of each page, the hooks called once after all (a
        batch leaf changes its pages under one hold of the machine lock, so
        nobody sees the steps between)."""
        if not pages:
            return
        self.generation += len(pages)
        journal = self.journal
        journal += pages
        if len(journal) > JOURNAL_LIMIT:
            self._cut_journal()
        for hook in self.on_change:
            hook()

    def _cut_journal(self) -> None:
        journal = self.journal
        while len(journal) > JOURNAL_LIMIT:
            drop = len(journal) // 2
            del journal[:drop]
            self.journal_start += drop

    def note_unnamed_change(self) -> None:
        """A change too wide to name page by page: executors re-read all."""
        self.generation += 1
        for hook in self.on_change:
            hook()

    def change_mark(self) -> tuple[int, int]:
        """Where an executor that is in sync now stands."""
        return self.generation, self.journal_start + len(self.journal)

    def changes_since(self, mark: tuple[int, int]) -> list[int] | None:
        """The pages changed since ``mark``, or None when only a full
        re-read is exact (the journal was cut, or a change named no page)."""
        generation, position = mark
        if generation == self.generation:
            return []
        end = self.journal_start + len(self.journal)
        if position < self.journal_start or self.generation - generation != end - position:
            return None
        return self.journal[position - self.journal_start:]

    # ETRACK's epochs (SDM ETRACK; the model in vsgx's notes): a page
    # blocked or modified in epoch e is "tracked" once an ETRACK has closed
    # epoch e and no thread that entered in epoch <= e is still inside.
    def tracking_incomplete(self) -> bool:
        tracked = self.tracked_epoch
        return any(epoch <= tracked for epoch in self.inside.values())

    def etrack(self) -> bool:
        if self.tracking_incomplete():
            return False
        self.tracked_epoch = self.epoch
        self.epoch += 1
        return True

    def is_tracked(self, epoch: int) -> bool:
        return self.tracked_epoch >= epoch and not any(
            entered <= epoch for entered in self.inside.values())

    def finish_init(self, mrenclave: bytes, mrsigner: bytes) -> None:
        self.mrenclave = mrenclave
        self.mrsigner = mrsigner
        self.padding = PKCS1_PADDING
        self.mrenclave_builder = None
        self.attributes = int(self.attributes) | int(Attribute.INIT)
