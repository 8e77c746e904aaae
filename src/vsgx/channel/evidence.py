"""Attested TLS (the RA-TLS convention of Gramine, Occlum and Enarx): the
EVM's TLS certificate carries *evidence* that binds its public key, and the
AVM checks the evidence against its policy before it sends any SGX
operation.

Evidence kinds:
* ``none`` — development only: proves nothing; the AVM accepts it only if
  its policy says so, and says loudly that the EVM is unprotected.
* ``sev-snp`` — an SEV-SNP attestation report whose REPORT_DATA holds the
  SHA-512 of the certificate's public key. This module checks the binding
  and the report's structure; verifying the report's signature against
  AMD's VCEK certificate chain is not implemented yet, so a policy must
  opt in to accept such evidence unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vsgx.errors import VsgxError

# A UUID-based OID (ITU-T X.667, arc 2.25): no registration needed.
EVIDENCE_OID = x509.ObjectIdentifier("2.25.231563318843497133508286432813658231977")
KIND_NONE = "none"
KIND_SEV_SNP = "sev-snp"
SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_DATA = slice(0x50, 0x90)
SNP_MEASUREMENT = slice(0x90, 0xC0)
SEV_GUEST_DEVICE = "/dev/sev-guest"


class AttestationError(VsgxError):
    """The EVM's evidence is missing, malformed, or not what the policy wants."""


@dataclass(frozen=True)
class Evidence:
    kind: str
    report: bytes = b""

    def encode(self) -> bytes:
        return json.dumps({"kind": self.kind, "report": self.report.hex()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        try:
            document = json.loads(data)
            return cls(str(document["kind"]), bytes.fromhex(document["report"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AttestationError(f"malformed evidence in the EVM certificate ({exc})") from None


@dataclass(frozen=True)
class EvidencePolicy:
    """What the AVM accepts from an EVM."""

    allow_unprotected: bool = False  # accept kind "none" (no SEV)
    allow_unverified_snp: bool = False  # accept SEV-SNP reports without the VCEK check
    snp_measurements: frozenset[bytes] = field(default_factory=frozenset)  # empty: any

    @classmethod
    def development(cls) -> EvidencePolicy:
        return cls(allow_unprotected=True, allow_unverified_snp=True)


def key_binding(public_key_der: bytes) -> bytes:
    """What the evidence's report data must hold for this key."""
    return hashlib.sha512(public_key_der).digest()


def public_key_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def collect_evidence(kind: str, public_key: bytes) -> Evidence:
    """Evidence of ``kind`` for an EVM whose TLS key is ``public_key`` (DER)."""
    if kind == KIND_NONE:
        return Evidence(KIND_NONE)
    if kind == KIND_SEV_SNP:
        return Evidence(KIND_SEV_SNP, snp_report(key_binding(public_key)))
    raise AttestationError(f"unknown evidence kind {kind!r}")


def snp_report(report_data: bytes) -> bytes:
    """An SEV-SNP attestation report from the guest firmware (Linux's
    /dev/sev-guest, SNP_GET_REPORT)."""
    if not os.path.exists(SEV_GUEST_DEVICE):
        raise AttestationError(f"this machine is not an SEV-SNP guest ({SEV_GUEST_DEVICE} "
                               "is missing)")
    import ctypes
    import fcntl

    class Request(ctypes.Structure):  # struct snp_report_req
        _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32),
                    ("rsvd", ctypes.c_uint8 * 28)]

    class Response(ctypes.Structure):  # struct snp_report_resp
        _fields_ = [("data", ctypes.c_uint8 * 4000)]

    class GuestRequest(ctypes.Structure):  # struct snp_guest_request_ioctl
        _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                    ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]

    request, response = Request(), Response()
    ctypes.memmove(request.user_data, report_data, 64)
    guest = GuestRequest(1, ctypes.addressof(request), ctypes.addressof(response), 0)
    snp_get_report = (3 << 30) | (ctypes.sizeof(GuestRequest) << 16) | (ord("S") << 8) | 0x0
    try:
        with open(SEV_GUEST_DEVICE, "rb", buffering=0) as device:
            fcntl.ioctl(device, snp_get_report, guest)
    except OSError as exc:
        raise AttestationError(f"SNP_GET_REPORT failed: {exc}") from None
    # snp_report_resp: status u32, report_size u32, reserved[24], report
    data = bytes(response.data)
    size = int.from_bytes(data[4:8], "little")
    return data[32:32 + size]


def verify_evidence(certificate_der: bytes, policy: EvidencePolicy) -> Evidence:
    """Check the EVM's certificate evidence; raise AttestationError if the
    policy does not accept it."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
    except ValueError as exc:
        raise AttestationError(f"the EVM's certificate is not valid X.509 ({exc})") from None
    try:
        extension = certificate.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        raise AttestationError("the EVM's certificate carries no evidence") from None
    evidence = Evidence.decode(extension.value.value)  # type: ignore[attr-defined]
    if evidence.kind == KIND_NONE:
        if not policy.allow_unprotected:
            raise AttestationError("the EVM offers no protection evidence (no SEV) and the "
                                   "policy requires it")
        return evidence
    if evidence.kind == KIND_SEV_SNP:
        report = evidence.report
        if len(report) < SNP_REPORT_SIZE:
            raise AttestationError("the SEV-SNP report is truncated")
        if report[SNP_REPORT_DATA] != key_binding(public_key_der(certificate)):
            raise AttestationError("the SEV-SNP report does not bind the TLS key")
        if policy.snp_measurements and report[SNP_MEASUREMENT] not in policy.snp_measurements:
            raise AttestationError("the EVM's SEV-SNP launch measurement is not allowed")
        if not policy.allow_unverified_snp:
            raise AttestationError("SEV-SNP report signatures (VCEK chain) are not verified "
                                   "by this vsgx version; the policy does not accept that")
        return evidence
    raise AttestationError(f"unknown evidence kind {evidence.kind!r}")
