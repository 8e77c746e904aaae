"""Fast-exit mode (vsgx.evm.fast_exits): after EINIT, each EEXIT site's
ENCLU is rewritten into INT3 + NOP, and that INT3 is carried out as the
ENCLU it replaced — on both executors through the EVM, and by the native
runner alone on the fast path. Measured as the original bytes; everything
but the code bytes at the sites behaves as before."""

from __future__ import annotations

import struct

import pytest

from vsgx.arch import Vector
from vsgx.evm.fast_exits import REWRITTEN_ENCLU, find_exit_sites
from vsgx.evm.native_executor import NativeExecutor, native_support
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.runner import layout
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave

from conftest import EXECUTORS, ROOT_SECRET
from plain_ops import FIX_SET_RIP, OP_INT3, OP_JUMP, OP_NOP, PlainEnclave

USABLE, WHY = native_support()


@pytest.fixture
def load_plain(plain_enclave):
    made: list[Avm] = []

    def load(executor: str, fast_exits: bool) -> tuple[EnclaveVM, PlainEnclave]:
        vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor=executor,
                       fast_exits=fast_exits)
        avm = Avm(vm)
        made.append(avm)
        return vm, PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))

    yield load
    for avm in made:
        avm.close()


def state_of(vm: EnclaveVM, plain: PlainEnclave):
    return vm.enclave(plain.enclave.handle.secs_page)


def code(vm: EnclaveVM, plain: PlainEnclave, address: int, length: int) -> bytes:
    encl = state_of(vm, plain)
    offset = address - encl.base
    return bytes(encl.memory.view[offset:offset + length])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_eexit_site_is_rewritten_after_einit_and_measured_as_it_was(load_plain, executor):
    exact_vm, exact = load_plain(executor, False)
    fast_vm, fast = load_plain(executor, True)
    exact_state, fast_state = state_of(exact_vm, exact), state_of(fast_vm, fast)
    assert fast_state.mrenclave == exact_state.mrenclave  # EINIT saw the original bytes
    assert not exact_state.exit_sites
    sites = sorted(fast_state.exit_sites)
    # The plain enclave's one EEXIT: `mov $4, %eax` then ENCLU (bootstrap.S).
    assert len(sites) == 1
    site = sites[0]
    assert code(fast_vm, fast, site - 5, 8) == b"\xb8\x04\x00\x00\x00" + REWRITTEN_ENCLU
    assert code(exact_vm, exact, site - 5, 8) == b"\xb8\x04\x00\x00\x00\x0f\x01\xd7"
    assert find_exit_sites(exact_state) == sites  # the same site in the exact enclave
    for plain in (exact, fast):
        for value in (7, 1 << 40):
            result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=value, rdx=1)
            assert result.kind == "eexit" and result.registers["rdi"] == 0x5eed
            assert result.registers["rsi"] == 2 * value + 1
            assert result.registers["rip"] == result.registers["rbx"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_enclaves_own_int3_is_still_a_breakpoint(load_plain, executor):
    _, plain = load_plain(executor, True)
    result, _ = plain.call(0, OP_INT3)
    assert result.aex and result.vector == Vector.BP


@pytest.mark.parametrize("executor", EXECUTORS)
def test_another_leaf_at_a_rewritten_site_faults_as_the_enclu_did(load_plain, executor):
    """A jump to the site with RAX = 99: ENCLU with a leaf that does not
    exist is #GP(0) at the ENCLU, with or without the rewrite."""
    outcomes = []
    for fast_exits in (False, True):
        vm, plain = load_plain(executor, fast_exits)
        site = find_exit_sites(state_of(vm, plain))[0] if not fast_exits \
            else min(state_of(vm, plain).exit_sites)
        registers = (99, 0, 0, 0, 0, 0, 0, 0)  # rax rdi rsi rdx r10 r8 r9 rsp(keep)
        result, _ = plain.call(0, OP_JUMP, site, *registers, tail_at=512)
        assert result.aex, result.describe()
        handled, info = plain.handle_exception(0, FIX_SET_RIP, plain.symbol("encl_jump_landing"))
        assert handled.kind == "eexit"
        outcomes.append((result.vector, info["rip"] - site))  # the SSA's RIP: at the ENCLU
        assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
        assert plain.call(0, OP_NOP)[0].kind == "eexit"
    assert outcomes[0] == outcomes[1] == (Vector.GP, 0)


def _runner(vm: EnclaveVM, plain: PlainEnclave, index: int = 0) -> NativeExecutor:
    executor = state_of(vm, plain).threads[plain.tcs[index]].executor  # type: ignore[attr-defined]
    assert isinstance(executor, NativeExecutor)
    return executor


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_the_runner_completes_the_rewritten_eexit_alone(load_plain):
    vm, plain = load_plain("native", True)
    assert plain.call(0, OP_NOP)[0].kind == "eexit"  # through the EVM, which grants
    runner = _runner(vm, plain)
    sites = struct.unpack_from(f"<I{layout.MAX_EXIT_SITES}Q", runner.command_area,
                               layout.COMMAND.offset("exit_site_count"))
    assert sites[0] == 1 and sites[1] == min(state_of(vm, plain).exit_sites)
    fast_entries = layout.REPORT.offset("fast_entries")
    before = struct.unpack_from("<I", runner.report_area, fast_entries)[0]
    handed_over = layout.REPORT.offset("fast_handed_over")
    for n in range(20):
        result, _ = plain.call(0, OP_NOP)
        assert result.kind == "eexit", result.describe()
        assert struct.unpack_from("<I", runner.report_area, handed_over)[0] == 0, n
    assert struct.unpack_from("<I", runner.report_area, fast_entries)[0] - before == 20


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_sdk_calls_ocalls_and_exceptions_with_fast_exits(sdk_enclave):
    from test_sdk import Hello

    vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor="native",
                   fast_exits=True)
    avm = Avm(vm)
    hello = Hello(sdk_enclave.signed, evm=avm)
    try:
        assert len(vm.enclave(hello.raw.handle.secs_page).exit_sites) >= 1
        assert hello.ecall_hello("world") == 37
        assert hello.ecall_add(2, 40) == 42
        assert hello.ecall_ocall_nop(25) == 25
        assert hello.ecall_call_back(21) == 43
        length, sealed = hello.ecall_seal(b"fast exits", None, None, 256)
        assert hello.ecall_unseal(sealed[:length], None, None, 64)[0] == 10
        for kind, expected in ((1, 1_000_001), (2, 1_000_222), (3, 1_024_589)):
            assert hello.ecall_fault(kind) == expected
    finally:
        hello.destroy()
        avm.close()
