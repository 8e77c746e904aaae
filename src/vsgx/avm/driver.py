"""The AVM's SGX driver: the semantics of Linux's in-kernel driver
(arch/x86/kernel/cpu/sgx: ioctl.c, encl.c, main.c) as a Python API, with
every ENCLS leaf forwarded to the EVM.

It owns what the kernel owns: the EPC bank's allocation (the EVM only
checks), the page array of each enclave, VA pages and evicted blobs (EPC
contents leave the EVM only encrypted by EWB), the reclaimer that pages out
under EPC pressure, and the fault handler that reloads evicted pages (ELDU)
and, on SGX2, adds pages on first touch (EAUG). Errors carry the errno the
kernel's ioctl would return.

The reclaimer (main.c sgx_reclaim_pages): resident pages sit on a clock; the
hand gives a page whose "young" bit is set a second chance (a page that was
just faulted in is young: the fault proves the access), and takes up to 16
others per batch, which are EBLOCKed together, tracked with one ETRACK and
written out with EWB. Every step of the hand and every leaf is counted
(``stats``), so the work per eviction can be checked: it does not grow with
the number of pages.

Uniform pages (a heap of zeros, a stack of 0xCC) that an EVM can add
without residency (``eadd_uniform``) are *deferred*: hashed into MRENCLAVE at
their place in the add order, resident in no EPC page and held in no blob,
until the first touch loads them (``eldu_deferred``) as an evicted page
would be. The EPC only ever holds what the enclave touches.
"""

from __future__ import annotations

import errno as errnos
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vsgx.arch.constants import (
    PAGE_SIZE,
    SIGSTRUCT_VENDOR_INTEL,
    Attribute,
    Enclu,
    ExitKind,
    PageType,
    PfErrorCode,
    Vector,
)
from vsgx.arch.cpuid import SgxCpuid
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.secs import Secs
from vsgx.arch.sigstruct import Sigstruct
from vsgx.errors import StructureError, VsgxError
from vsgx.image.plan import PageRunSet

VA_SLOTS = 512
EINIT_RETRIES = 1000
# Pages the reclaimer takes per batch (Linux: SGX_NR_TO_SCAN).
RECLAIM_BATCH = 16
# Turns of the clock's hand (at most) before candidates are evicted even
# though the EVM saw them touched.
_AGING_TURNS = 4
# members looked up once (an enum's attribute is a descriptor call each time)
_EENTER, _AEX = int(Enclu.EENTER), ExitKind.AEX
# Pages added per call to the EVM (one message per batch on a channel).
ADD_BATCH = 256
# Uniform pages of one add_runs run given EPC pages at once (the rest wait,
# deferred, for their first touch): a short run (an SSA frame, an SDK stack
# of 64 KiB) whole, a longer one at both ends, where code touches it first
# (a heap's start, a stack's top). Each resident page costs the driver and
# the EVM a record at creation; a deferred one costs an ELDU if touched.
UNIFORM_RESIDENT = 32
# How long the reclaimer waits for threads inside an enclave to leave after
# the "IPI" before it gives up on a batch (seconds).
TRACKING_WAIT = 2.0
# What one evicted page costs the AVM to hold: ciphertext, MAC, PCMD and
# the records around them.
EVICTED_PAGE_BYTES = PAGE_SIZE + 16 + 128 + 200


class DriverError(VsgxError):
    """An ioctl failed: ``errno`` is what the kernel would return."""

    def __init__(self, code: int, message: str, sgx_error: SgxError | None = None):
        self.errno = code
        self.sgx_error = sgx_error
        super().__init__(f"{errnos.errorcode.get(code, code)}: {message}")


class EnclaveLost(VsgxError):
    """The EVM holding the enclave went away."""


class Evm(Protocol):
    """What the driver needs from the enclave VM (in-process: the EnclaveVM
    itself; remote: the channel client, which has the same methods).

    Optional batch methods, used when the EVM has them (see
    vsgx.evm.vm.EnclaveVM): eadd_pages, eadd_uniform, eldu_deferred,
    eblock_pages, ewb_pages, eldu_pages; destroy (every page and the SECS)."""

    def cpuid(self) -> SgxCpuid: ...
    def ecreate(self, epc_page: int, secs: bytes, secinfo: bytes) -> None: ...
    def eadd(self, epc_page: int, secs_page: int, linaddr: int, source: bytes, secinfo: bytes,
             measure: bool = False) -> None: ...
    def einit(self, secs_page: int, sigstruct: bytes, token: bytes = ...) -> SgxError: ...
    def eremove(self, epc_page: int) -> SgxError: ...
    def epa(self, epc_page: int) -> None: ...
    def eblock(self, epc_page: int) -> SgxError: ...
    def etrack(self, secs_page: int) -> SgxError: ...
    def ewb(self, epc_page: int, va_slot: int) -> tuple[SgxError, Any]: ...
    def eldu(self, epc_page: int, va_slot: int, secs_page: int, linaddr: int, ciphertext: bytes,
             pcmd: bytes) -> SgxError: ...
    def eaug(self, epc_page: int, secs_page: int, linaddr: int) -> None: ...
    def emodpr(self, epc_page: int, secinfo: bytes) -> SgxError: ...
    def emodt(self, epc_page: int, secinfo: bytes) -> SgxError: ...
    def kick(self, secs_page: int) -> None: ...
    def set_page_protection(self, secs_page: int, linaddr: int, count: int, prot: int) -> None: ...
    def eenter(self, secs_page: int, registers: list[int], return_rip: int,
               untrusted: Any) -> Any: ...
    def eresume(self, secs_page: int, registers: list[int], untrusted: Any) -> Any: ...
    def continue_entry(self, secs_page: int, tcs: int, aep: int, entry_fsgs: tuple[int, int],
                       untrusted: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class AddRun:
    """Pages for ``add_runs`` at ``offset`` in ELRANGE: ``count`` pages of
    ``data``, or without data, of the 32-bit pattern ``fill``."""

    offset: int
    count: int
    secinfo: bytes
    measure: bool
    data: bytes | memoryview | None = None
    fill: int = 0


@dataclass(slots=True)
class Evicted:
    # The ciphertext, or EWB's sealed form (ciphertext then MAC) from an
    # in-process EVM, which ELDU takes back without a copy.
    blob: bytes
    pcmd: bytes
    va_page: int
    va_index: int

    @property
    def ciphertext(self) -> bytes:
        return self.blob[:PAGE_SIZE]


@dataclass(slots=True)
class EnclavePage:
    """The driver's record of one enclave page (sgx_encl_page)."""

    linaddr: int
    page_type: int
    vm_max_prot: int
    epc: int | None = None
    evicted: Evicted | None = None
    young: bool = False  # accessed since the clock hand last passed
    ticket: int = 0  # its place on the clock (0: not on it)
    loads: int = 0  # times it was brought (back) into the EPC after its add
    hot: bool = False  # the EVM saw it touched when the hand last met it


@dataclass
class DriverEnclave:
    """An enclave as the driver tracks it (struct sgx_encl)."""

    secs_page: int
    base: int
    size: int
    attributes: int
    xfrm: int
    ssaframesize: int
    initialized: bool = False
    destroyed: bool = False
    pages: dict[int, EnclavePage] = field(default_factory=dict)
    # pages added but not resident anywhere yet: linaddr -> (type, vm_max_prot)
    deferred: PageRunSet[tuple[int, int]] = field(default_factory=PageRunSet)
    lock: threading.RLock = field(default_factory=threading.RLock)
    provision_allowed: bool = False
    # False when the loader maps the pages it did not add PROT_NONE (Intel's
    # urts without EDMM): a touch there is SIGSEGV, not an EAUG.
    holes_accessible: bool = True

    @property
    def debug(self) -> bool:
        return bool(self.attributes & Attribute.DEBUG)

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    def __hash__(self) -> int:
        return self.secs_page

    def __eq__(self, other: object) -> bool:
        return self is other


class FreeEpcPages:
    """The driver's free EPC pages: those given back, last in first out,
    then the section's never-used pages from its base up (the order a list
    of every page popped from its end gave), without that list: for a
    336 MiB EPC it took 2-3 ms to build, at a program's first CREATE."""

    __slots__ = ("_end", "_given", "_next")

    def __init__(self, base: int, size: int):
        self._given: list[int] = []
        self._next, self._end = base, base + size

    def __len__(self) -> int:
        return len(self._given) + (self._end - self._next) // PAGE_SIZE

    def __bool__(self) -> bool:
        return bool(self._given) or self._next < self._end

    def pop(self) -> int:
        if self._given:
            return self._given.pop()
        page = self._next
        if page >= self._end:
            raise IndexError("no free EPC page")
        self._next = page + PAGE_SIZE
        return page

    def append(self, page: int) -> None:
        self._given.append(page)

    def extend(self, pages: Iterable[int]) -> None:
        self._given.extend(pages)


def available_memory() -> int | None:
    """Bytes this host can still give the AVM (MemAvailable), if it says."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class SgxDriver:
    def __init__(self, evm: Evm, *, augment_on_fault: bool = True,
                 evicted_limit: int | None = None):
        self.evm = evm
        cpuid = evm.cpuid()
        if not cpuid.epc_sections:
            raise VsgxError("the EVM reports no EPC section")
        section = cpuid.epc_sections[0]
        self.sgx2 = bool(cpuid.sgx2)
        self.cpuid = cpuid
        self.augment_on_fault = augment_on_fault
        self.epc_base, self.epc_size = section.base, section.size
        self._free = FreeEpcPages(section.base, section.size)
        self._lock = threading.RLock()
        # Resident, reclaimable pages: (ticket, page, enclave), hand at the left.
        self._clock: deque[tuple[int, EnclavePage, DriverEnclave]] = deque()
        self._on_clock = 0
        self._next_ticket = 1
        # VA pages: their free slots, and the pages that have any free.
        self._va_free: dict[int, list[int]] = {}
        self._va_with_free: list[int] = []
        self._va_capacity = 0
        self._pages_needing_va = 0
        self.enclaves: dict[int, DriverEnclave] = {}
        # Evicted pages the AVM holds at most (their blobs live in its memory).
        if evicted_limit is None:
            memory = available_memory()
            evicted_limit = (memory * 3 // 4 // EVICTED_PAGE_BYTES) if memory else 1 << 30
        self.evicted_limit = evicted_limit
        self.evicted_pages = 0
        self.evictions = 0
        self.reloads = 0
        self.deferred_loads = 0
        # Counted work: leaves sent ("eblock" counts pages, "eblock_calls"
        # calls), clock hand steps, reclaim batches.
        self.stats: Counter[str] = Counter()
        # An EVM that may or may not have them (a channel's session) says so.
        batch = getattr(evm, "batch_leaves", None)
        self._batch = batch if batch is not None else all(hasattr(evm, name) for name in (
            "eadd_pages", "eadd_uniform", "eldu_deferred", "eblock_pages", "ewb_pages",
            "eldu_pages"))
        self._uniform_limit = getattr(evm, "uniform_resident_limit", None)

    @property
    def free_epc_pages(self) -> int:
        return len(self._free)

    @property
    def reclaimable_pages(self) -> int:
        return self._on_clock

    @property
    def epc_pages(self) -> int:
        return self.epc_size // PAGE_SIZE

    @property
    def defers(self) -> bool:
        """True when the EVM can hold added pages without residency."""
        return self._batch

    # -- EPC allocation and reclaim -------------------------------------------
    def _alloc_epc(self, reclaim: bool = True) -> int:
        with self._lock:
            while not self._free:
                if not reclaim or not self._reclaim(RECLAIM_BATCH):
                    raise DriverError(errnos.ENOMEM, self._exhausted())
            return self._free.pop()

    def _exhausted(self) -> str:
        return (f"no free EPC page and nothing to reclaim (EPC {self.epc_pages} pages, "
                f"{self._on_clock} reclaimable, {self.evicted_pages} evicted of at most "
                f"{self.evicted_limit} the AVM may hold)")

    def _free_epc(self, address: int) -> None:
        with self._lock:
            self._free.append(address)

    def _take_va_slot(self) -> tuple[int, int]:
        """A free VA slot (there is one for every enclave page: see _reserve_va)."""
        while self._va_with_free:
            page = self._va_with_free[-1]
            slots = self._va_free[page]
            if slots:
                index = slots.pop()
                if not slots:
                    self._va_with_free.pop()
                return page, index
            self._va_with_free.pop()
        raise DriverError(errnos.ENOMEM, "no free VA slot")

    def _give_va_slot(self, page: int, index: int) -> None:
        slots = self._va_free[page]
        if not slots:
            self._va_with_free.append(page)
        slots.append(index)

    def _reserve_va(self, count: int = 1) -> None:
        """Keep a VA slot for every enclave page that can be evicted, so that
        eviction never needs an EPC page (Linux adds a VA page every 512
        enclave pages)."""
        with self._lock:
            self._pages_needing_va += count
            while self._pages_needing_va > self._va_capacity:
                try:
                    page = self._alloc_epc()
                    self.evm.epa(page)
                except (DriverError, Fault):
                    self._pages_needing_va -= count
                    raise
                self.stats["epa"] += 1
                self._va_free[page] = list(range(VA_SLOTS - 1, -1, -1))
                self._va_with_free.append(page)
                self._va_capacity += VA_SLOTS

    def _release_va(self, count: int = 1) -> None:
        with self._lock:
            self._pages_needing_va -= count

    def _shrink_va(self) -> None:
        """EREMOVE VA pages with no slot in use that no page needs any more
        (Linux frees an enclave's VA pages with it)."""
        with self._lock:
            for page, slots in list(self._va_free.items()):
                if self._va_capacity - VA_SLOTS < self._pages_needing_va:
                    break
                if len(slots) != VA_SLOTS:
                    continue
                self.evm.eremove(page)
                del self._va_free[page]
                if page in self._va_with_free:
                    self._va_with_free.remove(page)
                self._va_capacity -= VA_SLOTS
                self._free.append(page)

    def _on_the_clock(self, encl: DriverEnclave, page: EnclavePage, young: bool) -> None:
        ticket = self._next_ticket
        self._next_ticket = ticket + 1
        page.ticket = ticket
        page.young = young
        self._clock.append((ticket, page, encl))
        self._on_clock += 1

    def _off_the_clock(self, page: EnclavePage) -> None:
        """Take a page off the clock (its entry goes when the hand meets it)."""
        if page.ticket:
            page.ticket = 0
            self._on_clock -= 1
            if len(self._clock) > 2 * self._on_clock + 64:
                self._clock = deque(e for e in self._clock if e[1].ticket == e[0])

    def _reclaim(self, want: int) -> int:
        """Evict up to ``want`` pages; the number evicted.

        The hand passes pages whose young bit is set (clearing it) and takes
        the others as candidates; the EVM then says which of the candidates
        were touched since their accessed bit was last cleared (and clears
        the bits of all the pages the hand met, as the kernel's reclaimer
        does with ptep_test_and_clear_young). Touched candidates get
        another turn, and those touched at the meeting before one more."""
        with self._lock:
            clock = self._clock
            chosen: dict[DriverEnclave, list[EnclavePage]] = {}
            taken = 0
            # A page the hand meets loses a state each time nobody touched it
            # (young -> hot -> cold -> out), so a few turns always find pages;
            # only threads that touch everything between meetings could keep
            # the hand going, and past this many steps it stops giving turns.
            steps = _AGING_TURNS * len(clock) + want
            while taken < want and clock:
                last = steps <= 0
                passed: dict[DriverEnclave, list[EnclavePage]] = {}
                tested: dict[DriverEnclave, list[EnclavePage]] = {}
                found = taken
                while found < want and clock and (steps > 0 or last):
                    steps -= 1
                    self.stats["clock_steps"] += 1
                    ticket, page, encl = clock.popleft()
                    if page.ticket != ticket:
                        continue  # removed, evicted or moved since
                    if page.young and not encl.destroyed:
                        page.young = False
                        clock.append((ticket, page, encl))
                        passed.setdefault(encl, []).append(page)
                        continue
                    page.ticket = 0
                    self._on_clock -= 1
                    if encl.destroyed or page.epc is None:
                        continue
                    tested.setdefault(encl, []).append(page)
                    found += 1
                for encl in {**passed, **tested}:
                    candidates = tested.get(encl, [])
                    met = passed.get(encl, []) + candidates
                    touched = self._test_and_clear_young(encl, met)
                    for page, young in zip(candidates, touched[len(met) - len(candidates):],
                                           strict=True):
                        # Touched since the last meeting: hot, another turn. Hot
                        # but untouched: one more turn (the hand may come round
                        # again at once, before anything could touch it).
                        if not last and (young or page.hot):
                            page.hot = young
                            self._on_the_clock(encl, page, False)
                            continue
                        chosen.setdefault(encl, []).append(page)
                        taken += 1
                if last:
                    break
            if not chosen:
                return 0
            if self.evicted_pages + taken > self.evicted_limit:
                for encl, pages in chosen.items():
                    for page in pages:
                        self._on_the_clock(encl, page, False)
                return 0
            self.stats["reclaim_batches"] += 1
            done = 0
            for encl, pages in chosen.items():
                with encl.lock:
                    done += self._evict_batch(encl, pages)
            return done

    def _test_and_clear_young(self, encl: DriverEnclave, pages: list[EnclavePage]
                              ) -> list[bool]:
        """The pages' accessed bits from the EVM (cleared there); all False
        when it cannot tell, so the clock goes by young bits alone."""
        ask = getattr(self.evm, "test_and_clear_young", None)
        touched = None
        if ask is not None and pages and not encl.destroyed:
            self.stats["young_tested"] += len(pages)
            touched = ask(encl.secs_page, [page.linaddr for page in pages])
        return touched if touched is not None else [False] * len(pages)

    def _evict_batch(self, encl: DriverEnclave, pages: list[EnclavePage]) -> int:
        """EBLOCK the pages, one ETRACK, EWB each (sgx_reclaim_pages); in one
        call where the EVM has evict_pages (one round trip on a channel)."""
        pages = [p for p in pages if p.epc is not None]
        evict = getattr(self.evm, "evict_pages", None) if self._batch else None
        if evict is not None and pages:
            taken = [self._take_va_slot() for _ in pages]
            self.stats["eblock"] += len(pages)
            self.stats["eblock_calls"] += 1
            statuses, track, results = evict(encl.secs_page, [
                (p.epc, va + 8 * i) for p, (va, i) in zip(pages, taken, strict=True)])
            blocked, slots = [], []
            for n, page in enumerate(pages):
                status = statuses[n] if n < len(statuses) else None
                if status is SgxError.SUCCESS or status is SgxError.BLKSTATE:
                    blocked.append(page)
                    slots.append(taken[n])
                else:
                    self._give_va_slot(*taken[n])
                    self._on_the_clock(encl, page, False)
            if not blocked:
                return 0
            self.stats["etrack"] += track is not None
            self.stats["ewb"] += len(blocked)
            self.stats["ewb_calls"] += 1
        else:
            statuses = self._eblock([p.epc for p in pages])  # type: ignore[misc]
            blocked = []
            for page, status in zip(pages, statuses, strict=False):
                if status in (SgxError.SUCCESS, SgxError.BLKSTATE):
                    blocked.append(page)
                else:
                    self._on_the_clock(encl, page, False)
            for page in pages[len(statuses):]:
                self._on_the_clock(encl, page, False)
            if not blocked:
                return 0
            slots = [self._take_va_slot() for _ in blocked]
            self._etrack(encl)
            results = self._ewb([(p.epc, va + 8 * i) for p, (va, i)  # type: ignore[misc]
                                 in zip(blocked, slots, strict=True)])
        retry = [n for n, r in enumerate(results)
                 if not isinstance(r, Fault) and r[0] is SgxError.NOT_TRACKED]
        if retry and self._complete_tracking(encl):
            again = self._ewb([(blocked[n].epc, slots[n][0] + 8 * slots[n][1])  # type: ignore[misc]
                               for n in retry])
            for n, result in zip(retry, again, strict=False):
                results[n] = result
            for n in retry[len(again):]:
                results[n] = (SgxError.NOT_TRACKED, None)
        done = 0
        for n, page in enumerate(blocked):
            result = results[n] if n < len(results) else None
            va_page, va_index = slots[n]
            if (result is None or isinstance(result, Fault) or result[1] is None
                    or result[0] not in (SgxError.SUCCESS, SgxError.VA_SLOT_OCCUPIED)):
                self._give_va_slot(va_page, va_index)
                self._on_the_clock(encl, page, False)
                continue
            blob = result[1]
            self._free.append(page.epc)  # type: ignore[arg-type]
            page.epc = None
            page.evicted = Evicted(getattr(blob, "sealed", None) or blob.ciphertext, blob.pcmd,
                                   va_page, va_index)
            self.evicted_pages += 1
            self.evictions += 1
            done += 1
        return done

    def _eblock(self, epcs: list[int]) -> list[Any]:
        self.stats["eblock"] += len(epcs)
        self.stats["eblock_calls"] += 1
        if self._batch:
            return self.evm.eblock_pages(epcs)  # type: ignore[attr-defined, no-any-return]
        results: list[Any] = []
        for epc in epcs:
            try:
                results.append(self.evm.eblock(epc))
            except Fault as fault:
                results.append(fault)
                break
        return results

    def _ewb(self, pairs: list[tuple[int, int]]) -> list[Any]:
        self.stats["ewb"] += len(pairs)
        self.stats["ewb_calls"] += 1
        if self._batch:
            return self.evm.ewb_pages(pairs)  # type: ignore[attr-defined, no-any-return]
        results: list[Any] = []
        for epc, slot in pairs:
            try:
                results.append(self.evm.ewb(epc, slot))
            except Fault as fault:
                results.append(fault)
                break
        return results

    def _etrack(self, encl: DriverEnclave) -> SgxError:
        self.stats["etrack"] += 1
        return self.evm.etrack(encl.secs_page)

    def _complete_tracking(self, encl: DriverEnclave) -> bool:
        """After an ETRACK that threads inside kept from completing: the
        IPI (every thread inside takes an AEX), then ETRACK until it holds."""
        deadline = time.monotonic() + TRACKING_WAIT
        while True:
            self.stats["kick"] += 1
            self.evm.kick(encl.secs_page)
            if self._etrack(encl) is SgxError.SUCCESS:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)

    # -- paging on request: for callers that drive it themselves (tests, benchmarks) --
    def evict(self, encl: DriverEnclave, pages: list[EnclavePage]) -> int:
        """Evict these pages now, off the clock's order, as one reclaimer batch
        (EBLOCK each, one ETRACK, EWB each): the number evicted."""
        with self._lock, encl.lock:
            resident = [page for page in pages if page.epc is not None]
            for page in resident:
                self._off_the_clock(page)
            return self._evict_batch(encl, resident) if resident else 0

    def make_resident(self, encl: DriverEnclave, page: EnclavePage) -> int:
        """The page's EPC page, ELDU-ing it back first if it is evicted (what
        the enclave's next touch of it would do)."""
        with self._lock, encl.lock:
            return self._resident(encl, page)

    def take_epc_page(self) -> int:
        """A free EPC page, no longer the driver's to hand out (ENOMEM when
        none is free; nothing is reclaimed for it)."""
        return self._alloc_epc(reclaim=False)

    def give_epc_page(self, address: int) -> None:
        """Give back a page from take_epc_page, free (EREMOVEd or never used)."""
        self._free_epc(address)

    def take_va_slot(self) -> tuple[int, int]:
        """A free VA slot (VA page, index): for EWBs of the caller's own."""
        with self._lock:
            return self._take_va_slot()

    def give_va_slot(self, page: int, index: int) -> None:
        """Give back a slot from take_va_slot, empty (its page ELDUed back)."""
        with self._lock:
            self._give_va_slot(page, index)

    def _load(self, encl: DriverEnclave, page: EnclavePage) -> None:
        """ELDU an evicted page back (encl.c __sgx_encl_eldu)."""
        evicted = page.evicted
        assert evicted is not None
        epc = self._alloc_epc()
        self.stats["eldu"] += 1
        slot = evicted.va_page + 8 * evicted.va_index
        try:
            if self._batch:
                status = self.evm.eldu_pages(encl.secs_page, [  # type: ignore[attr-defined]
                    (epc, slot, page.linaddr, evicted.blob, evicted.pcmd)])[0]
                if isinstance(status, Fault):
                    raise status
            else:
                status = self.evm.eldu(epc, slot, encl.secs_page, page.linaddr,
                                       evicted.ciphertext, evicted.pcmd)
        except Fault as fault:
            self._free_epc(epc)
            raise DriverError(errnos.EFAULT, f"ELDU faulted: {fault}") from None
        if status is not SgxError.SUCCESS:
            self._free_epc(epc)
            raise DriverError(errnos.EFAULT, f"ELDU failed: {status.name}", status)
        self._give_va_slot(evicted.va_page, evicted.va_index)
        page.epc = epc
        page.evicted = None
        page.loads += 1
        self.evicted_pages -= 1
        self._on_the_clock(encl, page, True)
        self.reloads += 1

    def _load_deferred(self, encl: DriverEnclave, linaddr: int) -> EnclavePage:
        """Give a deferred page its EPC page (its first touch)."""
        info = encl.deferred.get(linaddr)
        assert info is not None
        page_type, max_prot = info
        with self._lock:
            self._reserve_va()
            try:
                epc = self._alloc_epc()
            except DriverError:
                self._release_va()
                raise
        self.stats["eldu_deferred"] += 1
        try:
            self.evm.eldu_deferred(epc, encl.secs_page, linaddr)  # type: ignore[attr-defined]
        except Fault as fault:
            self._free_epc(epc)
            self._release_va()
            raise DriverError(errnos.EFAULT, f"loading a deferred page faulted: {fault}") from None
        encl.deferred.take(linaddr)
        page = EnclavePage(linaddr, page_type, max_prot, epc, loads=1)
        encl.pages[linaddr] = page
        self._on_the_clock(encl, page, True)
        self.deferred_loads += 1
        return page

    def _resident(self, encl: DriverEnclave, page: EnclavePage) -> int:
        if page.epc is None:
            self._load(encl, page)
        assert page.epc is not None
        return page.epc

    # -- ENCLAVE_CREATE ------------------------------------------------------
    def create(self, secs: Secs) -> DriverEnclave:
        if secs.size & (secs.size - 1) or secs.size < 2 * PAGE_SIZE:
            raise DriverError(errnos.EINVAL, "SECS.SIZE is not a power of two of two pages")
        secs_page = self._alloc_epc()
        try:
            self.evm.ecreate(secs_page, secs.pack(), Secinfo.of(PageType.SECS).pack())
        except Fault as fault:
            self._free_epc(secs_page)
            raise DriverError(errnos.EIO, f"ECREATE faulted: {fault}") from None
        encl = DriverEnclave(secs_page, secs.baseaddr, secs.size, secs.attributes, secs.xfrm,
                             secs.ssaframesize)
        with self._lock:
            self.enclaves[secs_page] = encl
        return encl

    # -- ENCLAVE_ADD_PAGES -----------------------------------------------------
    def _check_range(self, encl: DriverEnclave, offset: int, length: int) -> None:
        if (offset % PAGE_SIZE or length <= 0 or length % PAGE_SIZE
                or offset + length - PAGE_SIZE >= encl.size):
            raise DriverError(errnos.EINVAL, "offset/length are not page aligned inside the "
                                             "enclave")

    def _check_add(self, encl: DriverEnclave, offset: int, length: int,
                   secinfo: bytes) -> Secinfo:
        if encl.initialized or encl.destroyed:
            raise DriverError(errnos.EINVAL, "the enclave is initialized or gone")
        self._check_range(encl, offset, length)
        try:
            info = Secinfo.unpack(secinfo)
        except StructureError as exc:
            raise DriverError(errnos.EINVAL, f"SECINFO: {exc}") from None
        if info.page_type not in (PageType.REG, PageType.TCS):
            raise DriverError(errnos.EINVAL, "SECINFO page type must be REG or TCS")
        perms = info.flags & 0x7
        if perms & 0x2 and not perms & 0x1:
            raise DriverError(errnos.EINVAL, "a writable page must be readable")
        if info.page_type == PageType.TCS and perms:
            raise DriverError(errnos.EINVAL, "a TCS page takes no permissions")
        first = encl.base + offset
        count = length // PAGE_SIZE
        taken = encl.pages if count > len(encl.pages) else None
        if taken is not None:
            clash = next((p for p in taken if first <= p < first + length), None)
        else:
            clash = next((p for p in range(first, first + length, PAGE_SIZE)
                          if p in encl.pages), None)
        if clash is None and encl.deferred.overlaps(first, count):
            clash = next(iter(encl.deferred.pages_in(first, count)))
        if clash is not None:
            raise DriverError(errnos.EBUSY, f"page {clash:#x} is already added")
        return info

    def add_pages(self, encl: DriverEnclave, offset: int, source: bytes, secinfo: bytes,
                  measure: bool) -> int:
        """Add ``source`` (whole pages) at ``offset``; returns bytes added.
        A source that is one 32-bit pattern throughout is added as a
        uniform run (and may be deferred)."""
        info = self._check_add(encl, offset, len(source), secinfo)
        count = len(source) // PAGE_SIZE
        if self._batch and info.page_type == PageType.REG and source[:4] * (
                len(source) // 4) == source:
            return self.add_uniform_pages(encl, offset, count,
                                          int.from_bytes(source[:4], "little"), secinfo, measure)
        return self._add_resident(encl, offset, source, info, secinfo, measure)

    def _add_resident(self, encl: DriverEnclave, offset: int, source: bytes, info: Secinfo,
                      secinfo: bytes, measure: bool) -> int:
        """EADD pages that get an EPC page each now (evicting others if need be)."""
        count = len(source) // PAGE_SIZE
        max_prot = 0x3 if info.page_type == PageType.TCS else info.flags & 0x7
        batch = ADD_BATCH if self._batch and info.page_type == PageType.REG else 1
        done = 0
        with encl.lock:
            for first in range(0, count, batch):
                n = min(batch, count - first)
                self._reserve_va(n)
                epcs: list[int] = []
                try:
                    for _ in range(n):
                        epcs.append(self._alloc_epc())
                except DriverError:
                    for epc in epcs:
                        self._free_epc(epc)
                    self._release_va(n)
                    raise
                linaddr = encl.base + offset + first * PAGE_SIZE
                chunk = bytes(source[first * PAGE_SIZE:(first + n) * PAGE_SIZE])
                try:
                    if batch > 1:
                        self.evm.eadd_pages(epcs, encl.secs_page, linaddr,  # type: ignore[attr-defined]
                                            chunk, secinfo, measure)
                    else:
                        self.evm.eadd(epcs[0], encl.secs_page, linaddr, chunk, secinfo,
                                      measure=measure)
                except Fault as fault:
                    for epc in epcs:
                        self.evm.eremove(epc)
                        self._free_epc(epc)
                    self._release_va(n)
                    raise DriverError(errnos.EIO, f"EADD/EEXTEND faulted: {fault}") from None
                self.stats["eadd"] += n
                for index, epc in enumerate(epcs):
                    page = EnclavePage(linaddr + index * PAGE_SIZE, info.page_type, max_prot, epc)
                    encl.pages[page.linaddr] = page
                    self._on_the_clock(encl, page, False)
                done += n * PAGE_SIZE
        return done

    def add_uniform_pages(self, encl: DriverEnclave, offset: int, count: int, fill: int,
                          secinfo: bytes, measure: bool, resident: int | None = None) -> int:
        """Add ``count`` pages whose every 32-bit word is ``fill``. Pages get
        an EPC page now while free ones are left (at most ``resident`` of
        them); the rest are deferred until first touched. Without an EVM
        that defers, every page is added as add_pages would."""
        info = self._check_add(encl, offset, count * PAGE_SIZE, secinfo)
        page = (fill & 0xFFFFFFFF).to_bytes(4, "little") * (PAGE_SIZE // 4)
        if not self._batch or info.page_type != PageType.REG:
            done = 0
            for first in range(0, count, ADD_BATCH):
                n = min(ADD_BATCH, count - first)
                done += self._add_resident(encl, offset + first * PAGE_SIZE, page * n, info,
                                           secinfo, measure)
            return done
        max_prot = info.flags & 0x7
        linaddr = encl.base + offset
        with encl.lock, self._lock:
            # Only free pages, never an eviction; room kept for the VA pages.
            room = max(0, len(self._free) - RECLAIM_BATCH)
            room = room * VA_SLOTS // (VA_SLOTS + 1)
            now = min(count, room if resident is None else min(room, resident))
            if self._uniform_limit is not None:
                now = min(now, self._uniform_limit)  # what one message of it carries
            if now:
                self._reserve_va(now)
                if len(self._free) < now:
                    self._release_va(now - len(self._free))
                    now = len(self._free)
            epcs = [self._free.pop() for _ in range(now)]
            try:
                self.evm.eadd_uniform(encl.secs_page, linaddr, count, secinfo,  # type: ignore[attr-defined]
                                      fill & 0xFFFFFFFF, measure, epcs)
            except Fault as fault:
                self._free.extend(reversed(epcs))
                self._release_va(now)
                raise DriverError(errnos.EIO, f"EADD/EEXTEND faulted: {fault}") from None
            self.stats["eadd"] += now
            self.stats["eadd_deferred"] += count - now
            for index, epc in enumerate(epcs):
                record = EnclavePage(linaddr + index * PAGE_SIZE, PageType.REG, max_prot, epc)
                encl.pages[record.linaddr] = record
                self._on_the_clock(encl, record, False)
            if now < count:
                encl.deferred.add(linaddr + now * PAGE_SIZE, count - now,
                                  (int(PageType.REG), max_prot))
        return count * PAGE_SIZE

    def add_runs(self, encl: DriverEnclave, runs: list[AddRun]) -> tuple[int, DriverError | None]:
        """ENCLAVE_ADD_PAGES of several runs, in order, as if each had its
        own ioctl (the pages a program's ioctls queued): the pages added,
        and the error of the run that stopped the others, if one did. With
        an EVM that has ``eadd_runs`` they go in one call; each run is all
        or nothing there, its checks made here first."""
        eadd_runs = getattr(self.evm, "eadd_runs", None) if self._batch else None
        if eadd_runs is None:
            done = 0
            for run in runs:
                before = self._present(encl, run)
                try:
                    if run.data is None:
                        self.add_uniform_pages(encl, run.offset, run.count, run.fill,
                                               run.secinfo, run.measure)
                    else:
                        self.add_pages(encl, run.offset, bytes(run.data), run.secinfo,
                                       run.measure)
                except DriverError as exc:  # batches of the run before it may be in
                    return done + self._present(encl, run) - before, exc
                done += run.count
            return done, None
        with encl.lock, self._lock:
            return self._add_runs(encl, runs, eadd_runs)

    @staticmethod
    def _present(encl: DriverEnclave, run: AddRun) -> int:
        """How many pages of ``run``'s range the enclave has."""
        first = encl.base + run.offset
        pages = (first + n * PAGE_SIZE for n in range(run.count))
        return sum(1 for page in pages if page in encl.pages
                   or encl.deferred.get(page) is not None)

    def _split(self, runs: list[AddRun]) -> list[AddRun]:
        """Runs as the EVM takes them: a TCS page on its own, data runs of
        at most ADD_BATCH pages."""
        pieces = []
        for run in runs:
            page_type = int.from_bytes(run.secinfo[:8], "little") >> 8 & 0xFF
            step = ADD_BATCH if page_type == PageType.REG else 1
            if run.data is None and page_type != PageType.REG:  # only REG pages defer
                pattern = (run.fill & 0xFFFFFFFF).to_bytes(4, "little") * (PAGE_SIZE // 4)
                run = AddRun(run.offset, run.count, run.secinfo, run.measure,
                             pattern * run.count)
            if run.data is None or run.count <= step:
                pieces.append(run)
                continue
            for first in range(0, run.count, step):
                count = min(step, run.count - first)
                pieces.append(AddRun(run.offset + first * PAGE_SIZE, count, run.secinfo,
                                     run.measure, run.data[first * PAGE_SIZE:
                                                           (first + count) * PAGE_SIZE]))
        return pieces

    def _plan(self, run: AddRun, info: Secinfo, want: int,
              planned: list[tuple[AddRun, Secinfo, list[int]]]) -> DriverError | None:
        """EPC pages (and VA slots) for the first ``want`` pages of ``run``,
        planned; the error if there are none to be had."""
        epcs: list[int] = []
        if want:
            try:
                self._reserve_va(want)
            except DriverError as exc:
                return exc
            try:
                for _ in range(want):
                    epcs.append(self._alloc_epc(reclaim=run.data is not None))
            except DriverError as exc:
                for epc in epcs:
                    self._free_epc(epc)
                self._release_va(want)
                return exc
        planned.append((run, info, epcs))
        return None

    def _add_runs(self, encl: DriverEnclave, runs: list[AddRun], eadd_runs: Any
                  ) -> tuple[int, DriverError | None]:
        error: DriverError | None = None
        checked: list[tuple[AddRun, Secinfo]] = []
        taken: list[tuple[int, int]] = []  # earlier runs of this batch, not recorded yet
        for run in self._split(runs):
            try:
                info = self._check_add(encl, run.offset, run.count * PAGE_SIZE, run.secinfo)
                if run.data is not None and len(run.data) != run.count * PAGE_SIZE:
                    raise DriverError(errnos.EINVAL, "a run's data is not its pages")
                end = run.offset + run.count * PAGE_SIZE
                clash = next((start for start, stop in taken
                              if start < end and run.offset < stop), None)
                if clash is not None:
                    raise DriverError(errnos.EBUSY, f"page {encl.base + max(clash, run.offset):#x}"
                                      " is already added")
            except DriverError as exc:
                error = exc
                break
            taken.append((run.offset, end))
            checked.append((run, info))
        # EPC pages: every page with content (evicting others if need be);
        # uniform pages while free ones are left after the content to come,
        # at most UNIFORM_RESIDENT of a run (split between its two ends);
        # the rest stay deferred.
        later = sum(run.count for run, _ in checked if run.data is not None)
        planned: list[tuple[AddRun, Secinfo, list[int]]] = []
        for run, info in checked:
            if run.data is not None:
                later -= run.count
                want = run.count
            else:
                room = (len(self._free) - RECLAIM_BATCH - later) * VA_SLOTS // (VA_SLOTS + 1)
                want = 0 if info.page_type != PageType.REG else \
                    max(0, min(run.count, UNIFORM_RESIDENT, room))
                if want == UNIFORM_RESIDENT < run.count:  # both ends: the front part first
                    tail = want // 2
                    front = AddRun(run.offset, run.count - tail, run.secinfo, run.measure,
                                   fill=run.fill)
                    run = AddRun(run.offset + front.count * PAGE_SIZE, tail, run.secinfo,
                                 run.measure, fill=run.fill)
                    refused = self._plan(front, info, want - tail, planned)
                    if refused is not None:
                        error = refused
                        break
                    want = tail
            refused = self._plan(run, info, want, planned)
            if refused is not None:
                error = refused
                break
        results = eadd_runs(encl.secs_page, [
            (encl.base + run.offset, run.count, run.secinfo, run.measure, run.fill, run.data,
             epcs) for run, _, epcs in planned]) if planned else []
        done = 0
        for n, (run, info, epcs) in enumerate(planned):
            result = results[n] if n < len(results) else None
            if result is not SgxError.SUCCESS:
                for epc in epcs:
                    self._free_epc(epc)
                self._release_va(len(epcs))
                if isinstance(result, Fault) and error is None:
                    error = DriverError(errnos.EIO, f"EADD/EEXTEND faulted: {result}")
                continue
            linaddr = encl.base + run.offset
            max_prot = 0x3 if info.page_type == PageType.TCS else info.flags & 0x7
            for index, epc in enumerate(epcs):
                page = EnclavePage(linaddr + index * PAGE_SIZE, info.page_type, max_prot, epc)
                encl.pages[page.linaddr] = page
                self._on_the_clock(encl, page, False)
            if len(epcs) < run.count:
                encl.deferred.add(linaddr + len(epcs) * PAGE_SIZE, run.count - len(epcs),
                                  (int(info.page_type), max_prot))
            self.stats["eadd"] += len(epcs)
            self.stats["eadd_deferred"] += run.count - len(epcs)
            done += run.count
        if len(results) < len(planned) and error is None:
            error = DriverError(errnos.EIO, "the EVM stopped before the last run")
        return done, error

    def eextend_chunks(self, encl: DriverEnclave, offset: int, mrmask: int) -> None:
        """EEXTEND of the 256-byte chunks of an added page that ``mrmask``
        names (bit i: bytes 256*i to 256*i + 255), lowest first: how the
        out-of-tree driver measures a page (sgx_measure)."""
        if encl.initialized or encl.destroyed:
            raise DriverError(errnos.EINVAL, "the enclave is initialized or gone")
        self._check_range(encl, offset, PAGE_SIZE)
        if not 0 <= mrmask <= 0xFFFF:
            raise DriverError(errnos.EINVAL, "mrmask is 16 bits")
        with encl.lock:
            page = self._page_at(encl, encl.base + offset)
            epc = self._resident(encl, page)
            for chunk in range(16):
                if not mrmask >> chunk & 1:
                    continue
                try:
                    self.evm.eextend(encl.secs_page, epc + chunk * 256)  # type: ignore[attr-defined]
                except Fault as fault:
                    raise DriverError(errnos.EFAULT, f"EEXTEND faulted: {fault}") from None

    # -- ENCLAVE_INIT ------------------------------------------------------------
    def provision(self, encl: DriverEnclave) -> None:
        """SGX_IOC_ENCLAVE_PROVISION: allow the PROVISIONKEY attribute."""
        encl.provision_allowed = True

    def init(self, encl: DriverEnclave, sigstruct: bytes,
             token: bytes = bytes(EINITTOKEN_SIZE)) -> None:
        if encl.initialized or encl.destroyed:
            raise DriverError(errnos.EINVAL, "the enclave is already initialized")
        if len(sigstruct) != Sigstruct.SIZE:
            raise DriverError(errnos.EINVAL, "SIGSTRUCT must be 1808 bytes")
        vendor = int.from_bytes(sigstruct[16:20], "little")
        if vendor not in (0, SIGSTRUCT_VENDOR_INTEL):
            raise DriverError(errnos.EINVAL, "SIGSTRUCT.VENDOR must be 0 or 0x8086")
        allowed = self.cpuid.attributes & ~int(Attribute.EINITTOKEN_KEY)
        if not encl.provision_allowed:
            allowed &= ~int(Attribute.PROVISIONKEY)
        if encl.attributes & ~allowed:
            raise DriverError(errnos.EACCES, "the enclave asks for attributes this process "
                                             "may not use (PROVISIONKEY needs provision())")
        with encl.lock:
            for _ in range(EINIT_RETRIES):
                try:
                    status = self.evm.einit(encl.secs_page, sigstruct, token)
                except Fault as fault:
                    raise DriverError(errnos.EIO, f"EINIT faulted: {fault}") from None
                if status is not SgxError.UNMASKED_EVENT:
                    break
            if status is not SgxError.SUCCESS:
                raise DriverError(errnos.EPERM, f"EINIT failed: {status.name}", status)
            encl.initialized = True

    # -- SGX2 ----------------------------------------------------------------
    def _sgx2_ready(self, encl: DriverEnclave) -> None:
        if not self.sgx2:
            raise DriverError(errnos.ENODEV, "the platform has no SGX2")
        if not encl.initialized:
            raise DriverError(errnos.EINVAL, "the enclave is not initialized")

    def _track(self, encl: DriverEnclave) -> None:
        if self._etrack(encl) is not SgxError.SUCCESS and not self._complete_tracking(encl):
            raise DriverError(errnos.EFAULT, "ETRACK did not complete")

    def _page_at(self, encl: DriverEnclave, linaddr: int) -> EnclavePage:
        page = encl.pages.get(linaddr)
        if page is None:
            if encl.deferred.get(linaddr) is not None:
                return self._load_deferred(encl, linaddr)
            raise DriverError(errnos.EFAULT, f"no enclave page at {linaddr:#x}")
        return page

    def restrict_permissions(self, encl: DriverEnclave, offset: int, length: int,
                             permissions: int) -> int:
        """SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS (EMODPR + ETRACK)."""
        self._sgx2_ready(encl)
        self._check_range(encl, offset, length)
        if permissions & ~0x7 or (permissions & 0x2 and not permissions & 0x1):
            raise DriverError(errnos.EINVAL, "bad permissions")
        secinfo = Secinfo(flags=permissions).pack()
        done = 0
        with encl.lock:
            for position in range(0, length, PAGE_SIZE):
                page = self._page_at(encl, encl.base + offset + position)
                if page.page_type != PageType.REG:
                    raise DriverError(errnos.EINVAL, "only REG pages can be restricted")
                self._modify("EMODPR", self.evm.emodpr, encl, page, secinfo)
                done += PAGE_SIZE
            self._track(encl)
        return done

    def _modify(self, name: str, leaf: Any, encl: DriverEnclave, page: EnclavePage,
                secinfo: bytes) -> None:
        """EMODPR or EMODT on one page; a fault or an error becomes EFAULT."""
        try:
            status = leaf(self._resident(encl, page), secinfo)
        except Fault as fault:
            raise DriverError(errnos.EFAULT, f"{name} faulted: {fault}") from None
        self.stats[name.lower()] += 1
        if status is not SgxError.SUCCESS:
            raise DriverError(errnos.EFAULT, f"{name}: {status.name}", status)

    def modify_types(self, encl: DriverEnclave, offset: int, length: int, page_type: int) -> int:
        """SGX_IOC_ENCLAVE_MODIFY_TYPES (EMODT + ETRACK)."""
        self._sgx2_ready(encl)
        self._check_range(encl, offset, length)
        if page_type not in (PageType.TCS, PageType.TRIM):
            raise DriverError(errnos.EINVAL, "pages can become TCS or TRIM only")
        secinfo = Secinfo.of(PageType(page_type)).pack()
        done = 0
        with encl.lock:
            for position in range(0, length, PAGE_SIZE):
                page = self._page_at(encl, encl.base + offset + position)
                if not (page.page_type == PageType.REG or (page.page_type == PageType.TCS
                                                           and page_type == PageType.TRIM)):
                    raise DriverError(errnos.EINVAL, "this type change is not allowed")
                if page_type == PageType.TCS and page.vm_max_prot & 0x3 != 0x3:
                    raise DriverError(errnos.EPERM, "a new TCS page must have been RW")
                self._modify("EMODT", self.evm.emodt, encl, page, secinfo)
                page.page_type = page_type
                if page_type == PageType.TCS:
                    page.vm_max_prot = 0x3
                done += PAGE_SIZE
            self._track(encl)
        return done

    def remove_pages(self, encl: DriverEnclave, offset: int, length: int) -> int:
        """SGX_IOC_ENCLAVE_REMOVE_PAGES: EREMOVE trimmed, accepted pages."""
        self._sgx2_ready(encl)
        self._check_range(encl, offset, length)
        probe = Secinfo(flags=0x7).pack()
        done = 0
        with encl.lock:
            for position in range(0, length, PAGE_SIZE):
                linaddr = encl.base + offset + position
                page = self._page_at(encl, linaddr)
                if page.page_type != PageType.TRIM:
                    raise DriverError(errnos.EPERM, "only trimmed pages can be removed")
                epc = self._resident(encl, page)
                # EMODPR as a probe, as Linux does: a page still MODIFIED (not
                # yet EACCEPTed) answers PAGE_NOT_MODIFIABLE; once accepted it
                # is a TRIM page and EMODPR faults.
                try:
                    self.evm.emodpr(epc, probe)
                    raise DriverError(errnos.EPERM, "the enclave has not accepted the trim")
                except Fault:
                    pass
                self.evm.eremove(epc)
                self.stats["eremove"] += 1
                self._free_epc(epc)
                del encl.pages[linaddr]
                self._off_the_clock(page)
                self._release_va()
                done += PAGE_SIZE
        return done

    # -- the application's mapping ------------------------------------------
    def mprotect(self, encl: DriverEnclave, address: int, length: int, prot: int) -> None:
        """mprotect() on the enclave mapping: never above a page's vm_max_prot."""
        if address % PAGE_SIZE or length % PAGE_SIZE or not encl.contains(address):
            raise DriverError(errnos.EINVAL, "mprotect range is not aligned inside ELRANGE")
        count = length // PAGE_SIZE
        if count <= len(encl.pages):
            records = (encl.pages.get(p) for p in range(address, address + length, PAGE_SIZE))
        else:
            records = (r for p, r in encl.pages.items() if address <= p < address + length)
        for record in records:
            if record is not None and prot & ~record.vm_max_prot:
                raise DriverError(errnos.EACCES, f"page {record.linaddr:#x} may not become "
                                                 f"{prot:#x}")
        for _page_type, max_prot in encl.deferred.values_in(address, count):
            if prot & ~max_prot:
                raise DriverError(errnos.EACCES, f"pages in {address:#x}+{length:#x} may not "
                                                 f"become {prot:#x}")
        self.evm.set_page_protection(encl.secs_page, address, count, prot)

    # -- faults (sgx_vma_fault) --------------------------------------------------
    def handle_fault(self, encl: DriverEnclave, address: int, error_code: int) -> bool:
        """Fix a not-present #PF in ELRANGE as the kernel would; True to ERESUME."""
        if error_code & (PfErrorCode.P | PfErrorCode.SGX) or not encl.contains(address):
            return False
        linaddr = address & ~(PAGE_SIZE - 1)
        with encl.lock:
            page = encl.pages.get(linaddr)
            if page is not None:
                if page.epc is None and page.evicted is not None:
                    self._load(encl, page)
                # Resident: another thread brought it in since (the access
                # is retried, as the kernel's fault handler lets it be).
                return page.epc is not None
            if encl.deferred.get(linaddr) is not None:
                self._load_deferred(encl, linaddr)
                return True
            if not (self.sgx2 and self.augment_on_fault and encl.initialized
                    and encl.holes_accessible):
                return False
            self._reserve_va()
            try:
                epc = self._alloc_epc()
            except DriverError:
                self._release_va()
                raise
            try:
                self.evm.eaug(epc, encl.secs_page, linaddr)
            except Fault:
                self._free_epc(epc)
                self._release_va()
                return False
            self.stats["eaug"] += 1
            page = EnclavePage(linaddr, PageType.REG, 0x7, epc)
            encl.pages[linaddr] = page
            self._on_the_clock(encl, page, True)
            return True

    # -- entering ---------------------------------------------------------------
    def _reload_for(self, encl: DriverEnclave, fault: Fault) -> bool:
        """An EENTER/ERESUME faulted on an evicted (or deferred) TCS or SSA
        page: bring it in."""
        if fault.vector != Vector.PF:
            return False
        linaddr = fault.address & ~(PAGE_SIZE - 1)
        with encl.lock:
            page = encl.pages.get(linaddr)
            if page is not None and page.evicted is not None:
                self._load(encl, page)
                return True
            if page is None and encl.deferred.get(linaddr) is not None:
                self._load_deferred(encl, linaddr)
                return True
        return False

    def enter(self, encl: DriverEnclave, leaf: int, registers: list[int], return_rip: int,
              memory: Any) -> Any:
        """EENTER or ERESUME, resolving what the kernel resolves: evicted
        pages come back, SGX2 pages appear on first touch, interrupts resume.
        Other AEXs, and exits, go back to the caller."""
        if encl.destroyed:
            raise EnclaveLost("the enclave was destroyed")
        evm = self.evm
        while True:
            try:
                if leaf == _EENTER:
                    result = evm.eenter(encl.secs_page, registers, return_rip, memory)
                else:
                    result = evm.eresume(encl.secs_page, registers, memory)
            except Fault as fault:
                if self._reload_for(encl, fault):
                    continue
                raise
            if result.kind is not _AEX:
                return result
            if result.interrupt or (result.vector == Vector.PF and self.handle_fault(
                    encl, result.address, result.error_code)):
                registers = list(result.registers)
                leaf = Enclu.ERESUME
                continue
            return result

    def continue_entry(self, encl: DriverEnclave, tcs: int, aep: int,
                       entry_fsgs: tuple[int, int], memory: Any) -> Any:
        """Go on with an EENTER the TCS's runner handed over to the EVM (a
        fast-path entry of the program's library); its AEXs are resolved as
        ``enter`` resolves them."""
        if encl.destroyed:
            raise EnclaveLost("the enclave was destroyed")
        result = self.evm.continue_entry(encl.secs_page, tcs, aep, entry_fsgs, memory)
        if result.kind is ExitKind.AEX and (result.interrupt or (
                result.vector == Vector.PF and self.handle_fault(encl, result.address,
                                                                  result.error_code))):
            return self.enter(encl, Enclu.ERESUME, list(result.registers), 0, memory)
        return result

    # -- teardown -----------------------------------------------------------------
    def destroy(self, encl: DriverEnclave) -> None:
        """Release an enclave (closing /dev/sgx_enclave): EREMOVE everything."""
        with self._lock, encl.lock:
            if encl.destroyed:
                return
            encl.destroyed = True
            needing_va = 0
            remove_all = getattr(self.evm, "destroy", None)
            if remove_all is not None:
                # every page and the SECS in one request (EREMOVE by EREMOVE
                # cost a round trip a page: 73 ms for 467 pages over a channel)
                remove_all(encl.secs_page)
            else:
                for page in encl.pages.values():
                    if page.epc is not None:
                        self.evm.eremove(page.epc)
                self.evm.eremove(encl.secs_page)
            for page in encl.pages.values():
                if page.epc is not None:
                    self._free_epc(page.epc)
                elif page.evicted is not None:
                    self._give_va_slot(page.evicted.va_page, page.evicted.va_index)
                    self.evicted_pages -= 1
                self._off_the_clock(page)
                needing_va += 1
            self._release_va(needing_va)
            encl.pages.clear()
            encl.deferred.clear()
            self._free_epc(encl.secs_page)
            self.enclaves.pop(encl.secs_page, None)
            self._shrink_va()
