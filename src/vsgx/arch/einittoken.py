"""EINIT token, SDM "EINIT Token Structure (EINITTOKEN)". The MAC covers bytes 0..191."""

from __future__ import annotations

from vsgx.arch.layout import Structure, raw, structure, u8, u16, u32, u64

EINITTOKEN_SIZE = 304
EINITTOKEN_MACED_SIZE = 192
EINITTOKEN_VALID = 1


@structure(EINITTOKEN_SIZE)
class Einittoken(Structure):
    valid: int = u32(0)  # bit 0; bits 31:1 reserved
    # 4..47 reserved
    attributes: int = u64(48)
    xfrm: int = u64(56)
    mrenclave: bytes = raw(64, 32)
    # 96..127 reserved
    mrsigner: bytes = raw(128, 32)
    # 160..191 reserved
    cpusvnle: bytes = raw(192, 16)
    isvprodidle: int = u16(208)
    isvsvnle: int = u16(210)
    cet_masked_attributes_le: int = u8(212)
    # 213..235 reserved
    maskedmiscselectle: int = u32(236)
    maskedattributesle: int = u64(240)
    maskedxfrmle: int = u64(248)
    keyid: bytes = raw(256, 32)
    mac: bytes = raw(288, 16)
