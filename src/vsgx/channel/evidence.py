"""Attested TLS (the RA-TLS convention of Gramine, Occlum and Enarx): the
EVM's TLS certificate carries *evidence* that binds its public key, and the
AVM checks the evidence against its policy before it sends any SGX
operation.

Evidence kinds:
* ``none`` — development only: proves nothing; the AVM accepts it only if
  its policy says so, and says loudly that the EVM is unprotected.
* ``sev-snp`` — an SEV-SNP attestation report whose REPORT_DATA holds the
  SHA-512 of the certificate's public key. This module checks the binding
  and the report's structure; the report's signature (AMD's VCEK chain) is
  checked by the policy's ``snp_verifier``, and without one a policy must
  opt in to accept such evidence unverified.

The certificate is hostile input: whatever is wrong with it ends as one
AttestationError line, never as a traceback from the parser below.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from vsgx.errors import VsgxError

# A UUID-based OID (ITU-T X.667, arc 2.25): no registration needed.
EVIDENCE_OID = x509.ObjectIdentifier("2.25.231563318843497133508286432813658231977")
KIND_NONE = "none"
KIND_SEV_SNP = "sev-snp"
SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_DATA = slice(0x50, 0x90)
SNP_MEASUREMENT = slice(0x90, 0xC0)
SEV_GUEST_DEVICE = "/dev/sev-guest"
# An SNP report with AMD's VCEK/ASK/ARK chain fits in a fraction of this.
MAX_EVIDENCE = 64 * 1024
# What cryptography raises on certificates it cannot read.
_UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
               x509.DuplicateExtension, x509.UnsupportedGeneralNameType)

# (report, the VCEK chain the evidence carries, possibly empty) -> None;
# raises if the report's signature does not chain to AMD's root.
SnpVerifier = Callable[[bytes, bytes], None]


class AttestationError(VsgxError):
    """The EVM's evidence is missing, malformed, or not what the policy wants."""


def one_line(exc: BaseException | str, limit: int = 160) -> str:
    """An exception's text, or a peer's, as one printable line."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    line = " ".join(text.split())
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


@dataclass(frozen=True)
class Evidence:
    kind: str
    report: bytes = b""
    certificates: bytes = b""  # the VCEK chain (DER, concatenated), when the EVM has it

    def encode(self) -> bytes:
        document = {"kind": self.kind, "report": self.report.hex()}
        if self.certificates:
            document["certificates"] = self.certificates.hex()
        return json.dumps(document).encode()

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        if len(data) > MAX_EVIDENCE:
            raise AttestationError(f"the evidence in the EVM certificate is {len(data)} bytes, "
                                   f"more than {MAX_EVIDENCE}")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise AttestationError(f"malformed evidence in the EVM certificate "
                                   f"({one_line(exc)})") from None
        if not isinstance(document, dict):
            raise AttestationError("malformed evidence in the EVM certificate (not an object)")
        values = {}
        for name in ("kind", "report", "certificates"):
            value = document.get(name, "" if name != "kind" else None)
            if not isinstance(value, str):
                raise AttestationError(f"malformed evidence in the EVM certificate ({name!r} "
                                       "is missing or not a string)")
            values[name] = value
        try:
            return cls(values["kind"], bytes.fromhex(values["report"]),
                       bytes.fromhex(values["certificates"]))
        except ValueError:
            raise AttestationError("malformed evidence in the EVM certificate (a report or "
                                   "certificate that is not hex)") from None


@dataclass(frozen=True)
class EvidencePolicy:
    """What the AVM accepts from an EVM.

    Evidence ``none`` proves nothing: by default it is accepted from an EVM
    on this machine (a Unix socket, loopback, vsock's local CID) and refused
    from any other, unless the EVM's key is pinned or ``allow_unprotected``
    says so. ``require_snp`` refuses everything but SEV-SNP evidence."""

    allow_unprotected: bool = False  # accept kind "none" from any EVM
    allow_unprotected_local: bool = True  # ... from an EVM on this machine
    require_snp: bool = False
    allow_unverified_snp: bool = False  # accept SEV-SNP reports nobody verified
    snp_measurements: frozenset[bytes] = field(default_factory=frozenset)  # empty: any
    pinned_keys: frozenset[str] = field(default_factory=frozenset)  # EVM key fingerprints
    snp_verifier: SnpVerifier | None = None  # checks a report's signature to AMD's root

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


def _acceptable_key(key: object) -> bool:
    """A key TLS 1.3 signs with, of a strength worth trusting."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name in ("secp256r1", "secp384r1", "secp521r1")
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size >= 2048
    return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


def _certificate(certificate_der: bytes) -> tuple[x509.Certificate, bytes]:
    """The certificate and its key's DER SubjectPublicKeyInfo."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        key = certificate.public_key()
    except _UNREADABLE as exc:
        raise AttestationError(f"the EVM's certificate is not one vsgx can read "
                               f"({one_line(exc)})") from None
    if not _acceptable_key(key):
        size = getattr(key, "key_size", None)
        raise AttestationError(f"the EVM's key type ({type(key).__name__.lstrip('_')}"
                               f"{f', {size} bits' if size else ''}) is not one vsgx accepts")
    return certificate, public_key_der(certificate)


def _evidence_extension(certificate: x509.Certificate) -> bytes:
    try:
        extension = certificate.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        raise AttestationError("the EVM's certificate carries no evidence") from None
    except _UNREADABLE as exc:
        raise AttestationError(f"the EVM's certificate has malformed extensions "
                               f"({one_line(exc)})") from None
    value = getattr(extension.value, "value", None)
    if not isinstance(value, bytes):
        raise AttestationError("the EVM's evidence extension is not an opaque value")
    return value


def verify_evidence(certificate_der: bytes, policy: EvidencePolicy, *, local: bool = False
                    ) -> Evidence:
    """Check the EVM's certificate evidence; raise AttestationError (one
    line) if the certificate is malformed or the policy does not accept it.
    ``local``: the EVM is on this machine (a Unix socket, loopback)."""
    certificate, public = _certificate(certificate_der)
    key = hashlib.sha256(public).hexdigest()
    if policy.pinned_keys and key not in policy.pinned_keys:
        raise AttestationError(f"the EVM's key {key} is not the pinned one")
    evidence = Evidence.decode(_evidence_extension(certificate))
    if evidence.kind == KIND_NONE:
        if policy.require_snp:
            raise AttestationError("the EVM offers no protection evidence (no SEV) and the "
                                   "policy requires SEV-SNP")
        if policy.pinned_keys or policy.allow_unprotected or (
                local and policy.allow_unprotected_local):
            return evidence
        if local:
            raise AttestationError("the EVM offers no protection evidence (no SEV) and the "
                                   "policy requires it")
        raise AttestationError(f"the EVM offers no protection evidence (no SEV) and is not on "
                               f"this machine: pin its key {key} (--evm-pin) or accept it "
                               f"unattested (--allow-unattested)")
    if evidence.kind == KIND_SEV_SNP:
        report = evidence.report
        if len(report) != SNP_REPORT_SIZE:
            raise AttestationError(f"the SEV-SNP report is {len(report)} bytes, not "
                                   f"{SNP_REPORT_SIZE}")
        if report[SNP_REPORT_DATA] != key_binding(public):
            raise AttestationError("the SEV-SNP report does not bind the TLS key")
        if policy.snp_measurements and report[SNP_MEASUREMENT] not in policy.snp_measurements:
            raise AttestationError("the EVM's SEV-SNP launch measurement is not allowed")
        if policy.snp_verifier is not None:
            try:
                policy.snp_verifier(report, evidence.certificates)
            except AttestationError as exc:
                raise AttestationError(one_line(exc, 300)) from None
            except Exception as exc:  # a verifier's own error is a refusal, not a crash
                raise AttestationError(f"the SEV-SNP report failed verification "
                                       f"({one_line(exc)})") from None
        elif not (policy.allow_unverified_snp or (policy.pinned_keys and not policy.require_snp)):
            raise AttestationError("SEV-SNP report signatures (VCEK chain) are not verified "
                                   "by this vsgx version; the policy does not accept that")
        return evidence
    raise AttestationError(f"unknown evidence kind {one_line(repr(evidence.kind), 40)}")
