"""Attested TLS (the RA-TLS convention of Gramine, Occlum and Enarx): the
EVM's TLS certificate carries *evidence* that binds its public key, and the
AVM checks the evidence against its policy before it sends any SGX
operation.

Evidence kinds:
* ``none`` — development only: proves nothing; the AVM accepts it only if
  its policy says so, and says loudly that the EVM is unprotected.
* ``sev-snp`` — an SEV-SNP attestation report whose REPORT_DATA holds the
  SHA-512 of the certificate's public key, with the certificate table of
  the extended report when the EVM's host supplied one. This module checks
  the binding and the report's structure; the report's signature (AMD's
  VCEK chain) is checked by the policy's ``snp_verifier`` —
  ``AmdSnpVerifier`` verifies it to AMD's root with
  ``vsgx.crypto.snp`` — and without one a policy must opt in to accept such
  evidence unverified.

The EVM collects its evidence with ``SnpCollector`` (configfs-tsm, or the
sev-guest device's extended and plain report requests).

The certificate is hostile input: whatever is wrong with it ends as one
AttestationError line, never as a traceback from the parser below.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from vsgx.crypto.snp import (
    SnpPolicy,
    SnpVerificationError,
    parse_certificate_table,
    verify_snp_evidence,
)
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

# (report, the certificate table the evidence carries (possibly empty), the
# REPORT_DATA that binds the TLS key) -> None; raises if the report does not
# verify to a trusted root or fails the verifier's policy.
SnpVerifier = Callable[[bytes, bytes, bytes], None]


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
    # the extended report's certificate table (GHCB format: GUID, offset,
    # length per entry; VCEK, ASK, ARK), when the EVM's host supplied one
    certificates: bytes = b""

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
        return snp_evidence(key_binding(public_key))
    raise AttestationError(f"unknown evidence kind {kind!r}")


def snp_evidence(report_data: bytes, collector: SnpCollector | None = None) -> Evidence:
    """SEV-SNP evidence whose REPORT_DATA is ``report_data``: the report and,
    where the kernel and the host offer it, the certificate table."""
    return (collector or SnpCollector()).collect(report_data)


# -- collecting SEV-SNP evidence on a Linux guest ---------------------------------------
TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report"
TSM_PROVIDER_SNP = "sev_guest"
SNP_FW_BLOB_MAX = 0x4000  # SEV_FW_BLOB_MAX_SIZE: what the kernel accepts at first
SNP_CERTS_LIMIT = 0x10000  # a certificate table this large is not a VCEK chain
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
_PAGE = 4096
_TABLE_ENTRY = struct.Struct("<16sII")


class _TsmUnavailable(AttestationError):
    """configfs-tsm is there but this process may not make a report."""


class ConfigFs:
    """The file operations configfs-tsm takes (an object, so that tests can
    stand in for the kernel)."""

    def mkdir(self, root: Path) -> Path:
        return Path(tempfile.mkdtemp(prefix="vsgx-", dir=root))

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read(SNP_CERTS_LIMIT + 1)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)


def _trim_table(table: bytes) -> bytes:
    """The certificate table without the zero padding of its buffer (as it
    is, if it is not a well-formed table: the verifier says what is wrong)."""
    end, at = 0, 0
    while at + _TABLE_ENTRY.size <= len(table):
        guid, offset, length = _TABLE_ENTRY.unpack_from(table, at)
        at += _TABLE_ENTRY.size
        if guid == bytes(16) and offset == 0 and length == 0:
            return table[:max(end, at)] if end or at > _TABLE_ENTRY.size else b""
        end = max(end, offset + length)
    return table


class SnpCollector:
    """SEV-SNP evidence from the guest's kernel, in the order of preference:

    1. configfs-tsm (Linux 6.7+, ``/sys/kernel/config/tsm/report``): a report
       entry gets ``inblob`` (REPORT_DATA); ``outblob`` is the report,
       ``auxblob`` the certificate table the host supplied (GHCB format);
       ``generation`` must not move between the write and the reads, or
       another writer interfered;
    2. ``SNP_GET_EXT_REPORT`` on /dev/sev-guest: the report and the host's
       certificate table (if the buffer is too small the kernel says how
       large it must be, and the request is made once more);
    3. ``SNP_GET_REPORT``: the report without certificates.

    ``ioctl`` and ``configfs`` are what the kernel is reached through (tests
    replace them)."""

    def __init__(self, device: str = SEV_GUEST_DEVICE, tsm_root: str | None = TSM_REPORT_ROOT,
                 ioctl: Callable[..., object] | None = None, configfs: ConfigFs | None = None,
                 vmpl: int = 0):
        self.device = device
        self.tsm_root = Path(tsm_root) if tsm_root else None
        self.ioctl = ioctl
        self.configfs = configfs or ConfigFs()
        self.vmpl = vmpl

    def collect(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise AttestationError("SEV-SNP REPORT_DATA is 64 bytes")
        if self.tsm_root is not None and self.configfs.exists(self.tsm_root):
            try:
                report, table = self._tsm(report_data)
                return Evidence(KIND_SEV_SNP, report, table)
            except _TsmUnavailable:
                if not os.path.exists(self.device):
                    raise  # nothing else to try: say why configfs-tsm failed
        if not os.path.exists(self.device):
            raise AttestationError(f"this machine is not an SEV-SNP guest ({self.device} is "
                                   "missing, and configfs-tsm is not there)")
        report, table = self._extended(report_data)
        return Evidence(KIND_SEV_SNP, report, table)

    # -- configfs-tsm ----------------------------------------------------------------
    def _tsm(self, report_data: bytes) -> tuple[bytes, bytes]:
        fs = self.configfs
        assert self.tsm_root is not None
        try:
            entry = fs.mkdir(self.tsm_root)
        except OSError as exc:  # not permitted for this user, say; the device may be
            raise _TsmUnavailable(f"cannot make a configfs-tsm report in {self.tsm_root}: "
                                  f"{exc.strerror or exc}") from None
        try:
            provider = fs.read(entry / "provider").decode(errors="replace").strip()
            if provider != TSM_PROVIDER_SNP:
                raise AttestationError(f"configfs-tsm's provider is {one_line(provider, 40)!r}, "
                                       f"not {TSM_PROVIDER_SNP} (SEV-SNP)")
            if self.vmpl and fs.exists(entry / "privlevel"):
                fs.write(entry / "privlevel", str(self.vmpl).encode())
            fs.write(entry / "inblob", report_data)
            generation = fs.read(entry / "generation").strip()
            report = fs.read(entry / "outblob")
            table = fs.read(entry / "auxblob") if fs.exists(entry / "auxblob") else b""
            if fs.read(entry / "generation").strip() != generation:
                raise AttestationError("another writer changed the configfs-tsm report while "
                                       "it was read; try again")
        except OSError as exc:
            raise AttestationError(f"configfs-tsm report failed: {exc.strerror or exc}"
                                   ) from None
        finally:
            try:
                fs.rmdir(entry)
            except OSError:
                pass
        if len(report) != SNP_REPORT_SIZE:
            raise AttestationError(f"configfs-tsm gave a {len(report)}-byte report, not "
                                   f"{SNP_REPORT_SIZE}")
        if len(table) > SNP_CERTS_LIMIT:
            raise AttestationError("configfs-tsm gave a certificate table larger than "
                                   f"{SNP_CERTS_LIMIT} bytes")
        return report, _trim_table(table)

    # -- /dev/sev-guest ----------------------------------------------------------------
    def _call(self, number: int, request: object, response: object) -> _GuestRequest:
        import fcntl

        guest = _GuestRequest(1, ctypes.addressof(request),  # type: ignore[arg-type]
                              ctypes.addressof(response), 0)  # type: ignore[arg-type]
        code = _iowr(number, ctypes.sizeof(_GuestRequest))
        ioctl = self.ioctl or fcntl.ioctl
        with open(self.device, "rb", buffering=0) as device:
            ioctl(device, code, guest)
        return guest

    def _get_report(self, report_data: bytes) -> bytes:
        request, response = _ReportRequest(), _ReportResponse()
        ctypes.memmove(request.user_data, report_data, 64)
        request.vmpl = self.vmpl
        try:
            self._call(0x0, request, response)
        except OSError as exc:
            raise AttestationError(f"SNP_GET_REPORT failed: {exc}") from None
        return _report_of(bytes(response.data), "SNP_GET_REPORT")

    def _extended(self, report_data: bytes) -> tuple[bytes, bytes]:
        length = SNP_FW_BLOB_MAX
        for _ in range(2):
            certs = ctypes.create_string_buffer(length)
            request, response = _ExtReportRequest(), _ReportResponse()
            ctypes.memmove(request.data.user_data, report_data, 64)
            request.data.vmpl = self.vmpl
            request.certs_address = ctypes.addressof(certs)
            request.certs_len = length
            try:
                self._call(0x2, request, response)
            except OSError as exc:
                if exc.errno == errno.ENOTTY:  # a kernel without the extended request
                    return self._get_report(report_data), b""
                needed = request.certs_len
                if (exc.errno == errno.EIO and needed > length
                        and needed <= SNP_CERTS_LIMIT and needed % _PAGE == 0):
                    length = needed
                    continue
                raise AttestationError(f"SNP_GET_EXT_REPORT failed: {exc}") from None
            report = _report_of(bytes(response.data), "SNP_GET_EXT_REPORT")
            size = min(request.certs_len, length)
            return report, _trim_table(certs.raw[:size])
        raise AttestationError("SNP_GET_EXT_REPORT: the certificate buffer the kernel asked "
                               "for changed twice")


class _ReportRequest(ctypes.Structure):  # struct snp_report_req
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32),
                ("rsvd", ctypes.c_uint8 * 28)]


class _ExtReportRequest(ctypes.Structure):  # struct snp_ext_report_req
    _fields_ = [("data", _ReportRequest), ("certs_address", ctypes.c_uint64),
                ("certs_len", ctypes.c_uint32)]


class _ReportResponse(ctypes.Structure):  # struct snp_report_resp
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class _GuestRequest(ctypes.Structure):  # struct snp_guest_request_ioctl
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]


def _iowr(number: int, size: int) -> int:
    """_IOWR('S', number, size): the sev-guest ioctls."""
    return (3 << 30) | (size << 16) | (ord("S") << 8) | number


def _report_of(data: bytes, what: str) -> bytes:
    """The report in an MSG_REPORT_RSP: status u32, report_size u32,
    reserved[24], report (SEV-SNP ABI, "MSG_REPORT_RSP Message Structure")."""
    status, size = struct.unpack_from("<II", data)
    if status != 0:
        raise AttestationError(f"{what}: the firmware answered status {status:#x}")
    if size != SNP_REPORT_SIZE:
        raise AttestationError(f"{what}: a {size}-byte report, not {SNP_REPORT_SIZE}")
    return data[32:32 + size]


# -- verifying SEV-SNP evidence to AMD's root ---------------------------------------
@dataclass(frozen=True)
class AmdSnpVerifier:
    """An ``EvidencePolicy.snp_verifier`` that checks the report up to a
    trusted AMD root (``vsgx.crypto.snp.verify_snp_evidence``): the VCEK
    chain from the evidence's certificate table, else from
    ``certificate_dir`` (ark.pem, ask.pem, vcek.pem or AMD KDS's files;
    nothing is fetched), REPORT_DATA equal to the TLS key's binding, and
    ``policy`` (measurements, minimum TCB, debug, trusted ARKs)."""

    policy: SnpPolicy = field(default_factory=SnpPolicy)
    certificate_dir: Path | None = None

    def __call__(self, report: bytes, certificates: bytes, binding: bytes) -> None:
        source: bytes | Path | None = certificates or None
        if source is not None and self.certificate_dir is not None:
            try:
                parse_certificate_table(certificates)
            except SnpVerificationError:
                source = self.certificate_dir  # the cache has what the table lacks
        if source is None:
            source = self.certificate_dir
        if source is None:
            raise AttestationError("the EVM's SEV-SNP evidence carries no certificates and no "
                                   "certificate directory is given (--snp-certs DIR): its "
                                   "report cannot be verified to AMD's root")
        try:
            verify_snp_evidence(report, source, binding, self.policy)
        except SnpVerificationError as exc:
            raise AttestationError(f"the EVM's SEV-SNP report does not verify: "
                                   f"{one_line(exc, 240)}") from None


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
                policy.snp_verifier(report, evidence.certificates, key_binding(public))
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
