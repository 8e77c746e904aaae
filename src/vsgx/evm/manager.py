"""The enclave manager: an EVM serving many AVM sessions over the channel
(vSGX's enclave-manager). Each session gets its own slice of the EPC (what
its driver sees as the EPC section in CPUID), may only touch pages of that
slice and enclaves it created, and loses its enclaves when it disconnects.
A malformed request gets an ERROR reply; the session and the others go on.

Who may open a session is decided, not assumed (``Admission``): on a Unix
socket the peer's uid (SO_PEERCRED), on TCP and vsock the fingerprint of
the key the AVM proved it holds in the TLS handshake. A client that is not
admitted, or finds the EVM full, gets its HELLO answered with an ERROR that
says why. A session with no request for ``idle_timeout`` seconds is closed
with a notice saying so. One client identity holds at most
``max_client_sessions`` slices when several identities are admitted.

A session's slice returns to the free list only when its cleanup is done
and every page of it is free again; a new client that finds no free slice
while sessions are still being cleaned up waits for them (a few seconds)
instead of being turned away.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar, cast

from vsgx.arch.constants import PAGE_SIZE, ExitKind
from vsgx.arch.cpuid import EpcSection
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.quote import QuoteStatus
from vsgx.channel import (
    ChannelClosed,
    ChannelError,
    Connection,
    ErrorCode,
    Listener,
    Message,
    ServerIdentity,
    TlsStream,
    Type,
    error_reply,
    listen,
    parse_address,
    peer_uid,
    reply_to,
)
from vsgx.channel.address import client_socket_path
from vsgx.channel.memory import MemoryConnection, memory_pair
from vsgx.channel.messages import (
    ADD_RUN,
    BATCH_VERSION,
    ELDU_ITEM,
    EVICTED,
    FAULT_IN_EBLOCK,
    FAULT_IN_EWB,
    HEADER_SIZE,
    MAX_ADD_BATCH,
    MAX_ADD_RUNS,
    MAX_BLOCK_BATCH,
    MAX_ELDU_BATCH,
    MAX_EWB_BATCH,
    MAX_PROTECTION_RANGES,
    MAX_UNIFORM_RESIDENT,
    MAX_USED_PAGES,
    MAX_YOUNG_BATCH,
    NOT_RUN,
    PROTECTION_RANGE,
    PROTOCOL_VERSION,
    QE_REPORT_INFO_INPUT_SIZE,
    QUOTE_FLAGS,
    QUOTE_WANT_QE_REPORT,
    QUOTE_WANT_SNP,
    WRITEBACK,
    Kind,
    LaunchStatus,
    LaunchTokenError,
    ProtocolError,
    body_length,
    check_count,
    decode,
    decode_pages,
    encode,
    encode_outcome,
    encode_runs,
    encode_writebacks,
    introduced_in,
    negotiate,
    pack_u64s,
    unpack_u64s,
)
from vsgx.channel.transport import ChannelIdle
from vsgx.errors import VsgxError
from vsgx.evm.encls import EvictedPage
from vsgx.evm.executor import REG_COUNT, UntrustedMemory
from vsgx.evm.thread import EnclaveExit
from vsgx.evm.vm import EnclaveVM

if TYPE_CHECKING:  # made on first use: importing them here would cost every EVM
    from vsgx.evm.launch import LaunchEnclave
    from vsgx.evm.quoting import QuotingEnclave

T = TypeVar("T")

DEFAULT_SESSION_EPC_PAGES = 16384
# ELRANGE one session's enclaves may span in all: the EVM maps each one in
# its own address space (128 TiB for all), which a few SECS pages asking for
# SIZE = 2^46 could otherwise fill, for every session.
SESSION_ELRANGE_BYTES = 1 << 43  # 8 TiB
SERVE_THREADS = 12  # concurrent enclave entries of one session
WATCHDOG_SECONDS = 0.01
REAP_SECONDS = 0.25  # how often idle sessions are looked for
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_PEER_TIMEOUT = 30.0  # silence of an AVM that waits for us (it PINGs every second)
HANDSHAKE_SECONDS = 10.0
HELLO_SECONDS = 5.0  # how long a refused client has to say HELLO and hear why
SLICE_WAIT_SECONDS = 5.0  # for a closing session's slice; below the AVM's own deadline
FULL_GRACE_SECONDS = 0.5
ACCEPT_SECONDS = 0.5  # the serving loop looks at its stop flag this often
MAX_PENDING = 64  # connections not yet admitted or refused
PENDING_PER_SOURCE = 8  # ... from one uid (Unix) or address (TCP, vsock)
_CPUID_LEAF = struct.Struct("<4I")
CLOSING_IDLE, CLOSING_SHUTDOWN = 1, 2
# Write-backs an entry holds for its exit reply at most (then they go ahead).
PENDING_WRITEBACK_BYTES = 256 * 1024
_WRITEBACKS_PER_NOTICE = 48  # records of up to 4240 bytes each fit MAX_BODY
_ENTRIES = frozenset({Type.EENTER, Type.ERESUME, Type.CONTINUE})
_new_message = tuple.__new__  # a Message without NamedTuple's keyword-handling __new__


@dataclass(frozen=True)
class Admission:
    """Who may open a session.

    ``uids`` (Unix sockets; None: this process's own uid) and ``clients``
    (TCP and vsock: SHA-256 fingerprints of AVM keys) list who is admitted;
    ``any_client`` admits everyone. ``max_client_sessions`` caps the slices
    one identity holds; None means half of them (rounded up) when several
    identities are admitted, and all of them when only one is (one client
    cannot starve itself)."""

    uids: frozenset[int] | None = None
    clients: frozenset[str] = field(default_factory=frozenset)
    any_client: bool = False
    max_client_sessions: int | None = None

    def allowed_uids(self) -> frozenset[int]:
        return self.uids if self.uids is not None else frozenset({os.getuid()})

    def several(self, family: str) -> bool:
        if self.any_client:
            return True
        return len(self.allowed_uids() if family == "unix" else self.clients) > 1

    def check(self, family: str, uid: int | None, fingerprint: str | None
              ) -> tuple[str, str | None]:
        """(who the client is, why it is refused or None)."""
        if family == "unix":
            who = f"uid {uid}" if uid is not None else "a Unix peer of unknown uid"
            if self.any_client or (uid is not None and uid in self.allowed_uids()):
                return who, None
            if uid is None:
                return who, "this EVM cannot learn the uid of its Unix peers (no SO_PEERCRED)"
            return who, f"this EVM does not admit uid {uid}; start it with --allow-uid {uid}"
        if fingerprint is None:
            if self.any_client:
                return "an anonymous client", None
            return "an anonymous client", ("this EVM admits clients by their key and this one "
                                           "presented none")
        who = f"client {fingerprint}"
        if self.any_client or fingerprint in self.clients:
            return who, None
        return who, (f"this EVM does not admit client {fingerprint}; start it with "
                     f"--allow-client {fingerprint}")


def _source(sock: socket.socket) -> tuple[object, ...]:
    """Where a connection comes from: a uid, or an address without the port."""
    uid = peer_uid(sock)
    if uid is not None:
        return ("uid", uid)
    try:
        return ("host", sock.getpeername()[0])
    except OSError:
        return ("unknown",)


class SessionViolation(VsgxError):
    """A request touching what the session does not own."""


class RemoteUntrusted:
    """The AVM's memory, fetched over the session's channel (or taken from
    the pages the AVM pushed with the EENTER).

    In a session of protocol version 3 (``batched``) write-backs wait for
    the exit reply, which carries them (EXIT_PAGES), with the pages the
    entry used so that the AVM pushes those with the next one. They go
    ahead in a PAGE_WRITEBACKS notice only before a fetch (the AVM must
    answer it with what the enclave wrote) or when too many wait."""

    shares_pages = False  # the pages are the AVM's, in another process
    generation = 0

    def __init__(self, conn: Connection | MemoryConnection,
                 pushed: dict[int, tuple[bytes, bool]] | None = None, batched: bool = False):
        self.conn = conn
        self.pushed = pushed or {}
        self.batched = batched
        self.used: list[int] = []
        self.pending: list[tuple[int, bytes]] = []
        self._pending_bytes = 0

    def _used(self, page: int) -> None:
        if len(self.used) < MAX_USED_PAGES and page not in self.used:
            self.used.append(page)

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        pushed = self.pushed.pop(page, None)
        if pushed is not None:
            self._used(page)
            return pushed
        if self.pending:
            self.flush()
        try:
            reply = self.conn.call(Type.PAGE_FETCH, (page,))
        except (ChannelError, VsgxError):
            return None  # the AVM is gone: its memory is unmapped
        if reply.type == Type.PAGE:
            self._used(page)
            return reply.blob, bool(reply.fields[0])
        return None

    def share(self, page: int) -> None:
        return None

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        runs = encode_runs(changes)
        if not self.batched:
            try:
                self.conn.notify(Type.PAGE_WRITEBACK, (page,), runs)
            except ChannelError:
                pass
            return
        size = WRITEBACK.size + len(runs)
        if self._pending_bytes + size > PENDING_WRITEBACK_BYTES:
            self.flush()
        self.pending.append((page, runs))
        self._pending_bytes += size

    def flush(self) -> None:
        """Send the waiting write-backs now (PAGE_WRITEBACKS notices)."""
        pending, self.pending, self._pending_bytes = self.pending, [], 0
        try:
            for first in range(0, len(pending), _WRITEBACKS_PER_NOTICE):
                records = pending[first:first + _WRITEBACKS_PER_NOTICE]
                self.conn.notify(Type.PAGE_WRITEBACKS, (len(records),),
                                 encode_writebacks(records))
        except ChannelError:
            pass

    def exit_blob(self) -> tuple[int, int, bytes]:
        """(used pages, write-back records, blob) for EXIT_PAGES."""
        if not self.used and not self.pending:
            return 0, 0, b""
        pending, self.pending, self._pending_bytes = self.pending, [], 0
        return (len(self.used), len(pending),
                pack_u64s(self.used) + encode_writebacks(pending))


CLIENT_OFFER_SECONDS = 10.0  # how long an offer of a runner's files waits to be claimed
CLIENT_TOKEN_SIZE = 32


class ClientFileOffers:
    """The side socket that hands a runner's CLIENT area and page pool to a
    program on this host (SCM_RIGHTS: the TLS stream cannot carry
    descriptors). A session offers them (CLIENT_FILES) and sends the token
    over its channel; the claim must come from the session's peer uid with
    that token, once, within CLIENT_OFFER_SECONDS."""

    def __init__(self, path: str, log: Callable[[str], None], mode: int = 0o600):
        self.path = path
        self.log = log
        self._offers: dict[bytes, tuple[tuple[int, ...], int, float]] = {}
        self._lock = threading.Lock()
        if os.path.lexists(path):
            # A stale socket of an earlier EVM goes; anything else stays.
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket")
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        # As the EVM's socket: other uids reach it where the EVM admits
        # them, and SO_PEERCRED then has to match the offer's.
        os.chmod(path, mode)
        self._sock.listen(16)
        self.closed = False
        threading.Thread(target=self._serve, daemon=True, name="client files").start()

    def offer(self, fds: tuple[int, int], uid: int) -> bytes:
        token = secrets.token_bytes(CLIENT_TOKEN_SIZE)
        copies = tuple(os.dup(fd) for fd in fds)
        with self._lock:
            self._expire(time.monotonic())
            self._offers[token] = (copies, uid, time.monotonic() + CLIENT_OFFER_SECONDS)
        return token

    def _expire(self, now: float) -> None:
        for token, (fds, _, deadline) in list(self._offers.items()):
            if deadline < now:
                del self._offers[token]
                for fd in fds:
                    os.close(fd)

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(2.0)
                self._claim(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _claim(self, conn: socket.socket) -> None:
        token = b""
        while len(token) < CLIENT_TOKEN_SIZE:
            chunk = conn.recv(CLIENT_TOKEN_SIZE - len(token))
            if not chunk:
                return
            token += chunk
        uid = peer_uid(conn)
        with self._lock:
            self._expire(time.monotonic())
            offer = self._offers.get(token)
            if offer is None or offer[1] != uid:
                if offer is not None:  # logged before the answer, which may end the claimant
                    self.log(f"vsgx evm: uid {uid} claimed the fast path files of uid "
                             f"{offer[1]}: refused")
                conn.sendall(b"\0")
                return
            del self._offers[token]
        fds = offer[0]
        try:
            socket.send_fds(conn, [b"\1"], list(fds))
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        with self._lock:
            self._expire(float("inf"))


class Session:
    def __init__(self, manager: EnclaveManager, conn: Connection | MemoryConnection,
                 epc: EpcSection, client: str = "a client"):
        self.manager = manager
        self.vm = manager.vm
        self.conn = conn
        # In this process: an entry may bring the application's address
        # space itself (an attachment), which the executors map in place.
        self.in_memory = isinstance(conn, MemoryConnection)
        self.epc = epc
        self.client = client
        self.peer_uid: int | None = None  # a Unix peer's (SO_PEERCRED)
        self.enclaves: set[int] = set()
        self.inflight = 0  # enclave entries running
        self.busy = 0  # requests being handled
        self.last_active = time.monotonic()
        self._counters = threading.Lock()
        self.idle = threading.Condition(self._counters)
        self.closed = False  # closing: no new entries; the slice is not free yet
        self._cleanup_started = False
        self.version = 1  # the protocol version HELLO agreed on
        self.handlers: dict[Type, Callable[[Message], Message | None]] = {
            Type.HELLO: self._hello, Type.GET_CPUID: self._cpuid, Type.BYE: self._bye,
            Type.ECREATE: self._ecreate, Type.EADD: self._eadd, Type.EEXTEND: self._eextend,
            Type.EINIT: self._einit, Type.EREMOVE: self._eremove, Type.EPA: self._epa,
            Type.EBLOCK: self._eblock, Type.ETRACK: self._etrack, Type.EWB: self._ewb,
            Type.ELDB: self._eld, Type.ELDU: self._eld, Type.EAUG: self._eaug,
            Type.EMODPR: self._emodpr, Type.EMODT: self._emodt, Type.EDBGRD: self._edbgrd,
            Type.EDBGWR: self._edbgwr, Type.EENTER: self._eenter, Type.ERESUME: self._eresume,
            Type.KICK: self._kick, Type.SET_PAGE_PROTECTION: self._protect,
            Type.SET_PAGE_PROTECTIONS: self._protect_ranges,
            Type.DESTROY: self._destroy,
            Type.QE_TARGET_INFO: self._qe_target_info, Type.QE_QUOTE_SIZE: self._qe_quote_size,
            Type.QUOTE: self._quote, Type.LAUNCH_TOKEN: self._launch_token,
            Type.EADD_PAGES: self._eadd_pages, Type.EADD_UNIFORM: self._eadd_uniform,
            Type.ELDU_DEFERRED: self._eldu_deferred, Type.EBLOCK_PAGES: self._eblock_pages,
            Type.EWB_PAGES: self._ewb_pages, Type.ELDU_PAGES: self._eldu_pages,
            Type.TEST_AND_CLEAR_YOUNG: self._test_and_clear_young,
            Type.EADD_RUNS: self._eadd_runs, Type.EVICT_PAGES: self._evict_pages,
            Type.CLIENT_FILES: self._client_files, Type.CONTINUE: self._continue,
        }
        # What dispatch needs per type, found with one lookup (an enum's hash
        # is computed in Python: on the entry path each lookup counts).
        self._routes: dict[Type, tuple[Callable[[Message], Message | None], int, bool]] = {
            message_type: (handler, introduced_in(message_type), message_type in _ENTRIES)
            for message_type, handler in self.handlers.items()}

    # -- ownership -----------------------------------------------------------
    def _own(self, address: int, what: str = "EPC page") -> int:
        page = address & ~(PAGE_SIZE - 1)
        if not self.epc.base <= page < self.epc.base + self.epc.size:
            raise SessionViolation(f"{what} {address:#x} is outside this session's EPC slice")
        return address

    def _secs(self, secs: int) -> int:
        if secs not in self.enclaves:
            raise SessionViolation(f"{secs:#x} is not an enclave of this session")
        return secs

    # -- dispatch -------------------------------------------------------------
    def handle(self, conn: Connection | MemoryConnection, message: Message) -> Message | None:
        # An entry counts as in flight (cleanup waits for it) from here on.
        route = self._routes.get(message.type)
        entry = route is not None and route[2]
        with self._counters:  # idle's lock, taken without the Condition's wrapper
            if entry:
                if self.closed:
                    return error_reply(message, "the session is closing", ErrorCode.REJECTED)
                self.inflight += 1
            self.busy += 1
            self.last_active = time.monotonic()
        try:
            return self._dispatch(message, route)
        finally:
            with self._counters:
                self.busy -= 1
                self.last_active = time.monotonic()
                if entry:
                    self.inflight -= 1
                    if self.closed:  # cleanup waits for the last one
                        self.idle.notify_all()

    def idle_for(self, now: float) -> float:
        """How long the session has had no request (0 while one runs)."""
        with self.idle:
            if self.closed or self.busy or self.inflight:
                return 0.0
            return now - self.last_active

    def _dispatch(self, message: Message,
                  route: tuple[Callable[[Message], Message | None], int, bool] | None
                  ) -> Message | None:
        if route is None:
            if message.type in (Type.PAGE_WRITEBACK, Type.PAGE_WRITEBACKS):
                return None
            return error_reply(message, f"{message.type.name} is not a request to an EVM")
        handler, introduced, _ = route
        if introduced > self.version:
            return error_reply(message, f"{message.type.name} needs protocol version "
                               f"{introduced}; this session speaks {self.version}")
        try:
            return handler(message)
        except Fault as fault:
            return reply_to(message, Type.FAULT, (fault.vector, fault.error_code, fault.address),
                            fault.reason.encode()[:2000])
        except SessionViolation as exc:
            return error_reply(message, str(exc), ErrorCode.VIOLATION)
        except ProtocolError as exc:
            return error_reply(message, str(exc), ErrorCode.PROTOCOL)
        except VsgxError as exc:
            return error_reply(message, str(exc), ErrorCode.REJECTED)

    def _ok(self, message: Message) -> Message:
        return reply_to(message, Type.OK)

    def _status(self, message: Message, status: SgxError, value: int = 0) -> Message:
        return reply_to(message, Type.STATUS, (int(status), value))

    def _hello(self, message: Message) -> Message:
        try:
            self.version = negotiate(message.fields[0], self.manager.protocol_version)
        except ProtocolError as exc:
            return error_reply(message, str(exc))
        return reply_to(message, Type.HELLO, (self.version,))

    def _cpuid(self, message: Message) -> Message:
        cpuid = replace(self.vm.cpuid(), epc_sections=(self.epc,))
        blob = b"".join(_CPUID_LEAF.pack(*cpuid.leaf(i)) for i in range(4))
        return reply_to(message, Type.CPUID, (), blob)

    def _bye(self, message: Message) -> None:
        """The AVM is done: answer, then close at once, so that the slice is
        known to be on its way back before anyone else asks for one."""
        self.mark_closing()
        try:
            self.conn.send(self._ok(message))
        except ChannelError:
            pass
        self.conn.close("the AVM ended the session")

    def _ecreate(self, m: Message) -> Message:
        epc, secinfo = m.fields
        size = int.from_bytes(m.blob[:8], "little")  # SECS.SIZE (SDM Table 35-3)
        present = self.vm.machine.epc.secs
        spanned = sum(present[secs].size for secs in self.enclaves if secs in present)
        if spanned + size > SESSION_ELRANGE_BYTES:
            raise VsgxError(f"ECREATE of {size:#x} bytes: this session's enclaves span "
                            f"{spanned:#x} bytes of ELRANGE already, of at most "
                            f"{SESSION_ELRANGE_BYTES:#x}")
        self.vm.ecreate(self._own(epc), m.blob, secinfo)
        self.enclaves.add(epc)
        return self._ok(m)

    def _eadd(self, m: Message) -> Message:
        epc, secs, linaddr, measure, secinfo = m.fields
        self.vm.eadd(self._own(epc), self._secs(secs), linaddr, m.blob, secinfo, bool(measure))
        return self._ok(m)

    def _eextend(self, m: Message) -> Message:
        secs, chunk = m.fields
        self.vm.eextend(self._secs(secs), self._own(chunk))
        return self._ok(m)

    def _einit(self, m: Message) -> Message:
        secs, sigstruct, token = m.fields
        return self._status(m, self.vm.einit(self._secs(secs), sigstruct, token))

    def _eremove(self, m: Message) -> Message:
        (epc,) = m.fields
        status = self.vm.eremove(self._own(epc))
        if status is SgxError.SUCCESS:
            self.enclaves.discard(epc)
        return self._status(m, status)

    def _epa(self, m: Message) -> Message:
        self.vm.epa(self._own(m.fields[0]))
        return self._ok(m)

    def _eblock(self, m: Message) -> Message:
        return self._status(m, self.vm.eblock(self._own(m.fields[0])))

    def _etrack(self, m: Message) -> Message:
        return self._status(m, self.vm.etrack(self._secs(m.fields[0])))

    def _ewb(self, m: Message) -> Message:
        epc, slot = m.fields
        status, blob = self.vm.ewb(self._own(epc), self._own(slot, "VA slot"))
        if blob is None:
            return reply_to(m, Type.EVICTED, (int(status), 0, bytes(128)))
        return reply_to(m, Type.EVICTED, (int(status), blob.linaddr, blob.pcmd), blob.ciphertext)

    def _eld(self, m: Message) -> Message:
        epc, slot, secs, linaddr, pcmd = m.fields
        load = self.vm.eldb if m.type == Type.ELDB else self.vm.eldu
        owned_secs = self._secs(secs) if secs else 0
        return self._status(m, load(self._own(epc), self._own(slot, "VA slot"), owned_secs,
                                    linaddr, m.blob, pcmd))

    def _eaug(self, m: Message) -> Message:
        epc, secs, linaddr = m.fields
        self.vm.eaug(self._own(epc), self._secs(secs), linaddr)
        return self._ok(m)

    def _emodpr(self, m: Message) -> Message:
        epc, secinfo = m.fields
        return self._status(m, self.vm.emodpr(self._own(epc), secinfo))

    def _emodt(self, m: Message) -> Message:
        epc, secinfo = m.fields
        return self._status(m, self.vm.emodt(self._own(epc), secinfo))

    def _edbgrd(self, m: Message) -> Message:
        status, value = self.vm.edbgrd(self._own(m.fields[0]))
        return self._status(m, status, value)

    def _edbgwr(self, m: Message) -> Message:
        address, value = m.fields
        return self._status(m, self.vm.edbgwr(self._own(address), value))

    def _exit(self, m: Message, result: EnclaveExit, untrusted: RemoteUntrusted) -> Message:
        fields = (result.kind is ExitKind.AEX, result.exitinfo_valid, result.interrupt,
                  result.vector, result.error_code, result.address, *result.registers)
        if not untrusted.batched:
            return reply_to(m, Type.EXIT, fields)
        used, records, blob = untrusted.exit_blob()
        return reply_to(m, Type.EXIT_PAGES, (*fields, used, records), blob)

    def _untrusted(self, m: Message) -> RemoteUntrusted:
        return RemoteUntrusted(self.conn, decode_pages(m.blob) if m.blob else None,
                               batched=self.version >= BATCH_VERSION)

    @staticmethod
    def _exit_in_memory(result: EnclaveExit) -> Message:
        """The exit of an entry that brought its address space (the enclave
        wrote the application's pages in place): an EXIT whose content is
        the exit itself, attached."""
        return _new_message(Message, (Type.EXIT, (), b"", Kind.REPLY, 0, result))

    def _eenter(self, m: Message) -> Message:
        secs, return_rip = m.fields[:2]
        registers = list(m.fields[2:2 + REG_COUNT])
        if m.attachment is not None and self.in_memory:
            return self._exit_in_memory(self.vm.eenter(
                self._secs(secs), registers, return_rip, cast(UntrustedMemory, m.attachment)))
        untrusted = self._untrusted(m)
        try:
            result = self.vm.eenter(self._secs(secs), registers, return_rip, untrusted)
        except BaseException:
            untrusted.flush()  # what the enclave wrote before it failed
            raise
        return self._exit(m, result, untrusted)

    def _eresume(self, m: Message) -> Message:
        secs = m.fields[0]
        registers = list(m.fields[1:1 + REG_COUNT])
        if m.attachment is not None and self.in_memory:
            return self._exit_in_memory(self.vm.eresume(
                self._secs(secs), registers, cast(UntrustedMemory, m.attachment)))
        untrusted = self._untrusted(m)
        try:
            result = self.vm.eresume(self._secs(secs), registers, untrusted)
        except BaseException:
            untrusted.flush()
            raise
        return self._exit(m, result, untrusted)

    # -- the fast path of a client on this host ----------------------------------
    def _client_files(self, m: Message) -> Message:
        """A TCS's CLIENT area and page pool for the AVM's program, on the
        side socket: only to a Unix peer, claimed by the same uid with the
        token that goes back over this channel. The two files hold what the
        program may see anyway (its registers at ENCLU and EEXIT, its own
        untrusted pages), never EPC memory."""
        secs, tcs = m.fields
        if self.in_memory:
            # An AVM in this process: the EVM's own client of the TCS, by
            # reference (one client: one busy flag, one set of kept pages).
            client = self.vm.fast_client(self._secs(secs), tcs)
            return _new_message(Message, (Type.CLIENT_OFFER, (bytes(CLIENT_TOKEN_SIZE),), b"",
                                          Kind.REPLY, m.request_id, client))
        offers = self.manager.client_offers
        if offers is None or self.peer_uid is None:
            raise VsgxError("the fast path's files go only to a client on this host, "
                            "over a Unix socket")
        fds = self.vm.client_files(self._secs(secs), tcs)
        return reply_to(m, Type.CLIENT_OFFER, (offers.offer(fds, self.peer_uid),))

    def _continue(self, m: Message) -> Message:
        secs, tcs, aep, fsbase, gsbase = m.fields
        if m.attachment is not None and self.in_memory:
            return self._exit_in_memory(self.vm.continue_entry(
                self._secs(secs), tcs, aep, (fsbase, gsbase),
                cast(UntrustedMemory, m.attachment)))
        untrusted = self._untrusted(m)
        try:
            result = self.vm.continue_entry(self._secs(secs), tcs, aep, (fsbase, gsbase),
                                            untrusted)
        except BaseException:
            untrusted.flush()
            raise
        return self._exit(m, result, untrusted)

    # -- batch paging (protocol version 3) --------------------------------------
    def _own_all(self, addresses: tuple[int, ...], what: str = "EPC page") -> None:
        """Every address of a batch is in this session's slice (checked
        before any leaf runs: a batch is refused whole)."""
        base, end = self.epc.base, self.epc.base + self.epc.size
        for address in addresses:
            if not base <= address < end:
                raise SessionViolation(f"{what} {address:#x} is outside this session's EPC "
                                       "slice")

    @staticmethod
    def _fault_of(results: Sequence[T | Fault]
                  ) -> tuple[list[T], tuple[int, int, int, str] | None]:
        """A batch's results without the Fault that may end it (only the last
        item can be one), and that fault."""
        if results and isinstance(results[-1], Fault):
            fault = results[-1]
            return cast(list[T], list(results[:-1])), (int(fault.vector), fault.error_code,
                                                       fault.address, fault.reason)
        return cast(list[T], list(results)), None

    def _statuses(self, m: Message, results: Sequence[SgxError | Fault]) -> Message:
        codes, fault = self._fault_of(results)
        fields, reason = encode_outcome(len(codes), fault)
        return reply_to(m, Type.STATUSES, fields,
                        struct.pack(f"<{len(codes)}I", *[int(code) for code in codes]) + reason)

    def _eadd_pages(self, m: Message) -> Message:
        secs, linaddr, measure, secinfo, count = m.fields
        check_count("EADD_PAGES", count, MAX_ADD_BATCH)
        epcs = unpack_u64s(m.blob, count, "EADD_PAGES")
        if len(m.blob) != count * (8 + PAGE_SIZE):
            raise ProtocolError(f"EADD_PAGES: {count} pages need {count * (8 + PAGE_SIZE)} "
                                f"bytes, the blob has {len(m.blob)}")
        self._own_all(epcs)
        self.vm.eadd_pages(list(epcs), self._secs(secs), linaddr,
                           memoryview(m.blob)[8 * count:], secinfo, bool(measure))
        return self._ok(m)

    def _eadd_uniform(self, m: Message) -> Message:
        secs, linaddr, count, fill, measure, secinfo, resident = m.fields
        check_count("EADD_UNIFORM", resident, MAX_UNIFORM_RESIDENT)
        if len(m.blob) != 8 * resident:
            raise ProtocolError(f"EADD_UNIFORM: {resident} EPC pages announced, "
                                f"{len(m.blob) // 8} sent")
        epcs = unpack_u64s(m.blob, resident, "EADD_UNIFORM")
        self._own_all(epcs)
        self.vm.eadd_uniform(self._secs(secs), linaddr, count, secinfo, fill, bool(measure),
                             epcs)
        return self._ok(m)

    def _eadd_runs(self, m: Message) -> Message:
        secs, count = m.fields
        check_count("EADD_RUNS", count, MAX_ADD_RUNS, "runs")
        view = memoryview(m.blob)
        runs = []
        epcs: list[int] = []
        position = 0
        for _ in range(count):
            if position + ADD_RUN.size > len(view):
                raise ProtocolError("EADD_RUNS: a run is cut short")
            linaddr, pages, resident, fill, uniform, measure, secinfo = ADD_RUN.unpack_from(
                view, position)
            position += ADD_RUN.size
            if resident > pages or (not uniform and resident != pages):
                raise ProtocolError(f"EADD_RUNS: a run of {pages} pages with {resident} EPC "
                                    "pages")
            run_epcs = unpack_u64s(view[position:], resident, "EADD_RUNS")
            position += 8 * resident
            data = None
            if not uniform:
                size = pages * PAGE_SIZE
                if position + size > len(view):
                    raise ProtocolError("EADD_RUNS: a run's pages are cut short")
                data = view[position:position + size]
                position += size
            runs.append((linaddr, pages, bytes(secinfo), bool(measure), fill, data, run_epcs))
            epcs.extend(run_epcs)
        if position != len(view):
            raise ProtocolError("EADD_RUNS: the runs do not add up to the blob")
        self._own_all(tuple(epcs))
        return self._statuses(m, self.vm.eadd_runs(self._secs(secs), runs))

    def _eldu_deferred(self, m: Message) -> Message:
        epc, secs, linaddr = m.fields
        self.vm.eldu_deferred(self._own(epc), self._secs(secs), linaddr)
        return self._ok(m)

    def _eblock_pages(self, m: Message) -> Message:
        (count,) = m.fields
        check_count("EBLOCK_PAGES", count, MAX_BLOCK_BATCH)
        if len(m.blob) != 8 * count:
            raise ProtocolError(f"EBLOCK_PAGES: {count} pages announced, {len(m.blob) // 8} "
                                "sent")
        epcs = unpack_u64s(m.blob, count, "EBLOCK_PAGES")
        self._own_all(epcs)
        return self._statuses(m, self.vm.eblock_pages(list(epcs)))

    def _ewb_pages(self, m: Message) -> Message:
        (count,) = m.fields
        check_count("EWB_PAGES", count, MAX_EWB_BATCH)
        if len(m.blob) != 16 * count:
            raise ProtocolError(f"EWB_PAGES: {count} pages announced, {len(m.blob) // 16} "
                                "sent")
        flat = unpack_u64s(m.blob, 2 * count, "EWB_PAGES")
        self._own_all(flat[0::2])
        self._own_all(flat[1::2], "VA slot")
        results, fault = self._fault_of(self.vm.ewb_pages(list(zip(flat[0::2], flat[1::2],
                                                                      strict=True))))
        fields, reason = encode_outcome(len(results), fault)
        return reply_to(m, Type.EVICTED_PAGES, fields, self._evicted_records(results) + reason)

    def _evicted_records(self, results: list[tuple[SgxError, EvictedPage | None]]) -> bytes:
        parts = []
        for status, evicted in results:
            if evicted is None:
                parts.append(EVICTED.pack(int(status), 0, 0, bytes(128)))
            else:
                parts.append(EVICTED.pack(int(status), 1, evicted.linaddr, evicted.pcmd))
                parts.append(evicted.sealed[:PAGE_SIZE])
        return b"".join(parts)

    def _evict_pages(self, m: Message) -> Message:
        secs, count = m.fields
        check_count("EVICT_PAGES", count, MAX_EWB_BATCH)
        if len(m.blob) != 16 * count:
            raise ProtocolError(f"EVICT_PAGES: {count} pages announced, {len(m.blob) // 16} "
                                "sent")
        flat = unpack_u64s(m.blob, 2 * count, "EVICT_PAGES")
        self._own_all(flat[0::2])
        self._own_all(flat[1::2], "VA slot")
        block_results, track, ewb_results = self.vm.evict_pages(
            self._secs(secs), list(zip(flat[0::2], flat[1::2], strict=True)))
        blocks, fault = self._fault_of(block_results)
        # no EWB ran after an EBLOCK fault: the EWB results are then empty
        evictions, ewb_fault = self._fault_of(ewb_results)
        where = FAULT_IN_EBLOCK if fault is not None else 0
        if fault is None:
            fault = ewb_fault
            where = FAULT_IN_EWB if fault is not None else 0
        vector, error_code, address, reason = fault or (0, 0, 0, "")
        return reply_to(m, Type.EVICT_RESULT,
                        (len(blocks), NOT_RUN if track is None else int(track), len(evictions),
                         where, vector, error_code & 0xFFFFFFFF, address & ((1 << 64) - 1)),
                        struct.pack(f"<{len(blocks)}I", *[int(code) for code in blocks])
                        + self._evicted_records(evictions) + reason.encode()[:2000])

    def _eldu_pages(self, m: Message) -> Message:
        secs, count = m.fields
        check_count("ELDU_PAGES", count, MAX_ELDU_BATCH)
        record = ELDU_ITEM.size + PAGE_SIZE
        if len(m.blob) != count * record:
            raise ProtocolError(f"ELDU_PAGES: {count} pages need {count * record} bytes, the "
                                f"blob has {len(m.blob)}")
        view = memoryview(m.blob)
        items: list[tuple[int, int, int, bytes | memoryview, bytes]] = []
        for offset in range(0, len(view), record):
            epc, slot, linaddr, pcmd = ELDU_ITEM.unpack_from(view, offset)
            items.append((epc, slot, linaddr,
                          view[offset + ELDU_ITEM.size:offset + record], pcmd))
        self._own_all(tuple(item[0] for item in items))
        self._own_all(tuple(item[1] & ~(PAGE_SIZE - 1) for item in items), "VA slot")
        owned_secs = self._secs(secs) if secs else 0
        return self._statuses(m, self.vm.eldu_pages(owned_secs, items))

    def _test_and_clear_young(self, m: Message) -> Message:
        secs, count = m.fields
        check_count("TEST_AND_CLEAR_YOUNG", count, MAX_YOUNG_BATCH)
        if len(m.blob) != 8 * count:
            raise ProtocolError(f"TEST_AND_CLEAR_YOUNG: {count} pages announced, "
                                f"{len(m.blob) // 8} sent")
        linaddrs = unpack_u64s(m.blob, count, "TEST_AND_CLEAR_YOUNG")
        touched = self.vm.test_and_clear_young(self._secs(secs), list(linaddrs))
        if touched is None:
            return reply_to(m, Type.YOUNG, (0, 0))
        return reply_to(m, Type.YOUNG, (1, len(touched)), bytes(map(int, touched)))

    def _kick(self, m: Message) -> Message:
        self.vm.kick(self._secs(m.fields[0]))
        return self._ok(m)

    def _protect(self, m: Message) -> Message:
        secs, linaddr, count, prot = m.fields
        self.vm.set_page_protection(self._secs(secs), linaddr, count, prot)
        return self._ok(m)

    def _protect_ranges(self, m: Message) -> Message:
        secs, count = m.fields
        check_count("SET_PAGE_PROTECTIONS", count, MAX_PROTECTION_RANGES, "ranges")
        if len(m.blob) != count * PROTECTION_RANGE.size:
            raise ProtocolError(f"SET_PAGE_PROTECTIONS: {count} ranges announced, "
                                f"{len(m.blob)} bytes sent")
        ranges = [PROTECTION_RANGE.unpack_from(m.blob, n * PROTECTION_RANGE.size)
                  for n in range(count)]
        self.vm.set_page_protections(self._secs(secs), ranges)
        return self._ok(m)

    def _destroy(self, m: Message) -> Message:
        secs = self._secs(m.fields[0])
        self.vm.destroy(secs)
        self.enclaves.discard(secs)
        return self._ok(m)

    # -- the quoting and launch enclaves (sgx_qe_*, aesmd's GetLaunchToken) -------
    def _qe_target_info(self, m: Message) -> Message:
        from vsgx.crypto.quote import attestation_key_id
        from vsgx.evm.quoting import QuotingError

        qe = self.manager.quoting()
        try:
            key_id = attestation_key_id(qe.attestation_public_key)  # sets the QE up
        except QuotingError as exc:
            return reply_to(m, Type.TARGET_INFO, (int(exc.status),), str(exc).encode()[:2000])
        except VsgxError as exc:
            return reply_to(m, Type.TARGET_INFO, (int(QuoteStatus.ATT_KEY_NOT_INITIALIZED),),
                            str(exc).encode()[:2000])
        return reply_to(m, Type.TARGET_INFO, (int(QuoteStatus.SUCCESS),),
                        qe.target_info() + key_id)

    def _qe_quote_size(self, m: Message) -> Message:
        from vsgx.evm.quoting import QuotingError

        try:
            size = self.manager.quoting().quote_size()
        except QuotingError as exc:
            return reply_to(m, Type.QUOTE_SIZE, (int(exc.status), 0), str(exc).encode()[:2000])
        except VsgxError as exc:  # the QE's files (its directory, a key)
            return reply_to(m, Type.QUOTE_SIZE, (int(QuoteStatus.UNEXPECTED), 0),
                            str(exc).encode()[:2000])
        return reply_to(m, Type.QUOTE_SIZE, (int(QuoteStatus.SUCCESS), size))

    def _quote(self, m: Message) -> Message:
        from vsgx.evm.quoting import QuotingError

        flags, report = m.fields
        if flags & ~QUOTE_FLAGS:
            return self._quote_failed(m, QuoteStatus.INVALID_PARAMETER,
                                      f"unknown QUOTE flags {flags & ~QUOTE_FLAGS:#x}")
        want_qe_report = bool(flags & QUOTE_WANT_QE_REPORT)
        expected = QE_REPORT_INFO_INPUT_SIZE if want_qe_report else 0
        if len(m.blob) != expected:
            return self._quote_failed(m, QuoteStatus.INVALID_PARAMETER,
                                      f"QUOTE carries {len(m.blob)} bytes of QE report info, "
                                      f"expected {expected}")
        qe = self.manager.quoting()
        try:
            quote, qe_report = qe.quote_with_report(
                report, m.blob[:16] if want_qe_report else None,
                m.blob[16:] if want_qe_report else None)
        except QuotingError as exc:
            return self._quote_failed(m, exc.status, str(exc))
        except VsgxError as exc:
            return self._quote_failed(m, QuoteStatus.UNEXPECTED, str(exc))
        snp_report = snp_certificates = b""
        if flags & QUOTE_WANT_SNP:
            snp_report, snp_certificates = self.manager.qe_snp_evidence()
        parts = (quote, qe_report or b"", snp_report, snp_certificates)
        return reply_to(m, Type.QUOTE_RESULT, (int(QuoteStatus.SUCCESS),
                                               *(len(p) for p in parts)), b"".join(parts))

    def _quote_failed(self, m: Message, status: QuoteStatus | int, text: str) -> Message:
        return reply_to(m, Type.QUOTE_RESULT, (int(status), 0, 0, 0, 0), text.encode()[:2000])

    def _launch_token(self, m: Message) -> Message:
        mrenclave, modulus, attributes, xfrm = m.fields
        try:
            token = self.manager.launching().token(mrenclave, modulus, attributes, xfrm)
        except LaunchTokenError as exc:
            return reply_to(m, Type.TOKEN, (int(exc.status),), str(exc).encode()[:2000])
        return reply_to(m, Type.TOKEN, (int(LaunchStatus.SUCCESS),), token)

    # -- the end of a session --------------------------------------------------
    def mark_closing(self) -> None:
        with self.idle:
            self.closed = True

    def end(self, text: str, code: int) -> None:
        """Close the session from this side, telling the AVM why."""
        self.mark_closing()
        try:
            self.conn.notify(Type.CLOSING, (code,), text.encode())
        except ChannelError:
            pass
        self.conn.close(text)

    def cleanup(self) -> None:
        """Stop the session's enclave threads, destroy its enclaves, and give
        its slice back once every page of it is free."""
        with self.idle:
            if self._cleanup_started:
                return
            self._cleanup_started = True
            self.closed = True
        waited = 0.0
        while True:
            # Kicks are repeated: an entry that had not reached the enclave
            # when one was sent would run on.
            for secs in list(self.enclaves):
                try:
                    self.vm.kick(secs)
                except (Fault, VsgxError):
                    pass
            with self.idle:
                if self.idle.wait_for(lambda: self.inflight == 0, 0.5):
                    break
            waited += 0.5
            if waited == 10.0:
                self.manager.log(f"vsgx evm: {self.inflight} enclave threads of a closed "
                                 f"session of {self.client} do not stop; its EPC slice waits "
                                 "for them")
        for secs in list(self.enclaves):
            try:
                self.vm.destroy(secs)
            except (Fault, VsgxError):
                pass
        self.enclaves.clear()
        for _ in range(2):
            try:
                self.vm.clear_epc(self.epc.base, self.epc.size)  # VA pages, leftovers
            except (Fault, VsgxError):
                pass
            if self._slice_is_free():
                self.manager.release(self)
                return
        self.manager.log(f"vsgx evm: the EPC slice at {self.epc.base:#x} could not be cleared; "
                         "it is not given to another session")
        self.manager.release(self, reuse=False)

    def _slice_is_free(self) -> bool:
        machine = self.vm.machine
        with machine.lock:
            return not any(machine.epc.entry(address).valid
                           for address in range(self.epc.base, self.epc.base + self.epc.size,
                                                PAGE_SIZE))


class EnclaveManager:
    """Serves AVM sessions on a listening socket."""

    def __init__(self, vm: EnclaveVM, *, session_epc_pages: int | None = None,
                 evidence: str = "none", log: Callable[[str], None] | None = None,
                 admission: Admission | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 peer_timeout: float = DEFAULT_PEER_TIMEOUT,
                 key_path: os.PathLike[str] | str | None = None,
                 protocol_version: int = PROTOCOL_VERSION):
        from pathlib import Path

        self.vm = vm
        # The newest protocol version sessions may agree on (an older EVM's,
        # to test AVMs against it).
        self.protocol_version = protocol_version
        self._key_path = Path(key_path) if key_path else None
        self._identity: ServerIdentity | None = None
        self._identity_lock = threading.Lock()
        self.admission = admission or Admission()
        self.idle_timeout = idle_timeout
        self.peer_timeout = peer_timeout
        config = vm.config
        self.session_pages = min(session_epc_pages or DEFAULT_SESSION_EPC_PAGES,
                                 config.epc_pages)
        self.slice_count = config.epc_pages // self.session_pages
        self._free_slices = [EpcSection(config.epc_base + i * self.session_pages * PAGE_SIZE,
                                        self.session_pages * PAGE_SIZE)
                             for i in range(self.slice_count)]
        self._slots = threading.Condition()
        self._pending = 0
        self._pending_from: dict[object, int] = {}
        self.sessions: list[Session] = []
        self.listener: Listener | None = None
        self.client_offers: ClientFileOffers | None = None
        self.address = ""
        self.family = "unix"
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.stopped = threading.Event()
        self.sessions_served = 0
        self.evidence_kind = evidence
        self._snp_evidence: tuple[bytes, bytes] | None = None
        self._snp_lock = threading.Lock()

    @property
    def identity(self) -> ServerIdentity:
        """The EVM's TLS identity, made on first use (an in-process EVM,
        reached only through the in-memory transport, never needs one)."""
        with self._identity_lock:
            if self._identity is None:
                self._identity = ServerIdentity(self.evidence_kind, self._key_path)
            return self._identity

    # -- this EVM's quoting and launch enclaves -------------------------------
    def quoting(self) -> QuotingEnclave:
        """The EVM's QE, keyed to its data directory (made on first use)."""
        from vsgx.evm.quoting import quoting_enclave

        return quoting_enclave(self.vm)

    def launching(self) -> LaunchEnclave:
        """The EVM's launch enclave."""
        from vsgx.evm.launch import launch_enclave

        return launch_enclave(self.vm)

    def qe_snp_evidence(self) -> tuple[bytes, bytes]:
        """The SEV-SNP report binding the QE's attestation key and its
        certificate table; empty where the EVM has no SNP evidence. Made
        once: the key does not change while the EVM runs."""
        if self.evidence_kind != "sev-snp":
            return b"", b""
        with self._snp_lock:
            if self._snp_evidence is None:
                evidence = self.quoting().snp_evidence()
                self._snp_evidence = (evidence.report, evidence.certificates)
            return self._snp_evidence

    def client_cap(self, family: str | None = None) -> int:
        """The most sessions one client identity may hold."""
        if self.admission.max_client_sessions:
            return self.admission.max_client_sessions
        if self.admission.several(family or self.family):
            return max(1, math.ceil(self.slice_count / 2))
        return self.slice_count

    def release(self, session: Session, reuse: bool = True) -> None:
        with self._slots:
            if session in self.sessions:
                self.sessions.remove(session)
                if reuse:
                    self._free_slices.append(session.epc)  # the last to be taken again
            self._slots.notify_all()

    # -- admission -------------------------------------------------------------
    def accept(self, sock: socket.socket, family: str | None = None) -> None:
        """Handshake, admit or refuse, and serve one connection (in its own
        thread; ``serve`` counted it as pending)."""
        source = _source(sock)
        decided = threading.Event()

        def no_longer_pending() -> None:
            if decided.is_set():
                return
            decided.set()
            with self._slots:
                self._pending = max(0, self._pending - 1)
                left = self._pending_from.pop(source, 1) - 1
                if left > 0:
                    self._pending_from[source] = left

        try:
            self._accept(sock, family or self.family, no_longer_pending)
        finally:
            no_longer_pending()

    def _too_many_pending(self, sock: socket.socket) -> bool:
        """Whether to drop a new connection before its handshake: no more
        than MAX_PENDING in all, PENDING_PER_SOURCE from one uid or host."""
        source = _source(sock)
        with self._slots:
            if (self._pending >= MAX_PENDING
                    or self._pending_from.get(source, 0) >= PENDING_PER_SOURCE):
                return True
            self._pending += 1
            self._pending_from[source] = self._pending_from.get(source, 0) + 1
            return False

    def _accept(self, sock: socket.socket, family: str,
                decided: Callable[[], None]) -> None:
        uid = peer_uid(sock) if family == "unix" else None
        stream = TlsStream(sock, self.identity.context, server_side=True,
                           timeout=self.peer_timeout, peer="the AVM")
        try:
            stream.handshake(min(HANDSHAKE_SECONDS, self.peer_timeout))
        except ChannelError as exc:
            if "EOF" not in str(exc):  # a probe that connected and left says nothing
                self.log(f"vsgx evm: a connection failed its TLS handshake: {exc}")
            stream.close()
            return
        who, refusal = self.admission.check(family, uid, stream.peer_fingerprint())
        if refusal is not None:
            self._refuse(stream, who, refusal, ErrorCode.REFUSED)
            return
        session = self._open_session(
            lambda: Connection(stream, None, blocking=_ENTRIES,
                               name="AVM session", peer="the AVM", deadline=self.peer_timeout),
            who, family)
        if isinstance(session, str):
            self._refuse(stream, who, session, ErrorCode.FULL)
            return
        session.peer_uid = uid
        decided()
        conn = session.conn
        assert isinstance(conn, Connection)

        def closed(error: BaseException | None) -> None:
            if isinstance(error, ChannelError) and not isinstance(error, ChannelClosed):
                self.log(f"vsgx evm: the session of {who} failed: {error}")
            threading.Thread(target=session.cleanup, daemon=True, name="session cleanup").start()

        conn.on_close.append(closed)
        # Serving threads take turns reading; a thread that reads an EENTER
        # runs it while the next one reads on.
        for _ in range(SERVE_THREADS - 1):
            threading.Thread(target=conn.serve_forever, daemon=True,
                             name="AVM session").start()
        conn.serve_forever()

    def open_local(self, who: str = "this process") -> MemoryConnection:
        """A session for an AVM in this process, over the in-memory
        transport: the AVM's end of it (say HELLO on it). The session has
        a slice of its own and the same checks as one over a socket; it
        ends, and is cleaned up, when either end closes."""
        client, server = memory_pair()
        session = self._open_session(lambda: server, who, "local")
        if isinstance(session, str):
            raise ChannelError(f"the EVM refused the session: {session}")

        def closed(_error: BaseException | None) -> None:
            threading.Thread(target=session.cleanup, daemon=True, name="session cleanup").start()

        server.on_close.append(closed)
        return client

    def _open_session(self, make_conn: Callable[[], Connection | MemoryConnection], who: str,
                      family: str) -> Session | str:
        """A session with a slice of its own, or why there is none."""
        deadline = time.monotonic() + SLICE_WAIT_SECONDS
        cap = self.client_cap(family)
        with self._slots:
            while True:
                held = sum(1 for s in self.sessions if s.client == who and not s.closed)
                if held >= cap and cap < self.slice_count:
                    return (f"EVM full for this client: it holds {held} sessions, the most this "
                            f"EVM gives one client (--max-client-sessions)")
                if self._free_slices and held < cap:
                    break
                # A session whose AVM just left may not know it yet: a moment
                # of grace before "full", more while sessions are closing.
                closing = any(s.closed for s in self.sessions)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not closing and remaining < SLICE_WAIT_SECONDS
                                      - FULL_GRACE_SECONDS):
                    return (f"EVM full ({len(self.sessions)} sessions of "
                            f"{self.session_pages * PAGE_SIZE >> 20} MiB in use)")
                self._slots.wait(min(remaining, 0.1))
            epc = self._free_slices.pop(0)
            conn = make_conn()
            session = Session(self, conn, epc, who)
            conn.handler = session.handle
            self.sessions.append(session)
            self.sessions_served += 1
            return session

    def _refuse(self, stream: TlsStream, who: str, text: str, code: int) -> None:
        """Answer the client's HELLO with why it is refused, then close."""
        self.log(f"vsgx evm: refused {who}: {text}")
        try:
            frame = stream.read_frame(HEADER_SIZE, body_length,
                                      wait=min(HELLO_SECONDS, self.peer_timeout))
            message = decode(frame)
            if message.type == Type.HELLO and message.kind == Kind.REQUEST:
                stream.send(encode(error_reply(message, text, code)))
        except (ChannelIdle, ChannelError, ProtocolError):
            pass
        finally:
            stream.close()

    # -- serving ---------------------------------------------------------------
    def _watchdog(self) -> None:
        """Give each session's reader role back to its serving threads when
        the thread holding it has been busy (running an enclave) for a
        while, so that sessions always read on; end idle sessions."""
        next_reap = time.monotonic() + REAP_SECONDS
        while not self.stopped.wait(WATCHDOG_SECONDS):
            sessions = list(self.sessions)
            for session in sessions:
                session.conn.reclaim_role(WATCHDOG_SECONDS)
            now = time.monotonic()
            if now < next_reap:
                continue
            next_reap = now + REAP_SECONDS
            for session in sessions:
                idle = session.idle_for(now)
                if idle >= self.idle_timeout:
                    self.log(f"vsgx evm: closing the idle session of {session.client}")
                    session.end(f"the EVM closed the idle session (no request for "
                                f"{idle:.0f} s; its idle timeout is {self.idle_timeout:g} s)",
                                CLOSING_IDLE)

    def serve(self, address: str, ready: Callable[[], None] | None = None) -> None:
        """Listen on ``address`` and serve until ``stop``."""
        parsed = parse_address(address, listening=True)
        self.family = parsed.family
        others = self.admission.any_client or bool(self.admission.allowed_uids()
                                                   - {os.getuid()})
        # Other users may reach the socket only if some of them are admitted
        # (and then SO_PEERCRED decides).
        self.listener = listen(parsed, mode=0o666 if others else 0o600)
        self.address = str(self.listener.address)
        if parsed.family == "unix":
            try:
                self.client_offers = ClientFileOffers(client_socket_path(parsed.path), self.log,
                                                      0o666 if others else 0o600)
            except OSError as exc:
                self.log(f"vsgx evm: no fast path for clients on this host: {exc}")
        threading.Thread(target=self._watchdog, daemon=True, name="watchdog").start()
        if ready is not None:
            ready()
        try:
            while not self.stopped.is_set():
                try:
                    sock = self.listener.accept(timeout=ACCEPT_SECONDS)
                except (OSError, ValueError):  # closed by stop()
                    if self.stopped.is_set():
                        break
                    raise
                if sock is None:
                    continue
                if self._too_many_pending(sock):
                    sock.close()
                    continue
                threading.Thread(target=self.accept, args=(sock, parsed.family), daemon=True,
                                 name="AVM session").start()
        finally:
            self.listener.close()
            if self.client_offers is not None:
                self.client_offers.close()

    def stop(self) -> None:
        self.stopped.set()
        if self.listener is not None:
            self.listener.close()
        if self.client_offers is not None:
            self.client_offers.close()
        for session in list(self.sessions):
            session.end("the EVM is shutting down", CLOSING_SHUTDOWN)


__all__ = ["Admission", "EnclaveManager", "Session"]
