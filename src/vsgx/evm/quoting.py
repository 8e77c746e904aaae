"""The EVM's quoting enclave (QE) with Intel's DCAP semantics:
``target_info`` (sgx_qe_get_target_info), ``quote_size``
(sgx_qe_get_quote_size) and ``quote`` (sgx_qe_get_quote).

Design note — why an EVM-internal QE and not an enclave image run in the
EVM. On hardware the QE is an enclave because the CPU is the only party
that can derive report keys and the QE must not trust the OS. In vsgx the
EVM *is* the CPU: it holds the platform root secret and derives every key;
an enclave image in it could know nothing the EVM does not hand it, so its
MRENCLAVE would certify only that the EVM ran some code — the EVM is
trusted either way, and on an SEV-SNP host it is what the hardware measures.
A real image would also need ECDSA P-256 written by hand in enclave C (the
house rule is ``cryptography`` for every primitive). So the QE is part of
the EVM, and behaves exactly as an enclave would:

* its identity is fixed and documented (``vsgx.arch.quote.VSGX_QE_*``):
  the TARGETINFO it hands out names that MRENCLAVE, ATTRIBUTES, XFRM and
  MISCSELECT. Its MRSIGNER is the SHA-256 of a label, not of an RSA modulus:
  no enclave can be signed to have it (that takes a SHA-256 preimage), so
  no application enclave can pose as the QE;
* it checks an application REPORT with the key EGETKEY(REPORT_KEY) gives an
  enclave of that identity on this platform (``report_key``, the REPORT_KEY
  branch of ``enclu.egetkey``; tested against a real enclave's EGETKEY).
  A report made on another EVM (another root secret), made for another
  target, or altered in any bit fails the MAC and is refused;
* its quote is Intel's QE3's: header (version 3, ECDSA-256-with-P-256, QE
  SVN, PCE SVN, Intel's QE vendor ID, the QE_ID in user_data derived as
  QE3 derives it from its MRSIGNER seal key), the report body, and the
  signature data: ECDSA over header || body by the attestation key, the key,
  the QE's report body with REPORTDATA = SHA-256(key || auth data), that
  body's signature by the PCK key, 32 bytes of authentication data
  (0x00..0x1f, as QE3's), and certification data type 5 (the PEM chain
  PCK → platform CA → root CA, NUL-terminated as Intel's library writes it).

Keys. The attestation key (ECDSA P-256) is generated once and kept in
DIR/attestation-key.pem (0600 from creation), protected as the platform
root secret is (QE3 derives its key from its seal key and keeps the key's
certification in a sealed blob). The PCK key is not stored: like the PCE's, it is
derived from the platform (EGETKEY(PROVISION_KEY) for the PCE identity
below, expanded to a P-256 scalar), so it changes with the root secret and
the TCB. The CA material lives beside it: root-ca.pem and root-ca-key.pem
(made per installation, or placed there by the operator, or passed as
``root_ca``), platform-ca*.pem and tcb-signing*.pem (made under the root),
and pck.pem (re-issued whenever the PCK key, TCB or issuer changes). DIR is
the EVM's data directory's ``attestation`` folder.

SEV-SNP. On an SNP host the PCK chain is rooted in a vsgx CA, which proves
nothing about the hardware; so the EVM's SNP report binds the attestation
key too (REPORT_DATA = SHA-512("vsgx QE attestation key\\0" || x || y),
``snp_evidence``) and travels beside the quote: a verifier checks it with
``vsgx.crypto.quote.verify_quote_snp_binding`` up to AMD's ARK.

The QE's own REPORT for the application (``sgx_ql_qe_report_info_t``, so
that the application can check early that its quote came from this QE, as
QE3 offers): the QE EREPORTs to the application's TARGETINFO with
REPORTDATA = SHA-256(nonce || quote) || 32 zero bytes.

Where the QE's files live: ``quoting_enclave(vm)`` uses the VM's data
directory (``EnclaveVM.data_dir``), so an EVM started with ``--data-dir``
keeps its attestation key and PCK chain there, beside its root secret.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vsgx.arch.constants import Attribute, KeyName, KeyPolicy
from vsgx.arch.errors import SgxError
from vsgx.arch.keyrequest import Keyrequest
from vsgx.arch.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    ECDSA_SIG_DATA_FIXED_SIZE,
    INTEL_QE_VENDOR_ID,
    QE_AUTH_DATA_SIZE,
    QUOTE_VERSION,
    SIGNATURE_DATA_OFFSET,
    TEE_TYPE_SGX,
    VSGX_FMSPC,
    VSGX_PCE_ID,
    VSGX_PCE_ISVSVN,
    VSGX_QE_ATTRIBUTES,
    VSGX_QE_ISVPRODID,
    VSGX_QE_ISVSVN,
    VSGX_QE_MISCSELECT,
    VSGX_QE_MRENCLAVE,
    VSGX_QE_MRSIGNER,
    VSGX_QE_XFRM,
    QuoteHeader,
    QuoteStatus,
)
from vsgx.arch.report import (
    REPORT_BODY_SIZE,
    REPORT_SIZE,
    TARGETINFO_SIZE,
    Report,
    ReportBody,
    Targetinfo,
)
from vsgx.channel.evidence import Evidence, snp_evidence
from vsgx.crypto.cmac import aes_cmac, report_mac, verify_report_mac
from vsgx.crypto.collateral import Collateral, make_collateral
from vsgx.crypto.keys import PKCS1_PADDING, derive_key
from vsgx.crypto.pck import (
    PLATFORM_CA_NAME,
    TCB_SIGNING_NAME,
    Issuer,
    PckError,
    PlatformConfiguration,
    SgxExtensions,
    chain_pem,
    generate_key,
    make_intermediate_ca,
    make_pck_certificate,
    make_root_ca,
    make_signing_certificate,
    public_key_raw,
)
from vsgx.crypto.quote import (
    P256_ORDER,
    QuoteGenerationError,
    ecdsa_sign_raw,
    make_quote,
    qe_report_data,
    snp_report_data_for,
)
from vsgx.errors import StructureError, VsgxError
from vsgx.evm import key_derivation
from vsgx.evm.enclu import report_key_dependencies
from vsgx.evm.machine import Machine
from vsgx.evm.platform import data_dir

ATTESTATION_DIR = "attestation"
ATTESTATION_KEY_FILE = "attestation-key.pem"
ROOT_CA_FILE, ROOT_CA_KEY_FILE = "root-ca.pem", "root-ca-key.pem"
PLATFORM_CA_FILE, PLATFORM_CA_KEY_FILE = "platform-ca.pem", "platform-ca-key.pem"
TCB_SIGNING_FILE, TCB_SIGNING_KEY_FILE = "tcb-signing.pem", "tcb-signing-key.pem"
PCK_FILE = "pck.pem"
# The authentication data QE3 certifies with its key by default.
QE_AUTH_DATA = bytes(range(QE_AUTH_DATA_SIZE))
QE_REPORT_NONCE_SIZE = 16  # sgx_quote_nonce_t
# Re-issue a stored certificate this long before it expires.
_RENEW_BEFORE = datetime.timedelta(days=30)


class QuotingError(QuoteGenerationError):
    """The QE refuses a request; ``status`` is the quote3_error_t."""


@dataclass(frozen=True)
class EnclaveIdentity:
    """What EGETKEY and EREPORT take from an enclave's SECS."""

    mrenclave: bytes
    mrsigner: bytes
    attributes: int
    xfrm: int
    miscselect: int
    isvprodid: int
    isvsvn: int
    configid: bytes = bytes(64)
    configsvn: int = 0
    cet_attributes: int = 0
    isvextprodid: bytes = bytes(16)
    isvfamilyid: bytes = bytes(16)
    padding: bytes = PKCS1_PADDING  # what EINIT leaves in SECS.PADDING

    @classmethod
    def of_report(cls, report: Report | ReportBody) -> EnclaveIdentity:
        return cls(report.mrenclave, report.mrsigner, report.attributes, report.xfrm,
                   report.miscselect, report.isvprodid, report.isvsvn, report.configid,
                   report.configsvn, report.cet_attributes, report.isvextprodid,
                   report.isvfamilyid)

    def target_info(self) -> Targetinfo:
        return Targetinfo(measurement=self.mrenclave, attributes=self.attributes,
                          xfrm=self.xfrm, cet_attributes=self.cet_attributes,
                          configsvn=self.configsvn, miscselect=self.miscselect,
                          configid=self.configid)


QE_IDENTITY = EnclaveIdentity(VSGX_QE_MRENCLAVE, VSGX_QE_MRSIGNER, VSGX_QE_ATTRIBUTES,
                              VSGX_QE_XFRM, VSGX_QE_MISCSELECT, VSGX_QE_ISVPRODID,
                              VSGX_QE_ISVSVN)
# The PCE: the enclave whose provisioning key the PCK key is derived from.
PCE_IDENTITY = EnclaveIdentity(
    mrenclave=bytes(32), mrsigner=VSGX_QE_MRSIGNER, attributes=VSGX_QE_ATTRIBUTES,
    xfrm=VSGX_QE_XFRM, miscselect=0, isvprodid=VSGX_QE_ISVPRODID + 1, isvsvn=VSGX_PCE_ISVSVN)


# -- EGETKEY as an enclave of a given identity executes it ------------------------
# The same key-derivation table as the leaf (vsgx.evm.key_derivation), read
# for an identity instead of a live SECS: no second copy of the rules.
def _egetkey(machine: Machine, identity: EnclaveIdentity, request: Keyrequest) -> bytes:
    key = key_derivation.derive(machine, identity, request)
    if isinstance(key, SgxError):
        raise VsgxError(f"EGETKEY for the {request.keyname} key refused it: {key.name}")
    return key


def report_key(machine: Machine, identity: EnclaveIdentity, keyid: bytes) -> bytes:
    """EGETKEY(REPORT_KEY) with KEYREQUEST.KEYID = ``keyid``."""
    return _egetkey(machine, identity, Keyrequest(keyname=KeyName.REPORT_KEY, keyid=keyid))


def seal_key(machine: Machine, identity: EnclaveIdentity, request: Keyrequest) -> bytes:
    """EGETKEY(SEAL_KEY) without KSS policies (what QE3 asks for its QE_ID)."""
    if request.keypolicy & ~int(KeyPolicy.MRENCLAVE | KeyPolicy.MRSIGNER) or request.configsvn:
        raise VsgxError("this QE derives seal keys without KSS policies only")
    return _egetkey(machine, identity, request)


def provision_key(machine: Machine, identity: EnclaveIdentity, request: Keyrequest) -> bytes:
    """EGETKEY(PROVISION_KEY): bound to the platform's derivation key, the
    signer, the product and the SVNs, but not to the owner epoch."""
    if not identity.attributes & Attribute.PROVISIONKEY:
        raise VsgxError("only an enclave with PROVISIONKEY may derive the provisioning key")
    return _egetkey(machine, identity, request)


def qe_id(machine: Machine) -> bytes:
    """QE3's QE_ID: AES-CMAC, keyed by its MRSIGNER seal key at SVN 0, over
    0x00 || "QE_ID_DER" || 0x00000000 || 0x0080."""
    request = Keyrequest(keyname=KeyName.SEAL_KEY, keypolicy=KeyPolicy.MRSIGNER,
                         attributemask=0xFFFFFFFFFFFFFFFF & ~int(Attribute.MODE64BIT),
                         miscmask=0xFFFFFFFF)
    content = b"\x00" + b"QE_ID_DER" + bytes(4) + b"\x00\x80"
    return aes_cmac(seal_key(machine, QE_IDENTITY, request), content)


def _scalar(seed: bytes, label: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a 128-bit key: 320 bits, reduced as FIPS 186-4 B.4.1
    does with extra random bits (QE3 makes its key the same way)."""
    extra = HKDF(algorithm=hashes.SHA256(), length=40, salt=None, info=label).derive(seed)
    d = int.from_bytes(extra, "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(d, ec.SECP256R1())


# -- files ---------------------------------------------------------------------------
def _read_file(path: Path, private: bool) -> bytes | None:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VsgxError(f"cannot read {path}: {exc.strerror}") from None
    if private and mode & 0o077:
        raise VsgxError(f"{path} is readable by others; chmod 600 it")
    return data


def _create(path: Path, data: bytes, mode: int) -> bytes:
    """Write ``path`` if it does not exist (atomically, with ``mode`` from
    creation); return what is there afterwards (another writer may win)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise VsgxError(f"cannot write {path}: {exc.strerror}") from None
    return data


def _replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise VsgxError(f"cannot write {path}: {exc.strerror}") from None


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(data: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise VsgxError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                        ec.SECP256R1):
        raise VsgxError(f"{path} is not an ECDSA P-256 key")
    return key


def _load_cert(data: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise VsgxError(f"{path} is not a PEM certificate ({exc})") from None


def _same_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return certificate.public_key() == key.public_key()


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_root_ca(root: Issuer, what: str = "the root CA") -> None:
    """An operator's root: a self-signed P-256 CA whose key is the one given."""
    cert = root.certificate
    if not _same_key(cert, root.key):
        raise VsgxError(f"{what}: the key does not match the certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca or not _issued_by(cert, cert):
        raise VsgxError(f"{what}: not a self-signed CA certificate")


class QuotingEnclave:
    """The QE of one EVM (one Machine)."""

    def __init__(self, machine: Machine, directory: str | Path | None = None, *,
                 root_ca: Issuer | None = None):
        self.machine = machine
        self.directory = Path(directory) if directory else data_dir() / ATTESTATION_DIR
        self._given_root = root_ca
        self._lock = threading.Lock()
        self._ready = False

    # -- the DCAP quote library's three calls -------------------------------------------
    def target_info(self) -> bytes:
        """sgx_qe_get_target_info: the TARGETINFO application enclaves EREPORT to."""
        return QE_IDENTITY.target_info().pack()

    def quote_size(self) -> int:
        """sgx_qe_get_quote_size."""
        self._setup()
        return SIGNATURE_DATA_OFFSET + ECDSA_SIG_DATA_FIXED_SIZE + 2 + len(QE_AUTH_DATA) + 6 \
            + len(self._chain_pem)

    def quote(self, report: bytes) -> bytes:
        """sgx_qe_get_quote: a v3 quote of ``report`` (a REPORT targeted at
        this QE); QuotingError(INVALID_REPORT) if its MAC does not verify."""
        return self.quote_with_report(report)[0]

    def quote_with_report(self, report: bytes, nonce: bytes | None = None,
                          app_target_info: bytes | None = None) -> tuple[bytes, bytes | None]:
        """sgx_qe_get_quote with an sgx_ql_qe_report_info_t: the quote, and,
        when ``nonce`` and ``app_target_info`` are given, the QE's REPORT for
        that target with REPORTDATA = SHA-256(nonce || quote) || 0*32."""
        if (nonce is None) != (app_target_info is None):
            raise QuotingError(QuoteStatus.INVALID_PARAMETER,
                               "the QE report info needs both a nonce and a TARGETINFO")
        target = None
        if app_target_info is not None:
            assert nonce is not None
            if len(nonce) != QE_REPORT_NONCE_SIZE or len(app_target_info) != TARGETINFO_SIZE:
                raise QuotingError(QuoteStatus.INVALID_PARAMETER,
                                   f"the QE report info is a {QE_REPORT_NONCE_SIZE}-byte nonce "
                                   f"and a {TARGETINFO_SIZE}-byte TARGETINFO")
            try:
                target = Targetinfo.unpack(app_target_info)
            except StructureError as exc:
                raise QuotingError(QuoteStatus.INVALID_PARAMETER,
                                   f"the application's TARGETINFO is malformed: {exc}") from None
        quote = self._quote(report)
        if target is None:
            return quote, None
        assert nonce is not None
        return quote, self._report_for(target, hashlib.sha256(nonce + quote).digest()
                                       + bytes(32))

    def _report_for(self, target: Targetinfo, reportdata: bytes) -> bytes:
        """EREPORT by the QE (its identity, this platform) for ``target``."""
        machine = self.machine
        keyid = machine.secrets.report_keyid
        body = Report(cpusvn=machine.config.cpusvn, miscselect=QE_IDENTITY.miscselect,
                      attributes=QE_IDENTITY.attributes, xfrm=QE_IDENTITY.xfrm,
                      mrenclave=QE_IDENTITY.mrenclave, mrsigner=QE_IDENTITY.mrsigner,
                      isvprodid=QE_IDENTITY.isvprodid, isvsvn=QE_IDENTITY.isvsvn,
                      reportdata=reportdata, keyid=keyid).pack()[:REPORT_BODY_SIZE]
        key = derive_key(machine.secrets.derivation_key,
                         report_key_dependencies(machine, target, keyid))
        return body + keyid + report_mac(key, body)

    def _quote(self, report: bytes) -> bytes:
        body = self.verify_report(report)
        self._setup()
        header = QuoteHeader(version=QUOTE_VERSION, att_key_type=ATT_KEY_TYPE_ECDSA_P256,
                             tee_type=TEE_TYPE_SGX, qe_svn=QE_IDENTITY.isvsvn,
                             pce_svn=VSGX_PCE_ISVSVN, qe_vendor_id=INTEL_QE_VENDOR_ID,
                             user_data=self._qe_id + bytes(4))
        return make_quote(header, body, self._attestation_key, self._qe_report,
                          self._qe_report_signature, QE_AUTH_DATA, self._chain_pem)

    def verify_report(self, report: bytes) -> bytes:
        """The report's 384-byte body, if its MAC is the one EGETKEY(REPORT_KEY)
        of this QE gives (sgx_verify_report, as QE3 calls it)."""
        if len(report) != REPORT_SIZE:
            raise QuotingError(QuoteStatus.INVALID_PARAMETER,
                               f"a REPORT is {REPORT_SIZE} bytes, not {len(report)}")
        try:
            parsed = Report.unpack(report)
        except StructureError as exc:
            raise QuotingError(QuoteStatus.INVALID_REPORT, f"the report is malformed: {exc}"
                               ) from None
        key = report_key(self.machine, QE_IDENTITY, parsed.keyid)
        body = bytes(report[:REPORT_BODY_SIZE])
        if not verify_report_mac(key, body, parsed.mac):
            raise QuotingError(QuoteStatus.INVALID_REPORT,
                               "the report's MAC does not verify: it was not made for this QE "
                               "on this platform, or it was altered")
        return body

    # -- what verifiers need ------------------------------------------------------------
    @property
    def root_certificate(self) -> x509.Certificate:
        self._setup()
        return self._root.certificate

    @property
    def pck_chain(self) -> list[x509.Certificate]:
        self._setup()
        return [self._pck, self._platform_ca.certificate, self._root.certificate]

    @property
    def attestation_public_key(self) -> bytes:
        self._setup()
        return public_key_raw(self._attestation_key.public_key())

    @property
    def sgx_extensions(self) -> SgxExtensions:
        self._setup()
        return self._extensions

    @property
    def snp_report_data(self) -> bytes:
        """What the EVM's SEV-SNP report must hold to bind the attestation key."""
        return snp_report_data_for(self.attestation_public_key)

    def snp_evidence(self) -> Evidence:
        """The EVM's SEV-SNP evidence binding the attestation key: the report
        and, where the guest's kernel and host provide it, the certificate
        table of the extended report (``vsgx.channel.evidence.snp_evidence``);
        an error where this is not an SEV-SNP guest."""
        return snp_evidence(self.snp_report_data)

    def collateral(self, now: datetime.datetime | None = None, days: int = 30) -> Collateral:
        """TCB info, QE identity and CRLs for this platform, signed under its root."""
        self._setup()
        return make_collateral(root=self._root, platform_ca=self._platform_ca,
                               tcb_signing=self._tcb_signing, platform=self._extensions,
                               qe_mrsigner=QE_IDENTITY.mrsigner,
                               qe_isvprodid=QE_IDENTITY.isvprodid,
                               qe_isvsvn=QE_IDENTITY.isvsvn,
                               qe_attributes=QE_IDENTITY.attributes,
                               qe_miscselect=QE_IDENTITY.miscselect, now=now, days=days)

    # -- setup ----------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise VsgxError(f"cannot create {self.directory}: {exc.strerror}") from None
            self._attestation_key = self._private_key(ATTESTATION_KEY_FILE)
            self._root = self._root_ca()
            self._platform_ca = self._ca(PLATFORM_CA_FILE, PLATFORM_CA_KEY_FILE, self._root)
            self._tcb_signing = self._signer()
            self._pck_key = self._derive_pck_key()
            self._extensions = self._platform_extensions()
            self._pck = self._pck_certificate()
            chain = [self._pck, self._platform_ca.certificate, self._root.certificate]
            self._chain_pem = chain_pem(chain) + b"\0"
            self._qe_id = qe_id(self.machine)
            self._qe_report = ReportBody(
                cpusvn=self.machine.config.cpusvn, miscselect=QE_IDENTITY.miscselect,
                attributes=QE_IDENTITY.attributes, xfrm=QE_IDENTITY.xfrm,
                mrenclave=QE_IDENTITY.mrenclave, mrsigner=QE_IDENTITY.mrsigner,
                isvprodid=QE_IDENTITY.isvprodid, isvsvn=QE_IDENTITY.isvsvn,
                reportdata=qe_report_data(public_key_raw(self._attestation_key.public_key()),
                                          QE_AUTH_DATA)).pack()
            self._qe_report_signature = ecdsa_sign_raw(self._pck_key, self._qe_report)
            self._ready = True

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _private_key(self, name: str) -> ec.EllipticCurvePrivateKey:
        path = self._path(name)
        data = _read_file(path, private=True)
        if data is None:
            data = _create(path, _private_pem(generate_key()), 0o600)
        return _load_key(data, path)

    def _root_ca(self) -> Issuer:
        if self._given_root is not None:
            check_root_ca(self._given_root)
            return self._given_root
        key = self._private_key(ROOT_CA_KEY_FILE)
        path = self._path(ROOT_CA_FILE)
        data = _read_file(path, private=False)
        if data is None:
            data = _create(path, chain_pem([make_root_ca(key).certificate]), 0o644)
        root = Issuer(_load_cert(data, path), key)
        check_root_ca(root, str(path))
        return root

    def _ca(self, cert_name: str, key_name: str, root: Issuer) -> Issuer:
        key = self._private_key(key_name)
        path = self._path(cert_name)
        data = _read_file(path, private=False)
        if data is not None:
            certificate = _load_cert(data, path)
            if self._current(certificate, key.public_key(), root.certificate):
                return Issuer(certificate, key)
        issued = make_intermediate_ca(root, key, common_name=PLATFORM_CA_NAME)
        _replace(path, chain_pem([issued.certificate]))
        return issued

    def _signer(self) -> Issuer:
        key = self._private_key(TCB_SIGNING_KEY_FILE)
        path = self._path(TCB_SIGNING_FILE)
        data = _read_file(path, private=False)
        if data is not None:
            certificate = _load_cert(data, path)
            if self._current(certificate, key.public_key(), self._root.certificate):
                return Issuer(certificate, key)
        certificate = make_signing_certificate(self._root, key.public_key(),
                                               common_name=TCB_SIGNING_NAME)
        _replace(path, chain_pem([certificate]))
        return Issuer(certificate, key)

    def _pck_certificate(self) -> x509.Certificate:
        path = self._path(PCK_FILE)
        data = _read_file(path, private=False)
        public = self._pck_key.public_key()
        if data is not None:
            certificate = _load_cert(data, path)
            try:
                current = SgxExtensions.of_certificate(certificate) == self._extensions
            except PckError:
                current = False
            if current and self._current(certificate, public,
                                         self._platform_ca.certificate):
                return certificate
        certificate = make_pck_certificate(self._platform_ca, public, self._extensions)
        _replace(path, chain_pem([certificate]))
        return certificate

    @staticmethod
    def _current(certificate: x509.Certificate, public: Any, issuer: x509.Certificate) -> bool:
        renew = datetime.datetime.now(datetime.UTC) + _RENEW_BEFORE
        return (certificate.public_key() == public and certificate.issuer == issuer.subject
                and _issued_by(certificate, issuer)
                and certificate.not_valid_after_utc > renew)

    def _pce_request(self) -> Keyrequest:
        return Keyrequest(keyname=KeyName.PROVISION_KEY, isvsvn=PCE_IDENTITY.isvsvn,
                          cpusvn=self.machine.config.cpusvn,
                          attributemask=0xFFFFFFFFFFFFFFFF & ~int(Attribute.MODE64BIT))

    def _derive_pck_key(self) -> ec.EllipticCurvePrivateKey:
        return _scalar(provision_key(self.machine, PCE_IDENTITY, self._pce_request()),
                       b"vsgx PCK key")

    def _platform_extensions(self) -> SgxExtensions:
        seed = provision_key(self.machine, PCE_IDENTITY, self._pce_request())
        ppid = HKDF(algorithm=hashes.SHA256(), length=16, salt=None,
                    info=b"vsgx PPID").derive(seed)
        instance = HKDF(algorithm=hashes.SHA256(), length=16, salt=None,
                        info=b"vsgx platform instance").derive(seed)
        cpusvn = self.machine.config.cpusvn
        return SgxExtensions(ppid=ppid, tcb_components=cpusvn, pcesvn=VSGX_PCE_ISVSVN,
                             cpusvn=cpusvn, pceid=VSGX_PCE_ID, fmspc=VSGX_FMSPC,
                             platform_instance_id=instance,
                             configuration=PlatformConfiguration())


_QUOTING_ENCLAVES: weakref.WeakKeyDictionary[Any, QuotingEnclave] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def quoting_enclave(vm: Any, directory: str | Path | None = None, *,
                    root_ca: Issuer | None = None) -> QuotingEnclave:
    """The QE of an EnclaveVM: one per VM, made on the first call (which
    decides its directory and root CA; later calls may repeat them). The
    directory defaults to the VM's data directory's ``attestation``."""
    with _REGISTRY_LOCK:
        qe = _QUOTING_ENCLAVES.get(vm)
        if qe is None:
            if directory is None and getattr(vm, "data_dir", None) is not None:
                directory = Path(vm.data_dir) / ATTESTATION_DIR
            qe = QuotingEnclave(vm.machine, directory, root_ca=root_ca)
            _QUOTING_ENCLAVES[vm] = qe
        elif (directory is not None and Path(directory) != qe.directory) or (
                root_ca is not None and root_ca is not qe._given_root):
            raise VsgxError("this EVM's quoting enclave is already set up with another "
                            "directory or root CA")
        return qe
