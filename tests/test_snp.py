"""SEV-SNP evidence verified to the root: chains and reports synthesised
with our own ARK, ASK and VCEK keys (RSA-PSS SHA-384 salt 48; ECDSA P-384),
and AMD's pinned ARK/ASK checked for what they are."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from vsgx.crypto import amd_roots
from vsgx.crypto.pck import der_integer
from vsgx.crypto.snp import (
    OID_BL_SPL,
    OID_HWID,
    OID_SNP_SPL,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    POLICY_DEBUG,
    REPORT_SIZE,
    SIGNED_SIZE,
    SnpCertificates,
    SnpPolicy,
    SnpReport,
    SnpVerificationError,
    TcbVersion,
    amd_arks,
    make_certificate_table,
    parse_certificate_table,
    verify_pss_signature,
    verify_snp_evidence,
)

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOW = datetime.datetime.now(datetime.UTC)
CHIP_ID = hashlib.sha512(b"chip").digest()
TCB = TcbVersion(bootloader=3, tee=0, snp=14, microcode=209)
MEASUREMENT = hashlib.sha384(b"the EVM's launch image").digest()
BINDING = hashlib.sha512(b"the EVM's TLS key").digest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test AMD"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, public_key, signing_key, *, ca: bool,
          extensions: tuple = (), days: int = 3650) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signing_key, hashes.SHA384(), rsa_padding=PSS)


def _vcek_extensions(tcb: TcbVersion, chip_id: bytes) -> tuple:
    def ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)

    return (ext(OID_BL_SPL, der_integer(tcb.bootloader)), ext(OID_TEE_SPL, der_integer(tcb.tee)),
            ext(OID_SNP_SPL, der_integer(tcb.snp)),
            ext(OID_UCODE_SPL, der_integer(tcb.microcode)), ext(OID_HWID, chip_id))


@dataclasses.dataclass
class Chain:
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate

    @property
    def certificates(self) -> SnpCertificates:
        return SnpCertificates(self.vcek, self.ask, self.ark)

    @property
    def policy(self) -> SnpPolicy:
        return SnpPolicy(trusted_arks=(self.ark,), measurements=frozenset({MEASUREMENT}),
                         minimum_tcb=TCB)


def make_chain(tcb: TcbVersion = TCB, chip_id: bytes = CHIP_ID) -> Chain:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = _cert("ARK-Test", "ARK-Test", ark_key.public_key(), ark_key, ca=True)
    ask = _cert("SEV-Test", "ARK-Test", ask_key.public_key(), ark_key, ca=True)
    vcek = _cert("SEV-VCEK", "SEV-Test", vcek_key.public_key(), ask_key, ca=False,
                 extensions=_vcek_extensions(tcb, chip_id))
    return Chain(ark_key, ark, ask_key, ask, vcek_key, vcek)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


def make_report(key: ec.EllipticCurvePrivateKey, *, report_data: bytes = BINDING,
                tcb: TcbVersion = TCB, policy: int = 0x30000, **fields) -> bytes:
    values = dict(version=2, guest_svn=1, policy=policy, vmpl=0, signature_algo=1,
                  current_tcb=tcb.encode(), reported_tcb=tcb.encode(),
                  committed_tcb=tcb.encode(), launch_tcb=tcb.encode(),
                  report_data=report_data, measurement=MEASUREMENT, chip_id=CHIP_ID)
    values.update(fields)
    body = SnpReport(**values).pack()[:SIGNED_SIZE]
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    report = body + signature
    return report + bytes(REPORT_SIZE - len(report))


def test_good_chain_and_report_verify(chain):
    report = make_report(chain.vcek_key)
    parsed = verify_snp_evidence(report, chain.certificates, BINDING, chain.policy)
    assert parsed.measurement == MEASUREMENT
    assert TcbVersion.decode(parsed.reported_tcb) == TCB
    # The same through the extended report's certificate table.
    table = make_certificate_table(chain.certificates)
    assert parse_certificate_table(table) == chain.certificates
    verify_snp_evidence(report, table, BINDING, chain.policy)


def test_certificates_from_a_cache_directory(chain, tmp_path):
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "vcek.der").write_bytes(chain.vcek.public_bytes(serialization.Encoding.DER))
    (tmp_path / "cert_chain.pem").write_bytes(
        chain.ask.public_bytes(serialization.Encoding.PEM)
        + chain.ark.public_bytes(serialization.Encoding.PEM))
    verify_snp_evidence(make_report(chain.vcek_key), tmp_path, BINDING, chain.policy)
    with pytest.raises(SnpVerificationError, match="no VCEK"):
        verify_snp_evidence(make_report(chain.vcek_key), tmp_path / "empty", BINDING,
                            chain.policy)


def test_wrong_ark_fails(chain):
    report = make_report(chain.vcek_key)
    other = make_chain()
    with pytest.raises(SnpVerificationError, match="not a trusted AMD root"):
        verify_snp_evidence(report, chain.certificates, BINDING, other.policy)
    # A forged ARK with the trusted ARK's name but another key.
    impostor_key = rsa.generate_private_key(65537, 2048)
    impostor = _cert("ARK-Test", "ARK-Test", impostor_key.public_key(), impostor_key, ca=True)
    with pytest.raises(SnpVerificationError, match="not a trusted AMD root"):
        verify_snp_evidence(report, dataclasses.replace(chain.certificates, ark=impostor),
                            BINDING, chain.policy)
    # The right ARK but an ASK it did not sign.
    with pytest.raises(SnpVerificationError, match="ASK's signature"):
        verify_snp_evidence(report, dataclasses.replace(chain.certificates, ask=other.ask),
                            BINDING, chain.policy)
    # The default trust: AMD's pinned ARKs, none of which signed this chain.
    with pytest.raises(SnpVerificationError, match="not a trusted AMD root"):
        verify_snp_evidence(report, chain.certificates, BINDING)


def test_tampered_report_fails(chain):
    report = make_report(chain.vcek_key)
    for position in (0x00, 0x08, 0x50, 0x90, 0xBF, 0x180, 0x1A0, 0x29F, 0x2A0, 0x2E8):
        tampered = bytearray(report)
        tampered[position] ^= 0x01
        with pytest.raises(SnpVerificationError):
            verify_snp_evidence(bytes(tampered), chain.certificates, BINDING, chain.policy)
    other = make_chain()
    with pytest.raises(SnpVerificationError, match="does not verify with the VCEK"):
        verify_snp_evidence(make_report(other.vcek_key), chain.certificates, BINDING,
                            chain.policy)
    for size in (0, REPORT_SIZE - 1, REPORT_SIZE + 1):
        with pytest.raises(SnpVerificationError, match="1184 bytes"):
            verify_snp_evidence(report[:size] + bytes(max(0, size - REPORT_SIZE)),
                                chain.certificates, BINDING, chain.policy)


def test_wrong_report_data_fails(chain):
    report = make_report(chain.vcek_key, report_data=bytes(64))
    with pytest.raises(SnpVerificationError, match="REPORT_DATA is not the expected"):
        verify_snp_evidence(report, chain.certificates, BINDING, chain.policy)


def test_tcb_below_policy_fails(chain):
    low = TcbVersion(bootloader=3, tee=0, snp=13, microcode=209)
    low_chain = make_chain(tcb=low)
    report = make_report(low_chain.vcek_key, tcb=low)
    policy = dataclasses.replace(low_chain.policy, minimum_tcb=TCB)
    with pytest.raises(SnpVerificationError, match=r"REPORTED_TCB .* is below the minimum"):
        verify_snp_evidence(report, low_chain.certificates, BINDING, policy)
    # A report claiming a TCB its VCEK was not derived for.
    claimed = make_report(low_chain.vcek_key, tcb=TCB)
    with pytest.raises(SnpVerificationError, match="VCEK was issued for snpSPL 13"):
        verify_snp_evidence(claimed, low_chain.certificates, BINDING, policy)


def test_debug_measurement_chip_and_signing_key_policies(chain):
    debug = make_report(chain.vcek_key, policy=0x30000 | POLICY_DEBUG)
    with pytest.raises(SnpVerificationError, match="allows debugging"):
        verify_snp_evidence(debug, chain.certificates, BINDING, chain.policy)
    verify_snp_evidence(debug, chain.certificates, BINDING,
                        dataclasses.replace(chain.policy, allow_debug=True))
    other_image = make_report(chain.vcek_key, measurement=bytes(48))
    with pytest.raises(SnpVerificationError, match="measurement"):
        verify_snp_evidence(other_image, chain.certificates, BINDING, chain.policy)
    other_chip = make_report(chain.vcek_key, chip_id=bytes(64))
    with pytest.raises(SnpVerificationError, match="another chip"):
        verify_snp_evidence(other_chip, chain.certificates, BINDING, chain.policy)
    vlek = make_report(chain.vcek_key, key_info=1 << 2)
    with pytest.raises(SnpVerificationError, match="only VCEK"):
        verify_snp_evidence(vlek, chain.certificates, BINDING, chain.policy)
    with pytest.raises(SnpVerificationError, match="VMPL 0, not 1"):
        verify_snp_evidence(make_report(chain.vcek_key), chain.certificates, BINDING,
                            dataclasses.replace(chain.policy, vmpl=1))


def test_expired_vcek_fails(chain):
    later = NOW + datetime.timedelta(days=4000)
    with pytest.raises(SnpVerificationError, match="not valid now"):
        verify_snp_evidence(make_report(chain.vcek_key), chain.certificates, BINDING,
                            chain.policy, now=later)


def test_malformed_certificate_tables_get_clean_errors(chain):
    table = make_certificate_table(chain.certificates)
    for broken in (b"", table[:20], table[:-1], bytes(24) + table,
                   table[:16] + (10**6).to_bytes(4, "little") + table[20:]):
        with pytest.raises(SnpVerificationError):
            verify_snp_evidence(make_report(chain.vcek_key), broken, BINDING, chain.policy)


def test_turin_tcb_layout():
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert TcbVersion.decode(tcb.encode(turin=True), turin=True) == tcb
    assert tcb.encode(turin=True).to_bytes(8, "little") == bytes([5, 1, 2, 3, 0, 0, 0, 4])
    assert TCB.encode().to_bytes(8, "little") == bytes([3, 0, 0, 0, 0, 0, 14, 209])


def test_amd_pinned_roots_are_self_signed_and_sign_their_ask():
    """AMD's real ARK and ASK certificates verify under the same RSA-PSS
    checks as the synthesised ones."""
    arks = amd_arks()
    assert {str(a.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
            for a in arks} == {"ARK-Milan", "ARK-Genoa", "ARK-Turin"}
    for product, (ark_pem, ask_pem) in amd_roots.PRODUCTS.items():
        ark = x509.load_pem_x509_certificate(ark_pem.encode())
        ask = x509.load_pem_x509_certificate(ask_pem.encode())
        verify_pss_signature(ark, ark, f"{product} ARK")
        verify_pss_signature(ask, ark, f"{product} ASK")
        assert ark.public_key().key_size == 4096
    milan_ark = x509.load_pem_x509_certificate(amd_roots.MILAN_ARK.encode())
    genoa_ask = x509.load_pem_x509_certificate(amd_roots.GENOA_ASK.encode())
    with pytest.raises(SnpVerificationError):
        verify_pss_signature(genoa_ask, milan_ark, "ASK")


def test_missing_ask_and_ark_come_from_the_pinned_product_only(chain):
    report = make_report(chain.vcek_key)
    with pytest.raises(SnpVerificationError, match="none pinned for the VCEK's issuer"):
        verify_snp_evidence(report, SnpCertificates(chain.vcek), BINDING, chain.policy)
    # A VCEK that names AMD's Milan ASK as issuer is checked against AMD's keys.
    milan_ask = x509.load_pem_x509_certificate(amd_roots.MILAN_ASK.encode())
    forged = (x509.CertificateBuilder().subject_name(_name("SEV-VCEK"))
              .issuer_name(milan_ask.subject).public_key(chain.vcek_key.public_key())
              .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
              .not_valid_after(NOW + datetime.timedelta(days=30))
              .sign(chain.ark_key, hashes.SHA384(), rsa_padding=PSS))
    with pytest.raises(SnpVerificationError, match="VCEK's signature does not verify"):
        verify_snp_evidence(report, SnpCertificates(forged), BINDING)


def test_malformed_vcek_extensions_get_a_clean_error(chain):
    garbled = (x509.CertificateBuilder().subject_name(_name("SEV-VCEK"))
               .issuer_name(chain.ask.subject).public_key(chain.vcek_key.public_key())
               .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=30))
               .add_extension(x509.UnrecognizedExtension(
                   x509.oid.ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01"), critical=False)
               .sign(chain.ask_key, hashes.SHA384(), rsa_padding=PSS))
    with pytest.raises(SnpVerificationError, match="malformed"):
        verify_snp_evidence(make_report(chain.vcek_key),
                            dataclasses.replace(chain.certificates, vcek=garbled), BINDING,
                            chain.policy)
