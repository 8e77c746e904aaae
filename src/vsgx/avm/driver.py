"""The AVM's SGX driver: the semantics of Linux's in-kernel driver
(arch/x86/kernel/cpu/sgx: ioctl.c, encl.c, main.c) as a Python API, with
every ENCLS leaf forwarded to the EVM.

It owns what the kernel owns: the EPC bank's allocation (the EVM only
checks), the page array of each enclave, VA pages and evicted blobs (EPC
contents leave the EVM only encrypted by EWB), the reclaimer that pages out
under EPC pressure, and the fault handler that reloads evicted pages (ELDU)
and, on SGX2, adds pages on first touch (EAUG). Errors carry the errno the
kernel's ioctl would return.
"""

from __future__ import annotations

import errno as errnos
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from vsgx.arch.constants import (
    PAGE_SIZE,
    SIGSTRUCT_VENDOR_INTEL,
    Attribute,
    Enclu,
    PageType,
    PfErrorCode,
    Vector,
)
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.secs import Secs
from vsgx.arch.sigstruct import Sigstruct
from vsgx.errors import StructureError, VsgxError

VA_SLOTS = 512
EINIT_RETRIES = 1000


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
    itself; remote: the channel client, which has the same methods)."""

    def cpuid(self) -> Any: ...
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


@dataclass
class Evicted:
    ciphertext: bytes
    pcmd: bytes
    va_page: int
    va_index: int


@dataclass
class EnclavePage:
    """The driver's record of one enclave page (sgx_encl_page)."""

    linaddr: int
    page_type: int
    vm_max_prot: int
    epc: int | None = None
    evicted: Evicted | None = None


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


class SgxDriver:
    def __init__(self, evm: Evm, *, augment_on_fault: bool = True):
        self.evm = evm
        cpuid = evm.cpuid()
        if not cpuid.epc_sections:
            raise VsgxError("the EVM reports no EPC section")
        section = cpuid.epc_sections[0]
        self.sgx2 = bool(cpuid.sgx2)
        self.cpuid = cpuid
        self.augment_on_fault = augment_on_fault
        self.epc_base, self.epc_size = section.base, section.size
        self._free = list(range(section.base + section.size - PAGE_SIZE, section.base - 1,
                                -PAGE_SIZE))
        self._lock = threading.RLock()
        # Reclaimable pages in LRU order: (enclave, linaddr)
        self._lru: OrderedDict[tuple[int, int], DriverEnclave] = OrderedDict()
        self._va_free: dict[int, list[int]] = {}
        self._va_capacity = 0
        self._pages_needing_va = 0
        self.enclaves: dict[int, DriverEnclave] = {}
        self.evictions = 0
        self.reloads = 0

    @property
    def free_epc_pages(self) -> int:
        return len(self._free)

    # -- EPC allocation and reclaim -------------------------------------------
    def _alloc_epc(self, reclaim: bool = True) -> int:
        with self._lock:
            while not self._free:
                if not reclaim or not self._reclaim_one():
                    raise DriverError(errnos.ENOMEM, "no free EPC page and nothing to reclaim")
            return self._free.pop()

    def _free_epc(self, address: int) -> None:
        with self._lock:
            self._free.append(address)

    def _va_slot(self) -> tuple[int, int]:
        """A free VA slot (there is one for every enclave page: see _reserve_va)."""
        for page, slots in self._va_free.items():
            if slots:
                return page, slots.pop()
        raise DriverError(errnos.ENOMEM, "no free VA slot")

    def _reserve_va(self) -> None:
        """Keep a VA slot for every enclave page, so that eviction never needs
        an EPC page (Linux adds a VA page every 512 enclave pages)."""
        with self._lock:
            self._pages_needing_va += 1
            if self._pages_needing_va <= self._va_capacity:
                return
            page = self._alloc_epc()
            self.evm.epa(page)
            self._va_free[page] = list(range(VA_SLOTS - 1, -1, -1))
            self._va_capacity += VA_SLOTS

    def _release_va(self) -> None:
        with self._lock:
            self._pages_needing_va -= 1

    def _reclaim_one(self) -> bool:
        """EBLOCK, ETRACK and EWB the least recently added page (main.c)."""
        for key in list(self._lru):
            encl = self._lru.pop(key)
            page = encl.pages.get(key[1])
            if encl.destroyed or page is None or page.epc is None:
                continue
            with encl.lock:
                if self._evict(encl, page):
                    return True
        return False

    def _evict(self, encl: DriverEnclave, page: EnclavePage) -> bool:
        assert page.epc is not None
        evm = self.evm
        status = evm.eblock(page.epc)
        if status not in (SgxError.SUCCESS, SgxError.BLKSTATE):
            return False
        va_page, va_index = self._va_slot()
        slot = va_page + 8 * va_index
        result, blob = evm.ewb(page.epc, slot)
        if result is SgxError.NOT_TRACKED:
            evm.etrack(encl.secs_page)
            result, blob = evm.ewb(page.epc, slot)
            if result is SgxError.NOT_TRACKED:
                evm.kick(encl.secs_page)  # the IPI: threads inside take an AEX
                evm.etrack(encl.secs_page)
                result, blob = evm.ewb(page.epc, slot)
        if result not in (SgxError.SUCCESS, SgxError.VA_SLOT_OCCUPIED) or blob is None:
            self._va_free[va_page].append(va_index)
            return False
        self._free.append(page.epc)
        page.epc = None
        page.evicted = Evicted(blob.ciphertext, blob.pcmd, va_page, va_index)
        self.evictions += 1
        return True

    def _load(self, encl: DriverEnclave, page: EnclavePage) -> None:
        """ELDU an evicted page back (encl.c __sgx_encl_eldu)."""
        evicted = page.evicted
        assert evicted is not None
        epc = self._alloc_epc()
        status = self.evm.eldu(epc, evicted.va_page + 8 * evicted.va_index, encl.secs_page,
                               page.linaddr, evicted.ciphertext, evicted.pcmd)
        if status is not SgxError.SUCCESS:
            self._free_epc(epc)
            raise DriverError(errnos.EFAULT, f"ELDU failed: {status.name}", status)
        self._va_free[evicted.va_page].append(evicted.va_index)
        page.epc = epc
        page.evicted = None
        self._lru[(encl.secs_page, page.linaddr)] = encl
        self.reloads += 1

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

    def add_pages(self, encl: DriverEnclave, offset: int, source: bytes, secinfo: bytes,
                  measure: bool) -> int:
        """Add ``source`` (whole pages) at ``offset``; returns bytes added."""
        if encl.initialized or encl.destroyed:
            raise DriverError(errnos.EINVAL, "the enclave is initialized or gone")
        self._check_range(encl, offset, len(source))
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
        done = 0
        with encl.lock:
            for position in range(0, len(source), PAGE_SIZE):
                linaddr = encl.base + offset + position
                if linaddr in encl.pages:
                    raise DriverError(errnos.EBUSY, f"page {linaddr:#x} is already added")
                self._reserve_va()
                try:
                    epc = self._alloc_epc()
                except DriverError:
                    self._release_va()
                    raise
                try:
                    self.evm.eadd(epc, encl.secs_page, linaddr,
                                  bytes(source[position:position + PAGE_SIZE]), secinfo,
                                  measure=measure)
                except Fault as fault:
                    self.evm.eremove(epc)
                    self._free_epc(epc)
                    self._release_va()
                    raise DriverError(errnos.EIO, f"EADD/EEXTEND faulted: {fault}") from None
                max_prot = 0x3 if info.page_type == PageType.TCS else perms
                encl.pages[linaddr] = EnclavePage(linaddr, info.page_type, max_prot, epc)
                self._lru[(encl.secs_page, linaddr)] = encl
                done += PAGE_SIZE
        return done

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
        if self.evm.etrack(encl.secs_page) is not SgxError.SUCCESS:
            self.evm.kick(encl.secs_page)
            if self.evm.etrack(encl.secs_page) is not SgxError.SUCCESS:
                raise DriverError(errnos.EFAULT, "ETRACK did not complete")

    def _page_at(self, encl: DriverEnclave, linaddr: int) -> EnclavePage:
        page = encl.pages.get(linaddr)
        if page is None:
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
                self._free_epc(epc)
                del encl.pages[linaddr]
                self._lru.pop((encl.secs_page, linaddr), None)
                self._release_va()
                done += PAGE_SIZE
        return done

    # -- the application's mapping ------------------------------------------
    def mprotect(self, encl: DriverEnclave, address: int, length: int, prot: int) -> None:
        """mprotect() on the enclave mapping: never above a page's vm_max_prot."""
        if address % PAGE_SIZE or length % PAGE_SIZE or not encl.contains(address):
            raise DriverError(errnos.EINVAL, "mprotect range is not aligned inside ELRANGE")
        for page in range(address, address + length, PAGE_SIZE):
            record = encl.pages.get(page)
            if record is not None and prot & ~record.vm_max_prot:
                raise DriverError(errnos.EACCES, f"page {page:#x} may not become {prot:#x}")
        self.evm.set_page_protection(encl.secs_page, address, length // PAGE_SIZE, prot)

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
                    return True
                return False
            if not (self.sgx2 and self.augment_on_fault and encl.initialized
                    and encl.holes_accessible):
                return False
            self._reserve_va()
            epc = self._alloc_epc()
            try:
                self.evm.eaug(epc, encl.secs_page, linaddr)
            except Fault:
                self._free_epc(epc)
                self._release_va()
                return False
            encl.pages[linaddr] = EnclavePage(linaddr, PageType.REG, 0x7, epc)
            self._lru[(encl.secs_page, linaddr)] = encl
            return True

    # -- entering ---------------------------------------------------------------
    def _reload_for(self, encl: DriverEnclave, fault: Fault) -> bool:
        """An EENTER/ERESUME faulted on an evicted TCS or SSA page: reload it."""
        if fault.vector != Vector.PF:
            return False
        page = encl.pages.get(fault.address & ~(PAGE_SIZE - 1))
        if page is None or page.evicted is None:
            return False
        with encl.lock:
            self._load(encl, page)
        return True

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
                if leaf == Enclu.EENTER:
                    result = evm.eenter(encl.secs_page, registers, return_rip, memory)
                else:
                    result = evm.eresume(encl.secs_page, registers, memory)
            except Fault as fault:
                if self._reload_for(encl, fault):
                    continue
                raise
            if result.kind != "aex":
                return result
            if result.interrupt or (result.vector == Vector.PF and self.handle_fault(
                    encl, result.address, result.error_code)):
                registers = list(result.registers)
                leaf = Enclu.ERESUME
                continue
            return result

    # -- teardown -----------------------------------------------------------------
    def destroy(self, encl: DriverEnclave) -> None:
        """Release an enclave (closing /dev/sgx_enclave): EREMOVE everything."""
        with encl.lock:
            if encl.destroyed:
                return
            encl.destroyed = True
            for page in encl.pages.values():
                if page.epc is not None:
                    self.evm.eremove(page.epc)
                    self._free_epc(page.epc)
                elif page.evicted is not None:
                    self._va_free[page.evicted.va_page].append(page.evicted.va_index)
                self._lru.pop((encl.secs_page, page.linaddr), None)
                self._release_va()
            encl.pages.clear()
            self.evm.eremove(encl.secs_page)
            self._free_epc(encl.secs_page)
            with self._lock:
                self.enclaves.pop(encl.secs_page, None)
