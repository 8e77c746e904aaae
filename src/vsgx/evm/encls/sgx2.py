"""SGX2's ENCLS leaves (SDM "Intel SGX2 ... enclave dynamic memory
management"): EAUG, EMODPR and EMODT, checks in the order of the SDM's
pseudocode. The enclave accepts each change with ENCLU[EACCEPT]."""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, PageType
from vsgx.arch.errors import SgxError, gp
from vsgx.evm.encls.operands import (
    PAGE_OFFSET_MASK,
    R,
    W,
    X,
    attach,
    secinfo_operand,
    secs_of,
    valid_child,
    write_without_read,
)
from vsgx.evm.epc import epc_pf
from vsgx.evm.machine import Machine


def eaug(m: Machine, epc_page: int, secs_page: int, linaddr: int,
         secinfo: bytes | None = None) -> None:
    """EAUG (SGX2): add a zeroed, PENDING REG RW page to an initialized enclave."""
    entry = m.epc.entry(epc_page)
    if linaddr & PAGE_OFFSET_MASK:
        raise gp("PAGEINFO.LINADDR is not page aligned", "linaddr_alignment")
    m.epc.entry(secs_page, "SECS")
    if secinfo is not None and any(secinfo):
        raise gp("EAUG takes no SECINFO (shadow-stack pages are not supported)",
                 "secinfo_not_zero")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use", "page_in_use")
    encl = secs_of(m, secs_page)
    if not encl.initialized:
        raise gp("EAUG needs an initialized enclave", "enclave_not_initialized")
    if not encl.in_elrange(linaddr, PAGE_SIZE):
        raise gp(f"LINADDR {linaddr:#x} is outside ELRANGE", "linaddr_outside_elrange")
    attach(encl, entry, linaddr)
    encl.page_view(linaddr)[:] = bytes(PAGE_SIZE)
    entry.pt = PageType.REG
    entry.r, entry.w, entry.x = True, True, False
    entry.pending = True
    entry.blocked = entry.modified = entry.pr = False


def emodpr(m: Machine, epc_page: int, secinfo: bytes) -> SgxError:
    """EMODPR (SGX2): restrict a REG page's EPCM permissions."""
    info = secinfo_operand(secinfo)
    if write_without_read(info.flags):
        raise gp("a writable page must be readable", "secinfo_write_without_read")
    entry = valid_child(m, epc_page)
    if entry.pending or entry.modified:
        return m.refuse(SgxError.PAGE_NOT_MODIFIABLE, "page_pending_or_modified")
    if entry.pt != PageType.REG:
        raise epc_pf(epc_page, "EMODPR of a page that is not PT_REG", "page_type")
    encl = entry.enclave
    assert encl is not None
    if not encl.initialized:
        raise gp("EMODPR needs an initialized enclave", "enclave_not_initialized")
    entry.pr = True
    entry.r &= bool(info.flags & R)
    entry.w &= bool(info.flags & W)
    entry.x &= bool(info.flags & X)
    entry.mod_epoch = encl.epoch
    encl.note_change(entry.linaddr)
    return SgxError.SUCCESS


def emodt(m: Machine, epc_page: int, secinfo: bytes) -> SgxError:
    """EMODT (SGX2): change a page's type to TCS or TRIM."""
    info = secinfo_operand(secinfo)
    if info.page_type not in (PageType.TCS, PageType.TRIM):
        raise gp("EMODT changes pages to PT_TCS or PT_TRIM only", "secinfo_page_type")
    entry = valid_child(m, epc_page)
    if not (entry.pt == PageType.REG or (entry.pt == PageType.TCS
                                         and info.page_type == PageType.TRIM)):
        raise epc_pf(epc_page, f"EMODT from {entry.pt.name} to "
                               f"{PageType(info.page_type).name} is not allowed", "page_type")
    if entry.pending or entry.modified:
        return m.refuse(SgxError.PAGE_NOT_MODIFIABLE, "page_pending_or_modified")
    encl = entry.enclave
    assert encl is not None
    if not encl.initialized:
        raise gp("EMODT needs an initialized enclave", "enclave_not_initialized")
    entry.pr = False
    entry.modified = True
    entry.r = entry.w = entry.x = False
    entry.pt = PageType(info.page_type)
    entry.mod_epoch = encl.epoch
    encl.note_change(entry.linaddr)
    return SgxError.SUCCESS
