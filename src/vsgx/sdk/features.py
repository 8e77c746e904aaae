"""What the enclave is told about the CPU it runs on.

The SDK's trts picks its optimised code paths (IPP, memcpy, AES, SGXSSL)
from the ``system_features_t`` block that the urts passes with
ECMD_INIT_ENCLAVE, and asks the untrusted side for any other CPUID leaf
through the ``sgx_oc_cpuidex`` OCALL (CPUID itself is #UD inside an
enclave). Both must describe exactly what the EVM's executor runs: SSE up to
SSE4.2, POPCNT, MOVBE, PCLMULQDQ, AES-NI, RDRAND, LZCNT — and no AVX, XSAVE
or SHA extensions, which the engine lacks (SECS.XFRM stays x87|SSE).

Layout of system_features_t (common/inc/internal/rts.h, SDK 2.8+, pack(1),
176 bytes): cpu_features u64 @0, version u32 @8, system_feature_set u64 @12,
cpuinfo_table u32[8][4] @20 (rows = CPUID leaves 0, 1, 4, 7), sealed_key
@148, size u64 @156, cpu_features_ext u64 @164, cpu_core_num u32 @172.
Older trts versions read a prefix of it; version 0 (SDK_VERSION_1_5) keeps
EDMM off in every trts from 1.5 to today.
"""

from __future__ import annotations

import struct

SYSTEM_FEATURES_SIZE = 176
SYS_FEATURE_MSB = 1 << 63  # "last element of system_feature_set"
SYS_FEATURE_EXTEND = 1 << 62  # size and cpu_features_ext are valid (2.6+)

# Feature bits (se_cpu_feature_defs.h / _ext.h). Bits 0-14, 17 and 20 mean
# the same in both numberings (POPCNT and MOVBE swap places 11/12, and
# both are set), so one mask serves old and new trts versions.
_FEATURE_BITS = {
    "GENERIC_IA32": 0, "FPU": 1, "CMOV": 2, "MMX": 3, "FXSAVE": 4, "SSE": 5, "SSE2": 6,
    "SSE3": 7, "SSSE3": 8, "SSE4_1": 9, "SSE4_2": 10, "POPCNT/MOVBE": 11, "MOVBE/POPCNT": 12,
    "PCLMULQDQ": 13, "AES": 14, "RDRND": 17, "LZCNT": 20,
}
CPU_FEATURES = sum(1 << bit for bit in _FEATURE_BITS.values())
assert CPU_FEATURES == 0x127FFF


def _bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


def _text_registers(text: bytes) -> tuple[int, int, int, int]:
    eax, ebx, ecx, edx = struct.unpack("<4I", text.ljust(16, b"\0")[:16])
    return eax, ebx, ecx, edx


# leaf 0: highest leaf 0x14, "GenuineIntel" in EBX, EDX, ECX (the SDK's
# crypto libraries insist on it)
_VENDOR = struct.unpack("<3I", b"GenuineIntel")
_LEAF1_EAX = 0x00050654  # family 6, model 0x55 (Skylake server), stepping 4
_LEAF1_EBX = (8 << 8) | (1 << 16)  # CLFLUSH line 8×8 bytes, one logical CPU
_LEAF1_ECX = _bits(0, 1, 9, 13, 19, 20, 22, 23, 25, 30)  # SSE3 PCLMUL SSSE3 CX16 SSE4.1
#                                    SSE4.2 MOVBE POPCNT AES RDRAND; no XSAVE/AVX/FMA/F16C
_LEAF1_EDX = _bits(0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26)
_BRAND = b"vsgx virtual SGX CPU (x86-64, SSE4.2 AES-NI)".ljust(48, b"\0")

CPUID_LEAVES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0, 0): (0x14, _VENDOR[0], _VENDOR[2], _VENDOR[1]),
    (1, 0): (_LEAF1_EAX, _LEAF1_EBX, _LEAF1_ECX, _LEAF1_EDX),
    # deterministic cache parameters: L1D, L1I, L2, L3 (64-byte lines)
    (4, 0): (0x121, (7 << 22) | 63, 63, 0),
    (4, 1): (0x122, (7 << 22) | 63, 63, 0),
    (4, 2): (0x143, (15 << 22) | 63, 1023, 0),
    (4, 3): (0x163, (10 << 22) | 63, 16383, 0b110),
    (7, 0): (0, _bits(9), 0, 0),  # ERMS only: no BMI/AVX2/SHA/ADX/RDSEED
    (0x80000000, 0): (0x80000008, 0, 0, 0),
    # LAHF, LZCNT, PREFETCHW; SYSCALL, NX, long mode
    (0x80000001, 0): (0, 0, _bits(0, 5, 8), _bits(11, 20, 29)),
    (0x80000002, 0): _text_registers(_BRAND[0:16]),
    (0x80000003, 0): _text_registers(_BRAND[16:32]),
    (0x80000004, 0): _text_registers(_BRAND[32:48]),
    (0x80000008, 0): (0x3030, 0, 0, 0),  # 48-bit physical and linear addresses
}


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """EAX, EBX, ECX, EDX of the emulated CPU (zeros for leaves it lacks,
    as for leaves above the highest one on real CPUs)."""
    leaf &= 0xFFFFFFFF
    if leaf in (0, 1, 7) or leaf >= 0x80000000:
        subleaf = 0 if leaf != 7 else subleaf & 0xFFFFFFFF
    return CPUID_LEAVES.get((leaf, subleaf & 0xFFFFFFFF), (0, 0, 0, 0))


def system_features(cpu_core_num: int = 1) -> bytes:
    """The 176-byte block for ECMD_INIT_ENCLAVE."""
    table = bytearray(8 * 16)
    for leaf in (0, 1, 4, 7):  # row = leaf number; rows 2, 3, 5, 6 stay zero
        struct.pack_into("<4I", table, 16 * leaf, *cpuid(leaf, 0))
    block = struct.pack("<QIQ", CPU_FEATURES, 0, SYS_FEATURE_MSB | SYS_FEATURE_EXTEND)
    block += bytes(table)
    block += struct.pack("<QQQI", 0, SYSTEM_FEATURES_SIZE, CPU_FEATURES, cpu_core_num)
    assert len(block) == SYSTEM_FEATURES_SIZE
    return block
