"""An aesmd-compatible service: what Intel's PSW clients (libsgx_quote_ex,
libsgx_dcap_ql in out-of-process mode, the legacy urts asking for launch
tokens, Gramine, Fortanix's aesm-client) send to ``/var/run/aesmd/aesm.socket``,
answered by the quoting and launch enclaves of an EVM.

Wire format (Intel's psw/ae/aesm_service: SocketTransporter and
messages.proto, package ``aesm.message``): one request per connection; the
client writes a 4-byte little-endian length and a protobuf
``aesm.message.Request`` with exactly one request field set, the service
answers with a length and a ``Response`` with the matching field, and the
connection ends. A request that does not parse, or names no request the
service knows, is answered by closing the connection (as Intel's aesmd
does: the client sees an IPC error); a known request whose required fields
are missing gets its response with AESM_UNEXPECTED_ERROR (Intel's check()).

What is served:

* DCAP ECDSA quoting: InitQuoteEx (the QE's TARGETINFO and, with
  ``b_pub_key_id``, the SHA-256 of the attestation public key),
  GetQuoteSizeEx, GetQuoteEx (with an optional ``sgx_ql_qe_report_info_t``:
  the QE's REPORT for the application comes back in it; the quote is padded
  with zeros to ``buf_size``, as Intel's aesmd hands back its buffer),
  SelectAttKeyID, GetSupportedAttKeyIDNum, GetSupportedAttKeyIDs. The one
  attestation key ID is ECDSA P-256 (``sgx_att_key_id_ext_t``) naming the
  vsgx QE (MRSIGNER ``VSGX_QE_MRSIGNER``, ISVPRODID 1); requests naming
  Intel's QE3 (MRSIGNER 8c4f5775…, ISVPRODID 1, ECDSA P-256) are accepted
  as the same key, because clients such as Gramine hard-code it.
* GetLaunchToken: an EINITTOKEN from the EVM's launch enclave
  (``vsgx.evm.launch``; the request's ``mr_signer`` field carries the
  signer's modulus, as Intel's clients send it).
* EPID (InitQuote, GetQuote, ReportAttestationError, CheckUpdateStatus,
  SGXGetExtendedEpidGroupId, SGXSwitchExtendedEpidGroup, SGXRegister) and the
  launch white list (GetWhiteListSize, GetWhiteList): AESM_SERVICE_UNAVAILABLE,
  the status Intel's aesmd gives when its EPID service is not installed, with
  a log line saying that EPID is not supported.

Protobuf: a small strict codec of its own (below) rather than the
``protobuf`` package: the messages are a dozen flat proto2 records of
varints and byte strings, the schema stays next to Intel's field numbers,
and the decoder refuses what a conforming encoder never writes (a known
field with another wire type, a repeated singular field, an over-long
varint, a uint32 beyond 32 bits, a bool other than 0 or 1, a length past the
end, groups) instead of accepting and truncating. Unknown fields are skipped
as proto2 says. A dependency would bring a generated-code toolchain and a
C++ parser for what is ~150 lines here; the decoder is fuzzed in the tests.

The service is a thread (``AesmdService(backend).start(path)``) that
``vsgx exec`` runs for its program, or the command ``vsgx aesmd serve``.
``backend`` is what ``vsgx.host.attestation.attestation_backend`` returns:
an EVM over the channel (``vsgx.avm.remote.RemoteEvm``) or one in this
process. This module does not import ``vsgx.evm``.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from vsgx.arch.quote import (
    INTEL_QE3_ISVPRODID,
    INTEL_QE3_MRSIGNER,
    VSGX_QE_ISVPRODID,
    VSGX_QE_MRSIGNER,
    QuoteStatus,
)
from vsgx.arch.report import REPORT_SIZE, TARGETINFO_SIZE
from vsgx.channel import ChannelError, listen, parse_address, peer_uid
from vsgx.channel.evidence import one_line
from vsgx.channel.messages import LaunchStatus, LaunchTokenError
from vsgx.channel.transport import wait_ready
from vsgx.crypto.quote import QuoteGenerationError
from vsgx.errors import VsgxError

DEFAULT_SOCKET = "/var/run/aesmd/aesm.socket"  # Intel's CONFIG_SOCKET_PATH
# The abstract socket of PSW 1.6/1.7, which Gramine and Fortanix's client
# still try first: the name padded with NULs to UNIX_PATH_MAX.
ABSTRACT_SOCKET = b"\0sgx_aesm_socket_base".ljust(108, b"\0")
# What vsgx's own C clients (aesm_client, the drop-in libsgx_dcap_ql) read
# to find the socket; Intel's libraries read none (the path is compiled in;
# SGX_AESM_ADDR only makes libsgx_dcap_ql quote out of process).
SOCKET_ENV = "VSGX_AESM_SOCKET"
MAX_REQUEST = 64 * 1024
MAX_QUOTE_BUFFER = 1 << 20
IO_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
ACCEPT_SECONDS = 0.5


class AesmError(IntEnum):
    """aesm_error_t (psw/ae/inc/internal/aesm_error.h), the ones used here."""

    SUCCESS = 0
    UNEXPECTED_ERROR = 1
    NO_DEVICE_ERROR = 2
    PARAMETER_ERROR = 3
    GET_LICENSETOKEN_ERROR = 6
    NETWORK_ERROR = 12
    FILE_ACCESS_ERROR = 15
    OUT_OF_MEMORY_ERROR = 21
    MSG_ERROR = 22
    OUT_OF_EPC = 29
    SERVICE_UNAVAILABLE = 30
    ECDSA_ID_MISMATCH = 32
    PATHNAME_BUFFER_OVERFLOW_ERROR = 33
    ERROR_STORED_KEY = 34
    PUB_KEY_ID_MISMATCH = 35
    INVALID_PCE_SIG_SCHEME = 36
    ATT_KEY_BLOB_ERROR = 37
    UNSUPPORTED_ATT_KEY_ID = 38
    UNSUPPORTED_LOADING_POLICY = 39
    INTERFACE_UNAVAILABLE = 40
    PLATFORM_LIB_UNAVAILABLE = 41
    ATT_KEY_NOT_INITIALIZED = 42
    ATT_KEY_CERT_DATA_INVALID = 43
    NO_PLATFORM_CERT_DATA = 44
    ERROR_REPORT = 45
    ENCLAVE_LOST = 46
    INVALID_REPORT = 47
    ENCLAVE_LOAD_ERROR = 48
    UNABLE_TO_GENERATE_QE_REPORT = 49
    KEY_CERTIFICATION_ERROR = 50


# quote3_error_t -> aesm_error_t, as Intel's ECDSA quote service maps them.
_FROM_QUOTE3 = {
    0x0000: AesmError.SUCCESS, 0xE001: AesmError.UNEXPECTED_ERROR,
    0xE002: AesmError.PARAMETER_ERROR, 0xE003: AesmError.OUT_OF_MEMORY_ERROR,
    0xE004: AesmError.ECDSA_ID_MISMATCH, 0xE005: AesmError.PATHNAME_BUFFER_OVERFLOW_ERROR,
    0xE006: AesmError.FILE_ACCESS_ERROR, 0xE007: AesmError.ERROR_STORED_KEY,
    0xE008: AesmError.PUB_KEY_ID_MISMATCH, 0xE009: AesmError.INVALID_PCE_SIG_SCHEME,
    0xE00A: AesmError.ATT_KEY_BLOB_ERROR, 0xE00B: AesmError.UNSUPPORTED_ATT_KEY_ID,
    0xE00C: AesmError.UNSUPPORTED_LOADING_POLICY, 0xE00D: AesmError.INTERFACE_UNAVAILABLE,
    0xE00E: AesmError.PLATFORM_LIB_UNAVAILABLE, 0xE00F: AesmError.ATT_KEY_NOT_INITIALIZED,
    0xE010: AesmError.ATT_KEY_CERT_DATA_INVALID, 0xE011: AesmError.NO_PLATFORM_CERT_DATA,
    0xE012: AesmError.OUT_OF_EPC, 0xE013: AesmError.ERROR_REPORT,
    0xE014: AesmError.ENCLAVE_LOST, 0xE015: AesmError.INVALID_REPORT,
    0xE016: AesmError.ENCLAVE_LOAD_ERROR, 0xE017: AesmError.UNABLE_TO_GENERATE_QE_REPORT,
    0xE018: AesmError.KEY_CERTIFICATION_ERROR, 0xE019: AesmError.NETWORK_ERROR,
    0xE01A: AesmError.MSG_ERROR,
}
_FROM_LAUNCH = {
    LaunchStatus.INVALID_PARAMETER: AesmError.PARAMETER_ERROR,
    LaunchStatus.INVALID_ATTRIBUTE: AesmError.GET_LICENSETOKEN_ERROR,
    LaunchStatus.SIGNER_NOT_ALLOWED: AesmError.GET_LICENSETOKEN_ERROR,
    LaunchStatus.UNAVAILABLE: AesmError.SERVICE_UNAVAILABLE,
}


# -- attestation key IDs (sgx_quote.h) ----------------------------------------------
SGX_QL_ALG_ECDSA_P256 = 2
ATT_KEY_ID_BASE = struct.Struct("<HHH48sI16s64s16sI")  # sgx_ql_att_key_id_t, 158 bytes
ATT_KEY_ID_EXT_SIZE = 256  # sgx_att_key_id_ext_t = sgx_att_key_id_t
ATT_KEY_ID_LIST_HEADER = struct.Struct("<HHI")  # sgx_ql_att_key_id_list_header_t
MAX_ATT_KEY_IDS = 10  # SGX_MAX_ATT_KEY_IDS of Intel's quote_ex service
QE_REPORT_INFO_SIZE = 16 + TARGETINFO_SIZE + REPORT_SIZE  # sgx_ql_qe_report_info_t
PUB_KEY_ID_SIZE = 32  # a SHA-256


def att_key_id(mrsigner: bytes, prod_id: int) -> bytes:
    """An sgx_att_key_id_ext_t for an ECDSA P-256 QE (SPID zero,
    att_key_type 0 as for every non-EPID key)."""
    base = ATT_KEY_ID_BASE.pack(0, 0, len(mrsigner), mrsigner.ljust(48, b"\0"), prod_id,
                                bytes(16), bytes(64), bytes(16), SGX_QL_ALG_ECDSA_P256)
    return base.ljust(ATT_KEY_ID_EXT_SIZE, b"\0")


VSGX_ATT_KEY_ID = att_key_id(VSGX_QE_MRSIGNER, VSGX_QE_ISVPRODID)
INTEL_QE3_ATT_KEY_ID = att_key_id(INTEL_QE3_MRSIGNER, INTEL_QE3_ISVPRODID)
_ACCEPTED_BASES = {VSGX_ATT_KEY_ID[:ATT_KEY_ID_BASE.size],
                   INTEL_QE3_ATT_KEY_ID[:ATT_KEY_ID_BASE.size]}


def _known_key_id(value: bytes | None) -> AesmError | None:
    """None if ``value`` names our QE's key; else the status to answer."""
    if value is None or len(value) < ATT_KEY_ID_EXT_SIZE:
        return AesmError.PARAMETER_ERROR
    if value[:ATT_KEY_ID_BASE.size] not in _ACCEPTED_BASES:
        return AesmError.UNSUPPORTED_ATT_KEY_ID
    return None


# -- a strict proto2 wire codec ----------------------------------------------------
class WireError(VsgxError):
    """A protobuf message that does not follow the wire format or the schema."""


class MissingFields(WireError):
    """A message without one of its required fields."""


VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_WIRE_OF = {"uint32": VARINT, "uint64": VARINT, "bool": VARINT, "bytes": LENGTH,
            "message": LENGTH}


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str  # uint32, uint64, bool, bytes, message
    required: bool = False
    message: Schema | None = None


class Schema:
    def __init__(self, name: str, *fields: Field):
        self.name = name
        self.by_number = {f.number: f for f in fields}
        self.by_name = {f.name: f for f in fields}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(10):
        if at + i >= len(data):
            raise WireError("a varint runs past the end")
        byte = data[at + i]
        if i == 9 and byte > 1:
            raise WireError("a varint longer than 64 bits")
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at + i + 1
    raise WireError("a varint longer than 10 bytes")


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(data: bytes, schema: Schema) -> dict[str, Any]:
    """The fields of ``data`` by name; WireError (MissingFields for a
    missing required field) if it is malformed."""
    values: dict[str, Any] = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise WireError(f"{schema.name}: field number {number}")
        value: Any
        if wire == VARINT:
            value, at = _varint(data, at)
        elif wire == LENGTH:
            length, at = _varint(data, at)
            if length > len(data) - at:
                raise WireError(f"{schema.name}: field {number} of {length} bytes runs past "
                                "the end")
            value, at = data[at:at + length], at + length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if at + size > len(data):
                raise WireError(f"{schema.name}: field {number} runs past the end")
            value, at = data[at:at + size], at + size
        else:
            raise WireError(f"{schema.name}: field {number} has wire type {wire} (groups and "
                            "undefined types are not accepted)")
        field = schema.by_number.get(number)
        if field is None:
            continue  # proto2: unknown fields are skipped
        if _WIRE_OF[field.kind] != wire:
            raise WireError(f"{schema.name}.{field.name} has wire type {wire}, not "
                            f"{_WIRE_OF[field.kind]}")
        if field.name in values:
            raise WireError(f"{schema.name}.{field.name} appears twice")
        if field.kind == "uint32" and value > 0xFFFFFFFF:
            raise WireError(f"{schema.name}.{field.name} is beyond 32 bits")
        if field.kind == "bool":
            if value > 1:
                raise WireError(f"{schema.name}.{field.name} is a bool of {value}")
            value = bool(value)
        if field.kind == "message":
            assert field.message is not None
            value = decode(value, field.message)
        values[field.name] = value
    missing = [f.name for f in schema.by_number.values() if f.required and f.name not in values]
    if missing:
        raise MissingFields(f"{schema.name} lacks {', '.join(missing)}")
    return values


def encode(values: dict[str, Any], schema: Schema) -> bytes:
    """``values`` (by field name; None or absent: not set) in field order."""
    out = bytearray()
    for number in sorted(schema.by_number):
        field = schema.by_number[number]
        value = values.get(field.name)
        if value is None:
            if field.required:
                raise WireError(f"{schema.name}.{field.name} is required")
            continue
        out += _put_varint(number << 3 | _WIRE_OF[field.kind])
        if field.kind == "message":
            assert field.message is not None
            value = encode(value, field.message)
        if field.kind in ("bytes", "message"):
            out += _put_varint(len(value)) + bytes(value)
        else:
            out += _put_varint(int(value))
    return bytes(out)


def _message(name: str, *fields: Field) -> Schema:
    return Schema(name, *fields, Field(9, "timeout", "uint32"))


def _u32(number: int, name: str, required: bool = False) -> Field:
    return Field(number, name, "uint32", required)


def _bytes(number: int, name: str, required: bool = False) -> Field:
    return Field(number, name, "bytes", required)


# messages.proto of Intel's PSW (2.9 and later), field for field.
REQUESTS = {
    "initQuoteReq": (1, _message("InitQuoteRequest")),
    "getQuoteReq": (2, _message(
        "GetQuoteRequest", _bytes(1, "report", True), _u32(2, "quote_type", True),
        _bytes(3, "spid", True), _bytes(4, "nonce"), _bytes(5, "sig_rl"),
        _u32(6, "buf_size", True), Field(7, "qe_report", "bool"))),
    "getLicTokenReq": (3, _message(
        "GetLaunchTokenRequest", _bytes(1, "mr_enclave", True), _bytes(2, "mr_signer", True),
        _bytes(3, "se_attributes", True))),
    "reportErrReq": (4, _message(
        "ReportAttestationErrorRequest", _bytes(1, "platform_info", True),
        _u32(2, "attestation_error_code", True), _u32(3, "update_info_size", True))),
    "getWhiteListSizeReq": (10, _message("GetWhiteListSizeRequest")),
    "getWhiteListReq": (11, _message("GetWhiteListRequest", _u32(1, "white_list_size"))),
    "sgxGetExtendedEpidGroupIdReq": (12, _message("SGXGetExtendedEpidGroupIdRequest")),
    "sgxSwitchExtendedEpidGroupReq": (13, _message("SGXSwitchExtendedEpidGroupRequest",
                                                   _u32(1, "x_group_id"))),
    "sgxRegisterReq": (14, _message("SGXRegisterRequest", _bytes(1, "buf", True),
                                    _u32(2, "data_type", True))),
    "initQuoteExReq": (15, _message(
        "InitQuoteExRequest", _bytes(1, "att_key_id"), Field(3, "b_pub_key_id", "bool", True),
        Field(4, "buf_size", "uint64"))),
    "getQuoteSizeExReq": (16, _message("GetQuoteSizeExRequest", _bytes(1, "att_key_id"))),
    "getQuoteExReq": (17, _message(
        "GetQuoteExRequest", _bytes(1, "report", True), _bytes(2, "att_key_id"),
        _bytes(3, "qe_report_info"), _u32(4, "buf_size", True))),
    "checkUpdateStatusReq": (18, _message(
        "CheckUpdateStatusRequest", _bytes(1, "platform_info"),
        _u32(2, "update_info_size", True), _u32(3, "config", True))),
    # SelectAttKeyIDRequest has its timeout at 2, not 9.
    "selectAttKeyIDReq": (19, Schema("SelectAttKeyIDRequest", _bytes(1, "att_key_id_list"),
                                     _u32(2, "timeout"))),
    "getSupportedAttKeyIDNumReq": (21, _message("GetSupportedAttKeyIDNumRequest")),
    "getSupportedAttKeyIDsReq": (22, _message("GetSupportedAttKeyIDsRequest",
                                              _u32(1, "buf_size", True))),
}


def _response(name: str, *fields: Field) -> Schema:
    return Schema(name, _u32(1, "errorCode", True), *fields)


RESPONSES = {
    "initQuoteRes": (1, _response("InitQuoteResponse", _bytes(2, "targetInfo"),
                                  _bytes(3, "gid"))),
    "getQuoteRes": (2, _response("GetQuoteResponse", _bytes(2, "quote"),
                                 _bytes(3, "qe_report"))),
    "getLicTokenRes": (3, _response("GetLaunchTokenResponse", _bytes(2, "token"))),
    "reportErrRes": (4, _response("ReportAttestationErrorResponse",
                                  _bytes(2, "platform_update_info"))),
    "getWhiteListSizeRes": (10, _response("GetWhiteListSizeResponse",
                                          _u32(2, "white_list_size"))),
    "getWhiteListRes": (11, _response("GetWhiteListResponse", _bytes(2, "white_list"))),
    "sgxGetExtendedEpidGroupIdRes": (12, _response("SGXGetExtendedEpidGroupIdResponse",
                                                   _u32(2, "x_group_id"))),
    "sgxSwitchExtendedEpidGroupRes": (13, _response("SGXSwitchExtendedEpidGroupResponse")),
    "sgxRegisterRes": (14, _response("SGXRegisterResponse")),
    "initQuoteExRes": (15, _response("InitQuoteExResponse", _bytes(2, "target_info"),
                                     Field(3, "pub_key_id_size", "uint64"),
                                     _bytes(4, "pub_key_id"))),
    "getQuoteSizeExRes": (16, _response("GetQuoteSizeExResponse", _u32(2, "quote_size"))),
    "getQuoteExRes": (17, _response("GetQuoteExResponse", _bytes(2, "quote"),
                                    _bytes(3, "qe_report_info"))),
    "checkUpdateStatusRes": (18, _response("CheckUpdateStatusResponse",
                                           _bytes(2, "platform_update_info"),
                                           _u32(3, "status"))),
    "selectAttKeyIDRes": (19, _response("SelectAttKeyIDResponse",
                                        _bytes(2, "selected_att_key_id"))),
    "unsupportedRequestResponse": (20, _response("UnsupportedRequestResponse")),
    "getSupportedAttKeyIDNumRes": (21, _response("GetSupportedAttKeyIDNumResponse",
                                                 _u32(2, "att_key_id_num"))),
    "getSupportedAttKeyIDsRes": (22, _response("GetSupportedAttKeyIDsResponse",
                                               _bytes(2, "att_key_ids"))),
}
REQUEST = Schema("Request", *(Field(n, name, "message", message=s)
                              for name, (n, s) in REQUESTS.items()))
RESPONSE = Schema("Response", *(Field(n, name, "message", message=s)
                                for name, (n, s) in RESPONSES.items()))
_RESPONSE_OF = {  # request field -> response field
    "initQuoteReq": "initQuoteRes", "getQuoteReq": "getQuoteRes",
    "getLicTokenReq": "getLicTokenRes", "reportErrReq": "reportErrRes",
    "getWhiteListSizeReq": "getWhiteListSizeRes", "getWhiteListReq": "getWhiteListRes",
    "sgxGetExtendedEpidGroupIdReq": "sgxGetExtendedEpidGroupIdRes",
    "sgxSwitchExtendedEpidGroupReq": "sgxSwitchExtendedEpidGroupRes",
    "sgxRegisterReq": "sgxRegisterRes", "initQuoteExReq": "initQuoteExRes",
    "getQuoteSizeExReq": "getQuoteSizeExRes", "getQuoteExReq": "getQuoteExRes",
    "checkUpdateStatusReq": "checkUpdateStatusRes", "selectAttKeyIDReq": "selectAttKeyIDRes",
    "getSupportedAttKeyIDNumReq": "getSupportedAttKeyIDNumRes",
    "getSupportedAttKeyIDsReq": "getSupportedAttKeyIDsRes",
}
_EPID = {"initQuoteReq": "InitQuote", "getQuoteReq": "GetQuote",
         "reportErrReq": "ReportAttestationError", "checkUpdateStatusReq": "CheckUpdateStatus",
         "sgxGetExtendedEpidGroupIdReq": "SGXGetExtendedEpidGroupId",
         "sgxSwitchExtendedEpidGroupReq": "SGXSwitchExtendedEpidGroup",
         "sgxRegisterReq": "SGXRegister"}
_WHITE_LIST = {"getWhiteListSizeReq": "GetWhiteListSize", "getWhiteListReq": "GetWhiteList"}


def encode_request(name: str, **fields: Any) -> bytes:
    """A Request with the one request ``name`` (for clients and tests)."""
    return encode({name: fields}, REQUEST)


def decode_response(data: bytes) -> tuple[str, dict[str, Any]]:
    """The one response a Response holds: (its field name, its fields)."""
    values = decode(data, RESPONSE)
    if len(values) != 1:
        raise WireError(f"a Response with {len(values)} responses")
    return next(iter(values.items()))


# -- the service ------------------------------------------------------------------
class AesmdService:
    """aesmd's requests answered by ``backend`` (an EVM's quoting and launch
    enclaves: ``qe_init``, ``qe_quote_size``, ``quote_ex``, ``launch_token``)."""

    def __init__(self, backend: Any, *, log: Callable[[str], None] | None = None,
                 timeout: float = IO_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        self.backend = backend
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopped = threading.Event()
        self._listeners: list[Any] = []
        self._backend_lock = threading.Lock()
        self.requests_served = 0

    # -- one request ----------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | None:
        """The Response to a Request's bytes, or None: close without one."""
        try:
            request = decode(payload, REQUEST)
        except MissingFields as exc:
            # A known request without its required fields gets its response
            # with AESM_UNEXPECTED_ERROR (Intel's check()); anything else is
            # malformed.
            name = self._named_request(payload)
            if name is None or not self._only_missing(payload, name):
                self.log(f"vsgx aesmd: malformed request ({one_line(exc)}); connection closed")
                return None
            self.log(f"vsgx aesmd: {one_line(exc)}")
            return self._answer(name, AesmError.UNEXPECTED_ERROR)
        except WireError as exc:
            self.log(f"vsgx aesmd: malformed request ({one_line(exc)}); connection closed")
            return None
        if len(request) != 1:
            self.log(f"vsgx aesmd: a request with {len(request)} request fields (none this "
                     "service knows, or several); connection closed")
            return None
        name, fields = next(iter(request.items()))
        self.requests_served += 1
        try:
            return self._dispatch(name, fields)
        except VsgxError as exc:  # the EVM is gone, or the channel failed
            self.log(f"vsgx aesmd: {name}: the EVM failed: {one_line(exc)}")
            return self._answer(name, AesmError.SERVICE_UNAVAILABLE)

    @staticmethod
    def _named_request(payload: bytes) -> str | None:
        """The one request field a payload names, if it is well-formed
        apart from the request's own required fields."""
        outer = Schema("Request", *(Field(n, name, "bytes") for name, (n, _) in
                                    REQUESTS.items()))
        try:
            values = decode(payload, outer)
        except WireError:
            return None
        return next(iter(values)) if len(values) == 1 else None

    @staticmethod
    def _only_missing(payload: bytes, name: str) -> bool:
        outer = Schema("Request", Field(REQUESTS[name][0], name, "bytes"))
        inner = REQUESTS[name][1]
        loose = Schema(inner.name, *(Field(f.number, f.name, f.kind, False, f.message)
                                     for f in inner.by_number.values()))
        try:
            decode(decode(payload, outer)[name], loose)
        except WireError:
            return False
        return True

    def _answer(self, request: str, status: AesmError, **fields: Any) -> bytes:
        name = _RESPONSE_OF[request]
        return encode({name: {"errorCode": int(status), **fields}}, RESPONSE)

    def _dispatch(self, name: str, f: dict[str, Any]) -> bytes:
        if name in _EPID:
            self.log(f"vsgx aesmd: {_EPID[name]} refused: EPID is not supported (vsgx quotes "
                     "with DCAP ECDSA: InitQuoteEx, GetQuoteEx)")
            return self._answer(name, AesmError.SERVICE_UNAVAILABLE)
        if name in _WHITE_LIST:
            self.log(f"vsgx aesmd: {_WHITE_LIST[name]} refused: the launch enclave keeps no "
                     "Intel white list")
            return self._answer(name, AesmError.SERVICE_UNAVAILABLE)
        handler = getattr(self, f"_{name}")
        result: bytes = handler(name, f)
        return result

    def _quote_error(self, name: str, exc: QuoteGenerationError) -> bytes:
        status = _FROM_QUOTE3.get(exc.status, AesmError.UNEXPECTED_ERROR)
        self.log(f"vsgx aesmd: {name}: {one_line(exc)} ({_status_name(exc.status)})")
        return self._answer(name, status)

    # ECDSA quoting
    def _initQuoteExReq(self, name: str, f: dict[str, Any]) -> bytes:
        refusal = _known_key_id(f.get("att_key_id"))
        if refusal is not None:
            return self._answer(name, refusal)
        want_id = f["b_pub_key_id"]
        if want_id and f.get("buf_size", 0) < PUB_KEY_ID_SIZE:
            return self._answer(name, AesmError.PARAMETER_ERROR)
        try:
            target_info, key_id = self.backend.qe_init()
        except QuoteGenerationError as exc:
            return self._quote_error(name, exc)
        return self._answer(name, AesmError.SUCCESS, target_info=target_info,
                            pub_key_id_size=PUB_KEY_ID_SIZE,
                            pub_key_id=key_id if want_id else None)

    def _getQuoteSizeExReq(self, name: str, f: dict[str, Any]) -> bytes:
        refusal = _known_key_id(f.get("att_key_id"))
        if refusal is not None:
            return self._answer(name, refusal)
        try:
            size = self.backend.qe_quote_size()
        except QuoteGenerationError as exc:
            return self._quote_error(name, exc)
        return self._answer(name, AesmError.SUCCESS, quote_size=size)

    def _getQuoteExReq(self, name: str, f: dict[str, Any]) -> bytes:
        refusal = _known_key_id(f.get("att_key_id"))
        if refusal is not None:
            return self._answer(name, refusal)
        report, info, buf_size = f["report"], f.get("qe_report_info"), f["buf_size"]
        if len(report) != REPORT_SIZE or (info is not None and len(info) != QE_REPORT_INFO_SIZE):
            return self._answer(name, AesmError.PARAMETER_ERROR)
        if buf_size > MAX_QUOTE_BUFFER:
            self.log(f"vsgx aesmd: {name}: a quote buffer of {buf_size} bytes is more than "
                     f"this service hands out ({MAX_QUOTE_BUFFER})")
            return self._answer(name, AesmError.PARAMETER_ERROR)
        inputs = info[:16 + TARGETINFO_SIZE] if info is not None else None
        try:
            result = self.backend.quote_ex(report, inputs)
        except QuoteGenerationError as exc:
            return self._quote_error(name, exc)
        if len(result.quote) > buf_size:
            self.log(f"vsgx aesmd: {name}: the quote is {len(result.quote)} bytes, the buffer "
                     f"{buf_size}")
            return self._answer(name, AesmError.PARAMETER_ERROR)
        out_info = inputs + result.qe_report if inputs is not None else None
        return self._answer(name, AesmError.SUCCESS, quote=result.quote.ljust(buf_size, b"\0"),
                            qe_report_info=out_info)

    def _selectAttKeyIDReq(self, name: str, f: dict[str, Any]) -> bytes:
        listed = f.get("att_key_id_list")
        if listed is None:
            return self._answer(name, AesmError.SUCCESS, selected_att_key_id=VSGX_ATT_KEY_ID)
        head = ATT_KEY_ID_LIST_HEADER.size
        if len(listed) < head + ATT_KEY_ID_EXT_SIZE:
            return self._answer(name, AesmError.PARAMETER_ERROR)
        ident, version, count = ATT_KEY_ID_LIST_HEADER.unpack_from(listed)
        if ident or version or count > MAX_ATT_KEY_IDS \
                or len(listed) != head + count * ATT_KEY_ID_EXT_SIZE:
            return self._answer(name, AesmError.PARAMETER_ERROR)
        for i in range(count):
            entry = listed[head + i * ATT_KEY_ID_EXT_SIZE:head + (i + 1) * ATT_KEY_ID_EXT_SIZE]
            if _known_key_id(entry) is None:
                return self._answer(name, AesmError.SUCCESS, selected_att_key_id=entry)
        return self._answer(name, AesmError.UNSUPPORTED_ATT_KEY_ID)

    def _getSupportedAttKeyIDNumReq(self, name: str, f: dict[str, Any]) -> bytes:
        return self._answer(name, AesmError.SUCCESS, att_key_id_num=1)

    def _getSupportedAttKeyIDsReq(self, name: str, f: dict[str, Any]) -> bytes:
        if f["buf_size"] != ATT_KEY_ID_EXT_SIZE:  # exactly one ID's worth, as Intel checks
            return self._answer(name, AesmError.PARAMETER_ERROR)
        return self._answer(name, AesmError.SUCCESS, att_key_ids=VSGX_ATT_KEY_ID)

    # launch tokens
    def _getLicTokenReq(self, name: str, f: dict[str, Any]) -> bytes:
        mrenclave, modulus, attributes = f["mr_enclave"], f["mr_signer"], f["se_attributes"]
        if len(mrenclave) != 32 or len(modulus) != 384 or len(attributes) != 16:
            return self._answer(name, AesmError.PARAMETER_ERROR)
        flags, xfrm = struct.unpack("<QQ", attributes)
        try:
            token = self.backend.launch_token(mrenclave, modulus, flags, xfrm)
        except LaunchTokenError as exc:
            self.log(f"vsgx aesmd: GetLaunchToken refused: {one_line(exc)}")
            return self._answer(name, _FROM_LAUNCH.get(exc.status, AesmError.UNEXPECTED_ERROR))
        return self._answer(name, AesmError.SUCCESS, token=token)

    # -- the socket -------------------------------------------------------------------
    def serve(self, path: str | None = None, *, abstract: bool = False, mode: int = 0o600,
              ready: Callable[[], None] | None = None) -> None:
        """Answer connections on the Unix socket ``path`` (and, with
        ``abstract``, on the legacy abstract name, for this uid only) until
        ``stop``."""
        if path is None and not abstract:
            raise VsgxError("aesmd needs a socket path, the abstract socket, or both")
        listeners: list[Any] = []  # Unix listeners and the abstract one
        try:
            if path is not None:
                listeners.append(listen(parse_address(f"unix:{path}", listening=True),
                                        mode=mode))
            if abstract:
                listeners.append(_AbstractListener())
        except (ChannelError, OSError) as exc:
            for listener in listeners:
                listener.close()
            raise VsgxError(f"aesmd cannot listen: {one_line(exc, 400)}") from None
        self._listeners = listeners
        threads = [threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                    name="aesmd accept") for listener in listeners]
        for thread in threads:
            thread.start()
        if ready is not None:
            ready()
        try:
            while not self._stopped.wait(ACCEPT_SECONDS):
                pass
        finally:
            for listener in listeners:
                listener.close()
            for thread in threads:
                thread.join(timeout=2 * ACCEPT_SECONDS)

    def start(self, path: str | None = None, *, abstract: bool = False, mode: int = 0o600
              ) -> threading.Thread:
        """``serve`` in a thread, listening when this returns."""
        ready, failed = threading.Event(), []

        def run() -> None:
            try:
                self.serve(path, abstract=abstract, mode=mode, ready=ready.set)
            except BaseException as exc:
                failed.append(exc)
                ready.set()

        thread = threading.Thread(target=run, daemon=True, name="aesmd")
        thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return thread

    def stop(self) -> None:
        self._stopped.set()

    def _accept_loop(self, listener: Any) -> None:
        while not self._stopped.is_set():
            try:
                sock = listener.accept(timeout=ACCEPT_SECONDS)
            except (OSError, ValueError):
                if self._stopped.is_set():
                    return
                continue
            if sock is None:
                continue
            if isinstance(listener, _AbstractListener) and peer_uid(sock) != os.getuid():
                sock.close()  # abstract sockets have no file mode: admit this uid only
                continue
            if not self._slots.acquire(blocking=False):
                self.log("vsgx aesmd: too many connections at once; one closed")
                sock.close()
                continue
            threading.Thread(target=self._connection, args=(sock,), daemon=True,
                             name="aesmd request").start()

    def _connection(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(self.timeout)
            header = _read_exactly(sock, 4)
            if header is None:
                return
            (length,) = struct.unpack("<I", header)
            if length > MAX_REQUEST:
                self.log(f"vsgx aesmd: a request of {length} bytes (more than {MAX_REQUEST}); "
                         "connection closed")
                return
            payload = _read_exactly(sock, length)
            if payload is None:
                self.log("vsgx aesmd: a request ended before its length; connection closed")
                return
            with self._backend_lock:  # one request at a time, as aesmd's quoting thread
                response = self.handle(payload)
            if response is not None:
                sock.sendall(struct.pack("<I", len(response)) + response)
        except OSError as exc:
            self.log(f"vsgx aesmd: a connection failed: {one_line(exc)}")
        except Exception as exc:  # a bug here must not end the service
            self.log(f"vsgx aesmd: internal error: {type(exc).__name__}: {one_line(exc)}")
        finally:
            sock.close()
            self._slots.release()


class _AbstractListener:
    """The legacy abstract socket name (Linux)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(ABSTRACT_SOCKET)
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise

    def accept(self, timeout: float | None = None) -> socket.socket | None:
        if timeout is not None and not wait_ready(self.sock, read=True, timeout=timeout):
            return None
        return self.sock.accept()[0]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _status_name(status: int) -> str:
    try:
        return f"SGX_QL_{QuoteStatus(status).name}"
    except ValueError:
        return f"quote3_error_t {status:#x}"


def request(path: str, payload: bytes, timeout: float = IO_TIMEOUT) -> bytes:
    """Send one Request to the aesmd socket at ``path``; its Response bytes
    (VsgxError if the service closed the connection instead)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        target: str | bytes = path
        sock.connect(target)
        sock.sendall(struct.pack("<I", len(payload)) + payload)
        header = _read_exactly(sock, 4)
        if header is None:
            raise VsgxError("aesmd closed the connection without a response")
        body = _read_exactly(sock, struct.unpack("<I", header)[0])
        if body is None:
            raise VsgxError("aesmd's response ended early")
        return body


class EvmBackend:
    """The quoting and launch enclaves of an EVM at an address, reached over
    the channel; a connection that failed is made again at the next
    request (one try), so that an EVM restart does not end the service."""

    def __init__(self, address: str, policy: Any = None, *, connect: Callable[..., Any] | None
                 = None, lazy: bool = False):
        from vsgx.avm.remote import connect_evm

        self.address = address
        self.policy = policy
        self._connect = connect or (lambda: connect_evm(address, policy, warn=False))
        # lazy: the channel is made at the first request (a program that
        # never quotes never connects)
        self._evm: Any = None if lazy else self._connect()
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            evm = self._evm
        if evm is None or evm.conn.error is not None:
            evm = self._reconnect()
        try:
            return getattr(evm, name)(*args)
        except (QuoteGenerationError, LaunchTokenError):
            raise
        except VsgxError:
            if evm.conn.error is None:
                raise
        return getattr(self._reconnect(), name)(*args)

    def _reconnect(self) -> Any:
        with self._lock:
            old, self._evm = self._evm, None
            if old is not None:
                old.close()
            self._evm = self._connect()
            return self._evm

    def qe_init(self) -> tuple[bytes, bytes]:
        result: tuple[bytes, bytes] = self._call("qe_init")
        return result

    def qe_target_info(self) -> bytes:
        return bytes(self._call("qe_target_info"))

    def qe_quote_size(self) -> int:
        return int(self._call("qe_quote_size"))

    def quote(self, report: bytes) -> bytes:
        return bytes(self._call("quote", report))

    def quote_ex(self, report: bytes, qe_report_info: bytes | None = None, snp: bool = False
                 ) -> Any:
        return self._call("quote_ex", report, qe_report_info, snp)

    def launch_token(self, mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int
                     ) -> bytes:
        return bytes(self._call("launch_token", mrenclave, modulus, attributes, xfrm))

    def close(self) -> None:
        with self._lock:
            if self._evm is not None:
                self._evm.close()
                self._evm = None
