"""Thread Control Structure, SDM "Thread Control Structure (TCS)"."""

from __future__ import annotations

from vsgx.arch.layout import Structure, structure, u32, u64

TCS_SIZE = 4096

TCS_FLAGS_DBGOPTIN = 1 << 0
TCS_FLAGS_AEXNOTIFY = 1 << 1
TCS_FLAGS_RESERVED = ((1 << 64) - 1) & ~(TCS_FLAGS_DBGOPTIN | TCS_FLAGS_AEXNOTIFY)


@structure(TCS_SIZE)
class Tcs(Structure):
    state: int = u64(0)  # reserved to software; the CPU uses it as the busy flag
    flags: int = u64(8, reserved_bits=TCS_FLAGS_RESERVED)
    ossa: int = u64(16)  # offset of the SSA stack from the enclave base
    cssa: int = u32(24)
    nssa: int = u32(28)
    oentry: int = u64(32)
    aep: int = u64(40)  # saved by EENTER; reserved to software
    ofsbase: int = u64(48)
    ogsbase: int = u64(56)
    fslimit: int = u32(64)
    gslimit: int = u32(68)
    # 72..4095 reserved
