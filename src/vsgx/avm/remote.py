"""The AVM's side of the channel: an EVM reached over attested TLS, with the
same methods as an in-process EnclaveVM, and the page server that answers
the EVM's PAGE_FETCH and applies its PAGE_WRITEBACKs while an enclave runs."""

from __future__ import annotations

import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

from vsgx.arch.constants import PAGE_SIZE, Vector
from vsgx.arch.cpuid import SgxCpuid
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.quote import QuoteStatus
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
from vsgx.channel.evidence import KIND_NONE, one_line
from vsgx.channel.messages import (
    MAX_PUSHED_PAGES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    QE_REPORT_INFO_INPUT_SIZE,
    QUOTE_WANT_QE_REPORT,
    QUOTE_WANT_SNP,
    QUOTING_VERSION,
    LaunchStatus,
    LaunchTokenError,
    decode_runs,
    encode_pages,
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


@dataclass
class RemoteExit:
    kind: str
    registers: list[int]
    vector: int
    error_code: int
    address: int
    exitinfo_valid: bool
    interrupt: bool


@dataclass
class RemoteEvicted:
    ciphertext: bytes
    pcmd: bytes
    linaddr: int


class RemoteEvm:
    """An EVM in another process or VM."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.memory: Any = None  # the AVM's address space, for the page server
        self._cpuid: SgxCpuid | None = None
        self.version = PROTOCOL_VERSION
        conn.handler = self._serve
        try:
            reply = self.conn.call(Type.HELLO, (PROTOCOL_VERSION,))
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
                                            <= PROTOCOL_VERSION):
            conn.close()
            raise ChannelError("the EVM does not speak this vsgx's protocol")
        self.version = reply.fields[0]  # what the EVM agreed to speak

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
        return reply_to(message, Type.ERROR, (1,), b"the AVM serves page requests only")

    # -- requests -----------------------------------------------------------------
    def _call(self, message_type: Type, fields: tuple = (), blob: bytes = b"") -> Message:
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

    def _status(self, message_type: Type, fields: tuple = (), blob: bytes = b"") -> SgxError:
        return SgxError(self._call(message_type, fields, blob).fields[0])

    def cpuid(self) -> SgxCpuid:
        if self._cpuid is None:
            blob = self._call(Type.GET_CPUID).blob
            leaves = [_CPUID_LEAF.unpack_from(blob, i) for i in range(0, len(blob), 16)]
            self._cpuid = SgxCpuid.from_leaves(leaves)
        return self._cpuid

    def ecreate(self, epc_page: int, secs: bytes, secinfo: bytes) -> None:
        self._call(Type.ECREATE, (epc_page, secinfo), secs)

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

    def destroy(self, secs_page: int) -> None:
        self._call(Type.DESTROY, (secs_page,))

    def _exit(self, reply: Message) -> RemoteExit:
        aex, valid, interrupt, vector, error_code, address, *registers = reply.fields
        return RemoteExit("aex" if aex else "eexit", registers, vector, error_code, address,
                          bool(valid), bool(interrupt))

    def _pushed(self, registers: list[int], untrusted: Any) -> bytes:
        """The pages an entry will almost surely touch, sent with it: the
        top of the untrusted stack (where the SDK places OCALL frames) and
        what RDI, RSI and RDX point to. Saves a PAGE_FETCH round trip each."""
        rsp = registers[4]
        candidates = [(rsp - 8) & ~(PAGE_SIZE - 1), (rsp - 8 - PAGE_SIZE) & ~(PAGE_SIZE - 1)]
        candidates += [registers[i] & ~(PAGE_SIZE - 1) for i in (7, 6, 2)]  # RDI, RSI, RDX
        pages = []
        for page in dict.fromkeys(candidates):
            fetched = untrusted.fetch(page) if page else None
            if fetched is not None:
                pages.append((page, fetched[0], fetched[1]))
        return encode_pages(pages[:MAX_PUSHED_PAGES])

    def eenter(self, secs_page: int, registers: list[int], return_rip: int, untrusted: Any
               ) -> RemoteExit:
        self.memory = untrusted
        return self._exit(self._call(Type.EENTER, (secs_page, return_rip, *registers),
                                     self._pushed(registers, untrusted)))

    def eresume(self, secs_page: int, registers: list[int], untrusted: Any) -> RemoteExit:
        self.memory = untrusted
        return self._exit(self._call(Type.ERESUME, (secs_page, *registers),
                                     self._pushed(registers, untrusted)))

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
        return size

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
                identity: ClientIdentity | None = None, timeout: float | None = None
                ) -> RemoteEvm:
    """Connect to an EVM, check its evidence against ``policy`` (default:
    ``EvidencePolicy()``, which accepts an unattested EVM only on this
    machine), say hello. On TCP and vsock the AVM presents ``identity``
    (default: the user's key, made on first use). ``timeout`` bounds the
    connect, the handshake, and any silence of the EVM while the AVM waits."""
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
    evm = RemoteEvm(conn)
    evm.evidence = evidence  # type: ignore[attr-defined]
    return evm
