"""The fast path of an AVM whose EVM is on this host: after an entry through
the channel made a TCS's runner, the AVM asks for the runner's client and
enters the runner itself; the EVM still grants and revokes, and whatever the
runner cannot finish alone goes back over the channel (handed over,
refused). Each test runs against an EVM process on a Unix socket (the
runner's CLIENT area and page pool, claimed on the side socket with a
one-time token) and against an EVM in this process (the EVM's own client of
the TCS, handed across the in-memory channel)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import pytest

from vsgx.arch.constants import Vector
from vsgx.arch.errors import Fault
from vsgx.avm.remote import connect_evm
from vsgx.channel import EvidencePolicy
from vsgx.errors import VsgxError
from vsgx.evm import EnclaveVM, native_support
from vsgx.host import Avm, Enclave

from plain_ops import (
    OP_DIVIDE,
    OP_NOP,
    OP_SET_FLAG,
    OP_TOUCH,
    OP_WAIT_FLAG,
    PlainEnclave,
)

USABLE, WHY = native_support()
pytestmark = pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")


@pytest.fixture(params=["unix", "in-process"])
def unix_avm(request, evm_processes):
    """An AVM of a native EVM on this host: a process on a Unix socket, or
    an EnclaveVM in this process."""
    if request.param == "unix":
        avm = Avm(connect_evm(evm_processes("unix", "native"),
                              EvidencePolicy(allow_unprotected=True), warn=False))
    else:
        avm = Avm(EnclaveVM(root_secret=bytes(32), executor="native"))
    yield avm
    avm.close()


@pytest.fixture
def remote_native(plain_enclave, unix_avm):
    enclave = Enclave.load(plain_enclave.signed, evm=unix_avm)
    yield PlainEnclave(enclave)
    enclave.destroy()


def counts(plain: PlainEnclave) -> dict[str, int]:
    return dict(plain.enclave.avm.link.fast_counts)


def test_entries_after_the_first_go_straight_to_the_runner(remote_native):
    plain = remote_native
    assert plain.call(0, OP_NOP)[0].kind == "eexit"  # through the channel: the runner starts
    before = counts(plain)
    assert before["attached"] >= 1
    for _ in range(20):
        assert plain.call(0, OP_NOP)[0].kind == "eexit"
    after = counts(plain)
    assert after["entries"] - before["entries"] == 20
    assert after["refused"] == before["refused"]


def test_the_enclave_sees_and_changes_the_applications_pages(remote_native):
    plain = remote_native
    enclave = plain.enclave
    slot = enclave.alloc(4096)
    plain.call(0, OP_NOP)
    before = counts(plain)
    for value in (0x1111, 0x2222, 0x3333):
        # the AVM's write between entries reaches the next one
        enclave.write(slot, value.to_bytes(8, "little"))
        result, got = plain.get(slot)
        assert result.kind == "eexit" and got == value
        # and the enclave's write is the AVM's once the entry returned
        assert plain.put(slot + 8, value + 1).kind == "eexit"
        assert int.from_bytes(enclave.read(slot + 8, 8), "little") == value + 1
    assert counts(plain)["entries"] - before["entries"] == 6


def test_pages_an_entry_no_longer_keeps_are_read_afresh_at_the_next(remote_native):
    """An entry that touches more pages than the client keeps (and more
    than one request may ask the runner to unmap): the next entry still
    reads each page as the application has it now, not a stale slot."""
    plain = remote_native
    enclave = plain.enclave
    pages = 200
    buffer = enclave.alloc(pages * 4096)
    plain.call(0, OP_NOP)
    for value in (1, 2, 3):
        for i in range(pages):
            enclave.write(buffer + i * 4096, value.to_bytes(8, "little"))
        result, words = plain.call(0, OP_TOUCH, buffer, pages)
        assert result.kind == "eexit"
        assert words[3] == value * pages


def test_an_eresume_through_the_evm_sees_the_pages_the_entry_left(remote_native):
    """A fast entry that touched more pages than the client keeps faults;
    its ERESUME goes through the EVM, in the same runner: the slots the
    client dropped at the AEX are unmapped first, so the enclave's write to
    its op page (an oldest one) reaches the AVM."""
    plain = remote_native
    enclave = plain.enclave
    pages = 40
    buffer = enclave.alloc((pages + 1) * 4096)
    enclave.avm.memory.unmap(buffer + pages * 4096, 4096)  # the fault: one page past
    for i in range(pages):
        enclave.write(buffer + i * 4096, (1).to_bytes(8, "little"))
    plain.call(0, OP_NOP)
    result, _ = plain.call(0, OP_TOUCH, buffer, pages + 1)
    assert result.aex and result.vector == Vector.PF
    enclave.avm.memory.map(buffer + pages * 4096, 4096)
    enclave.write(buffer + pages * 4096, (5).to_bytes(8, "little"))
    assert enclave.eresume(plain.tcs[0]).kind == "eexit"
    op = plain.ops[plain.tcs[0]]
    assert int.from_bytes(enclave.read(op + 24, 8), "little") == pages + 5


def test_a_fault_is_handed_over_and_the_tcs_goes_on(remote_native):
    plain = remote_native
    plain.call(0, OP_NOP)
    before = counts(plain)
    result, _ = plain.call(0, OP_DIVIDE, 1, 0)
    assert result.aex and result.vector == Vector.DE
    assert counts(plain)["handed over"] == before["handed over"] + 1
    # CSSA is 1 now: one more fault fills NSSA = 2, then EENTER is #GP.
    assert plain.call(0, OP_DIVIDE, 1, 0)[0].aex
    with pytest.raises(Fault) as raised:
        plain.call(0, OP_NOP)
    assert raised.value.vector == Vector.GP


def test_an_entry_given_up_mid_way_is_lost_not_mistaken_for_the_next(remote_native,
                                                                     monkeypatch):
    """An exception (a KeyboardInterrupt, say) while the runner waits for a
    page of the AVM gives the entry up: the runner is still inside for it,
    so the next EENTER must not be taken for its answer. In this process
    the runner is lost as a dead one is, and the TCS gets a new one; an
    EVM process keeps the TCS busy, as for a thread that never left it."""
    plain = remote_native
    enclave = plain.enclave
    plain.call(0, OP_NOP)
    plain.call(0, OP_NOP)
    slot = enclave.alloc(4096)  # a page no entry has asked for yet
    memory = enclave.avm.memory
    share = memory.share
    raised = []

    def interrupted(page: int):  # type: ignore[no-untyped-def]
        if page == slot and not raised:
            raised.append(page)
            raise KeyboardInterrupt
        return share(page)

    monkeypatch.setattr(memory, "share", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plain.get(slot)
    assert raised == [slot]
    if not isinstance(enclave.avm.evm, EnclaveVM):
        with pytest.raises(Fault) as busy:
            plain.get(slot, tcs_index=0)
        assert busy.value.vector == Vector.GP
        assert plain.call(1, OP_NOP)[0].kind == "eexit"  # the other TCSs go on
        return
    before = counts(plain)
    for value in (0x1111, 0x2222, 0x3333):
        enclave.write(slot, value.to_bytes(8, "little"))
        result, got = plain.get(slot)
        assert result.kind == "eexit" and got == value
    after = counts(plain)
    assert after["attached"] > before["attached"]  # the new runner's client
    assert after["entries"] > before["entries"]


def fast_begun(plain: PlainEnclave) -> int:
    """Entries that began through the runner alone: ended there, or handed
    over to the EVM (a kick from another thread's entry can do that)."""
    found = counts(plain)
    return found["entries"] + found["handed over"]


def test_a_tcs_inside_by_the_fast_path_is_busy(remote_native):
    plain = remote_native
    plain.call(0, OP_NOP)
    plain.call(1, OP_NOP)

    def waiter(outcome: dict[str, object], flag: int) -> None:
        while True:
            try:
                outcome["a"] = plain.call(0, OP_WAIT_FLAG, flag, 10**11)
                return
            except Fault:
                time.sleep(0.01)  # the probe below held the TCS for a moment

    def one_round(flag: int) -> bool:
        """The waiter inside TCS 0, a probe of it (#GP), the flag set: whether
        the waiter's entry was a fast one (a probe that got in first sends
        the waiter's next try through the channel)."""
        outcome: dict[str, object] = {}
        inside = threading.Thread(target=waiter, args=(outcome, flag), daemon=True)
        before = fast_begun(plain)
        inside.start()
        # Probe until the waiter is inside: then EENTER on its TCS is #GP.
        deadline = time.monotonic() + 60
        probes = 0
        while True:
            time.sleep(0.02)  # the waiter first: a probe racing its entry sends it to the EVM
            assert inside.is_alive() and time.monotonic() < deadline
            try:
                plain.enclave.eenter(tcs=plain.tcs[0], rdi=0, rsi=1)
                probes += 1
            except Fault as fault:
                assert fault.vector == Vector.GP
                break
        assert plain.call(1, OP_SET_FLAG, flag)[0].kind == "eexit"
        inside.join(60)
        assert outcome["a"][0].kind == "eexit"  # type: ignore[index]
        return fast_begun(plain) - before - probes >= 2

    assert any(one_round(flag) for flag in range(42, 47))  # a flag of its own each


def test_without_the_fast_path_entries_take_the_channel(remote_native):
    plain = remote_native
    link = plain.enclave.avm.link
    link.fast_path = False
    try:
        first = counts(plain)
        for _ in range(5):
            assert plain.call(2, OP_NOP)[0].kind == "eexit"
        assert counts(plain) == first  # that TCS never attached: the AVM entered no runner
    finally:
        link.fast_path = True


def _runner_pids(evm_pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == evm_pid:
            found.append(int(entry))
    return found


def test_a_runner_that_dies_is_an_error_and_a_new_one_is_attached(remote_native,
                                                                  evm_processes):
    plain = remote_native
    plain.call(3, OP_NOP)
    plain.call(3, OP_NOP)
    attached = counts(plain)["attached"]
    evm = plain.enclave.avm.evm
    if isinstance(evm, EnclaveVM):  # in this process: the enclave's runners
        encl = evm.enclave(plain.enclave.handle.secs_page)
        before = {thread.executor.process.pid for thread in encl.threads.values()}
    else:  # the EVM process is the Unix socket's peer
        sock = plain.enclave.avm.link.conn.stream.tls
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        before = set(_runner_pids(struct.unpack("3i", creds)[0]))
    assert before, "the EVM has no runners"
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(VsgxError):
        plain.call(3, OP_NOP)
    assert time.monotonic() - started < 30
    # The TCS gets a new runner; the next entries attach to it.
    assert plain.call(3, OP_NOP)[0].kind == "eexit"
    entries = counts(plain)["entries"]
    assert plain.call(3, OP_NOP)[0].kind == "eexit"
    assert counts(plain)["attached"] > attached
    assert counts(plain)["entries"] == entries + 1


def test_sdk_ecalls_ocalls_and_exceptions_take_the_fast_path(sdk_enclave, unix_avm):
    from test_sdk import Hello

    hello = Hello(sdk_enclave.signed, evm=unix_avm)
    try:
        link = unix_avm.link
        assert hello.ecall_hello("world") == 37
        before = dict(link.fast_counts)
        assert hello.ecall_hello("again") == 37
        assert hello.printed[-1] == "Hello from inside the enclave, again!"
        assert hello.ecall_ocall_nop(25) == 25
        assert hello.ecall_call_back(21) == 43  # OCALL → nested private ECALL → ORET
        length, sealed = hello.ecall_seal(b"next to the EVM", None, None, 256)
        assert hello.ecall_unseal(sealed[:length], None, None, 64)[0] == 15
        for kind, expected in ((1, 1_000_001), (2, 1_000_222), (3, 1_024_589)):
            assert hello.ecall_fault(kind) == expected  # handed over at the fault
        after = link.fast_counts
        assert after["entries"] - before["entries"] >= 30
        assert after["handed over"] - before["handed over"] >= 3
    finally:
        hello.destroy()


def test_files_that_are_not_sealed_or_too_small_make_no_client(tmp_path):
    from vsgx.evm.native_executor import NativeUnavailable, fast_client_from_files
    from vsgx.evm.runner import layout

    small = os.memfd_create("small")
    loose = os.memfd_create("loose")
    try:
        os.ftruncate(loose, layout.POOL_SLOTS * 4096)
        for client_fd, pool_fd in ((small, loose), (loose, loose)):
            with pytest.raises(NativeUnavailable):
                fast_client_from_files(client_fd, pool_fd, 1 << 32, 1 << 20, "TCS 0x1000")
    finally:
        os.close(small)
        os.close(loose)
