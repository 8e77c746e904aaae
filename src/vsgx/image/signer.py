"""Enclave signing: `vsgx sign`.

Two outputs:
- **SDK format**: an ELF that reserves an empty ``.note.sgxmeta`` note (as
  Intel's trusted runtime does) gets a metadata_t with a layout table (heap,
  per-thread guard / stack / TCS / SSA / thread data, replayed by a group),
  a TCS template, a patch table, and the SIGSTRUCT. The hash is computed by
  running the SDK reader (``sdk_plan``) on the result, so signer and loader
  cannot disagree.
- **Plain ELF**: a sidecar SIGSTRUCT for a kernel-selftest-style enclave.

Signing is split as Intel's ``sgx_sign gendata`` / ``catsig``: the bytes to
sign can be emitted, signed elsewhere (an HSM), and the signature attached.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import rsa

from vsgx.arch.constants import PAGE_SIZE, Attribute, PageType, page_align_up
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.sigstruct import SIGNED_RANGES, Sigstruct, bcd_date, signed_bytes
from vsgx.crypto.sigstruct import Signer, attach_signature, private_key_signer, sign
from vsgx.errors import ImageError, SignatureError
from vsgx.image.config import EnclaveConfig
from vsgx.image.elf import ElfImage, read_elf
from vsgx.image.plain import plain_plan
from vsgx.image.sdk import sdk_plan, tcs_template_bytes
from vsgx.image.sdk_metadata import (
    METADATA_HEADER_SIZE,
    METADATA_MAGIC,
    METADATA_NOTE_NAME,
    METADATA_NOTE_SECTION,
    PAGE_ATTR_EADD,
    PAGE_ATTR_EEXTEND,
    DataDirectory,
    LayoutEntry,
    LayoutGroup,
    MetadataHeader,
    PatchEntry,
    make_version,
)

# Layout ids as SDK 2.x numbers them.
ID_HEAP_MIN, ID_TCS, ID_TD, ID_SSA, ID_STACK_MIN, ID_GUARD, ID_THREAD_GROUP = 1, 4, 5, 6, 8, 10, \
    0x1009
# sgx_sign's default XFRM mask (SDK 2.8+): x87 and SSE required, AVX and
# AVX-512 free, every bit the SDK does not know must be clear.
XFRM_MASK = 0xFFFFFFFFFFFFFF1B
GUARD_PAGES = 16  # SE_GUARD_PAGE_SIZE = 64 KiB in SDK 2.x
STACK_FILL = 0xCCCCCCCC
WRITTEN_VERSION = make_version(1, 4)  # an SGX1 copy with SDK 2.x layout ids
RW = Secinfo.of(PageType.REG, 0x3).flags
TCS_FLAGS = Secinfo.of(PageType.TCS).flags

# g_vsgx_global_data, the layout block the patch table writes for vsgx's
# enclave runtime (src/vsgx/samples/rt/vsgx_rt.h mirrors it).
GLOBAL_DATA_SYMBOL = "g_vsgx_global_data"
GLOBAL_DATA_MAGIC = int.from_bytes(b"VSGXGD01", "little")
_GLOBAL_DATA = struct.Struct("<QQQQqQqqIIII")
GLOBAL_DATA_SIZE = _GLOBAL_DATA.size


@dataclass(frozen=True)
class SignedEnclave:
    data: bytes  # the signed file (SDK format) or the sidecar SIGSTRUCT (plain)
    sigstruct: Sigstruct
    mrenclave: bytes


def _note_area(elf: ElfImage) -> tuple[int, int]:
    """(file offset, size) of the metadata area reserved in .note.sgxmeta."""
    sec = elf.sections.get(METADATA_NOTE_SECTION)
    if sec is None:
        raise ImageError("the ELF reserves no .note.sgxmeta section: link the enclave "
                         "with vsgx's runtime (or sign it as a plain ELF)")
    head = elf.data[sec.offset:sec.offset + 12 + len(METADATA_NOTE_NAME)]
    namesz, descsz = struct.unpack_from("<II", head) if len(head) >= 8 else (0, 0)
    if namesz != len(METADATA_NOTE_NAME) or head[12:] != METADATA_NOTE_NAME:
        raise ImageError(".note.sgxmeta does not hold an sgx_metadata note")
    start = sec.offset + 12 + namesz
    if start + descsz > sec.offset + sec.size or descsz < 0x1000:
        raise ImageError(".note.sgxmeta reserves too little room for metadata")
    return start, descsz


def _file_offset(elf: ElfImage, vaddr: int, size: int) -> int:
    for seg in elf.segments:
        if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
            return seg.offset + vaddr - seg.vaddr
    raise ImageError(f"{GLOBAL_DATA_SYMBOL} is not in initialised data (it must not be .bss)")


def sigstruct_for(config: EnclaveConfig, mrenclave: bytes, date: datetime.date | None = None,
                  swdefined: int = 0) -> Sigstruct:
    """The unsigned SIGSTRUCT ``config`` asks for (as sgx_sign fills it)."""
    date = date or datetime.datetime.now(datetime.UTC).date()
    flags = int(Attribute.MODE64BIT) | (int(Attribute.PROVISIONKEY) if config.provision_key
                                         else 0)
    # Every attribute bit must match except DEBUG when debugging is allowed
    # (DisableDebug = 0).
    mask = (1 << 64) - 1
    if config.debug:
        mask &= ~int(Attribute.DEBUG)
    return Sigstruct(date=bcd_date(date.year, date.month, date.day), swdefined=swdefined,
                     miscselect=config.misc_select & config.misc_mask, miscmask=config.misc_mask,
                     attributes=flags, xfrm=0x3, attributemask=mask, xfrmmask=XFRM_MASK,
                     enclavehash=mrenclave, isvprodid=config.isvprodid, isvsvn=config.isvsvn)


@dataclass(frozen=True)
class _Layout:
    entries: list[LayoutEntry | LayoutGroup]
    enclave_size: int
    heap_offset: int
    tcs: int
    stack_top: int
    ssa: int
    td: int


def _thread_context(cursor: int, config: EnclaveConfig, tls_pages: int,
                    tcs_template_offset: int) -> tuple[list[LayoutEntry], int, dict[str, int]]:
    entries = []
    places: dict[str, int] = {}
    full = PAGE_ATTR_EADD | PAGE_ATTR_EEXTEND

    def add(kind: str, ident: int, pages: int, attributes: int, flags: int,
            content_size: int = 0, content_offset: int = 0) -> None:
        nonlocal cursor
        places.setdefault(kind, cursor)
        entries.append(LayoutEntry(id=ident, attributes=attributes, page_count=pages, rva=cursor,
                                   content_size=content_size, content_offset=content_offset,
                                   si_flags=flags))
        cursor += pages * PAGE_SIZE

    add("guard", ID_GUARD, GUARD_PAGES, 0, 0)
    add("stack", ID_STACK_MIN, config.stack_size // PAGE_SIZE, full, RW, STACK_FILL)
    add("guard2", ID_GUARD, GUARD_PAGES, 0, 0)
    add("tcs", ID_TCS, 1, full, TCS_FLAGS, 72, tcs_template_offset)
    add("ssa", ID_SSA, config.nssa * config.ssa_frame_size, full, RW)
    add("guard3", ID_GUARD, GUARD_PAGES, 0, 0)
    add("td", ID_TD, 1 + tls_pages, full, RW)
    return entries, cursor, places


def _build_layout(elf: ElfImage, config: EnclaveConfig, tcs_template_offset: int) -> _Layout:
    image_end = max(page_align_up(s.vaddr + s.memsz) for s in elf.segments)
    tls_pages = 0
    if elf.tls_segment is not None:
        align = max(elf.tls_segment.align, 1)
        tls_pages = page_align_up(-(-elf.tls_segment.memsz // align) * align) // PAGE_SIZE
    heap = LayoutEntry(id=ID_HEAP_MIN, attributes=PAGE_ATTR_EADD,
                       page_count=config.heap_size // PAGE_SIZE, rva=image_end, si_flags=RW)
    cursor = image_end + config.heap_size
    thread, end, places = _thread_context(cursor, config, tls_pages, tcs_template_offset)
    entries: list[LayoutEntry | LayoutGroup] = [heap, *thread]
    step = end - cursor
    if config.tcs_count > 1:
        entries.append(LayoutGroup(id=ID_THREAD_GROUP, entry_count=len(thread),
                                   load_times=config.tcs_count - 1, load_step=step))
    cursor = end + step * (config.tcs_count - 1)
    size = 2 * PAGE_SIZE
    while size < cursor:
        size <<= 1
    if size > cursor:
        entries.append(LayoutEntry(id=ID_GUARD, page_count=(size - cursor) // PAGE_SIZE,
                                   rva=cursor))
    return _Layout(entries, size, image_end, places["tcs"],
                   places["stack"] + config.stack_size, places["ssa"],
                   places["td"] + tls_pages * PAGE_SIZE)


def _global_data(layout: _Layout, config: EnclaveConfig) -> bytes:
    tcs = layout.tcs
    return _GLOBAL_DATA.pack(GLOBAL_DATA_MAGIC, layout.enclave_size, layout.heap_offset,
                             config.heap_size, layout.stack_top - tcs, config.stack_size,
                             layout.ssa - tcs, layout.td - tcs, config.tcs_count,
                             0 if config.tcs_policy == "bind" else 1, config.nssa,
                             config.ssa_frame_size)


def _metadata(elf: ElfImage, config: EnclaveConfig, sig: Sigstruct) -> bytes:
    """A complete metadata_t for ``elf`` with ``sig`` as its enclave_css."""
    data_start = METADATA_HEADER_SIZE + 2 * DataDirectory.SIZE
    tcs_template_offset = data_start
    layout = _build_layout(elf, config, tcs_template_offset)
    entry = elf.symbols.get("enclave_entry", elf.entry)
    td_page = layout.td
    template = tcs_template_bytes(ossa=layout.ssa - layout.tcs, nssa=config.nssa, oentry=entry,
                                  ofsbase=td_page - layout.tcs, ogsbase=td_page - layout.tcs)
    blobs = bytearray(template)
    patches: list[PatchEntry] = []
    if GLOBAL_DATA_SYMBOL in elf.symbols:
        offset = _file_offset(elf, elf.symbols[GLOBAL_DATA_SYMBOL], GLOBAL_DATA_SIZE)
        patches.append(PatchEntry(dst=offset, src=data_start + len(blobs),
                                  size=GLOBAL_DATA_SIZE))
        blobs += _global_data(layout, config)
    zeros_at = data_start + len(blobs)
    blobs += bytes(8)
    # As sgx_sign does: the measured image has no section header table.
    patches += [PatchEntry(dst=0x28, src=zeros_at, size=8), PatchEntry(dst=0x3C, src=zeros_at,
                                                                       size=2),
                PatchEntry(dst=0x3E, src=zeros_at, size=2)]
    patch_offset = data_start + len(blobs)
    blobs += b"".join(p.pack() for p in patches)
    layout_offset = data_start + len(blobs)
    blobs += b"".join(e.pack() for e in layout.entries)
    total = data_start + len(blobs)
    header = MetadataHeader(magic_num=METADATA_MAGIC, version=WRITTEN_VERSION, size=total,
                            tcs_policy=0 if config.tcs_policy == "bind" else 1,
                            ssa_frame_size=config.ssa_frame_size, max_save_buffer_size=2632,
                            desired_misc_select=config.misc_select, tcs_min_pool=0,
                            enclave_size=layout.enclave_size,
                            attributes=sig.attributes, xfrm=config.xfrm,
                            enclave_css=sig.pack())
    dirs = (DataDirectory(patch_offset, len(patches) * PatchEntry.SIZE).pack()
            + DataDirectory(layout_offset, len(layout.entries) * LayoutEntry.SIZE).pack())
    return header.pack() + dirs + bytes(blobs)


def _with_metadata(elf: ElfImage, metadata: bytes) -> bytes:
    start, room = _note_area(elf)
    if len(metadata) > room:
        raise ImageError(f"metadata needs {len(metadata)} bytes, .note.sgxmeta reserves {room}")
    out = bytearray(elf.data)
    out[start:start + room] = metadata + bytes(room - len(metadata))
    return bytes(out)


def _unsigned_sdk(elf: ElfImage, config: EnclaveConfig, date: datetime.date | None,
                  resign: bool) -> tuple[bytes, Sigstruct]:
    start, _ = _note_area(elf)
    if int.from_bytes(elf.data[start:start + 8], "little") == METADATA_MAGIC and not resign:
        raise ImageError("the enclave is already signed (use --resign to sign it again)")
    draft = sigstruct_for(config, bytes(32), date)
    image = _with_metadata(elf, _metadata(elf, config, draft))
    plan = sdk_plan(read_elf(image))
    return image, replace(draft, enclavehash=plan.measure())


def _replace_css(image: bytes, sig: Sigstruct) -> bytes:
    elf = read_elf(image)
    start, _ = _note_area(elf)
    css = start + 64  # metadata_t.enclave_css
    out = bytearray(image)
    out[css:css + Sigstruct.SIZE] = sig.pack()
    return bytes(out)


def sign_sdk(data: bytes, config: EnclaveConfig, public_key: rsa.RSAPublicKey, signer: Signer,
             *, date: datetime.date | None = None, resign: bool = False) -> SignedEnclave:
    elf = read_elf(data)
    image, unsigned = _unsigned_sdk(elf, config, date, resign)
    signed = sign(unsigned, public_key, signer)
    return SignedEnclave(_replace_css(image, signed), signed, signed.enclavehash)


def sign_plain(data: bytes, config: EnclaveConfig, public_key: rsa.RSAPublicKey, signer: Signer,
               *, date: datetime.date | None = None) -> SignedEnclave:
    unsigned = _unsigned_plain(data, config, date)
    signed = sign(unsigned, public_key, signer)
    return SignedEnclave(signed.pack(), signed, signed.enclavehash)


def _unsigned_plain(data: bytes, config: EnclaveConfig, date: datetime.date | None) -> Sigstruct:
    draft = sigstruct_for(config, bytes(32), date, swdefined=config.heap_pages)
    plan = plain_plan(read_elf(data), draft)
    return replace(draft, enclavehash=plan.measure())


def is_sdk_layout(data: bytes) -> bool:
    return METADATA_NOTE_SECTION in read_elf(data).sections


def gendata(data: bytes, config: EnclaveConfig, *, date: datetime.date | None = None,
            resign: bool = False) -> bytes:
    """The 256 bytes an external signer must sign (``sgx_sign gendata``)."""
    if is_sdk_layout(data):
        _, unsigned = _unsigned_sdk(read_elf(data), config, date, resign)
    else:
        unsigned = _unsigned_plain(data, config, date)
    return signed_bytes(unsigned.pack())


def catsig(data: bytes, config: EnclaveConfig, public_key: rsa.RSAPublicKey, signed_data: bytes,
           signature_be: bytes, *, resign: bool = False) -> SignedEnclave:
    """Attach an external signature over ``signed_data`` (from ``gendata``)."""
    if len(signed_data) != 256:
        raise SignatureError(f"the signed data is {len(signed_data)} bytes, expected 256")
    # Rebuild the SIGSTRUCT from the signed bytes themselves (they carry the
    # date), then check that they describe this enclave and this config.
    raw = bytearray(Sigstruct.SIZE)
    (lo1, hi1), (lo2, hi2) = SIGNED_RANGES
    raw[lo1:hi1] = signed_data[:hi1 - lo1]
    raw[lo2:hi2] = signed_data[hi1 - lo1:]
    given = Sigstruct.unpack(bytes(raw), strict=False)
    date = datetime.date(int(f"{given.date >> 16:x}"), int(f"{given.date >> 8 & 0xFF:x}"),
                         int(f"{given.date & 0xFF:x}")) if given.date else None
    sdk = is_sdk_layout(data)
    if sdk:
        image, expected = _unsigned_sdk(read_elf(data), config, date, resign)
    else:
        image, expected = data, _unsigned_plain(data, config, date)
    if signed_bytes(expected.pack()) != signed_data:
        raise SignatureError("the signed data does not match this enclave and config "
                             "(different enclave, config or date)")
    signed = attach_signature(expected, public_key.public_numbers().n, signature_be)
    out = _replace_css(image, signed) if sdk else signed.pack()
    return SignedEnclave(out, signed, signed.enclavehash)


def sign_enclave(data: bytes, config: EnclaveConfig, key: rsa.RSAPrivateKey, *,
                 date: datetime.date | None = None, resign: bool = False) -> SignedEnclave:
    """Sign an enclave with a private key: SDK format if the ELF reserves
    .note.sgxmeta, else a sidecar SIGSTRUCT for a plain ELF."""
    signer = private_key_signer(key)
    if is_sdk_layout(data):
        return sign_sdk(data, config, key.public_key(), signer, date=date, resign=resign)
    return sign_plain(data, config, key.public_key(), signer, date=date)


__all__ = ["SignedEnclave", "catsig", "gendata", "sign_enclave", "sign_plain", "sign_sdk",
           "sigstruct_for"]
