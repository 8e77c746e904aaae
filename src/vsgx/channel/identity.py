"""Who is at each end of a channel: TLS keys, their certificates and their
fingerprints (SHA-256 of the DER SubjectPublicKeyInfo, as hex).

The EVM's key carries its evidence (see ``evidence``) and persists in its
data directory so that an AVM can pin it. The AVM's key identifies it to
EVMs on TCP and vsock (mutual TLS); it is made on first use under the
user's data directory. Keys are written 0600 from creation.

Python's ``ssl`` verifies a client certificate against a CA store and has no
hook to accept a self-signed one whose fingerprint is on a list. So every
AVM certificate is issued by one *public* issuer whose key is derived from
a constant: its signature proves nothing and is not meant to. What admits
a client is TLS 1.3's CertificateVerify (proof that the client holds the
leaf's private key) together with the EVM's list of leaf fingerprints.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vsgx.channel.evidence import EVIDENCE_OID, collect_evidence
from vsgx.errors import VsgxError

CLIENT_KEY_FILE = "avm-client-key.pem"
SERVER_KEY_FILE = "evm-tls-key.pem"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_FOREVER = (datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))  # keys, not dates, identify
_ISSUER_NAME = x509.Name([x509.NameAttribute(
    NameOID.COMMON_NAME, "vsgx public client issuer (its key is public: not an authority)")])


def user_data_dir() -> Path:
    """The user's vsgx data directory: $VSGX_DATA_DIR, else
    $XDG_DATA_HOME/vsgx, else ~/.local/share/vsgx (the EVM's rule too)."""
    explicit = os.environ.get("VSGX_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vsgx"


def spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(spki_der: bytes) -> str:
    return hashlib.sha256(spki_der).hexdigest()


def certificate_fingerprint(certificate_der: bytes) -> str:
    """The fingerprint of a certificate's key; VsgxError if it has none we read."""
    try:
        return fingerprint(spki(x509.load_der_x509_certificate(certificate_der).public_key()))
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise VsgxError(f"unreadable certificate ({_one_line(exc)})") from None


def parse_fingerprint(text: str) -> str:
    """A key fingerprint as the user may write it: 64 hex digits, with or
    without colons or a ``sha256:`` prefix."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:").replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise VsgxError(f"{text!r} is not a SHA-256 key fingerprint (64 hex digits)")
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a key 0600 from creation; never replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic: the first writer wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def load_or_create_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 key at ``path``, made on first use."""
    try:
        if not path.exists():
            _write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
        if path.stat().st_mode & 0o077:
            raise VsgxError(f"the {what} {path} is readable by others; chmod 600 it")
        data = path.read_bytes()
    except OSError as exc:
        raise VsgxError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise VsgxError(f"the {what} {path} is not a PEM private key ({_one_line(exc)})"
                        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise VsgxError(f"the {what} {path} is not an EC key")
    return key


def _load_chain(context: ssl.SSLContext, certificate: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> None:
    """ssl takes a certificate and key only from files: a private
    directory, gone when loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context.load_cert_chain(cert_path, key_path)


def _issuer_key() -> ec.EllipticCurvePrivateKey:
    seed = hashlib.sha256(b"vsgx public client issuer, version 1").digest()
    return ec.derive_private_key(int.from_bytes(seed, "big") % _P256_ORDER, ec.SECP256R1())


def issuer_certificate_der() -> bytes:
    """The public issuer's certificate, for the EVM's verify store."""
    key = _issuer_key()
    certificate = (x509.CertificateBuilder().subject_name(_ISSUER_NAME).issuer_name(_ISSUER_NAME)
                   .public_key(key.public_key()).serial_number(1)
                   .not_valid_before(_FOREVER[0]).not_valid_after(_FOREVER[1])
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, False,
                                                False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.DER)


class ClientIdentity:
    """The AVM's key, presented to EVMs on TCP and vsock."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, path: Path | None = None):
        self.key = key
        self.path = path
        self.fingerprint = fingerprint(spki(key.public_key()))

    @classmethod
    def load(cls, path: Path | None = None) -> ClientIdentity:
        """The key at ``path`` (default: the user's data directory), made on
        first use."""
        path = path or user_data_dir() / CLIENT_KEY_FILE
        return cls(load_or_create_key(path, "AVM client key"), path)

    def certificate(self) -> x509.Certificate:
        issuer = _issuer_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsgx AVM"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, self.fingerprint)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(_ISSUER_NAME)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_FOREVER[0]).not_valid_after(_FOREVER[1])
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer.public_key()), critical=False)
                .sign(issuer, hashes.SHA256()))

    def present(self, context: ssl.SSLContext) -> None:
        _load_chain(context, self.certificate(), self.key)


class ServerIdentity:
    """The EVM's TLS key and certificate, with evidence binding the key. The
    key persists at ``key_path`` (made on first use) so AVMs can pin it;
    without a path it lives as long as this object."""

    def __init__(self, evidence_kind: str = "none", key_path: Path | None = None):
        self.key = (load_or_create_key(key_path, "EVM TLS key") if key_path is not None
                    else ec.generate_private_key(ec.SECP256R1()))
        public = spki(self.key.public_key())
        self.fingerprint = fingerprint(public)
        self.evidence = collect_evidence(evidence_kind, public)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsgx enclave VM")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(self.key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=30))
                       .add_extension(x509.UnrecognizedExtension(EVIDENCE_OID,
                                                                 self.evidence.encode()),
                                      critical=False)
                       .sign(self.key, hashes.SHA256()))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        _load_chain(self.context, certificate, self.key)
        # Ask every client for its certificate; whether it is admitted is
        # decided after the handshake, by fingerprint (see the module text).
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.context.load_verify_locations(cadata=issuer_certificate_der())
