"""SGX2: EAUG, EMODPR, EMODT, EACCEPT, EMODPE, EACCEPTCOPY, through the
driver's ioctls and enclave code, in the shape of the Linux SGX selftests
(every check of the leaves: tests/leaves)."""

from __future__ import annotations

import errno

import pytest

from vsgx.arch import PageType, SgxError, Vector
from vsgx.avm.driver import DriverError
from vsgx.host.enclave import Exit

from plain_ops import OP_EACCEPTCOPY, OP_GET_BUFFER, OP_INIT_TCS_PAGE, OP_PUT_BUFFER

R, W, X = 1, 2, 4
PENDING, MODIFIED, PR = 0x8, 0x10, 0x20
REG, TCS, TRIM = PageType.REG << 8, PageType.TCS << 8, PageType.TRIM << 8


def free_address(plain, index: int = 0) -> int:
    """The ``index``-th page of ELRANGE past everything the loader added."""
    end = max(run.end for run in plain.enclave.plan.runs)
    address = plain.base + end + index * 4096
    assert address < plain.base + plain.enclave.size
    return address


def test_augment_on_first_touch_then_eaccept(plain):
    page = free_address(plain)
    fault = plain.put(page, 0x1122)
    # The driver EAUGed the page; the retried write hits a PENDING page.
    assert fault.aex and fault.vector == Vector.PF
    assert fault.error_code == 0x8007 and fault.address == page
    result, status = plain.eaccept(page, R | W | REG | PENDING, tcs_index=1)
    assert result.kind == "eexit" and status == SgxError.SUCCESS
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    assert plain.get(page)[1] == 0x1122


def test_augment_via_eaccept_is_transparent(plain):
    page = free_address(plain, 1)
    result, status = plain.eaccept(page, R | W | REG | PENDING)
    assert result.kind == "eexit" and status == SgxError.SUCCESS
    assert plain.put(page, 77).kind == "eexit" and plain.get(page)[1] == 77


def test_heap_grows_page_by_page(plain):
    pages = [free_address(plain, n) for n in range(2, 6)]
    for n, page in enumerate(pages):
        assert plain.eaccept(page, R | W | REG | PENDING)[1] == 0
        assert plain.put(page + 16, n).kind == "eexit"
    assert [plain.get(page + 16)[1] for page in pages] == list(range(4))


def test_eaccept_with_the_wrong_attributes_is_a_mismatch(plain):
    page = free_address(plain, 0)
    assert plain.eaccept(page, R | W | REG | PENDING)[1] == 0
    data = plain.symbol("encl_buffer") + 4096
    plain.enclave.restrict_permissions(data, 4096, R)
    assert plain.eaccept(data, R | W | REG | PR)[1] == SgxError.PAGE_ATTRIBUTES_MISMATCH
    assert plain.eaccept(data, R | REG | PR)[1] == SgxError.SUCCESS


def test_restricting_a_tcs_page_is_einval(plain):
    with pytest.raises(DriverError) as raised:
        plain.enclave.restrict_permissions(plain.tcs[0], 4096, R)
    assert raised.value.errno == errno.EINVAL


def test_new_tcs_from_a_regular_page(plain):
    stack, tcs, ssa = (free_address(plain, n) for n in (0, 1, 2))
    for page in (stack, tcs, ssa):
        assert plain.eaccept(page, R | W | REG | PENDING)[1] == 0
    entry = plain.enclave.plan.entry_symbols["encl_dyn_entry"]
    result, _ = plain.call(0, OP_INIT_TCS_PAGE, tcs, ssa - plain.base, entry)
    assert result.kind == "eexit"
    assert plain.enclave.modify_types(tcs, 4096, PageType.TCS) == 4096
    assert plain.eaccept(tcs, TCS | MODIFIED)[1] == 0
    op = plain.enclave.alloc(4096)
    plain.enclave.write(op, (OP_PUT_BUFFER).to_bytes(8, "little") + (0xABCD).to_bytes(8, "little"))
    assert plain.enclave.eenter(tcs=tcs, rdi=op).kind == "eexit"
    plain.enclave.write(op, (OP_GET_BUFFER).to_bytes(8, "little") + bytes(8))
    assert plain.enclave.eenter(tcs=tcs, rdi=op).kind == "eexit"
    assert plain.enclave.read(op + 8, 8) == (0xABCD).to_bytes(8, "little")
    # Trim the three pages away again.
    assert plain.enclave.modify_types(stack, 3 * 4096, PageType.TRIM) == 3 * 4096
    for page in (stack, tcs, ssa):
        assert plain.eaccept(page, TRIM | MODIFIED)[1] == 0
    assert plain.enclave.remove_pages(stack, 3 * 4096) == 3 * 4096
    # The old TCS address can be augmented as a fresh page.
    assert plain.eaccept(tcs, R | W | REG | PENDING)[1] == 0


def test_removing_a_page_the_enclave_did_not_accept_is_eperm(plain):
    data = plain.symbol("encl_buffer") + 4096
    plain.enclave.modify_types(data, 4096, PageType.TRIM)
    with pytest.raises(DriverError) as raised:
        plain.enclave.remove_pages(data, 4096)
    assert raised.value.errno == errno.EPERM


def test_a_trimmed_page_faults_with_0x8005(plain):
    data = plain.symbol("encl_buffer") + 4096
    plain.enclave.modify_types(data, 4096, PageType.TRIM)
    result, _value = plain.get(data)
    assert result.aex and result.error_code == 0x8005 and result.address == data
    assert plain.eaccept(data, TRIM | MODIFIED, tcs_index=1)[1] == 0
    result, _ = plain.get(data, tcs_index=2)
    assert result.aex and result.error_code == 0x8005


def test_eacceptcopy_fills_a_pending_page(plain):
    source = plain.symbol("encl_buffer")
    plain.put(source, 0x5555)
    target = free_address(plain, 3)
    fault = plain.put(target, 1)  # EAUG on touch, then a pending-page fault
    assert fault.aex
    result, words = plain.call(1, OP_EACCEPTCOPY, target, R | REG, source)
    assert result.kind == "eexit" and words[4] == 0
    assert plain.get(target, tcs_index=2)[1] == 0x5555
    # R only: the parked write on TCS 0 faults again, now as a write to a
    # read-only page.
    again = plain.enclave.eresume(plain.tcs[0])
    assert isinstance(again, Exit) and again.aex and again.error_code == 0x8007


def test_emodpr_needs_tracking_before_eaccept(plain):
    """EACCEPT of a restriction reports NOT_TRACKED until an ETRACK cycle
    covers it (the driver's ioctl does ETRACK itself)."""
    vm = plain.enclave.avm.evm
    data = plain.symbol("encl_buffer") + 4096
    epc = plain.enclave.handle.pages[data].epc
    from vsgx.arch import Secinfo

    assert vm.emodpr(epc, Secinfo(flags=R).pack()) is SgxError.SUCCESS
    assert plain.eaccept(data, R | REG | PR)[1] == SgxError.NOT_TRACKED
    assert vm.etrack(plain.enclave.handle.secs_page) is SgxError.SUCCESS
    assert plain.eaccept(data, R | REG | PR)[1] == SgxError.SUCCESS
    # A pending page cannot be restricted.
    page = free_address(plain, 4)
    plain.put(page, 1)
    assert vm.emodpr(plain.enclave.handle.pages[page].epc, Secinfo(flags=R).pack()) is \
        SgxError.PAGE_NOT_MODIFIABLE


def test_a_page_read_before_its_trim_faults_with_0x8005(plain):
    """The selftest remove_added_page_invalid_access: a page read in an
    earlier entry, then EMODT to TRIM: the next read is #PF with P|U|SGX
    (the executor keeps no stale translation of the page's old rights)."""
    data = plain.symbol("encl_buffer") + 4096
    assert plain.put(data, 0x5A5A).kind == "eexit"
    result, value = plain.get(data)
    assert result.kind == "eexit" and value == 0x5A5A
    assert plain.enclave.modify_types(data, 4096, PageType.TRIM) == 4096
    result, _ = plain.get(data)
    assert result.aex and result.vector == Vector.PF
    assert result.error_code == 0x8005 and result.address == data


def test_a_page_written_before_its_restriction_faults_with_0x8007(plain):
    """The same for rights going down with EMODPR: a write after RW -> R
    faults even though the page was written in the entry before."""
    data = plain.symbol("encl_buffer") + 4096
    assert plain.put(data, 1).kind == "eexit"
    assert plain.enclave.restrict_permissions(data, 4096, R) == 4096
    assert plain.eaccept(data, R | REG | PR)[1] == SgxError.SUCCESS
    result = plain.put(data, 2)
    assert result.aex and result.vector == Vector.PF
    assert result.error_code == 0x8007 and result.address == data
    assert plain.get(data)[1] == 1
