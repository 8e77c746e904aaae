"""Signing and verifying DCAP quotes (v3, ECDSA P-256).

``verify_quote`` checks, in the order a hardware quote's trust flows:

1. the quote's structure (``vsgx.arch.quote.parse_quote``, strict);
2. the PCK certificate chain in the certification data (type 5) up to the
   root CA the caller trusts: signatures, validity at ``now``, CA basic
   constraints and key usage (RFC 5280 through ``cryptography``'s verifier),
   and a PCK leaf that is an ECDSA P-256 signing key with SGX Extensions;
3. the QE report body's signature by the PCK key;
4. the QE report's REPORTDATA: SHA-256(attestation key || QE auth data),
   then 32 zero bytes — the binding of the attestation key to the QE;
5. the QE's identity (MRSIGNER, ISVPRODID; never a debug QE);
6. the ISV report body's signature by the attestation key over header || body;
7. the caller's policy on the ISV enclave: MRENCLAVE, MRSIGNER, ISVPRODID,
   minimum ISVSVN, debug.

Any failure raises ``QuoteVerificationError`` with a one-line reason.
TCB levels, CRLs and QE identity collateral are not consulted here (the
trusted root decides); a third-party verifier does that with the collateral
of ``vsgx.crypto.collateral``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509 import verification

from vsgx.arch.constants import Attribute
from vsgx.arch.quote import (
    INTEL_QE3_ISVPRODID,
    INTEL_QE3_MRSIGNER,
    INTEL_QE_VENDOR_ID,
    QE_AUTH_DATA_SIZE,
    VSGX_QE_ISVPRODID,
    VSGX_QE_MRSIGNER,
    CertificationDataType,
    Quote,
    QuoteFormatError,
    QuoteHeader,
    assemble_quote,
    parse_quote,
    signature_data,
)
from vsgx.arch.report import ReportBody
from vsgx.crypto.pck import (
    PckError,
    SgxExtensions,
    load_pem_chain,
    public_key_from_raw,
    public_key_raw,
)
from vsgx.errors import VsgxError

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class QuoteVerificationError(VsgxError):
    """A quote does not verify, or does not satisfy the policy."""


class QuoteGenerationError(VsgxError):
    """A quoting enclave refused a request; ``status`` is the quote3_error_t
    (``vsgx.arch.quote.QuoteStatus``) the DCAP library would return. The
    same error whether the QE is in this process or in an EVM reached over
    the channel."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class QuoteResult:
    """What sgx_qe_get_quote hands back, and what travels beside it: the
    quote; the QE's REPORT for the application (when it gave an
    sgx_ql_qe_report_info_t); the EVM's SEV-SNP report binding the
    attestation key and that report's certificate table (empty where the EVM
    has no SNP evidence)."""

    quote: bytes
    qe_report: bytes | None = None
    snp_report: bytes = b""
    snp_certificates: bytes = b""


# -- raw ECDSA (r || s, 32 bytes each, big-endian), as quotes carry it ------------------
def ecdsa_sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_verify_raw(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def qe_report_data(attestation_key: bytes, auth_data: bytes) -> bytes:
    """The QE report's REPORTDATA that binds an attestation key."""
    return hashlib.sha256(attestation_key + auth_data).digest() + bytes(32)


# On an SEV-SNP host the EVM's SNP report binds its attestation key: its
# REPORT_DATA is SHA-512(this label || x || y). The report travels beside the
# quote (Intel's format has no room for it), so a verifier can root the
# quoting key in AMD's hardware as well as in the PCK chain.
SNP_BINDING_LABEL = b"vsgx QE attestation key\0"


def attestation_key_id(attestation_key: bytes) -> bytes:
    """The ID sgx_ql_init_quote hands back for an attestation key (its
    ``p_pub_key_id``): the SHA-256 of the public key, x || y."""
    return hashlib.sha256(attestation_key).digest()


def snp_report_data_for(attestation_key: bytes) -> bytes:
    """The SNP REPORT_DATA that binds a quote's attestation key (x || y)."""
    return hashlib.sha512(SNP_BINDING_LABEL + attestation_key).digest()


def make_quote(header: QuoteHeader, report_body: bytes, attestation_key: ec.EllipticCurvePrivateKey,
               qe_report_body: bytes, qe_report_signature: bytes, qe_auth_data: bytes,
               pck_chain_pem: bytes) -> bytes:
    """A v3 quote: the attestation key signs header || body (Intel's QE3
    signs everything before signature_data_len)."""
    signed = header.pack() + report_body
    signature = ecdsa_sign_raw(attestation_key, signed)
    return assemble_quote(signed, signature_data(
        signature, public_key_raw(attestation_key.public_key()), qe_report_body,
        qe_report_signature, qe_auth_data, CertificationDataType.PCK_CERT_CHAIN,
        pck_chain_pem))


# -- verification -------------------------------------------------------------------
@dataclass(frozen=True)
class QeIdentity:
    """A quoting enclave a verifier accepts: its signer and product."""

    name: str
    mrsigner: bytes
    isvprodid: int


VSGX_QE = QeIdentity("vsgx QE", VSGX_QE_MRSIGNER, VSGX_QE_ISVPRODID)
INTEL_QE3 = QeIdentity("Intel QE3", INTEL_QE3_MRSIGNER, INTEL_QE3_ISVPRODID)


@dataclass(frozen=True)
class QuotePolicy:
    """What the ISV enclave must be (None: any)."""

    mrenclave: bytes | None = None
    mrsigner: bytes | None = None
    isvprodid: int | None = None
    isvsvn_min: int | None = None
    allow_debug: bool = False
    qe_identities: tuple[QeIdentity, ...] = (VSGX_QE, INTEL_QE3)


@dataclass(frozen=True)
class VerifiedQuote:
    quote: Quote
    chain: Sequence[x509.Certificate]  # leaf ... trusted root
    sgx_extensions: SgxExtensions
    qe: QeIdentity
    warnings: tuple[str, ...] = field(default=())

    @property
    def report_body(self) -> ReportBody:
        return self.quote.report_body

    def to_json(self) -> dict[str, Any]:
        body, header, ext = self.quote.report_body, self.quote.header, self.sgx_extensions
        return {
            "verified": True,
            "mrenclave": body.mrenclave.hex(), "mrsigner": body.mrsigner.hex(),
            "isvprodid": body.isvprodid, "isvsvn": body.isvsvn,
            "attributes": f"{body.attributes:#018x}", "xfrm": f"{body.xfrm:#x}",
            "debug": bool(body.attributes & Attribute.DEBUG),
            "miscselect": f"{body.miscselect:#x}", "cpusvn": body.cpusvn.hex(),
            "configid": body.configid.hex(), "configsvn": body.configsvn,
            "reportdata": body.reportdata.hex(),
            "qe": {"identity": self.qe.name, "svn": header.qe_svn,
                   "mrenclave": self.quote.qe_report_body.mrenclave.hex(),
                   "mrsigner": self.quote.qe_report_body.mrsigner.hex(),
                   "qe_id": self.quote.qe_id.hex()},
            "pck": {"subject": self.chain[0].subject.rfc4514_string(),
                    "root": self.chain[-1].subject.rfc4514_string(),
                    "fmspc": ext.fmspc.hex(), "pceid": ext.pceid.hex(), "pcesvn": ext.pcesvn,
                    "cpusvn": ext.cpusvn.hex(), "ppid": ext.ppid.hex(),
                    "sgx_type": ext.sgx_type},
            "pce_svn": header.pce_svn,
            "warnings": list(self.warnings),
        }


def _fail(reason: str) -> QuoteVerificationError:
    return QuoteVerificationError(reason)


def verify_pck_chain(chain: Sequence[x509.Certificate], root: x509.Certificate,
                     now: datetime.datetime) -> list[x509.Certificate]:
    """The path leaf → ... → ``root``; QuoteVerificationError if there is none."""
    leaf, *rest = chain
    if rest and rest[-1].subject == rest[-1].issuer and rest[-1] != root:
        raise _fail("the quote's PCK chain ends at another root CA than the trusted one "
                    f"({rest[-1].subject.rfc4514_string()})")
    intermediates = [c for c in rest if c != root]
    builder = (verification.PolicyBuilder().store(verification.Store([root])).time(now)
               .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                   ee_policy=verification.ExtensionPolicy.permit_all()))
    try:
        verified = builder.build_client_verifier().verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise _fail(f"the PCK certificate chain does not verify to the trusted root CA "
                    f"({_one_line(exc)})") from None
    return list(verified.chain)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _check_pck_leaf(leaf: x509.Certificate) -> SgxExtensions:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ec.SECP256R1):
        raise _fail("the PCK certificate's key is not ECDSA P-256")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _fail("the PCK certificate lacks key usage or basic constraints") from None
    if not usage.digital_signature or constraints.ca:
        raise _fail("the PCK certificate is not an end-entity signing certificate")
    try:
        return SgxExtensions.of_certificate(leaf)
    except PckError as exc:
        raise _fail(str(exc)) from None


def verify_quote(data: bytes, root_ca: x509.Certificate, policy: QuotePolicy | None = None,
                 *, now: datetime.datetime | None = None) -> VerifiedQuote:
    """Verify a v3 ECDSA quote to ``root_ca`` and check ``policy``."""
    policy = policy or QuotePolicy()
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        quote = parse_quote(data)
    except QuoteFormatError as exc:
        raise _fail(str(exc)) from None
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise _fail(f"the QE vendor ID {quote.header.qe_vendor_id.hex()} is not the Intel "
                    "QE format's")
    if quote.certification_data_type != CertificationDataType.PCK_CERT_CHAIN:
        raise _fail(f"certification data type {quote.certification_data_type} is not "
                    "supported (type 5, the PCK certificate chain, is)")
    try:
        chain = load_pem_chain(quote.certification_data, "the quote's PCK chain",
                               canonical=True)
    except PckError as exc:
        raise _fail(str(exc)) from None
    try:
        path = verify_pck_chain(chain, root_ca, now)
        extensions = _check_pck_leaf(path[0])
    except (ValueError, UnsupportedAlgorithm) as exc:  # what cryptography cannot parse
        raise _fail(f"the quote's PCK chain is malformed ({_one_line(exc)})") from None
    pck_key = path[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    if not ecdsa_verify_raw(pck_key, quote.qe_report_signature, quote.qe_report_bytes):
        raise _fail("the QE report's signature does not verify with the PCK key")
    if len(quote.qe_auth_data) != QE_AUTH_DATA_SIZE:
        raise _fail(f"the QE authentication data is {len(quote.qe_auth_data)} bytes, "
                    f"expected {QE_AUTH_DATA_SIZE}")
    expected = qe_report_data(quote.attestation_key, quote.qe_auth_data)
    if not hmac.compare_digest(quote.qe_report_body.reportdata, expected):
        raise _fail("the QE report does not bind the attestation key (REPORTDATA is not "
                    "SHA-256(key || auth data))")
    qe = next((q for q in policy.qe_identities
               if q.mrsigner == quote.qe_report_body.mrsigner
               and q.isvprodid == quote.qe_report_body.isvprodid), None)
    if qe is None:
        raise _fail(f"the quoting enclave (MRSIGNER {quote.qe_report_body.mrsigner.hex()}, "
                    f"ISVPRODID {quote.qe_report_body.isvprodid}) is not a known QE")
    if quote.qe_report_body.attributes & Attribute.DEBUG:
        raise _fail("the quoting enclave is a debug enclave")
    try:
        attestation_key = public_key_from_raw(quote.attestation_key)
    except PckError as exc:
        raise _fail(str(exc)) from None
    if not ecdsa_verify_raw(attestation_key, quote.signature, quote.signed_bytes):
        raise _fail("the quote's signature over header and report body does not verify "
                    "with the attestation key")
    check_policy(quote.report_body, policy)
    warnings = []
    if quote.header.qe_svn != quote.qe_report_body.isvsvn:
        warnings.append(f"header QE SVN {quote.header.qe_svn} differs from the QE report's "
                        f"ISVSVN {quote.qe_report_body.isvsvn}")
    return VerifiedQuote(quote, path, extensions, qe, tuple(warnings))


def check_policy(body: ReportBody, policy: QuotePolicy) -> None:
    if policy.mrenclave is not None and body.mrenclave != policy.mrenclave:
        raise _fail(f"MRENCLAVE {body.mrenclave.hex()} is not the expected "
                    f"{policy.mrenclave.hex()}")
    if policy.mrsigner is not None and body.mrsigner != policy.mrsigner:
        raise _fail(f"MRSIGNER {body.mrsigner.hex()} is not the expected "
                    f"{policy.mrsigner.hex()}")
    if policy.isvprodid is not None and body.isvprodid != policy.isvprodid:
        raise _fail(f"ISVPRODID {body.isvprodid} is not the expected {policy.isvprodid}")
    if policy.isvsvn_min is not None and body.isvsvn < policy.isvsvn_min:
        raise _fail(f"ISVSVN {body.isvsvn} is below the minimum {policy.isvsvn_min}")
    if body.attributes & Attribute.DEBUG and not policy.allow_debug:
        raise _fail("the enclave is a debug enclave (DEBUG attribute set) and the policy "
                    "does not allow debug enclaves")


def verify_quote_snp_binding(quote: bytes | Quote, snp_report: bytes, certificates: Any,
                             policy: Any = None, *, now: datetime.datetime | None = None
                             ) -> Any:
    """Verify the EVM's SEV-SNP report that travels with a quote: to AMD's
    root (``vsgx.crypto.snp``), with REPORT_DATA binding the quote's
    attestation key. Returns the SnpReport; SnpVerificationError otherwise."""
    from vsgx.crypto.snp import verify_snp_evidence

    if not isinstance(quote, Quote):
        try:
            quote = parse_quote(quote)
        except QuoteFormatError as exc:
            raise _fail(str(exc)) from None
    return verify_snp_evidence(snp_report, certificates,
                               snp_report_data_for(quote.attestation_key), policy, now=now)
