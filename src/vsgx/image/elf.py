"""ELF reading for enclave images, on pyelftools.

Everything a loader or signer needs is read once into plain data
(segments, sections by name, symbols, relocation targets), so that the rest
of ``vsgx.image`` never touches pyelftools and malformed files fail here,
with one ImageError naming the problem.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from vsgx.errors import ImageError

PF_X = P_FLAGS.PF_X
PF_W = P_FLAGS.PF_W
PF_R = P_FLAGS.PF_R
DF_TEXTREL = 0x4
MAX_ADDRESS = 1 << 47


@dataclass(frozen=True)
class Segment:
    index: int
    offset: int  # in the file
    vaddr: int
    filesz: int
    memsz: int
    flags: int  # PF_R | PF_W | PF_X
    align: int

    @property
    def permissions(self) -> int:
        """SECINFO R/W/X bits (they coincide with PF_R/PF_W/PF_X reversed)."""
        return ((1 if self.flags & PF_R else 0) | (2 if self.flags & PF_W else 0)
                | (4 if self.flags & PF_X else 0))


@dataclass(frozen=True)
class Section:
    name: str
    type: str
    offset: int
    size: int
    addr: int
    addralign: int
    flags: int

    @property
    def allocated(self) -> bool:
        return bool(self.flags & SH_FLAGS.SHF_ALLOC)


@dataclass(frozen=True)
class ElfImage:
    data: bytes
    elf_type: str
    entry: int
    segments: tuple[Segment, ...]  # PT_LOAD only, in program-header order
    tls_segment: Segment | None
    sections: dict[str, Section]
    symbols: dict[str, int]
    has_textrel: bool
    relocation_targets: tuple[int, ...]  # r_offset of .rela.dyn / .rela.plt entries (not NONE)

    def section(self, name: str) -> Section:
        try:
            return self.sections[name]
        except KeyError:
            raise ImageError(f"the ELF has no {name} section") from None

    def symbol(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise ImageError(f"the ELF has no symbol {name}") from None


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    try:
        yield
    except ImageError:
        raise
    except (ELFError, ValueError, IndexError, KeyError, OverflowError, TypeError,
            AttributeError, UnicodeDecodeError, EOFError, AssertionError) as exc:
        raise ImageError(f"malformed ELF ({what}): {str(exc) or type(exc).__name__}") from None
    except Exception as exc:  # pyelftools' construct layer raises its own types
        raise ImageError(f"malformed ELF ({what}): {type(exc).__name__}: {exc}") from None


def read_elf(data: bytes) -> ElfImage:
    """Parse an x86-64 ELF enclave image."""
    if data[:4] != b"\x7fELF":
        raise ImageError("not an ELF file (bad magic)")
    with _parsing("header"):
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or not elf.little_endian:
            raise ImageError("not a 64-bit little-endian ELF")
        if elf["e_machine"] != "EM_X86_64":
            raise ImageError(f"not an x86-64 ELF (machine {elf['e_machine']})")
        elf_type = elf["e_type"]
        if elf_type not in ("ET_DYN", "ET_EXEC"):
            raise ImageError(f"not an executable or shared object ({elf_type})")
        entry = elf["e_entry"]
    segments: list[Segment] = []
    tls = None
    with _parsing("program headers"):
        for index, seg in enumerate(elf.iter_segments()):
            if seg["p_type"] not in ("PT_LOAD", "PT_TLS"):
                continue
            s = Segment(index, seg["p_offset"], seg["p_vaddr"], seg["p_filesz"],
                        seg["p_memsz"], seg["p_flags"], seg["p_align"])
            if s.filesz > s.memsz or s.offset + s.filesz > len(data):
                raise ImageError(f"segment {index} lies outside the file or filesz > memsz")
            if s.vaddr + s.memsz > MAX_ADDRESS:
                raise ImageError(f"segment {index} ends beyond the 47-bit address space")
            if seg["p_type"] == "PT_LOAD":
                segments.append(s)
            else:
                tls = s
    if not segments:
        raise ImageError("the ELF has no loadable segment")
    sections: dict[str, Section] = {}
    symbols: dict[str, int] = {}
    relocation_targets: list[int] = []
    has_textrel = False
    with _parsing("section headers"):
        if elf["e_shoff"] and elf.num_sections():
            for sec in elf.iter_sections():
                header = sec.header
                name = sec.name
                sections.setdefault(name, Section(name, header["sh_type"], header["sh_offset"],
                                                  header["sh_size"], header["sh_addr"],
                                                  header["sh_addralign"], header["sh_flags"]))
                if isinstance(sec, SymbolTableSection):
                    for sym in sec.iter_symbols():
                        if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                            symbols.setdefault(sym.name, sym["st_value"])
                elif isinstance(sec, RelocationSection) and name in (".rela.dyn", ".rela.plt"):
                    relocation_targets.extend(rel["r_offset"] for rel in sec.iter_relocations()
                                              if rel["r_info_type"] != 0)  # R_X86_64_NONE
                elif isinstance(sec, DynamicSection):
                    for tag in sec.iter_tags():
                        if tag.entry.d_tag == "DT_TEXTREL" or (
                                tag.entry.d_tag == "DT_FLAGS" and tag.entry.d_val & DF_TEXTREL):
                            has_textrel = True
    return ElfImage(data, elf_type, entry, tuple(segments), tls, sections, symbols,
                    has_textrel, tuple(relocation_targets))
