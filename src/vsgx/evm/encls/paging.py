"""Paging (SDM "EPC and Management of EPC Pages"): EPA, EBLOCK, ETRACK, EWB
and ELDB/ELDU, checks in the order of the SDM's pseudocode.

The batch entry points (``eblock_pages``, ``ewb_pages``, ``eld_pages``) run
the same checks, page by page, as the single leaves; they exist so that a
batch costs one call and one lock, not one per page (the lookups are written
out inline there: at this rate a function call per check is most of the
cost). What no later check of the batch reads — the enclave's journal and
change hooks, held memory, accessed bits, child count — is updated once
per enclave at the end of the batch (also when a fault ends it), under the
same hold of the machine lock. ``eldu_deferred`` loads a page that
``build.eadd_uniform`` deferred.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence

from vsgx.arch.constants import (
    PAGE_SHIFT,
    PAGE_SIZE,
    SECINFO_PAGE_TYPE_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    VA_SLOT_SIZE,
    PageType,
)
from vsgx.arch.errors import Fault, SgxError, gp
from vsgx.arch.layout import field_offset, fields_of
from vsgx.arch.pageinfo import Pcmd, Secinfo
from vsgx.crypto.paging import (
    EWB_HEADER,
    MAC_SIZE,
    MacMismatch,
    decrypt_page,
    paging_header,
)
from vsgx.evm.enclave import EnclaveMemory, EnclaveState
from vsgx.evm.encls.build import give_pages
from vsgx.evm.encls.operands import (
    DUPLICATE_LINEAR,
    MODIFIED,
    PAGE_OFFSET_MASK,
    PENDING,
    PR,
    PT_REG,
    PT_SECS,
    PT_TCS,
    PT_TRIM,
    PT_VA,
    R,
    W,
    X,
    secs_of,
)
from vsgx.evm.epc import epc_pf
from vsgx.evm.machine import Machine

_PAGE_TYPES = {int(t): t for t in PageType}
_PT_BITS = {t: int(t) << SECINFO_PAGE_TYPE_SHIFT for t in PageType}
_SEALED_SIZE = PAGE_SIZE + MAC_SIZE
_SLOT_MASK = VA_SLOT_SIZE - 1
_SLOT_SHIFT = VA_SLOT_SIZE.bit_length() - 1
# What EWB writes into PCMD (SECINFO is FLAGS and zeros; reserved bytes zero).
_PCMD_EWB = fields_of(Pcmd, "secinfo.flags", "enclaveid", "mac")
_PCMD_FLAGS = fields_of(Pcmd, "secinfo.flags")
_PCMD_MAC = field_offset(Pcmd, "mac")
_PCMD_SIZE = Pcmd.SIZE
_PCMD_RESERVED = Pcmd.RESERVED[0]  # between ENCLAVEID and MAC
_SECINFO_RESERVED = Secinfo.RESERVED[0]  # after FLAGS
_PCMD_SECINFO_END = field_offset(Pcmd, "enclaveid")
_NO_PCMD_RESERVED = bytes(_PCMD_RESERVED[1])
_NO_SECINFO_RESERVED = bytes(_SECINFO_RESERVED[1])
# PCMD in one unpack: SECINFO.FLAGS, SECINFO's reserved bytes, ENCLAVEID,
# PCMD's reserved bytes, MAC
_PCMD_PARTS = struct.Struct(f"<Q{_SECINFO_RESERVED[1]}sQ{_PCMD_RESERVED[1]}s{MAC_SIZE}s")
assert (_PCMD_PARTS.size == Pcmd.SIZE and _PCMD_FLAGS.offset == 0
        and _SECINFO_RESERVED[0] == 8 and _PCMD_RESERVED[0] == _PCMD_SECINFO_END + 8
        and _PCMD_RESERVED[0] + _PCMD_RESERVED[1] == _PCMD_MAC)
_SUCCESS, _OCCUPIED = SgxError.SUCCESS, SgxError.VA_SLOT_OCCUPIED
_NOT_BLOCKED = (SgxError.PAGE_NOT_BLOCKED, None)
_NOT_TRACKED = (SgxError.NOT_TRACKED, None)
# SECINFO.FLAGS R, W, X, PENDING, MODIFIED, PR (bits 0-5) -> the EPCM's bits
_EPCM_FLAGS = R | W | X | PENDING | MODIFIED | PR
_FLAG_BITS = [tuple(bool(f & bit) for bit in (R, W, X, PENDING, MODIFIED, PR))
              for f in range(_EPCM_FLAGS + 1)]


def epa(m: Machine, epc_page: int, page_type: int = PageType.VA) -> None:
    """EPA: turn a free EPC page into a Version Array."""
    if page_type != PageType.VA:
        raise gp("EPA needs RBX = PT_VA", "page_type")
    entry = m.epc.entry(epc_page)
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use", "page_in_use")
    entry.clear()
    entry.pt = PageType.VA
    entry.valid = True
    m.epc.va_slots[epc_page] = array("Q", bytes(PAGE_SIZE))


def eblock(m: Machine, epc_page: int) -> SgxError:
    result = eblock_pages(m, (epc_page,))[0]
    if isinstance(result, Fault):
        raise result
    return result


def eblock_pages(m: Machine, epc_pages: Sequence[int]) -> list[SgxError | Fault]:
    """EBLOCK of each page in turn; a fault ends the batch (its last result)."""
    results: list[SgxError | Fault] = []
    append = results.append
    epc = m.epc
    base, end, entries = epc.base, epc.end, epc.entries
    # the pages blocked, per enclave (one note_changes each, at the end)
    runs: list[tuple[EnclaveState, list[int]]] = []
    last: EnclaveState | None = None
    blocked: list[int] = []
    try:
        for epc_page in epc_pages:
            if epc_page & PAGE_OFFSET_MASK or not base <= epc_page < end:
                try:
                    epc.entry(epc_page)  # raises the fault the operand deserves
                except Fault as fault:
                    append(fault)
                    break
            entry = entries[(epc_page - base) >> PAGE_SHIFT]
            if not entry.valid:
                append(m.refuse(SgxError.PG_INVLD, "page_invalid"))
                continue
            pt = entry.pt
            if pt is not PT_REG and pt is not PT_TCS and pt is not PT_TRIM:
                append(m.refuse(SgxError.PG_IS_SECS, "page_is_secs") if pt is PT_SECS
                       else m.refuse(SgxError.NOTBLOCKABLE, "page_type"))
                continue
            if entry.blocked:
                append(m.refuse(SgxError.BLKSTATE, "page_blocked"))
                continue
            encl = entry.enclave
            assert encl is not None
            if encl is not last:
                last, blocked = encl, []
                runs.append((encl, blocked))
            entry.blocked = True
            entry.block_epoch = encl.epoch
            blocked.append(entry.linaddr)
            append(_SUCCESS)
    finally:
        for encl, pages in runs:
            encl.note_changes(pages)
    return results


def etrack(m: Machine, secs_page: int) -> SgxError:
    encl = secs_of(m, secs_page)
    return _SUCCESS if encl.etrack() else m.refuse(SgxError.PREV_TRK_INCMPL,
                                                   "tracking_incomplete")


def _va_slot(m: Machine, slot: int) -> tuple[array[int], int]:
    if slot & _SLOT_MASK:
        raise gp("the VA slot is not 8-byte aligned", "va_slot_alignment")
    page = slot & ~PAGE_OFFSET_MASK
    entry = m.epc.entry(page, "VA slot")
    if not entry.valid or entry.pt != PageType.VA:
        raise epc_pf(page, "the VA slot is not in a VA page", "va_slot_not_va")
    return m.epc.va_slots[page], (slot - page) >> _SLOT_SHIFT


class EvictedPage:
    """What EWB writes out: the encrypted page and its PCMD. ``sealed`` is
    the ciphertext followed by the MAC (which PCMD carries too), the form
    ELDU decrypts without copying; ``ciphertext`` is the page alone."""

    __slots__ = ("linaddr", "pcmd", "sealed")

    def __init__(self, sealed: bytes, pcmd: bytes, linaddr: int):
        self.sealed, self.pcmd, self.linaddr = sealed, pcmd, linaddr

    @property
    def ciphertext(self) -> bytes:
        return self.sealed[:PAGE_SIZE]


def ewb(m: Machine, epc_page: int, va_slot: int) -> tuple[SgxError, EvictedPage | None]:
    """EWB: evict a blocked, tracked page (or a VA page) under the paging key."""
    result = ewb_pages(m, ((epc_page, va_slot),))[0]
    if isinstance(result, Fault):
        raise result
    return result


def ewb_pages(m: Machine, pairs: Sequence[tuple[int, int]]
              ) -> list[tuple[SgxError, EvictedPage | None] | Fault]:
    """EWB of each (EPC page, VA slot) in turn, with EWB's checks in the
    SDM's order; a fault ends the batch (its last result) and the pages
    before it stay written out."""
    epc = m.epc
    base, end, entries, va_pages = epc.base, epc.end, epc.entries, epc.va_slots
    encrypt, _, nonce_of = m.secrets.paging_primitives
    header_of, pcmd_of = EWB_HEADER.pack, _PCMD_EWB.pack
    results: list[tuple[SgxError, EvictedPage | None] | Fault] = []
    append = results.append
    last: EnclaveState | None = None
    last_epoch = tracked = None
    # the pages written out, per enclave: their bookkeeping is done once
    # per batch, at the end (nothing in the loop reads it)
    runs: list[tuple[EnclaveState, list[int]]] = []
    evicted: list[int] = []
    last_va_page = -1  # the VA page checked last, and its slots
    next_version = m.next_version
    try:
        for epc_page, va_slot in pairs:
            try:
                if epc_page & PAGE_OFFSET_MASK or not base <= epc_page < end:
                    epc.entry(epc_page)  # raises the fault the operand deserves
                entry = entries[(epc_page - base) >> PAGE_SHIFT]
                va_page = va_slot & ~PAGE_OFFSET_MASK
                if va_page == epc_page:
                    raise gp("the VA slot is in the page being evicted", "va_slot_in_page")
                if not entry.valid:
                    raise epc_pf(epc_page, "EWB of an invalid page", "page_invalid")
                if va_slot & _SLOT_MASK or not base <= va_page < end:
                    _va_slot(m, va_slot)  # raises the fault the operand deserves
                if va_page != last_va_page:
                    va_entry = entries[(va_page - base) >> PAGE_SHIFT]
                    if not va_entry.valid or va_entry.pt is not PT_VA:
                        raise epc_pf(va_page, "the VA slot is not in a VA page",
                                     "va_slot_not_va")
                    last_va_page, slots = va_page, va_pages[va_page]
                index = (va_slot & PAGE_OFFSET_MASK) >> _SLOT_SHIFT
                pt = entry.pt
                if pt is PT_SECS:
                    raise gp("vsgx does not evict SECS pages", "page_is_secs")
            except Fault as fault:
                append(fault)
                break
            linaddr = entry.linaddr
            if pt is PT_VA:
                encl = None
                eid = 0
                content: bytes | memoryview = va_pages[epc_page].tobytes()
            else:
                encl = entry.enclave
                if not entry.blocked:
                    m.refusal = "page_not_blocked"
                    append(_NOT_BLOCKED)
                    continue
                epoch = entry.block_epoch
                assert encl is not None and encl.memory is not None  # a valid child page
                if encl is not last or epoch != last_epoch:
                    # what every page of this enclave and epoch needs (a batch is
                    # one of each, mostly): tracking cannot change under the lock
                    if encl is not last:
                        evicted = []
                        runs.append((encl, evicted))
                    last, last_epoch, eid, ebase, view, resident = encl, epoch, encl.eid, \
                        encl.base, encl.memory.view, encl.pages
                    tracked = encl.is_tracked(epoch)
                if not tracked:
                    m.refusal = "page_not_tracked"
                    append(_NOT_TRACKED)
                    continue
                offset = linaddr - ebase
                content = view[offset:offset + PAGE_SIZE]
            # EpcmEntry.secinfo_flags, inline
            flags = (_PT_BITS[pt] | entry.r * R | entry.w * W | entry.x * X
                     | entry.pending * PENDING | entry.modified * MODIFIED | entry.pr * PR)
            version = next_version
            next_version = version + 1  # spent even if sealing fails: a nonce once
            sealed = encrypt(nonce_of(version), content, header_of(flags, linaddr, eid))
            if slots[index]:
                m.refusal = "va_slot_occupied"
                status = _OCCUPIED
            else:
                status = _SUCCESS
            slots[index] = version
            if encl is not None:
                del resident[linaddr]
                evicted.append(linaddr)
            else:
                del va_pages[epc_page]
                if epc_page == last_va_page:
                    last_va_page = -1  # no longer a VA page
            entry.clear()
            append((status, EvictedPage(sealed, pcmd_of(flags, eid, sealed[PAGE_SIZE:]),
                                        linaddr)))
    finally:
        m.next_version = next_version
        # what EWB leaves to do in each enclave for the pages written out:
        # their memory, their accessed bits, the count, the news
        for encl, pages in runs:
            if pages:
                encl.memory.release_pages(map((-encl.base).__add__, pages))  # type: ignore[union-attr]
                if encl.old:
                    encl.old.difference_update(pages)
                encl.child_count -= len(pages)
                encl.note_changes(pages)
    return results


def eld(m: Machine, epc_page: int, va_slot: int, secs_page: int, linaddr: int,
        ciphertext: bytes, pcmd: bytes, blocked: bool) -> SgxError:
    """ELDB (blocked=True) / ELDU: load an evicted page back into the EPC."""
    result = eld_pages(m, secs_page, ((epc_page, va_slot, linaddr, ciphertext, pcmd),),
                       blocked, sealed_ok=False)[0]
    if isinstance(result, Fault):
        raise result
    return result


def eld_pages(m: Machine, secs_page: int,
              items: Sequence[tuple[int, int, int, bytes | memoryview, bytes]],
              blocked: bool = False, sealed_ok: bool = True) -> list[SgxError | Fault]:
    """ELDB / ELDU of each (EPC page, VA slot, LINADDR, blob, PCMD) in turn,
    with ELDU's checks in the SDM's order; PAGEINFO.SECS is ``secs_page``
    for all of them. A blob is the page's ciphertext, or the sealed form
    (ciphertext then MAC) that EWB gives; the MAC compared is PCMD's either
    way. A fault ends the batch (its last result)."""
    epc = m.epc
    base, end, entries, va_pages = epc.base, epc.end, epc.entries, epc.va_slots
    cipher = m.secrets.paging_cipher
    _, decrypt_into, nonce_of = m.secrets.paging_primitives
    header_of = EWB_HEADER.pack
    pcmd_parts = _PCMD_PARTS.unpack
    last_va_page = -1  # the VA page checked last, and its slots
    results: list[SgxError | Fault] = []
    append = results.append
    secs: EnclaveState | None = None
    memory: EnclaveMemory | None = None
    # the enclave's pages written and loaded: their bookkeeping is done
    # once per batch, at the end (nothing in the loop reads it)
    written: list[int] = []
    loaded: list[int] = []
    try:
        for epc_page, va_slot, linaddr, blob, pcmd in items:
            try:
                if epc_page & PAGE_OFFSET_MASK or not base <= epc_page < end:
                    epc.entry(epc_page)  # raises the fault the operand deserves
                entry = entries[(epc_page - base) >> PAGE_SHIFT]
                va_page = va_slot & ~PAGE_OFFSET_MASK
                if va_slot & _SLOT_MASK or not base <= va_page < end:
                    _va_slot(m, va_slot)  # raises the fault the operand deserves
                if va_page != last_va_page:
                    va_entry = entries[(va_page - base) >> PAGE_SHIFT]
                    if not va_entry.valid or va_entry.pt is not PT_VA:
                        raise epc_pf(va_page, "the VA slot is not in a VA page",
                                     "va_slot_not_va")
                    # ELDU makes no valid page invalid: it stays a VA page
                    last_va_page, slots = va_page, va_pages[va_page]
                index = (va_slot & PAGE_OFFSET_MASK) >> _SLOT_SHIFT
                if entry.valid:
                    raise epc_pf(epc_page, "the EPC page is in use", "page_in_use")
                size = len(blob)
                if ((size != PAGE_SIZE and not (sealed_ok and size == _SEALED_SIZE))
                        or len(pcmd) != _PCMD_SIZE):
                    raise gp("ELDU needs a 4 KiB page and a 128-byte PCMD", "operand_size")
                flags, secinfo_reserved, _, pcmd_reserved, mac = pcmd_parts(pcmd)
                page_type = _PAGE_TYPES.get((flags & SECINFO_PAGE_TYPE_MASK)
                                            >> SECINFO_PAGE_TYPE_SHIFT)
                encl: EnclaveState | None = None
                if page_type is PT_REG or page_type is PT_TCS or page_type is PT_TRIM:
                    if secs is None:
                        secs = secs_of(m, secs_page)
                        # what every page of the batch needs of its enclave
                        ebase, eend, resident = secs.base, secs.base + secs.size, secs.pages
                        deferred = secs.deferred if len(secs.deferred) else None
                        memory = secs.memory
                        assert memory is not None  # it lives as long as its SECS
                        view = memory.view
                        eid, epoch = secs.eid, secs.epoch if blocked else -1
                    encl = secs
                elif page_type is PT_VA:
                    if secs_page:
                        raise gp("PAGEINFO.SECS must be 0 to load a VA page",
                                 "pageinfo_secs_not_zero")
                else:
                    append(m.refuse(SgxError.MAC_COMPARE_FAIL, "pcmd_page_type"))
                    continue
            except Fault as fault:
                append(fault)
                break
            version = slots[index]
            # EWB bound a page-aligned LINADDR inside ELRANGE into the MAC: any
            # other LINADDR cannot verify (and must not be written to).
            if not version:
                append(m.refuse(SgxError.MAC_COMPARE_FAIL, "va_slot_empty"))
                continue
            if encl is not None and (linaddr & PAGE_OFFSET_MASK or not ebase <= linaddr < eend):
                append(m.refuse(SgxError.MAC_COMPARE_FAIL, "linaddr"))
                continue
            if size == _SEALED_SIZE and blob[PAGE_SIZE:] == mac:
                sealed = blob
            else:
                sealed = bytes(blob[:PAGE_SIZE]) + mac
            page_eid = 0 if encl is None else eid
            if secinfo_reserved == _NO_SECINFO_RESERVED and pcmd_reserved == _NO_PCMD_RESERVED:
                header = header_of(flags, linaddr, page_eid)
            else:
                header = paging_header(pcmd[:_PCMD_SECINFO_END], linaddr, page_eid,
                                       pcmd_reserved)
            if encl is None or linaddr in resident or (
                    deferred is not None and deferred.get(linaddr) is not None):
                # A VA page, or a linear page that is taken: decrypt aside (the
                # MAC is checked before the one-page-per-address refusal).
                page = decrypt_page(cipher, version, header, sealed[:PAGE_SIZE], mac)
                if page is None:
                    append(m.refuse(SgxError.MAC_COMPARE_FAIL, "mac"))
                    continue
                if encl is not None:
                    append(gp(f"linear page {linaddr:#x} already has an EPC page "
                              "(vsgx maps one per page)", DUPLICATE_LINEAR))
                    break
                slots[index] = 0
                entry.clear()
                entry.pt = PT_VA
                entry.valid = True
                va_pages[epc_page] = array("Q", page)
                append(_SUCCESS)
                continue
            offset = linaddr - ebase
            written.append(offset)
            try:
                decrypt_into(nonce_of(version), sealed, header, view[offset:offset + PAGE_SIZE])
            except MacMismatch:
                written.pop()
                assert memory is not None
                memory.discard(offset)  # no unverified plaintext, and no memory
                append(m.refuse(SgxError.MAC_COMPARE_FAIL, "mac"))
                continue
            slots[index] = 0
            entry.pt = page_type
            entry.r, entry.w, entry.x, entry.pending, entry.modified, entry.pr = \
                _FLAG_BITS[flags & _EPCM_FLAGS]
            entry.enclave = encl
            entry.linaddr = linaddr
            entry.valid = True
            entry.blocked = blocked
            entry.block_epoch = epoch
            entry.mod_epoch = -1
            resident[linaddr] = entry
            loaded.append(linaddr)
            append(_SUCCESS)
    finally:
        if secs is not None:
            _loaded(secs, written, loaded)
    return results


def _loaded(encl: EnclaveState, written: list[int], loaded: list[int]) -> None:
    """What ELDU leaves to do in the enclave once its pages are in: the
    memory written (at these offsets) is no longer held, each page's
    accessed bit starts clear, the count, the news."""
    assert encl.memory is not None
    encl.memory.reuse_pages(written)
    if loaded:
        encl.old.update(loaded)
        encl.child_count += len(loaded)
        encl.note_changes(loaded)


def eldu_deferred(m: Machine, epc_page: int, secs_page: int, linaddr: int) -> None:
    """Load a deferred page into ``epc_page``: what ELDU of the blob EWB
    would have written at its EADD gives (its SECINFO, its pattern)."""
    entry = m.epc.entry(epc_page)
    if linaddr & PAGE_OFFSET_MASK:
        raise gp("PAGEINFO.LINADDR is not page aligned", "linaddr_alignment")
    m.epc.entry(secs_page, "SECS")
    if entry.valid:
        raise epc_pf(epc_page, "the EPC page is in use", "page_in_use")
    encl = secs_of(m, secs_page)
    if linaddr in encl.pages:
        raise gp(f"linear page {linaddr:#x} already has an EPC page (vsgx maps one per page)",
                 DUPLICATE_LINEAR)
    taken = encl.deferred.take(linaddr)
    if taken is None:
        raise gp(f"no deferred page at {linaddr:#x}", "not_deferred")
    flags, fill = taken
    assert encl.memory is not None
    encl.memory.fill(linaddr - encl.base, 1, fill.to_bytes(4, "little") * (PAGE_SIZE // 4))
    give_pages(encl, [entry], linaddr, flags)
