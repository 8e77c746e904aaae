"""The native executor's runner as a sandbox, tried as an attacker would.

Enclave code runs in the runner's address space, so it can jump to any
address there with any registers. Every such jump — to each system-call
instruction of the runner's entry section, to its start, into the sealed
set-up code, to the kernel's vsyscall page — with open/read of a canary
file, socket, execve, ptrace, mprotect and munmap of the runner's own
pages, a forged rt_sigreturn frame and more must end as #UD or #GP (or a
lost runner), never as a call that happened. Also: other system-call ABIs
are #UD on both executors, RFLAGS.RF is clear at EEXIT, the runner holds
nothing worth stealing, its filter holds at every boundary, the C and
Python layouts agree, and a silent runner is killed, not waited for.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from vsgx.arch import Fault, Vector
from vsgx.arch.constants import Enclu
from vsgx.errors import VsgxError
from vsgx.evm import native_executor
from vsgx.evm.native_executor import NativeExecutor, native_isolation, native_support
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.runner import layout
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave

from conftest import EXECUTORS, ROOT_SECRET
from plain_ops import (
    ABI_INT80,
    ABI_SYSCALL,
    ABI_SYSENTER,
    FIX_SET_RCX,
    FIX_SET_RIP,
    FIX_SKIP,
    OP_BAD_JUMP,
    OP_DIVIDE,
    OP_GET_ADDRESS,
    OP_JUMP,
    OP_MAKE_SECRET,
    OP_NOP,
    OP_RDTSC,
    OP_RECURSE,
    OP_SECRET_HASH,
    OP_SET_FLAG,
    OP_SHA256,
    OP_SIZE,
    OP_SYSCALL,
    OP_SYSCALL_ABI,
    OP_WAIT_FLAG,
    PlainEnclave,
)

USABLE, WHY = native_support()
native_only = pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")
RF = 1 << 16
SIGSYS = 31


@pytest.fixture
def plain_on(plain_enclave):
    """The plain enclave in an in-process EVM with the given executor."""
    made: list[Avm] = []

    def load(executor: str, **config) -> PlainEnclave:
        vm = EnclaveVM(PlatformConfig(**config), root_secret=ROOT_SECRET, executor=executor)
        avm = Avm(vm)
        made.append(avm)
        return PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))

    yield load
    for avm in made:
        avm.close()


@pytest.fixture
def native_plain(plain_on):
    return lambda **config: plain_on("native", **config)


def fast_entries(runner: NativeExecutor) -> int:
    """How many entries went through the runner alone (its own count)."""
    return struct.unpack_from("<I", runner.report_area, layout.REPORT.offset("fast_entries"))[0]


def runner_of(plain: PlainEnclave, tcs_index: int = 0) -> NativeExecutor:
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    executor = encl.threads[plain.tcs[tcs_index]].executor
    assert isinstance(executor, NativeExecutor)
    return executor


@pytest.fixture
def two_runners(plain_enclave):
    """The plain enclave in an in-process EVM that keeps at most two runners
    alive: (its PlainEnclave, its EnclaveState)."""
    vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor="native",
                   max_live_executors=2)
    avm = Avm(vm)
    try:
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        yield plain, vm.enclave(plain.enclave.handle.secs_page)
    finally:
        avm.close()


# -- what only the native executor has to show ------------------------------------
@native_only
def test_past_the_bound_on_live_executors_idle_runners_close_and_come_back(two_runners):
    """A session cannot start a runner process per TCS page without bound:
    past max_live_executors the idle TCS entered longest ago loses its
    runner, and its next entry gets a new one, with the enclave's state (an
    AEX pending in its SSA) intact."""
    plain, encl = two_runners
    result, _ = plain.call(0, OP_DIVIDE, 100, 0)
    assert result.aex and result.vector == Vector.DE
    first = runner_of(plain, 0)
    for index in (1, 2, 3):
        assert plain.call(index, OP_NOP)[0].kind == "eexit"
        live = [thread.executor for thread in encl.threads.values()
                if not thread.executor.closed]
        assert len(live) <= 2
    assert first.closed and first.process.poll() is not None
    # TCS 0 comes back on a new runner: its handler fixes the divisor in
    # SSA[0] and ERESUME finishes the division.
    handled, _ = plain.handle_exception(0, FIX_SET_RCX, 4)
    assert handled.kind == "eexit" and runner_of(plain, 0) is not first
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    assert plain.read_op(0, 24, 8) == (25).to_bytes(8, "little")
    live = [thread for thread in encl.threads.values() if not thread.executor.closed]
    assert len(live) <= 2


@native_only
def test_a_tcs_entered_straight_through_its_runner_is_not_the_idle_one(two_runners):
    """Entries that go to the runner itself (the in-process AVM's, through
    the TCS's client) never ask the EVM for the thread: the runner's count
    of them still tells the EVM the TCS is in use when it picks a runner
    to close."""
    plain, encl = two_runners
    plain.call(0, OP_NOP)  # through the EVM: TCS 0's runner starts
    assert plain.call(1, OP_NOP)[0].kind == "eexit"  # TCS 1: entered once, then idle
    hot = runner_of(plain, 0)
    for _ in range(20):
        assert plain.call(0, OP_NOP)[0].kind == "eexit"
    assert fast_entries(hot) >= 20  # all of them straight through the runner
    assert plain.call(2, OP_NOP)[0].kind == "eexit"  # a third runner: one closes
    assert not hot.closed
    assert encl.threads[plain.tcs[1]].executor.closed


@native_only
def test_a_tcs_whose_runner_closes_as_idle_again_and_again_keeps_its_fast_path(two_runners):
    """A runner closed as idle after it served entries is not a failed
    attach: the TCS gets the fast path back each time, however often (only
    runners that go away before serving anything count against it)."""
    from vsgx.avm.remote import FAST_ATTACH_TRIES

    plain, _ = two_runners
    counts = plain.enclave.avm.link.fast_counts
    for _ in range(FAST_ATTACH_TRIES + 2):
        for _ in range(3):  # the first through the EVM (a new runner), then straight to it
            assert plain.call(1, OP_NOP)[0].kind == "eexit"
        runner = runner_of(plain, 1)
        before = counts["entries"]
        assert plain.call(1, OP_NOP)[0].kind == "eexit"
        assert counts["entries"] == before + 1  # through the runner itself
        # other TCSs' new runners: TCS 1's, once its entries are old news,
        # is the idle one
        for index in (0, 2, 0, 2):
            assert plain.call(index, OP_NOP)[0].kind == "eexit"
        assert runner.closed


@native_only
def test_a_client_closed_under_its_runner_is_not_attached_again_at_every_entry(two_runners):
    """Enclave code can mark its runner's client closed (the CLIENT area is
    in the runner's process): the TCS's entries then go through the channel
    and the client is asked for again a few times, not at every entry."""
    from vsgx.avm.remote import FAST_ATTACH_TRIES

    plain, _ = two_runners
    counts = plain.enclave.avm.link.fast_counts
    for _ in range(3):
        assert plain.call(1, OP_NOP)[0].kind == "eexit"
    client = runner_of(plain, 1).fast_client
    assert client is not None and client.stats()["entries"]
    client.closed = True
    attached = counts["attached"]
    for _ in range(4 * FAST_ATTACH_TRIES):
        assert plain.call(1, OP_NOP)[0].kind == "eexit"
    assert counts["attached"] - attached <= FAST_ATTACH_TRIES + 1


@native_only
def test_two_threads_on_one_tcs_each_run_their_own_entry(native_plain):
    """Two threads entering the same TCS at once: one of them gets the TCS
    busy (#GP) or waits its turn, and every entry that runs runs with the
    registers its own thread gave it."""
    plain = native_plain()
    enclave, tcs = plain.enclave, plain.tcs[0]
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    cells = {index: enclave.alloc(64) for index in range(2)}
    errors: list[BaseException] = []
    done = Counter()
    # Both keep entering until each has had its turns: a thread may lose
    # every race for a while (the other re-enters as soon as it leaves and
    # holds the GIL in between), and only a switch of the GIL lets it in.
    deadline = time.monotonic() + 30

    def run(index: int) -> None:
        op = enclave.alloc(OP_SIZE)
        value = 0x1000 + index
        try:
            enclave.write(cells[index], struct.pack("<Q", value))
            while min(done[0], done[1]) < 20 and time.monotonic() < deadline:
                enclave.write(op, struct.pack("<4Q", OP_GET_ADDRESS, 0, cells[index], 0))
                try:
                    result = enclave.eenter(tcs=tcs, rdi=op)
                except Fault as fault:
                    assert fault.vector == Vector.GP  # the TCS is busy
                    continue
                assert result.kind == "eexit"
                assert struct.unpack("<2Q", enclave.read(op, 16))[1] == value
                done[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert done[0] >= 20 and done[1] >= 20


@native_only
def test_a_system_call_is_ud_and_the_runner_survives(native_plain):
    plain = native_plain()
    result, _ = plain.call(0, OP_SYSCALL)
    assert result.aex and result.vector == Vector.UD and result.exitinfo_valid
    runner = runner_of(plain, 0)
    assert runner.process.poll() is None
    assert plain.call(1, OP_NOP)[0].kind == "eexit"
    # The refused call did not happen: the runner is still the same process.
    assert runner_of(plain, 0).process.pid == runner.process.pid


@native_only
@pytest.mark.parametrize("op, argument", [(OP_RECURSE, 1 << 20), (OP_BAD_JUMP, 0x1000)])
def test_a_crashing_enclave_ends_as_an_aex(native_plain, op, argument):
    plain = native_plain()
    result, _ = plain.call(0, op, argument)
    assert result.aex and result.vector in (Vector.PF, Vector.GP)
    assert runner_of(plain, 0).process.poll() is None
    assert plain.call(1, OP_NOP)[0].kind == "eexit"


def _spin_in_background(plain: PlainEnclave) -> tuple[threading.Thread, list]:
    outcome: list[BaseException | None] = []

    def spin() -> None:
        try:
            plain.call(0, OP_WAIT_FLAG, 0xDEAD, 1 << 62)  # waits for a flag nobody sets
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=spin)
    thread.start()
    return thread, outcome


@native_only
def test_a_dead_runner_is_an_error_not_a_hang(native_plain):
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    thread, outcome = _spin_in_background(plain)
    time.sleep(0.3)
    os.kill(runner.process.pid, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive(), "the entry hung after its runner died"
    assert outcome and isinstance(outcome[0], VsgxError)
    assert "runner" in str(outcome[0])
    # The TCS gets a new runner (at its next entry); the enclave and the EVM go on.
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    assert runner_of(plain, 0).process.pid != runner.process.pid
    other = native_plain()
    assert other.call(0, OP_NOP)[0].kind == "eexit"


@native_only
def test_a_silent_runner_is_killed_and_replaced(native_plain, monkeypatch):
    monkeypatch.setattr(NativeExecutor, "silence_limit", 3.0)
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    thread, outcome = _spin_in_background(plain)
    time.sleep(0.3)
    os.kill(runner.process.pid, signal.SIGSTOP)  # alive, but answers nothing
    thread.join(60)
    assert not thread.is_alive(), "the EVM waited forever on a silent runner"
    assert outcome and isinstance(outcome[0], VsgxError)
    assert "stopped answering" in str(outcome[0])
    assert runner.process.returncode == -signal.SIGKILL
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    assert runner_of(plain, 0).process.pid != runner.process.pid


def _counting_reports(monkeypatch) -> Counter:
    kinds: Counter = Counter()
    read = NativeExecutor._read_report

    def counting(self: NativeExecutor) -> tuple[int, ...]:
        report = read(self)
        kinds[self.last_report.kind] += 1
        return report

    monkeypatch.setattr(NativeExecutor, "_read_report", counting)
    return kinds


@native_only
@pytest.mark.parametrize("fast", [False, True], ids=["through the EVM", "fast path"])
def test_an_interrupt_that_comes_before_the_first_instruction_loses_nothing(native_plain,
                                                                           monkeypatch, fast):
    # A signal sent while the runner serves commands is blocked; it fires the
    # moment the runner unmasks, before IRETQ: "stopped before entry", with
    # the registers the EVM commanded — the entry then goes on unharmed. On
    # the fast path the runner enters again by itself (it is no interrupt:
    # the EVM did not ask for one).
    monkeypatch.setattr(NativeExecutor, "fast_path_allowed", fast)
    kinds = _counting_reports(monkeypatch)
    plain = native_plain()
    text = plain.symbol("encl_body") - plain.base
    reference = plain.call(0, OP_SHA256, text, 4096, 50)[1][4:8]
    runner = runner_of(plain, 0)
    for _ in range(5):
        os.kill(runner.process.pid, signal.SIGUSR1)
        result, words = plain.call(0, OP_SHA256, text, 4096, 50)
        assert result.kind == "eexit" and words[4:8] == reference
    assert kinds[layout.STOP_BEFORE_ENTRY] >= (0 if fast else 5)
    assert runner_of(plain, 0).process.pid == runner.process.pid
    assert (fast_entries(runner) >= 5) == fast


# -- the fast path: entries the runner makes alone, under EENTER's checks -------------
@native_only
def test_entries_after_the_first_go_through_the_runner_alone(native_plain):
    plain = native_plain()
    assert plain.call(0, OP_NOP)[0].kind == "eexit"  # through the EVM, which grants the TCS
    runner = runner_of(plain, 0)
    before = fast_entries(runner)
    for _ in range(20):
        assert plain.call(0, OP_NOP)[0].kind == "eexit"
    assert fast_entries(runner) - before == 20


@native_only
def test_the_runner_started_at_ecreate_serves_the_first_tcs_entered(native_plain):
    plain = native_plain()
    assert len(plain.tcs) >= 2
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    assert encl.spare_executor is not None  # started with the enclave, before any entry
    assert plain.call(1, OP_NOP)[0].kind == "eexit"
    assert encl.spare_executor is None
    adopted = runner_of(plain, 1)
    assert adopted.tcs == plain.tcs[1] and adopted in adopted.shared.executors
    assert plain.call(0, OP_NOP)[0].kind == "eexit"  # the next TCS starts its own
    other = runner_of(plain, 0)
    assert other is not adopted and other.tcs == plain.tcs[0]
    assert other.process.pid != adopted.process.pid


@native_only
def test_a_spare_runner_goes_with_an_enclave_never_entered(native_plain):
    plain = native_plain()
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    spare = encl.spare_executor
    assert spare is not None
    executor = spare.started()  # the runner it started, still the enclave's
    assert executor is not None and executor.process.poll() is None
    plain.enclave.destroy()
    assert executor.closed and executor.process.poll() is not None


@native_only
def test_the_files_for_a_client_in_another_process_are_sealed(native_plain):
    """vsgx exec's program gets the CLIENT area and the pool: it must not
    shrink them under the EVM's and the runner's mappings (SIGBUS)."""
    plain = native_plain()
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    for fd in runner_of(plain, 0).client_files():
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        assert seals & fcntl.F_SEAL_SEAL
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)


@native_only
def test_the_runner_refuses_a_non_canonical_aep_and_the_evm_makes_it_gp(native_plain):
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    before = fast_entries(runner)
    enclave = plain.enclave
    registers = enclave.entry_registers(plain.tcs[0], {"rdi": 0, "rsi": 1})
    registers[1] = 1 << 63  # RCX: the AEP
    memory = enclave.avm.memory
    with pytest.raises(Fault) as raised:
        enclave.avm.driver.enter(enclave.handle, Enclu.EENTER, registers, memory.return_rip,
                                 memory)
    assert raised.value.vector == Vector.GP
    assert fast_entries(runner) == before
    assert plain.call(0, OP_NOP)[0].kind == "eexit"


@native_only
def test_the_runner_refuses_an_entry_at_cssa_equal_to_nssa(native_plain):
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    before = fast_entries(runner)
    # Two faults fill both SSA frames (NSSA = 2); both entries were the
    # runner's, handed over to the EVM at the fault.
    assert plain.call(0, OP_DIVIDE, 1, 0)[0].aex
    assert plain.call(0, OP_DIVIDE, 1, 0)[0].aex
    assert fast_entries(runner) == before + 2
    with pytest.raises(Fault) as raised:
        plain.call(0, OP_NOP)
    assert raised.value.vector == Vector.GP
    assert fast_entries(runner) == before + 2


@native_only
def test_a_tcs_inside_by_the_fast_path_is_busy(native_plain):
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    before = fast_entries(runner)
    results: dict[str, object] = {}

    def waiter() -> None:
        results["a"] = plain.call(0, OP_WAIT_FLAG, 42, 10**11)

    inside = threading.Thread(target=waiter, daemon=True)
    inside.start()
    deadline = time.monotonic() + 60
    while runner.fast_entry_epoch() is None:
        assert inside.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(Fault) as raised:
        plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=1)
    assert raised.value.vector == Vector.GP
    assert plain.call(1, OP_SET_FLAG, 42)[0].kind == "eexit"
    inside.join(60)
    assert results["a"][0].kind == "eexit"  # type: ignore[index]
    assert fast_entries(runner) == before + 1


@native_only
def test_an_interrupt_storm_changes_no_result(native_plain):
    plain = native_plain()
    text = plain.symbol("encl_body") - plain.base
    reference = plain.call(0, OP_SHA256, text, 4096, 3000)[1][4:8]
    vm, secs = plain.enclave.avm.evm, plain.enclave.handle.secs_page
    done = threading.Event()

    def storm() -> None:
        while not done.is_set():
            vm.kick(secs)
            time.sleep(0.0001)

    thread = threading.Thread(target=storm)
    thread.start()
    try:
        for _ in range(20):
            result, words = plain.call(0, OP_SHA256, text, 4096, 3000)
            assert result.kind == "eexit" and words[4:8] == reference
    finally:
        done.set()
        thread.join()


@native_only
def test_fs_and_gs_bases_survive_an_aex_without_fsgsbase(native_plain, monkeypatch):
    # CPUs without FSGSBASE: the runner reads and sets the bases with
    # arch_prctl (the filter's last rule); here the flag forces that path.
    monkeypatch.setattr(NativeExecutor, "runner_flags", layout.RUNNER_FLAG_NO_FSGSBASE)
    plain = native_plain()
    result, _ = plain.call(0, OP_DIVIDE, 1, 0)
    assert result.aex and result.vector == Vector.DE
    assert not runner_of(plain, 0).features & layout.FEATURE_FSGSBASE
    # The SSA's FS/GS bases are the TCS's OFSBASE/OGSBASE (both encl_tls).
    vm, handle = plain.enclave.avm.evm, plain.enclave.handle
    ssa = plain.symbol("encl_ssa")
    gprsgx = ssa + 4096 - 184
    epc = handle.pages[ssa].epc
    fsbase = vm.edbgrd(epc + (gprsgx % 4096) + 168)[1]
    gsbase = vm.edbgrd(epc + (gprsgx % 4096) + 176)[1]
    assert fsbase == gsbase == plain.symbol("encl_tls")
    handled, _ = plain.handle_exception(0, FIX_SET_RCX, 1)
    assert handled.kind == "eexit"
    resumed = plain.enclave.eresume(plain.tcs[0])
    assert resumed.kind == "eexit"
    assert plain.call(0, OP_DIVIDE, 10, 5)[1][3] == 2


@native_only
@pytest.mark.parametrize("sgx2", [True, False])
def test_rdtsc_follows_the_sgx_version(native_plain, sgx2):
    plain = native_plain(sgx2=sgx2)
    result, words = plain.call(0, OP_RDTSC)
    if sgx2:
        assert result.kind == "eexit" and words[1] > 0
    else:
        assert result.aex and result.vector == Vector.UD


@native_only
def test_epc_plaintext_never_reaches_application_memory(native_plain):
    plain = native_plain()
    assert plain.call(0, OP_MAKE_SECRET)[0].kind == "eexit"
    for index in range(4):
        plain.call(index % len(plain.tcs), OP_SECRET_HASH)
    vm = plain.enclave.avm.evm
    secret_page = plain.symbol("encl_secret")
    epc = plain.enclave.handle.pages[secret_page].epc
    secret = b"".join(vm.edbgrd(epc + (secret_page % 4096) + 8 * i)[1].to_bytes(8, "little")
                      for i in range(4))
    assert len(set(secret)) > 4
    memory = plain.enclave.avm.memory
    for page in memory.mapped_pages():
        assert secret[:16] not in memory.read(page, 4096), f"the secret is in {page:#x}"


# -- the runner holds nothing worth stealing ---------------------------------------
def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _descriptors(pid: int) -> dict[str, str]:
    directory = Path(f"/proc/{pid}/fd")
    return {fd: os.readlink(directory / fd) for fd in os.listdir(directory)}


@native_only
def test_the_runner_has_only_its_page_pool_an_empty_root_and_no_privileges(native_plain):
    plain = native_plain()
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    runner = runner_of(plain, 0)
    pid = runner.process.pid
    descriptors = _descriptors(pid)
    assert list(descriptors) == ["0"] and "vsgx-runner-pool" in descriptors["0"], descriptors
    assert os.readlink(f"/proc/{pid}/root") == str(native_executor.runner_root())
    assert os.listdir(native_executor.runner_root()) == []
    status = _status(pid)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    bits = runner.isolation
    assert bits & layout.ISOLATION_BITS["network namespace"]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    if os.geteuid() == 0:
        assert status["Uid"].split()[0] == "65534" and status["Groups"].strip() == ""
        if shutil.which("setpriv"):
            # Other processes of that uid cannot look inside (not dumpable).
            for path in (f"/proc/{pid}/fd", f"/proc/{pid}/mem", f"/proc/{pid}/maps"):
                peek = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                                       "--clear-groups", "head", "-c", "1", path],
                                      capture_output=True, check=False)
                assert peek.returncode != 0 and b"denied" in peek.stderr, (path, peek)
    # Set-up code and read-only data are sealed away; the COMMAND area is
    # read-only; the kernel's stack and vDSO are gone.
    image = RunnerImage.load()
    maps = Path(f"/proc/{pid}/maps").read_text()
    perms = {int(line.split("-")[0], 16): line.split()[1] for line in maps.splitlines()}
    assert perms[image.entry_address] == "r-xp"
    assert perms[image.setup_address] == "---p"
    assert perms[image.symbols["vsgx_command"]] == "r--s"
    assert perms[image.symbols["vsgx_report"]] == "rw-s"
    assert perms[image.symbols["vsgx_sealed"]] == "r--p"
    assert "[vdso]" not in maps and "[stack]" not in maps
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    executable = [line for line in maps.splitlines() if line.split()[1][2] == "x"
                  and "[vsyscall]" not in line
                  and not encl.in_elrange(int(line.split("-")[0], 16))]
    assert len(executable) == 1, executable  # outside ELRANGE: the entry section only


def _memory_of(pid: int) -> bytes:
    """Everything readable in a process (as root: /proc/PID/mem)."""
    chunks = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start >= 1 << 47:
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


@native_only
@pytest.mark.skipif(os.geteuid() != 0, reason="reads another uid's memory")
def test_the_platform_root_secret_is_nowhere_in_a_runner(plain_enclave):
    secret = os.urandom(32)
    avm = Avm(EnclaveVM(PlatformConfig(), root_secret=secret, executor="native"))
    try:
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        assert plain.call(0, OP_MAKE_SECRET)[0].kind == "eexit"
        assert plain.call(0, OP_SECRET_HASH)[0].kind == "eexit"
        memory = _memory_of(runner_of(plain, 0).process.pid)
        # The scan sees the enclave's memory (its own secret is there)...
        page = plain.symbol("encl_secret")
        epc = plain.enclave.handle.pages[page].epc
        enclave_secret = b"".join(avm.evm.edbgrd(epc + 8 * i)[1].to_bytes(8, "little")
                                  for i in range(4))
        assert enclave_secret in memory
        # ...and not the platform's.
        assert secret not in memory and secret[:16] not in memory
    finally:
        avm.close()


@native_only
def test_the_host_isolation_is_described():
    text = native_isolation()
    assert "seccomp" in text and "page pool" in text
    assert ("no CPUID faulting" in text) != native_executor.cpuid_faulting()


@native_only
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to start the runner as another uid) and setpriv")
def test_a_runner_of_an_unprivileged_evm_gets_a_user_namespace(native_plain, monkeypatch):
    # The runner as uid 65534 (what a non-root EVM's runner is): the
    # namespaces come from a user namespace, and capabilities are dropped.
    # Its files sit where that uid can reach them (pytest's are root's only).
    place = Path(tempfile.mkdtemp(prefix="vsgx-unprivileged-"))
    try:
        place.chmod(0o755)
        binary = place / "runner"
        shutil.copy(native_executor.runner_binary(), binary)
        root = place / "root"
        root.mkdir(mode=0o500)
        os.chown(root, 65534, 65534)
        monkeypatch.setattr(native_executor, "_built", binary)
        monkeypatch.setattr(NativeExecutor, "root_dir", root)
        monkeypatch.setattr(NativeExecutor, "launcher",
                            ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
        plain = native_plain()
        assert plain.call(0, OP_NOP)[0].kind == "eexit"
        runner = runner_of(plain, 0)
        if not runner.isolation & layout.ISOLATION_BITS["user namespace"]:
            pytest.skip("this host refuses unprivileged user namespaces")
        names = layout.describe_isolation(runner.isolation)
        for expected in ("mount namespace", "network namespace", "empty root",
                         "no capabilities"):
            assert expected in names
        pid = runner.process.pid
        status = _status(pid)
        assert int(status["CapEff"], 16) == 0 and status["Seccomp"] == "2"
        assert status["Uid"].split()[0] == "65534"
        assert os.readlink(f"/proc/{pid}/root") == str(root)
        assert list(_descriptors(pid)) == ["0"]
        plain.enclave.avm.close()
    finally:
        shutil.rmtree(place, ignore_errors=True)


# -- jumping into the runner ----------------------------------------------------------
class RunnerImage:
    """Addresses in the runner's ELF (it is not PIE: these are where it runs)."""

    def __init__(self, symbols: dict[str, int], sections: dict[str, tuple[int, bytes]]):
        self.symbols = symbols
        self.entry_address, self.entry = sections[".vsgx_entry"]
        self.setup_address, self.setup = sections[".text"]

    @classmethod
    def load(cls) -> RunnerImage:
        from elftools.elf.elffile import ELFFile

        with open(native_executor.runner_binary(), "rb") as f:
            elf = ELFFile(f)
            symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab")
                       .iter_symbols() if s.name}
            sections = {name: (elf.get_section_by_name(name)["sh_addr"],
                               elf.get_section_by_name(name).data())
                        for name in (".vsgx_entry", ".text")}
        return cls(symbols, sections)

    def byte_sites(self, pattern: bytes, text: str = "entry") -> list[int]:
        """Every place the bytes occur, instruction or not."""
        address, data = ((self.entry_address, self.entry) if text == "entry"
                         else (self.setup_address, self.setup))
        return [address + m.start() for m in re.finditer(re.escape(pattern), data)]

    def disassembled_syscalls(self) -> list[int]:
        out = subprocess.run(["objdump", "-d", "-j", ".vsgx_entry",
                              str(native_executor.runner_binary())],
                             capture_output=True, text=True, check=True).stdout
        return [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):.*\tsyscall", out,
                                                          re.M)]


def _c_string(text: str) -> bytes:
    return text.encode() + b"\0"


class Attack:
    """The untrusted op buffer's tail holds what the system calls point at."""

    def __init__(self, plain: PlainEnclave, tmp_path: Path, image: RunnerImage | None):
        self.op = plain.ops[plain.tcs[0]]
        self.canary = tmp_path / "canary"
        self.canary.write_bytes(b"the platform root secret would be here\n")
        self.created = tmp_path / "created-by-the-enclave"
        tail = bytearray(3072)

        def put(offset: int, data: bytes) -> None:
            tail[offset:offset + len(data)] = data

        put(0, _c_string(str(self.canary)))
        put(256, _c_string(str(self.created)))
        put(384, b"/bin/sh\0")
        put(448, struct.pack("<Q", (1 << 64) - 1))  # a full signal mask
        # A forged rt_sigreturn frame (its ucontext at RSP): resume at the
        # landing (the entry would end as an EEXIT) with every signal blocked.
        frame = bytearray(512)
        mcontext = 40
        struct.pack_into("<Q", frame, mcontext + 16 * 8, plain.symbol("encl_jump_landing"))
        struct.pack_into("<Q", frame, mcontext + 15 * 8, self.op + 2048)  # rsp
        struct.pack_into("<Q", frame, mcontext + 17 * 8, 0x202)  # eflags
        struct.pack_into("<Q", frame, mcontext + 18 * 8, 0x2B << 48 | 0x33)  # ss ... cs
        struct.pack_into("<Q", frame, 296, (1 << 64) - 1)  # uc_sigmask
        put(512, bytes(frame))
        self.tail = bytes(tail)
        at = self.op + 512
        command = image.symbols["vsgx_command"] if image else 0x100000
        setup = image.setup_address if image else 0x101000
        pid = os.getpid()
        # name: (rax, rdi, rsi, rdx, r10, r8, r9, rsp)
        self.calls = {
            "openat the canary": (257, -100, at, 0, 0, 0, 0, 0),
            "openat to create a file": (257, -100, at + 256, 0o101, 0o644, 0, 0, 0),
            "read fd 0 (the page pool)": (0, 0, at + 2048, 64, 0, 0, 0, 0),
            "socket": (41, 2, 1, 0, 0, 0, 0, 0),
            "execve /bin/sh": (59, at + 384, 0, 0, 0, 0, 0, 0),
            "ptrace(TRACEME)": (101, 0, 0, 0, 0, 0, 0, 0),
            "kill(the EVM, 0)": (62, pid, 0, 0, 0, 0, 0, 0),
            "mprotect runner code RWX": (10, setup, 4096, 7, 0, 0, 0, 0),
            "mprotect the command page RW": (10, command, 4096, 3, 0, 0, 0, 0),
            "munmap the command page": (11, command, 4096, 0, 0, 0, 0, 0),
            "mmap a pool page executable": (9, 0x200000000, 4096, 7, 0x100001, 0, 0, 0),
            "block every signal": (14, 0, at + 448, 0, 8, 0, 0, 0),
            "futex wait elsewhere": (202, at + 2048, 0, 0, 0, 0, 0, 0),
            "rt_sigreturn, forged frame": (15, 0, 0, 0, 0, 0, 0, at + 512),
        }

    def attempt(self, plain: PlainEnclave, target: int, registers: tuple[int, ...]) -> str:
        """Jump; then recover (ERESUME at the landing). "aex" or "lost"; on
        the native executor ``self.report`` is the runner's report of the jump."""
        words = [OP_JUMP, target, *(r & (1 << 64) - 1 for r in registers)]
        self.report = None
        try:
            result, _ = plain.call(0, *words, tail=self.tail, tail_at=512)
        except VsgxError as exc:
            assert "runner" in str(exc), exc
            return "lost"
        executor = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page).threads[
            plain.tcs[0]].executor
        self.report = getattr(executor, "last_report", None)
        assert result.aex, f"came back as {result.describe()}"
        assert result.vector in (Vector.UD, Vector.GP), result.describe()
        handled, _ = plain.handle_exception(0, FIX_SET_RIP, plain.symbol("encl_jump_landing"))
        assert handled.kind == "eexit"
        assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
        return "aex"

    def check_nothing_happened(self) -> None:
        assert self.canary.read_bytes() == b"the platform root secret would be here\n"
        assert not self.created.exists()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_jumps_to_every_runner_system_call_instruction_never_make_a_call(plain_on, executor,
                                                                          tmp_path):
    plain = plain_on(executor)
    image = RunnerImage.load() if USABLE else None
    attack = Attack(plain, tmp_path, image)
    if image is not None:
        sites = image.byte_sites(b"\x0f\x05")
        disassembled = image.disassembled_syscalls()
        assert disassembled and set(disassembled) <= set(sites)
    else:
        sites = [0x100000]  # where the runner's code would be
    outcomes: dict[str, int] = {}
    for target in sites:
        for name, registers in attack.calls.items():
            outcome = attack.attempt(plain, target, registers)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if executor == "native":
                report = attack.report
                if outcome == "aex":
                    # Refused by the filter: this exact call, as SIGSYS.
                    assert report.signo == SIGSYS and report.sys_nr == registers[0], \
                        f"{name} at {target:#x}: {report}"
                runner = runner_of(plain)
                assert runner.process.poll() is None
                assert list(_descriptors(runner.process.pid)) == ["0"]
                assert _status(runner.process.pid)["TracerPid"] == "0"
        attack.check_nothing_happened()
    assert outcomes.get("aex", 0) >= len(sites) * len(attack.calls) // 2, outcomes
    assert plain.call(0, OP_NOP)[0].kind == "eexit"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_jumps_into_runner_code_end_as_a_fault(plain_on, executor, tmp_path):
    plain = plain_on(executor)
    image = RunnerImage.load() if USABLE else None
    attack = Attack(plain, tmp_path, image)
    symbols = image.symbols if image else {}
    targets = {
        "the start of the entry section": symbols.get("vsgx_entry_begin", 0x100000),
        "the handler past its check": symbols.get("vsgx_delivered", 0x100400),
        "the not-delivered report": symbols.get("vsgx_not_delivered", 0x100600),
        "the end of set-up": symbols.get("vsgx_finish", 0x100800),
        "the middle of the set-up code": (image.setup_address + len(image.setup) // 2
                                          if image else 0x101800),
        "the vsyscall page": 0xFFFFFFFFFF600000,
        "the vsyscall page's time()": 0xFFFFFFFFFF600400,
    }
    if image is not None:
        for site in image.byte_sites(b"\x0f\x05", "setup")[:4]:
            targets[f"a system call of set-up at {site:#x}"] = site
    for where, target in targets.items():
        for name in ("openat the canary", "execve /bin/sh", "socket"):
            outcome = attack.attempt(plain, target, attack.calls[name])
            assert outcome in ("aex", "lost"), (where, name)
    # Into the command loop: it waits there until the next alarm (a second),
    # which stops it as a fault outside ELRANGE.
    if image is not None:
        assert attack.attempt(plain, symbols["vsgx_serve"],
                              attack.calls["openat the canary"]) in ("aex", "lost")
    attack.check_nothing_happened()
    assert plain.call(0, OP_NOP)[0].kind == "eexit"


SYSENTER_PROBE = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
extern char probe_sysenter[];
static void caught(int sig, siginfo_t *info, void *context)
{
    (void)sig; (void)info;
    ucontext_t *uc = context;
    puts((char *)uc->uc_mcontext.gregs[REG_RIP] == probe_sysenter ? "in place" : "elsewhere");
    exit(0);
}
int main(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = caught;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGILL, &action, NULL);
    sigaction(SIGSEGV, &action, NULL);
    sigaction(SIGBUS, &action, NULL);
    __asm__ volatile(".globl probe_sysenter\nprobe_sysenter: sysenter" ::: "memory");
    puts("returned");
    return 0;
}
"""


def sysenter_faults_in_place(workdir: Path) -> bool:
    """Whether SYSENTER in 64-bit mode faults at its own address here: #UD
    on AMD, #GP where the kernel has no 32-bit entry. Intel's CPU with the
    kernel's 32-bit emulation takes it into the kernel, which returns to a
    landing pad in compatibility mode: the SYSENTER's address is lost."""
    source, binary = workdir / "sysenter_probe.c", workdir / "sysenter_probe"
    source.write_text(SYSENTER_PROBE)
    subprocess.run(["gcc", "-O0", "-o", str(binary), str(source)], check=True)
    probe = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    return probe.stdout.strip() == "in place"


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("abi, label, rax", [(ABI_SYSCALL, "encl_abi_syscall_insn", 39),
                                             (ABI_INT80, "encl_abi_int80_insn", 20),
                                             (ABI_SYSENTER, "encl_abi_sysenter_insn", 20)])
def test_every_system_call_abi_is_ud_inside_an_enclave(plain_on, executor, abi, label, rax,
                                                        tmp_path):
    plain = plain_on(executor)
    result, _ = plain.call(0, OP_SYSCALL_ABI, abi, rax)
    if executor == "native" and abi == ABI_SYSENTER and not sysenter_faults_in_place(tmp_path):
        # Not exact here: enclave code ends up at the kernel's landing pad,
        # outside ELRANGE, which is #GP(0); the runner and the enclave live.
        assert result.aex and result.vector == Vector.GP, result.describe()
        assert runner_of(plain).process.poll() is None
        assert plain.call(1, OP_NOP)[0].kind == "eexit"
        return
    assert result.aex and result.vector == Vector.UD, result.describe()
    handled, info = plain.handle_exception(0, FIX_SKIP, 2)
    assert handled.kind == "eexit"
    assert info["rip"] == plain.symbol(label)
    assert plain.enclave.eresume(plain.tcs[0]).kind == "eexit"
    if executor == "native":
        assert runner_of(plain).process.poll() is None


@pytest.mark.parametrize("executor", EXECUTORS)
def test_rflags_at_eexit_has_no_rf(plain_on, executor):
    plain = plain_on(executor)
    result = plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=1)
    assert result.kind == "eexit" and result.rdi == 0x5EED
    assert result.rflags & RF == 0 and result.rflags & 0x2, hex(result.rflags)


# -- the filter and the layout --------------------------------------------------------
FILTER_HARNESS = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "filter.c"

/* System calls from inside [stub_begin, stub_end], by the 64-bit ABI and
   by int $0x80. */
long stub(long n, long a, long b, long c, long d, long e, long f);
long stub80(long n, long a, long b, long c);
extern char stub_begin[], stub_end[];
__asm__(".text\n.globl stub, stub80, stub_begin, stub_end\nstub_begin:\nstub:\n"
        "mov %rdi, %rax\nmov %rsi, %rdi\nmov %rdx, %rsi\nmov %rcx, %rdx\nmov %r8, %r10\n"
        "mov %r9, %r8\nmov 8(%rsp), %r9\nsyscall\nret\n"
        "stub80:\npush %rbx\nmov %rdi, %rax\nmov %rsi, %rbx\nxchg %rdx, %rcx\n"
        "int $0x80\npop %rbx\nret\nstub_end:\n");

int main(int argc, char **argv)
{
    struct filter_params p = {0};
    uint64_t v[14];
    if (argc != 15)
        return 2;
    for (int i = 0; i < 14; i++)
        v[i] = strtoull(argv[i + 1], 0, 0);
    p.ip_begin = (uint64_t)stub_begin;
    p.ip_end = (uint64_t)stub_end;
    p.enclave_begin = v[0], p.enclave_end = v[1], p.image_begin = v[2], p.image_end = v[3];
    p.wait_word = v[4], p.report_word = v[5], p.reply_word = v[6], p.futex_timeout = v[7];
    p.mask_slot = v[8], p.empty_mask = v[9], p.base_slot = v[10], p.pool_fd = v[11];
    p.pool_size = v[12], p.fsgsbase = (int)v[13];
    static struct sock_filter code[FILTER_MAX];
    int n = build_filter(&p, code);
    if (n < 0)
        return 3;
    struct sock_fprog prog = {(uint16_t)n, code};
    char how[16];
    unsigned long long a[7];
    setvbuf(stdout, 0, _IOLBF, 0);
    while (scanf("%15s %llx %llx %llx %llx %llx %llx %llx", how, &a[0], &a[1], &a[2], &a[3],
                 &a[4], &a[5], &a[6]) == 8) {
        pid_t pid = fork();
        if (pid == 0) {
            struct rlimit none = {0, 0};
            setrlimit(RLIMIT_CORE, &none);
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if (syscall(SYS_seccomp, 1, 0, &prog) != 0)
                _exit(4);
            if (how[0] == 's')
                stub((long)a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
            else if (how[0] == 'i')
                stub80((long)a[0], a[1], a[2], a[3]);
            else
                syscall((long)a[0], a[1], a[2], a[3], a[4], a[5], a[6]); /* from libc */
            stub(231, 0, 0, 0, 0, 0, 0);
            _exit(5);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)
            puts("trapped");
        else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            puts("allowed");
        else
            printf("broken %d\n", status);
    }
    return 0;
}
"""

# A fake runner far from the harness's own memory; ELRANGE's low word is
# near 2^32 so that sums carry, and it spans 4 GiB boundaries.
_P = {"enclave_begin": 0x7E12FFF00000, "enclave_end": 0x7E15FFF00000 + 0x100000,
      "image_begin": 0x7D0000100000, "image_end": 0x7D0000143000,
      "wait_word": 0x7D0000139000, "report_word": 0x7D0000142000,
      "reply_word": 0x7D0000140010,
      "futex_timeout": 0x7D0000138008, "mask_slot": 0x7D0000137088,
      "empty_mask": 0x7D0000138000, "base_slot": 0x7D0000137090, "pool_fd": 0,
      "pool_size": layout.POOL_SLOTS * 4096}
_U64 = (1 << 64) - 1


def _policy(nr: int, a: list[int], fsgsbase: bool) -> bool:
    """The filter's policy, stated independently of filter.c."""
    p = _P
    begin, end = p["enclave_begin"], p["enclave_end"]
    low = 0xFFFFFFFF
    if nr == 202:  # futex: the op is an int
        if a[1] & low == 0:
            return a[0] == p["wait_word"] and a[3] == p["futex_timeout"]
        return a[1] & low == 1 and a[0] in (p["report_word"], p["reply_word"])
    if nr == 10:
        return (a[2] & ~7 == 0 and begin <= a[0] < end and a[1] <= end - begin
                and a[0] + a[1] <= end)
    if nr == 9:
        return (a[1] == 4096 and a[2] in (1, 3) and a[3] == 0x100001 and a[4] == p["pool_fd"]
                and a[5] % 4096 == 0 and a[5] < p["pool_size"])
    if nr == 11:
        outside = a[0] + 4096 <= begin or a[0] >= end
        not_image = a[0] + 4096 <= p["image_begin"] or a[0] >= p["image_end"]
        return a[1] == 4096 and outside and not_image
    if nr == 14:
        if a[3] != 8:
            return False
        if a[1] == 0:
            return a[2] == p["mask_slot"]
        return a[1] == p["empty_mask"] and a[2] == 0
    if nr == 158 and not fsgsbase:
        code = a[0] & low
        return code in (0x1001, 0x1002) or (code in (0x1003, 0x1004) and a[1] == p["base_slot"])
    return nr in (24, 110, 231)


def _filter_cases() -> list[tuple[str, int, list[int]]]:
    p = _P
    begin, end = p["enclave_begin"], p["enclave_end"]
    size = end - begin
    cases: list[tuple[str, int, list[int]]] = []
    addresses = [begin - 4096, begin - 1, begin, begin + 1, begin + 4096, end - 4096, end - 1,
                 end, end + 4096, begin + (1 << 32), begin - (1 << 32), begin | 1 << 63,
                 begin & 0xFFFFFFFF, end + (1 << 32), 0]
    lengths = [0, 1, 4096, size, size - 4096, size + 1, 1 << 32, (1 << 32) + 4096,
               _U64 - 4095, _U64, 1 << 63, 0x100000, 0x100001]
    for address in addresses:
        for length in lengths:
            for prot in (0, 7):
                cases.append(("s", 10, [address, length, prot, 0, 0, 0]))
        cases.append(("s", 10, [address, 4096, 8, 0, 0, 0]))
        cases.append(("s", 10, [address, 4096, 1 << 32 | 1, 0, 0, 0]))
    for address in (begin, end - 4096):
        cases.append(("s", 10, [address, end - address, 3, 0, 0, 0]))
        cases.append(("s", 10, [address, end - address + 1, 3, 0, 0, 0]))
    image = [p["image_begin"] - 4096, p["image_begin"] - 1, p["image_begin"],
             p["image_end"] - 4096, p["image_end"], p["wait_word"], 0x10000]
    for address in [*addresses, *image]:
        for length in (4096, 8192, 0, 4096 | 1 << 32):
            cases.append(("s", 11, [address, length, 0, 0, 0, 0]))
    for length in (4096, 8192, 4096 | 1 << 32):
        for prot in (1, 3, 5, 7, 0, 1 | 1 << 32):
            for flags in (0x100001, 0x11, 0x100002, 0x100001 | 1 << 32):
                cases.append(("s", 9, [0x200000000, length, prot, flags, 0, 0]))
    for fd in (0, 3, 1 << 32):
        for offset in (0, 4096, 4095, p["pool_size"] - 4096, p["pool_size"], 1 << 32):
            cases.append(("s", 9, [0x200000000, 4096, 3, 0x100001, fd, offset]))
    for uaddr in (p["wait_word"], p["wait_word"] + 4, p["report_word"],
                  p["report_word"] | 1 << 32, p["wait_word"] | 1 << 40, p["reply_word"],
                  p["reply_word"] - 4, p["reply_word"] | 1 << 32):
        for op in (0, 1, 128, 129, 9, 1 << 32, 1 << 32 | 1):
            for timeout in (p["futex_timeout"], 0, p["futex_timeout"] + 8):
                cases.append(("s", 202, [uaddr, op, 12345, timeout, 0, 0]))
    for how in (0, 1, 2):
        for new in (0, p["empty_mask"], p["empty_mask"] + 8, p["mask_slot"]):
            for old in (0, p["mask_slot"], p["mask_slot"] + 8):
                for setsize in (8, 16):
                    cases.append(("s", 14, [how, new, old, setsize, 0, 0]))
    for code in (0x1001, 0x1002, 0x1003, 0x1004, 0x1012, 0x1001 | 1 << 32):
        for pointer in (p["base_slot"], p["base_slot"] + 8):
            cases.append(("s", 158, [code, pointer, 0, 0, 0, 0]))
    for nr in (110, 231, 0, 1, 2, 15, 39, 56, 57, 59, 62, 101, 257, 272, 317, 322, 435,
               110 | 0x40000000, 231 | 0x40000000, 1 << 32 | 110):
        cases.append(("s", nr, [0, 0, 0, 0, 0, 0]))
    # Another ABI, and the right call from the wrong place: always trapped.
    cases.append(("i", 20, [0, 0, 0, 0, 0, 0]))
    cases.append(("i", 252, [0, 0, 0, 0, 0, 0]))
    cases.append(("l", 110, [0, 0, 0, 0, 0, 0]))
    cases.append(("l", 14, [0, 0, p["mask_slot"], 8, 0, 0]))
    return cases


@native_only
@pytest.mark.parametrize("fsgsbase", [True, False])
def test_the_seccomp_filter_holds_at_every_boundary(tmp_path, fsgsbase):
    harness = tmp_path / "harness"
    (tmp_path / "harness.c").write_text(FILTER_HARNESS)
    subprocess.run(["cc", "-O1", "-I", str(native_executor.RUNNER_DIR), "-o", str(harness),
                    str(tmp_path / "harness.c")], check=True)
    params = [str(v) for v in _P.values()] + [str(int(fsgsbase))]
    cases = _filter_cases()
    lines = "".join(f"{how} {nr & _U64:x} " + " ".join(f"{v & _U64:x}" for v in args) + "\n"
                    for how, nr, args in cases)
    out = subprocess.run([str(harness), *params], input=lines, capture_output=True, text=True,
                         check=True, timeout=600).stdout.split("\n")
    assert len(out) >= len(cases)
    wrong = []
    for (how, nr, args), got in zip(cases, out, strict=False):
        # Filter and kernel both read the number as an int (its low word).
        number = nr & 0xFFFFFFFF
        expected = "allowed" if how == "s" and _policy(
            number, [v & _U64 for v in args], fsgsbase) else "trapped"
        if got != expected:
            wrong.append(f"{how} nr={nr & _U64:#x} args={[hex(v & _U64) for v in args]}: {got}")
    assert not wrong, "\n".join(wrong[:20])
    assert out.count("allowed") > 40 and out.count("trapped") > 200


@native_only
def test_the_c_layout_matches_the_python_table(tmp_path):
    (tmp_path / "vsgx_layout.h").write_text(layout.c_header())
    lines = ['#include <stdio.h>', '#include "vsgx_layout.h"', "int main(void) {"]
    for area in (layout.REPORT, layout.COMMAND):
        lines.append(f'printf("{area.c_name} size %zu\\n", sizeof(struct {area.c_name}));')
        for field in area.fields:
            lines.append(f'printf("{area.c_name} {field.name} %zu %zu\\n", '
                         f"offsetof(struct {area.c_name}, {field.name}), "
                         f"sizeof(((struct {area.c_name} *)0)->{field.name}));")
    lines.append("return 0; }")
    (tmp_path / "probe.c").write_text("\n".join(lines))
    subprocess.run(["cc", "-I", str(tmp_path), "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True)
    printed = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    expected = []
    for area in (layout.REPORT, layout.COMMAND):
        expected.append(f"{area.c_name} size {area.size}")
        expected += [f"{area.c_name} {f.name} {f.offset} {f.size}" for f in area.fields]
    assert printed[:len(expected)] == expected
    # The Python side reads what the C side writes at those offsets.
    assert layout.REPORT_HEAD.size == layout.REPORT.end("sys_arch")
    assert layout.REPORT_STOP.size == layout.REPORT.end("regs")
    assert layout.REPORT.offset("regs") + layout.REGISTERS.size == layout.REPORT.end("regs")


@native_only
def test_the_runner_cache_key_covers_the_generated_header():
    compiler = native_executor.runner_compiler()
    header = layout.c_header()
    other = header.replace("VSGX_MAX_OPS 1000", "VSGX_MAX_OPS 999")
    assert other != header
    assert native_executor.runner_key(header, compiler) != native_executor.runner_key(
        other, compiler)
    key = native_executor.runner_key(header, compiler)
    assert native_executor.runner_binary().name == f"runner-{key}"
