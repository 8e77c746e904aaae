"""EENTER, EEXIT, AEX and ERESUME (SDM EENTER, ERESUME, EEXIT and "Enclave
Exiting Events"), with the fault codes the Linux kernel's SGX selftests
expect: in-process on every executor, and a few across the channel."""

from __future__ import annotations

import threading
import time

import pytest

from vsgx.arch import Fault, PfErrorCode, Vector
from vsgx.arch.constants import ExitType
from vsgx.arch.ssa import exitinfo_fields

from plain_ops import (
    FIX_EMODPE,
    FIX_NONE,
    FIX_SET_RAX,
    FIX_SET_RCX,
    OP_BAD_JUMP,
    OP_CPUID,
    OP_DIVIDE,
    OP_INT3,
    OP_NOP,
    OP_READ_VIA_RAX,
    OP_SYSCALL,
    OP_WAIT_FLAG,
)


def test_entry_and_exit_with_arguments_in_registers(plain):
    result = plain.enclave.eenter(rdi=0, rsi=5, rdx=7, r8=1, r9=2)
    assert result.kind == "eexit"
    assert result.rsi == 5 * 2 + 7 + 1 + 2 and result.rdi == 0x5EED
    # EEXIT jumps to RBX (the address after the application's ENCLU) and
    # puts the AEP in RCX; RSP and RBP are restored by the enclave.
    memory = plain.enclave.memory
    assert result.rip == memory.return_rip and result.rcx == memory.return_rip
    assert result.rsp == plain.enclave.avm.stack_top()


def test_every_tcs_enters(plain):
    for index in range(4):
        result, _ = plain.call(index, OP_NOP)
        assert result.kind == "eexit"


def test_division_by_zero_is_reported_with_vector_0_and_resumes(plain):
    result, _ = plain.call(0, OP_DIVIDE, 100, 0)
    assert result.aex and result.vector == Vector.DE
    assert result.exitinfo_valid
    # AEX synthetic state: RAX = ERESUME, RBX = TCS, RCX = AEP = RIP.
    assert result.rax == 3 and result.rbx == plain.tcs[0]
    assert result.rip == result.rcx == plain.enclave.memory.return_rip
    # The enclave's handler, entered on the same TCS with CSSA = 1, fixes
    # the divisor in SSA[0]; ERESUME re-executes the DIV.
    handled, info = plain.handle_exception(0, FIX_SET_RCX, 4)
    assert handled.kind == "eexit"
    valid, vector, exit_type = exitinfo_fields(info["exitinfo"])
    assert (valid, vector, exit_type) == (True, Vector.DE, ExitType.HARDWARE)
    resumed = plain.enclave.eresume(plain.tcs[0])
    assert resumed.kind == "eexit"
    assert plain.read_op(0, 24, 8) == (25).to_bytes(8, "little")


def test_page_fault_handler_fixes_the_fault_then_eresume_continues(plain):
    # An address in ELRANGE with no EPC page behind it (beyond the heap).
    plain.enclave.avm.driver.augment_on_fault = False
    hole = plain.base + plain.enclave.size - 4096
    result, _ = plain.call(0, OP_READ_VIA_RAX, hole)
    assert result.aex and result.vector == Vector.PF
    assert result.error_code == PfErrorCode.U  # not present, read, user
    assert result.address == hole
    handled, info = plain.handle_exception(0, FIX_SET_RAX, plain.symbol("encl_ssa"))
    assert handled.kind == "eexit"
    assert info["maddr"] == hole and info["errcd"] == PfErrorCode.U
    assert exitinfo_fields(info["exitinfo"])[:2] == (True, Vector.PF)
    resumed = plain.enclave.eresume(plain.tcs[0])
    assert resumed.kind == "eexit"


def test_epcm_write_fault_is_0x8007_and_resumes_after_emodpe(plain):
    data_page = plain.symbol("encl_buffer") + 4096
    assert plain.put(data_page, 0x1234).kind == "eexit"
    enclave = plain.enclave
    assert enclave.restrict_permissions(data_page, 4096, 0x1) == 4096
    result, status = plain.eaccept(data_page, 0x1 | (2 << 8) | 0x20)
    assert result.kind == "eexit" and status == 0
    fault = plain.put(data_page, 0x5678)
    assert fault.aex and fault.vector == Vector.PF
    assert fault.error_code == 0x8007 and fault.address == data_page
    # Fix the EPCM from another TCS (the selftest's way), then ERESUME.
    from plain_ops import OP_EMODPE

    fixed, _ = plain.call(1, OP_EMODPE, data_page, 0x3)
    assert fixed.kind == "eexit"
    assert enclave.eresume(plain.tcs[0]).kind == "eexit"
    result, value = plain.get(data_page)
    assert value == 0x5678


def test_epcm_fault_fixed_by_the_handler_on_the_same_tcs(plain):
    data_page = plain.symbol("encl_buffer") + 4096
    plain.enclave.restrict_permissions(data_page, 4096, 0x1)
    plain.eaccept(data_page, 0x1 | (2 << 8) | 0x20)
    assert plain.put(data_page, 7).error_code == 0x8007
    handled, info = plain.handle_exception(0, FIX_EMODPE, 0x3)
    assert handled.kind == "eexit" and info["errcd"] == 0x8007
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    assert plain.get(data_page)[1] == 7


def test_pte_write_protection_is_a_plain_0x7_fault(plain):
    data_page = plain.symbol("encl_buffer") + 4096
    plain.enclave.mprotect(data_page, 4096, 0x1)
    fault = plain.put(data_page, 1)
    assert fault.aex and fault.error_code == 0x7 and fault.address == data_page
    plain.enclave.mprotect(data_page, 4096, 0x3)
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    assert plain.get(data_page)[1] == 1


def test_rights_taken_from_a_page_reach_a_thread_already_inside(plain):
    """mprotect of ELRANGE while a thread is inside: Linux's TLB shootdown
    interrupts it (an AEX), and its next access to the page walks the new
    page tables: a thread spinning on a page that became PROT_NONE faults
    on it (#PF), however long it has been in, on each path."""
    flag = plain.symbol("encl_flag")
    page = flag & ~4095
    plain.call(0, OP_NOP)
    done: dict[str, object] = {}

    def wait() -> None:
        done["exit"] = plain.call(0, OP_WAIT_FLAG, 42, 1 << 40)[0]

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    deadline = time.monotonic() + 30
    while plain.tcs[0] not in encl.inside:
        assert time.monotonic() < deadline, "the waiter never entered"
        time.sleep(0.01)
    time.sleep(0.1)
    plain.enclave.mprotect(page, 4096, 0)
    waiter.join(30)
    assert not waiter.is_alive(), "the thread inside kept reading a PROT_NONE page"
    fault = done["exit"]
    assert fault.aex and fault.vector == Vector.PF and fault.address == page  # type: ignore[attr-defined]
    plain.enclave.mprotect(page, 4096, 0x3)
    epc = plain.enclave.handle.pages[page].epc
    assert plain.enclave.avm.evm.edbgwr(epc + (flag - page), 42).name == "SUCCESS"
    resumed = plain.enclave.eresume(plain.tcs[0])
    assert resumed.kind == "eexit" and plain.read_op(0, 24, 8) == (1).to_bytes(8, "little")


def test_nssa_frames_bound_nested_exceptions(plain):
    """NSSA = 2: a fault at CSSA 0 and another in the handler at CSSA 1 use
    both frames; a third EENTER on that TCS is #GP (CSSA == NSSA)."""
    first, _ = plain.call(0, OP_DIVIDE, 1, 0)
    assert first.aex
    second, _ = plain.call(0, OP_DIVIDE, 1, 0)  # the handler entry faults too
    assert second.aex
    with pytest.raises(Fault) as raised:
        plain.call(0, OP_NOP)
    assert raised.value.vector == Vector.GP
    # ERESUME restores the newest frame (the handler's DIV, which faults
    # again): CSSA goes back to 1 and up to 2 once more.
    again = plain.enclave.eresume(plain.tcs[0])
    assert again.aex and again.vector == Vector.DE


def test_eresume_with_cssa_zero_is_gp(plain):
    with pytest.raises(Fault) as raised:
        plain.enclave.eresume(plain.tcs[0])
    assert raised.value.vector == Vector.GP


def test_handler_entry_without_an_exception_reports_nothing(plain):
    result, info = plain.handle_exception(0, FIX_NONE)
    assert result.kind == "eexit" and info["exitinfo"] == (1 << 64) - 1


@pytest.mark.parametrize("op", [OP_SYSCALL, OP_CPUID])
def test_instructions_sgx_forbids_are_ud(plain, op, executor):
    from vsgx.evm.native_executor import cpuid_faulting

    if op == OP_CPUID and executor == "native" and not cpuid_faulting():
        pytest.skip("this CPU has no CPUID faulting: native enclave code reads the host's CPUID")
    result, _ = plain.call(0, op)
    assert result.aex and result.vector == Vector.UD and result.exitinfo_valid


def test_int3_is_a_software_bp(plain):
    result, _ = plain.call(0, OP_INT3)
    assert result.aex and result.vector == Vector.BP
    _handled, info = plain.handle_exception(0, FIX_NONE)
    assert exitinfo_fields(info["exitinfo"]) == (True, Vector.BP, ExitType.SOFTWARE)
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"


def test_code_fetch_outside_elrange_is_gp(plain):
    outside = plain.enclave.memory.enclu_site
    result, _ = plain.call(0, OP_BAD_JUMP, outside)
    assert result.aex and result.vector == Vector.GP


def test_fetch_from_a_non_executable_enclave_page_is_an_sgx_pf(plain):
    result, _ = plain.call(0, OP_BAD_JUMP, plain.symbol("encl_buffer"))
    assert result.aex and result.vector == Vector.PF
    assert result.error_code == PfErrorCode.SGX | PfErrorCode.P | PfErrorCode.U | PfErrorCode.I


def test_busy_tcs_cannot_be_entered_twice(plain):
    plain.call(0, OP_DIVIDE, 1, 0)  # leaves TCS 0 at CSSA 1, not busy
    # A TCS is busy only while a thread runs in it; entering an AEXed TCS
    # at CSSA 1 is allowed (that is the exception path).
    result, _ = plain.call(0, OP_NOP)
    assert result.kind == "eexit"


def test_eenter_on_a_page_that_is_not_a_tcs_is_pf(plain):
    with pytest.raises(Fault) as raised:
        plain.enclave.eenter(tcs=plain.symbol("encl_buffer"), rdi=0)
    assert raised.value.vector == Vector.PF


def test_enclave_reads_and_writes_untrusted_memory(plain):
    from plain_ops import OP_COPY

    source = plain.enclave.alloc(8192, b"A" * 5000 + b"B" * 3000)
    target = plain.enclave.alloc(8192)
    result, _ = plain.call(0, OP_COPY, source, target, 8000)
    assert result.kind == "eexit"
    assert plain.enclave.read(target, 8000) == b"A" * 5000 + b"B" * 3000
    # Unmapped untrusted memory is a #PF that reaches the application.
    result, _ = plain.call(0, OP_COPY, 0x1000, target, 8)
    assert result.aex and result.vector == Vector.PF and result.address == 0x1000


def test_read_only_untrusted_page_write_is_pf(plain):
    from plain_ops import OP_PUT_ADDRESS

    site = plain.enclave.memory.enclu_site
    result, _ = plain.call(0, OP_PUT_ADDRESS, 1, site)
    assert result.aex and result.vector == Vector.PF
    assert result.error_code == PfErrorCode.P | PfErrorCode.W | PfErrorCode.U


def test_read_via_rax_on_valid_memory(plain):
    result, words = plain.call(0, OP_READ_VIA_RAX, plain.symbol("encl_buffer"))
    assert result.kind == "eexit" and words[2] == 1  # encl_buffer = {1}


# -- what the channel adds: an entry, an AEX, faults, across an EVM process ----------
def test_entry_and_exit_cross_the_channel(remote_plain):
    test_entry_and_exit_with_arguments_in_registers(remote_plain)


def test_an_aex_and_eresume_cross_the_channel(remote_plain):
    test_division_by_zero_is_reported_with_vector_0_and_resumes(remote_plain)


def test_an_epcm_fault_code_crosses_the_channel(remote_plain):
    test_epcm_write_fault_is_0x8007_and_resumes_after_emodpe(remote_plain)


def test_a_leaf_fault_crosses_the_channel_as_a_fault(remote_plain):
    test_eresume_with_cssa_zero_is_gp(remote_plain)
