"""Building an enclave (SDM "Constructing an Enclave"): ECREATE, EADD,
EEXTEND and EINIT, checks in the order of the SDM's pseudocode.

Besides the single leaves, ``eadd_pages`` adds a run of REG pages with one
SECINFO (the same checks, one call and one lock for the run), and
``eadd_uniform`` EADDs a run of pages that all hold one 32-bit pattern,
hashing every EADD (and EEXTEND) record in order as the leaves would, and
gives EPC pages to as many of them as the caller offers; the rest stay
*deferred* — in the state of a page that EWB wrote out, with its blob kept
inside the EVM (it is the pattern) — until ``paging.eldu_deferred`` loads
one, as ELDU would. MRENCLAVE and everything the enclave can observe are
those of EADD followed by EWB and ELDU.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from vsgx.arch.constants import (
    PAGE_SHIFT,
    PAGE_SIZE,
    SSA_GPRSGX_SIZE,
    XFRM_LEGACY,
    Attribute,
    KeyName,
    PageType,
    Xfrm,
    cpusvn_at_most,
    is_canonical,
)
from vsgx.arch.einittoken import EINITTOKEN_SIZE, EINITTOKEN_VALID, Einittoken
from vsgx.arch.errors import SgxError, gp
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.secs import Secs
from vsgx.arch.sigstruct import Sigstruct
from vsgx.arch.ssa import misc_size, xsave_size
from vsgx.arch.tcs import TCS_FLAGS_DBGOPTIN, Tcs
from vsgx.crypto.einittoken import einittoken_mac_is_valid
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
from vsgx.crypto.measurement import EEXTEND_CHUNK
from vsgx.crypto.sigstruct import check_sigstruct, mrsigner
from vsgx.errors import StructureError
from vsgx.evm.enclave import EnclaveMemory, EnclaveState
from vsgx.evm.encls.operands import (
    DUPLICATE_LINEAR,
    PAGE_OFFSET_MASK,
    PT_REG,
    RWX,
    R,
    W,
    X,
    attach,
    secinfo_operand,
    secs_of,
    valid_child,
    write_without_read,
)
from vsgx.evm.epc import EpcmEntry, epc_pf
from vsgx.evm.machine import Machine

MIN_ENCLAVE_SIZE = 2 * PAGE_SIZE
# Runs of deferred pages one enclave may hold: an SDK layout has a few per
# TCS; the cap keeps a session from filling the EVM's memory with one-page
# runs that need no EPC page (hardware bounds EADD by the EPC itself).
MAX_DEFERRED_RUNS = 65536
_MPX = int(Xfrm.BNDREGS | Xfrm.BNDCSR)
_AVX512 = int(Xfrm.OPMASK | Xfrm.ZMM_HI256 | Xfrm.HI16_ZMM)
_AMX = int(Xfrm.AMX_TILECFG | Xfrm.AMX_TILEDATA)


def _xfrm_is_legal(xfrm: int, supported: int) -> bool:
    """XFRM must be a value XSETBV would load into XCR0 on this CPU."""
    if xfrm & XFRM_LEGACY != XFRM_LEGACY or xfrm & ~supported:
        return False
    avx512 = xfrm & _AVX512
    if avx512 not in (0, _AVX512) or (avx512 and not xfrm & Xfrm.AVX):
        return False
    return xfrm & _MPX in (0, _MPX) and xfrm & _AMX in (0, _AMX)


def ecreate(m: Machine, epc_page: int, secs: bytes, secinfo: bytes, linaddr: int = 0,
            secs_operand: int = 0) -> EnclaveState:
    """ECREATE: a new SECS in ``epc_page`` from the 4 KiB ``secs`` source page."""
    entry = m.epc.entry(epc_page, "SECS page")
    if linaddr != 0 or secs_operand != 0:
        raise gp("PAGEINFO.LINADDR and PAGEINFO.SECS must be 0 for ECREATE",
                 "pageinfo_not_zero")
    info = secinfo_operand(secinfo)
    if info.page_type != PageType.SECS:
        raise gp("SECINFO.PAGE_TYPE is not PT_SECS", "secinfo_page_type")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use", "epc_page_in_use")
    if len(secs) != PAGE_SIZE:
        raise gp("the SECS source must be a 4 KiB page", "source_size")
    s = Secs.unpack(secs, strict=False)
    config = m.config
    if not _xfrm_is_legal(s.xfrm, config.xfrm):
        raise gp(f"XFRM {s.xfrm:#x} is not legal on this CPU (supported {config.xfrm:#x})",
                 "xfrm_illegal")
    if s.miscselect & ~config.miscselect:
        raise gp(f"MISCSELECT {s.miscselect:#x} has unsupported bits", "miscselect_unsupported")
    if s.ssaframesize == 0 or s.ssaframesize * PAGE_SIZE < (
            xsave_size(s.xfrm) + SSA_GPRSGX_SIZE + misc_size(s.miscselect)):
        raise gp(f"SSAFRAMESIZE {s.ssaframesize} is too small for XFRM and MISCSELECT",
                 "ssaframesize_too_small")
    if not s.attributes & Attribute.MODE64BIT:
        raise gp("32-bit enclaves are not supported by vsgx", "mode64bit_clear")
    if not is_canonical(s.baseaddr):
        raise gp(f"BASEADDR {s.baseaddr:#x} is not canonical", "baseaddr_not_canonical")
    cpuid = config.cpuid()
    if s.size >= 1 << cpuid.max_enclave_size_64:
        raise gp(f"SIZE {s.size:#x} exceeds the maximum enclave size", "size_too_large")
    if s.size < MIN_ENCLAVE_SIZE or s.size & (s.size - 1):
        raise gp(f"SIZE {s.size:#x} is not a power of two of at least two pages",
                 "size_not_power_of_two")
    if s.baseaddr & (s.size - 1):
        raise gp("BASEADDR is not naturally aligned to SIZE", "baseaddr_not_aligned")
    if s.attributes & ~cpuid.attributes:
        raise gp(f"ATTRIBUTES {s.attributes:#x} has bits this CPU does not allow",
                 "attributes_unsupported")
    try:
        Secs.unpack(secs)
    except StructureError as exc:
        raise gp(f"SECS: {exc}", "secs_reserved") from None
    if (any(s.configid) or s.configsvn) and not s.attributes & Attribute.KSS:
        raise gp("CONFIGID/CONFIGSVN need ATTRIBUTES.KSS", "configid_without_kss")
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
        raise gp(str(exc), "elrange_memory") from None
    entry.clear()
    entry.pt = PageType.SECS
    entry.valid = True
    m.epc.secs[epc_page] = encl
    return encl


def eadd(m: Machine, epc_page: int, secs_page: int, linaddr: int, source: bytes,
         secinfo: bytes) -> None:
    """EADD: copy ``source`` into ``epc_page`` at ``linaddr`` and measure it."""
    entry = m.epc.entry(epc_page)
    if linaddr & PAGE_OFFSET_MASK:
        raise gp("PAGEINFO.LINADDR is not page aligned", "linaddr_alignment")
    m.epc.entry(secs_page, "SECS")
    info = secinfo_operand(secinfo)
    if info.page_type not in (PageType.REG, PageType.TCS):
        raise gp("EADD adds PT_REG and PT_TCS pages only", "secinfo_page_type")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use", "epc_page_in_use")
    encl = secs_of(m, secs_page)
    if len(source) != PAGE_SIZE:
        raise gp("the source must be a 4 KiB page", "source_size")
    content = bytearray(source)
    flags = info.flags
    if info.page_type == PageType.TCS:
        try:
            tcs = Tcs.unpack(content)
        except StructureError as exc:
            raise gp(f"TCS: {exc}", "tcs_reserved") from None
        # The CPU clears these and measures the TCS with no permissions.
        tcs.flags &= ~TCS_FLAGS_DBGOPTIN
        tcs.cssa = tcs.aep = tcs.state = 0
        content[:Tcs.SIZE] = tcs.pack()
        flags &= ~RWX
    elif write_without_read(info.flags):
        raise gp("a writable page must be readable", "secinfo_write_without_read")
    if not encl.in_elrange(linaddr, PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} is outside ELRANGE", "linaddr_outside_elrange")
    if encl.initialized:
        raise gp("the enclave is already initialized", "enclave_initialized")
    attach(encl, entry, linaddr)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    encl.mrenclave_builder.eadd(linaddr - encl.base, flags)
    entry.pt = PageType(info.page_type)
    entry.set_permissions(flags)
    entry.blocked = entry.pending = entry.modified = entry.pr = False
    encl.memory.page(linaddr - encl.base)[:] = content


def _free_epc_entries(m: Machine, epc_pages: Sequence[int]) -> list[EpcmEntry]:
    """The EPCM entries of EPC pages an add may fill: each once, each free."""
    epc = m.epc
    base, end, table = epc.base, epc.end, epc.entries
    entries = [table[(page - base) >> PAGE_SHIFT]
               if not page & PAGE_OFFSET_MASK and base <= page < end
               else epc.entry(page)  # raises the fault the operand deserves
               for page in epc_pages]
    if len(set(epc_pages)) != len(epc_pages):
        raise gp("the same EPC page is given twice", "epc_page_twice")
    for entry in entries:
        if entry.valid:
            raise epc_pf(entry.address, "the EPC page is in use", "epc_page_in_use")
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
        raise gp(f"linear page {clash:#x} already has an EPC page (vsgx maps one per page)",
                 DUPLICATE_LINEAR)


def _regular_add_checks(m: Machine, secs_page: int, linaddr: int, count: int,
                        secinfo: bytes) -> tuple[EnclaveState, Secinfo]:
    """EADD's checks of the operands a run of REG pages shares."""
    if linaddr & PAGE_OFFSET_MASK:
        raise gp("PAGEINFO.LINADDR is not page aligned", "linaddr_alignment")
    m.epc.entry(secs_page, "SECS")
    info = secinfo_operand(secinfo)
    if info.page_type != PageType.REG:
        raise gp("a run of pages is added as PT_REG (TCS pages are added one by one)",
                 "secinfo_page_type")
    encl = secs_of(m, secs_page)
    if write_without_read(info.flags):
        raise gp("a writable page must be readable", "secinfo_write_without_read")
    if count <= 0 or not encl.in_elrange(linaddr, count * PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} + {count} pages is outside ELRANGE",
                 "linaddr_outside_elrange")
    if encl.initialized:
        raise gp("the enclave is already initialized", "enclave_initialized")
    return encl, info


def give_pages(encl: EnclaveState, entries: list[EpcmEntry], linaddr: int, flags: int) -> None:
    """The EPCM side of EADD for consecutive pages (contents written by the caller)."""
    r, w, x = bool(flags & R), bool(flags & W), bool(flags & X)
    pages, old = encl.pages, encl.old
    added = range(linaddr, linaddr + len(entries) * PAGE_SIZE, PAGE_SIZE)
    for page, entry in zip(added, entries, strict=True):
        entry.enclave = encl
        entry.linaddr = page
        entry.valid = True
        entry.pt = PT_REG
        entry.r, entry.w, entry.x = r, w, x
        entry.blocked = entry.pending = entry.modified = entry.pr = False
        pages[page] = entry
    old.update(added)  # their accessed bits start clear
    encl.child_count += len(entries)
    encl.note_changes(list(added))  # the caller holds the machine lock


def eadd_pages(m: Machine, epc_pages: Sequence[int], secs_page: int, linaddr: int,
               source: bytes | memoryview, secinfo: bytes, measure: bool) -> None:
    """EADD of ``len(epc_pages)`` consecutive REG pages from ``source`` with
    one SECINFO, each followed by its sixteen EEXTENDs when ``measure``:
    every check first, then all pages (all or nothing)."""
    count = len(epc_pages)
    if len(source) != count * PAGE_SIZE:
        raise gp("the source must be one 4 KiB page per EPC page", "source_size")
    encl, info = _regular_add_checks(m, secs_page, linaddr, count, secinfo)
    entries = _free_epc_entries(m, epc_pages)
    _check_linear_range_free(encl, linaddr, count)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    offset = linaddr - encl.base
    encl.memory.fill_from(offset, source)
    give_pages(encl, entries, linaddr, info.flags)
    encl.mrenclave_builder.add_pages(offset, source, info.flags, measure)


def eadd_uniform(m: Machine, secs_page: int, linaddr: int, count: int, secinfo: bytes,
                 fill: int, measure: bool, epc_pages: Sequence[int] = ()) -> None:
    """EADD of ``count`` REG pages at ``linaddr`` whose every 32-bit word is
    ``fill`` (with their EEXTENDs when ``measure``); the first
    ``len(epc_pages)`` get those EPC pages, the others are deferred."""
    if not 0 <= fill <= 0xFFFFFFFF:
        raise gp("the fill pattern is a 32-bit value", "fill_pattern")
    encl, info = _regular_add_checks(m, secs_page, linaddr, count, secinfo)
    if len(epc_pages) > count:
        raise gp("more EPC pages than pages to add", "too_many_epc_pages")
    if len(epc_pages) < count and encl.deferred.run_count >= MAX_DEFERRED_RUNS:
        raise gp(f"the enclave defers {MAX_DEFERRED_RUNS} runs of pages already: add these "
                 "with EPC pages", "deferred_runs_limit")
    entries = _free_epc_entries(m, epc_pages)
    _check_linear_range_free(encl, linaddr, count)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    page = fill.to_bytes(4, "little") * (PAGE_SIZE // 4)
    offset = linaddr - encl.base
    resident = len(entries)
    if resident:
        encl.memory.fill(offset, resident, page)
        give_pages(encl, entries, linaddr, info.flags)
    if resident < count:
        encl.deferred.add(linaddr + resident * PAGE_SIZE, count - resident, (info.flags, fill))
    encl.mrenclave_builder.add_uniform_pages(offset, count, page, info.flags, measure)


def eextend(m: Machine, secs_page: int, chunk: int) -> None:
    """EEXTEND: measure the 256 bytes at EPC address ``chunk``."""
    m.epc.entry(secs_page, "SECS")
    if chunk % EEXTEND_CHUNK:
        raise gp("the EEXTEND chunk is not 256-byte aligned", "chunk_alignment")
    page = chunk & ~PAGE_OFFSET_MASK
    entry = valid_child(m, page)
    if entry.pt not in (PageType.REG, PageType.TCS):
        raise epc_pf(page, "EEXTEND of a page that is neither REG nor TCS", "page_type")
    if entry.enclave is None or entry.enclave.secs_page != secs_page:
        raise gp("the page does not belong to this SECS", "page_of_another_secs")
    encl = entry.enclave
    if encl.initialized:
        raise gp("the enclave is already initialized", "enclave_initialized")
    offset = entry.linaddr - encl.base + (chunk & PAGE_OFFSET_MASK)
    assert encl.mrenclave_builder is not None and encl.memory is not None
    encl.mrenclave_builder.eextend(offset, encl.memory.view[offset:offset + EEXTEND_CHUNK])


def measure_pages(m: Machine, secs_page: int, epc_page: int) -> None:
    """The sixteen EEXTENDs of one page (what a driver issues for a measured
    page): EEXTEND's checks hold for every chunk once they hold for the
    first (nothing changes the page between them), so they are made once."""
    eextend(m, secs_page, epc_page)
    encl = m.epc.entry(epc_page).enclave
    assert encl is not None and encl.mrenclave_builder is not None and encl.memory is not None
    offset = m.epc.entry(epc_page).linaddr - encl.base
    encl.mrenclave_builder.eextend_chunks(offset + EEXTEND_CHUNK,
                                          encl.memory.view[offset + EEXTEND_CHUNK:
                                                           offset + PAGE_SIZE])


def _token_reserved_ok(raw: bytes) -> bool:
    token = Einittoken.unpack(raw, strict=False)
    if token.valid & ~EINITTOKEN_VALID:
        return False
    try:
        Einittoken.unpack(raw)
    except StructureError:
        return False
    return True


def launch_key(m: Machine, token: Einittoken, lepubkeyhash: bytes) -> bytes:
    """The EINITTOKEN key EINIT recomputes from a token's LE fields (SDM EINIT)."""
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
        raise gp("SIGSTRUCT must be 1808 bytes and EINITTOKEN 304", "operand_size")
    check = check_sigstruct(sigstruct)
    if check is not SgxError.SUCCESS:
        return m.refuse(check, "sigstruct")
    sig = Sigstruct.unpack(sigstruct)
    encl = secs_of(m, secs_page)
    if any(sig.isvfamilyid) and not encl.attributes & Attribute.KSS:
        return m.refuse(SgxError.INVALID_SIG_STRUCT, "isvfamilyid_without_kss")
    if encl.initialized:
        raise gp("the enclave is already initialized", "enclave_initialized")
    assert encl.mrenclave_builder is not None
    measured = encl.mrenclave_builder.digest()
    if not hmac.compare_digest(measured, sig.enclavehash):
        return m.refuse(SgxError.INVALID_MEASUREMENT, "enclavehash")
    signer = mrsigner(sig.modulus)
    lehash = m.config.launch_policy.lepubkeyhash_for(signer)
    if encl.attributes & Attribute.EINITTOKEN_KEY and signer != lehash:
        return m.refuse(SgxError.INVALID_ATTRIBUTE, "einittoken_key_not_launch_signer")
    if (encl.attributes & sig.attributemask != sig.attributes & sig.attributemask
            or encl.xfrm & sig.xfrmmask != sig.xfrm & sig.xfrmmask):
        return m.refuse(SgxError.INVALID_ATTRIBUTE, "attributes_mask")
    if encl.miscselect & sig.miscmask != sig.miscselect & sig.miscmask:
        return m.refuse(SgxError.INVALID_ATTRIBUTE, "miscselect_mask")
    tok = Einittoken.unpack(token, strict=False)
    if not tok.valid & EINITTOKEN_VALID:
        if signer != lehash:
            return m.refuse(SgxError.INVALID_EINITTOKEN, "token_needed")
    else:
        if tok.maskedattributesle & Attribute.DEBUG and not encl.debug:
            return m.refuse(SgxError.INVALID_EINITTOKEN, "token_debug_le")
        if not _token_reserved_ok(token):
            return m.refuse(SgxError.INVALID_EINITTOKEN, "token_reserved")
        if not cpusvn_at_most(tok.cpusvnle, m.config.cpusvn):
            return m.refuse(SgxError.INVALID_CPUSVN, "token_cpusvn")
        if not einittoken_mac_is_valid(launch_key(m, tok, lehash), tok):
            return m.refuse(SgxError.INVALID_EINITTOKEN, "token_mac")
        if tok.mrenclave != measured or tok.mrsigner != signer:
            return m.refuse(SgxError.INVALID_MEASUREMENT, "token_identity")
        if tok.attributes != encl.attributes or tok.xfrm != encl.xfrm:
            return m.refuse(SgxError.INVALID_ATTRIBUTE, "token_attributes")
    encl.isvprodid, encl.isvsvn = sig.isvprodid, sig.isvsvn
    encl.isvfamilyid, encl.isvextprodid = sig.isvfamilyid, sig.isvextprodid
    encl.finish_init(measured, signer)
    return SgxError.SUCCESS


__all__ = ["MAX_DEFERRED_RUNS", "eadd", "eadd_pages", "eadd_uniform", "ecreate", "eextend",
           "einit", "give_pages", "launch_key", "measure_pages"]
