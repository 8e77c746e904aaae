"""The AVM <-> EVM protocol: one message per SGX operation, binary, versioned.

A frame is a 24-byte header followed by fixed fields and an optional blob:

    magic "VSGX" | version u16 | type u16 | kind u8 | reserved u8[3]
    | request id u64 | body length u32

``kind`` says whether the frame is a request, the reply to the request with
that id, or a one-way notice; its top bit (SOLE) marks a request sent while
the sender had nothing else in flight, which the receiver may run without
handing its reader role to another thread. Each message type has a fixed field layout
(``struct`` format) and says whether a blob follows and how long it must be;
anything else is a ProtocolError — the receiver answers with an ERROR reply
and goes on.

Versions. The header's version is the frame format's (``VERSION``,
unchanged since 1). The protocol's version travels in HELLO: the AVM says
the newest it speaks, the EVM answers with the one the session will use
(the lower of the two, if it speaks that one) or with an ERROR saying why.
Version 2 added the quoting enclave's and the launch enclave's requests
(QE_TARGET_INFO, QE_QUOTE_SIZE, QUOTE, LAUNCH_TOKEN); a session of version
1 has everything else. Version 3 added batch paging (EADD_PAGES,
EADD_UNIFORM and ELDU_DEFERRED for pages added without residency,
EBLOCK_PAGES, EWB_PAGES, ELDU_PAGES, TEST_AND_CLEAR_YOUNG) and EXIT_PAGES,
the exit of an entry that carries the entry's write-backs of untrusted
memory and the pages it used (so that the next entry pushes those ahead):
one record each way for an entry that touches no page it was not sent.
A version-2 session keeps the single leaves, EXIT and PAGE_WRITEBACK.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

from vsgx.arch.report import REPORT_SIZE, TARGETINFO_SIZE
from vsgx.errors import VsgxError

MAGIC = b"VSGX"
VERSION = 1  # the frame format: the header's version field
PROTOCOL_VERSION = 3  # the newest protocol this side speaks (HELLO)
MIN_PROTOCOL_VERSION = 1  # the oldest one it still serves
QUOTING_VERSION = 2  # the protocol version that has the quoting requests
BATCH_VERSION = 3  # the protocol version that has batch paging and EXIT_PAGES
HEADER = struct.Struct("<4sHHB3xQI")
HEADER_SIZE = HEADER.size
MAX_BODY = (1 << 20) + 4096  # an ADD_PAGES batch of 256 pages and its fields
PAGE = 4096


class ProtocolError(VsgxError):
    """A frame that does not follow the protocol."""


class Kind(IntEnum):
    REQUEST = 0
    REPLY = 1
    NOTICE = 2


class Type(IntEnum):
    # session
    HELLO = 1
    ERROR = 2
    BYE = 3
    PING = 4  # a keepalive request, answered OK by whoever reads it
    CLOSING = 5  # a notice: the sender is closing the session, and why
    # replies
    OK = 10
    STATUS = 11  # an SGX error code (and a value, for EDBGRD)
    FAULT = 12  # the leaf raised #GP / #PF...
    EXIT = 13  # EEXIT or AEX of an EENTER / ERESUME
    EVICTED = 14  # EWB's result
    CPUID = 15
    # ENCLS, AVM -> EVM
    ECREATE = 20
    EADD = 21
    EEXTEND = 22
    EINIT = 23
    EREMOVE = 24
    EPA = 25
    EBLOCK = 26
    ETRACK = 27
    EWB = 28
    ELDB = 29
    ELDU = 30
    EAUG = 31
    EMODPR = 32
    EMODT = 33
    EDBGRD = 34
    EDBGWR = 35
    # ENCLU and platform, AVM -> EVM
    EENTER = 40
    ERESUME = 41
    KICK = 42
    SET_PAGE_PROTECTION = 43
    GET_CPUID = 44
    DESTROY = 45
    # EVM -> AVM during an entry
    PAGE_FETCH = 50
    PAGE = 51
    PAGE_MISSING = 52
    PAGE_WRITEBACK = 53
    # the EVM's quoting and launch enclaves, AVM -> EVM (protocol version 2)
    QE_TARGET_INFO = 60  # sgx_qe_get_target_info
    TARGET_INFO = 61  # its reply: status; TARGETINFO and attestation key ID, or the reason
    QE_QUOTE_SIZE = 62  # sgx_qe_get_quote_size
    QUOTE_SIZE = 63  # its reply: quote3_error_t, size; the reason if it failed
    QUOTE = 64  # sgx_qe_get_quote: flags, REPORT; sgx_ql_qe_report_info_t's inputs
    QUOTE_RESULT = 65  # quote3_error_t and the lengths of the parts that follow
    LAUNCH_TOKEN = 66  # an EINITTOKEN from the launch enclave
    TOKEN = 67  # its reply: LaunchStatus; the token, or the reason
    # protocol version 3: exits with their write-backs, and batch paging
    EXIT_PAGES = 70  # EXIT, plus the pages the entry used and its write-backs
    PAGE_WRITEBACKS = 71  # a notice: write-backs of several pages, EVM -> AVM
    EADD_PAGES = 72  # consecutive REG pages from one source, one EPC page each
    EADD_UNIFORM = 73  # pages of one 32-bit pattern; those past the EPC pages are deferred
    ELDU_DEFERRED = 74  # a deferred page into an EPC page (its first touch)
    EBLOCK_PAGES = 75
    STATUSES = 76  # a batch's SgxError codes, and the fault that ended it, if one did
    EWB_PAGES = 77
    EVICTED_PAGES = 78  # EWB_PAGES's results: status, LINADDR, PCMD, ciphertext each
    ELDU_PAGES = 79
    TEST_AND_CLEAR_YOUNG = 80  # accessed bits of an enclave's pages, read and cleared
    YOUNG = 81  # its reply: whether the EVM can tell, and one byte per page
    EADD_RUNS = 82  # several runs of EADDs (uniform or with their pages) in one request
    EVICT_PAGES = 83  # EBLOCK each, one ETRACK, EWB of the blocked: a reclaimer's batch
    EVICT_RESULT = 84  # its reply
    # the fast path for a client on the EVM's host (vsgx exec's library)
    CLIENT_FILES = 85  # a TCS's CLIENT area and page pool, offered on the side socket
    CLIENT_OFFER = 86  # its reply: the token to claim them with
    CONTINUE = 87  # go on with an entry the runner handed over
    # several SET_PAGE_PROTECTIONs of one enclave, applied in order (a
    # program's mmaps of its enclave, sent together)
    SET_PAGE_PROTECTIONS = 88


@dataclass(frozen=True)
class Layout:
    fields: struct.Struct
    blob: int | None = 0  # exact blob length, None = variable, 0 = none


def _layout(fmt: str, blob: int | None = 0) -> Layout:
    return Layout(struct.Struct("<" + fmt), blob)


REGISTERS = "20Q"
LAYOUTS: dict[Type, Layout] = {
    Type.HELLO: _layout("H"),  # protocol version; reply HELLO carries the EPC slice
    Type.ERROR: _layout("I", None),  # code, UTF-8 message
    Type.BYE: _layout(""),
    Type.PING: _layout(""),
    Type.CLOSING: _layout("I", None),  # reason code, UTF-8 text
    Type.OK: _layout(""),
    Type.STATUS: _layout("IQ"),  # SgxError, value
    Type.FAULT: _layout("IIQ", None),  # vector, error code, address, reason
    Type.EXIT: _layout("BBBxIIQ" + REGISTERS),  # aex, exitinfo valid, interrupt, vector...
    Type.EVICTED: _layout("IQ128s", None),  # status, linaddr, PCMD, ciphertext (or empty)
    Type.CPUID: _layout("", None),  # sub-leaves 0.. as 4 x u32 each
    Type.ECREATE: _layout("Q64s", PAGE),
    Type.EADD: _layout("QQQB64s", PAGE),
    Type.EEXTEND: _layout("QQ"),
    Type.EINIT: _layout("Q1808s304s"),
    Type.EREMOVE: _layout("Q"),
    Type.EPA: _layout("Q"),
    Type.EBLOCK: _layout("Q"),
    Type.ETRACK: _layout("Q"),
    Type.EWB: _layout("QQ"),
    Type.ELDB: _layout("QQQQ128s", PAGE),
    Type.ELDU: _layout("QQQQ128s", PAGE),
    Type.EAUG: _layout("QQQ"),
    Type.EMODPR: _layout("Q64s"),
    Type.EMODT: _layout("Q64s"),
    Type.EDBGRD: _layout("Q"),
    Type.EDBGWR: _layout("QQ"),
    # secs, return rip, registers; then pages pushed ahead of the enclave's
    # first touch: (u64 address, u8 writable, 7 pad, 4096 bytes) each
    Type.EENTER: _layout("QQ" + REGISTERS, None),
    Type.ERESUME: _layout("Q" + REGISTERS, None),
    Type.KICK: _layout("Q"),
    Type.SET_PAGE_PROTECTION: _layout("QQQI"),
    Type.GET_CPUID: _layout(""),
    Type.DESTROY: _layout("Q"),
    Type.PAGE_FETCH: _layout("Q"),
    Type.PAGE: _layout("B", PAGE),  # writable
    Type.PAGE_MISSING: _layout(""),
    Type.PAGE_WRITEBACK: _layout("Q", None),  # page; runs of (u16 offset, u16 len, bytes)
    Type.QE_TARGET_INFO: _layout(""),
    # quote3_error_t; blob: the QE's TARGETINFO || SHA-256 of its attestation
    # key (sgx_ql_init_quote's two results), or the reason (UTF-8)
    Type.TARGET_INFO: _layout("I", None),
    Type.QE_QUOTE_SIZE: _layout(""),
    Type.QUOTE_SIZE: _layout("II", None),
    # flags (QUOTE_WANT_*), the application enclave's REPORT; blob: nothing,
    # or the nonce and TARGETINFO of an sgx_ql_qe_report_info_t
    Type.QUOTE: _layout(f"I{REPORT_SIZE}s", None),
    # status, then the lengths of: quote, QE report, SNP report, SNP
    # certificate table; the blob is those parts in that order, or the
    # reason (UTF-8) when the status is not success
    Type.QUOTE_RESULT: _layout("IIIII", None),
    # MRENCLAVE, the signer's modulus (SIGSTRUCT.MODULUS), ATTRIBUTES, XFRM
    Type.LAUNCH_TOKEN: _layout("32s384sQQ"),
    Type.TOKEN: _layout("I", None),
    # EXIT's fields, then how many used pages (u64 each) and write-back
    # records (WRITEBACK header, then its runs) the blob holds, in that order
    Type.EXIT_PAGES: _layout("BBBxIIQ" + REGISTERS + "II", None),
    Type.PAGE_WRITEBACKS: _layout("I", None),  # records, as EXIT_PAGES's
    # secs, linaddr, measure, SECINFO, count; blob: count EPC pages (u64),
    # then count source pages
    Type.EADD_PAGES: _layout("QQQ64sI", None),
    # secs, linaddr, count, fill, measure, SECINFO, resident; blob: the
    # resident pages' EPC pages (u64 each)
    Type.EADD_UNIFORM: _layout("QQQIQ64sI", None),
    Type.ELDU_DEFERRED: _layout("QQQ"),  # EPC page, secs, linaddr
    Type.EBLOCK_PAGES: _layout("I", None),  # count; blob: EPC pages (u64 each)
    # count, faulted, vector, error code, address; blob: count statuses
    # (u32 each), then the fault's reason (UTF-8) when one ended the batch
    Type.STATUSES: _layout("IIIIQ", None),
    Type.EWB_PAGES: _layout("I", None),  # count; blob: (EPC page, VA slot) u64 pairs
    # as STATUSES; blob: count EVICTED records (a page's ciphertext follows
    # a record that has one), then the fault's reason
    Type.EVICTED_PAGES: _layout("IIIIQ", None),
    # secs, count; blob: count ELDU records, each followed by its ciphertext
    Type.ELDU_PAGES: _layout("QI", None),
    Type.TEST_AND_CLEAR_YOUNG: _layout("QI", None),  # secs, count; blob: LINADDRs (u64)
    Type.YOUNG: _layout("II", None),  # known, count; blob: count bytes, 1 = touched
    # secs, count; blob: count ADD_RUN records, each followed by its EPC
    # pages (u64 each) and, unless it is uniform, its pages. Reply: STATUSES
    # with one status per run done.
    Type.EADD_RUNS: _layout("QI", None),
    Type.EVICT_PAGES: _layout("QI", None),  # secs, count; blob: (EPC page, VA slot) u64 pairs
    # EBLOCK results, ETRACK status (NOT_RUN if nothing was blocked), EWB
    # results, where a fault ended it (FAULT_IN_*) and the fault; blob: the
    # EBLOCK statuses (u32), the EVICTED records (with their ciphertexts),
    # then the fault's reason
    Type.EVICT_RESULT: _layout("IIIIIIQ", None),
    Type.CLIENT_FILES: _layout("QQ"),  # secs, TCS
    Type.CLIENT_OFFER: _layout("32s"),  # the one-time token for the side socket
    # secs, TCS, the client's AEP, FS and GS bases at its EENTER
    Type.CONTINUE: _layout("QQQQQ"),
    # secs, count; blob: count x PROTECTION_RANGE
    Type.SET_PAGE_PROTECTIONS: _layout("QI", None),
}

# Which requests each protocol version has (replies follow their requests).
V2_TYPES = frozenset({Type.QE_TARGET_INFO, Type.TARGET_INFO, Type.QE_QUOTE_SIZE,
                      Type.QUOTE_SIZE, Type.QUOTE, Type.QUOTE_RESULT, Type.LAUNCH_TOKEN,
                      Type.TOKEN})


V3_TYPES = frozenset({Type.EXIT_PAGES, Type.PAGE_WRITEBACKS, Type.EADD_PAGES,
                      Type.EADD_UNIFORM, Type.ELDU_DEFERRED, Type.EBLOCK_PAGES, Type.STATUSES,
                      Type.EWB_PAGES, Type.EVICTED_PAGES, Type.ELDU_PAGES,
                      Type.TEST_AND_CLEAR_YOUNG, Type.YOUNG, Type.EADD_RUNS,
                      Type.EVICT_PAGES, Type.EVICT_RESULT, Type.CLIENT_FILES,
                      Type.CLIENT_OFFER, Type.CONTINUE, Type.SET_PAGE_PROTECTIONS})


_INTRODUCED = {t: BATCH_VERSION if t in V3_TYPES else QUOTING_VERSION if t in V2_TYPES else 1
               for t in Type}


def introduced_in(message_type: Type) -> int:
    """The protocol version that has ``message_type``."""
    return _INTRODUCED[message_type]


def negotiate(offered: int, newest: int = PROTOCOL_VERSION) -> int:
    """The version of a session whose AVM offers ``offered`` (the newest it
    speaks) with an EVM that speaks up to ``newest``; ProtocolError if this
    side speaks none that it does."""
    if offered < MIN_PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {offered} is older than the oldest this EVM "
                            f"serves ({MIN_PROTOCOL_VERSION}); upgrade the AVM's vsgx")
    return min(offered, newest)


# QUOTE flags.
QUOTE_WANT_QE_REPORT = 1  # blob holds nonce (16) || TARGETINFO (512); reply has a QE REPORT
QUOTE_WANT_SNP = 2  # the EVM's SEV-SNP evidence binding the attestation key, if it has any
QUOTE_FLAGS = QUOTE_WANT_QE_REPORT | QUOTE_WANT_SNP
QE_REPORT_INFO_INPUT_SIZE = 16 + TARGETINFO_SIZE


class LaunchStatus(IntEnum):
    """What the launch enclave answers (the reasons Intel's LE has)."""

    SUCCESS = 0
    INVALID_PARAMETER = 1  # LE_INVALID_PARAMETER
    INVALID_ATTRIBUTE = 2  # LE_INVALID_ATTRIBUTE: attributes the LE does not grant
    SIGNER_NOT_ALLOWED = 3  # LE_INVALID_PRIVILEGE_ERROR: not on the LE's list
    UNAVAILABLE = 4  # this EVM has no launch enclave


class LaunchTokenError(VsgxError):
    """The launch enclave refuses a token; ``status`` says why."""

    def __init__(self, status: LaunchStatus, message: str):
        super().__init__(message)
        self.status = status


class Message(NamedTuple):
    type: Type
    fields: tuple[Any, ...]  # per the layout of the message type: ints and bytes
    blob: bytes = b""
    kind: Kind = Kind.REQUEST
    request_id: int = 0
    # An object handed across by reference: only the in-memory transport
    # carries one (vsgx.channel.memory); it is never encoded.
    attachment: object = None


def encode(message: Message, sole: bool = False) -> bytes:
    message_type, fields, blob, kind, request_id, attachment = message
    if attachment is not None:
        raise ProtocolError(f"{message_type.name}: an attachment crosses only an in-memory "
                            "channel")
    layout = LAYOUTS[message_type]
    body = layout.fields.pack(*fields) + blob
    if layout.blob is not None and len(blob) != layout.blob:
        raise ProtocolError(f"{message_type.name}: blob of {len(blob)} bytes")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{message_type.name}: body of {len(body)} bytes is too large")
    return HEADER.pack(MAGIC, VERSION, message_type, kind | (SOLE if sole else 0), request_id,
                       len(body)) + body


_TYPES = {int(t): t for t in Type}
_KINDS = {int(k): k for k in Kind}
SOLE = 0x80


def decode_header(data: bytes) -> tuple[Type, Kind, int, int]:
    """(type, kind, request id, body length) of a frame header (the SOLE bit
    of the kind byte is dropped; ``is_sole`` reads it)."""
    try:
        magic, version, type_code, kind, request_id, length = HEADER.unpack(data)
    except struct.error:
        raise ProtocolError("truncated frame header") from None
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    if version != VERSION:
        raise ProtocolError(f"frame format version {version}, expected {VERSION}")
    if length > MAX_BODY:
        raise ProtocolError(f"frame body of {length} bytes exceeds the limit")
    message_type = _TYPES.get(type_code)
    message_kind = _KINDS.get(kind & ~SOLE)
    if message_type is None or message_kind is None:
        raise ProtocolError(f"unknown message type {type_code} or kind {kind}")
    return message_type, message_kind, request_id, length


def body_length(header: bytes) -> int:
    return decode_header(header)[3]


def is_sole(header: bytes) -> bool:
    return bool(header[8] & SOLE)


def decode_body(message_type: Type, kind: Kind, request_id: int,
                body: bytes | memoryview) -> Message:
    layout = LAYOUTS[message_type]
    size = layout.fields.size
    if len(body) < size:
        raise ProtocolError(f"{message_type.name}: {len(body)} bytes, fields need {size}")
    blob = bytes(body[size:])
    if layout.blob is not None and len(blob) != layout.blob:
        raise ProtocolError(f"{message_type.name}: blob of {len(blob)} bytes, expected "
                            f"{layout.blob}")
    return Message(message_type, layout.fields.unpack_from(body), blob, kind, request_id)


def decode(frame: bytes) -> Message:
    message_type, kind, request_id, length = decode_header(frame[:HEADER_SIZE])
    body = frame[HEADER_SIZE:]
    if len(body) != length:
        raise ProtocolError("frame length does not match its header")
    return decode_body(message_type, kind, request_id, body)


PUSHED_PAGE = struct.Struct("<QB7x")
MAX_PUSHED_PAGES = 8


def encode_pages(pages: list[tuple[int, bytes, bool]]) -> bytes:
    return b"".join(PUSHED_PAGE.pack(page, writable) + data for page, data, writable in pages)


def decode_pages(blob: bytes) -> dict[int, tuple[bytes, bool]]:
    record = PUSHED_PAGE.size + PAGE
    if len(blob) % record or len(blob) // record > MAX_PUSHED_PAGES:
        raise ProtocolError("malformed pushed pages")
    pages = {}
    for offset in range(0, len(blob), record):
        page, writable = PUSHED_PAGE.unpack_from(blob, offset)
        if page % PAGE:
            raise ProtocolError("a pushed page is not page aligned")
        pages[page] = (blob[offset + PUSHED_PAGE.size:offset + record], bool(writable))
    return pages


def encode_runs(runs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<HH", offset, len(data)) + data for offset, data in runs)


def decode_runs(blob: bytes) -> list[tuple[int, bytes]]:
    runs = []
    position = 0
    while position < len(blob):
        if position + 4 > len(blob):
            raise ProtocolError("truncated write-back run")
        offset, length = struct.unpack_from("<HH", blob, position)
        position += 4
        if offset + length > PAGE or position + length > len(blob):
            raise ProtocolError("write-back run outside the page")
        runs.append((offset, blob[position:position + length]))
        position += length
    return runs


# -- protocol version 3: exits with their pages, and batch paging ---------------
# How many pages one batch request may name (each fits MAX_BODY with its data).
MAX_ADD_BATCH = 256
MAX_UNIFORM_RESIDENT = 65536
MAX_BLOCK_BATCH = 4096
MAX_EWB_BATCH = 128
MAX_ELDU_BATCH = 128
MAX_YOUNG_BATCH = 65536
MAX_USED_PAGES = MAX_PUSHED_PAGES  # pages an EXIT_PAGES names as used
WRITEBACK = struct.Struct("<QI4x")  # page, length of its runs
EVICTED = struct.Struct("<IIQ128s")  # status, has a ciphertext, LINADDR, PCMD
ELDU_ITEM = struct.Struct("<QQQ128s")  # EPC page, VA slot, LINADDR, PCMD
# LINADDR, count, resident (EPC pages that follow), fill, uniform, measure, SECINFO
ADD_RUN = struct.Struct("<QQIIBB6x64s")
MAX_ADD_RUNS = 4096  # runs in one EADD_RUNS
PROTECTION_RANGE = struct.Struct("<QQI4x")  # LINADDR, pages, prot (SET_PAGE_PROTECTIONS)
MAX_PROTECTION_RANGES = 4096  # ranges in one SET_PAGE_PROTECTIONS
NOT_RUN = 0xFFFFFFFF  # EVICT_RESULT's ETRACK status when nothing was blocked
FAULT_IN_EBLOCK, FAULT_IN_EWB = 1, 2
_U64 = struct.Struct("<Q")


def pack_u64s(values: list[int] | tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def unpack_u64s(blob: bytes | memoryview, count: int, what: str) -> tuple[int, ...]:
    """``count`` u64 values at the start of ``blob``."""
    if len(blob) < 8 * count:
        raise ProtocolError(f"{what}: {count} values announced, {len(blob) // 8} sent")
    return struct.unpack_from(f"<{count}Q", blob)


def check_count(what: str, count: int, limit: int, unit: str = "pages") -> None:
    if count > limit:
        raise ProtocolError(f"{what}: a batch of {count} {unit}; at most {limit} go in one")


def encode_writebacks(records: list[tuple[int, bytes]]) -> bytes:
    """(page, encoded runs) records, as EXIT_PAGES and PAGE_WRITEBACKS carry them."""
    return b"".join(WRITEBACK.pack(page, len(runs)) + runs for page, runs in records)


def decode_writebacks(blob: bytes | memoryview, count: int
                      ) -> list[tuple[int, list[tuple[int, bytes]]]]:
    """The ``count`` write-back records that make up ``blob`` exactly."""
    records = []
    position = 0
    for _ in range(count):
        if position + WRITEBACK.size > len(blob):
            raise ProtocolError("truncated write-back record")
        page, length = WRITEBACK.unpack_from(blob, position)
        position += WRITEBACK.size
        if page % PAGE or position + length > len(blob):
            raise ProtocolError("malformed write-back record")
        records.append((page, decode_runs(bytes(blob[position:position + length]))))
        position += length
    if position != len(blob):
        raise ProtocolError("write-back records do not add up")
    return records


def encode_outcome(count: int, fault: tuple[int, int, int, str] | None
                   ) -> tuple[tuple[int, ...], bytes]:
    """STATUSES / EVICTED_PAGES fields for ``count`` results and the fault
    (vector, error code, address, reason) that ended the batch, if one did;
    and the reason to append to the blob."""
    if fault is None:
        return (count, 0, 0, 0, 0), b""
    vector, error_code, address, reason = fault
    return (count, 1, vector, error_code & 0xFFFFFFFF, address & ((1 << 64) - 1)), \
        reason.encode()[:2000]


def decode_statuses(message: Message) -> tuple[tuple[int, ...], tuple[int, int, int, str] | None]:
    """A STATUSES reply: the status codes, and the fault that ended the batch."""
    count, faulted, vector, error_code, address = message.fields
    codes = unpack_u32s(message.blob, count, "STATUSES")
    fault = (vector, error_code, address, message.blob[4 * count:].decode(errors="replace")) \
        if faulted else None
    return codes, fault


def unpack_u32s(blob: bytes | memoryview, count: int, what: str) -> tuple[int, ...]:
    if len(blob) < 4 * count:
        raise ProtocolError(f"{what}: {count} values announced, {len(blob) // 4} sent")
    return struct.unpack_from(f"<{count}I", blob)
