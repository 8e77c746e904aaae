"""SEV-SNP attestation reports verified up to AMD's root (AMD SEV-SNP ABI
specification 56860, "ATTESTATION_REPORT Structure"; AMD VCEK certificate
and KDS interface specification 57230).

* The report is 1184 bytes; its signature covers bytes 0x000..0x29F:
  ECDSA P-384 with SHA-384 (SIGNATURE_ALGO 1), R and S as 72-byte
  little-endian integers at 0x2A0 and 0x2E8, by the VCEK — a key the chip
  derives for its REPORTED_TCB.
* The VCEK certificate is signed by the ASK, the ASK by the ARK, the ARK by
  itself; all with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48. The VCEK
  certificate names the chip (hwID) and the TCB it was derived for; both
  must be the report's.
* Certificates come from the extended report's certificate table (GHCB
  specification: 16-byte GUID, u32 offset, u32 length per entry, a zero
  entry last; offsets from the table's start) or from a local cache
  directory (ark.pem, ask.pem, vcek.pem or .der, or AMD KDS's cert_chain.pem
  holding ASK and ARK). Nothing is fetched at run time. A missing ARK/ASK is
  taken from the pinned AMD certificates (``vsgx.crypto.amd_roots``) for the
  product named in the VCEK's issuer.
* Trust: the ARK must be one of ``SnpPolicy.trusted_arks`` (default: AMD's
  pinned Milan, Genoa and Turin ARKs), compared by public key.

``verify_snp_evidence`` is what an evidence policy calls; it raises
``SnpVerificationError`` with a one-line reason.
"""

from __future__ import annotations

import datetime
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vsgx.arch.layout import Structure, raw, structure, u8, u32, u64
from vsgx.crypto import amd_roots
from vsgx.errors import VsgxError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG = 1 << 19
SIGNING_KEY_VCEK = 0
P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                 "581a0db248b0a77aecec196accc52973", 16)
# Certificate table GUIDs (GHCB specification, SNP extended guest request).
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
# VCEK certificate extensions (AMD 57230).
_AMD = "1.3.6.1.4.1.3704.1"
OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL = (f"{_AMD}.3.1", f"{_AMD}.3.2",
                                                      f"{_AMD}.3.3", f"{_AMD}.3.8")
OID_FMC_SPL = f"{_AMD}.3.9"
OID_HWID = f"{_AMD}.4"
TURIN_FAMILY = 0x1A
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_TABLE_ENTRY = struct.Struct("<16sII")


class SnpVerificationError(VsgxError):
    """SEV-SNP evidence is malformed, does not verify, or fails the policy."""


@structure(REPORT_SIZE)
class SnpReport(Structure):
    """ATTESTATION_REPORT (versions 2, 3 and 5; later fields are zero in
    earlier versions)."""

    version: int = u32(0x00)
    guest_svn: int = u32(0x04)
    policy: int = u64(0x08)
    family_id: bytes = raw(0x10, 16)
    image_id: bytes = raw(0x20, 16)
    vmpl: int = u32(0x30)
    signature_algo: int = u32(0x34)
    current_tcb: int = u64(0x38)
    platform_info: int = u64(0x40)
    key_info: int = u32(0x48)  # AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY 4:2
    report_data: bytes = raw(0x50, 64)
    measurement: bytes = raw(0x90, 48)
    host_data: bytes = raw(0xC0, 32)
    id_key_digest: bytes = raw(0xE0, 48)
    author_key_digest: bytes = raw(0x110, 48)
    report_id: bytes = raw(0x140, 32)
    report_id_ma: bytes = raw(0x160, 32)
    reported_tcb: int = u64(0x180)
    cpuid_fam_id: int = u8(0x188)
    cpuid_mod_id: int = u8(0x189)
    cpuid_step: int = u8(0x18A)
    chip_id: bytes = raw(0x1A0, 64)
    committed_tcb: int = u64(0x1E0)
    current_build: int = u8(0x1E8)
    current_minor: int = u8(0x1E9)
    current_major: int = u8(0x1EA)
    committed_build: int = u8(0x1EC)
    committed_minor: int = u8(0x1ED)
    committed_major: int = u8(0x1EE)
    launch_tcb: int = u64(0x1F0)
    launch_mit_vector: int = u64(0x1F8)
    current_mit_vector: int = u64(0x200)
    signature_r: bytes = raw(0x2A0, 72)
    signature_s: bytes = raw(0x2E8, 72)

    @property
    def turin(self) -> bool:
        return self.version >= 3 and self.cpuid_fam_id == TURIN_FAMILY

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0x7

    @property
    def chip_id_masked(self) -> bool:
        return bool(self.key_info & 0x2)


@dataclass(frozen=True, order=True)
class TcbVersion:
    """TCB_VERSION's security patch levels. Milan and Genoa: bootloader in
    byte 0, TEE 1, SNP 6, microcode 7. Turin: FMC 0, bootloader 1, TEE 2,
    SNP 3, microcode 7."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0

    @classmethod
    def decode(cls, value: int, turin: bool = False) -> TcbVersion:
        b = value.to_bytes(8, "little")
        if turin:
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def encode(self, turin: bool = False) -> int:
        if turin:
            b = bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        else:
            b = bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
        return int.from_bytes(b, "little")

    def at_least(self, minimum: TcbVersion) -> bool:
        return all(getattr(self, n) >= getattr(minimum, n)
                   for n in ("bootloader", "tee", "snp", "microcode", "fmc"))

    def __str__(self) -> str:
        return (f"bootloader {self.bootloader}, TEE {self.tee}, SNP {self.snp}, microcode "
                f"{self.microcode}" + (f", FMC {self.fmc}" if self.fmc else ""))


def parse_report(data: bytes) -> SnpReport:
    if len(data) != REPORT_SIZE:
        raise SnpVerificationError(f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, "
                                   f"not {len(data)}")
    return SnpReport.unpack(data, strict=False)


# -- certificates ---------------------------------------------------------------------
@dataclass(frozen=True)
class SnpCertificates:
    vcek: x509.Certificate
    ask: x509.Certificate | None = None
    ark: x509.Certificate | None = None


def _load(data: bytes, what: str) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SnpVerificationError(f"the {what} certificate does not parse ({exc})") from None


def parse_certificate_table(table: bytes) -> SnpCertificates:
    """The certificates of an extended report (SNP_GET_EXT_REPORT)."""
    found: dict[uuid.UUID, bytes] = {}
    at = 0
    while True:
        if at + _TABLE_ENTRY.size > len(table):
            raise SnpVerificationError("the certificate table has no terminating entry")
        guid, offset, length = _TABLE_ENTRY.unpack_from(table, at)
        at += _TABLE_ENTRY.size
        if guid == bytes(16) and offset == 0 and length == 0:
            break
        if offset < at or offset + length > len(table):
            raise SnpVerificationError("a certificate table entry points outside the table")
        key = uuid.UUID(bytes=guid)
        if key in found:
            raise SnpVerificationError(f"the certificate table names {key} twice")
        found[key] = table[offset:offset + length]
    if VLEK_GUID in found and VCEK_GUID not in found:
        raise SnpVerificationError("the certificate table has a VLEK, not a VCEK (VLEK-signed "
                                   "reports are not supported)")
    if VCEK_GUID not in found:
        raise SnpVerificationError("the certificate table has no VCEK certificate")
    return SnpCertificates(
        vcek=_load(found[VCEK_GUID], "VCEK"),
        ask=_load(found[ASK_GUID], "ASK") if ASK_GUID in found else None,
        ark=_load(found[ARK_GUID], "ARK") if ARK_GUID in found else None)


def make_certificate_table(certificates: SnpCertificates) -> bytes:
    """The table format, for tests and for hosts that serve certificates."""
    from cryptography.hazmat.primitives import serialization

    entries = [(VCEK_GUID, certificates.vcek), (ASK_GUID, certificates.ask),
               (ARK_GUID, certificates.ark)]
    present = [(g, c.public_bytes(serialization.Encoding.DER)) for g, c in entries
               if c is not None]
    at = _TABLE_ENTRY.size * (len(present) + 1)
    head, body = b"", b""
    for guid, data in present:
        head += _TABLE_ENTRY.pack(guid.bytes, at + len(body), len(data))
        body += data
    return head + bytes(_TABLE_ENTRY.size) + body


def load_certificate_directory(directory: str | Path) -> SnpCertificates:
    """A local cache: vcek.pem/.der (required), ask.pem, ark.pem (or
    cert_chain.pem with ASK then ARK, as AMD KDS serves them)."""
    base = Path(directory)

    def read(*names: str) -> bytes | None:
        for name in names:
            path = base / name
            if path.is_file():
                try:
                    return path.read_bytes()
                except OSError as exc:
                    raise SnpVerificationError(f"cannot read {path}: {exc.strerror}") from None
        return None

    vcek = read("vcek.pem", "vcek.der", "vcek.crt")
    if vcek is None:
        raise SnpVerificationError(f"no VCEK certificate (vcek.pem or vcek.der) in {base}")
    ask, ark = read("ask.pem", "ask.der"), read("ark.pem", "ark.der")
    chain = read("cert_chain.pem")
    if chain is not None and (ask is None or ark is None):
        try:
            pair = x509.load_pem_x509_certificates(chain)
        except ValueError as exc:
            raise SnpVerificationError(f"{base / 'cert_chain.pem'} does not parse ({exc})"
                                       ) from None
        if len(pair) != 2:
            raise SnpVerificationError("cert_chain.pem must hold the ASK and the ARK")
        return SnpCertificates(_load(vcek, "VCEK"), pair[0], pair[1])
    return SnpCertificates(_load(vcek, "VCEK"), _load(ask, "ASK") if ask else None,
                           _load(ark, "ARK") if ark else None)


def amd_arks() -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificate(ark.encode())
                 for ark, _ in amd_roots.PRODUCTS.values())


def _pinned_chain(vcek: x509.Certificate) -> tuple[x509.Certificate, x509.Certificate]:
    issuer = vcek.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    product = str(issuer[0].value).removeprefix("SEV-") if issuer else ""
    pair = amd_roots.PRODUCTS.get(product)
    if pair is None:
        raise SnpVerificationError(f"no ASK/ARK given and none pinned for the VCEK's issuer "
                                   f"{vcek.issuer.rfc4514_string()}")
    ark, ask = (x509.load_pem_x509_certificate(p.encode()) for p in pair)
    return ask, ark


# -- verification ------------------------------------------------------------------------
@dataclass(frozen=True)
class SnpPolicy:
    """What an SEV-SNP guest must be."""

    measurements: frozenset[bytes] = frozenset()  # allowed launch digests; empty: any
    minimum_tcb: TcbVersion | None = None  # REPORTED_TCB must be at least this
    allow_debug: bool = False
    minimum_guest_svn: int = 0
    vmpl: int | None = None  # the VMPL the report must come from (None: any)
    trusted_arks: tuple[x509.Certificate, ...] = field(default_factory=amd_arks)


def verify_pss_signature(certificate: x509.Certificate, issuer: x509.Certificate, what: str
                         ) -> None:
    """Check that ``issuer`` signed ``certificate`` with RSASSA-PSS (as AMD
    signs its ARK, ASK and VCEK certificates); SnpVerificationError, naming
    ``what``, if not."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnpVerificationError(f"the {what}'s issuer key is not RSA")
    if certificate.issuer != issuer.subject:
        raise SnpVerificationError(f"the {what} is not issued by {issuer.subject.rfc4514_string()}")
    if certificate.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS \
            or not isinstance(certificate.signature_hash_algorithm, hashes.SHA384):
        raise SnpVerificationError(f"the {what} is not signed with RSASSA-PSS SHA-384")
    try:
        key.verify(certificate.signature, certificate.tbs_certificate_bytes, _PSS,
                   hashes.SHA384())
    except InvalidSignature:
        raise SnpVerificationError(f"the {what}'s signature does not verify") from None


def _valid_at(certificate: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SnpVerificationError(f"the {what} certificate is not valid now")


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _extension(certificate: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    # cryptography parses none of AMD's extensions: each is an UnrecognizedExtension
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _der_small_uint(value: bytes, what: str) -> int:
    """A DER INTEGER 0..255 (the VCEK's SPL extensions)."""
    if len(value) == 3 and value[:2] == b"\x02\x01" and value[2] < 0x80:
        return value[2]
    if len(value) == 4 and value[:3] == b"\x02\x02\x00" and value[3] >= 0x80:
        return value[3]
    raise SnpVerificationError(f"the VCEK's {what} extension is not a DER INTEGER 0..255")


def _check_vcek_binding(vcek: x509.Certificate, report: SnpReport) -> None:
    """The VCEK is the key of this chip at this REPORTED_TCB (AMD 57230)."""
    tcb = TcbVersion.decode(report.reported_tcb, report.turin)
    expected = {OID_BL_SPL: ("blSPL", tcb.bootloader), OID_TEE_SPL: ("teeSPL", tcb.tee),
                OID_SNP_SPL: ("snpSPL", tcb.snp), OID_UCODE_SPL: ("ucodeSPL", tcb.microcode)}
    if report.turin:
        expected[OID_FMC_SPL] = ("fmcSPL", tcb.fmc)
    for oid, (what, level) in expected.items():
        value = _extension(vcek, oid)
        if value is None:
            raise SnpVerificationError(f"the VCEK certificate has no {what} extension")
        if _der_small_uint(value, what) != level:
            raise SnpVerificationError(f"the VCEK was issued for {what} "
                                       f"{_der_small_uint(value, what)}, the report's "
                                       f"REPORTED_TCB has {level}")
    if not report.chip_id_masked:
        hwid = _extension(vcek, OID_HWID)
        if hwid is not None and len(hwid) == 66 and hwid[:2] == b"\x04\x40":
            hwid = hwid[2:]  # tolerate an OCTET STRING wrapper
        if hwid is None or not hmac.compare_digest(hwid, report.chip_id):
            raise SnpVerificationError("the VCEK certificate is for another chip (hwID is not "
                                       "the report's CHIP_ID)")


def verify_chain(certificates: SnpCertificates, trusted_arks: Sequence[x509.Certificate],
                 now: datetime.datetime) -> None:
    """VCEK ← ASK ← ARK, the ARK one of ``trusted_arks``."""
    vcek = certificates.vcek
    ask, ark = certificates.ask, certificates.ark
    if ask is None or ark is None:
        pinned_ask, pinned_ark = _pinned_chain(vcek)
        ask, ark = ask or pinned_ask, ark or pinned_ark
    if not any(ark.public_key() == trusted.public_key() for trusted in trusted_arks):
        raise SnpVerificationError(f"the ARK ({ark.subject.rfc4514_string()}) is not a "
                                   "trusted AMD root key")
    verify_pss_signature(ark, ark, "ARK")
    verify_pss_signature(ask, ark, "ASK")
    verify_pss_signature(vcek, ask, "VCEK")
    if not _is_ca(ark) or not _is_ca(ask):
        raise SnpVerificationError("the ARK and the ASK must be CA certificates")
    for certificate, what in ((ark, "ARK"), (ask, "ASK"), (vcek, "VCEK")):
        _valid_at(certificate, now, what)
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ec.SECP384R1):
        raise SnpVerificationError("the VCEK is not an ECDSA P-384 key")


def verify_report_signature(report: bytes, vcek: x509.Certificate) -> SnpReport:
    parsed = parse_report(report)
    if parsed.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise SnpVerificationError(f"signature algorithm {parsed.signature_algo} is not "
                                   "ECDSA P-384 with SHA-384")
    if parsed.signing_key != SIGNING_KEY_VCEK:
        raise SnpVerificationError(f"the report is signed by key {parsed.signing_key} "
                                   "(only VCEK-signed reports are supported)")
    r = int.from_bytes(parsed.signature_r, "little")
    s = int.from_bytes(parsed.signature_s, "little")
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise SnpVerificationError("the report's signature is out of range")
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(encode_dss_signature(r, s), report[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SnpVerificationError("the report's signature does not verify with the VCEK"
                                   ) from None
    return parsed


def check_policy(report: SnpReport, policy: SnpPolicy) -> None:
    if report.policy & POLICY_DEBUG and not policy.allow_debug:
        raise SnpVerificationError("the guest policy allows debugging and the policy does not "
                                   "accept that")
    if policy.measurements and report.measurement not in policy.measurements:
        raise SnpVerificationError(f"launch measurement {report.measurement.hex()} is not "
                                   "allowed")
    if policy.minimum_tcb is not None:
        tcb = TcbVersion.decode(report.reported_tcb, report.turin)
        if not tcb.at_least(policy.minimum_tcb):
            raise SnpVerificationError(f"REPORTED_TCB ({tcb}) is below the minimum "
                                       f"({policy.minimum_tcb})")
    if report.guest_svn < policy.minimum_guest_svn:
        raise SnpVerificationError(f"guest SVN {report.guest_svn} is below the minimum "
                                   f"{policy.minimum_guest_svn}")
    if policy.vmpl is not None and report.vmpl != policy.vmpl:
        raise SnpVerificationError(f"the report comes from VMPL {report.vmpl}, not "
                                   f"{policy.vmpl}")


def verify_snp_evidence(report: bytes, certificates: SnpCertificates | bytes | str | Path,
                        expected_report_data: bytes, policy: SnpPolicy | None = None, *,
                        now: datetime.datetime | None = None) -> SnpReport:
    """Verify an SEV-SNP report to a trusted ARK and check ``policy``.

    ``certificates``: parsed certificates, an extended report's certificate
    table (bytes), or a cache directory. ``expected_report_data``: the 64
    bytes REPORT_DATA must hold (e.g. the hash of the TLS key it binds)."""
    policy = policy or SnpPolicy()
    now = now or datetime.datetime.now(datetime.UTC)
    if isinstance(certificates, bytes | bytearray):
        certificates = parse_certificate_table(bytes(certificates))
    elif isinstance(certificates, str | Path):
        certificates = load_certificate_directory(certificates)
    if len(expected_report_data) != 64:
        raise SnpVerificationError("the expected REPORT_DATA must be 64 bytes")
    try:
        verify_chain(certificates, policy.trusted_arks, now)
        parsed = verify_report_signature(bytes(report), certificates.vcek)
        _check_vcek_binding(certificates.vcek, parsed)
    except (ValueError, UnsupportedAlgorithm) as exc:  # what cryptography cannot parse
        raise SnpVerificationError(f"a certificate is malformed ({' '.join(str(exc).split())})"
                                   ) from None
    if not hmac.compare_digest(parsed.report_data, expected_report_data):
        raise SnpVerificationError("REPORT_DATA is not the expected binding")
    check_policy(parsed, policy)
    return parsed
