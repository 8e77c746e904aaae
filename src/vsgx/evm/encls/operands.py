"""What the ENCLS leaves share: their operand checks (SECINFO, the SECS, an
EPC page's EPCM entry) and the bookkeeping of giving a linear page an EPC
page and taking it back.

vsgx deviations, all refusals the hardware would not make: a linear page
may hold one EPC page at a time (#GP on a second), 32-bit enclaves are not
supported (#GP at ECREATE), and SECS pages are never evicted (#GP at EWB).
"""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, PageType, SecinfoFlags
from vsgx.arch.errors import gp
from vsgx.arch.pageinfo import Secinfo
from vsgx.errors import StructureError
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.epc import EpcmEntry, epc_pf
from vsgx.evm.machine import Machine

PAGE_OFFSET_MASK = PAGE_SIZE - 1
# SECINFO.FLAGS bits as plain ints (IntFlag arithmetic is slow on hot paths).
R, W, X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
RWX = R | W | X
PENDING, MODIFIED, PR = (int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED),
                         int(SecinfoFlags.PR))
PT_REG, PT_TCS, PT_TRIM, PT_SECS, PT_VA = (PageType.REG, PageType.TCS, PageType.TRIM,
                                          PageType.SECS, PageType.VA)
DUPLICATE_LINEAR = "linear_page_taken"


def write_without_read(flags: int) -> bool:
    """SECINFO asks for a writable page that is not readable (always #GP)."""
    return bool(flags & W) and not flags & R


def secinfo_operand(raw: bytes) -> Secinfo:
    """SECINFO with its reserved bits and bytes zero (#GP otherwise)."""
    try:
        return Secinfo.unpack(raw)
    except StructureError as exc:
        raise gp(f"SECINFO: {exc}", "secinfo_reserved") from None


def secs_of(m: Machine, address: int) -> EnclaveState:
    """The enclave whose SECS is the EPC page at ``address`` (#PF otherwise)."""
    entry = m.epc.entry(address, "SECS")
    if not entry.valid or entry.pt != PT_SECS:
        raise epc_pf(address, f"{address:#x} is not a SECS page", "secs_not_secs")
    return m.epc.secs[address]


def valid_child(m: Machine, address: int, what: str = "page") -> EpcmEntry:
    """The EPCM entry of a valid EPC page (#PF "WHAT_invalid" otherwise)."""
    entry = m.epc.entry(address, what)
    if not entry.valid:
        raise epc_pf(address, f"EPC page {address:#x} is not valid", f"{what}_invalid")
    return entry


def check_free_linear(encl: EnclaveState, page: int) -> None:
    if page in encl.pages or (encl.deferred and encl.deferred.get(page) is not None):
        raise gp(f"linear page {page:#x} already has an EPC page (vsgx maps one per page)",
                 DUPLICATE_LINEAR)


def attach(encl: EnclaveState, entry: EpcmEntry, linaddr: int) -> None:
    """Give ``linaddr`` an EPC page; the caller writes the whole page."""
    page = linaddr & ~PAGE_OFFSET_MASK
    check_free_linear(encl, page)
    encl.memory.reuse(page - encl.base)  # type: ignore[union-attr]
    entry.enclave = encl
    entry.linaddr = page
    entry.valid = True
    encl.pages[page] = entry
    encl.old.add(page)  # its accessed bit starts clear
    encl.child_count += 1
    encl.note_change(page)


def detach(encl: EnclaveState, entry: EpcmEntry) -> None:
    assert encl.memory is not None
    encl.pages.pop(entry.linaddr, None)
    encl.old.discard(entry.linaddr)
    encl.memory.release(entry.linaddr - encl.base)
    encl.child_count -= 1
    encl.note_change(entry.linaddr)
    entry.clear()
