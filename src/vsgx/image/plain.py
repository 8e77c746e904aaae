"""Plain ELF enclaves in the Linux kernel selftest convention
(tools/testing/selftests/sgx: load.c, sigstruct.c) with a sidecar SIGSTRUCT.

Rules (what both `vsgx sign` and the loader apply):
- The ELF is linked at 0 (static-pie); every PT_LOAD becomes a run of pages at
  its page-aligned p_vaddr, in program-header order, measured (EADD + EEXTEND).
- The first PT_LOAD holds the TCS pages: each of its pages is added as a TCS.
- Other pages get SECINFO REG with R/W/X from p_flags; bytes beyond p_filesz
  (the .bss tail) are zero.
- SIGSTRUCT.SWDEFINED carries the number of heap pages appended after the
  last segment: added, not measured (the selftest's heap), zero-filled.
- SECS: SSAFRAMESIZE = 1, SIZE = the smallest power of two that holds the
  image (at least two pages), ATTRIBUTES / XFRM / MISCSELECT as signed.
"""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, Attribute, PageType, page_align_down, page_align_up
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.sigstruct import Sigstruct
from vsgx.errors import ImageError
from vsgx.image.elf import ElfImage
from vsgx.image.plan import BuildPlan, Ecreate, PageRun, check_plan_size

PLAIN_SSAFRAMESIZE = 1


def enclave_size_for(end: int) -> int:
    size = 2 * PAGE_SIZE
    while size < end:
        size <<= 1
    return size


def segment_runs(elf: ElfImage, index: int, secinfo: int, label: str) -> list[PageRun]:
    """PT_LOAD ``index`` as page runs: the file-backed pages (zero-padded at
    both ends) and, beyond them, the zero pages of the p_memsz tail."""
    seg = elf.segments[index]
    start = page_align_down(seg.vaddr)
    file_end = page_align_up(seg.vaddr + seg.filesz) if seg.filesz else start
    end = page_align_up(seg.vaddr + seg.memsz)
    runs = []
    if seg.filesz:
        content = bytearray(file_end - start)
        lead = seg.vaddr - start
        content[lead:lead + seg.filesz] = elf.data[seg.offset:seg.offset + seg.filesz]
        runs.append(PageRun(start, len(content) // PAGE_SIZE, secinfo, True, bytes(content),
                            label=label))
    if end > file_end:
        runs.append(PageRun(file_end, (end - file_end) // PAGE_SIZE, secinfo, True, None, 0,
                            label=f"{label} zero tail"))
    return runs


def plain_runs(elf: ElfImage, heap_pages: int) -> tuple[list[PageRun], int]:
    runs: list[PageRun] = []
    previous_end = 0
    for index, seg in enumerate(elf.segments):
        if seg.memsz == 0:
            continue
        start = page_align_down(seg.vaddr)
        if start < previous_end:
            raise ImageError(f"segment {seg.index} overlaps the page of the segment before it")
        if index == 0:
            if seg.flags & 0x7 != 0x6:  # PF_R | PF_W
                raise ImageError("the first PT_LOAD (TCS pages) must be RW")
            secinfo = Secinfo.of(PageType.TCS).flags
            label = "tcs"
        else:
            secinfo = Secinfo.of(PageType.REG, seg.permissions).flags
            label = f"segment {seg.index}"
        runs += segment_runs(elf, index, secinfo, label)
        previous_end = page_align_up(seg.vaddr + seg.memsz)
    if not runs or runs[0].label != "tcs":
        raise ImageError("no TCS segment: the first PT_LOAD must hold the TCS pages")
    if heap_pages:
        runs.append(PageRun(previous_end, heap_pages,
                            Secinfo.of(PageType.REG, 0x3).flags, False, None, 0, "heap"))
        previous_end += heap_pages * PAGE_SIZE
    return runs, previous_end


def plain_plan(elf: ElfImage, sigstruct: Sigstruct | None, *, sigstruct_bytes: bytes | None = None,
               heap_pages: int | None = None,
               attributes: int | None = None, xfrm: int | None = None,
               miscselect: int | None = None) -> BuildPlan:
    """The plan for a plain ELF enclave. Parameters not given come from the
    SIGSTRUCT (the loader's case); the signer passes them before signing."""
    if sigstruct is not None:
        heap_pages = sigstruct.swdefined if heap_pages is None else heap_pages
        attributes = sigstruct.attributes if attributes is None else attributes
        xfrm = sigstruct.xfrm if xfrm is None else xfrm
        miscselect = sigstruct.miscselect if miscselect is None else miscselect
    if heap_pages is None or attributes is None or xfrm is None or miscselect is None:
        raise ImageError("a plain ELF enclave needs its SIGSTRUCT (sidecar .sig file)")
    if heap_pages > 1 << 24:
        raise ImageError(f"SIGSTRUCT.SWDEFINED asks for {heap_pages} heap pages")
    runs, end = plain_runs(elf, heap_pages)
    check_plan_size(enclave_size_for(end), runs)  # before anything is hashed
    ecreate = Ecreate(size=enclave_size_for(end), ssaframesize=PLAIN_SSAFRAMESIZE,
                      miscselect=miscselect, attributes=attributes & ~int(Attribute.INIT),
                      xfrm=xfrm)
    symbols = {name: value for name, value in elf.symbols.items()
               if name.startswith("encl_") or name in ("_start", "enclave_entry")}
    return BuildPlan(ecreate, tuple(runs), sigstruct, sigstruct_bytes, entry_symbols=symbols,
                     format="plain-elf",
                     details={"heap_pages": heap_pages})
