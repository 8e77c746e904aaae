"""Paging and page removal: every check of EPA, EBLOCK, ETRACK, EWB,
ELDB/ELDU and EREMOVE in the SDM's order, on a bare machine."""

from __future__ import annotations

import pytest

from vsgx.arch import Fault, PageType, Pcmd, SgxError, Vector
from vsgx.arch.layout import fields_of
from vsgx.crypto.paging import decrypt_page, paging_header
from vsgx.evm import encls

from bare import BASE, EPC_PF, REG, Bare, R, W, X, faults, refuses, secinfo


class Paged:
    """An initialized enclave with four RW pages, a VA page and a free page."""

    def __init__(self):
        self.b = b = Bare()
        self.m = b.m
        self.secs, self.encl = b.initialized()
        self.pages = [b.m.config.epc_base + 4096 * (1 + n) for n in range(4)]
        self.va = b.page()
        encls.epa(b.m, self.va)
        self.free = b.page()

    def evict(self, n: int = 0, slot: int = 0) -> encls.EvictedPage:
        page = self.pages[n]
        assert encls.eblock(self.m, page) is SgxError.SUCCESS
        assert encls.etrack(self.m, self.secs) is SgxError.SUCCESS
        status, blob = encls.ewb(self.m, page, self.va + 8 * slot)
        assert status is SgxError.SUCCESS
        return blob

    def eldu(self, blob, page=None, slot=0, linaddr=BASE, secs=None, pcmd=None, blocked=False):
        page = self.pages[0] if page is None else page
        secs = self.secs if secs is None else secs
        return lambda: encls.eld(self.m, page, self.va + 8 * slot if isinstance(slot, int)
                                 and slot < 512 else slot, secs, linaddr, blob.ciphertext,
                                 blob.pcmd if pcmd is None else pcmd, blocked)


# -- EPA ------------------------------------------------------------------------------------
def test_epa_with_rbx_not_pt_va_fails_with_gp():
    b = Bare()
    faults(lambda: encls.epa(b.m, b.page(), PageType.REG), Vector.GP, "page_type")


def test_epa_of_a_misaligned_or_non_epc_page_faults():
    b = Bare()
    faults(lambda: encls.epa(b.m, b.page() + 8), Vector.GP, "page_alignment")
    faults(lambda: encls.epa(b.m, 0x2000), Vector.PF, "page_not_epc", EPC_PF)


def test_epa_of_a_valid_page_fails_with_pf():
    p = Paged()
    faults(lambda: encls.epa(p.m, p.va), Vector.PF, "page_in_use", EPC_PF)


def test_epa_makes_a_va_page_of_empty_slots():
    b = Bare()
    page = b.page()
    encls.epa(b.m, page)
    entry = b.m.epc.entry(page)
    assert entry.valid and entry.pt is PageType.VA and not any(b.m.epc.va_slots[page])


# -- EBLOCK ---------------------------------------------------------------------------------
def test_eblock_of_a_misaligned_page_fails_with_gp():
    p = Paged()
    faults(lambda: encls.eblock(p.m, p.pages[0] + 8), Vector.GP, "page_alignment")


def test_eblock_of_an_invalid_page_is_pg_invld():
    p = Paged()
    refuses(p.m, lambda: encls.eblock(p.m, p.free), SgxError.PG_INVLD, "page_invalid")


def test_eblock_of_a_secs_is_pg_is_secs_and_of_a_va_page_notblockable():
    p = Paged()
    refuses(p.m, lambda: encls.eblock(p.m, p.secs), SgxError.PG_IS_SECS, "page_is_secs")
    refuses(p.m, lambda: encls.eblock(p.m, p.va), SgxError.NOTBLOCKABLE, "page_type")


def test_eblock_of_a_blocked_page_is_blkstate():
    p = Paged()
    assert encls.eblock(p.m, p.pages[0]) is SgxError.SUCCESS
    refuses(p.m, lambda: encls.eblock(p.m, p.pages[0]), SgxError.BLKSTATE, "page_blocked")


def test_eblock_blocks_the_page_in_the_current_epoch():
    p = Paged()
    assert encls.eblock(p.m, p.pages[1]) is SgxError.SUCCESS
    entry = p.m.epc.entry(p.pages[1])
    assert entry.blocked and entry.block_epoch == p.encl.epoch


def test_a_fault_ends_an_eblock_batch_after_the_pages_before_it():
    p = Paged()
    results = encls.eblock_pages(p.m, [p.pages[0], p.pages[1] + 8, p.pages[2]])
    assert results[0] is SgxError.SUCCESS and len(results) == 2
    assert isinstance(results[1], Fault) and results[1].check == "page_alignment"
    assert not p.m.epc.entry(p.pages[2]).blocked


# -- ETRACK ---------------------------------------------------------------------------------
def test_etrack_of_a_page_that_is_not_a_secs_fails_with_pf():
    p = Paged()
    faults(lambda: encls.etrack(p.m, p.pages[0]), Vector.PF, "secs_not_secs", EPC_PF)


def test_etrack_while_a_thread_of_the_previous_epoch_is_inside_is_prev_trk_incmpl():
    p = Paged()
    p.encl.inside[BASE] = p.encl.epoch  # a logical processor inside since the epoch ETRACK closes
    assert encls.etrack(p.m, p.secs) is SgxError.SUCCESS
    refuses(p.m, lambda: encls.etrack(p.m, p.secs), SgxError.PREV_TRK_INCMPL,
            "tracking_incomplete")
    del p.encl.inside[BASE]
    assert encls.etrack(p.m, p.secs) is SgxError.SUCCESS


# -- EWB ------------------------------------------------------------------------------------
def ewb(p: Paged, page: int, slot: int):
    return lambda: encls.ewb(p.m, page, slot)


def test_ewb_of_a_misaligned_or_non_epc_page_faults():
    p = Paged()
    faults(ewb(p, p.pages[0] + 8, p.va), Vector.GP, "page_alignment")
    faults(ewb(p, 0x3000, p.va), Vector.PF, "page_not_epc", EPC_PF)


def test_ewb_with_the_va_slot_in_the_page_it_evicts_fails_with_gp():
    p = Paged()
    faults(ewb(p, p.va, p.va + 8), Vector.GP, "va_slot_in_page")


def test_ewb_of_an_invalid_page_fails_with_pf():
    p = Paged()
    faults(ewb(p, p.free, p.va), Vector.PF, "page_invalid", EPC_PF)


def test_ewb_with_a_misaligned_va_slot_fails_with_gp():
    p = Paged()
    faults(ewb(p, p.pages[0], p.va + 4), Vector.GP, "va_slot_alignment")


def test_ewb_with_a_va_slot_outside_the_epc_or_not_in_a_va_page_fails_with_pf():
    p = Paged()
    faults(ewb(p, p.pages[0], 0x4000), Vector.PF, "va_slot_not_epc", EPC_PF)
    faults(ewb(p, p.pages[0], p.pages[1]), Vector.PF, "va_slot_not_va", EPC_PF)


def test_ewb_of_a_secs_fails_with_gp():
    p = Paged()
    faults(ewb(p, p.secs, p.va), Vector.GP, "page_is_secs")


def test_ewb_of_a_page_not_blocked_is_page_not_blocked():
    p = Paged()
    refuses(p.m, ewb(p, p.pages[0], p.va), SgxError.PAGE_NOT_BLOCKED, "page_not_blocked")


def test_ewb_of_a_blocked_page_before_etrack_is_not_tracked():
    p = Paged()
    encls.eblock(p.m, p.pages[0])
    refuses(p.m, ewb(p, p.pages[0], p.va), SgxError.NOT_TRACKED, "page_not_tracked")


def test_ewb_while_a_thread_of_the_blocking_epoch_is_inside_is_not_tracked():
    p = Paged()
    p.encl.inside[BASE] = p.encl.epoch
    encls.eblock(p.m, p.pages[0])
    assert encls.etrack(p.m, p.secs) is SgxError.SUCCESS
    refuses(p.m, ewb(p, p.pages[0], p.va), SgxError.NOT_TRACKED, "page_not_tracked")


def test_ewb_into_an_occupied_slot_is_va_slot_occupied_and_still_evicts():
    p = Paged()
    p.evict(0, slot=3)
    encls.eblock(p.m, p.pages[1])
    encls.etrack(p.m, p.secs)
    p.m.refusal = ""
    status, blob = encls.ewb(p.m, p.pages[1], p.va + 24)
    assert status is SgxError.VA_SLOT_OCCUPIED and p.m.refusal == "va_slot_occupied"
    assert blob is not None and not p.m.epc.entry(p.pages[1]).valid


def test_ewb_writes_the_pcmd_and_a_page_only_the_version_decrypts():
    p = Paged()
    p.encl.memory.view[4096:8192] = b"\xa5" * 4096
    blob = p.evict(1, slot=5)
    flags, eid, mac = fields_of(Pcmd, "secinfo.flags", "enclaveid", "mac").read(blob.pcmd)
    assert flags == REG | R | W and eid == p.encl.eid and mac == blob.sealed[4096:]
    assert blob.pcmd == Pcmd(secinfo=flags.to_bytes(8, "little") + bytes(56), enclaveid=eid,
                             mac=mac).pack()
    version = p.m.epc.va_slots[p.va][5]
    assert version
    header = paging_header(blob.pcmd[:64], BASE + 4096, eid, bytes(40))
    cipher = p.m.secrets.paging_cipher
    assert decrypt_page(cipher, version, header, blob.ciphertext, mac) == b"\xa5" * 4096
    assert decrypt_page(cipher, version + 1, header, blob.ciphertext, mac) is None
    entry = p.m.epc.entry(p.pages[1])
    assert not entry.valid and BASE + 4096 not in p.encl.pages and p.encl.child_count == 3


def test_ewb_of_a_va_page_needs_no_blocking():
    p = Paged()
    other = p.b.page()
    encls.epa(p.m, other)
    status, blob = encls.ewb(p.m, p.va, other)
    assert status is SgxError.SUCCESS and not p.m.epc.entry(p.va).valid
    assert fields_of(Pcmd, "secinfo.flags").read(blob.pcmd)[0] == int(PageType.VA) << 8


# -- ELDB / ELDU --------------------------------------------------------------------------
def test_eldu_of_a_misaligned_epc_page_fails_with_gp():
    p = Paged()
    blob = p.evict()
    faults(p.eldu(blob, page=p.pages[0] + 8), Vector.GP, "page_alignment")


def test_eldu_with_a_bad_va_slot_faults():
    p = Paged()
    blob = p.evict()
    faults(p.eldu(blob, slot=p.va + 3), Vector.GP, "va_slot_alignment")
    faults(p.eldu(blob, slot=p.pages[1]), Vector.PF, "va_slot_not_va", EPC_PF)


def test_eldu_into_a_valid_epc_page_fails_with_pf():
    p = Paged()
    blob = p.evict()
    faults(p.eldu(blob, page=p.pages[1]), Vector.PF, "page_in_use", EPC_PF)


def test_eldu_of_a_short_page_or_pcmd_fails_with_gp():
    p = Paged()
    blob = p.evict()
    faults(p.eldu(blob, pcmd=blob.pcmd[:100]), Vector.GP, "operand_size")
    faults(lambda: encls.eld(p.m, p.pages[0], p.va, p.secs, BASE, bytes(10), blob.pcmd, False),
           Vector.GP, "operand_size")


def test_eldu_of_an_enclave_page_with_a_secs_operand_that_is_not_a_secs_fails_with_pf():
    p = Paged()
    blob = p.evict()
    faults(p.eldu(blob, secs=p.pages[1]), Vector.PF, "secs_not_secs", EPC_PF)


def test_eldu_of_a_va_page_with_pageinfo_secs_set_fails_with_gp():
    p = Paged()
    other = p.b.page()
    encls.epa(p.m, other)
    _, blob = encls.ewb(p.m, p.va, other)
    faults(lambda: encls.eld(p.m, p.va, other, p.secs, 0, blob.ciphertext, blob.pcmd, False),
           Vector.GP, "pageinfo_secs_not_zero")
    assert encls.eld(p.m, p.va, other, 0, 0, blob.ciphertext, blob.pcmd, False) is \
        SgxError.SUCCESS


def test_eldu_of_a_pcmd_naming_a_page_type_ewb_never_writes_is_mac_compare_fail():
    p = Paged()
    blob = p.evict()
    pcmd = (int(PageType.SECS) << 8).to_bytes(8, "little") + blob.pcmd[8:]
    refuses(p.m, p.eldu(blob, pcmd=pcmd), SgxError.MAC_COMPARE_FAIL, "pcmd_page_type")


def test_eldu_from_an_empty_va_slot_is_mac_compare_fail():
    p = Paged()
    blob = p.evict(0, slot=0)
    refuses(p.m, p.eldu(blob, slot=1), SgxError.MAC_COMPARE_FAIL, "va_slot_empty")


@pytest.mark.parametrize("linaddr", [BASE + 8, BASE - 4096, BASE + 32 * 4096])
def test_eldu_at_a_linaddr_outside_elrange_or_misaligned_is_mac_compare_fail(linaddr):
    p = Paged()
    blob = p.evict()
    refuses(p.m, p.eldu(blob, linaddr=linaddr), SgxError.MAC_COMPARE_FAIL, "linaddr")


@pytest.mark.parametrize("change", ["ciphertext", "linaddr", "flags", "reserved", "mac"])
def test_eldu_of_a_changed_blob_is_mac_compare_fail_and_leaves_no_plaintext(change):
    p = Paged()
    p.encl.memory.view[0:4096] = b"\x5a" * 4096
    blob = p.evict()
    ciphertext, pcmd, linaddr = bytearray(blob.ciphertext), bytearray(blob.pcmd), BASE
    if change == "ciphertext":
        ciphertext[7] ^= 1
    elif change == "linaddr":
        linaddr += 8192
    elif change == "flags":
        pcmd[0] ^= X
    elif change == "reserved":
        pcmd[80] = 1
    else:
        pcmd[-1] ^= 1
    p.m.refusal = ""
    status = encls.eld(p.m, p.pages[0], p.va, p.secs, linaddr, bytes(ciphertext), bytes(pcmd),
                       False)
    assert (status, p.m.refusal) == (SgxError.MAC_COMPARE_FAIL, "mac")
    offset = linaddr - BASE
    assert bytes(p.encl.memory.view[offset:offset + 4096]) != b"\x5a" * 4096
    assert not p.m.epc.entry(p.pages[0]).valid


def test_eldu_at_a_linear_page_that_has_an_epc_page_fails_with_gp_after_the_mac():
    p = Paged()
    blob = p.evict(0)
    encls.eaug(p.m, p.pages[0], p.secs, BASE)
    faults(p.eldu(blob, page=p.free), Vector.GP, "linear_page_taken")


def test_eldu_consumes_the_version_so_a_replay_is_mac_compare_fail():
    p = Paged()
    blob = p.evict()
    assert p.eldu(blob)() is SgxError.SUCCESS
    assert p.m.epc.va_slots[p.va][0] == 0
    encls.eremove(p.m, p.pages[0])
    refuses(p.m, p.eldu(blob), SgxError.MAC_COMPARE_FAIL, "va_slot_empty")


def test_eldu_restores_the_page_and_its_epcm_entry():
    p = Paged()
    p.encl.memory.view[8192:12288] = b"\x11" * 4096
    blob = p.evict(2)
    assert p.eldu(blob, page=p.free, linaddr=BASE + 8192)() is SgxError.SUCCESS
    entry = p.m.epc.entry(p.free)
    assert entry.valid and entry.linaddr == BASE + 8192 and entry.secinfo_flags() == REG | R | W
    assert not entry.blocked and p.encl.pages[BASE + 8192] is entry
    assert bytes(p.encl.memory.view[8192:12288]) == b"\x11" * 4096


def test_eldb_loads_the_page_blocked():
    p = Paged()
    blob = p.evict()
    assert p.eldu(blob, blocked=True)() is SgxError.SUCCESS
    refuses(p.m, lambda: encls.eblock(p.m, p.pages[0]), SgxError.BLKSTATE, "page_blocked")


# -- EREMOVE -------------------------------------------------------------------------------
def test_eremove_of_a_misaligned_or_non_epc_page_faults():
    p = Paged()
    faults(lambda: encls.eremove(p.m, p.pages[0] + 8), Vector.GP, "page_alignment")
    faults(lambda: encls.eremove(p.m, 0x5000), Vector.PF, "page_not_epc", EPC_PF)


def test_eremove_of_a_free_page_succeeds():
    p = Paged()
    assert encls.eremove(p.m, p.free) is SgxError.SUCCESS


def test_eremove_of_a_va_page_frees_its_slots():
    p = Paged()
    assert encls.eremove(p.m, p.va) is SgxError.SUCCESS
    assert p.va not in p.m.epc.va_slots and not p.m.epc.entry(p.va).valid


def test_eremove_of_a_secs_with_children_is_child_present():
    p = Paged()
    refuses(p.m, lambda: encls.eremove(p.m, p.secs), SgxError.CHILD_PRESENT, "child_present")


def test_eremove_of_a_child_while_a_thread_is_inside_is_enclave_act():
    p = Paged()
    p.encl.inside[BASE] = p.encl.epoch
    refuses(p.m, lambda: encls.eremove(p.m, p.pages[0]), SgxError.ENCLAVE_ACT,
            "enclave_active")


def test_eremove_of_an_accepted_trim_page_succeeds_while_threads_are_inside():
    p = Paged()
    page = p.pages[3]
    entry = p.m.epc.entry(page)
    entry.pt, entry.modified = PageType.TRIM, False  # EMODT then EACCEPT
    p.encl.inside[BASE] = p.encl.epoch
    assert encls.eremove(p.m, page) is SgxError.SUCCESS and not entry.valid


def test_eremove_of_every_child_then_the_secs_destroys_the_enclave():
    p = Paged()
    for page in p.pages:
        assert encls.eremove(p.m, page) is SgxError.SUCCESS
    assert p.encl.child_count == 0 and not p.encl.pages
    assert encls.eremove(p.m, p.secs) is SgxError.SUCCESS
    assert p.secs not in p.m.epc.secs and p.encl.memory is None


# -- loading a page EADD deferred -------------------------------------------------------
def deferred():
    b = Bare()
    secs = b.secs()
    encls.eadd_uniform(b.m, secs, BASE, 4, secinfo(REG | R | W), 0x01020304, False,
                       [b.page()])
    return b, secs


def test_eldu_deferred_at_a_misaligned_linaddr_fails_with_gp():
    b, secs = deferred()
    faults(lambda: encls.eldu_deferred(b.m, b.page(), secs, BASE + 4096 + 8), Vector.GP,
           "linaddr_alignment")


def test_eldu_deferred_into_a_valid_epc_page_fails_with_pf():
    b, secs = deferred()
    faults(lambda: encls.eldu_deferred(b.m, secs, secs, BASE + 4096), Vector.PF, "page_in_use",
           EPC_PF)


def test_eldu_deferred_of_a_resident_or_never_deferred_page_fails_with_gp():
    b, secs = deferred()
    faults(lambda: encls.eldu_deferred(b.m, b.page(), secs, BASE), Vector.GP,
           "linear_page_taken")
    faults(lambda: encls.eldu_deferred(b.m, b.page(), secs, BASE + 8 * 4096), Vector.GP,
           "not_deferred")


def test_eldu_deferred_loads_the_pattern_once():
    b, secs = deferred()
    page = b.page()
    encls.eldu_deferred(b.m, page, secs, BASE + 2 * 4096)
    encl = b.enclave(secs)
    assert bytes(encl.page_view(BASE + 2 * 4096)) == bytes([4, 3, 2, 1]) * 1024
    assert b.m.epc.entry(page).secinfo_flags() == REG | R | W and encl.child_count == 2
    faults(lambda: encls.eldu_deferred(b.m, b.page(), secs, BASE + 2 * 4096), Vector.GP,
           "linear_page_taken")


# -- batches: one call, the same checks page by page ---------------------------------------
def count_hooks(encl) -> list[int]:
    calls = [0]

    def hook() -> None:
        calls[0] += 1

    encl.on_change.append(hook)
    return calls


def blocked_and_tracked(p: Paged, *ns: int) -> None:
    assert encls.eblock_pages(p.m, [p.pages[n] for n in ns]) == [SgxError.SUCCESS] * len(ns)
    assert encls.etrack(p.m, p.secs) is SgxError.SUCCESS


def test_an_eblock_batch_journals_each_page_and_tells_executors_once():
    p = Paged()
    calls, mark = count_hooks(p.encl), p.encl.change_mark()
    blocked_and_tracked(p, 2, 0)
    assert p.encl.changes_since(mark) == [BASE + 8192, BASE] and calls == [1]


def test_an_ewb_batch_journals_each_page_and_tells_executors_once():
    p = Paged()
    blocked_and_tracked(p, 0, 1, 2)
    p.encl.old.update([BASE, BASE + 4096])
    calls, mark = count_hooks(p.encl), p.encl.change_mark()
    results = encls.ewb_pages(p.m, [(p.pages[n], p.va + 8 * n) for n in range(3)])
    assert [status for status, _ in results] == [SgxError.SUCCESS] * 3
    assert p.encl.changes_since(mark) == [BASE, BASE + 4096, BASE + 8192] and calls == [1]
    assert p.encl.child_count == 1 and list(p.encl.pages) == [BASE + 12288]
    assert not p.encl.old & {BASE, BASE + 4096, BASE + 8192}
    versions = [p.m.epc.va_slots[p.va][n] for n in range(3)]
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]


def test_a_fault_ends_an_ewb_batch_and_the_pages_before_it_are_written_out():
    p = Paged()
    blocked_and_tracked(p, 0, 1)
    calls, mark = count_hooks(p.encl), p.encl.change_mark()
    results = encls.ewb_pages(p.m, [(p.pages[0], p.va), (p.pages[1], p.va + 9),
                                    (p.pages[2], p.va + 16)])
    assert results[0][0] is SgxError.SUCCESS and len(results) == 2
    assert isinstance(results[1], Fault) and results[1].check == "va_slot_alignment"
    assert p.encl.changes_since(mark) == [BASE] and calls == [1]
    assert p.encl.child_count == 3 and BASE not in p.encl.pages
    assert p.m.epc.entry(p.pages[1]).valid and p.m.epc.va_slots[p.va][1] == 0
    assert p.eldu(results[0][1])() is SgxError.SUCCESS  # it comes back whole


def test_an_ewb_batch_that_evicts_a_va_page_cannot_use_its_slots_after():
    p = Paged()
    other = p.b.page()
    encls.epa(p.m, other)
    blocked_and_tracked(p, 0, 1)
    results = encls.ewb_pages(p.m, [(p.pages[0], other + 16), (other, p.va),
                                    (p.pages[1], other + 24)])
    assert [r[0] for r in results[:2]] == [SgxError.SUCCESS] * 2 and len(results) == 3
    assert isinstance(results[2], Fault) and results[2].check == "va_slot_not_va"
    assert p.m.epc.entry(p.pages[1]).valid
    # the VA page went out with the version its slot got earlier in the batch
    va_blob = results[1][1]
    assert encls.eld_pages(p.m, 0, [(p.free, p.va, 0, va_blob.sealed, va_blob.pcmd)]) == \
        [SgxError.SUCCESS]
    assert p.m.epc.va_slots[p.free][2] and not p.m.epc.va_slots[p.free][3]
    item = (p.pages[0], p.free + 16, BASE, results[0][1].sealed, results[0][1].pcmd)
    assert encls.eld_pages(p.m, p.secs, [item]) == [SgxError.SUCCESS]


def test_an_eldu_batch_goes_on_past_a_refused_page_and_tells_executors_once():
    p = Paged()
    blocked_and_tracked(p, 0, 1, 2)
    blobs = [blob for _, blob in encls.ewb_pages(p.m, [(p.pages[n], p.va + 8 * n)
                                                       for n in range(3)])]
    broken = bytearray(blobs[1].sealed)
    broken[5] ^= 1
    calls, mark = count_hooks(p.encl), p.encl.change_mark()
    p.m.refusal = ""
    results = encls.eld_pages(p.m, p.secs, [
        (p.pages[0], p.va, BASE, blobs[0].sealed, blobs[0].pcmd),
        (p.pages[1], p.va + 8, BASE + 4096, bytes(broken), blobs[1].pcmd),
        (p.pages[2], p.va + 16, BASE + 8192, blobs[2].sealed, blobs[2].pcmd)])
    assert results == [SgxError.SUCCESS, SgxError.MAC_COMPARE_FAIL, SgxError.SUCCESS]
    assert p.m.refusal == "mac"
    assert p.encl.changes_since(mark) == [BASE, BASE + 8192] and calls == [1]
    assert p.encl.child_count == 3 and BASE + 4096 not in p.encl.pages
    assert {BASE, BASE + 8192} <= p.encl.old
    assert [p.m.epc.va_slots[p.va][n] != 0 for n in range(3)] == [False, True, False]


def test_an_eldu_batch_that_names_one_va_slot_twice_finds_it_empty_the_second_time():
    p = Paged()
    blob = p.evict(0)
    p.m.refusal = ""
    results = encls.eld_pages(p.m, p.secs, [(p.pages[0], p.va, BASE, blob.sealed, blob.pcmd),
                                            (p.free, p.va, BASE, blob.sealed, blob.pcmd)])
    assert results == [SgxError.SUCCESS, SgxError.MAC_COMPARE_FAIL]
    assert p.m.refusal == "va_slot_empty" and not p.m.epc.entry(p.free).valid


def test_changes_past_the_journal_limit_in_one_batch_ask_for_a_full_reread():
    from vsgx.evm.enclave import JOURNAL_LIMIT

    p = Paged()
    mark = p.encl.change_mark()
    p.encl.note_changes([])
    assert p.encl.change_mark() == mark
    p.encl.note_changes([BASE] * (JOURNAL_LIMIT + 10))
    assert p.encl.changes_since(mark) is None and len(p.encl.journal) <= JOURNAL_LIMIT
    later = p.encl.change_mark()
    p.encl.note_changes([BASE + 4096, BASE])
    assert p.encl.changes_since(later) == [BASE + 4096, BASE]
