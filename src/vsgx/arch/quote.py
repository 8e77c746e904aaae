"""The DCAP ECDSA quote, version 3, as data: Intel's
QuoteGeneration/quote_wrapper/common/inc/sgx_quote_3.h (sgx_quote3_t,
sgx_quote_header_t, sgx_report_body_t, sgx_ql_ecdsa_sig_data_t,
sgx_ql_auth_data_t, sgx_ql_certification_data_t) and the quote library's
status codes (sgx_ql_lib_common.h, quote3_error_t).

    offset  size  what
    0       48    header
    48      384   ISV enclave REPORT body (the first 384 bytes of its REPORT)
    432     4     signature_data_len
    436     ...   sgx_ql_ecdsa_sig_data_t:
                    64   ECDSA P-256 signature over bytes 0..431 (r || s, big-endian)
                    64   attestation public key (x || y, big-endian)
                    384  QE REPORT body (REPORTDATA = SHA-256(key || auth data) || 0*32)
                    64   signature of the QE REPORT body by the PCK key (r || s)
                    2+n  sgx_ql_auth_data_t (u16 size, data)
                    6+m  sgx_ql_certification_data_t (u16 type, u32 size, data)

All integers are little-endian; keys and signatures are big-endian byte
strings as sgx_quote_3.h says. ``parse_quote`` is strict: every length must
add up exactly, reserved bytes must be zero, nothing may trail.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from vsgx.arch.layout import Structure, raw, structure, u16, u32
from vsgx.arch.report import REPORT_BODY_SIZE, ReportBody
from vsgx.errors import StructureError

QUOTE_VERSION = 3
ATT_KEY_TYPE_ECDSA_P256 = 2  # sgx_ql_attestation_algorithm_id_t SGX_QL_ALG_ECDSA_P256
TEE_TYPE_SGX = 0
# g_vendor_id of Intel's QE3 (quoting_enclave_3.cpp); verifiers look for it.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

HEADER_SIZE = 48
SIGNED_SIZE = HEADER_SIZE + REPORT_BODY_SIZE  # what the attestation key signs
SIGNATURE_DATA_OFFSET = SIGNED_SIZE + 4
ECDSA_SIGNATURE_SIZE = 64
ECDSA_PUBLIC_KEY_SIZE = 64
ECDSA_SIG_DATA_FIXED_SIZE = 2 * ECDSA_SIGNATURE_SIZE + ECDSA_PUBLIC_KEY_SIZE + REPORT_BODY_SIZE
QE_ID_SIZE = 16  # the first bytes of header.user_data
QE_AUTH_DATA_SIZE = 32  # what Intel's QE3 certifies with its key (and verifiers expect)

# The vsgx quoting enclave's identity: stable and documented, the same on
# every vsgx EVM (it is not an image signed with an RSA key; the two
# measurements are SHA-256 of fixed labels). ATTRIBUTES: INIT | MODE64BIT |
# PROVISIONKEY, as Intel's QE3; XFRM x87 | SSE; MISCSELECT 0.
VSGX_QE_MRENCLAVE = hashlib.sha256(b"vsgx quoting enclave 1").digest()
VSGX_QE_MRSIGNER = hashlib.sha256(b"vsgx quoting enclave signer 1").digest()
VSGX_QE_ISVPRODID = 1
VSGX_QE_ISVSVN = 1
VSGX_QE_ATTRIBUTES = 0x15
VSGX_QE_XFRM = 0x3
VSGX_QE_MISCSELECT = 0
# The PCE whose key (the PCK) certifies the QE: ISVSVN and PCE-ID in the
# quote header and the PCK certificate.
VSGX_PCE_ISVSVN = 1
VSGX_PCE_ID = b"\x00\x00"
# FMSPC names the platform type TCB info is looked up by: "\0VSGX\0", no
# Intel CPU's.
VSGX_FMSPC = b"\x00VSGX\x00"
# Intel's production QE3 (MRSIGNER of its signing key, ISVPRODID 1), for
# verifying quotes from SGX hardware.
INTEL_QE3_MRSIGNER = bytes.fromhex(
    "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
INTEL_QE3_ISVPRODID = 1


class CertificationDataType(IntEnum):
    """sgx_ql_cert_key_type_t."""

    PPID_CLEARTEXT = 1
    PPID_RSA2048_ENCRYPTED = 2
    PPID_RSA3072_ENCRYPTED = 3
    PCK_CLEARTEXT = 4
    PCK_CERT_CHAIN = 5  # PEM: PCK leaf, intermediate CA, root CA
    ECDSA_SIG_AUX_DATA = 6


class QuoteStatus(IntEnum):
    """quote3_error_t values the quoting enclave reports."""

    SUCCESS = 0x0000
    UNEXPECTED = 0xE001
    INVALID_PARAMETER = 0xE002
    OUT_OF_MEMORY = 0xE003
    ATT_KEY_NOT_INITIALIZED = 0xE00F
    ATT_KEY_CERT_DATA_INVALID = 0xE010
    ERROR_REPORT = 0xE013
    INVALID_REPORT = 0xE015


class QuoteFormatError(StructureError):
    """A quote is malformed (a length, a type or a reserved field)."""


@structure(HEADER_SIZE)
class QuoteHeader(Structure):
    version: int = u16(0)
    att_key_type: int = u16(2)
    # att_key_data_0 in sgx_quote_3.h; quote v4 names it tee_type (0 = SGX).
    tee_type: int = u32(4)
    qe_svn: int = u16(8)
    pce_svn: int = u16(10)
    qe_vendor_id: bytes = raw(12, 16)
    user_data: bytes = raw(28, 20)


_CERTIFICATION_TYPES = frozenset(int(t) for t in CertificationDataType)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CERT_HEADER = struct.Struct("<HI")


@dataclass(frozen=True)
class Quote:
    """A parsed v3 ECDSA quote; ``raw`` is exactly the bytes it came from."""

    raw: bytes
    header: QuoteHeader
    report_body: ReportBody
    signature: bytes
    attestation_key: bytes
    qe_report_body: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Header || ISV report body: what the attestation key signs."""
        return self.raw[:SIGNED_SIZE]

    @property
    def qe_report_bytes(self) -> bytes:
        start = SIGNATURE_DATA_OFFSET + ECDSA_SIGNATURE_SIZE + ECDSA_PUBLIC_KEY_SIZE
        return self.raw[start:start + REPORT_BODY_SIZE]

    @property
    def qe_id(self) -> bytes:
        return self.header.user_data[:QE_ID_SIZE]


def signature_data(signature: bytes, attestation_key: bytes, qe_report_body: bytes,
                   qe_report_signature: bytes, qe_auth_data: bytes, certification_type: int,
                   certification_data: bytes) -> bytes:
    """sgx_ql_ecdsa_sig_data_t with its auth and certification data."""
    if (len(signature), len(attestation_key), len(qe_report_body), len(qe_report_signature)) \
            != (ECDSA_SIGNATURE_SIZE, ECDSA_PUBLIC_KEY_SIZE, REPORT_BODY_SIZE,
                ECDSA_SIGNATURE_SIZE):
        raise QuoteFormatError("quote: a signature, key or QE report has the wrong size")
    if len(qe_auth_data) > 0xFFFF or len(certification_data) > 0xFFFFFFFF:
        raise QuoteFormatError("quote: authentication or certification data too long")
    return (signature + attestation_key + qe_report_body + qe_report_signature
            + _U16.pack(len(qe_auth_data)) + qe_auth_data
            + _CERT_HEADER.pack(certification_type, len(certification_data))
            + certification_data)


def assemble_quote(signed: bytes, sig_data: bytes) -> bytes:
    """header || body || signature_data_len || signature data."""
    if len(signed) != SIGNED_SIZE:
        raise QuoteFormatError(f"quote: header and body are {len(signed)} bytes, "
                               f"expected {SIGNED_SIZE}")
    return signed + _U32.pack(len(sig_data)) + sig_data


def parse_quote(data: bytes | bytearray | memoryview) -> Quote:
    """Parse a v3 ECDSA-P256 quote; QuoteFormatError on anything malformed."""
    data = bytes(data)
    minimum = SIGNATURE_DATA_OFFSET + ECDSA_SIG_DATA_FIXED_SIZE + 2 + _CERT_HEADER.size
    if len(data) < minimum:
        raise QuoteFormatError(f"quote: {len(data)} bytes, shorter than the smallest v3 "
                               f"quote ({minimum})")
    header = _unpack(QuoteHeader, data, 0, "header")
    if header.version != QUOTE_VERSION:
        raise QuoteFormatError(f"quote: version {header.version}, only version 3 is supported")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(f"quote: attestation key type {header.att_key_type}, only 2 "
                               "(ECDSA-256-with-P-256) is supported")
    if header.tee_type != TEE_TYPE_SGX:
        raise QuoteFormatError(f"quote: TEE type {header.tee_type:#x} is not SGX")
    body = _unpack(ReportBody, data, HEADER_SIZE, "ISV report body")
    (length,) = _U32.unpack_from(data, SIGNED_SIZE)
    if length != len(data) - SIGNATURE_DATA_OFFSET:
        raise QuoteFormatError(f"quote: signature_data_len is {length} but "
                               f"{len(data) - SIGNATURE_DATA_OFFSET} bytes follow")
    at = SIGNATURE_DATA_OFFSET
    signature = data[at:at + ECDSA_SIGNATURE_SIZE]
    at += ECDSA_SIGNATURE_SIZE
    key = data[at:at + ECDSA_PUBLIC_KEY_SIZE]
    at += ECDSA_PUBLIC_KEY_SIZE
    qe_report = _unpack(ReportBody, data, at, "QE report body")
    at += REPORT_BODY_SIZE
    qe_signature = data[at:at + ECDSA_SIGNATURE_SIZE]
    at += ECDSA_SIGNATURE_SIZE
    (auth_size,) = _U16.unpack_from(data, at)
    at += 2
    if at + auth_size + _CERT_HEADER.size > len(data):
        raise QuoteFormatError(f"quote: authentication data of {auth_size} bytes runs past "
                               "the end")
    auth = data[at:at + auth_size]
    at += auth_size
    cert_type, cert_size = _CERT_HEADER.unpack_from(data, at)
    at += _CERT_HEADER.size
    if at + cert_size != len(data):
        raise QuoteFormatError(f"quote: certification data is {cert_size} bytes but "
                               f"{len(data) - at} bytes follow")
    if cert_type not in _CERTIFICATION_TYPES:
        raise QuoteFormatError(f"quote: unknown certification data type {cert_type}")
    return Quote(data, header, body, signature, key, qe_report, qe_signature, auth, cert_type,
                 data[at:])


S = TypeVar("S", bound=Structure)


def _unpack(cls: type[S], data: bytes, offset: int, what: str) -> S:
    try:
        return cls.unpack(memoryview(data)[offset:offset + cls.SIZE])
    except StructureError as exc:
        raise QuoteFormatError(f"quote: {what}: {exc}") from None
