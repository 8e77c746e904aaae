"""PCK certificates: the chain that certifies a platform's quoting key, as
Intel's "PCK Certificate and CRL Profile" specifies it, issued by a vsgx
root CA instead of Intel's.

    root CA (self-signed, CA, pathlen 1) → platform CA (CA, pathlen 0)
        → PCK certificate (end entity, the PCK key)
    root CA → TCB signing certificate (signs TCB info and QE identity)

All keys are ECDSA P-256, all signatures ECDSA with SHA-256, as Intel's.
The PCK leaf carries the SGX Extensions (OID 1.2.840.113741.1.13.1), a DER
SEQUENCE of (OID, value) pairs:

    .1  PPID          OCTET STRING (16)
    .2  TCB           SEQUENCE of (.2.1 .. .2.16 SGX TCB component SVNs, INTEGER;
                                   .2.17 PCESVN, INTEGER; .2.18 CPUSVN, OCTET STRING (16))
    .3  PCE-ID        OCTET STRING (2)
    .4  FMSPC         OCTET STRING (6)
    .5  SGX Type      ENUMERATED (0 standard, 1 scalable, 2 scalable with integrity)
    .6  PlatformInstanceID  OCTET STRING (16)        (platform CA certificates only)
    .7  Configuration SEQUENCE of (.7.1 dynamicPlatform, .7.2 cachedKeys,
                                   .7.3 SMTEnabled: BOOLEAN)  (platform CA only)

Intel's certificates also name CRL distribution points; ours do not (there
is no server to fetch from): CRLs travel as collateral.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vsgx.errors import VsgxError

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSIONS_OID + ".1"
_TCB = SGX_EXTENSIONS_OID + ".2"
_PCEID = SGX_EXTENSIONS_OID + ".3"
_FMSPC = SGX_EXTENSIONS_OID + ".4"
_SGX_TYPE = SGX_EXTENSIONS_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSIONS_OID + ".6"
_CONFIGURATION = SGX_EXTENSIONS_OID + ".7"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"

SGX_TYPE_STANDARD, SGX_TYPE_SCALABLE, SGX_TYPE_SCALABLE_WITH_INTEGRITY = 0, 1, 2

ORGANIZATION = "vsgx"
ROOT_CA_NAME = "vsgx SGX Root CA"
PLATFORM_CA_NAME = "vsgx SGX PCK Platform CA"
PCK_NAME = "vsgx SGX PCK Certificate"
TCB_SIGNING_NAME = "vsgx SGX TCB Signing"


class PckError(VsgxError):
    """A PCK certificate, chain or SGX extension is malformed."""


# -- a small DER writer and reader (X.690), for the SGX Extensions ------------
_BOOLEAN, _INTEGER, _OCTET_STRING, _OID, _ENUMERATED, _SEQUENCE = 0x01, 0x02, 0x04, 0x06, \
    0x0A, 0x30


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(_OID, bytes(body))


def _unsigned(tag: int, value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are encoded here")
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_integer(value: int) -> bytes:
    return _unsigned(_INTEGER, value)


def der_enumerated(value: int) -> bytes:
    return _unsigned(_ENUMERATED, value)


def der_octet_string(value: bytes) -> bytes:
    return _tlv(_OCTET_STRING, value)


def der_boolean(value: bool) -> bytes:
    return _tlv(_BOOLEAN, b"\xff" if value else b"\x00")


def der_sequence(*items: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(items))


def _pair(oid: str, value: bytes) -> bytes:
    return der_sequence(der_oid(oid), value)


def _read(data: bytes, at: int) -> tuple[int, bytes, int]:
    """One DER TLV at ``at``: (tag, content, end). Definite, minimal lengths only."""
    if at + 2 > len(data):
        raise PckError("SGX extension: truncated DER")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise PckError("SGX extension: bad DER length")
        length = int.from_bytes(data[at:at + count], "big")
        if length < 0x80 or data[at] == 0:
            raise PckError("SGX extension: DER length is not minimal")
        at += count
    if at + length > len(data):
        raise PckError("SGX extension: DER value runs past its container")
    return tag, data[at:at + length], at + length


def _items(content: bytes) -> list[tuple[int, bytes]]:
    items, at = [], 0
    while at < len(content):
        tag, value, at = _read(content, at)
        items.append((tag, value))
    return items


def _pairs(content: bytes, what: str) -> dict[bytes, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE {OID, value}: encoded OID → (tag, content)."""
    result: dict[bytes, tuple[int, bytes]] = {}
    for tag, item in _items(content):
        parts = _items(item) if tag == _SEQUENCE else []
        if len(parts) != 2 or parts[0][0] != _OID:
            raise PckError(f"SGX extension: {what} holds something other than (OID, value)")
        key = _tlv(_OID, parts[0][1])
        if key in result:
            raise PckError(f"SGX extension: {what} repeats an OID")
        result[key] = parts[1]
    return result


def _take(pairs: dict[bytes, tuple[int, bytes]], oid: str, tag: int, what: str,
          size: int | None = None) -> bytes:
    entry = pairs.pop(der_oid(oid), None)
    if entry is None:
        raise PckError(f"SGX extension: {what} is missing")
    if entry[0] != tag or (size is not None and len(entry[1]) != size):
        raise PckError(f"SGX extension: {what} has the wrong type or size")
    return entry[1]


def _uint(content: bytes, what: str, limit: int) -> int:
    if not content or (content[0] & 0x80) or (len(content) > 1 and content[0] == 0
                                              and not content[1] & 0x80):
        raise PckError(f"SGX extension: {what} is not a minimal non-negative integer")
    value = int.from_bytes(content, "big")
    if value > limit:
        raise PckError(f"SGX extension: {what} {value} is out of range")
    return value


def _bool(content: bytes, what: str) -> bool:
    if content not in (b"\x00", b"\xff"):
        raise PckError(f"SGX extension: {what} is not a DER BOOLEAN")
    return content == b"\xff"


@dataclass(frozen=True)
class PlatformConfiguration:
    dynamic_platform: bool = False
    cached_keys: bool = False
    smt_enabled: bool = False


@dataclass(frozen=True)
class SgxExtensions:
    """The SGX Extensions of a PCK certificate."""

    ppid: bytes
    tcb_components: bytes  # SGX TCB component SVNs 01..16 (one byte each)
    pcesvn: int
    cpusvn: bytes
    pceid: bytes
    fmspc: bytes
    sgx_type: int = SGX_TYPE_STANDARD
    platform_instance_id: bytes | None = None
    configuration: PlatformConfiguration | None = None

    def __post_init__(self) -> None:
        sizes = {"ppid": (self.ppid, 16), "tcb_components": (self.tcb_components, 16),
                 "cpusvn": (self.cpusvn, 16), "pceid": (self.pceid, 2),
                 "fmspc": (self.fmspc, 6)}
        for name, (value, size) in sizes.items():
            if len(value) != size:
                raise PckError(f"SGX extension: {name} must be {size} bytes")
        if self.platform_instance_id is not None and len(self.platform_instance_id) != 16:
            raise PckError("SGX extension: PlatformInstanceID must be 16 bytes")
        if not 0 <= self.pcesvn <= 0xFFFF or self.sgx_type not in (0, 1, 2):
            raise PckError("SGX extension: PCESVN or SGX Type out of range")

    def to_der(self) -> bytes:
        tcb = [_pair(f"{_TCB}.{i + 1}", der_integer(svn))
               for i, svn in enumerate(self.tcb_components)]
        tcb.append(_pair(_PCESVN, der_integer(self.pcesvn)))
        tcb.append(_pair(_CPUSVN, der_octet_string(self.cpusvn)))
        items = [_pair(_PPID, der_octet_string(self.ppid)), _pair(_TCB, der_sequence(*tcb)),
                 _pair(_PCEID, der_octet_string(self.pceid)),
                 _pair(_FMSPC, der_octet_string(self.fmspc)),
                 _pair(_SGX_TYPE, der_enumerated(self.sgx_type))]
        if self.platform_instance_id is not None:
            items.append(_pair(_PLATFORM_INSTANCE_ID,
                               der_octet_string(self.platform_instance_id)))
        if self.configuration is not None:
            c = self.configuration
            items.append(_pair(_CONFIGURATION, der_sequence(
                _pair(f"{_CONFIGURATION}.1", der_boolean(c.dynamic_platform)),
                _pair(f"{_CONFIGURATION}.2", der_boolean(c.cached_keys)),
                _pair(f"{_CONFIGURATION}.3", der_boolean(c.smt_enabled)))))
        return der_sequence(*items)

    @classmethod
    def from_der(cls, data: bytes) -> SgxExtensions:
        tag, content, end = _read(data, 0)
        if tag != _SEQUENCE or end != len(data):
            raise PckError("SGX extension: not one DER SEQUENCE")
        top = _pairs(content, "the extension")
        ppid = _take(top, _PPID, _OCTET_STRING, "PPID", 16)
        tcb = _pairs(_take(top, _TCB, _SEQUENCE, "TCB"), "TCB")
        components = bytes(_uint(_take(tcb, f"{_TCB}.{i}", _INTEGER, f"TCB component {i}"),
                                 f"TCB component {i}", 0xFF) for i in range(1, 17))
        pcesvn = _uint(_take(tcb, _PCESVN, _INTEGER, "PCESVN"), "PCESVN", 0xFFFF)
        cpusvn = _take(tcb, _CPUSVN, _OCTET_STRING, "CPUSVN", 16)
        if tcb:
            raise PckError("SGX extension: TCB holds an unknown OID")
        pceid = _take(top, _PCEID, _OCTET_STRING, "PCE-ID", 2)
        fmspc = _take(top, _FMSPC, _OCTET_STRING, "FMSPC", 6)
        sgx_type = _uint(_take(top, _SGX_TYPE, _ENUMERATED, "SGX Type"), "SGX Type", 2)
        instance = None
        if der_oid(_PLATFORM_INSTANCE_ID) in top:
            instance = _take(top, _PLATFORM_INSTANCE_ID, _OCTET_STRING, "PlatformInstanceID",
                             16)
        configuration = None
        if der_oid(_CONFIGURATION) in top:
            conf = _pairs(_take(top, _CONFIGURATION, _SEQUENCE, "Configuration"),
                          "Configuration")
            flags = [_bool(_take(conf, f"{_CONFIGURATION}.{i}", _BOOLEAN, name), name)
                     for i, name in ((1, "dynamicPlatform"), (2, "cachedKeys"),
                                     (3, "SMTEnabled"))]
            configuration = PlatformConfiguration(*flags)
        if top:
            raise PckError("SGX extension: unknown OIDs in the extension")
        return cls(ppid, components, pcesvn, cpusvn, pceid, fmspc, sgx_type, instance,
                   configuration)

    @classmethod
    def of_certificate(cls, certificate: x509.Certificate) -> SgxExtensions:
        try:
            ext = certificate.extensions.get_extension_for_oid(
                x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
        except x509.ExtensionNotFound:
            raise PckError("the PCK certificate has no SGX Extensions") from None
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            raise PckError("the PCK certificate's SGX Extensions are not an opaque extension")
        return cls.from_der(ext.value.value)


# -- certificates ---------------------------------------------------------------------
@dataclass(frozen=True)
class Issuer:
    """A CA certificate with its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.UTC)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             issuer_key: ec.EllipticCurvePublicKey, now: datetime.datetime, days: int
             ) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),
                           critical=False))


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def _signing_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=True,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                         decipher_only=False)


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) \
            or not isinstance(key.curve, ec.SECP256R1):
        raise PckError(f"{what} must be an ECDSA P-256 key")


def make_root_ca(key: ec.EllipticCurvePrivateKey, *, common_name: str = ROOT_CA_NAME,
                 now: datetime.datetime | None = None, days: int = 25 * 365) -> Issuer:
    """A self-signed root CA (Intel's: CA, pathlen 1, keyCertSign + cRLSign)."""
    _check_key(key, "the root CA key")
    subject = name(common_name)
    certificate = (_builder(subject, subject, key.public_key(), key.public_key(), _now(now),
                            days)
                   .add_extension(_ca_usage(), critical=True)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                   .sign(key, hashes.SHA256()))
    return Issuer(certificate, key)


def make_intermediate_ca(issuer: Issuer, key: ec.EllipticCurvePrivateKey, *,
                         common_name: str = PLATFORM_CA_NAME,
                         now: datetime.datetime | None = None, days: int = 15 * 365) -> Issuer:
    """The PCK platform CA under the root (CA, pathlen 0)."""
    _check_key(key, "the platform CA key")
    certificate = (_builder(name(common_name), issuer.certificate.subject, key.public_key(),
                            issuer.key.public_key(), _now(now), days)
                   .add_extension(_ca_usage(), critical=True)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(issuer.key, hashes.SHA256()))
    return Issuer(certificate, key)


def make_pck_certificate(issuer: Issuer, public_key: ec.EllipticCurvePublicKey,
                         extensions: SgxExtensions, *, now: datetime.datetime | None = None,
                         days: int = 7 * 365) -> x509.Certificate:
    """A PCK leaf: digitalSignature + nonRepudiation, not a CA, SGX Extensions."""
    _check_key(public_key, "the PCK key")
    sgx = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSIONS_OID),
                                     extensions.to_der())
    return (_builder(name(PCK_NAME), issuer.certificate.subject, public_key,
                     issuer.key.public_key(), _now(now), days)
            .add_extension(_signing_usage(), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(sgx, critical=False)
            .sign(issuer.key, hashes.SHA256()))


def make_signing_certificate(issuer: Issuer, public_key: ec.EllipticCurvePublicKey, *,
                             common_name: str = TCB_SIGNING_NAME,
                             now: datetime.datetime | None = None, days: int = 7 * 365
                             ) -> x509.Certificate:
    """The TCB signing certificate (signs TCB info and QE identity)."""
    _check_key(public_key, "the TCB signing key")
    return (_builder(name(common_name), issuer.certificate.subject, public_key,
                     issuer.key.public_key(), _now(now), days)
            .add_extension(_signing_usage(), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer.key, hashes.SHA256()))


def make_crl(issuer: Issuer, revoked: Iterable[int] = (), *,
             now: datetime.datetime | None = None, days: int = 30, number: int = 1) -> bytes:
    """A DER CRL of ``issuer`` (CRL number and AKI, as Intel's CRLs)."""
    now = _now(now)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.certificate.subject)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer.key.public_key()), critical=False))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def chain_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def load_pem_chain(data: bytes, what: str = "certificate chain", *, canonical: bool = False
                   ) -> list[x509.Certificate]:
    """PEM certificates and nothing else. ``canonical``: the bytes must be
    exactly the certificates' standard PEM (64-character lines, LF),
    optionally followed by NULs (Intel's quote library NUL-terminates the
    chain), so that no byte can change without changing a certificate."""
    certificates = []
    text = data.rstrip(b"\0")
    rest = text if canonical else text.strip()
    while rest:
        if not rest.startswith(_PEM_BEGIN):
            raise PckError(f"{what}: something other than a PEM certificate")
        end = rest.find(_PEM_END)
        if end < 0:
            raise PckError(f"{what}: a PEM certificate is not terminated")
        end += len(_PEM_END)
        try:
            certificate = x509.load_pem_x509_certificate(rest[:end])
        except ValueError as exc:
            raise PckError(f"{what}: a certificate does not parse ({exc})") from None
        certificates.append(certificate)
        if canonical:
            pem = certificate.public_bytes(serialization.Encoding.PEM)
            if not rest.startswith(pem):
                raise PckError(f"{what}: a certificate is not in canonical PEM form")
            rest = rest[len(pem):]
        else:
            rest = rest[end:].strip()
    if not certificates:
        raise PckError(f"{what}: no certificates")
    return certificates


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """One certificate, PEM or DER."""
    if data.lstrip().startswith(b"-----"):
        chain = load_pem_chain(data, what)
        if len(chain) != 1:
            raise PckError(f"{what}: expected one certificate, found {len(chain)}")
        return chain[0]
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PckError(f"{what}: not a PEM or DER certificate ({exc})") from None


def public_key_raw(key: ec.EllipticCurvePublicKey) -> bytes:
    """x || y, 32 bytes each, big-endian (sgx_quote_3.h attest_pub_key)."""
    _check_key(key, "the key")
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)[1:]


def public_key_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey:
    if len(raw) != 64:
        raise PckError("an ECDSA P-256 public key is 64 bytes (x || y)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise PckError("the attestation key is not a point on P-256") from None
