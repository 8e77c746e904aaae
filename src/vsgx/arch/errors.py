"""SGX error codes and CPU faults.

An SGX *error code* is a value a leaf returns in RAX with ZF set (SDM
"Error Codes" of the SGX instruction references); a *fault* (#GP, #PF, #UD)
is an exception the leaf raises instead of completing. The two are kept
apart, as the kernel's driver does.

Each check of a leaf has a name (``Fault.check``; for an error code,
``Machine.refusal``), so that a test can tell apart two checks that end in
the same vector or the same code.
"""

from __future__ import annotations

from enum import IntEnum

from vsgx.arch.constants import Vector


class SgxError(IntEnum):
    """Values of RAX after an ENCLS/ENCLU leaf (SDM "Error Codes" table)."""

    SUCCESS = 0
    INVALID_SIG_STRUCT = 1
    INVALID_ATTRIBUTE = 2
    BLKSTATE = 3
    INVALID_MEASUREMENT = 4
    NOTBLOCKABLE = 5
    PG_INVLD = 6
    EPC_PAGE_CONFLICT = 7
    INVALID_SIGNATURE = 8
    MAC_COMPARE_FAIL = 9
    PAGE_NOT_BLOCKED = 10
    NOT_TRACKED = 11
    VA_SLOT_OCCUPIED = 12
    CHILD_PRESENT = 13
    ENCLAVE_ACT = 14
    ENTRYEPOCH_LOCKED = 15
    INVALID_EINITTOKEN = 16
    PREV_TRK_INCMPL = 17
    PG_IS_SECS = 18
    PAGE_ATTRIBUTES_MISMATCH = 19
    PAGE_NOT_MODIFIABLE = 20
    PAGE_NOT_DEBUGGABLE = 21
    INVALID_COUNTER = 25
    PG_NONEPC = 26
    TRACK_NOT_REQUIRED = 27
    INVALID_CPUSVN = 32
    INVALID_ISVSVN = 64
    UNMASKED_EVENT = 128
    INVALID_KEYNAME = 256


class Fault(Exception):
    """A CPU exception raised by a leaf or by enclave code.

    ``address`` is the faulting linear address (CR2) for #PF, else 0;
    ``check`` names the leaf's check that raised it ("" for enclave code).
    """

    def __init__(self, vector: Vector, error_code: int = 0, address: int = 0, reason: str = "",
                 check: str = ""):
        self.vector = Vector(vector)
        self.error_code = error_code
        self.address = address
        self.reason = reason
        self.check = check
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"#{self.vector.name}"
        if self.vector in (Vector.GP, Vector.PF, Vector.SS, Vector.TS, Vector.NP, Vector.AC):
            text += f"({self.error_code:#x})"
        if self.vector is Vector.PF:
            text += f" at {self.address:#x}"
        if self.reason:
            text += f": {self.reason}"
        return text


def gp(reason: str = "", check: str = "") -> Fault:
    """#GP(0)."""
    return Fault(Vector.GP, 0, 0, reason, check)


def pf(address: int, error_code: int, reason: str = "", check: str = "") -> Fault:
    return Fault(Vector.PF, error_code, address, reason, check)
