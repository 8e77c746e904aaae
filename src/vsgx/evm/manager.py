"""The enclave manager: an EVM serving many AVM sessions over the channel
(vSGX's enclave-manager). Each session gets its own slice of the EPC (what
its driver sees as the EPC section in CPUID), may only touch pages of that
slice and enclaves it created, and loses its enclaves when it disconnects.
A malformed request gets an ERROR reply; the session and the others go on.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

from vsgx.arch.constants import PAGE_SIZE
from vsgx.arch.cpuid import EpcSection
from vsgx.arch.errors import Fault, SgxError
from vsgx.channel import (
    ChannelError,
    Connection,
    Message,
    ServerIdentity,
    TlsStream,
    Type,
    error_reply,
    listen,
    parse_address,
    reply_to,
)
from vsgx.channel.messages import VERSION, decode_pages, encode_runs
from vsgx.errors import VsgxError
from vsgx.evm.executor import REG_COUNT
from vsgx.evm.vm import EnclaveVM

DEFAULT_SESSION_EPC_PAGES = 16384
SERVE_THREADS = 12  # concurrent enclave entries of one session
WATCHDOG_SECONDS = 0.01
_CPUID_LEAF = struct.Struct("<4I")


class SessionViolation(VsgxError):
    """A request touching what the session does not own."""


class RemoteUntrusted:
    """The AVM's memory, fetched over the session's channel (or taken from
    the pages the AVM pushed with the EENTER)."""

    def __init__(self, conn: Connection, pushed: dict[int, tuple[bytes, bool]] | None = None):
        self.conn = conn
        self.pushed = pushed or {}

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        pushed = self.pushed.pop(page, None)
        if pushed is not None:
            return pushed
        try:
            reply = self.conn.call(Type.PAGE_FETCH, (page,))
        except (ChannelError, VsgxError):
            return None  # the AVM is gone: its memory is unmapped
        if reply.type == Type.PAGE:
            return reply.blob, bool(reply.fields[0])
        return None

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        try:
            self.conn.notify(Type.PAGE_WRITEBACK, (page,), encode_runs(changes))
        except ChannelError:
            pass


class Session:
    def __init__(self, manager: EnclaveManager, conn: Connection, epc: EpcSection):
        self.manager = manager
        self.vm = manager.vm
        self.conn = conn
        self.epc = epc
        self.enclaves: set[int] = set()
        self.inflight = 0
        self.idle = threading.Condition()
        self.closed = False
        self.handlers: dict[Type, Callable[[Message], Message]] = {
            Type.HELLO: self._hello, Type.GET_CPUID: self._cpuid, Type.BYE: self._bye,
            Type.ECREATE: self._ecreate, Type.EADD: self._eadd, Type.EEXTEND: self._eextend,
            Type.EINIT: self._einit, Type.EREMOVE: self._eremove, Type.EPA: self._epa,
            Type.EBLOCK: self._eblock, Type.ETRACK: self._etrack, Type.EWB: self._ewb,
            Type.ELDB: self._eld, Type.ELDU: self._eld, Type.EAUG: self._eaug,
            Type.EMODPR: self._emodpr, Type.EMODT: self._emodt, Type.EDBGRD: self._edbgrd,
            Type.EDBGWR: self._edbgwr, Type.EENTER: self._eenter, Type.ERESUME: self._eresume,
            Type.KICK: self._kick, Type.SET_PAGE_PROTECTION: self._protect,
            Type.DESTROY: self._destroy,
        }

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
    def handle(self, conn: Connection, message: Message) -> Message | None:
        if message.type == Type.PAGE_WRITEBACK:
            return None
        handler = self.handlers.get(message.type)
        if handler is None:
            return error_reply(message, f"{message.type.name} is not a request to an EVM")
        try:
            return handler(message)
        except Fault as fault:
            return reply_to(message, Type.FAULT, (fault.vector, fault.error_code, fault.address),
                            fault.reason.encode()[:2000])
        except SessionViolation as exc:
            return error_reply(message, str(exc), 3)
        except VsgxError as exc:
            return error_reply(message, str(exc), 4)

    def _ok(self, message: Message) -> Message:
        return reply_to(message, Type.OK)

    def _status(self, message: Message, status: SgxError, value: int = 0) -> Message:
        return reply_to(message, Type.STATUS, (int(status), value))

    def _hello(self, message: Message) -> Message:
        if message.fields[0] != VERSION:
            return error_reply(message, f"protocol version {message.fields[0]} is not "
                                        f"{VERSION}")
        return reply_to(message, Type.HELLO, (VERSION,))

    def _cpuid(self, message: Message) -> Message:
        cpuid = replace(self.vm.cpuid(), epc_sections=(self.epc,))
        blob = b"".join(_CPUID_LEAF.pack(*cpuid.leaf(i)) for i in range(4))
        return reply_to(message, Type.CPUID, (), blob)

    def _bye(self, message: Message) -> Message:
        return self._ok(message)

    def _ecreate(self, m: Message) -> Message:
        epc, secinfo = m.fields
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

    def _exit(self, m: Message, result) -> Message:  # type: ignore[no-untyped-def]
        return reply_to(m, Type.EXIT, (result.kind == "aex", result.exitinfo_valid,
                                       result.interrupt, result.vector, result.error_code,
                                       result.address, *result.registers))

    def _entered(self) -> None:
        with self.idle:
            if self.closed:
                raise VsgxError("the session is closing")
            self.inflight += 1

    def _left(self) -> None:
        with self.idle:
            self.inflight -= 1
            self.idle.notify_all()

    def _eenter(self, m: Message) -> Message:
        secs, return_rip = m.fields[:2]
        registers = list(m.fields[2:2 + REG_COUNT])
        untrusted = RemoteUntrusted(self.conn, decode_pages(m.blob))
        self._entered()
        try:
            return self._exit(m, self.vm.eenter(self._secs(secs), registers, return_rip,
                                                untrusted))
        finally:
            self._left()

    def _eresume(self, m: Message) -> Message:
        secs = m.fields[0]
        registers = list(m.fields[1:1 + REG_COUNT])
        untrusted = RemoteUntrusted(self.conn, decode_pages(m.blob))
        self._entered()
        try:
            return self._exit(m, self.vm.eresume(self._secs(secs), registers, untrusted))
        finally:
            self._left()

    def _kick(self, m: Message) -> Message:
        self.vm.kick(self._secs(m.fields[0]))
        return self._ok(m)

    def _protect(self, m: Message) -> Message:
        secs, linaddr, count, prot = m.fields
        self.vm.set_page_protection(self._secs(secs), linaddr, count, prot)
        return self._ok(m)

    def _destroy(self, m: Message) -> Message:
        secs = self._secs(m.fields[0])
        self.vm.destroy(secs)
        self.enclaves.discard(secs)
        return self._ok(m)

    # -- the end of a session --------------------------------------------------
    def cleanup(self, timeout: float = 10.0) -> None:
        """Stop the session's enclave threads, then destroy its enclaves."""
        with self.idle:
            self.closed = True
        for secs in list(self.enclaves):
            try:
                self.vm.kick(secs)
            except (Fault, VsgxError):
                pass
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)
        for secs in list(self.enclaves):
            try:
                self.vm.destroy(secs)
            except (Fault, VsgxError):
                pass
        self.enclaves.clear()
        try:
            self.vm.clear_epc(self.epc.base, self.epc.size)  # VA pages, leftovers
        except (Fault, VsgxError):
            pass
        self.manager.release(self)


class EnclaveManager:
    """Serves AVM sessions on a listening socket."""

    def __init__(self, vm: EnclaveVM, *, session_epc_pages: int | None = None,
                 evidence: str = "none", log: Callable[[str], None] | None = None):
        self.vm = vm
        self.identity = ServerIdentity(evidence)
        config = vm.config
        self.session_pages = min(session_epc_pages or DEFAULT_SESSION_EPC_PAGES,
                                 config.epc_pages)
        slices = config.epc_pages // self.session_pages
        self._free_slices = [EpcSection(config.epc_base + i * self.session_pages * PAGE_SIZE,
                                        self.session_pages * PAGE_SIZE)
                             for i in range(slices)]
        self._lock = threading.Lock()
        self.sessions: list[Session] = []
        self.listener: socket.socket | None = None
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.stopped = threading.Event()
        self.sessions_served = 0

    def release(self, session: Session) -> None:
        with self._lock:
            if session in self.sessions:
                self.sessions.remove(session)
                self._free_slices.append(session.epc)

    def accept(self, sock: socket.socket) -> None:
        """Handshake and serve one connection (in its own thread)."""
        stream = TlsStream(sock, self.identity.context, server_side=True)
        try:
            stream.handshake()
        except ChannelError as exc:
            self.log(f"vsgx evm: a connection failed its TLS handshake: {exc}")
            stream.close()
            return
        with self._lock:
            if not self._free_slices:
                self.log("vsgx evm: no EPC slice left for a new session")
                stream.close()
                return
            epc = self._free_slices.pop(0)
        conn = Connection(stream, None, blocking={Type.EENTER, Type.ERESUME},
                          name="AVM session")
        session = Session(self, conn, epc)
        conn.handler = session.handle
        conn.on_close.append(lambda error: threading.Thread(
            target=session.cleanup, daemon=True, name="session cleanup").start())
        with self._lock:
            self.sessions.append(session)
            self.sessions_served += 1
        # Serving threads take turns reading; a thread that reads an EENTER
        # runs it while the next one reads on.
        for _ in range(SERVE_THREADS - 1):
            threading.Thread(target=conn.serve_forever, daemon=True,
                             name="AVM session").start()
        conn.serve_forever()

    def _watchdog(self) -> None:
        """Give each session's reader role back to its serving threads when
        the thread holding it has been busy (running an enclave) for a
        while, so that sessions always read on."""
        while not self.stopped.wait(WATCHDOG_SECONDS):
            for session in list(self.sessions):
                session.conn.reclaim_role(WATCHDOG_SECONDS)

    def serve(self, address: str, ready: Callable[[], None] | None = None) -> None:
        """Listen on ``address`` and serve until ``stop``."""
        self.listener = listen(parse_address(address))
        threading.Thread(target=self._watchdog, daemon=True, name="watchdog").start()
        if ready is not None:
            ready()
        try:
            while not self.stopped.is_set():
                try:
                    sock, _ = self.listener.accept()
                except OSError:
                    if self.stopped.is_set():
                        break
                    raise
                threading.Thread(target=self.accept, args=(sock,), daemon=True,
                                 name="AVM session").start()
        finally:
            self.listener.close()

    def stop(self) -> None:
        self.stopped.set()
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
        for session in list(self.sessions):
            session.conn.close()


__all__ = ["EnclaveManager", "Session"]
