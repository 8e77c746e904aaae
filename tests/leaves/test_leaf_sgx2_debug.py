"""SGX2's ENCLS leaves (EAUG, EMODPR, EMODT) and the debug leaves (EDBGRD,
EDBGWR): every check in the SDM's order, on a bare machine."""

from __future__ import annotations

from vsgx.arch import PageType, SgxError, Tcs, Vector
from vsgx.evm import encls

from bare import (
    BASE,
    EPC_PF,
    MODIFIED,
    PENDING,
    PR,
    REG,
    SIZE,
    TCS,
    TRIM,
    Bare,
    R,
    W,
    X,
    faults,
    refuses,
    secinfo,
)


def augmented(free_offset: int = 8 * 4096):
    b = Bare()
    secs, encl = b.initialized()
    page = b.page()
    encls.eaug(b.m, page, secs, BASE + free_offset)
    return b, secs, encl, page


# -- EAUG -----------------------------------------------------------------------------------
def test_eaug_of_a_misaligned_epc_page_or_linaddr_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, b.page() + 8, secs, BASE + 8 * 4096), Vector.GP,
           "page_alignment")
    faults(lambda: encls.eaug(b.m, b.page(), secs, BASE + 8 * 4096 + 8), Vector.GP,
           "linaddr_alignment")


def test_eaug_with_a_misaligned_secs_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, b.page(), secs + 8, BASE + 8 * 4096), Vector.GP,
           "secs_alignment")


def test_eaug_with_a_secinfo_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, b.page(), secs, BASE + 8 * 4096, secinfo(REG | R | W)),
           Vector.GP, "secinfo_not_zero")


def test_eaug_into_a_valid_epc_page_fails_with_pf():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, secs, secs, BASE + 8 * 4096), Vector.PF, "page_in_use",
           EPC_PF)


def test_eaug_with_a_secs_operand_that_is_not_a_secs_fails_with_pf():
    b = Bare()
    b.initialized()
    child = b.m.config.epc_base + 4096
    faults(lambda: encls.eaug(b.m, b.page(), child, BASE + 8 * 4096), Vector.PF,
           "secs_not_secs", EPC_PF)


def test_eaug_to_an_uninitialized_enclave_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eaug(b.m, b.page(), secs, BASE), Vector.GP, "enclave_not_initialized")


def test_eaug_outside_elrange_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, b.page(), secs, BASE + SIZE), Vector.GP,
           "linaddr_outside_elrange")


def test_eaug_at_a_linear_page_that_has_an_epc_page_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(lambda: encls.eaug(b.m, b.page(), secs, BASE), Vector.GP, "linear_page_taken")


def test_eaug_adds_a_zeroed_pending_rw_reg_page():
    b = Bare()
    secs, encl = b.initialized()
    encl.memory.view[8 * 4096:9 * 4096] = b"\xee" * 4096  # stale bytes of a held page
    page = b.page()
    encls.eaug(b.m, page, secs, BASE + 8 * 4096)
    entry = b.m.epc.entry(page)
    assert entry.secinfo_flags() == REG | R | W | PENDING
    assert bytes(encl.page_view(BASE + 8 * 4096)) == bytes(4096)
    assert encl.child_count == 5


# -- EMODPR ---------------------------------------------------------------------------------
def test_emodpr_with_reserved_secinfo_bits_fails_with_gp():
    b = Bare()
    b.initialized()
    page = b.m.config.epc_base + 4096
    faults(lambda: encls.emodpr(b.m, page, secinfo(R | 1 << 7)), Vector.GP, "secinfo_reserved")


def test_emodpr_to_write_without_read_fails_with_gp():
    b = Bare()
    b.initialized()
    page = b.m.config.epc_base + 4096
    faults(lambda: encls.emodpr(b.m, page, secinfo(W)), Vector.GP, "secinfo_write_without_read")


def test_emodpr_of_an_invalid_or_non_epc_page_fails_with_pf():
    b = Bare()
    b.initialized()
    faults(lambda: encls.emodpr(b.m, b.page(), secinfo(R)), Vector.PF, "page_invalid", EPC_PF)
    faults(lambda: encls.emodpr(b.m, 0x1000, secinfo(R)), Vector.PF, "page_not_epc", EPC_PF)


def test_emodpr_of_a_pending_page_is_page_not_modifiable():
    b, _, _, page = augmented()
    refuses(b.m, lambda: encls.emodpr(b.m, page, secinfo(R)), SgxError.PAGE_NOT_MODIFIABLE,
            "page_pending_or_modified")


def test_emodpr_of_a_page_that_is_not_reg_fails_with_pf():
    b = Bare()
    secs = b.secs()
    tcs = b.add(secs, 0, flags=TCS, content=Tcs(nssa=1, ossa=4096).pack())
    b.add(secs, 4096)
    assert b.init(secs) is SgxError.SUCCESS
    faults(lambda: encls.emodpr(b.m, tcs, secinfo(R)), Vector.PF, "page_type", EPC_PF)


def test_emodpr_in_an_uninitialized_enclave_fails_with_gp():
    b = Bare()
    secs = b.secs()
    page = b.add(secs, 0)
    faults(lambda: encls.emodpr(b.m, page, secinfo(R)), Vector.GP, "enclave_not_initialized")


def test_emodpr_only_takes_rights_away_and_marks_the_restriction():
    b = Bare()
    _, encl = b.initialized()
    page = b.m.config.epc_base + 4096
    assert encls.emodpr(b.m, page, secinfo(R | X)) is SgxError.SUCCESS
    entry = b.m.epc.entry(page)
    assert (entry.r, entry.w, entry.x, entry.pr) == (True, False, False, True)
    assert entry.mod_epoch == encl.epoch


# -- EMODT ----------------------------------------------------------------------------------
def test_emodt_to_a_type_other_than_tcs_or_trim_fails_with_gp():
    b = Bare()
    b.initialized()
    page = b.m.config.epc_base + 4096
    faults(lambda: encls.emodt(b.m, page, secinfo(REG)), Vector.GP, "secinfo_page_type")


def test_emodt_of_an_invalid_page_fails_with_pf():
    b = Bare()
    b.initialized()
    faults(lambda: encls.emodt(b.m, b.page(), secinfo(TRIM)), Vector.PF, "page_invalid",
           EPC_PF)


def test_emodt_of_a_tcs_to_tcs_or_of_a_va_page_fails_with_pf():
    b = Bare()
    secs = b.secs()
    tcs = b.add(secs, 0, flags=TCS, content=Tcs(nssa=1, ossa=4096).pack())
    b.add(secs, 4096)
    assert b.init(secs) is SgxError.SUCCESS
    faults(lambda: encls.emodt(b.m, tcs, secinfo(TCS)), Vector.PF, "page_type", EPC_PF)
    va = b.page()
    encls.epa(b.m, va)
    faults(lambda: encls.emodt(b.m, va, secinfo(TRIM)), Vector.PF, "page_type", EPC_PF)
    assert encls.emodt(b.m, tcs, secinfo(TRIM)) is SgxError.SUCCESS


def test_emodt_of_a_pending_page_is_page_not_modifiable():
    b, _, _, page = augmented()
    refuses(b.m, lambda: encls.emodt(b.m, page, secinfo(TRIM)), SgxError.PAGE_NOT_MODIFIABLE,
            "page_pending_or_modified")


def test_emodt_in_an_uninitialized_enclave_fails_with_gp():
    b = Bare()
    secs = b.secs()
    page = b.add(secs, 0)
    faults(lambda: encls.emodt(b.m, page, secinfo(TRIM)), Vector.GP, "enclave_not_initialized")


def test_emodt_makes_the_page_modified_with_no_rights():
    b = Bare()
    _, encl = b.initialized()
    page = b.m.config.epc_base + 4096
    assert encls.emodt(b.m, page, secinfo(TCS)) is SgxError.SUCCESS
    entry = b.m.epc.entry(page)
    assert entry.pt is PageType.TCS and entry.secinfo_flags() == TCS | MODIFIED
    assert entry.mod_epoch == encl.epoch and not entry.pr


# -- EDBGRD / EDBGWR -------------------------------------------------------------------------
def debug_enclave(**secs_changes):
    b = Bare()
    secs = b.secs(**secs_changes)
    data = b.add(secs, 0, content=(0x1122334455667788).to_bytes(8, "little") * 512)
    tcs = b.add(secs, 4096, flags=TCS, content=Tcs(nssa=1, ossa=8192).pack())
    b.add(secs, 8192)
    assert b.init(secs) is SgxError.SUCCESS
    return b, secs, data, tcs


def test_edbgrd_of_a_misaligned_address_fails_with_gp():
    b, _, data, _ = debug_enclave()
    faults(lambda: encls.edbgrd(b.m, data + 3), Vector.GP, "address_alignment")
    faults(lambda: encls.edbgwr(b.m, data + 4, 0), Vector.GP, "address_alignment")


def test_edbgrd_outside_the_epc_or_of_an_invalid_page_fails_with_pf():
    b, _, _, _ = debug_enclave()
    faults(lambda: encls.edbgrd(b.m, 0x1008), Vector.PF, "page_not_epc", EPC_PF)
    faults(lambda: encls.edbgrd(b.m, b.page() + 8), Vector.PF, "page_invalid", EPC_PF)
    faults(lambda: encls.edbgwr(b.m, b.page() + 8, 0), Vector.PF, "page_invalid", EPC_PF)


def test_edbgrd_of_a_secs_or_trim_page_fails_with_pf():
    b, secs, data, _ = debug_enclave()
    faults(lambda: encls.edbgrd(b.m, secs), Vector.PF, "page_type", EPC_PF)
    encls.emodt(b.m, data, secinfo(TRIM))
    b.m.epc.entry(data).modified = False  # accepted
    faults(lambda: encls.edbgrd(b.m, data), Vector.PF, "page_type", EPC_PF)


def test_edbgwr_of_a_secs_or_va_page_fails_with_pf():
    b, secs, _, _ = debug_enclave()
    va = b.page()
    encls.epa(b.m, va)
    faults(lambda: encls.edbgwr(b.m, secs, 0), Vector.PF, "page_type", EPC_PF)
    faults(lambda: encls.edbgwr(b.m, va, 0), Vector.PF, "page_type", EPC_PF)


def test_edbgrd_of_a_pending_or_modified_page_is_page_not_debuggable():
    b, secs, data, _ = debug_enclave()
    pending = b.page()
    encls.eaug(b.m, pending, secs, BASE + 8 * 4096)
    encls.emodt(b.m, data, secinfo(TCS))  # modified, and a type EDBGRD reads
    for page in (pending, data):
        refuses(b.m, lambda page=page: encls.edbgrd(b.m, page), SgxError.PAGE_NOT_DEBUGGABLE,
                "page_pending_or_modified")
        refuses(b.m, lambda page=page: encls.edbgwr(b.m, page, 1),
                SgxError.PAGE_NOT_DEBUGGABLE, "page_pending_or_modified")


def test_edbgrd_of_a_va_slot_tells_only_whether_it_is_used():
    b, _, _, _ = debug_enclave()
    va = b.page()
    encls.epa(b.m, va)
    b.m.epc.va_slots[va][3] = 12345
    assert encls.edbgrd(b.m, va + 24) == (SgxError.SUCCESS, (1 << 64) - 1)
    assert encls.edbgrd(b.m, va + 16) == (SgxError.SUCCESS, 0)


def test_edbgrd_beyond_the_tcs_fields_and_edbgwr_of_any_but_flags_fail_with_gp():
    b, _, _, tcs = debug_enclave()
    assert encls.edbgrd(b.m, tcs + 16) == (SgxError.SUCCESS, 8192)  # OSSA
    faults(lambda: encls.edbgrd(b.m, tcs + 72), Vector.GP, "tcs_offset")
    faults(lambda: encls.edbgwr(b.m, tcs + 16, 0), Vector.GP, "tcs_offset")
    assert encls.edbgwr(b.m, tcs + 8, 1) is SgxError.SUCCESS  # FLAGS.DBGOPTIN


def test_edbgrd_and_edbgwr_of_a_production_enclave_fail_with_gp():
    b = Bare()
    secs = b.secs(attributes=4)
    data = b.add(secs, 0)
    faults(lambda: encls.edbgrd(b.m, data), Vector.GP, "enclave_not_debug")
    faults(lambda: encls.edbgwr(b.m, data, 0), Vector.GP, "enclave_not_debug")


def test_edbgwr_writes_what_edbgrd_reads_and_tells_the_executors():
    b, secs, data, _ = debug_enclave()
    encl = b.enclave(secs)
    assert encls.edbgrd(b.m, data + 8) == (SgxError.SUCCESS, 0x1122334455667788)
    generation, mark = encl.generation, encl.change_mark()
    assert encls.edbgwr(b.m, data + 8, 0xFEEDFACE) is SgxError.SUCCESS
    assert encls.edbgrd(b.m, data + 8) == (SgxError.SUCCESS, 0xFEEDFACE)
    # the journal names the page: executors drop their translations of it
    assert encl.generation > generation and BASE in (encl.changes_since(mark) or ())


def test_eaug_then_emodpr_and_emodt_of_pages_in_other_states():
    """PR on a page modified by EMODT, and EMODT of a restricted page."""
    b = Bare()
    _, _ = b.initialized()
    first, second = b.m.config.epc_base + 4096, b.m.config.epc_base + 8192
    assert encls.emodt(b.m, first, secinfo(TRIM)) is SgxError.SUCCESS
    refuses(b.m, lambda: encls.emodpr(b.m, first, secinfo(R)), SgxError.PAGE_NOT_MODIFIABLE,
            "page_pending_or_modified")
    assert encls.emodpr(b.m, second, secinfo(R)) is SgxError.SUCCESS
    assert encls.emodt(b.m, second, secinfo(TRIM)) is SgxError.SUCCESS
    assert b.m.epc.entry(second).secinfo_flags() == TRIM | MODIFIED
    assert not PR & b.m.epc.entry(second).secinfo_flags()
