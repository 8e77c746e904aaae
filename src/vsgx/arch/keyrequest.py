"""KEYREQUEST, SDM "Key Request (KEYREQUEST)"."""

from __future__ import annotations

from vsgx.arch.constants import KEYPOLICY_RESERVED
from vsgx.arch.layout import Structure, raw, structure, u8, u16, u32, u64

KEYREQUEST_SIZE = 512


@structure(KEYREQUEST_SIZE)
class Keyrequest(Structure):
    keyname: int = u16(0)
    keypolicy: int = u16(2, reserved_bits=KEYPOLICY_RESERVED)
    isvsvn: int = u16(4)
    cet_attributes_mask: int = u8(6)
    # 7 reserved
    cpusvn: bytes = raw(8, 16)
    attributemask: int = u64(24)
    xfrmmask: int = u64(32)
    keyid: bytes = raw(40, 32)
    miscmask: int = u32(72)
    configsvn: int = u16(76)
    # 78..511 reserved
