"""SECINFO, PAGEINFO and PCMD, SDM "Security Information (SECINFO)", "Paging
Crypto MetaData (PCMD)", "Page Information (PAGEINFO)"."""

from __future__ import annotations

from vsgx.arch.constants import (
    SECINFO_PAGE_TYPE_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERMISSION_MASK,
    SECINFO_RESERVED_BITS,
    PageType,
    SecinfoFlags,
)
from vsgx.arch.layout import Structure, raw, structure, u64

SECINFO_SIZE = 64
PAGEINFO_SIZE = 32
PCMD_SIZE = 128


@structure(SECINFO_SIZE)
class Secinfo(Structure):
    flags: int = u64(0, reserved_bits=SECINFO_RESERVED_BITS)
    # 8..63 reserved

    @property
    def page_type(self) -> int:
        return (self.flags & SECINFO_PAGE_TYPE_MASK) >> SECINFO_PAGE_TYPE_SHIFT

    @property
    def permissions(self) -> int:
        return self.flags & SECINFO_PERMISSION_MASK

    @classmethod
    def of(cls, page_type: PageType, permissions: int = 0) -> Secinfo:
        return cls(flags=(int(page_type) << SECINFO_PAGE_TYPE_SHIFT) | int(permissions))

    def describe(self) -> str:
        try:
            name = PageType(self.page_type).name
        except ValueError:
            name = f"PT{self.page_type}"
        perms = "".join(c if self.flags & bit else "-" for c, bit in
                        (("r", SecinfoFlags.R), ("w", SecinfoFlags.W), ("x", SecinfoFlags.X)))
        return f"{name} {perms}"


@structure(PAGEINFO_SIZE)
class Pageinfo(Structure):
    linaddr: int = u64(0)
    srcpge: int = u64(8)
    secinfo: int = u64(16)  # SECINFO address, or PCMD address for EWB/ELDU
    secs: int = u64(24)


@structure(PCMD_SIZE)
class Pcmd(Structure):
    secinfo: bytes = raw(0, SECINFO_SIZE, of=Secinfo)
    enclaveid: int = u64(64)
    # 72..111 reserved
    mac: bytes = raw(112, 16)
