"""The Intel SGX SDK's enclave metadata (common/inc/internal/metadata.h).

A signed SDK enclave carries one or more ``metadata_t`` copies in its
``.note.sgxmeta`` section; each holds the SIGSTRUCT, the ECREATE parameters,
a patch table (bytes written into the in-memory file image before it is
measured) and a layout table (heap, stacks, TCS, SSA, thread data, guards).
"""

from __future__ import annotations

from dataclasses import dataclass

from vsgx.arch.layout import Structure, raw, structure, u16, u32, u64
from vsgx.arch.sigstruct import SIGSTRUCT_SIZE, Sigstruct
from vsgx.errors import ImageError, StructureError

METADATA_MAGIC = 0x86A80294635D0E4C
METADATA_NOTE_NAME = b"sgx_metadata\0"
METADATA_NOTE_SECTION = ".note.sgxmeta"
METADATA_HEADER_SIZE = 0x750  # METADATA_LEGACY_SIZE: everything before dirs[]
DIR_PATCH = 0
DIR_LAYOUT = 1
DIR_ELRANGE_OFFSET = 0x760  # dirs[2] in 2.24+, start of data[] before (same bytes)
TCS_TEMPLATE_SIZE = 72
SSA_FRAME_SIZE_MAX = 4
ELRANGE_MAJOR_GAP = 10

# Layout entry attributes (common/inc/internal/se_page_attr.h).
PAGE_ATTR_EADD = 1 << 0
PAGE_ATTR_EEXTEND = 1 << 1
PAGE_ATTR_EREMOVE = 1 << 2
PAGE_ATTR_POST_ADD = 1 << 3
PAGE_ATTR_POST_REMOVE = 1 << 4
PAGE_ATTR_DYN_THREAD = 1 << 5
PAGE_DIR_GROW_DOWN = 1 << 6
GROUP_FLAG = 1 << 12
TCS_POLICY_BIND = 0
TCS_POLICY_UNBIND = 1

# SDK 2.x layout ids (also in the 1.4/1.5 copies SDK 2.x writes); SDK 1.8/1.9
# used HEAP=1, TCS=2, TD=3, SSA=4, STACK=5, GUARD=7, group 0x1006. Ids never
# change the measurement; names are for `vsgx inspect`.
LAYOUT_IDS_V2 = {1: "HEAP_MIN", 2: "HEAP_INIT", 3: "HEAP_MAX", 4: "TCS", 5: "TD", 6: "SSA",
                 7: "STACK_MAX", 8: "STACK_MIN", 0x1009: "THREAD_GROUP", 10: "GUARD",
                 11: "HEAP_DYN_MIN", 12: "HEAP_DYN_INIT", 13: "HEAP_DYN_MAX", 14: "TCS_DYN",
                 15: "TD_DYN", 16: "SSA_DYN", 17: "STACK_DYN_MAX", 18: "STACK_DYN_MIN",
                 0x1013: "THREAD_GROUP_DYN", 20: "RSRV_MIN", 21: "RSRV_INIT", 22: "RSRV_MAX",
                 23: "USER_REGION"}
LAYOUT_IDS_V1 = {1: "HEAP", 2: "TCS", 3: "TD", 4: "SSA", 5: "STACK", 0x1006: "THREAD_GROUP",
                 7: "GUARD"}


@structure(METADATA_HEADER_SIZE)
class MetadataHeader(Structure):
    magic_num: int = u64(0)
    version: int = u64(8)
    size: int = u32(16)
    tcs_policy: int = u32(20)
    ssa_frame_size: int = u32(24)
    max_save_buffer_size: int = u32(28)
    desired_misc_select: int = u32(32)
    tcs_min_pool: int = u32(36)
    enclave_size: int = u64(40)
    attributes: int = u64(48)
    xfrm: int = u64(56)
    enclave_css: bytes = raw(64, SIGSTRUCT_SIZE)

    @property
    def major(self) -> int:
        return self.version >> 32

    @property
    def minor(self) -> int:
        return self.version & 0xFFFFFFFF


@structure(8)
class DataDirectory(Structure):
    offset: int = u32(0)
    size: int = u32(4)


@structure(32)
class LayoutEntry(Structure):
    id: int = u16(0)
    attributes: int = u16(2)
    page_count: int = u32(4)
    rva: int = u64(8)
    content_size: int = u32(16)
    content_offset: int = u32(20)
    si_flags: int = u64(24)

    @property
    def is_group(self) -> bool:
        return bool(self.id & GROUP_FLAG)


@structure(32)
class LayoutGroup(Structure):
    id: int = u16(0)
    entry_count: int = u16(2)
    load_times: int = u32(4)
    load_step: int = u64(8)


@structure(32)
class PatchEntry(Structure):
    dst: int = u64(0)  # file offset in the enclave image
    src: int = u32(8)  # offset in this metadata copy
    size: int = u32(12)


@structure(24)
class ElrangeEntry(Structure):
    enclave_image_address: int = u64(0)
    elrange_start_address: int = u64(8)
    elrange_size: int = u64(16)


def make_version(major: int, minor: int) -> int:
    return major << 32 | minor


@dataclass(frozen=True)
class MetadataCopy:
    """One metadata_t, with its tables decoded."""

    offset: int  # in the metadata area
    raw: bytes  # the whole copy (``header.size`` bytes)
    header: MetadataHeader
    sigstruct: Sigstruct
    patches: tuple[PatchEntry, ...]
    layout: tuple[LayoutEntry | LayoutGroup, ...]
    elrange: ElrangeEntry | None

    @property
    def version_text(self) -> str:
        return f"{self.header.major}.{self.header.minor}"

    def blob(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > len(self.raw):
            raise ImageError(f"metadata {self.version_text}: {what} lies outside the metadata")
        return self.raw[offset:offset + size]


def _directory(raw_copy: bytes, offset: int, what: str) -> DataDirectory:
    if offset + 8 > len(raw_copy):
        raise ImageError(f"metadata: the {what} directory lies outside the metadata")
    return DataDirectory.unpack(raw_copy[offset:offset + 8], strict=False)


def _table(raw_copy: bytes, directory: DataDirectory, entry_size: int, what: str) -> list[bytes]:
    if directory.size % entry_size:
        raise ImageError(f"metadata: the {what} table size {directory.size} is not a multiple "
                         f"of {entry_size}")
    end = directory.offset + directory.size
    if directory.size and (directory.offset < METADATA_HEADER_SIZE or end > len(raw_copy)):
        raise ImageError(f"metadata: the {what} table lies outside the metadata")
    return [raw_copy[o:o + entry_size] for o in range(directory.offset, end, entry_size)]


def parse_copy(area: bytes, offset: int) -> MetadataCopy:
    header_bytes = area[offset:offset + METADATA_HEADER_SIZE]
    if len(header_bytes) < METADATA_HEADER_SIZE:
        raise ImageError("metadata: truncated metadata_t header")
    try:
        header = MetadataHeader.unpack(header_bytes, strict=False)
    except StructureError as exc:
        raise ImageError(f"metadata: {exc}") from None
    if header.size < METADATA_HEADER_SIZE + 16 or offset + header.size > len(area):
        raise ImageError(f"metadata {header.major}.{header.minor}: size {header.size} "
                         "is impossible or runs past the note")
    raw_copy = area[offset:offset + header.size]
    patches = [PatchEntry.unpack(b, strict=False)
               for b in _table(raw_copy, _directory(raw_copy, METADATA_HEADER_SIZE, "patch"),
                               32, "patch")]
    layout: list[LayoutEntry | LayoutGroup] = []
    for chunk in _table(raw_copy, _directory(raw_copy, METADATA_HEADER_SIZE + 8, "layout"),
                        32, "layout"):
        entry = LayoutEntry.unpack(chunk, strict=False)
        layout.append(LayoutGroup.unpack(chunk, strict=False) if entry.is_group else entry)
    elrange = None
    if header.major > ELRANGE_MAJOR_GAP:
        directory = _directory(raw_copy, DIR_ELRANGE_OFFSET, "ELRANGE")
        if directory.size != ElrangeEntry.SIZE:
            raise ImageError(f"metadata: ELRANGE entry has size {directory.size}, expected 24")
        elrange = ElrangeEntry.unpack(
            MetadataCopy(offset, raw_copy, header, Sigstruct(), (), (), None).blob(
                directory.offset, ElrangeEntry.SIZE, "the ELRANGE entry"), strict=False)
    sigstruct = Sigstruct.unpack(header.enclave_css, strict=False)
    return MetadataCopy(offset, raw_copy, header, sigstruct, tuple(patches), tuple(layout),
                        elrange)


def walk_copies(area: bytes) -> list[MetadataCopy]:
    """Every metadata_t in the note, back to back while the magic repeats."""
    copies = []
    offset = 0
    while offset + 16 <= len(area):
        if int.from_bytes(area[offset:offset + 8], "little") != METADATA_MAGIC:
            break
        copy = parse_copy(area, offset)
        copies.append(copy)
        offset += copy.header.size
    if not copies:
        raise ImageError("the enclave is not signed: .note.sgxmeta holds no metadata "
                         "(bad magic)")
    return copies


def select_copy(copies: list[MetadataCopy]) -> MetadataCopy:
    """The copy Intel's urts loads on a platform without EDMM
    (psw/urts/urts_com.h get_metadata): 2.x copies are never used, and a
    loader that does not grow enclaves dynamically takes the highest SGX1
    (major % 10 == 1) copy. vsgx loads that way because its loader adds every
    page up front; if only an SGX2 (3.x) copy exists, that one is used —
    every copy carries the same SIGSTRUCT and measures the same."""
    usable = [c for c in copies if c.header.major % ELRANGE_MAJOR_GAP in (1, 3)]
    sgx1 = [c for c in usable if c.header.major % ELRANGE_MAJOR_GAP == 1]
    pool = sgx1 or usable
    if not pool:
        versions = ", ".join(c.version_text for c in copies)
        raise ImageError(f"no loadable metadata version among {versions}")
    return max(pool, key=lambda c: c.header.version)


def find_metadata_area(data: bytes, section_offset: int, section_size: int) -> bytes:
    """The metadata area of a ``.note.sgxmeta`` section.

    The SDK writes the note name without padding, so the descriptor starts at
    offset 12 + namesz (25), not at the 4-byte-aligned offset a generic note
    parser computes."""
    end = section_offset + section_size
    if section_size < 12 or end > len(data):
        raise ImageError(".note.sgxmeta is truncated")
    namesz = int.from_bytes(data[section_offset:section_offset + 4], "little")
    descsz = int.from_bytes(data[section_offset + 4:section_offset + 8], "little")
    name = data[section_offset + 12:section_offset + 12 + namesz]
    if namesz != len(METADATA_NOTE_NAME) or name != METADATA_NOTE_NAME:
        raise ImageError(".note.sgxmeta does not carry an sgx_metadata note")
    start = section_offset + 12 + namesz
    if start + descsz > end:
        raise ImageError(".note.sgxmeta: the metadata runs past the section")
    return data[start:start + descsz]
