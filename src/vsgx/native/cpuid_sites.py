"""Where the CPUID instructions of a loaded object are, for the injected
library to turn them into traps on a CPU without CPUID faulting.

A byte scan for ``0f a2`` is not enough (the bytes occur inside other
instructions and in data): each executable section is disassembled in one
linear sweep with Capstone, the disassembler the brief calls for, and only
real CPUID instruction starts are returned (link-time addresses). Results
are cached per file identity (device, inode, size, mtime)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from vsgx.errors import VsgxError

_cache: dict[tuple[int, int, int, int], list[int]] = {}
_lock = threading.Lock()
SHF_EXECINSTR = 0x4


class CpuidSitesError(VsgxError):
    """The object cannot be disassembled (changed on disk, not an ELF...)."""


@dataclass(frozen=True)
class FileIdentity:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _disassembler() -> Any:  # a capstone.Cs (capstone has no type information)
    try:
        import capstone
    except ImportError:
        raise CpuidSitesError("the capstone package is not installed (pip install "
                              "capstone)") from None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    return md


def _regions(path: str, segments: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """(link-time address, bytes) of the code to sweep: executable sections
    inside the executable segments, or the segments themselves when the
    file has no section headers."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    def inside(address: int, size: int) -> bool:
        return any(start <= address and address + size <= start + length
                   for start, length in segments)

    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            regions = []
            for section in elf.iter_sections():
                if (section["sh_flags"] & SHF_EXECINSTR and section["sh_type"] == "SHT_PROGBITS"
                        and section["sh_size"] and inside(section["sh_addr"],
                                                          section["sh_size"])):
                    regions.append((section["sh_addr"], section.data()))
            if regions:
                return regions
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_LOAD" and segment["p_flags"] & 0x1:
                    regions.append((segment["p_vaddr"], segment.data()))
            return regions
    except (OSError, ELFError) as exc:
        raise CpuidSitesError(f"{path}: {exc}") from None


def cpuid_sites(path: str, identity: FileIdentity, segments: list[tuple[int, int]]) -> list[int]:
    """Link-time addresses of every CPUID instruction in the executable code
    of ``path``, which must still be the file the program mapped."""
    key = (identity.dev, identity.ino, identity.size, identity.mtime_ns)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    try:
        now = FileIdentity.of(path)
    except OSError as exc:
        raise CpuidSitesError(f"{path}: {exc.strerror}") from None
    if now != identity:
        raise CpuidSitesError(f"{path} changed on disk since the program mapped it")
    md = _disassembler()
    sites: list[int] = []
    for address, code in _regions(path, segments):
        if b"\x0f\xa2" not in code:
            continue
        for insn_address, size, mnemonic, _ in md.disasm_lite(code, address):
            if mnemonic == "cpuid" and size == 2:  # prefixed forms would trap elsewhere
                sites.append(insn_address)
    with _lock:
        _cache[key] = sites
    return sites


__all__ = ["CpuidSitesError", "FileIdentity", "cpuid_sites"]
