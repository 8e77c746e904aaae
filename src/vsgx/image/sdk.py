"""Intel SGX SDK signed enclaves (``enclave.signed.so``) → build plan.

The order of operations is that of Intel's loader (psw/urts/loader.cpp
build_image, which sgx_sign also runs to compute ENCLAVEHASH):
ECREATE; the patch table applied to the in-memory file image; every PT_LOAD
page (psw/urts/parser/elfparser.cpp); the metadata-1.3 extra page; then the
layout table with its groups (heap, guard, stack, TCS, SSA, thread data).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from vsgx.arch.constants import PAGE_SIZE, PageType, SecinfoFlags, page_align_down, page_align_up
from vsgx.arch.layout import field_offset
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.tcs import Tcs
from vsgx.errors import ImageError
from vsgx.image.elf import ElfImage, Segment
from vsgx.image.plan import BuildPlan, Ecreate, PageRun, Region, RegionKind, check_plan_size
from vsgx.image.sdk_metadata import (
    LAYOUT_IDS_V1,
    LAYOUT_IDS_V2,
    METADATA_NOTE_SECTION,
    PAGE_ATTR_EADD,
    PAGE_ATTR_EEXTEND,
    PAGE_ATTR_POST_ADD,
    SSA_FRAME_SIZE_MAX,
    TCS_TEMPLATE_SIZE,
    LayoutEntry,
    LayoutGroup,
    MetadataCopy,
    find_metadata_area,
    make_version,
    select_copy,
    walk_copies,
)

_U64 = (1 << 64) - 1
# Real signed enclaves reach 32 GiB (2^23 pages); beyond 2^25 pages a file is
# refused rather than hashed for hours.
MAX_ADDED_PAGES = 1 << 25
MAX_LAYOUT_ITEMS = 1 << 20
MAX_CONTENT_PAGES = 4096
_TCS_RELOCATED = tuple(field_offset(Tcs, name) for name in ("ossa", "ofsbase", "ogsbase"))
_TCS_FLAGS = Secinfo.of(PageType.TCS).flags


@dataclass(frozen=True)
class LayoutItem:
    """One layout entry as the loader placed it (after group expansion)."""

    offset: int  # enclave offset (ELRANGE bias included)
    entry: LayoutEntry
    replay: int  # 0 for the entry itself, k for its k-th group replay


def metadata_copies(elf: ElfImage) -> list[MetadataCopy]:
    section = elf.sections.get(METADATA_NOTE_SECTION)
    if section is None:
        raise ImageError("not an SGX SDK enclave: no .note.sgxmeta section")
    return walk_copies(find_metadata_area(elf.data, section.offset, section.size))


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _apply_patches(elf: ElfImage, meta: MetadataCopy) -> bytes:
    image = bytearray(elf.data)
    for index, patch in enumerate(meta.patches):
        source = meta.blob(patch.src, patch.size, f"patch {index} source")
        if patch.dst + patch.size > len(image):
            raise ImageError(f"metadata: patch {index} writes past the end of the file")
        image[patch.dst:patch.dst + patch.size] = source
    return bytes(image)


def _segment_runs(elf: ElfImage, image: bytes, bias: int, legacy_extra_page: bool
                  ) -> list[PageRun]:
    """PT_LOAD pages as Intel's loader adds them (build_regular_sections /
    build_mem_region): file-backed pages, then the zero tail of p_memsz."""
    reloc_pages: set[int] = set()
    if elf.has_textrel:
        for target in elf.relocation_targets:
            reloc_pages.add(target >> 12)
            if target & 0xFFF > PAGE_SIZE - 8:
                reloc_pages.add((target >> 12) + 1)
    runs: list[PageRun] = []
    last: Segment | None = None
    max_rva = 0

    def extra_page_needed(seg: Segment) -> bool:
        # True when p_vaddr is not page aligned and rounding p_memsz alone
        # spills into one more page (loader.cpp build_sections, 1.3 only).
        end = page_align_up(seg.vaddr + seg.memsz)
        return end < page_align_up(page_align_up(seg.memsz) + seg.vaddr)

    def add_extra_page(seg: Segment) -> None:
        end = page_align_up(seg.vaddr + seg.memsz)
        flags = Secinfo.of(PageType.REG, seg.permissions).flags
        runs.append(PageRun(end + bias, 1, flags, True, bytes(PAGE_SIZE), label="1.3 extra page"))

    for seg in elf.segments:
        if seg.permissions == 0:
            raise ImageError(f"segment {seg.index} has no R, W or X permission")
        flags = Secinfo.of(PageType.REG, seg.permissions).flags
        if legacy_extra_page and last is not None and extra_page_needed(last) and \
                page_align_up(last.vaddr + last.memsz) < page_align_down(seg.vaddr):
            add_extra_page(last)
        if seg.vaddr > max_rva:
            max_rva = seg.vaddr
            last = seg
        start = page_align_down(seg.vaddr)
        file_end = page_align_up(seg.vaddr + seg.filesz)
        lead = seg.vaddr - start
        if seg.filesz:
            content = bytearray(file_end - start)
            content[lead:lead + seg.filesz] = image[seg.offset:seg.offset + seg.filesz]
            page_flags = [flags | (SecinfoFlags.W if (p >> 12) in reloc_pages
                                   and not flags & SecinfoFlags.W else 0)
                          for p in range(start, file_end, PAGE_SIZE)]
            first = 0
            for i in range(1, len(page_flags) + 1):
                if i == len(page_flags) or page_flags[i] != page_flags[first]:
                    runs.append(PageRun(start + first * PAGE_SIZE + bias, i - first,
                                        page_flags[first], True,
                                        bytes(content[first * PAGE_SIZE:i * PAGE_SIZE]),
                                        label=f"segment {seg.index}"))
                    first = i
        tail_start = file_end if seg.filesz else start
        tail_end = page_align_up(seg.vaddr + seg.memsz)
        if tail_end > tail_start:
            runs.append(PageRun(tail_start + bias, (tail_end - tail_start) // PAGE_SIZE, flags,
                                True, None, 0, label=f"segment {seg.index} zero tail"))
    if legacy_extra_page and last is not None and extra_page_needed(last):
        add_extra_page(last)
    return runs


def expand_layout(meta: MetadataCopy, bias: int) -> list[LayoutItem]:
    """The layout entries with groups replayed (loader.cpp build_contexts): a
    group replays the ``entry_count`` table entries before it ``load_times``
    times, the k-th replay shifted by k × ``load_step``."""
    items: list[LayoutItem] = []
    table = meta.layout
    for index, entry in enumerate(table):
        if isinstance(entry, LayoutGroup):
            if entry.entry_count > index:
                raise ImageError(f"metadata: layout group {index} replays more entries than "
                                 "precede it")
            replayed = table[index - entry.entry_count:index]
            if any(isinstance(e, LayoutGroup) for e in replayed):
                raise ImageError(f"metadata: layout group {index} replays another group")
            if entry.load_times > 1 << 20:
                raise ImageError(f"metadata: layout group {index} replays "
                                 f"{entry.load_times} times")
            if len(items) + entry.load_times * len(replayed) > MAX_LAYOUT_ITEMS:
                raise ImageError(f"metadata: layout group {index} expands to too many entries")
            for k in range(1, entry.load_times + 1):
                for e in replayed:
                    assert isinstance(e, LayoutEntry)
                    items.append(LayoutItem(bias + e.rva + k * entry.load_step, e, k))
        else:
            items.append(LayoutItem(bias + entry.rva, entry, 0))
    return items


def _layout_runs(meta: MetadataCopy, items: list[LayoutItem], bias: int
                 ) -> tuple[list[PageRun], list[Region]]:
    runs: list[PageRun] = []
    regions: list[Region] = []
    names = _layout_names(meta)
    for item in items:
        e = item.entry
        if e.rva % PAGE_SIZE:
            raise ImageError(f"metadata: layout entry at {e.rva:#x} is not page aligned")
        if e.page_count == 0:
            continue
        label = names.get(e.id, f"id {e.id}")
        added = bool(e.attributes & PAGE_ATTR_EADD) and (e.content_offset or e.si_flags)
        if not added:
            kind = (RegionKind.DYNAMIC if e.attributes & PAGE_ATTR_POST_ADD
                    else RegionKind.GUARD if e.si_flags == 0 else RegionKind.RESERVED)
            regions.append(Region(item.offset, e.page_count, kind, label, e.si_flags))
            continue
        measured = bool(e.attributes & PAGE_ATTR_EEXTEND)
        if e.content_offset and e.page_count > MAX_CONTENT_PAGES:
            raise ImageError(f"metadata: layout entry {label} has {e.page_count} content pages")
        if e.content_offset and e.si_flags == _TCS_FLAGS:
            if e.content_size > PAGE_SIZE:
                raise ImageError("metadata: the TCS template is larger than a page")
            template = meta.blob(e.content_offset, e.content_size, "the TCS template")
            for page in range(e.page_count):
                offset = item.offset + page * PAGE_SIZE
                tcs = bytearray(PAGE_SIZE)
                tcs[:len(template)] = template
                rva = offset - bias
                for field in _TCS_RELOCATED:
                    value = int.from_bytes(tcs[field:field + 8], "little")
                    tcs[field:field + 8] = ((value + rva) & _U64).to_bytes(8, "little")
                runs.append(PageRun(offset, 1, e.si_flags, measured, bytes(tcs), label=label))
        elif e.content_offset:
            size = e.page_count * PAGE_SIZE
            if e.content_size > size:
                raise ImageError(f"metadata: layout content of {label} exceeds its pages")
            content = bytearray(size)
            content[:e.content_size] = meta.blob(e.content_offset, e.content_size, label)
            runs.append(PageRun(item.offset, e.page_count, e.si_flags, measured, bytes(content),
                                label=label))
        else:
            runs.append(PageRun(item.offset, e.page_count, e.si_flags, measured, None,
                                e.content_size, label=label))
    return runs, regions


def _layout_names(meta: MetadataCopy) -> dict[int, str]:
    """Guess which id numbering the table uses (the version does not tell)."""
    for entry in meta.layout:
        if entry.id == 0x1006 or (isinstance(entry, LayoutEntry) and entry.id == 2
                                  and entry.si_flags == _TCS_FLAGS):
            return LAYOUT_IDS_V1
    return LAYOUT_IDS_V2


def _check_no_overlap(runs: list[PageRun], size: int) -> None:
    spans = sorted((run.offset, run.end, run.label) for run in runs)
    for (_start, end, label), (next_start, _, next_label) in itertools.pairwise(spans):
        if next_start < end:
            raise ImageError(f"pages of {label} and {next_label} overlap at {next_start:#x}")
    if spans and spans[-1][1] > size:
        raise ImageError(f"{spans[-1][2]} runs past the enclave size {size:#x}")


def sdk_plan(elf: ElfImage, meta: MetadataCopy | None = None) -> BuildPlan:
    """The build plan of an SDK-signed enclave, in Intel's loader's order."""
    copies = metadata_copies(elf)
    if meta is None:
        meta = select_copy(copies)
    h = meta.header
    if h.tcs_policy > 1:
        raise ImageError(f"metadata: unknown TCS policy {h.tcs_policy}")
    if not 1 <= h.ssa_frame_size <= SSA_FRAME_SIZE_MAX:
        raise ImageError(f"metadata: SSA frame size {h.ssa_frame_size} pages is out of range")
    if not _is_power_of_two(h.enclave_size) or h.enclave_size < 2 * PAGE_SIZE:
        raise ImageError(f"metadata: enclave size {h.enclave_size:#x} is not a power of two")
    size = h.enclave_size
    bias = 0
    if meta.elrange is not None:
        el = meta.elrange
        if (not _is_power_of_two(el.elrange_size) or el.elrange_start_address % el.elrange_size
                or el.enclave_image_address < el.elrange_start_address
                or el.enclave_image_address + size > el.elrange_start_address + el.elrange_size):
            raise ImageError("metadata: inconsistent ELRANGE configuration")
        bias = el.enclave_image_address - el.elrange_start_address
        size = el.elrange_size
    image = _apply_patches(elf, meta)
    runs = _segment_runs(elf, image, bias, h.version == make_version(1, 3))
    items = expand_layout(meta, bias)
    layout_runs, regions = _layout_runs(meta, items, bias)
    runs += layout_runs
    added = sum(run.count for run in runs)
    if added > MAX_ADDED_PAGES:
        raise ImageError(f"the enclave adds {added} pages; vsgx loads at most {MAX_ADDED_PAGES}")
    check_plan_size(size, runs)
    _check_no_overlap(runs, size)
    ecreate = Ecreate(size=size, ssaframesize=h.ssa_frame_size,
                      miscselect=meta.sigstruct.miscselect, attributes=h.attributes,
                      xfrm=h.xfrm)
    wanted = ("enclave_entry", "g_global_data", "g_vsgx_global_data")
    symbols: dict[str, int] = {name: elf.symbols[name] for name in wanted
                               if name in elf.symbols}
    details: dict[str, object] = {
        "metadata_version": meta.version_text,
        "metadata_versions": [c.version_text for c in copies],
        "tcs_policy": "bind" if h.tcs_policy == 0 else "unbind",
        "tcs_min_pool": h.tcs_min_pool,
        "desired_misc_select": h.desired_misc_select,
        "max_save_buffer_size": h.max_save_buffer_size,
        "metadata_attributes": h.attributes,
        "metadata_xfrm": h.xfrm,
        "layout": items,
        "layout_names": _layout_names(meta),
        "patches": meta.patches,
    }
    if meta.elrange is not None:
        details["elrange"] = meta.elrange
    return BuildPlan(ecreate, tuple(runs), meta.sigstruct, meta.header.enclave_css,
                     image_offset=bias,
                     regions=tuple(regions), entry_symbols=symbols, format="sgx-sdk",
                     details=details)


def tcs_template_bytes(ossa: int, nssa: int, oentry: int, ofsbase: int, ogsbase: int,
                       flags: int = 0) -> bytes:
    """The 72-byte TCS template the SDK stores in its metadata."""
    tcs = Tcs(flags=flags, ossa=ossa & _U64, nssa=nssa, oentry=oentry & _U64,
              ofsbase=ofsbase & _U64, ogsbase=ogsbase & _U64, fslimit=0xFFFFFFFF,
              gslimit=0xFFFFFFFF)
    return tcs.pack()[:TCS_TEMPLATE_SIZE]
