"""ENCLS leaves (SDM Vol. 3D ch. 38.3), checks in the order of the SDM's
pseudocode. Operands arrive as values (the AVM sends the bytes of PAGEINFO,
SECINFO and source pages in its messages) and EPC addresses; faults are
raised as Fault, SGX error codes are returned.

vsgx deviations, all refusals the hardware would not make: a linear page
may hold one EPC page at a time (#GP on a second), 32-bit enclaves are not
supported (#GP at ECREATE), and SECS pages are never evicted (#GP at EWB).
"""

from __future__ import annotations

import hmac
import struct
from array import array

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
from vsgx.crypto.paging import decrypt_page, encrypt_page, paging_header
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
_NO_RESERVED = bytes(40)
_PAGE_TYPES = {int(t): t for t in PageType}


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
    if page in encl.pages:
        raise gp(f"linear page {page:#x} already has an EPC page (vsgx maps one per page)")
    encl.memory.reuse(page - encl.base)  # type: ignore[union-attr]
    entry.enclave = encl
    entry.linaddr = page
    entry.valid = True
    encl.pages[page] = entry
    encl.child_count += 1
    encl.generation += 1


def _detach(encl: EnclaveState, entry: EpcmEntry) -> None:
    assert encl.memory is not None
    encl.pages.pop(entry.linaddr, None)
    encl.memory.release(entry.linaddr - encl.base)
    encl.child_count -= 1
    encl.generation += 1
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
    encl.memory = EnclaveMemory(s.size)
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
    """The sixteen EEXTENDs of one page (what a driver issues for a measured page)."""
    for chunk in range(0, PAGE_SIZE, 256):
        eextend(m, secs_page, epc_page + chunk)


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
    encl.generation += 1  # executors cache TCS contents by generation
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
    entry = m.epc.entry(epc_page)
    if not entry.valid:
        return SgxError.PG_INVLD
    if entry.pt not in _CHILD_TYPES:
        return SgxError.PG_IS_SECS if entry.pt == PageType.SECS else SgxError.NOTBLOCKABLE
    if entry.blocked:
        return SgxError.BLKSTATE
    assert entry.enclave is not None
    entry.blocked = True
    entry.block_epoch = entry.enclave.epoch
    entry.enclave.generation += 1
    return SgxError.SUCCESS


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
    """What EWB writes out: the encrypted page and its PCMD."""

    __slots__ = ("ciphertext", "linaddr", "pcmd")

    def __init__(self, ciphertext: bytes, pcmd: bytes, linaddr: int):
        self.ciphertext, self.pcmd, self.linaddr = ciphertext, pcmd, linaddr


def ewb(m: Machine, epc_page: int, va_slot: int) -> tuple[SgxError, EvictedPage | None]:
    """EWB: evict a blocked, tracked page (or a VA page) under the paging key."""
    entry = m.epc.entry(epc_page)
    if va_slot & ~(PAGE_SIZE - 1) == epc_page:
        raise gp("the VA slot is in the page being evicted")
    if not entry.valid:
        raise epc_pf(epc_page, "EWB of an invalid page")
    slots, index = _va_slot(m, va_slot)
    if entry.pt == PageType.SECS:
        raise gp("vsgx does not evict SECS pages")
    if entry.pt in _CHILD_TYPES:
        encl = entry.enclave
        assert encl is not None
        if not entry.blocked:
            return SgxError.PAGE_NOT_BLOCKED, None
        if not encl.is_tracked(entry.block_epoch):
            return SgxError.NOT_TRACKED, None
        eid = encl.eid
        content = bytes(encl.page_view(entry.linaddr))
    else:
        encl = None
        eid = 0
        content = m.epc.va_slots[epc_page].tobytes()
    secinfo = _SECINFO.pack(entry.secinfo_flags())
    version = m.new_version()
    header = paging_header(secinfo, entry.linaddr, eid, _NO_RESERVED)
    ciphertext, mac = encrypt_page(m.secrets.paging_cipher, version, header, content)
    pcmd = _PCMD.pack(secinfo, eid, mac)
    result = SgxError.VA_SLOT_OCCUPIED if slots[index] else SgxError.SUCCESS
    slots[index] = version
    linaddr = entry.linaddr
    if encl is not None:
        _detach(encl, entry)
    else:
        del m.epc.va_slots[epc_page]
        entry.clear()
    return result, EvictedPage(ciphertext, pcmd, linaddr)


def eld(m: Machine, epc_page: int, va_slot: int, secs_page: int, linaddr: int,
        ciphertext: bytes, pcmd: bytes, blocked: bool) -> SgxError:
    """ELDB (blocked=True) / ELDU: load an evicted page back into the EPC."""
    entry = m.epc.entry(epc_page)
    slots, index = _va_slot(m, va_slot)
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use")
    if len(ciphertext) != PAGE_SIZE or len(pcmd) != Pcmd.SIZE:
        raise gp("ELDU needs a 4 KiB page and a 128-byte PCMD")
    record_secinfo, _eid, reserved, record_mac = _PCMD_FIELDS.unpack(pcmd)
    flags = _SECINFO_FLAGS.unpack_from(record_secinfo)[0]
    page_type = _PAGE_TYPES.get((flags >> 8) & 0xFF)
    encl: EnclaveState | None = None
    if page_type in _CHILD_TYPES:
        encl = secs_of(m, secs_page)
        eid = encl.eid
    elif page_type == PageType.VA:
        if secs_page:
            raise gp("PAGEINFO.SECS must be 0 to load a VA page")
        eid = 0
    else:
        return SgxError.MAC_COMPARE_FAIL
    version = slots[index]
    header = paging_header(record_secinfo, linaddr, eid, reserved)
    page = decrypt_page(m.secrets.paging_cipher, version, header, ciphertext,
                        record_mac) if version else None
    if page is None:
        return SgxError.MAC_COMPARE_FAIL
    slots[index] = 0
    entry.clear()
    entry.pt = page_type  # type: ignore[assignment]
    entry.r, entry.w, entry.x = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    entry.pending = bool(flags & 0x8)
    entry.modified = bool(flags & 0x10)
    entry.pr = bool(flags & 0x20)
    if encl is None:
        entry.valid = True
        m.epc.va_slots[epc_page] = array("Q", page)
        return SgxError.SUCCESS
    try:
        _attach(encl, entry, linaddr)
    except Fault:
        slots[index] = version
        entry.clear()
        raise
    entry.blocked = blocked
    entry.block_epoch = encl.epoch if blocked else -1
    offset = linaddr - encl.base
    encl.memory.view[offset:offset + PAGE_SIZE] = page  # type: ignore[union-attr]
    return SgxError.SUCCESS


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
    encl.generation += 1
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
    encl.generation += 1
    return SgxError.SUCCESS
