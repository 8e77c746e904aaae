"""ENCLS leaves (SDM Vol. 3D ch. 38.3), checks in the order of the SDM's
pseudocode. Operands arrive as values (the AVM sends the bytes of PAGEINFO,
SECINFO and source pages in its messages) and EPC addresses; faults are
raised as Fault, SGX error codes are returned.

vsgx deviations, all refusals the hardware would not make: a linear page
may hold one EPC page at a time (#GP on a second), 32-bit enclaves are not
supported (#GP at ECREATE), and SECS pages are never evicted (#GP at EWB).

Batch entry points (``eadd_pages``, ``eblock_pages``, ``ewb_pages``,
``eld_pages``) run the same checks, page by page, as the single leaves; they
exist so that a batch costs one call and one lock, not one per page. One
addition has no single-leaf twin: ``eadd_uniform`` EADDs a run of pages that
all hold one 32-bit pattern, hashing every EADD (and EEXTEND) record in
order as the leaves would, and gives EPC pages to as many of them as the
caller offers; the rest stay *deferred* — in the state of a page that EWB
wrote out, with its blob kept inside the EVM (it is the pattern) — until
``eldu_deferred`` loads one, as ELDU would. MRENCLAVE and everything the
enclave can observe are those of EADD followed by EWB and ELDU.
"""

from __future__ import annotations

import hmac
import struct
from array import array
from collections.abc import Sequence

from vsgx.arch.constants import (
    PAGE_SIZE,
    SSA_GPRSGX_SIZE,
    Attribute,
    KeyName,
    PageType,
)
from vsgx.arch.einittoken import EINITTOKEN_SIZE, Einittoken
from vsgx.arch.errors import Fault, SgxError, gp
from vsgx.arch.pageinfo import Pcmd, Secinfo
from vsgx.arch.secs import Secs
from vsgx.arch.sigstruct import Sigstruct
from vsgx.arch.ssa import misc_size, xsave_size
from vsgx.arch.tcs import Tcs
from vsgx.crypto.einittoken import einittoken_mac_is_valid
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
from vsgx.crypto.paging import (
    EWB_HEADER,
    MAC_SIZE,
    decrypt_page,
    decrypt_page_into,
    paging_header,
    seal_page,
)
from vsgx.crypto.sigstruct import check_sigstruct, mrsigner
from vsgx.errors import StructureError
from vsgx.evm.enclave import EnclaveMemory, EnclaveState
from vsgx.evm.epc import EpcmEntry, epc_pf
from vsgx.evm.machine import Machine

CANONICAL_LIMIT = 1 << 47
MIN_ENCLAVE_SIZE = 2 * PAGE_SIZE
# EDBGRD may read TCS bytes below this offset (the architectural fields).
TCS_DEBUG_LIMIT = 72
_CHILD_TYPES = (PageType.REG, PageType.TCS, PageType.TRIM)
_SECINFO = struct.Struct("<Q56x")
_SECINFO_FLAGS = struct.Struct("<Q")
_PCMD = struct.Struct("<64sQ40x16s")  # PCMD: SECINFO, ENCLAVEID, reserved, MAC
_PCMD_FIELDS = struct.Struct("<64sQ40s16s")
_PCMD_EWB = struct.Struct("<Q56xQ40x16s")  # PCMD from SECINFO.FLAGS, ENCLAVEID, MAC
_NO_RESERVED = bytes(40)
_PAGE_TYPES = {int(t): t for t in PageType}
_PT_REG, _PT_TCS, _PT_TRIM, _PT_SECS, _PT_VA = (PageType.REG, PageType.TCS, PageType.TRIM,
                                                PageType.SECS, PageType.VA)
_SEALED_SIZE = PAGE_SIZE + MAC_SIZE
_NO_SECINFO_RESERVED = bytes(56)
_PAGE_MASK = PAGE_SIZE - 1
_PT_BITS = {t: int(t) << 8 for t in PageType}
_SUCCESS, _OCCUPIED = SgxError.SUCCESS, SgxError.VA_SLOT_OCCUPIED
_NOT_BLOCKED = (SgxError.PAGE_NOT_BLOCKED, None)
_NOT_TRACKED = (SgxError.NOT_TRACKED, None)
_U64 = struct.Struct("<Q")
_PCMD_MAC = 112  # PCMD: SECINFO 0-63, ENCLAVEID 64-71, reserved 72-111, MAC 112-127
# SECINFO.FLAGS bits 0-5 -> EPCM R, W, X, PENDING, MODIFIED, PR
_FLAG_BITS = [tuple(bool(f >> bit & 1) for bit in range(6)) for f in range(64)]


def _secinfo(raw: bytes) -> Secinfo:
    try:
        return Secinfo.unpack(raw)
    except StructureError as exc:
        raise gp(f"SECINFO: {exc}") from None


def secs_of(m: Machine, address: int) -> EnclaveState:
    """The enclave whose SECS is the EPC page at ``address`` (#PF otherwise)."""
    entry = m.epc.entry(address, "SECS")
    if not entry.valid or entry.pt != PageType.SECS:
        raise epc_pf(address, f"{address:#x} is not a SECS page")
    return m.epc.secs[address]


def _child(m: Machine, address: int, what: str = "page") -> EpcmEntry:
    entry = m.epc.entry(address, what)
    if not entry.valid:
        raise epc_pf(address, f"EPC page {address:#x} is not valid")
    return entry


def _is_canonical(address: int) -> bool:
    return address < CANONICAL_LIMIT or address >= (1 << 64) - CANONICAL_LIMIT


def _xfrm_is_legal(xfrm: int, supported: int) -> bool:
    """XFRM must be a value XSETBV would load into XCR0 on this CPU."""
    if xfrm & 0x3 != 0x3 or xfrm & ~supported:
        return False
    avx512 = (xfrm >> 5) & 0x7
    if avx512 not in (0, 0x7) or (avx512 and not xfrm & 0x4):
        return False
    return (xfrm >> 3) & 0x3 in (0, 0x3) and (xfrm >> 17) & 0x3 in (0, 0x3)


def _attach(encl: EnclaveState, entry: EpcmEntry, linaddr: int) -> None:
    """Give ``linaddr`` an EPC page; the caller writes the whole page."""
    page = linaddr & ~(PAGE_SIZE - 1)
    _check_free_linear(encl, page)
    encl.memory.reuse(page - encl.base)  # type: ignore[union-attr]
    entry.enclave = encl
    entry.linaddr = page
    entry.valid = True
    encl.pages[page] = entry
    encl.old.add(page)  # its accessed bit starts clear
    encl.child_count += 1
    encl.note_change(page)


def _check_free_linear(encl: EnclaveState, page: int) -> None:
    if page in encl.pages or (encl.deferred and encl.deferred.get(page) is not None):
        raise gp(f"linear page {page:#x} already has an EPC page (vsgx maps one per page)")


def _detach(encl: EnclaveState, entry: EpcmEntry) -> None:
    assert encl.memory is not None
    encl.pages.pop(entry.linaddr, None)
    encl.old.discard(entry.linaddr)
    encl.memory.release(entry.linaddr - encl.base)
    encl.child_count -= 1
    encl.note_change(entry.linaddr)
    entry.clear()


def ecreate(m: Machine, epc_page: int, secs: bytes, secinfo: bytes, linaddr: int = 0,
            secs_operand: int = 0) -> EnclaveState:
    """ECREATE: a new SECS in ``epc_page`` from the 4 KiB ``secs`` source page."""
    entry = m.epc.entry(epc_page, "SECS page")
    if linaddr != 0 or secs_operand != 0:
        raise gp("PAGEINFO.LINADDR and PAGEINFO.SECS must be 0 for ECREATE")
    info = _secinfo(secinfo)
    if info.page_type != PageType.SECS:
        raise gp("SECINFO.PAGE_TYPE is not PT_SECS")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    if len(secs) != PAGE_SIZE:
        raise gp("the SECS source must be a 4 KiB page")
    try:
        s = Secs.unpack(secs, strict=False)
    except StructureError as exc:
        raise gp(str(exc)) from None
    config = m.config
    if not _xfrm_is_legal(s.xfrm, config.xfrm):
        raise gp(f"XFRM {s.xfrm:#x} is not legal on this CPU (supported {config.xfrm:#x})")
    if s.miscselect & ~config.miscselect:
        raise gp(f"MISCSELECT {s.miscselect:#x} has unsupported bits")
    if s.ssaframesize == 0 or s.ssaframesize * PAGE_SIZE < (
            xsave_size(s.xfrm) + SSA_GPRSGX_SIZE + misc_size(s.miscselect)):
        raise gp(f"SSAFRAMESIZE {s.ssaframesize} is too small for XFRM and MISCSELECT")
    if not s.attributes & Attribute.MODE64BIT:
        raise gp("32-bit enclaves are not supported by vsgx")
    if not _is_canonical(s.baseaddr):
        raise gp(f"BASEADDR {s.baseaddr:#x} is not canonical")
    cpuid = config.cpuid()
    if s.size >= 1 << cpuid.max_enclave_size_64:
        raise gp(f"SIZE {s.size:#x} exceeds the maximum enclave size")
    if s.size < MIN_ENCLAVE_SIZE or s.size & (s.size - 1):
        raise gp(f"SIZE {s.size:#x} is not a power of two of at least two pages")
    if s.baseaddr & (s.size - 1):
        raise gp("BASEADDR is not naturally aligned to SIZE")
    if s.attributes & ~cpuid.attributes:
        raise gp(f"ATTRIBUTES {s.attributes:#x} has bits this CPU does not allow")
    try:
        Secs.unpack(secs)
    except StructureError as exc:
        raise gp(f"SECS: {exc}") from None
    if (any(s.configid) or s.configsvn) and not s.attributes & Attribute.KSS:
        raise gp("CONFIGID/CONFIGSVN need ATTRIBUTES.KSS")
    encl = EnclaveState(secs_page=epc_page, eid=m.new_eid(), base=s.baseaddr, size=s.size,
                        ssaframesize=s.ssaframesize, miscselect=s.miscselect,
                        attributes=int(s.attributes), xfrm=int(s.xfrm), configid=s.configid,
                        configsvn=s.configsvn)
    assert encl.mrenclave_builder is not None
    encl.mrenclave_builder.ecreate(s.ssaframesize, s.size)
    try:
        # Memory of pages that left the EPC is held up to the EPC's size.
        encl.memory = EnclaveMemory(s.size, hold_limit=m.config.epc_pages)
    except MemoryError as exc:
        raise gp(str(exc)) from None
    entry.clear()
    entry.pt = PageType.SECS
    entry.valid = True
    m.epc.secs[epc_page] = encl
    return encl


def eadd(m: Machine, epc_page: int, secs_page: int, linaddr: int, source: bytes,
         secinfo: bytes) -> None:
    """EADD: copy ``source`` into ``epc_page`` at ``linaddr`` and measure it."""
    entry = m.epc.entry(epc_page)
    if linaddr % PAGE_SIZE:
        raise gp("PAGEINFO.LINADDR is not page aligned")
    m.epc.entry(secs_page, "SECS")
    info = _secinfo(secinfo)
    if info.page_type not in (PageType.REG, PageType.TCS):
        raise gp("EADD adds PT_REG and PT_TCS pages only")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    encl = secs_of(m, secs_page)
    if len(source) != PAGE_SIZE:
        raise gp("the source must be a 4 KiB page")
    content = bytearray(source)
    flags = info.flags
    if info.page_type == PageType.TCS:
        try:
            tcs = Tcs.unpack(content)
        except StructureError as exc:
            raise gp(f"TCS: {exc}") from None
        # The CPU clears these and measures the TCS with no permissions.
        tcs.flags &= ~1
        tcs.cssa = tcs.aep = tcs.state = 0
        content[:Tcs.SIZE] = tcs.pack()
        flags &= ~0x7
    elif info.flags & 0x2 and not info.flags & 0x1:
        raise gp("a writable page must be readable")
    if not encl.in_elrange(linaddr, PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} is outside ELRANGE")
    if encl.initialized:
        raise gp("the enclave is already initialized")
    _attach(encl, entry, linaddr)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    encl.mrenclave_builder.eadd(linaddr - encl.base, flags)
    entry.pt = PageType(info.page_type)
    entry.set_permissions(flags)
    entry.blocked = entry.pending = entry.modified = entry.pr = False
    encl.memory.page(linaddr - encl.base)[:] = content


def _free_epc_entries(m: Machine, epc_pages: Sequence[int]) -> list[EpcmEntry]:
    """The EPCM entries of EPC pages an add may fill: each once, each free."""
    entries = [m.epc.entry(page) for page in epc_pages]
    if len(set(epc_pages)) != len(epc_pages):
        raise gp("the same EPC page is given twice")
    for entry in entries:
        if entry.valid:
            raise epc_pf(entry.address, "the EPC page is in use")
    return entries


def _check_linear_range_free(encl: EnclaveState, linaddr: int, count: int) -> None:
    """No page of the range has an EPC page or is deferred (in the cheaper
    direction: the range's pages or the enclave's pages, whichever is fewer)."""
    end = linaddr + count * PAGE_SIZE
    pages = encl.pages
    if count <= len(pages):
        clash = next((p for p in range(linaddr, end, PAGE_SIZE) if p in pages), None)
    else:
        clash = next((p for p in pages if linaddr <= p < end), None)
    if clash is None and encl.deferred.overlaps(linaddr, count):
        clash = next(iter(encl.deferred.pages_in(linaddr, count)))
    if clash is not None:
        raise gp(f"linear page {clash:#x} already has an EPC page (vsgx maps one per page)")


def _regular_add_checks(m: Machine, secs_page: int, linaddr: int, count: int,
                        secinfo: bytes) -> tuple[EnclaveState, Secinfo]:
    """EADD's checks of the operands a run of REG pages shares."""
    if linaddr % PAGE_SIZE:
        raise gp("PAGEINFO.LINADDR is not page aligned")
    m.epc.entry(secs_page, "SECS")
    info = _secinfo(secinfo)
    if info.page_type != PageType.REG:
        raise gp("a run of pages is added as PT_REG (TCS pages are added one by one)")
    encl = secs_of(m, secs_page)
    if info.flags & 0x2 and not info.flags & 0x1:
        raise gp("a writable page must be readable")
    if count <= 0 or not encl.in_elrange(linaddr, count * PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} + {count} pages is outside ELRANGE")
    if encl.initialized:
        raise gp("the enclave is already initialized")
    return encl, info


def _give_pages(encl: EnclaveState, entries: list[EpcmEntry], linaddr: int, flags: int) -> None:
    """The EPCM side of EADD for consecutive pages (contents written by the caller)."""
    r, w, x = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    pages, old = encl.pages, encl.old
    for n, entry in enumerate(entries):
        page = linaddr + n * PAGE_SIZE
        entry.enclave = encl
        entry.linaddr = page
        entry.valid = True
        entry.pt = _PT_REG
        entry.r, entry.w, entry.x = r, w, x
        entry.blocked = entry.pending = entry.modified = entry.pr = False
        pages[page] = entry
        old.add(page)  # its accessed bit starts clear
        encl.note_change(page)
    encl.child_count += len(entries)


def eadd_pages(m: Machine, epc_pages: Sequence[int], secs_page: int, linaddr: int,
               source: bytes | memoryview, secinfo: bytes, measure: bool) -> None:
    """EADD of ``len(epc_pages)`` consecutive REG pages from ``source`` with
    one SECINFO, each followed by its sixteen EEXTENDs when ``measure``:
    every check first, then all pages (all or nothing)."""
    count = len(epc_pages)
    if len(source) != count * PAGE_SIZE:
        raise gp("the source must be one 4 KiB page per EPC page")
    encl, info = _regular_add_checks(m, secs_page, linaddr, count, secinfo)
    entries = _free_epc_entries(m, epc_pages)
    _check_linear_range_free(encl, linaddr, count)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    offset = linaddr - encl.base
    encl.memory.fill_from(offset, source)
    _give_pages(encl, entries, linaddr, info.flags)
    encl.mrenclave_builder.add_pages(offset, source, info.flags, measure)


def eadd_uniform(m: Machine, secs_page: int, linaddr: int, count: int, secinfo: bytes,
                 fill: int, measure: bool, epc_pages: Sequence[int] = ()) -> None:
    """EADD of ``count`` REG pages at ``linaddr`` whose every 32-bit word is
    ``fill`` (with their EEXTENDs when ``measure``); the first
    ``len(epc_pages)`` get those EPC pages, the others are deferred."""
    if not 0 <= fill <= 0xFFFFFFFF:
        raise gp("the fill pattern is a 32-bit value")
    encl, info = _regular_add_checks(m, secs_page, linaddr, count, secinfo)
    if len(epc_pages) > count:
        raise gp("more EPC pages than pages to add")
    entries = _free_epc_entries(m, epc_pages)
    _check_linear_range_free(encl, linaddr, count)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    page = fill.to_bytes(4, "little") * (PAGE_SIZE // 4)
    offset = linaddr - encl.base
    resident = len(entries)
    if resident:
        encl.memory.fill(offset, resident, page)
        _give_pages(encl, entries, linaddr, info.flags)
    if resident < count:
        encl.deferred.add(linaddr + resident * PAGE_SIZE, count - resident, (info.flags, fill))
    encl.mrenclave_builder.add_uniform_pages(offset, count, page, info.flags, measure)


def eldu_deferred(m: Machine, epc_page: int, secs_page: int, linaddr: int) -> None:
    """Load a deferred page into ``epc_page``: what ELDU of the blob EWB
    would have written at its EADD gives (its SECINFO, its pattern)."""
    entry = m.epc.entry(epc_page)
    if linaddr % PAGE_SIZE:
        raise gp("PAGEINFO.LINADDR is not page aligned")
    m.epc.entry(secs_page, "SECS")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    encl = secs_of(m, secs_page)
    if linaddr in encl.pages:
        raise gp(f"linear page {linaddr:#x} already has an EPC page (vsgx maps one per page)")
    taken = encl.deferred.take(linaddr)
    if taken is None:
        raise gp(f"no deferred page at {linaddr:#x}")
    flags, fill = taken  # type: ignore[misc]
    assert encl.memory is not None
    encl.memory.fill(linaddr - encl.base, 1, fill.to_bytes(4, "little") * (PAGE_SIZE // 4))
    _give_pages(encl, [entry], linaddr, flags)


def eextend(m: Machine, secs_page: int, chunk: int) -> None:
    """EEXTEND: measure the 256 bytes at EPC address ``chunk``."""
    m.epc.entry(secs_page, "SECS")
    if chunk % 256:
        raise gp("the EEXTEND chunk is not 256-byte aligned")
    page = chunk & ~(PAGE_SIZE - 1)
    entry = _child(m, page)
    if entry.pt not in (PageType.REG, PageType.TCS):
        raise epc_pf(page, "EEXTEND of a page that is neither REG nor TCS")
    if entry.enclave is None or entry.enclave.secs_page != secs_page:
        raise gp("the page does not belong to this SECS")
    encl = entry.enclave
    if encl.initialized:
        raise gp("the enclave is already initialized")
    offset = entry.linaddr - encl.base + (chunk & (PAGE_SIZE - 1))
    assert encl.mrenclave_builder is not None and encl.memory is not None
    encl.mrenclave_builder.eextend(offset, encl.memory.view[offset:offset + 256])


def measure_pages(m: Machine, secs_page: int, epc_page: int) -> None:
    """The sixteen EEXTENDs of one page (what a driver issues for a measured
    page): EEXTEND's checks hold for every chunk once they hold for the
    first (nothing changes the page between them), so they are made once."""
    eextend(m, secs_page, epc_page)
    entry = m.epc.entry(epc_page)
    encl = entry.enclave
    assert encl is not None and encl.mrenclave_builder is not None and encl.memory is not None
    offset = entry.linaddr - encl.base
    view, builder = encl.memory.view, encl.mrenclave_builder
    for chunk in range(256, PAGE_SIZE, 256):
        builder.eextend(offset + chunk, view[offset + chunk:offset + chunk + 256])


def _token_reserved_ok(raw: bytes) -> bool:
    token = Einittoken.unpack(raw, strict=False)
    if token.valid & ~1:
        return False
    try:
        Einittoken.unpack(raw)
    except StructureError:
        return False
    return True


def _cpusvn_le(requested: bytes, current: bytes) -> bool:
    """CPUSVN components (bytes here) may only be at or below the current ones."""
    return all(a <= b for a, b in zip(requested, current, strict=True))


def launch_key(m: Machine, token: Einittoken, lepubkeyhash: bytes) -> bytes:
    """The EINITTOKEN key EINIT recomputes from a token's LE fields (SDM 38.1.4)."""
    deps = KeyDependencies(
        keyname=KeyName.EINITTOKEN_KEY, isvprodid=token.isvprodidle, isvsvn=token.isvsvnle,
        ownerepoch=m.secrets.owner_epoch, attributes=token.maskedattributesle,
        xfrm=token.maskedxfrmle, mrsigner=lepubkeyhash, keyid=token.keyid,
        seal_key_fuses=m.secrets.seal_key_fuses, cpusvn=token.cpusvnle,
        miscselect=token.maskedmiscselectle, padding=PKCS1_PADDING)
    return derive_key(m.secrets.derivation_key, deps)


def einit(m: Machine, secs_page: int, sigstruct: bytes, token: bytes = bytes(EINITTOKEN_SIZE)
          ) -> SgxError:
    """EINIT: verify the SIGSTRUCT, the measurement and launch control."""
    m.epc.entry(secs_page, "SECS")
    if len(sigstruct) != Sigstruct.SIZE or len(token) != EINITTOKEN_SIZE:
        raise gp("SIGSTRUCT must be 1808 bytes and EINITTOKEN 304")
    check = check_sigstruct(sigstruct)
    if check is not SgxError.SUCCESS:
        return check
    sig = Sigstruct.unpack(sigstruct)
    encl = secs_of(m, secs_page)
    if any(sig.isvfamilyid) and not encl.attributes & Attribute.KSS:
        return SgxError.INVALID_SIG_STRUCT
    if encl.initialized:
        raise gp("the enclave is already initialized")
    assert encl.mrenclave_builder is not None
    measured = encl.mrenclave_builder.digest()
    if not hmac.compare_digest(measured, sig.enclavehash):
        return SgxError.INVALID_MEASUREMENT
    signer = mrsigner(sig.modulus)
    lehash = m.config.launch_policy.lepubkeyhash_for(signer)
    if encl.attributes & Attribute.EINITTOKEN_KEY and signer != lehash:
        return SgxError.INVALID_ATTRIBUTE
    if (encl.attributes & sig.attributemask != sig.attributes & sig.attributemask
            or encl.xfrm & sig.xfrmmask != sig.xfrm & sig.xfrmmask):
        return SgxError.INVALID_ATTRIBUTE
    if encl.miscselect & sig.miscmask != sig.miscselect & sig.miscmask:
        return SgxError.INVALID_ATTRIBUTE
    tok = Einittoken.unpack(token, strict=False)
    if not tok.valid & 1:
        if signer != lehash:
            return SgxError.INVALID_EINITTOKEN
    else:
        if tok.maskedattributesle & Attribute.DEBUG and not encl.debug:
            return SgxError.INVALID_EINITTOKEN
        if not _token_reserved_ok(token):
            return SgxError.INVALID_EINITTOKEN
        if not _cpusvn_le(tok.cpusvnle, m.config.cpusvn):
            return SgxError.INVALID_CPUSVN
        if not einittoken_mac_is_valid(launch_key(m, tok, lehash), tok):
            return SgxError.INVALID_EINITTOKEN
        if tok.mrenclave != measured or tok.mrsigner != signer:
            return SgxError.INVALID_MEASUREMENT
        if tok.attributes != encl.attributes or tok.xfrm != encl.xfrm:
            return SgxError.INVALID_ATTRIBUTE
    encl.isvprodid, encl.isvsvn = sig.isvprodid, sig.isvsvn
    encl.isvfamilyid, encl.isvextprodid = sig.isvfamilyid, sig.isvextprodid
    encl.finish_init(measured, signer)
    return SgxError.SUCCESS


def eremove(m: Machine, epc_page: int) -> SgxError:
    entry = m.epc.entry(epc_page)
    if not entry.valid:
        return SgxError.SUCCESS
    if entry.pt == PageType.VA:
        m.epc.va_slots.pop(epc_page, None)
        entry.clear()
        return SgxError.SUCCESS
    if entry.pt == PageType.SECS:
        encl = m.epc.secs[epc_page]
        if encl.child_count:
            return SgxError.CHILD_PRESENT
        destroy_enclave(encl)
        del m.epc.secs[epc_page]
        entry.clear()
        return SgxError.SUCCESS
    encl = entry.enclave
    assert encl is not None
    if entry.pt == PageType.TRIM and not entry.modified:
        _detach(encl, entry)
        return SgxError.SUCCESS
    if encl.inside:
        return SgxError.ENCLAVE_ACT
    thread = encl.threads.pop(entry.linaddr, None)
    if thread is not None:
        thread.close()  # type: ignore[attr-defined]
    _detach(encl, entry)
    return SgxError.SUCCESS


def destroy_enclave(encl: EnclaveState) -> None:
    """Release an enclave's executors and memory (when its SECS goes)."""
    encl.deferred.clear()
    for thread in list(encl.threads.values()):
        close = getattr(thread, "close", None)
        if close is not None:
            close()
    encl.threads.clear()
    if encl.memory is not None:
        encl.memory.close()
        encl.memory = None


def _debuggable(m: Machine, address: int, align: int) -> tuple[EpcmEntry, int]:
    if address % align:
        raise gp("EDBGRD/EDBGWR address is not aligned")
    page = address & ~(PAGE_SIZE - 1)
    return _child(m, page), address - page


def edbgrd(m: Machine, address: int) -> tuple[SgxError, int]:
    """EDBGRD: read 8 bytes of a debug enclave's page (RBX)."""
    entry, offset = _debuggable(m, address, 8)
    if entry.pt not in (PageType.REG, PageType.TCS, PageType.VA):
        raise epc_pf(address & ~(PAGE_SIZE - 1), "EDBGRD of a SECS or TRIM page")
    if entry.pending or entry.modified:
        return SgxError.PAGE_NOT_DEBUGGABLE, 0
    if entry.pt == PageType.VA:
        slot = m.epc.va_slots[entry.address][offset // 8]
        return SgxError.SUCCESS, (1 << 64) - 1 if slot else 0
    if entry.pt == PageType.TCS and offset >= TCS_DEBUG_LIMIT:
        raise gp("EDBGRD beyond the TCS fields")
    encl = entry.enclave
    assert encl is not None
    if not encl.debug:
        raise gp("EDBGRD of a non-debug enclave")
    view = encl.page_view(entry.linaddr)
    return SgxError.SUCCESS, int.from_bytes(view[offset:offset + 8], "little")


def edbgwr(m: Machine, address: int, value: int) -> SgxError:
    """EDBGWR: write 8 bytes into a debug enclave's page."""
    entry, offset = _debuggable(m, address, 8)
    if entry.pt not in (PageType.REG, PageType.TCS):
        raise epc_pf(address & ~(PAGE_SIZE - 1), "EDBGWR of a SECS, VA or TRIM page")
    if entry.pending or entry.modified:
        return SgxError.PAGE_NOT_DEBUGGABLE
    if entry.pt == PageType.TCS and offset != 8:
        raise gp("EDBGWR may write TCS.FLAGS only")
    encl = entry.enclave
    assert encl is not None
    if not encl.debug:
        raise gp("EDBGWR of a non-debug enclave")
    encl.page_view(entry.linaddr)[offset:offset + 8] = (value & ((1 << 64) - 1)).to_bytes(
        8, "little")
    encl.rewritten.append(entry.linaddr)
    encl.note_change(entry.linaddr)  # executors cache TCS contents by generation
    return SgxError.SUCCESS


def epa(m: Machine, epc_page: int, page_type: int = PageType.VA) -> None:
    """EPA: turn a free EPC page into a Version Array."""
    if page_type != PageType.VA:
        raise gp("EPA needs RBX = PT_VA")
    entry = m.epc.entry(epc_page)
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    entry.clear()
    entry.pt = PageType.VA
    entry.valid = True
    m.epc.va_slots[epc_page] = array("Q", bytes(PAGE_SIZE))


def eblock(m: Machine, epc_page: int) -> SgxError:
    result = eblock_pages(m, (epc_page,))[0]
    if isinstance(result, Fault):
        raise result
    return result


def eblock_pages(m: Machine, epc_pages: Sequence[int]) -> list[SgxError | Fault]:
    """EBLOCK of each page in turn; a fault ends the batch (its last result)."""
    results: list[SgxError | Fault] = []
    epc = m.epc
    base, end, entries = epc.base, epc.end, epc.entries
    for epc_page in epc_pages:
        if epc_page & _PAGE_MASK or not base <= epc_page < end:
            try:
                epc.entry(epc_page)  # raises the fault the operand deserves
            except Fault as fault:
                results.append(fault)
                break
        entry = entries[(epc_page - base) >> 12]
        if not entry.valid:
            results.append(SgxError.PG_INVLD)
            continue
        pt = entry.pt
        if pt is not _PT_REG and pt is not _PT_TCS and pt is not _PT_TRIM:
            results.append(SgxError.PG_IS_SECS if pt is _PT_SECS else SgxError.NOTBLOCKABLE)
            continue
        if entry.blocked:
            results.append(SgxError.BLKSTATE)
            continue
        encl = entry.enclave
        assert encl is not None
        entry.blocked = True
        entry.block_epoch = encl.epoch
        encl.note_change(entry.linaddr)
        results.append(SgxError.SUCCESS)
    return results


def etrack(m: Machine, secs_page: int) -> SgxError:
    encl = secs_of(m, secs_page)
    return SgxError.SUCCESS if encl.etrack() else SgxError.PREV_TRK_INCMPL


def _va_slot(m: Machine, slot: int) -> tuple[array, int]:
    if slot % 8:
        raise gp("the VA slot is not 8-byte aligned")
    page = slot & ~(PAGE_SIZE - 1)
    entry = m.epc.entry(page, "VA slot")
    if not entry.valid or entry.pt != PageType.VA:
        raise epc_pf(page, "the VA slot is not in a VA page")
    return m.epc.va_slots[page], (slot - page) // 8


class EvictedPage:
    """What EWB writes out: the encrypted page and its PCMD. ``sealed`` is
    the ciphertext followed by the MAC (which PCMD carries too), the form
    ELDU decrypts without copying; ``ciphertext`` is the page alone."""

    __slots__ = ("linaddr", "pcmd", "sealed")

    def __init__(self, sealed: bytes, pcmd: bytes, linaddr: int):
        self.sealed, self.pcmd, self.linaddr = sealed, pcmd, linaddr

    @property
    def ciphertext(self) -> bytes:
        return self.sealed[:PAGE_SIZE]


def ewb(m: Machine, epc_page: int, va_slot: int) -> tuple[SgxError, EvictedPage | None]:
    """EWB: evict a blocked, tracked page (or a VA page) under the paging key."""
    result = ewb_pages(m, ((epc_page, va_slot),))[0]
    if isinstance(result, Fault):
        raise result
    return result


def ewb_pages(m: Machine, pairs: Sequence[tuple[int, int]]
              ) -> list[tuple[SgxError, EvictedPage | None] | Fault]:
    """EWB of each (EPC page, VA slot) in turn, with EWB's checks in the
    SDM's order; a fault ends the batch (its last result) and the pages
    before it stay written out. (The lookups are written out inline: at
    this rate a function call per check is most of the cost.)"""
    epc = m.epc
    base, end, entries, va_pages = epc.base, epc.end, epc.entries, epc.va_slots
    cipher = m.secrets.paging_cipher
    header_of, pcmd_of = EWB_HEADER.pack, _PCMD_EWB.pack
    results: list[tuple[SgxError, EvictedPage | None] | Fault] = []
    append = results.append
    last: EnclaveState | None = None
    last_epoch = tracked = None
    for epc_page, va_slot in pairs:
        try:
            if epc_page & _PAGE_MASK or not base <= epc_page < end:
                epc.entry(epc_page)  # raises the fault the operand deserves
            entry = entries[(epc_page - base) >> 12]
            va_page = va_slot & ~_PAGE_MASK
            if va_page == epc_page:
                raise gp("the VA slot is in the page being evicted")
            if not entry.valid:
                raise epc_pf(epc_page, "EWB of an invalid page")
            if va_slot & 7 or not base <= va_page < end:
                slots, index = _va_slot(m, va_slot)
            else:
                va_entry = entries[(va_page - base) >> 12]
                if not va_entry.valid or va_entry.pt is not _PT_VA:
                    raise epc_pf(va_page, "the VA slot is not in a VA page")
                slots, index = va_pages[va_page], (va_slot & _PAGE_MASK) >> 3
            pt = entry.pt
            if pt is _PT_SECS:
                raise gp("vsgx does not evict SECS pages")
        except Fault as fault:
            append(fault)
            break
        linaddr = entry.linaddr
        if pt is _PT_VA:
            encl = None
            eid = 0
            content: bytes | memoryview = va_pages[epc_page].tobytes()
        else:
            encl = entry.enclave
            if not entry.blocked:
                append(_NOT_BLOCKED)
                continue
            epoch = entry.block_epoch
            if encl is not last or epoch != last_epoch:
                # what every page of this enclave and epoch needs (a batch is
                # one of each, mostly): tracking cannot change under the lock
                last, last_epoch, eid, ebase, view = encl, epoch, encl.eid, encl.base, \
                    encl.memory.view
                tracked = encl.is_tracked(epoch)
            if not tracked:
                append(_NOT_TRACKED)
                continue
            offset = linaddr - ebase
            content = view[offset:offset + PAGE_SIZE]
        flags = (_PT_BITS[pt] | entry.r | entry.w << 1 | entry.x << 2 | entry.pending << 3
                 | entry.modified << 4 | entry.pr << 5)
        version = m.next_version
        m.next_version = version + 1
        sealed = seal_page(cipher, version, header_of(flags, linaddr, eid), content)
        status = _OCCUPIED if slots[index] else _SUCCESS
        slots[index] = version
        if encl is not None:
            del encl.pages[linaddr]
            if encl.old:
                encl.old.discard(linaddr)
            encl.memory.release(offset)
            encl.child_count -= 1
            encl.note_change(linaddr)
        else:
            del va_pages[epc_page]
        entry.clear()
        append((status, EvictedPage(sealed, pcmd_of(flags, eid, sealed[PAGE_SIZE:]), linaddr)))
    return results


def eld(m: Machine, epc_page: int, va_slot: int, secs_page: int, linaddr: int,
        ciphertext: bytes, pcmd: bytes, blocked: bool) -> SgxError:
    """ELDB (blocked=True) / ELDU: load an evicted page back into the EPC."""
    result = eld_pages(m, secs_page, ((epc_page, va_slot, linaddr, ciphertext, pcmd),),
                       blocked, sealed_ok=False)[0]
    if isinstance(result, Fault):
        raise result
    return result


def eld_pages(m: Machine, secs_page: int,
              items: Sequence[tuple[int, int, int, bytes | memoryview, bytes]],
              blocked: bool = False, sealed_ok: bool = True) -> list[SgxError | Fault]:
    """ELDB / ELDU of each (EPC page, VA slot, LINADDR, blob, PCMD) in turn,
    with ELDU's checks in the SDM's order; PAGEINFO.SECS is ``secs_page``
    for all of them. A blob is the page's ciphertext, or the sealed form
    (ciphertext then MAC) that EWB gives; the MAC compared is PCMD's either
    way. A fault ends the batch (its last result)."""
    epc = m.epc
    base, end, entries, va_pages = epc.base, epc.end, epc.entries, epc.va_slots
    cipher = m.secrets.paging_cipher
    header_of = EWB_HEADER.pack
    results: list[SgxError | Fault] = []
    append = results.append
    secs: EnclaveState | None = None
    for epc_page, va_slot, linaddr, blob, pcmd in items:
        try:
            if epc_page & _PAGE_MASK or not base <= epc_page < end:
                epc.entry(epc_page)  # raises the fault the operand deserves
            entry = entries[(epc_page - base) >> 12]
            va_page = va_slot & ~_PAGE_MASK
            if va_slot & 7 or not base <= va_page < end:
                slots, index = _va_slot(m, va_slot)
            else:
                va_entry = entries[(va_page - base) >> 12]
                if not va_entry.valid or va_entry.pt is not _PT_VA:
                    raise epc_pf(va_page, "the VA slot is not in a VA page")
                slots, index = va_pages[va_page], (va_slot & _PAGE_MASK) >> 3
            if entry.valid:
                raise epc_pf(epc_page, "the EPC page is in use")
            size = len(blob)
            if ((size != PAGE_SIZE and not (sealed_ok and size == _SEALED_SIZE))
                    or len(pcmd) != Pcmd.SIZE):
                raise gp("ELDU needs a 4 KiB page and a 128-byte PCMD")
            flags = _U64.unpack_from(pcmd)[0]
            page_type = _PAGE_TYPES.get((flags >> 8) & 0xFF)
            encl: EnclaveState | None = None
            if page_type is _PT_REG or page_type is _PT_TCS or page_type is _PT_TRIM:
                if secs is None:
                    secs = secs_of(m, secs_page)
                    # what every page of the batch needs of its enclave
                    ebase, eend, resident, old = secs.base, secs.base + secs.size, \
                        secs.pages, secs.old
                    deferred = secs.deferred if len(secs.deferred) else None
                    memory = secs.memory
                    view = memory.view  # type: ignore[union-attr]
                encl = secs
                eid = encl.eid
            elif page_type is _PT_VA:
                if secs_page:
                    raise gp("PAGEINFO.SECS must be 0 to load a VA page")
                eid = 0
            else:
                append(SgxError.MAC_COMPARE_FAIL)
                continue
        except Fault as fault:
            append(fault)
            break
        version = slots[index]
        # EWB bound a page-aligned LINADDR inside ELRANGE into the MAC: any
        # other LINADDR cannot verify (and must not be written to).
        if not version or (encl is not None and (
                linaddr & _PAGE_MASK or not ebase <= linaddr < eend)):
            append(SgxError.MAC_COMPARE_FAIL)
            continue
        mac = pcmd[_PCMD_MAC:]
        if size == _SEALED_SIZE and blob[PAGE_SIZE:] == mac:
            sealed = blob
        else:
            sealed = bytes(blob[:PAGE_SIZE]) + mac
        if pcmd[8:64] == _NO_SECINFO_RESERVED and pcmd[72:_PCMD_MAC] == _NO_RESERVED:
            header = header_of(flags, linaddr, eid)
        else:
            header = paging_header(pcmd[:64], linaddr, eid, pcmd[72:_PCMD_MAC])
        if encl is None or linaddr in resident or (
                deferred is not None and deferred.get(linaddr) is not None):
            # A VA page, or a linear page that is taken: decrypt aside (the
            # MAC is checked before the one-page-per-address refusal).
            page = decrypt_page(cipher, version, header, sealed[:PAGE_SIZE], mac)
            if page is None:
                append(SgxError.MAC_COMPARE_FAIL)
                continue
            if encl is not None:
                append(gp(f"linear page {linaddr:#x} already has an EPC page "
                          "(vsgx maps one per page)"))
                break
            slots[index] = 0
            entry.clear()
            entry.pt = _PT_VA
            entry.valid = True
            va_pages[epc_page] = array("Q", page)
            append(_SUCCESS)
            continue
        offset = linaddr - ebase
        memory.reuse(offset)
        if not decrypt_page_into(cipher, version, header, sealed,
                                 view[offset:offset + PAGE_SIZE]):
            append(SgxError.MAC_COMPARE_FAIL)
            continue
        slots[index] = 0
        entry.pt = page_type
        entry.r, entry.w, entry.x, entry.pending, entry.modified, entry.pr = \
            _FLAG_BITS[flags & 0x3F]
        entry.enclave = encl
        entry.linaddr = linaddr
        entry.valid = True
        entry.blocked = blocked
        entry.block_epoch = encl.epoch if blocked else -1
        entry.mod_epoch = -1
        resident[linaddr] = entry
        old.add(linaddr)  # its accessed bit starts clear
        encl.child_count += 1
        encl.note_change(linaddr)
        append(_SUCCESS)
    return results


def eaug(m: Machine, epc_page: int, secs_page: int, linaddr: int,
         secinfo: bytes | None = None) -> None:
    """EAUG (SGX2): add a zeroed, PENDING REG RW page to an initialized enclave."""
    entry = m.epc.entry(epc_page)
    if linaddr % PAGE_SIZE:
        raise gp("PAGEINFO.LINADDR is not page aligned")
    m.epc.entry(secs_page, "SECS")
    if secinfo is not None and any(secinfo):
        raise gp("EAUG takes no SECINFO (shadow-stack pages are not supported)")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    encl = secs_of(m, secs_page)
    if not encl.initialized:
        raise gp("EAUG needs an initialized enclave")
    if not encl.in_elrange(linaddr, PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} is outside ELRANGE")
    _attach(encl, entry, linaddr)
    encl.page_view(linaddr)[:] = bytes(PAGE_SIZE)
    entry.pt = PageType.REG
    entry.r, entry.w, entry.x = True, True, False
    entry.pending = True
    entry.blocked = entry.modified = entry.pr = False


def emodpr(m: Machine, epc_page: int, secinfo: bytes) -> SgxError:
    """EMODPR (SGX2): restrict a REG page's EPCM permissions."""
    info = _secinfo(secinfo)
    if info.flags & 0x2 and not info.flags & 0x1:
        raise gp("a writable page must be readable")
    entry = _child(m, epc_page)
    if entry.pending or entry.modified:
        return SgxError.PAGE_NOT_MODIFIABLE
    if entry.pt != PageType.REG:
        raise epc_pf(epc_page, "EMODPR of a page that is not PT_REG")
    encl = entry.enclave
    assert encl is not None
    if not encl.initialized:
        raise gp("EMODPR needs an initialized enclave")
    entry.pr = True
    entry.r &= bool(info.flags & 1)
    entry.w &= bool(info.flags & 2)
    entry.x &= bool(info.flags & 4)
    entry.mod_epoch = encl.epoch
    encl.note_change(entry.linaddr)
    return SgxError.SUCCESS


def emodt(m: Machine, epc_page: int, secinfo: bytes) -> SgxError:
    """EMODT (SGX2): change a page's type to TCS or TRIM."""
    info = _secinfo(secinfo)
    if info.page_type not in (PageType.TCS, PageType.TRIM):
        raise gp("EMODT changes pages to PT_TCS or PT_TRIM only")
    entry = _child(m, epc_page)
    if not (entry.pt == PageType.REG or (entry.pt == PageType.TCS
                                         and info.page_type == PageType.TRIM)):
        raise epc_pf(epc_page, f"EMODT from {entry.pt.name} to "
                               f"{PageType(info.page_type).name} is not allowed")
    if entry.pending or entry.modified:
        return SgxError.PAGE_NOT_MODIFIABLE
    encl = entry.enclave
    assert encl is not None
    if not encl.initialized:
        raise gp("EMODT needs an initialized enclave")
    entry.pr = False
    entry.modified = True
    entry.r = entry.w = entry.x = False
    entry.pt = PageType(info.page_type)
    entry.mod_epoch = encl.epoch
    encl.note_change(entry.linaddr)
    return SgxError.SUCCESS
