"""Protocol version 3 of the channel: batch paging over a remote EVM (the
pages of one driver batch in one message, every EPC page of it checked
against the session's slice, bounded batches), exits that carry the
entry's write-backs and the pages it used (pushed with the next entry),
and sessions with a version-2 peer on either side, which keep the single
leaves. Counted, never timed."""

from __future__ import annotations

import os
import random
import threading

import pytest

from vsgx.arch import PageType, SgxError
from vsgx.arch.constants import Vector
from vsgx.arch.errors import Fault
from vsgx.avm.remote import connect_evm
from vsgx.channel import ErrorCode, EvidencePolicy, RemoteError, Type
from vsgx.channel.messages import (
    BATCH_VERSION,
    MAX_BLOCK_BATCH,
    MAX_EWB_BATCH,
    MAX_PROTECTION_RANGES,
    PROTECTION_RANGE,
    PROTOCOL_VERSION,
    V3_TYPES,
    decode_writebacks,
    pack_u64s,
)
from vsgx.host import Avm, Enclave
from vsgx.samples import HELLO_DIR

from conftest import ROOT_SECRET
from plain_ops import OP_COPY, OP_TOUCH, PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)
EPC_PAGES = 128
SINGLE_PAGING = {Type.EBLOCK, Type.EWB, Type.ELDU}
BATCH_PAGING = {Type.EADD_PAGES, Type.EADD_UNIFORM, Type.ELDU_DEFERRED, Type.EBLOCK_PAGES,
                Type.EWB_PAGES, Type.ELDU_PAGES, Type.TEST_AND_CLEAR_YOUNG}


class ServedEvm:
    """An EVM (Unicorn) served from this process on a Unix socket."""

    def __init__(self, path, epc_pages: int, protocol_version: int = PROTOCOL_VERSION):
        from vsgx.evm.manager import EnclaveManager
        from vsgx.evm.platform import PlatformConfig
        from vsgx.evm.vm import EnclaveVM

        self.vm = EnclaveVM(PlatformConfig(epc_pages=epc_pages), root_secret=ROOT_SECRET,
                            executor="unicorn")
        self.manager = EnclaveManager(self.vm, session_epc_pages=epc_pages,
                                      log=lambda text: None, protocol_version=protocol_version)
        self.address = f"unix:{path}"
        ready = threading.Event()
        self.thread = threading.Thread(target=self.manager.serve, args=(self.address,),
                                       kwargs={"ready": ready.set}, daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def stop(self) -> None:
        self.manager.stop()
        self.thread.join(30)


@pytest.fixture
def serve(tmp_path):
    made: list[ServedEvm] = []

    def start(epc_pages: int = EPC_PAGES, protocol_version: int = PROTOCOL_VERSION):
        evm = ServedEvm(tmp_path / f"evm-{len(made)}.sock", epc_pages, protocol_version)
        made.append(evm)
        return evm

    yield start
    for evm in made:
        evm.stop()


def recording(remote) -> list[Type]:
    """The type of every request the AVM sends on ``remote`` from now on."""
    sent: list[Type] = []
    call = remote.conn.call

    def record(message_type, fields=(), blob=b""):
        sent.append(message_type)
        return call(message_type, fields, blob)

    remote.conn.call = record
    return sent


@pytest.fixture(scope="module")
def heap_enclave(tmp_path_factory, signing_key):
    """The plain enclave with a heap of 4 x EPC_PAGES pages."""
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    from conftest import build_plain

    elf = build_plain(tmp_path_factory.mktemp("batch") / "plain-heap.elf")
    signed = sign_enclave(elf.read_bytes(), parse_config(
        f"[enclave]\nheap_pages = {4 * EPC_PAGES}\n"), load_private_key(signing_key))
    elf.with_name(elf.name + ".sig").write_bytes(signed.data)
    return elf


def sweep(enclave: Enclave) -> None:
    """Write a random image over the whole heap (every page faults in,
    evicting others), then read it back: every byte survives."""
    plain = PlainEnclave(enclave)
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    start, size = enclave.base + heap.offset, heap.count * 4096
    image = random.Random(3).randbytes(size)
    source, target = enclave.alloc(size), enclave.alloc(size)
    enclave.write(source, image)
    result, _ = plain.call(0, OP_COPY, source, start, size)
    assert result.kind == "eexit", result.describe()
    result, _ = plain.call(0, OP_COPY, start, target, size)
    assert result.kind == "eexit", result.describe()
    assert enclave.read(target, size) == image


def test_a_version_3_session_pages_with_batch_messages(serve, heap_enclave):
    evm = serve()
    remote = connect_evm(evm.address, DEV, warn=False)
    assert remote.version == PROTOCOL_VERSION >= BATCH_VERSION and remote.batch_leaves
    sent = recording(remote)
    avm = Avm(remote)
    try:
        enclave = Enclave.load(heap_enclave, evm=avm)
        # The heap was added as one uniform run; most of it stays deferred.
        assert len(enclave.handle.deferred) > 4 * EPC_PAGES - EPC_PAGES
        sweep(enclave)
        assert avm.driver.evictions > 4 * EPC_PAGES and avm.driver.reloads > 0
        assert {Type.EADD_UNIFORM, Type.ELDU_DEFERRED, Type.EVICT_PAGES, Type.ELDU_PAGES,
                Type.TEST_AND_CLEAR_YOUNG} <= set(sent)
        assert not SINGLE_PAGING & set(sent)
        # Single EADDs only for TCS pages (added one by one, as in-process).
        assert sent.count(Type.EADD) == len(enclave.tcs)
        # A reclaimer's batch (EBLOCK, ETRACK, EWB of up to 16) is one
        # EVICT_PAGES, not a message per page or per leaf.
        stats = avm.driver.stats
        assert sent.count(Type.EVICT_PAGES) == stats["eblock_calls"]
        assert stats["ewb"] >= 8 * sent.count(Type.EVICT_PAGES)
        assert sent.count(Type.ETRACK) <= sent.count(Type.EWB_PAGES)  # retries only
        enclave.destroy()
    finally:
        avm.close()


@pytest.mark.parametrize("side", ["AVM", "EVM"])
def test_a_version_2_peer_keeps_the_single_leaves(serve, heap_enclave, side):
    """An AVM that offers version 2, or an EVM that speaks no newer: the
    session agrees on 2, pages with single leaves, and works."""
    evm = serve(protocol_version=2 if side == "EVM" else PROTOCOL_VERSION)
    remote = connect_evm(evm.address, DEV, warn=False,
                         protocol_version=2 if side == "AVM" else None)
    assert remote.version == 2 and not remote.batch_leaves
    assert remote.test_and_clear_young(0, [0]) is None
    sent = recording(remote)
    avm = Avm(remote)
    try:
        enclave = Enclave.load(heap_enclave, evm=avm)
        assert not enclave.handle.deferred  # no deferred pages without batch leaves
        sweep(enclave)
        assert avm.driver.evictions > 0
        assert {Type.EADD, Type.EBLOCK, Type.EWB, Type.ELDU} <= set(sent)
        assert not V3_TYPES & set(sent)
        # Were it to ask anyway, the EVM says which version has batch paging.
        with pytest.raises(RemoteError, match="needs protocol version 3"):
            remote.conn.call(Type.EBLOCK_PAGES, (1,), pack_u64s([remote.cpuid().epc_sections[0]
                                                                 .base]))
        enclave.destroy()
    finally:
        avm.close()


@pytest.fixture
def session(serve, plain_enclave):
    """A version-3 session with the plain enclave loaded: (remote, enclave,
    the EPC address of a resident REG page no null entry touches, this
    session's slice)."""
    evm = serve()
    remote = connect_evm(evm.address, DEV, warn=False)
    avm = Avm(remote)
    enclave = Enclave.load(plain_enclave.signed, evm=avm)
    # The last REG page (the heap's end): blocking it leaves null entries alone.
    page = max((p for p in enclave.handle.pages.values() if p.epc is not None
                and p.page_type == PageType.REG), key=lambda p: p.linaddr)
    section = remote.cpuid().epc_sections[0]
    yield remote, enclave, page.epc, section
    enclave.destroy()
    avm.close()


def _refused(remote, message_type, fields, blob, code, text):
    with pytest.raises(RemoteError, match=text) as error:
        remote.conn.call(message_type, fields, blob)
    assert error.value.code == code and "\n" not in str(error.value)


def test_batch_requests_refuse_foreign_epc_pages_whole(session):
    remote, enclave, own, section = session
    foreign = section.base + section.size  # the next session's slice
    secs = enclave.handle.secs_page
    violation = ErrorCode.VIOLATION
    outside = f"{foreign:#x} is outside this session's EPC slice"
    _refused(remote, Type.EBLOCK_PAGES, (2,), pack_u64s([own, foreign]), violation, outside)
    _refused(remote, Type.EWB_PAGES, (1,), pack_u64s([foreign, own]), violation, outside)
    _refused(remote, Type.EWB_PAGES, (1,), pack_u64s([own, foreign + 8]), violation,
             f"VA slot {foreign + 8:#x} is outside")
    _refused(remote, Type.EADD_PAGES, (secs, enclave.base, 0, bytes(64), 1),
             pack_u64s([foreign]) + bytes(4096), violation, outside)
    _refused(remote, Type.EADD_UNIFORM, (secs, enclave.base, 4, 0, 0, bytes(64), 1),
             pack_u64s([foreign]), violation, outside)
    _refused(remote, Type.ELDU_PAGES, (secs, 1),
             pack_u64s([foreign, own, enclave.base]) + bytes(128) + bytes(4096), violation,
             outside)
    _refused(remote, Type.ELDU_DEFERRED, (foreign, secs, enclave.base), b"", violation, outside)
    _refused(remote, Type.EVICT_PAGES, (secs, 2), pack_u64s([own, own + 8, foreign, own + 16]),
             violation, outside)
    # The enclave of another SECS is not this session's either.
    _refused(remote, Type.TEST_AND_CLEAR_YOUNG, (foreign, 1), pack_u64s([enclave.base]),
             violation, "not an enclave of this session")
    # Nothing of the refused batch was done: the session's own page was
    # never blocked, and the enclave runs on.
    assert remote.eblock_pages([own]) == [SgxError.SUCCESS]
    assert enclave.eenter(rdi=0, rsi=3).rsi == 6


def test_oversized_and_inconsistent_batches_are_refused(session):
    remote, enclave, own, _ = session
    protocol = ErrorCode.PROTOCOL
    _refused(remote, Type.EBLOCK_PAGES, (MAX_BLOCK_BATCH + 1,),
             pack_u64s([own] * (MAX_BLOCK_BATCH + 1)), protocol,
             f"a batch of {MAX_BLOCK_BATCH + 1} pages; at most {MAX_BLOCK_BATCH} go in one")
    _refused(remote, Type.EWB_PAGES, (MAX_EWB_BATCH + 1,),
             pack_u64s([own, own + 8] * (MAX_EWB_BATCH + 1)), protocol,
             f"at most {MAX_EWB_BATCH} go in one")
    _refused(remote, Type.EVICT_PAGES, (enclave.handle.secs_page, MAX_EWB_BATCH + 1),
             pack_u64s([own, own + 8] * (MAX_EWB_BATCH + 1)), protocol,
             f"at most {MAX_EWB_BATCH} go in one")
    _refused(remote, Type.EBLOCK_PAGES, (3,), pack_u64s([own]), protocol,
             "3 pages announced, 1 sent")
    _refused(remote, Type.EADD_PAGES, (enclave.handle.secs_page, enclave.base, 0, bytes(64), 2),
             pack_u64s([own, own]) + bytes(4096), protocol, "2 pages need")
    _refused(remote, Type.TEST_AND_CLEAR_YOUNG, (enclave.handle.secs_page, 2),
             pack_u64s([enclave.base]), protocol, "2 pages announced, 1 sent")
    assert enclave.eenter(rdi=0, rsi=3).rsi == 6  # the session goes on


def test_a_batch_ends_at_its_first_fault_as_in_process(session):
    remote, _, own, _ = session
    unaligned = own + 1  # EBLOCK of an unaligned address: #GP, the batch stops there
    results = remote.eblock_pages([own, unaligned, own])
    assert results[0] is SgxError.SUCCESS and len(results) == 2
    assert isinstance(results[1], Fault) and results[1].vector is Vector.GP
    assert "not page aligned" in results[1].reason
    assert remote.eblock_pages([own]) == [SgxError.BLKSTATE]  # the first one was done


def test_an_exit_carries_the_write_backs_and_the_next_entry_pushes_the_used_pages(session):
    remote, enclave, _, _ = session
    plain = PlainEnclave(enclave)
    buffer = enclave.alloc(2 * 4096)
    enclave.write(buffer, (5).to_bytes(8, "little"))
    enclave.write(buffer + 4096, (7).to_bytes(8, "little"))
    tcs = enclave.tcs[0]
    op = plain.ops[tcs]
    fetched: list[int] = []
    serve = remote.conn.handler

    def counting(conn, message):
        if message.type == Type.PAGE_FETCH:
            fetched.append(message.fields[0])
        return serve(conn, message)

    remote.conn.handler = counting
    for round_ in range(3):
        fetched.clear()
        enclave.write(op, OP_TOUCH.to_bytes(8, "little") + buffer.to_bytes(8, "little")
                      + (2).to_bytes(8, "little") + bytes(8))
        result = enclave.eenter(tcs=tcs, rdi=op)
        assert result.kind == "eexit"
        # The enclave's write to the op page came back with the exit.
        assert int.from_bytes(enclave.read(op + 24, 8), "little") == 12
        if round_ == 0:  # the op page was pushed (RDI); the buffer was fetched
            assert fetched == [buffer, buffer + 4096]
        else:  # what the last entry used went with the entry
            assert fetched == []
    assert set(remote.used_pages(tcs)) == {op, buffer, buffer + 4096}
    enclave.eenter(tcs=tcs, rdi=0, rsi=1)  # a null entry uses none of them
    assert remote.used_pages(tcs) == ()


class _Notices:
    """A connection that records what a RemoteUntrusted sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Type, tuple, bytes]] = []

    def notify(self, message_type, fields=(), blob=b""):
        self.sent.append((message_type, fields, blob))

    def call(self, message_type, fields=(), blob=b""):
        from vsgx.channel import Message

        self.sent.append((message_type, fields, blob))
        return Message(Type.PAGE_MISSING, ())


def test_write_backs_go_ahead_of_a_fetch_and_when_too_many_wait():
    from vsgx.evm.manager import PENDING_WRITEBACK_BYTES, RemoteUntrusted

    conn = _Notices()
    untrusted = RemoteUntrusted(conn, batched=True)  # type: ignore[arg-type]
    untrusted.write_back(0x5000, [(8, b"abc")])
    assert conn.sent == []  # held for the exit
    untrusted.fetch(0x6000)  # the AVM must answer it with the write applied
    assert [t for t, _, _ in conn.sent] == [Type.PAGE_WRITEBACKS, Type.PAGE_FETCH]
    _, fields, blob = conn.sent[0]
    assert decode_writebacks(blob, fields[0]) == [(0x5000, [(8, b"abc")])]
    conn.sent.clear()
    page = os.urandom(4096)
    for n in range(PENDING_WRITEBACK_BYTES // 4096 + 2):
        untrusted.write_back(0x10000 + 4096 * n, [(0, page)])
    assert conn.sent and all(t == Type.PAGE_WRITEBACKS for t, _, _ in conn.sent)
    used, records, blob = untrusted.exit_blob()
    sent = sum(fields[0] for _, fields, _ in conn.sent)
    assert used == 0 and sent + records == PENDING_WRITEBACK_BYTES // 4096 + 2
    assert len(blob) <= PENDING_WRITEBACK_BYTES


def test_a_28_gib_heap_enclave_loads_through_a_remote_evm(serve, tmp_path, sdk_enclave,
                                                           signing_key):
    """Issue 10's remote leftover: the enclave that loads in-process
    (tests/test_load_scale.py) loads over the channel with a 64 MiB session."""
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave
    from vsgx.sdk import Enclave as SdkEnclave

    heap = 28 << 30
    config = (HELLO_DIR / "hello.toml").read_text().replace("heap_size = 0x40000",
                                                            f"heap_size = {heap:#x}")
    path = tmp_path / "hello-28g.signed.so"
    path.write_bytes(sign_enclave(sdk_enclave.unsigned.read_bytes(), parse_config(config),
                                  load_private_key(signing_key)).data)
    evm = serve(epc_pages=16384)
    remote = connect_evm(evm.address, DEV, warn=False)
    sent = recording(remote)
    avm = Avm(remote)
    try:
        printed: list[str] = []
        enclave = SdkEnclave.load(path, HELLO_DIR / "hello.edl", evm=avm,
                                  ocalls={"ocall_print": printed.append})
        plan, handle = enclave.raw.plan, enclave.raw.handle
        assert plan.ecreate.size == 32 << 30
        state = evm.vm.enclave(handle.secs_page)
        assert state.mrenclave == plan.sigstruct.enclavehash
        driver = avm.driver
        assert driver.stats["eadd"] + driver.stats["eadd_deferred"] == plan.added_pages
        assert len(handle.deferred) == len(state.deferred) > heap // 4096 - 16384
        assert len(state.pages) <= 16384 and driver.evictions == 0
        # A few dozen messages, not millions.
        assert len(sent) < 2000 and sent.count(Type.EADD_UNIFORM) >= 1
        assert enclave.ecall_add(2, 3) == 5
        assert enclave.ecall_hello("a remote 32 GiB enclave") > 0
        assert any("a remote 32 GiB enclave" in line for line in printed)
        enclave.destroy()
    finally:
        avm.close()


def test_set_page_protections_apply_each_range_in_order_in_one_request(serve, plain_enclave):
    evm = serve()
    remote = connect_evm(evm.address, DEV, warn=False)
    avm = Avm(remote)
    enclave = Enclave.load(plain_enclave.signed, evm=avm)
    try:
        secs, base = enclave.handle.secs_page, enclave.base
        state = evm.vm.machine.epc.secs[secs]
        sent = recording(remote)
        remote.set_page_protections(secs, [(base, 2, 0b001), (base + 4096, 1, 0b011),
                                           (base + 2 * 4096, 1, 0b111)])
        assert sent == [Type.SET_PAGE_PROTECTIONS]
        # As the three single requests would leave them: the later range wins.
        assert (state.pte.get(base), state.pte.get(base + 4096)) == (0b001, 0b011)
        assert base + 2 * 4096 not in state.pte
        # A range outside ELRANGE is #GP, after the ranges before it.
        with pytest.raises(Fault, match="inside ELRANGE"):
            remote.set_page_protections(secs, [(base, 2, 0b111), (base + enclave.size, 1, 1)])
        assert base not in state.pte and base + 4096 not in state.pte
        protocol = ErrorCode.PROTOCOL
        _refused(remote, Type.SET_PAGE_PROTECTIONS, (secs, 2), PROTECTION_RANGE.pack(base, 1, 1),
                 protocol, "2 ranges announced, 24 bytes sent")
        _refused(remote, Type.SET_PAGE_PROTECTIONS, (secs, MAX_PROTECTION_RANGES + 1),
                 PROTECTION_RANGE.pack(base, 1, 1) * (MAX_PROTECTION_RANGES + 1), protocol,
                 f"at most {MAX_PROTECTION_RANGES} go in one")
        assert base not in state.pte
        assert enclave.eenter(rdi=0, rsi=3).rsi == 6  # the session goes on
    finally:
        enclave.destroy()
        avm.close()
