"""Debugging an enclave (SDM "Enclave debugging", EDBGRD and EDBGWR): 8
bytes of a debug enclave's page, read or written from outside it."""

from __future__ import annotations

from vsgx.arch.constants import VA_SLOT_SIZE, PageType
from vsgx.arch.errors import SgxError, gp
from vsgx.arch.layout import field_offset
from vsgx.arch.tcs import Tcs
from vsgx.evm.encls.operands import PAGE_OFFSET_MASK, valid_child
from vsgx.evm.epc import EpcmEntry, epc_pf
from vsgx.evm.machine import Machine

WORD = 8
# EDBGRD may read the architectural TCS fields (the bytes before this end),
# EDBGWR may write TCS.FLAGS only.
TCS_DEBUG_LIMIT = Tcs.RESERVED[-1][0]
TCS_FLAGS_OFFSET = field_offset(Tcs, "flags")
_U64 = (1 << 64) - 1


def _debuggable(m: Machine, address: int) -> tuple[EpcmEntry, int]:
    if address % WORD:
        raise gp("EDBGRD/EDBGWR address is not aligned", "address_alignment")
    page = address & ~PAGE_OFFSET_MASK
    return valid_child(m, page), address - page


def edbgrd(m: Machine, address: int) -> tuple[SgxError, int]:
    """EDBGRD: read 8 bytes of a debug enclave's page (RBX)."""
    entry, offset = _debuggable(m, address)
    if entry.pt not in (PageType.REG, PageType.TCS, PageType.VA):
        raise epc_pf(address & ~PAGE_OFFSET_MASK, "EDBGRD of a SECS or TRIM page", "page_type")
    if entry.pending or entry.modified:
        return m.refuse(SgxError.PAGE_NOT_DEBUGGABLE, "page_pending_or_modified"), 0
    if entry.pt == PageType.VA:
        slot = m.epc.va_slots[entry.address][offset // VA_SLOT_SIZE]
        return SgxError.SUCCESS, _U64 if slot else 0
    if entry.pt == PageType.TCS and offset >= TCS_DEBUG_LIMIT:
        raise gp("EDBGRD beyond the TCS fields", "tcs_offset")
    encl = entry.enclave
    assert encl is not None
    if not encl.debug:
        raise gp("EDBGRD of a non-debug enclave", "enclave_not_debug")
    view = encl.page_view(entry.linaddr)
    return SgxError.SUCCESS, int.from_bytes(view[offset:offset + WORD], "little")


def edbgwr(m: Machine, address: int, value: int) -> SgxError:
    """EDBGWR: write 8 bytes into a debug enclave's page."""
    entry, offset = _debuggable(m, address)
    if entry.pt not in (PageType.REG, PageType.TCS):
        raise epc_pf(address & ~PAGE_OFFSET_MASK, "EDBGWR of a SECS, VA or TRIM page",
                     "page_type")
    if entry.pending or entry.modified:
        return m.refuse(SgxError.PAGE_NOT_DEBUGGABLE, "page_pending_or_modified")
    if entry.pt == PageType.TCS and offset != TCS_FLAGS_OFFSET:
        raise gp("EDBGWR may write TCS.FLAGS only", "tcs_offset")
    encl = entry.enclave
    assert encl is not None
    if not encl.debug:
        raise gp("EDBGWR of a non-debug enclave", "enclave_not_debug")
    encl.page_view(entry.linaddr)[offset:offset + WORD] = (value & _U64).to_bytes(WORD, "little")
    # executors cache TCS contents by generation, and drop translated code
    # of the pages the journal names
    encl.note_change(entry.linaddr)
    return SgxError.SUCCESS


__all__ = ["edbgrd", "edbgwr"]
