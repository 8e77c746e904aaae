"""SGX architectural constants (Intel SDM Vol. 3D, the SGX chapters, and the
Linux kernel's arch/x86/include/asm/sgx.h)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = ~(PAGE_SIZE - 1)


def page_align_down(value: int) -> int:
    return value & PAGE_MASK


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & PAGE_MASK


# 48-bit linear addresses: bits 63:47 all equal.
CANONICAL_LIMIT = 1 << 47


def is_canonical(address: int) -> bool:
    return address < CANONICAL_LIMIT or address >= (1 << 64) - CANONICAL_LIMIT


def cpusvn_at_most(requested: bytes, current: bytes) -> bool:
    """A CPUSVN no newer than ``current``: every component (a byte here) at or below."""
    return all(a <= b for a, b in zip(requested, current, strict=True))


class Encls(IntEnum):
    """ENCLS leaf numbers (EAX), SDM "ENCLS"."""

    ECREATE = 0x00
    EADD = 0x01
    EINIT = 0x02
    EREMOVE = 0x03
    EDBGRD = 0x04
    EDBGWR = 0x05
    EEXTEND = 0x06
    ELDB = 0x07
    ELDU = 0x08
    EBLOCK = 0x09
    EPA = 0x0A
    EWB = 0x0B
    ETRACK = 0x0C
    EAUG = 0x0D
    EMODPR = 0x0E
    EMODT = 0x0F
    ERDINFO = 0x10
    ETRACKC = 0x11
    ELDBC = 0x12
    ELDUC = 0x13


class Enclu(IntEnum):
    """ENCLU leaf numbers (EAX), SDM "ENCLU"."""

    EREPORT = 0x00
    EGETKEY = 0x01
    EENTER = 0x02
    ERESUME = 0x03
    EEXIT = 0x04
    EACCEPT = 0x05
    EMODPE = 0x06
    EACCEPTCOPY = 0x07
    EVERIFYREPORT2 = 0x08
    EDECCSSA = 0x09


ENCLU_OPCODE = b"\x0f\x01\xd7"
ENCLS_OPCODE = b"\x0f\x01\xcf"


class PageType(IntEnum):
    """EPCM.PT / SECINFO.FLAGS.PAGE_TYPE, SDM "PAGE_TYPE Field Definition"."""

    SECS = 0
    TCS = 1
    REG = 2
    VA = 3
    TRIM = 4
    SS_FIRST = 5
    SS_REST = 6


class SecinfoFlags(IntFlag):
    """SECINFO.FLAGS bits, SDM "SECINFO.FLAGS". PAGE_TYPE occupies bits 15:8."""

    R = 1 << 0
    W = 1 << 1
    X = 1 << 2
    PENDING = 1 << 3
    MODIFIED = 1 << 4
    PR = 1 << 5


SECINFO_PAGE_TYPE_SHIFT = 8
SECINFO_PAGE_TYPE_MASK = 0xFF << SECINFO_PAGE_TYPE_SHIFT
SECINFO_PERMISSION_MASK = SecinfoFlags.R | SecinfoFlags.W | SecinfoFlags.X
# Bits 7:6 and 63:16 are reserved.
SECINFO_RESERVED_BITS = ((1 << 64) - 1) & ~(0x3F | SECINFO_PAGE_TYPE_MASK)


def secinfo_flags(page_type: PageType, permissions: int = 0) -> int:
    return (int(page_type) << SECINFO_PAGE_TYPE_SHIFT) | permissions


class Attribute(IntFlag):
    """SECS.ATTRIBUTES.FLAGS bits, SDM "ATTRIBUTES"."""

    INIT = 1 << 0
    DEBUG = 1 << 1
    MODE64BIT = 1 << 2
    PROVISIONKEY = 1 << 4
    EINITTOKEN_KEY = 1 << 5
    CET = 1 << 6
    KSS = 1 << 7
    AEXNOTIFY = 1 << 10


# Bits 3, 8, 9 and 63:11 are reserved (must be zero at ECREATE).
ATTRIBUTES_DEFINED = (
    Attribute.INIT
    | Attribute.DEBUG
    | Attribute.MODE64BIT
    | Attribute.PROVISIONKEY
    | Attribute.EINITTOKEN_KEY
    | Attribute.CET
    | Attribute.KSS
    | Attribute.AEXNOTIFY
)
ATTRIBUTES_RESERVED = ((1 << 64) - 1) & ~int(ATTRIBUTES_DEFINED)


class Xfrm(IntFlag):
    """SECS.ATTRIBUTES.XFRM bits: the XSAVE feature mask (as XCR0)."""

    X87 = 1 << 0
    SSE = 1 << 1
    AVX = 1 << 2
    BNDREGS = 1 << 3
    BNDCSR = 1 << 4
    OPMASK = 1 << 5
    ZMM_HI256 = 1 << 6
    HI16_ZMM = 1 << 7
    PKRU = 1 << 9
    AMX_TILECFG = 1 << 17
    AMX_TILEDATA = 1 << 18


XFRM_LEGACY = Xfrm.X87 | Xfrm.SSE


class MiscSelect(IntFlag):
    """SECS.MISCSELECT bits, SDM "SECS.MISCSELECT Field"."""

    EXINFO = 1 << 0
    CPINFO = 1 << 1


class KeyName(IntEnum):
    """KEYREQUEST.KEYNAME, SDM "Key Request (KEYREQUEST)"."""

    EINITTOKEN_KEY = 0
    PROVISION_KEY = 1
    PROVISION_SEAL_KEY = 2
    REPORT_KEY = 3
    SEAL_KEY = 4


class KeyPolicy(IntFlag):
    """KEYREQUEST.KEYPOLICY bits, SDM "Key Request (KEYREQUEST)". Bits 15:6 are reserved."""

    MRENCLAVE = 1 << 0
    MRSIGNER = 1 << 1
    NOISVPRODID = 1 << 2
    CONFIGID = 1 << 3
    ISVFAMILYID = 1 << 4
    ISVEXTPRODID = 1 << 5


KEYPOLICY_RESERVED = 0xFFFF & ~0x3F


class ExitType(IntEnum):
    """GPRSGX.EXITINFO.EXIT_TYPE, SDM "GPRSGX Region"."""

    HARDWARE = 0b011
    SOFTWARE = 0b110


class Vector(IntEnum):
    """Exception vectors an enclave can take."""

    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19
    VE = 20
    CP = 21


# Exceptions whose vector EXITINFO reports (SDM "EXITINFO"); #PF and #GP only
# when SECS.MISCSELECT.EXINFO is set (they then also fill MISC.EXINFO), and
# #CP only with CPINFO.
EXITINFO_ALWAYS = frozenset({Vector.DE, Vector.DB, Vector.BP, Vector.BR, Vector.UD,
                             Vector.MF, Vector.AC, Vector.XM})
EXITINFO_WITH_EXINFO = frozenset({Vector.PF, Vector.GP})


class PfErrorCode(IntFlag):
    """#PF error code bits; SGX (bit 15) marks an EPCM-induced fault."""

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    I = 1 << 4  # noqa: E741 - the SDM's name
    PK = 1 << 5
    SS = 1 << 6
    SGX = 1 << 15


# SIGSTRUCT.HEADER is 12 fixed bytes followed by a 32-bit TYPE whose bit 31
# marks a production (non-debug) signer; the SDM writes both as one 16-byte
# constant 06000000E10000000000010000000000h (type 0).
SIGSTRUCT_HEADER = bytes.fromhex("06000000E100000000000100")
SIGSTRUCT_HEADER2 = bytes.fromhex("01010000600000006000000001000000")
SIGSTRUCT_TYPE_PRODUCTION = 1 << 31
SIGSTRUCT_VENDOR_INTEL = 0x8086
SIGSTRUCT_EXPONENT = 3
RSA_KEY_BITS = 3072
RSA_KEY_BYTES = 384

SSA_GPRSGX_SIZE = 184
SSA_EXINFO_SIZE = 16
SSA_CPINFO_SIZE = 8
XSAVE_LEGACY_SIZE = 512
XSAVE_HEADER_SIZE = 64

VA_SLOT_COUNT = 512
VA_SLOT_SIZE = 8
