"""SGX Enclave Control Structure, SDM "SGX Enclave Control Structure (SECS)"."""

from __future__ import annotations

from vsgx.arch.constants import ATTRIBUTES_RESERVED
from vsgx.arch.layout import Structure, raw, structure, u16, u32, u64

SECS_SIZE = 4096


@structure(SECS_SIZE)
class Secs(Structure):
    size: int = u64(0)
    baseaddr: int = u64(8)
    ssaframesize: int = u32(16)  # in pages
    miscselect: int = u32(20)
    # 24..47 reserved
    attributes: int = u64(48, reserved_bits=ATTRIBUTES_RESERVED)
    xfrm: int = u64(56)
    mrenclave: bytes = raw(64, 32)
    # 96..127 reserved
    mrsigner: bytes = raw(128, 32)
    # 160..191 reserved
    configid: bytes = raw(192, 64)
    isvprodid: int = u16(256)
    isvsvn: int = u16(258)
    configsvn: int = u16(260)
    # 262..4095 reserved (the CPU keeps EID and padding here)
