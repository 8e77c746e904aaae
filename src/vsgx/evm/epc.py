"""The EPC and the EPCM (SDM "Enclave Page Cache (EPC)" and "Enclave Page
Cache Map (EPCM)").

EPC pages are named by their address in a configurable EPC bank. Each page
has an EPCM entry. Contents: SECS pages hold the enclave's state object, VA
pages an array of 512 versions, and REG/TCS/TRIM pages live in their
enclave's memory at their linear address — one EPC page per enclave linear
page, which is what lets an executor map a whole ELRANGE at once.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from vsgx.arch.constants import (
    PAGE_SIZE,
    SECINFO_PAGE_TYPE_SHIFT,
    PageType,
    PfErrorCode,
    SecinfoFlags,
)
from vsgx.arch.errors import Fault, gp, pf

if TYPE_CHECKING:
    from vsgx.evm.enclave import EnclaveState


class EpcmEntry:
    """One EPCM entry, with the tracking epochs an emulator needs."""

    __slots__ = (
        "address",
        "block_epoch",
        "blocked",
        "enclave",
        "linaddr",
        "mod_epoch",
        "modified",
        "pending",
        "pr",
        "pt",
        "r",
        "valid",
        "w",
        "x",
    )

    def __init__(self, address: int) -> None:
        self.address = address
        self.clear()

    def clear(self) -> None:
        self.valid = False
        self.pt = _PT_SECS
        self.r = self.w = self.x = False
        self.pending = self.modified = self.pr = self.blocked = False
        self.enclave: EnclaveState | None = None
        self.linaddr = 0
        self.block_epoch = -1
        self.mod_epoch = -1

    def secinfo_flags(self) -> int:
        """SECINFO.FLAGS describing this entry (as EWB records it)."""
        return (int(self.pt) << SECINFO_PAGE_TYPE_SHIFT | self.r * _R | self.w * _W
                | self.x * _X | self.pending * _PENDING | self.modified * _MODIFIED
                | self.pr * _PR)

    def set_permissions(self, flags: int) -> None:
        self.r, self.w, self.x = bool(flags & _R), bool(flags & _W), bool(flags & _X)


# a member looked up once: PageType.SECS costs an enum descriptor call each time
_PT_SECS = PageType.SECS
_R, _W, _X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
_PENDING, _MODIFIED, _PR = (int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED),
                            int(SecinfoFlags.PR))
_EPC_PF_CODE = int(PfErrorCode.P | PfErrorCode.SGX)


def epc_pf(address: int, reason: str, check: str = "") -> Fault:
    """#PF on an EPC operand (the leaf's "not EPC / EPCM invalid" cases)."""
    return pf(address, _EPC_PF_CODE, reason, check)


class Epc:
    def __init__(self, base: int, pages: int):
        if base % PAGE_SIZE or pages <= 0:
            raise ValueError("the EPC bank must be page aligned and non-empty")
        self.base = base
        self.pages = pages
        self.end = base + pages * PAGE_SIZE
        self.entries = [EpcmEntry(base + i * PAGE_SIZE) for i in range(pages)]
        self.va_slots: dict[int, array[int]] = {}
        self.secs: dict[int, EnclaveState] = {}

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end

    def entry(self, address: int, what: str = "page") -> EpcmEntry:
        """The EPCM entry of a page-aligned EPC address: #GP (check
        "WHAT_alignment") or #PF ("WHAT_not_epc") otherwise."""
        if address % PAGE_SIZE:
            raise gp(f"{what} {address:#x} is not page aligned", f"{_check(what)}_alignment")
        if not self.contains(address):
            raise epc_pf(address, f"{what} {address:#x} is not in the EPC",
                         f"{_check(what)}_not_epc")
        return self.entries[(address - self.base) // PAGE_SIZE]


def _check(operand: str) -> str:
    return operand.lower().replace(" ", "_")
