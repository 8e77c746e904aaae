"""The AVM's side of the channel: an EVM reached over attested TLS, with the
same methods as an in-process EnclaveVM, and the page server that answers
the EVM's PAGE_FETCH and applies its PAGE_WRITEBACKs while an enclave runs."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from vsgx.arch.constants import PAGE_SIZE, ExitKind, Vector
from vsgx.arch.cpuid import SgxCpuid
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.quote import QuoteStatus
from vsgx.arch.registers import FSBASE, GSBASE, RBX, RCX, eexit_registers
from vsgx.avm.driver import EnclaveLost
from vsgx.channel import (
    DEFAULT_TIMEOUT,
    ChannelError,
    ClientIdentity,
    Connection,
    ErrorCode,
    EvidencePolicy,
    Message,
    RemoteError,
    TlsStream,
    Type,
    client_context,
    connect,
    parse_address,
    reply_to,
)
from vsgx.channel.address import client_socket_path
from vsgx.channel.evidence import KIND_NONE, one_line
from vsgx.channel.memory import MemoryConnection
from vsgx.channel.messages import (
    ADD_RUN,
    BATCH_VERSION,
    ELDU_ITEM,
    EVICTED,
    FAULT_IN_EBLOCK,
    MAX_ADD_BATCH,
    MAX_ADD_RUNS,
    MAX_BLOCK_BATCH,
    MAX_BODY,
    MAX_ELDU_BATCH,
    MAX_EWB_BATCH,
    MAX_PROTECTION_RANGES,
    MAX_PUSHED_PAGES,
    MAX_UNIFORM_RESIDENT,
    MAX_YOUNG_BATCH,
    MIN_PROTOCOL_VERSION,
    NOT_RUN,
    PROTECTION_RANGE,
    PROTOCOL_VERSION,
    QE_REPORT_INFO_INPUT_SIZE,
    QUOTE_WANT_QE_REPORT,
    QUOTE_WANT_SNP,
    QUOTING_VERSION,
    LaunchStatus,
    LaunchTokenError,
    ProtocolError,
    decode_runs,
    decode_statuses,
    decode_writebacks,
    encode_pages,
    pack_u64s,
    unpack_u32s,
    unpack_u64s,
)
from vsgx.crypto.quote import QuoteGenerationError, QuoteResult
from vsgx.errors import VsgxError

_CPUID_LEAF = struct.Struct("<4I")
NO_SEV_BANNER = (
    "\n"
    "  *********************************************************************\n"
    "  *  WARNING: the EVM offers no SEV evidence. Enclave memory is only  *\n"
    "  *  protected by process isolation on that machine. Use this for    *\n"
    "  *  development and testing, not to protect secrets.                *\n"
    "  *********************************************************************\n")


class EvmRefused(VsgxError):
    """The EVM did not admit this AVM (not on its list, or it is full)."""


# What a session that already ended has nothing left to do: the EVM removed
# its enclaves with it.
_TEARDOWN = {Type.EREMOVE: Message(Type.STATUS, (0, 0)), Type.DESTROY: Message(Type.OK, ()),
             Type.KICK: Message(Type.OK, ()), Type.BYE: Message(Type.OK, ())}


# EXIT's fields: aex, valid, interrupt, vector, error code, address, registers
_EXIT_FIELDS = 6 + 20
_RUNS_FIELDS = 12  # EADD_RUNS's fields: secs, count


@dataclass(slots=True)
class RemoteExit:
    kind: ExitKind
    registers: list[int]
    vector: int
    error_code: int
    address: int
    exitinfo_valid: bool
    interrupt: bool


class FastEntryClient(Protocol):
    """A TCS's fast path for this process (the runner's CLIENT area and
    pool, mapped from the files an EVM on this host hands out): what the
    host layer makes (``RemoteEvm.fast_clients``) where it can."""

    closed: bool

    def begin(self, untrusted: Any) -> bool: ...

    def end(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """Counts of its work: "entries" is those the runner ended."""

    def eenter(self, registers: list[int], return_rip: int, untrusted: Any
               ) -> tuple[str, Sequence[int] | None, bool] | None:
        """begin and EENTER: None if nothing was begun (no fast path for
        this memory), #GP if another entry holds the TCS, else (what
        happened, the reported registers, whether it ended already); if it
        raises, it has ended what it began."""


class FastClientFactory(Protocol):
    def __call__(self, client_fd: int, pool_fd: int, base: int, size: int, name: str, /
                 ) -> FastEntryClient: ...


# a TCS whose runners keep going away before they serve an entry stays on
# the channel (one closed as idle after its entries is not a failed try)
FAST_ATTACH_TRIES = 3


@dataclass
class RemoteEvicted:
    ciphertext: bytes
    pcmd: bytes
    linaddr: int


class RemoteEvm:
    """An EVM session: in another process or VM (a socket ``Connection``),
    or in this one (a ``MemoryConnection``, over which an entry hands the
    application's address space itself to the EVM instead of its pages)."""

    def __init__(self, conn: Connection | MemoryConnection, offer: int | None = None):
        """Say HELLO on ``conn``, offering protocol version ``offer`` (by
        default the newest this side speaks; an older one acts as an older
        AVM)."""
        offer = PROTOCOL_VERSION if offer is None else offer
        self.conn = conn
        self.in_memory = isinstance(conn, MemoryConnection)
        self.memory: Any = None  # the AVM's address space, for the page server
        self._cpuid: SgxCpuid | None = None
        self.version = offer
        # The untrusted pages each TCS's last entry used: what its next one
        # pushes (protocol version 3, whose exits say which pages were used).
        self._used: dict[int, tuple[int, ...]] = {}
        # The fast path (an EVM on this host): each enclave's range from its
        # SECS, each TCS's client once an entry through the channel made its
        # runner, and how often a TCS was attached.
        self._ranges: dict[int, tuple[int, int]] = {}
        self._fast: dict[tuple[int, int], FastEntryClient] = {}
        self._fast_tries: dict[tuple[int, int], int] = {}
        # the closed client whose served entries last gave a TCS its tries
        # back: each client does so once (enclave code can close its own)
        self._fast_credited: dict[tuple[int, int], FastEntryClient] = {}
        self._fast_lock = threading.Lock()
        self.fast_counts = {"entries": 0, "handed over": 0, "refused": 0, "attached": 0}
        conn.handler = self._serve
        try:
            reply = self.conn.call(Type.HELLO, (offer,))
        except RemoteError as exc:
            conn.close()
            if exc.code in (ErrorCode.REFUSED, ErrorCode.FULL):
                raise EvmRefused(f"the EVM refused the session: "
                                 f"{one_line(str(exc), 400)}") from None
            raise ChannelError(f"the EVM did not accept the session: {one_line(str(exc))}"
                               ) from None
        except ChannelError as exc:
            raise ChannelError(f"the EVM ended the session before it began: {exc}") from None
        if reply.type != Type.HELLO or not (MIN_PROTOCOL_VERSION <= reply.fields[0]
                                            <= offer):
            conn.close()
            raise ChannelError("the EVM does not speak this vsgx's protocol")
        self.version = reply.fields[0]  # what the EVM agreed to speak

    @property
    def batch_leaves(self) -> bool:
        """Whether the session has the batch paging leaves (the driver's
        eadd_pages ... test_and_clear_young; version 3)."""
        return self.version >= BATCH_VERSION

    def attach_memory(self, memory: Any) -> None:
        self.memory = memory

    # -- the page server --------------------------------------------------------
    def _serve(self, conn: Connection, message: Message) -> Message | None:
        memory = self.memory
        if message.type == Type.PAGE_FETCH:
            page = message.fields[0]
            fetched = memory.fetch(page) if memory is not None and page % PAGE_SIZE == 0 \
                else None
            if fetched is None:
                return reply_to(message, Type.PAGE_MISSING)
            data, writable = fetched
            return reply_to(message, Type.PAGE, (int(writable),), data)
        if message.type == Type.PAGE_WRITEBACK:
            if memory is not None:
                memory.write_back(message.fields[0], decode_runs(message.blob))
            return None
        if message.type == Type.PAGE_WRITEBACKS:
            records = decode_writebacks(message.blob, message.fields[0])
            if memory is not None:
                for page, runs in records:
                    memory.write_back(page, runs)
            return None
        return reply_to(message, Type.ERROR, (1,), b"the AVM serves page requests only")

    # -- requests -----------------------------------------------------------------
    def _call(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b"") -> Message:
        if self.conn.error is not None and message_type in _TEARDOWN:
            return _TEARDOWN[message_type]
        try:
            reply = self.conn.call(message_type, fields, blob)
        except ChannelError as exc:
            raise EnclaveLost(f"the enclave VM is lost: {exc}") from None
        if reply.type == Type.FAULT:
            vector, error_code, address = reply.fields
            raise Fault(Vector(vector), error_code, address, reply.blob.decode(errors="replace"))
        return reply

    def _status(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b""
                ) -> SgxError:
        return SgxError(self._call(message_type, fields, blob).fields[0])

    def cpuid(self) -> SgxCpuid:
        if self._cpuid is None:
            blob = self._call(Type.GET_CPUID).blob
            leaves = [_CPUID_LEAF.unpack_from(blob, i) for i in range(0, len(blob), 16)]
            self._cpuid = SgxCpuid.from_leaves(leaves)
        return self._cpuid

    def ecreate(self, epc_page: int, secs: bytes, secinfo: bytes) -> None:
        self._call(Type.ECREATE, (epc_page, secinfo), secs)
        size, base = struct.unpack_from("<QQ", secs)  # SECS.SIZE, SECS.BASEADDR
        self._ranges[epc_page] = (base, size)

    def eadd(self, epc_page: int, secs_page: int, linaddr: int, source: bytes, secinfo: bytes,
             measure: bool = False) -> None:
        self._call(Type.EADD, (epc_page, secs_page, linaddr, int(measure), secinfo), source)

    def eextend(self, secs_page: int, chunk: int) -> None:
        self._call(Type.EEXTEND, (secs_page, chunk))

    def einit(self, secs_page: int, sigstruct: bytes, token: bytes = bytes(EINITTOKEN_SIZE)
              ) -> SgxError:
        return self._status(Type.EINIT, (secs_page, sigstruct, token))

    def eremove(self, epc_page: int) -> SgxError:
        return self._status(Type.EREMOVE, (epc_page,))

    def epa(self, epc_page: int) -> None:
        self._call(Type.EPA, (epc_page,))

    def eblock(self, epc_page: int) -> SgxError:
        return self._status(Type.EBLOCK, (epc_page,))

    def etrack(self, secs_page: int) -> SgxError:
        return self._status(Type.ETRACK, (secs_page,))

    def ewb(self, epc_page: int, va_slot: int) -> tuple[SgxError, RemoteEvicted | None]:
        reply = self._call(Type.EWB, (epc_page, va_slot))
        status, linaddr, pcmd = reply.fields
        if not reply.blob:
            return SgxError(status), None
        return SgxError(status), RemoteEvicted(reply.blob, pcmd, linaddr)

    def eldu(self, epc_page: int, va_slot: int, secs_page: int, linaddr: int, ciphertext: bytes,
             pcmd: bytes) -> SgxError:
        return self._status(Type.ELDU, (epc_page, va_slot, secs_page, linaddr, pcmd), ciphertext)

    def eldb(self, epc_page: int, va_slot: int, secs_page: int, linaddr: int, ciphertext: bytes,
             pcmd: bytes) -> SgxError:
        return self._status(Type.ELDB, (epc_page, va_slot, secs_page, linaddr, pcmd), ciphertext)

    def eaug(self, epc_page: int, secs_page: int, linaddr: int) -> None:
        self._call(Type.EAUG, (epc_page, secs_page, linaddr))

    def emodpr(self, epc_page: int, secinfo: bytes) -> SgxError:
        return self._status(Type.EMODPR, (epc_page, secinfo))

    def emodt(self, epc_page: int, secinfo: bytes) -> SgxError:
        return self._status(Type.EMODT, (epc_page, secinfo))

    def edbgrd(self, address: int) -> tuple[SgxError, int]:
        reply = self._call(Type.EDBGRD, (address,))
        return SgxError(reply.fields[0]), reply.fields[1]

    def edbgwr(self, address: int, value: int) -> SgxError:
        return self._status(Type.EDBGWR, (address, value))

    def kick(self, secs_page: int) -> None:
        self._call(Type.KICK, (secs_page,))

    def set_page_protection(self, secs_page: int, linaddr: int, count: int, prot: int) -> None:
        self._call(Type.SET_PAGE_PROTECTION, (secs_page, linaddr, count, prot))

    def set_page_protections(self, secs_page: int, ranges: list[tuple[int, int, int]]
                             ) -> None:
        """set_page_protection of each (LINADDR, count, prot), in order: one
        request per MAX_PROTECTION_RANGES (a version-3 EVM)."""
        if self.version < BATCH_VERSION:
            for linaddr, count, prot in ranges:
                self.set_page_protection(secs_page, linaddr, count, prot)
            return
        for first in range(0, len(ranges), MAX_PROTECTION_RANGES):
            chunk = ranges[first:first + MAX_PROTECTION_RANGES]
            self._call(Type.SET_PAGE_PROTECTIONS, (secs_page, len(chunk)),
                       b"".join(PROTECTION_RANGE.pack(*item) for item in chunk))

    def destroy(self, secs_page: int) -> None:
        self._call(Type.DESTROY, (secs_page,))
        with self._fast_lock:
            self._ranges.pop(secs_page, None)
            for key in [key for key in self._fast if key[0] == secs_page]:
                del self._fast[key]
            for key in [key for key in self._fast_tries if key[0] == secs_page]:
                del self._fast_tries[key]
                self._fast_credited.pop(key, None)

    def _exit(self, reply: Message, untrusted: Any, tcs: int) -> RemoteExit:
        fields = reply.fields
        if reply.type == Type.EXIT_PAGES:
            used_count, records = fields[_EXIT_FIELDS], fields[_EXIT_FIELDS + 1]
            if not used_count and not records:
                self._used[tcs] = ()
            else:
                if used_count > MAX_PUSHED_PAGES:
                    raise ProtocolError("EXIT_PAGES names too many used pages")
                used = unpack_u64s(reply.blob, used_count, "EXIT_PAGES")
                # The enclave's writes reach the application before the exit does.
                for page, runs in decode_writebacks(memoryview(reply.blob)[8 * used_count:],
                                                    records):
                    untrusted.write_back(page, runs)
                self._used[tcs] = used
        elif reply.type != Type.EXIT:
            raise ChannelError(f"the EVM answered an entry with {reply.type.name}")
        return RemoteExit(ExitKind.AEX if fields[0] else ExitKind.EEXIT,
                          list(fields[6:_EXIT_FIELDS]),
                          fields[3], fields[4], fields[5], bool(fields[1]), bool(fields[2]))

    def _entry_in_memory(self, message_type: Type, fields: tuple[Any, ...], untrusted: Any, tcs: int
                         ) -> Any:
        """An entry over the in-memory transport: the address space goes
        with it, and the EVM's exit comes back as it is (an in-process
        EVM's entries that do not go to the TCS's runner itself)."""
        conn = self.conn
        assert isinstance(conn, MemoryConnection)
        try:
            reply = conn.call(message_type, fields, b"", untrusted)
        except ChannelError as exc:
            raise EnclaveLost(f"the enclave VM is lost: {exc}") from None
        if reply.attachment is not None and reply.type == Type.EXIT:
            return reply.attachment
        if reply.type == Type.FAULT:
            vector, error_code, address = reply.fields
            raise Fault(Vector(vector), error_code, address, reply.blob.decode(errors="replace"))
        return self._exit(reply, untrusted, tcs)

    def used_pages(self, tcs: int) -> tuple[int, ...] | None:
        """The untrusted pages the last entry on ``tcs`` used, which the next
        entry sends along; None before the EVM has said (protocol 3)."""
        used = self._used.get(tcs)
        return None if used is None else tuple(used)

    def _pushed(self, registers: list[int], untrusted: Any) -> bytes:
        """The pages an entry will almost surely touch, sent with it: those
        the TCS's last entry used (version 3 says which), or, the first
        time, the top of the untrusted stack (where the SDK places OCALL
        frames) and what RDI, RSI and RDX point to. Saves a PAGE_FETCH
        round trip each; a null entry sends none."""
        candidates: tuple[int, ...] | list[int] | None = self._used.get(registers[3])  # RBX
        if candidates is None:
            rsp = registers[4]
            candidates = [(rsp - 8) & ~(PAGE_SIZE - 1), (rsp - 8 - PAGE_SIZE) & ~(PAGE_SIZE - 1)]
            candidates += [registers[i] & ~(PAGE_SIZE - 1) for i in (7, 6, 2)]  # RDI, RSI, RDX
        elif not candidates:
            return b""
        pages = []
        for page in dict.fromkeys(candidates):
            fetched = untrusted.fetch(page) if page else None
            if fetched is not None:
                pages.append((page, fetched[0], fetched[1]))
        return encode_pages(pages[:MAX_PUSHED_PAGES])

    def eenter(self, secs_page: int, registers: list[int], return_rip: int, untrusted: Any
               ) -> Any:
        tcs = registers[RBX]
        client = self._fast.get((secs_page, tcs))  # only a fast-capable EVM has clients
        if client is None or client.closed:
            result = self._channel_eenter(secs_page, registers, return_rip, untrusted)
            if self._fast_capable and self.fast_path:
                self._attach(secs_page, tcs)
            return result
        # Any entry of the TCS, even one through the channel, runs between
        # begin and end: the pages the runner keeps are this client's.
        try:
            begun = client.eenter(registers, return_rip, untrusted)
        except Fault:  # #GP: another thread's entry holds the TCS (nothing begun)
            raise
        except BaseException:
            # The client ended what it began and is done: its runner was lost
            # (the EVM replaces it), or the entry was given up mid-way (the
            # entry is lost, as the EVM's own entries are then).
            self._drop_client(secs_page, tcs)
            raise
        if begun is None:  # no fast path for this memory
            return self._channel_eenter(secs_page, registers, return_rip, untrusted)
        outcome, exit_registers, ended = begun
        try:
            counts = self.fast_counts
            if outcome == "eexit" and exit_registers is not None:
                counts["entries"] += 1
                return self._fast_eexit(registers, exit_registers, tcs)
            if outcome == "handed over":
                counts["handed over"] += 1
                return self.continue_entry(secs_page, tcs, registers[RCX],
                                           (registers[FSBASE], registers[GSBASE]), untrusted)
            # refused (no grant: the EVM checks the entry) or gone (the
            # runner closed: a new one's client is asked for after this)
            counts["refused"] += 1
            return self._channel_eenter(secs_page, registers, return_rip, untrusted)
        finally:
            if not ended:
                client.end()

    def _channel_eenter(self, secs_page: int, registers: list[int], return_rip: int,
                        untrusted: Any) -> Any:
        if self.in_memory:  # the EVM maps the application's pages in place
            return self._entry_in_memory(Type.EENTER, (secs_page, return_rip, *registers),
                                         untrusted, registers[RBX])
        return self._eenter(secs_page, registers, return_rip, untrusted)

    def _eenter(self, secs_page: int, registers: list[int], return_rip: int, untrusted: Any
                ) -> RemoteExit:
        self.memory = untrusted
        reply = self._call(Type.EENTER, (secs_page, return_rip, *registers),
                           self._pushed(registers, untrusted))
        return self._exit(reply, untrusted, registers[3])

    def _fast_eexit(self, at_enclu: list[int], reported: Sequence[int], tcs: int) -> RemoteExit:
        """EEXIT as the SDM defines it, whatever the CLIENT area says
        (enclave code can write it)."""
        regs = eexit_registers(reported, at_enclu)
        if regs is None:
            raise EnclaveLost(f"the runner of TCS {tcs:#x} reported an EEXIT to a "
                              f"non-canonical address {reported[RBX]:#x}")
        return RemoteExit(ExitKind.EEXIT, regs, 0, 0, 0, False, False)

    def eresume(self, secs_page: int, registers: list[int], untrusted: Any) -> Any:
        client = self._fast.get((secs_page, registers[RBX])) if self._fast_capable else None
        begun = client is not None and not client.closed and client.begin(untrusted)
        try:
            if self.in_memory:
                return self._entry_in_memory(Type.ERESUME, (secs_page, *registers), untrusted,
                                             registers[RBX])
            self.memory = untrusted
            reply = self._call(Type.ERESUME, (secs_page, *registers),
                               self._pushed(registers, untrusted))
            return self._exit(reply, untrusted, registers[3])
        finally:
            if begun and client is not None:
                client.end()

    # -- the fast path of a client on the EVM's host ----------------------------------
    client_socket: str | None = None  # the EVM's side socket (a Unix-socket EVM)
    # What makes a TCS's fast client from its files (the host layer sets it
    # where this process can build one), and a switch for measuring without.
    fast_clients: FastClientFactory | None = None
    fast_path = True

    @property
    def _fast_capable(self) -> bool:
        """Whether entries may go to the runners themselves: an EVM in this
        process (its own clients, handed across), or one on this host whose
        runners' files this process can build clients on."""
        return self.in_memory or self.fast_clients is not None

    def _drop_client(self, secs_page: int, tcs: int) -> None:
        with self._fast_lock:
            self._fast.pop((secs_page, tcs), None)

    def _attach(self, secs_page: int, tcs: int) -> None:
        """After an entry through the channel made the TCS's runner: ask for
        its client (an in-process EVM) or its files, for the next entries
        (a failure leaves the TCS on the channel; each TCS is attached at
        most FAST_ATTACH_TRIES times)."""
        factory, key = self.fast_clients, (secs_page, tcs)
        if self.version < BATCH_VERSION or (not self.in_memory and (
                factory is None or self.client_socket is None)):
            return
        with self._fast_lock:
            current = self._fast.get(key)
            tries = self._fast_tries.get(key, 0)
            if current is not None and current.closed and current.stats()["entries"] \
                    and self._fast_credited.get(key) is not current:
                self._fast_credited[key] = current
                tries = 0
            if (current is not None and not current.closed) or tries >= FAST_ATTACH_TRIES \
                    or secs_page not in self._ranges:
                return
            self._fast_tries[key] = tries + 1
            if self.in_memory:
                try:
                    self._fast[key] = self._in_memory_client(secs_page, tcs)
                    self.fast_counts["attached"] += 1
                except (VsgxError, Fault):
                    self._fast_tries[key] = FAST_ATTACH_TRIES
                    self._fast.pop(key, None)
                return
            assert factory is not None
            base, size = self._ranges[secs_page]
            try:
                fds = self.client_files(secs_page, tcs)
            except (VsgxError, Fault):
                # No fast path here (another executor, an older EVM): a
                # refusal is not asked again.
                self._fast_tries[key] = FAST_ATTACH_TRIES
                self._fast.pop(key, None)
                return
            try:
                self._fast[key] = factory(fds[0], fds[1], base, size, f"TCS {tcs:#x}")
                self.fast_counts["attached"] += 1
            except VsgxError:
                self._fast.pop(key, None)
            finally:
                for fd in fds:
                    os.close(fd)

    def _in_memory_client(self, secs_page: int, tcs: int) -> FastEntryClient:
        """The fast-path client an EVM in this process uses for the TCS
        itself, handed across the in-memory channel: one client, so one
        busy flag and one set of kept pages for the EVM's entries of the
        TCS and ours; VsgxError where the TCS has none."""
        reply = self._call(Type.CLIENT_FILES, (secs_page, tcs))
        client = reply.attachment
        if reply.type != Type.CLIENT_OFFER or client is None:
            raise VsgxError("the EVM has no fast path for this TCS: "
                            + one_line(reply.blob.decode(errors="replace"), 300))
        return cast(FastEntryClient, client)

    def client_files(self, secs_page: int, tcs: int) -> tuple[int, int]:
        """The CLIENT area and page pool of a TCS's runner (file
        descriptors the caller owns), from an EVM on this host; VsgxError
        where there are none."""
        if self.client_socket is None or self.in_memory or self.version < BATCH_VERSION:
            raise VsgxError("the fast path's files come only from an EVM on a Unix socket")
        reply = self._call(Type.CLIENT_FILES, (secs_page, tcs))
        if reply.type != Type.CLIENT_OFFER:
            raise VsgxError("the EVM has no fast path for this TCS: "
                            + one_line(reply.blob.decode(errors="replace"), 300))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as side:
            side.settimeout(5.0)
            try:
                side.connect(self.client_socket)
                side.sendall(reply.fields[0])
                data, fds, _, _ = socket.recv_fds(side, 1, 2)
            except OSError as exc:
                raise VsgxError(f"the EVM's side socket: {exc}") from None
        if data != b"\1" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise VsgxError("the EVM refused the fast path's files")
        return fds[0], fds[1]

    def continue_entry(self, secs_page: int, tcs: int, aep: int, entry_fsgs: tuple[int, int],
                       untrusted: Any) -> Any:
        """Go on with an entry the TCS's runner handed over to the EVM."""
        if self.in_memory:
            return self._entry_in_memory(Type.CONTINUE, (secs_page, tcs, aep, *entry_fsgs),
                                         untrusted, tcs)
        self.memory = untrusted
        reply = self._call(Type.CONTINUE, (secs_page, tcs, aep, *entry_fsgs))
        return self._exit(reply, untrusted, tcs)

    # -- batch paging (protocol version 3; the driver asks batch_leaves first) -----
    # A batch request is all the EVM does for it: the pages of one call go in
    # one message (the driver's batches fit); a longer list is cut where the
    # leaves are independent, and a fault ends the list as in-process.
    def _batched(self, what: str) -> None:
        if self.version < BATCH_VERSION:
            raise VsgxError(f"{what}: the EVM speaks protocol version {self.version}, which "
                            f"has no batch paging (version {BATCH_VERSION} has)")

    @staticmethod
    def _outcome(codes: tuple[int, ...], fault: tuple[int, int, int, str] | None,
                 results: list[Any]) -> bool:
        """Append a batch's results (and its fault); False if it faulted."""
        results.extend(SgxError(code) for code in codes)
        if fault is not None:
            vector, error_code, address, reason = fault
            results.append(Fault(Vector(vector), error_code, address, reason))
            return False
        return True

    def eadd_pages(self, epc_pages: list[int], secs_page: int, linaddr: int,
                   source: bytes | memoryview, secinfo: bytes, measure: bool = False) -> None:
        self._batched("EADD_PAGES")
        count = len(epc_pages)
        if len(source) != count * PAGE_SIZE:
            raise VsgxError("EADD_PAGES: the source must be one page per EPC page")
        for first in range(0, count, MAX_ADD_BATCH):
            chunk = epc_pages[first:first + MAX_ADD_BATCH]
            data = source[first * PAGE_SIZE:(first + len(chunk)) * PAGE_SIZE]
            self._call(Type.EADD_PAGES, (secs_page, linaddr + first * PAGE_SIZE, int(measure),
                                         bytes(secinfo), len(chunk)),
                       pack_u64s(chunk) + bytes(data))

    def eadd_runs(self, secs_page: int, runs: list[tuple[Any, ...]]
                  ) -> list[SgxError | Fault]:
        """The in-process eadd_runs over the channel: as many runs per
        EADD_RUNS as fit one message, in order."""
        self._batched("EADD_RUNS")
        results: list[Any] = []
        parts: list[bytes] = []
        size = count = 0
        for linaddr, pages, secinfo, measure, fill, data, epcs in runs:
            record = [ADD_RUN.pack(linaddr, pages, len(epcs), fill or 0, int(data is None),
                                   int(measure), bytes(secinfo)), pack_u64s(list(epcs))]
            if data is not None:
                record.append(bytes(data))
            length = sum(map(len, record))
            if _RUNS_FIELDS + length > MAX_BODY:
                raise VsgxError("EADD_RUNS: a run does not fit one message")
            if count and (_RUNS_FIELDS + size + length > MAX_BODY or count == MAX_ADD_RUNS):
                if not self._send_runs(secs_page, count, parts, results):
                    return results
                parts, size, count = [], 0, 0
            parts += record
            size += length
            count += 1
        if count:
            self._send_runs(secs_page, count, parts, results)
        return results

    def _send_runs(self, secs_page: int, count: int, parts: list[bytes], results: list[Any]
                   ) -> bool:
        reply = self._call(Type.EADD_RUNS, (secs_page, count), b"".join(parts))
        return self._outcome(*decode_statuses(reply), results)

    # EPC pages an EADD_UNIFORM may give resident pages (the driver asks).
    uniform_resident_limit = MAX_UNIFORM_RESIDENT

    def eadd_uniform(self, secs_page: int, linaddr: int, count: int, secinfo: bytes, fill: int,
                     measure: bool = False, epc_pages: list[int] | tuple[int, ...] = ()
                     ) -> None:
        self._batched("EADD_UNIFORM")
        if len(epc_pages) > MAX_UNIFORM_RESIDENT:
            raise VsgxError(f"EADD_UNIFORM: at most {MAX_UNIFORM_RESIDENT} resident pages in "
                            "one run")
        self._call(Type.EADD_UNIFORM, (secs_page, linaddr, count, fill, int(measure),
                                       bytes(secinfo), len(epc_pages)),
                   pack_u64s(list(epc_pages)))

    def eldu_deferred(self, epc_page: int, secs_page: int, linaddr: int) -> None:
        self._batched("ELDU_DEFERRED")
        self._call(Type.ELDU_DEFERRED, (epc_page, secs_page, linaddr))

    def eblock_pages(self, epc_pages: list[int]) -> list[SgxError | Fault]:
        self._batched("EBLOCK_PAGES")
        results: list[Any] = []
        for first in range(0, len(epc_pages), MAX_BLOCK_BATCH):
            chunk = epc_pages[first:first + MAX_BLOCK_BATCH]
            reply = self._call(Type.EBLOCK_PAGES, (len(chunk),), pack_u64s(chunk))
            if not self._outcome(*decode_statuses(reply), results):
                break
        return results

    @staticmethod
    def _evicted(blob: bytes, position: int, count: int, results: list[Any]) -> int:
        """Decode ``count`` EVICTED records at ``position``; where they end."""
        for _ in range(count):
            if position + EVICTED.size > len(blob):
                raise ChannelError("the EVM's evicted pages are cut short")
            status, has_page, linaddr, pcmd = EVICTED.unpack_from(blob, position)
            position += EVICTED.size
            evicted = None
            if has_page:
                if position + PAGE_SIZE > len(blob):
                    raise ChannelError("the EVM's evicted pages are cut short")
                evicted = RemoteEvicted(blob[position:position + PAGE_SIZE], pcmd, linaddr)
                position += PAGE_SIZE
            results.append((SgxError(status), evicted))
        return position

    def ewb_pages(self, pairs: list[tuple[int, int]]
                  ) -> list[tuple[SgxError, RemoteEvicted | None] | Fault]:
        self._batched("EWB_PAGES")
        results: list[Any] = []
        for first in range(0, len(pairs), MAX_EWB_BATCH):
            chunk = pairs[first:first + MAX_EWB_BATCH]
            reply = self._call(Type.EWB_PAGES, (len(chunk),),
                               pack_u64s([value for pair in chunk for value in pair]))
            count, faulted, vector, error_code, address = reply.fields
            position = self._evicted(reply.blob, 0, count, results)
            if faulted:
                results.append(Fault(Vector(vector), error_code, address,
                                     reply.blob[position:].decode(errors="replace")))
                break
        return results

    def evict_pages(self, secs_page: int, pairs: list[tuple[int, int]]
                    ) -> tuple[list[Any], SgxError | None, list[Any]]:
        """The in-process evict_pages (EBLOCK, ETRACK, EWB of a reclaimer's
        batch) in one round trip."""
        self._batched("EVICT_PAGES")
        if len(pairs) > MAX_EWB_BATCH:
            raise VsgxError(f"EVICT_PAGES: at most {MAX_EWB_BATCH} pages in one batch")
        reply = self._call(Type.EVICT_PAGES, (secs_page, len(pairs)),
                           pack_u64s([value for pair in pairs for value in pair]))
        blocked, track, evicted, where, vector, error_code, address = reply.fields
        blocks: list[Any] = [SgxError(code) for code in
                             unpack_u32s(reply.blob, blocked, "EVICT_RESULT")]
        evictions: list[Any] = []
        position = self._evicted(reply.blob, 4 * blocked, evicted, evictions)
        if where:
            fault = Fault(Vector(vector), error_code, address,
                          reply.blob[position:].decode(errors="replace"))
            (blocks if where == FAULT_IN_EBLOCK else evictions).append(fault)
        return blocks, None if track == NOT_RUN else SgxError(track), evictions

    def eldu_pages(self, secs_page: int,
                   items: list[tuple[int, int, int, bytes | memoryview, bytes]]
                   ) -> list[SgxError | Fault]:
        self._batched("ELDU_PAGES")
        results: list[Any] = []
        for first in range(0, len(items), MAX_ELDU_BATCH):
            chunk = items[first:first + MAX_ELDU_BATCH]
            parts = []
            for epc, slot, linaddr, blob, pcmd in chunk:
                parts.append(ELDU_ITEM.pack(epc, slot, linaddr, bytes(pcmd)))
                parts.append(bytes(blob[:PAGE_SIZE]))
            reply = self._call(Type.ELDU_PAGES, (secs_page, len(chunk)), b"".join(parts))
            if not self._outcome(*decode_statuses(reply), results):
                break
        return results

    def test_and_clear_young(self, secs_page: int, linaddrs: list[int]) -> list[bool] | None:
        """The accessed bits of these pages (cleared), or None where the
        EVM cannot tell, or the session predates version 3."""
        if self.version < BATCH_VERSION:
            return None
        touched: list[bool] = []
        for first in range(0, len(linaddrs), MAX_YOUNG_BATCH):
            chunk = linaddrs[first:first + MAX_YOUNG_BATCH]
            reply = self._call(Type.TEST_AND_CLEAR_YOUNG, (secs_page, len(chunk)),
                               pack_u64s(chunk))
            known, count = reply.fields
            if not known:
                return None
            if count != len(chunk) or len(reply.blob) != count:
                raise ChannelError("the EVM's YOUNG does not answer for every page")
            touched.extend(bool(bit) for bit in reply.blob)
        return touched

    # -- the EVM's quoting enclave (sgx_qe_*) and launch enclave --------------------
    def _quoting(self, what: str) -> None:
        if self.version < QUOTING_VERSION:
            raise VsgxError(f"{what}: the EVM speaks protocol version {self.version}, which "
                            f"has no quoting enclave (version {QUOTING_VERSION} has); upgrade "
                            "the EVM's vsgx")

    def qe_target_info(self) -> bytes:
        """sgx_qe_get_target_info: the TARGETINFO of the EVM's QE."""
        return self.qe_init()[0]

    def qe_init(self) -> tuple[bytes, bytes]:
        """sgx_ql_init_quote: the QE's TARGETINFO and the ID (SHA-256) of its
        attestation key; QuoteGenerationError with the QE's status."""
        self._quoting("QE target info")
        reply = self._call(Type.QE_TARGET_INFO)
        (status,) = reply.fields
        if status:
            raise QuoteGenerationError(status, "the EVM's QE: "
                                       + one_line(reply.blob.decode(errors="replace"), 300))
        if len(reply.blob) != 512 + 32:
            raise ChannelError("the EVM's TARGET_INFO is not a TARGETINFO and a key ID")
        return reply.blob[:512], reply.blob[512:]

    def qe_quote_size(self) -> int:
        """sgx_qe_get_quote_size; QuoteGenerationError with the QE's status."""
        self._quoting("quote size")
        reply = self._call(Type.QE_QUOTE_SIZE)
        status, size = reply.fields
        if status:
            raise QuoteGenerationError(status, "the EVM's QE: "
                                       + one_line(reply.blob.decode(errors="replace"), 300))
        return int(size)

    def quote(self, report: bytes) -> bytes:
        """sgx_qe_get_quote: a DCAP v3 quote of ``report``."""
        return self.quote_ex(report).quote

    def quote_ex(self, report: bytes, qe_report_info: bytes | None = None, snp: bool = False
                 ) -> QuoteResult:
        """sgx_qe_get_quote with its options: ``qe_report_info`` is the
        nonce (16 bytes) and the application's TARGETINFO (512) of an
        sgx_ql_qe_report_info_t, for the QE's REPORT back; ``snp`` asks for
        the EVM's SEV-SNP evidence that binds the attestation key."""
        self._quoting("quote")
        if len(report) != 432:
            raise QuoteGenerationError(QuoteStatus.INVALID_PARAMETER,
                                       f"a REPORT is 432 bytes, not {len(report)}")
        flags = QUOTE_WANT_SNP if snp else 0
        blob = b""
        if qe_report_info is not None:
            if len(qe_report_info) != QE_REPORT_INFO_INPUT_SIZE:
                raise QuoteGenerationError(QuoteStatus.INVALID_PARAMETER,
                                           "the QE report info is a 16-byte nonce and a "
                                           "512-byte TARGETINFO")
            flags |= QUOTE_WANT_QE_REPORT
            blob = bytes(qe_report_info)
        reply = self._call(Type.QUOTE, (flags, bytes(report)), blob)
        status, *lengths = reply.fields
        if status:
            raise QuoteGenerationError(status, "the EVM's QE: "
                                       + one_line(reply.blob.decode(errors="replace"), 300))
        if sum(lengths) != len(reply.blob):
            raise ChannelError("the EVM's QUOTE_RESULT does not add up")
        parts, at = [], 0
        for length in lengths:
            parts.append(reply.blob[at:at + length])
            at += length
        quote, qe_report, snp_report, snp_certificates = parts
        if qe_report_info is not None and len(qe_report) != 432:
            raise ChannelError("the EVM's QE sent no REPORT for the application")
        return QuoteResult(quote, qe_report if qe_report_info is not None else None,
                           snp_report, snp_certificates)

    def launch_token(self, mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int
                     ) -> bytes:
        """An EINITTOKEN from the EVM's launch enclave; LaunchTokenError if
        it gives none."""
        if self.version < QUOTING_VERSION:
            raise LaunchTokenError(LaunchStatus.UNAVAILABLE,
                                   f"the EVM speaks protocol version {self.version}, which "
                                   "has no launch enclave")
        if len(mrenclave) != 32 or len(modulus) != 384:
            raise LaunchTokenError(LaunchStatus.INVALID_PARAMETER,
                                   "a launch token is asked for a 32-byte MRENCLAVE and a "
                                   "384-byte modulus")
        if not (0 <= attributes < 1 << 64 and 0 <= xfrm < 1 << 64):
            raise LaunchTokenError(LaunchStatus.INVALID_PARAMETER, "attributes out of range")
        reply = self._call(Type.LAUNCH_TOKEN, (bytes(mrenclave), bytes(modulus), attributes,
                                               xfrm))
        (status,) = reply.fields
        if status:
            try:
                code = LaunchStatus(status)
            except ValueError:
                code = LaunchStatus.INVALID_PARAMETER
            raise LaunchTokenError(code, "the EVM's launch enclave: "
                                   + one_line(reply.blob.decode(errors="replace"), 300))
        if len(reply.blob) != EINITTOKEN_SIZE:
            raise ChannelError("the EVM's launch token is not 304 bytes")
        return reply.blob

    def close(self) -> None:
        try:
            self.conn.call(Type.BYE)
        except (ChannelError, Exception):
            pass
        self.conn.close()


_defaults_lock = threading.Lock()
_default_policy: EvidencePolicy | None = None
_default_timeout = DEFAULT_TIMEOUT


def set_defaults(policy: EvidencePolicy | None = None, timeout: float | None = None) -> None:
    """What ``connect_evm`` uses when it is given no policy or timeout (the
    vsgx command sets them from its --evm-* options)."""
    global _default_policy, _default_timeout
    with _defaults_lock:
        _default_policy = policy
        _default_timeout = timeout or DEFAULT_TIMEOUT


def connect_evm(address: str, policy: EvidencePolicy | None = None, *, warn: bool = True,
                identity: ClientIdentity | None = None, timeout: float | None = None,
                protocol_version: int | None = None) -> RemoteEvm:
    """Connect to an EVM, check its evidence against ``policy`` (default:
    ``EvidencePolicy()``, which accepts an unattested EVM only on this
    machine), say hello. On TCP and vsock the AVM presents ``identity``
    (default: the user's key, made on first use). ``timeout`` bounds the
    connect, the handshake, and any silence of the EVM while the AVM waits.
    ``protocol_version`` is the newest version offered in HELLO."""
    with _defaults_lock:
        policy = policy or _default_policy or EvidencePolicy()
        timeout = timeout or _default_timeout
    if timeout <= 0:
        raise VsgxError("the EVM timeout must be positive")
    parsed = parse_address(address)
    if identity is None and parsed.family != "unix":
        identity = ClientIdentity.load()
    context = client_context(identity if parsed.family != "unix" else None)
    sock = connect(parsed, timeout)
    stream = TlsStream(sock, context, server_side=False, timeout=timeout, peer="the EVM")
    try:
        stream.handshake()
        evidence = stream.verify_peer(policy)
    except BaseException:
        stream.close()
        raise
    if evidence.kind == KIND_NONE and warn:
        print(NO_SEV_BANNER, file=sys.stderr, flush=True)
    conn = Connection(stream, None, name="channel to the EVM", peer="the EVM", deadline=timeout)
    evm = RemoteEvm(conn, protocol_version)
    if parsed.family == "unix":
        evm.client_socket = client_socket_path(parsed.path)
    evm.evidence = evidence  # type: ignore[attr-defined]
    return evm
