"""Enclave Signature Structure, SDM "Enclave Signature Structure (SIGSTRUCT)".

HEADER is split here into the 12 fixed bytes and the TYPE word (bit 31: a
production signer), as Intel's SDK names them (css_header_t).
"""

from __future__ import annotations

from vsgx.arch.constants import RSA_KEY_BYTES, SIGSTRUCT_HEADER, SIGSTRUCT_HEADER2
from vsgx.arch.layout import Structure, raw, structure, u8, u16, u32, u64

SIGSTRUCT_SIZE = 1808
# The signed bytes: 0..127 and 900..1027 (SDM SIGSTRUCT).
SIGNED_RANGES = ((0, 128), (900, 1028))


@structure(SIGSTRUCT_SIZE)
class Sigstruct(Structure):
    header: bytes = raw(0, 12, SIGSTRUCT_HEADER)
    type: int = u32(12)
    vendor: int = u32(16)
    date: int = u32(20)  # BCD yyyymmdd
    header2: bytes = raw(24, 16, SIGSTRUCT_HEADER2)
    swdefined: int = u32(40)
    # 44..127 reserved
    modulus: bytes = raw(128, RSA_KEY_BYTES)  # little-endian
    exponent: int = u32(512, default=3)
    signature: bytes = raw(516, RSA_KEY_BYTES)  # little-endian
    miscselect: int = u32(900)
    miscmask: int = u32(904)
    cet_attributes: int = u8(908)
    cet_attributes_mask: int = u8(909)
    # 910..911 reserved
    isvfamilyid: bytes = raw(912, 16)
    attributes: int = u64(928)
    xfrm: int = u64(936)
    attributemask: int = u64(944)
    xfrmmask: int = u64(952)
    enclavehash: bytes = raw(960, 32)
    # 992..1007 reserved
    isvextprodid: bytes = raw(1008, 16)
    isvprodid: int = u16(1024)
    isvsvn: int = u16(1026)
    # 1028..1039 reserved
    q1: bytes = raw(1040, RSA_KEY_BYTES)
    q2: bytes = raw(1424, RSA_KEY_BYTES)


def signed_bytes(data: bytes) -> bytes:
    """The 256 bytes that the signature covers."""
    return b"".join(data[lo:hi] for lo, hi in SIGNED_RANGES)


def bcd_date(year: int, month: int, day: int) -> int:
    """SIGSTRUCT.DATE: 0xYYYYMMDD in binary-coded decimal."""
    return int(f"{year:04d}{month:02d}{day:02d}", 16)
