"""State Save Area frames, SDM "State Save Area (SSA) Frame".

An SSA frame is SECS.SSAFRAMESIZE pages. The XSAVE area starts at the frame;
GPRSGX occupies the last 184 bytes and the MISC region (EXINFO when
MISCSELECT.EXINFO is set) lies immediately below it.
"""

from __future__ import annotations

from vsgx.arch.constants import (
    PAGE_SIZE,
    SSA_CPINFO_SIZE,
    SSA_EXINFO_SIZE,
    SSA_GPRSGX_SIZE,
    XSAVE_HEADER_SIZE,
    XSAVE_LEGACY_SIZE,
    ExitType,
    MiscSelect,
    Vector,
)
from vsgx.arch.layout import Structure, structure, u8, u32, u64


@structure(SSA_GPRSGX_SIZE)
class Gprsgx(Structure):
    rax: int = u64(0)
    rcx: int = u64(8)
    rdx: int = u64(16)
    rbx: int = u64(24)
    rsp: int = u64(32)
    rbp: int = u64(40)
    rsi: int = u64(48)
    rdi: int = u64(56)
    r8: int = u64(64)
    r9: int = u64(72)
    r10: int = u64(80)
    r11: int = u64(88)
    r12: int = u64(96)
    r13: int = u64(104)
    r14: int = u64(112)
    r15: int = u64(120)
    rflags: int = u64(128)
    rip: int = u64(136)
    ursp: int = u64(144)
    urbp: int = u64(152)
    exitinfo: int = u32(160)
    # 164..166 reserved
    aexnotify: int = u8(167)
    fsbase: int = u64(168)
    gsbase: int = u64(176)


@structure(SSA_EXINFO_SIZE)
class Exinfo(Structure):
    maddr: int = u64(0)
    errcd: int = u32(8)
    # 12..15 reserved


EXITINFO_VALID = 1 << 31


def exitinfo(vector: Vector, exit_type: ExitType) -> int:
    return EXITINFO_VALID | (int(exit_type) << 8) | int(vector)


def exitinfo_fields(value: int) -> tuple[bool, int, int]:
    """(valid, vector, exit_type) of an EXITINFO value."""
    return bool(value & EXITINFO_VALID), value & 0xFF, (value >> 8) & 0x7


def frame_size(ssaframesize_pages: int) -> int:
    return ssaframesize_pages * PAGE_SIZE


def gprsgx_offset(ssaframesize_pages: int) -> int:
    """Offset of GPRSGX from the start of a frame."""
    return frame_size(ssaframesize_pages) - SSA_GPRSGX_SIZE


def exinfo_offset(ssaframesize_pages: int) -> int:
    return gprsgx_offset(ssaframesize_pages) - SSA_EXINFO_SIZE


# Standard-format XSAVE component (offset, size) by XFRM bit, as CPUID leaf
# 0xD reports them on current Intel and AMD parts.
XSAVE_COMPONENTS = {2: (576, 256), 5: (1088, 64), 6: (1152, 512), 7: (1664, 1024), 9: (2688, 8)}


def xsave_size(xfrm: int) -> int:
    """Bytes of the standard-format XSAVE area an SSA frame holds for XFRM."""
    size = XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE
    for bit, (offset, length) in XSAVE_COMPONENTS.items():
        if xfrm >> bit & 1:
            size = max(size, offset + length)
    return size


def misc_size(miscselect: int) -> int:
    """Bytes of the MISC region for a MISCSELECT (SDM "MISC Region")."""
    size = 0
    if miscselect & MiscSelect.EXINFO:
        size += SSA_EXINFO_SIZE
    if miscselect & MiscSelect.CPINFO:
        size += SSA_CPINFO_SIZE
    return size
