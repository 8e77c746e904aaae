"""Fast-exit mode (vsgx.evm.fast_exits): after EINIT, each EEXIT site's
`mov $4, %eax` becomes a jump to the runner's exit gate (or, out of its
reach, its ENCLU becomes INT3 + NOP), carried out as the EEXIT it replaced
— on both executors through the EVM, and by the native runner alone, with
no trap, on the fast path. Measured as the original bytes; everything but
the code bytes at the sites behaves as before."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time

import pytest

from vsgx.arch import Vector
from vsgx.evm import vm as vm_module
from vsgx.evm.fast_exits import REWRITTEN_ENCLU, ExitSite, find_exit_sites
from vsgx.evm.native_executor import NativeExecutor, native_support
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.runner import layout
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave

from conftest import EXECUTORS, ROOT_SECRET
from plain_ops import FIX_SET_RIP, OP_INT3, OP_JUMP, OP_NOP, OP_TOUCH, PlainEnclave

USABLE, WHY = native_support()


@pytest.fixture
def load_plain(plain_enclave, monkeypatch):
    made: list[Avm] = []

    def load(executor: str, fast_exits: bool, gate: bool = True
             ) -> tuple[EnclaveVM, PlainEnclave]:
        vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor=executor,
                       fast_exits=fast_exits)
        avm = Avm(vm)
        made.append(avm)
        with monkeypatch.context() as patch:
            if not gate:  # as for an enclave whose page below ELRANGE cannot be mapped
                patch.setattr(vm_module, "exit_gate_address", lambda base: 0)
            plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        return vm, plain

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
    # The plain enclave's two EEXITs (bootstrap.S): `mov $4, %eax` then
    # ENCLU (the ops), and `mov $4, %rax` then ENCLU (the register ABI), in
    # reach of the gate just below ELRANGE: jumps to its first two entries.
    assert not fast_state.exit_sites  # none left to INT3
    gate = fast_state.exit_gate
    assert gate == fast_state.base - 4096
    assert sorted(fast_state.exit_gates) == [gate, gate + layout.GATE_ENTRY_SIZE]
    sites = [fast_state.exit_gates[gate], fast_state.exit_gates[gate + layout.GATE_ENTRY_SIZE]]
    for entry, site, lead, filler in ((gate, sites[0], b"\xb8\x04\x00\x00\x00", b""),
                                      (gate + layout.GATE_ENTRY_SIZE, sites[1],
                                       b"\x48\xc7\xc0\x04\x00\x00\x00", b"\x66\x90")):
        start = site - len(lead)
        jump = b"\xe9" + (entry - (start + 5)).to_bytes(4, "little", signed=True) + filler
        assert code(fast_vm, fast, start, len(lead) + 3) == jump + b"\x0f\x01\xd7"
        assert code(exact_vm, exact, start, len(lead) + 3) == lead + b"\x0f\x01\xd7"
    assert find_exit_sites(exact_state) == sites  # the same sites in the exact enclave
    for plain in (exact, fast):
        for value in (7, 1 << 40):
            result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=value, rdx=1)
            assert result.kind == "eexit" and result.registers["rdi"] == 0x5eed
            assert result.registers["rsi"] == 2 * value + 1
            assert result.registers["rip"] == result.registers["rbx"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_out_of_the_gates_reach_the_enclu_becomes_int3(load_plain, executor):
    vm, plain = load_plain(executor, True, gate=False)
    state = state_of(vm, plain)
    assert not state.exit_gate and not state.exit_gates
    ops_site, register_site = sorted(state.exit_sites)
    assert code(vm, plain, ops_site - 5, 8) == b"\xb8\x04\x00\x00\x00" + REWRITTEN_ENCLU
    assert code(vm, plain, register_site - 7, 10) == b"\x48\xc7\xc0\x04\0\0\0" + REWRITTEN_ENCLU
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    for value in (7, 1 << 40):
        result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=value, rdx=1)
        assert result.kind == "eexit" and result.registers["rsi"] == 2 * value + 1
        assert result.registers["rdi"] == 0x5eed


def test_a_jump_reaches_two_gibibytes_each_way():
    entry = 0x7000_0000_0000
    near = ExitSite(enclu=entry + 4096 + 5, lead=5)
    jump = near.jump_to(entry)
    assert jump is not None and jump[0] == 0xE9
    assert int.from_bytes(jump[1:5], "little", signed=True) == entry - (near.enclu - 5 + 5)
    seven = ExitSite(enclu=entry + 4096 + 7, lead=7).jump_to(entry)
    assert seven is not None and len(seven) == 7 and seven[5:] == b"\x66\x90"
    # rel32 counts from the end of the five-byte jump, which is the ENCLU
    assert ExitSite(enclu=entry + (1 << 31), lead=5).jump_to(entry) is not None
    assert ExitSite(enclu=entry + (1 << 31) + 1, lead=5).jump_to(entry) is None
    assert ExitSite(enclu=entry - (1 << 31) + 1, lead=5).jump_to(entry) is not None
    assert ExitSite(enclu=entry - (1 << 31), lead=5).jump_to(entry) is None


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
            else min(state_of(vm, plain).exit_gates.values())
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


def _counter(runner: NativeExecutor, name: str) -> int:
    return struct.unpack_from("<I", runner.report_area, layout.REPORT.offset(name))[0]


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
@pytest.mark.parametrize("gate", [True, False], ids=["gate", "int3"])
def test_the_runner_completes_the_rewritten_eexit_alone(load_plain, gate):
    vm, plain = load_plain("native", True, gate=gate)
    assert plain.call(0, OP_NOP)[0].kind == "eexit"  # through the EVM, which grants
    runner = _runner(vm, plain)
    assert bool(runner.features & layout.FEATURE_EXIT_GATE) == gate
    sites = struct.unpack_from(f"<I{layout.MAX_EXIT_SITES}Q", runner.command_area,
                               layout.COMMAND.offset("exit_site_count"))
    assert sites[0] == (0 if gate else 2)
    before, gate_before = _counter(runner, "fast_entries"), _counter(runner, "gate_exits")
    for n in range(10):  # through both sites: the ops' and the register ABI's
        result, _ = plain.call(0, OP_NOP)
        assert result.kind == "eexit", result.describe()
        result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=n, rdx=1, r8=2, r9=3)
        assert result.kind == "eexit" and result.registers["rsi"] == 2 * n + 6
        assert result.registers["rdx"] == result.registers["r8"] == 0  # cleared at the exit
        assert _counter(runner, "fast_handed_over") == 0, n
    assert _counter(runner, "fast_entries") - before == 20
    assert _counter(runner, "gate_exits") - gate_before == (20 if gate else 0)


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_through_the_evm_the_gate_is_a_stop_carried_out_as_eexit(load_plain, monkeypatch):
    monkeypatch.setattr(NativeExecutor, "fast_path_allowed", False)
    vm, plain = load_plain("native", True)
    for value in range(5):
        result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=value, rdx=1)
        assert result.kind == "eexit" and result.registers["rsi"] == 2 * value + 1
        assert result.registers["rip"] == result.registers["rbx"]
    runner = _runner(vm, plain)
    assert _counter(runner, "fast_entries") == _counter(runner, "gate_exits") == 0
    assert runner.last_report.kind == layout.STOP_GATE


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_after_a_gate_exit_the_idle_runner_takes_alarms_kicks_and_commands(load_plain):
    """Past the gate the runner waits with no signal blocked: its alarm
    and the EVM's kicks land there and change nothing; a command of the
    EVM (an entry through it) traps back into handler context first."""
    vm, plain = load_plain("native", True)
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    runner = _runner(vm, plain)
    gate_before = _counter(runner, "gate_exits")
    for round_ in range(3):
        result, _ = plain.call(0, OP_NOP)
        assert result.kind == "eexit", (round_, result.describe())
        time.sleep(1.2)  # the runner's once-a-second alarm, while it waits
        runner.request_stop(interrupt=True)  # a kick with nobody inside
        time.sleep(0.05)
        runner.revoke()  # the next entry goes through the EVM (RUN)
        through = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=round_, rdx=1)
        assert through.kind == "eexit" and through.registers["rsi"] == 2 * round_ + 1
    assert _counter(runner, "gate_exits") - gate_before >= 3
    assert runner.process.poll() is None
    result, _ = plain.call(0, OP_NOP)
    assert result.kind == "eexit"


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_kicks_while_the_runner_unmaps_dropped_slots_lose_nothing(load_plain):
    """After a gate exit the runner takes the next request with no signal
    blocked, and unmaps the client slots dropped since first: a kick in the
    middle refuses the request, and the entry through the EVM that follows
    still finds every page as the application has it (no slot left mapped
    stale, none recorded as mapped that is not)."""
    vm, plain = load_plain("native", True)
    enclave = plain.enclave
    pages = 200
    buffer = enclave.alloc(pages * 4096)
    plain.call(0, OP_NOP)
    pid = _runner(vm, plain).process.pid
    stop = threading.Event()

    def kick() -> None:
        while not stop.is_set():
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                return
            time.sleep(0.0002)

    kicker = threading.Thread(target=kick, daemon=True)
    kicker.start()
    try:
        for value in range(1, 60):
            for i in range(pages):
                enclave.write(buffer + i * 4096, value.to_bytes(8, "little"))
            result, words = plain.call(0, OP_TOUCH, buffer, pages)
            assert result.kind == "eexit", (value, result.describe())
            assert words[3] == value * pages, value
    finally:
        stop.set()
        kicker.join()


@pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
def test_sdk_calls_ocalls_and_exceptions_with_fast_exits(sdk_enclave):
    from test_sdk import Hello

    vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor="native",
                   fast_exits=True)
    avm = Avm(vm)
    hello = Hello(sdk_enclave.signed, evm=avm)
    try:
        assert len(vm.enclave(hello.raw.handle.secs_page).exit_gates) >= 1
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


@pytest.mark.parametrize("executor", EXECUTORS)
def test_enclave_code_that_jumps_to_the_gate_itself_exits_or_faults(load_plain, executor):
    """Hostile or odd enclave code aiming at the gate: an entry in use is
    the EEXIT it stands for (whatever RAX held); an entry no site uses is
    a code fetch outside ELRANGE, #GP(0), and the enclave goes on."""
    vm, plain = load_plain(executor, True)
    gate = state_of(vm, plain).exit_gate
    registers = (99, 0, 0, 0, 0, 0, 0, 0)  # rax rdi rsi rdx r10 r8 r9 rsp(keep)
    result, _ = plain.call(0, OP_JUMP, gate, *registers, tail_at=512)
    assert result.kind == "eexit" and result.registers["rax"] == 4, result.describe()
    unused = gate + 5 * layout.GATE_ENTRY_SIZE
    result, _ = plain.call(0, OP_JUMP, unused, *registers, tail_at=512)
    assert result.aex and result.vector == Vector.GP, result.describe()
    handled, info = plain.handle_exception(0, FIX_SET_RIP, plain.symbol("encl_jump_landing"))
    assert handled.kind == "eexit" and info["rip"] == unused
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
