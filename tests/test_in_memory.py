"""The in-process deployment goes through the EVM's session layer, over the
in-memory channel transport: its sessions, slices and ownership checks
are those of an EVM behind a socket."""

from __future__ import annotations

import threading
import time

import pytest

from vsgx.arch.constants import ExitKind
from vsgx.arch.errors import Fault
from vsgx.avm.remote import RemoteEvm
from vsgx.channel import ChannelError, ErrorCode, Kind, Message, ProtocolError, RemoteError, Type
from vsgx.channel.memory import MemoryConnection, memory_pair
from vsgx.channel.messages import encode
from vsgx.evm.executor import RBX, RCX, RSP, ExecutorCapability
from vsgx.host import Avm, Enclave
from vsgx.host.enclave import local_manager

SLICE_PAGES = 2048  # 8 MiB: the plain enclave fits


@pytest.fixture
def two_clients(make_vm, plain_enclave):
    """Two in-process AVMs, each with its own session of one EVM and an
    enclave loaded through it."""
    vm = make_vm(epc_pages=2 * SLICE_PAGES)
    manager = local_manager(vm, session_epc_pages=SLICE_PAGES)
    first = Avm(RemoteEvm(manager.open_local()))
    second = Avm(RemoteEvm(manager.open_local()))
    mine = Enclave.load(plain_enclave.signed, evm=first)
    theirs = Enclave.load(plain_enclave.signed, evm=second)
    yield manager, first, mine, second, theirs
    for avm in (first, second):
        avm.close()


def _raw_registers(avm: Avm, tcs: int) -> list[int]:
    registers = [0] * 20
    registers[RSP] = avm.stack_top()
    registers[16] = 0x202  # RFLAGS
    registers[RBX] = tcs
    registers[RCX] = avm.memory.return_rip
    return registers


def _violation(call, text: str) -> None:
    with pytest.raises(RemoteError, match=text) as error:
        call()
    assert error.value.code == ErrorCode.VIOLATION


def test_each_in_process_client_has_its_own_slice(two_clients):
    manager, first, _, second, _ = two_clients
    slices = [avm.link.cpuid().epc_sections for avm in (first, second)]
    assert [len(s) for s in slices] == [1, 1]
    assert slices[0][0].size == slices[1][0].size == SLICE_PAGES * 4096
    assert slices[0][0].base != slices[1][0].base
    assert len(manager.sessions) == 2


def test_an_enclave_of_another_in_process_session_is_refused(two_clients):
    _, _, mine, second, theirs = two_clients
    link = second.link
    secs = mine.handle.secs_page
    _violation(lambda: link.etrack(secs), "not an enclave of this session")
    _violation(lambda: link.kick(secs), "not an enclave of this session")
    _violation(lambda: link.destroy(secs), "not an enclave of this session")
    # EENTER of the other session's enclave, on its TCS
    _violation(lambda: link.eenter(secs, _raw_registers(second, mine.tcs[0]), 0,
                                   second.memory), "not an enclave of this session")
    # (A TCS is named by its address in ELRANGE, which is the enclave's own:
    # both enclaves here have their TCSs at the same addresses.)
    # Both enclaves run on, untouched.
    assert mine.eenter(rdi=0, rsi=4).rsi == 8
    assert theirs.eenter(rdi=0, rsi=5).rsi == 10


def test_an_epc_page_of_another_in_process_session_is_refused(two_clients):
    _, first, mine, second, _ = two_clients
    link = second.link
    foreign = first.link.cpuid().epc_sections[0].base  # the first session's SECS is there
    assert foreign == mine.handle.secs_page
    _violation(lambda: link.eremove(foreign), "outside this session's EPC slice")
    _violation(lambda: link.eblock(foreign), "outside this session's EPC slice")
    _violation(lambda: link.edbgrd(foreign), "outside this session's EPC slice")
    _violation(lambda: link.epa(foreign + 4096 * 100), "outside this session's EPC slice")
    _violation(lambda: link.eblock_pages([foreign]), "outside this session's EPC slice")
    assert mine.eenter(rdi=0, rsi=6).rsi == 12


def test_a_full_in_process_evm_refuses_another_session(two_clients):
    manager = two_clients[0]
    with pytest.raises(ChannelError, match="EVM full"):
        manager.open_local()


def test_closing_an_in_process_client_ends_its_session_and_frees_its_slice(two_clients):
    manager, first, _, _, theirs = two_clients
    first.close()
    deadline = time.monotonic() + 20
    while len(manager.sessions) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(manager.sessions) == 1
    assert theirs.eenter(rdi=0, rsi=7).rsi == 14
    third = Avm(RemoteEvm(manager.open_local()))  # the freed slice is given again
    try:
        assert third.link.cpuid().epc_sections[0].base == manager.vm.config.epc_base
    finally:
        third.close()


def test_the_default_in_process_avm_goes_through_a_session(make_vm, plain_enclave):
    vm = make_vm()
    avm = Avm(vm)
    try:
        assert isinstance(avm.link, RemoteEvm) and avm.link.in_memory
        with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
            (session,) = local_manager(vm).sessions
            assert enclave.handle.secs_page in session.enclaves
            result = enclave.eenter(rdi=0, rsi=4)
            assert result.kind is ExitKind.EEXIT and result.kind == "eexit"
            assert result.rsi == 8
            # The session checks what it is asked, in-process too.
            below = vm.config.epc_base - 4096
            _violation(lambda: avm.link.eremove(below), "outside this session's EPC slice")
    finally:
        avm.close()


def test_in_process_entries_run_in_parallel_sessions(two_clients):
    _, _, mine, _, theirs = two_clients
    results: dict[str, int] = {}

    def run(name: str, enclave: Enclave, value: int) -> None:
        for _ in range(20):
            results[name] = enclave.eenter(rdi=0, rsi=value).rsi

    threads = [threading.Thread(target=run, args=("mine", mine, 3)),
               threading.Thread(target=run, args=("theirs", theirs, 9))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"mine": 6, "theirs": 18}


# -- the transport itself -----------------------------------------------------------
def test_an_attachment_never_crosses_a_socket():
    with pytest.raises(ProtocolError, match="attachment"):
        encode(Message(Type.EENTER, (0,) * 22, b"", attachment=object()))


def test_memory_connection_hands_messages_and_errors_across():
    client, server = memory_pair()
    seen: list[Message] = []

    def handler(conn: MemoryConnection, message: Message) -> Message | None:
        seen.append(message)
        if message.type == Type.EREMOVE:
            return Message(Type.ERROR, (int(ErrorCode.VIOLATION),), b"not yours",
                           message.kind)
        if message.type == Type.BYE:
            conn.send(Message(Type.OK, (), b"", Kind.REPLY))
            conn.close("bye")
            return None
        return Message(Type.STATUS, (0, 7), b"", Kind.REPLY)

    server.handler = handler
    token = object()
    reply = client.call(Type.EDBGRD, (0x1000,), attachment=token)
    assert reply.fields == (0, 7) and seen[-1].attachment is token
    with pytest.raises(RemoteError, match="not yours"):
        client.call(Type.EREMOVE, (0x1000,))
    closed: list[BaseException | None] = []
    client.on_close.append(closed.append)
    assert client.call(Type.BYE).type == Type.OK  # the reply the handler sent itself
    assert closed and client.error is not None
    with pytest.raises(ChannelError):
        client.call(Type.EDBGRD, (0x1000,))


def test_a_handler_bug_is_an_error_reply_not_a_crash():
    client, server = memory_pair()

    def broken(conn, message):
        raise KeyError("oops")

    server.handler = broken
    with pytest.raises(RemoteError, match="internal error: KeyError"):
        client.call(Type.EDBGRD, (0,))
    server.handler = lambda conn, message: Message(Type.OK, (), b"", Kind.REPLY)
    assert client.call(Type.EDBGRD, (0,)).type == Type.OK


# -- executor capabilities are declared -----------------------------------------------
def test_executors_declare_what_they_can_do(make_vm):
    vm = make_vm()
    capabilities = vm.executor_factory.capabilities
    assert isinstance(capabilities, ExecutorCapability)
    # The reclaimer's accessed bits exist exactly where the executor sees accesses.
    answer = vm.test_and_clear_young  # asked of no enclave: a fault, where it answers at all
    if ExecutorCapability.TRACKS_ACCESS in capabilities:
        with pytest.raises(Fault):
            answer(0x1000, [0x1000])
    else:
        assert answer(0x1000, [0x1000]) is None


def test_an_in_process_evm_goes_when_its_last_avm_closes(make_vm, plain_enclave):
    """Its manager and sessions hang off the VM itself: nothing keyed by the
    VM keeps it alive once the application side is gone."""
    import gc
    import weakref

    vm = make_vm()
    avm = Avm(vm)
    enclave = Enclave.load(plain_enclave.signed, evm=avm)
    assert enclave.eenter(rdi=0, rsi=4).rsi == 8  # the plain enclave's double op
    assert vm.local_sessions is local_manager(vm)
    gone = weakref.ref(vm)
    avm.close()
    del vm, avm, enclave
    for thread in threading.enumerate():  # the session's slice is cleared aside
        if thread.name == "session cleanup":
            thread.join(timeout=10)
    gc.collect()
    assert gone() is None
