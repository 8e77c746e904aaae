"""CPUID leaf 0x12 (SGX capability enumeration), SDM "Intel SGX Resource Enumeration
Leaves".

The EVM answers CPUID from this model, and the AVM forwards it to
applications that probe for SGX (the seed's KVM patch did the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vsgx.arch.constants import ATTRIBUTES_DEFINED, Attribute, MiscSelect, Xfrm

CPUID_SGX_LEAF = 0x12
# CPUID.(EAX=07H, ECX=0): EBX bit 2 = SGX, ECX bit 30 = SGX_LC.
CPUID7_EBX_SGX = 1 << 2
CPUID7_ECX_SGX_LC = 1 << 30

SGX1 = 1 << 0
SGX2 = 1 << 1
EPC_SECTION_VALID = 0x1
EPC_SECTION_PROTECTED = 0x1


@dataclass(frozen=True)
class EpcSection:
    base: int
    size: int


@dataclass(frozen=True)
class SgxCpuid:
    sgx1: bool = True
    sgx2: bool = True
    miscselect: int = int(MiscSelect.EXINFO)
    max_enclave_size_not64: int = 31  # log2
    max_enclave_size_64: int = 47  # log2
    # The ATTRIBUTES bits ECREATE accepts: INIT is never settable; CET and
    # AEXNOTIFY are not modelled by vsgx.
    attributes: int = int(ATTRIBUTES_DEFINED
                          & ~(Attribute.INIT | Attribute.CET | Attribute.AEXNOTIFY))
    xfrm: int = int(Xfrm.X87 | Xfrm.SSE)
    epc_sections: tuple[EpcSection, ...] = field(default_factory=tuple)

    def leaf(self, subleaf: int) -> tuple[int, int, int, int]:
        """EAX, EBX, ECX, EDX of CPUID.(EAX=12H, ECX=subleaf)."""
        if subleaf == 0:
            eax = (SGX1 if self.sgx1 else 0) | (SGX2 if self.sgx2 else 0)
            edx = (self.max_enclave_size_not64 & 0xFF) | (self.max_enclave_size_64 & 0xFF) << 8
            return eax, self.miscselect, 0, edx
        if subleaf == 1:
            mask32 = 0xFFFFFFFF
            return (self.attributes & mask32, self.attributes >> 32,
                    self.xfrm & mask32, self.xfrm >> 32)
        index = subleaf - 2
        if 0 <= index < len(self.epc_sections):
            s = self.epc_sections[index]
            eax = (s.base & 0xFFFFF000) | EPC_SECTION_VALID
            ebx = (s.base >> 32) & 0xFFFFF
            ecx = (s.size & 0xFFFFF000) | EPC_SECTION_PROTECTED
            edx = (s.size >> 32) & 0xFFFFF
            return eax, ebx, ecx, edx
        return 0, 0, 0, 0

    @classmethod
    def from_leaves(cls, leaves: list[tuple[int, int, int, int]]) -> SgxCpuid:
        """Rebuild the model from sub-leaves 0, 1, 2... (the inverse of leaf)."""
        eax0, ebx0, _, edx0 = leaves[0]
        a1, b1, c1, d1 = leaves[1]
        sections = []
        for eax, ebx, ecx, edx in leaves[2:]:
            if eax & 0xF != EPC_SECTION_VALID:
                break
            sections.append(EpcSection((eax & 0xFFFFF000) | (ebx & 0xFFFFF) << 32,
                                       (ecx & 0xFFFFF000) | (edx & 0xFFFFF) << 32))
        return cls(sgx1=bool(eax0 & SGX1), sgx2=bool(eax0 & SGX2), miscselect=ebx0,
                   max_enclave_size_not64=edx0 & 0xFF, max_enclave_size_64=(edx0 >> 8) & 0xFF,
                   attributes=a1 | b1 << 32, xfrm=c1 | d1 << 32, epc_sections=tuple(sections))
