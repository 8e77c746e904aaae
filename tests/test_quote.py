"""DCAP quotes from the EVM's quoting enclave: Intel's v3 format, checked by
vsgx's verifier and by a third-party verifier (dcap-qvl, with collateral
signed under our root), refused when altered, bound to the platform."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import stat
import struct
import subprocess
import sys

import pytest

from vsgx.arch import Attribute, KeyName, KeyPolicy, Keyrequest, Report, SgxError, Targetinfo
from vsgx.arch.quote import (
    INTEL_QE_VENDOR_ID,
    SIGNATURE_DATA_OFFSET,
    VSGX_FMSPC,
    VSGX_PCE_ISVSVN,
    VSGX_QE_ISVSVN,
    VSGX_QE_MRENCLAVE,
    VSGX_QE_MRSIGNER,
    QuoteFormatError,
    QuoteStatus,
    parse_quote,
)
from vsgx.crypto.collateral import split_signed_document
from vsgx.crypto.pck import (
    Issuer,
    SgxExtensions,
    chain_pem,
    generate_key,
    load_pem_chain,
    make_root_ca,
)
from vsgx.crypto.quote import (
    QuotePolicy,
    QuoteVerificationError,
    qe_report_data,
    verify_quote,
)
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.quoting import (
    ATTESTATION_KEY_FILE,
    PCK_FILE,
    QE_AUTH_DATA,
    ROOT_CA_FILE,
    ROOT_CA_KEY_FILE,
    EnclaveIdentity,
    QuotingEnclave,
    QuotingError,
    qe_id,
    quoting_enclave,
    report_key,
    seal_key,
)
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave
from vsgx.host.attestation import get_quote, qe_quote_size, qe_target_info

from conftest import ROOT_SECRET
from plain_ops import PlainEnclave

try:  # the third-party verifier (the `test` extra)
    import dcap_qvl
except ImportError:
    dcap_qvl = None
requires_qvl = pytest.mark.skipif(dcap_qvl is None, reason="dcap-qvl is not installed")

OTHER_SECRET = bytes(range(100, 132))
REPORT_DATA = hashlib.sha512(b"the enclave's public key").digest()


class Platform:
    """An in-process EVM with its QE, and the plain enclave loaded in it."""

    def __init__(self, plain_enclave, directory, secret=ROOT_SECRET, debug=False):
        self.vm = EnclaveVM(PlatformConfig(), root_secret=secret)
        self.qe = quoting_enclave(self.vm, directory)
        self.avm = Avm(self.vm)
        self.enclave = Enclave.load(plain_enclave.signed, evm=self.avm, debug=debug)
        self.plain = PlainEnclave(self.enclave)

    def report(self, target: bytes | None = None, data: bytes = REPORT_DATA) -> bytes:
        return self.plain.ereport(target or qe_target_info(self.enclave), data)

    def close(self) -> None:
        self.enclave.destroy()
        self.avm.close()


@pytest.fixture(scope="module")
def qe_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("attestation")


@pytest.fixture(scope="module")
def platform(plain_enclave, qe_dir):
    made = Platform(plain_enclave, qe_dir)
    yield made
    made.close()


@pytest.fixture(scope="module")
def quote(platform) -> bytes:
    return get_quote(platform.report(), platform.enclave)


@pytest.fixture(scope="module")
def root(platform):
    return platform.qe.root_certificate


@pytest.fixture(scope="module")
def collateral(platform):
    return platform.qe.collateral()


def qvl_collateral(c) -> object:
    _, tcb_info, tcb_signature = split_signed_document(c.tcb_info)
    _, qe_identity, qe_signature = split_signed_document(c.qe_identity)
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=c.pck_crl_issuer_chain, root_ca_crl=c.root_ca_crl,
        pck_crl=c.pck_crl, tcb_info_issuer_chain=c.tcb_info_issuer_chain, tcb_info=tcb_info,
        tcb_info_signature=tcb_signature, qe_identity_issuer_chain=c.qe_identity_issuer_chain,
        qe_identity=qe_identity, qe_identity_signature=qe_signature)


def der(certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.DER)


def third_party_verify(quote: bytes, collateral, root) -> object:
    return dcap_qvl.verify_with_root_ca(quote, qvl_collateral(collateral), der(root),
                                        int(datetime.datetime.now(datetime.UTC).timestamp()))


# -- the format --------------------------------------------------------------------------
def test_quote_is_intel_v3_byte_for_byte(platform, quote):
    report = Report.unpack(platform.report())
    parsed = parse_quote(quote)
    header = parsed.header
    assert (header.version, header.att_key_type, header.tee_type) == (3, 2, 0)
    assert (header.qe_svn, header.pce_svn) == (VSGX_QE_ISVSVN, VSGX_PCE_ISVSVN)
    assert quote[12:28] == INTEL_QE_VENDOR_ID == header.qe_vendor_id
    assert header.user_data == qe_id(platform.vm.machine) + bytes(4)
    # The ISV body is the report's first 384 bytes, at offset 48.
    assert quote[48:432] == platform.report()[:384]
    assert parsed.report_body.mrenclave == report.mrenclave
    assert parsed.report_body.reportdata == REPORT_DATA
    assert struct.unpack_from("<I", quote, 432)[0] == len(quote) - SIGNATURE_DATA_OFFSET
    # Attestation key x || y; QE report binds it with the 32-byte auth data 0..31.
    assert parsed.attestation_key == platform.qe.attestation_public_key
    assert parsed.qe_auth_data == bytes(range(32)) == QE_AUTH_DATA
    assert parsed.qe_report_body.reportdata == qe_report_data(parsed.attestation_key,
                                                              QE_AUTH_DATA)
    assert parsed.qe_report_body.mrenclave == VSGX_QE_MRENCLAVE
    assert parsed.qe_report_body.mrsigner == VSGX_QE_MRSIGNER
    assert not parsed.qe_report_body.attributes & Attribute.DEBUG
    # Certification data type 5: PEM leaf, platform CA, root; NUL-terminated.
    assert parsed.certification_data_type == 5
    assert parsed.certification_data.endswith(b"-----END CERTIFICATE-----\n\0")
    chain = load_pem_chain(parsed.certification_data, canonical=True)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "O=vsgx,CN=vsgx SGX PCK Certificate", "O=vsgx,CN=vsgx SGX PCK Platform CA",
        "O=vsgx,CN=vsgx SGX Root CA"]
    assert len(quote) == qe_quote_size(platform.enclave)
    # Two quotes of one report differ only in the ECDSA signature.
    again = get_quote(platform.report(), platform.enclave)
    assert again[:436] == quote[:436] and again[500:] == quote[500:]


@requires_qvl
def test_pck_certificate_carries_intel_sgx_extensions_readable_by_dcap_qvl(platform, quote):
    parsed = parse_quote(quote)
    theirs = dcap_qvl.parse_pck_extension_from_pem(parsed.certification_data.rstrip(b"\0"))
    ours = SgxExtensions.of_certificate(load_pem_chain(parsed.certification_data)[0])
    config = platform.vm.machine.config
    assert ours == platform.qe.sgx_extensions
    assert theirs.ppid == ours.ppid and len(ours.ppid) == 16
    assert theirs.cpu_svn == ours.cpusvn == config.cpusvn
    assert theirs.pce_svn == ours.pcesvn == VSGX_PCE_ISVSVN
    assert theirs.pce_id == ours.pceid == b"\0\0"
    assert theirs.fmspc == ours.fmspc == VSGX_FMSPC
    assert theirs.sgx_type == ours.sgx_type == 0
    assert theirs.platform_instance_id == ours.platform_instance_id
    # The 16 TCB components, one by one, through the third party's OID lookup.
    for i in range(16):
        value = theirs.get_value(f"1.2.840.113741.1.13.1.2.{i + 1}")
        assert int.from_bytes(value, "big") == config.cpusvn[i]
    assert parse_quote(quote).header.user_data[:16] == parsed.qe_id


def test_sgx_extension_der_round_trips_and_rejects_garbage():
    ext = SgxExtensions(ppid=bytes(range(16)), tcb_components=bytes([11, 11, 2, 2, 255, 1]
                                                                    + [0] * 10),
                        pcesvn=13, cpusvn=bytes(16), pceid=b"\0\0", fmspc=bytes(6))
    encoded = ext.to_der()
    assert SgxExtensions.from_der(encoded) == ext
    # Component 5 is 255: a DER INTEGER needs a leading zero byte for it.
    assert bytes.fromhex("0201" "ff") not in encoded and bytes.fromhex("0202" "00ff") in encoded
    from vsgx.crypto.pck import PckError

    for broken in (encoded[:-1], encoded + b"\0", b"\x31" + encoded[1:],
                   encoded.replace(bytes.fromhex("0202" "00ff"), bytes.fromhex("0202" "0000"))):
        with pytest.raises(PckError):
            SgxExtensions.from_der(broken)


# -- verification ------------------------------------------------------------------------
def test_quote_verifies_with_vsgx_and_policy(platform, quote, root):
    body = Report.unpack(platform.report())
    verified = verify_quote(quote, root, QuotePolicy(
        mrenclave=body.mrenclave, mrsigner=body.mrsigner, isvprodid=7, isvsvn_min=3))
    assert verified.report_body.reportdata == REPORT_DATA
    assert verified.qe.name == "vsgx QE"
    assert verified.to_json()["mrenclave"] == body.mrenclave.hex()
    assert verified.warnings == ()


@requires_qvl
def test_quote_verifies_with_the_third_party_verifier(quote, collateral, root):
    result = third_party_verify(quote, collateral, root)
    assert result.status == "UpToDate"
    assert result.advisory_ids == []


def test_wrong_policy_fails(platform, quote, root):
    body = Report.unpack(platform.report())
    cases = [
        (QuotePolicy(mrenclave=bytes(32)), "MRENCLAVE"),
        (QuotePolicy(mrsigner=hashlib.sha256(b"x").digest()), "MRSIGNER"),
        (QuotePolicy(isvprodid=8), "ISVPRODID"),
        (QuotePolicy(isvsvn_min=body.isvsvn + 1), "ISVSVN 3 is below the minimum 4"),
        (QuotePolicy(qe_identities=()), "not a known QE"),
    ]
    for policy, reason in cases:
        with pytest.raises(QuoteVerificationError, match=reason):
            verify_quote(quote, root, policy)


@requires_qvl
def test_debug_enclave_needs_allow_debug(plain_enclave, qe_dir):
    debug = Platform(plain_enclave, qe_dir, debug=True)
    try:
        quote = get_quote(debug.report(), debug.enclave)
        root = debug.qe.root_certificate
        with pytest.raises(QuoteVerificationError, match="debug enclave"):
            verify_quote(quote, root)
        assert verify_quote(quote, root, QuotePolicy(allow_debug=True)).to_json()["debug"]
        with pytest.raises(ValueError, match=r"[Dd]ebug"):
            third_party_verify(quote, debug.qe.collateral(), root)
    finally:
        debug.close()


def test_another_root_ca_or_a_late_clock_fails(quote, root):
    other = make_root_ca(generate_key()).certificate
    with pytest.raises(QuoteVerificationError, match="another root CA"):
        verify_quote(quote, other)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=8 * 365)
    with pytest.raises(QuoteVerificationError, match="does not verify to the trusted root"):
        verify_quote(quote, root, now=later)


def _regions(quote: bytes) -> dict[str, range]:
    parsed = parse_quote(quote)
    auth = SIGNATURE_DATA_OFFSET + 576
    cert = auth + 2 + len(parsed.qe_auth_data)
    return {"header": range(0, 48), "report body": range(48, 432),
            "signature length": range(432, 436), "signature": range(436, 500),
            "attestation key": range(500, 564), "QE report": range(564, 948),
            "QE report signature": range(948, 1012), "auth data": range(auth, cert),
            "certification header": range(cert, cert + 6),
            "certificate chain": range(cert + 6, len(quote))}


def _flip_positions(quote: bytes) -> list[tuple[str, int]]:
    rng = random.Random(14)
    positions = []
    for name, region in _regions(quote).items():
        picks = {region[0], region[-1], *rng.sample(list(region), min(len(region), 12))}
        positions += [(name, p) for p in sorted(picks)]
    return positions


@requires_qvl
def test_one_flipped_bit_anywhere_fails_both_verifiers(quote, collateral, root):
    qvl = qvl_collateral(collateral)
    anchor = der(root)
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    lenient = []
    for name, position in _flip_positions(quote):
        bit = 1 << (position % 8)
        flipped = bytearray(quote)
        flipped[position] ^= bit
        flipped = bytes(flipped)
        with pytest.raises(QuoteVerificationError):
            verify_quote(flipped, root)
        try:
            dcap_qvl.verify_with_root_ca(flipped, qvl, anchor, now)
        except ValueError:
            continue
        lenient.append((name, position))
    # dcap-qvl does not use every byte: it takes the trust anchor from the
    # caller, not from the chain's embedded root CA certificate; it reads
    # the certificates by PEM markers, not by the size field; and it stops
    # at the chain's end. Everything signed, and every certificate it uses,
    # fails it too.
    cert = _regions(quote)["certification header"][0]
    embedded_root = quote.rfind(b"-----BEGIN CERTIFICATE-----")
    unused = {*range(cert + 2, cert + 6), *range(embedded_root, len(quote))}
    assert all(position in unused for _, position in lenient), lenient


def test_truncated_and_garbage_quotes_get_one_line_errors(quote, root):
    rng = random.Random(7)
    candidates = [quote[:n] for n in (0, 1, 47, 48, 431, 436, 1011, 1012, 1013, 1046,
                                      len(quote) - 1)]
    candidates += [quote + b"\0", quote[:432] + b"\xff\xff\xff\xff" + quote[436:]]
    for _ in range(150):
        data = bytearray(quote)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            data[at:at + rng.randint(1, 8)] = bytes([rng.randrange(256)]) * rng.randint(1, 8)
        candidates.append(bytes(data[:rng.randint(0, len(data) + 4)]))
    candidates += [rng.randbytes(rng.randint(0, 3000)) for _ in range(50)]
    for data in candidates:
        try:
            verify_quote(data, root)
        except QuoteVerificationError as exc:
            assert "\n" not in str(exc) and str(exc)
        else:
            assert data == quote
        try:
            parse_quote(data)
        except QuoteFormatError as exc:
            assert "\n" not in str(exc)


# -- the QE checks reports as EGETKEY would -----------------------------------------------
def test_report_from_another_evm_is_refused(platform, plain_enclave, qe_dir, tmp_path):
    other = Platform(plain_enclave, tmp_path / "other", secret=OTHER_SECRET)
    try:
        foreign = other.report()
        assert Targetinfo.unpack(qe_target_info(other.enclave)) == Targetinfo.unpack(
            qe_target_info(platform.enclave))  # one QE identity everywhere
        with pytest.raises(QuotingError, match="MAC does not verify") as info:
            platform.qe.quote(foreign)
        assert info.value.status == QuoteStatus.INVALID_REPORT
        other.qe.quote(foreign)  # its own QE takes it
    finally:
        other.close()


def test_altered_or_mistargeted_reports_are_refused(platform):
    report = platform.report()
    platform.qe.quote(report)
    for position in (0, 64, 320, 383, 384, 415, 416, 431):
        altered = bytearray(report)
        altered[position] ^= 0x10
        with pytest.raises(QuotingError) as info:
            platform.qe.quote(bytes(altered))
        assert info.value.status == QuoteStatus.INVALID_REPORT
    own = Report.unpack(report)
    to_itself = platform.report(EnclaveIdentity.of_report(own).target_info().pack())
    with pytest.raises(QuotingError, match="MAC"):
        platform.qe.quote(to_itself)
    with pytest.raises(QuotingError) as info:
        platform.qe.quote(report[:-1])
    assert info.value.status == QuoteStatus.INVALID_PARAMETER


def test_qe_report_key_is_egetkey_report_key_of_that_identity(platform):
    """The QE's key derivation, run for the plain enclave's own identity,
    gives what the enclave's EGETKEY returns on the same EVM."""
    identity = EnclaveIdentity.of_report(Report.unpack(platform.report()))
    keyid = bytes(range(32))
    status, key = platform.plain.egetkey(Keyrequest(keyname=KeyName.REPORT_KEY,
                                                    keyid=keyid).pack())
    assert status == SgxError.SUCCESS
    assert report_key(platform.vm.machine, identity, keyid) == key
    request = Keyrequest(keyname=KeyName.SEAL_KEY, keypolicy=KeyPolicy.MRSIGNER,
                         attributemask=0xFFFFFFFFFFFFFFFB, miscmask=0xFFFFFFFF, keyid=keyid)
    status, sealed = platform.plain.egetkey(request.pack())
    assert status == SgxError.SUCCESS
    assert seal_key(platform.vm.machine, identity, request) == sealed


# -- keys and certificates on disk -------------------------------------------------------
def test_keys_persist_private_from_creation_and_follow_the_root_secret(platform, qe_dir,
                                                                       tmp_path):
    for name in (ATTESTATION_KEY_FILE, ROOT_CA_KEY_FILE, "platform-ca-key.pem",
                 "tcb-signing-key.pem"):
        assert stat.S_IMODE((qe_dir / name).stat().st_mode) == 0o600, name
    machine = platform.vm.machine
    again = QuotingEnclave(machine, qe_dir)
    assert again.attestation_public_key == platform.qe.attestation_public_key
    assert again.root_certificate == platform.qe.root_certificate
    assert again.pck_chain == platform.qe.pck_chain  # nothing re-issued
    # Another root secret: another PCK key and PPID, re-issued under the same root.
    other = QuotingEnclave(EnclaveVM(PlatformConfig(), root_secret=OTHER_SECRET).machine,
                           qe_dir)
    assert other.root_certificate == platform.qe.root_certificate
    assert other.pck_chain[0].public_key() != platform.qe.pck_chain[0].public_key()
    assert other.sgx_extensions.ppid != platform.qe.sgx_extensions.ppid
    # Another CPUSVN: the PCK certificate follows the TCB.
    newer = QuotingEnclave(EnclaveVM(PlatformConfig(cpusvn=bytes([3] * 16)),
                                     root_secret=ROOT_SECRET).machine, qe_dir)
    assert newer.sgx_extensions.cpusvn == bytes([3] * 16)
    assert SgxExtensions.of_certificate(
        load_pem_chain((qe_dir / PCK_FILE).read_bytes())[0]).cpusvn == bytes([3] * 16)
    # A key file readable by others is refused.
    loose = tmp_path / "loose"
    QuotingEnclave(machine, loose).target_info()
    QuotingEnclave(machine, loose).quote_size()
    os.chmod(loose / ATTESTATION_KEY_FILE, 0o644)
    from vsgx.errors import VsgxError

    with pytest.raises(VsgxError, match="chmod 600"):
        QuotingEnclave(machine, loose).quote_size()


@requires_qvl
def test_an_operator_root_ca_issues_the_chain(platform, tmp_path):
    key = generate_key()
    operator = make_root_ca(key, common_name="Example Corp SGX Root")
    qe = QuotingEnclave(platform.vm.machine, tmp_path / "given", root_ca=operator)
    quote = qe.quote(platform.report())
    verified = verify_quote(quote, operator.certificate)
    assert verified.chain[-1] == operator.certificate
    assert third_party_verify(quote, qe.collateral(), operator.certificate).status == \
        "UpToDate"
    # Placed in the directory as files, it is picked up the same way.
    placed = tmp_path / "placed"
    placed.mkdir()
    from cryptography.hazmat.primitives import serialization

    (placed / ROOT_CA_KEY_FILE).write_bytes(key.private_bytes(  # PEM PKCS#8, as openssl writes
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (placed / ROOT_CA_KEY_FILE).chmod(0o600)
    (placed / ROOT_CA_FILE).write_bytes(chain_pem([operator.certificate]))
    assert QuotingEnclave(platform.vm.machine, placed).root_certificate == \
        operator.certificate
    from vsgx.errors import VsgxError

    with pytest.raises(VsgxError, match="does not match"):
        QuotingEnclave(platform.vm.machine, tmp_path / "bad",
                       root_ca=Issuer(operator.certificate, generate_key())).quote_size()


@requires_qvl
def test_collateral_is_signed_and_the_third_party_checks_it(quote, collateral, root):
    tcb = json.loads(collateral.tcb_info)
    assert set(tcb) == {"tcbInfo", "signature"}
    assert tcb["tcbInfo"]["fmspc"] == VSGX_FMSPC.hex().upper()
    identity = json.loads(collateral.qe_identity)["enclaveIdentity"]
    assert identity["mrsigner"] == VSGX_QE_MRSIGNER.hex().upper()
    forged = collateral.tcb_info.replace('"UpToDate"', '"OutOfDate"')
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"[Ss]ignature"):
        third_party_verify(quote, replace(collateral, tcb_info=forged), root)


# -- the CLI -----------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsgx", "quote", "verify", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_quote_verify(platform, quote, root, tmp_path):
    from cryptography.hazmat.primitives import serialization

    body = Report.unpack(platform.report())
    quote_file, root_file = tmp_path / "quote.bin", tmp_path / "root.pem"
    quote_file.write_bytes(quote)
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    ok = _cli(str(quote_file), "--root-ca", str(root_file), "--mrenclave", body.mrenclave.hex(),
              "--mrsigner", body.mrsigner.hex(), "--isvsvn-min", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["mrenclave"] == body.mrenclave.hex()
    plain = _cli(str(quote_file), "--root-ca", str(root_file))
    assert plain.returncode == 0 and "quote verified" in plain.stdout
    wrong = _cli(str(quote_file), "--root-ca", str(root_file), "--mrenclave", "00" * 32)
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "MRENCLAVE" in wrong.stderr
    flipped = bytearray(quote)
    flipped[100] ^= 1
    (tmp_path / "flipped.bin").write_bytes(bytes(flipped))
    bad = _cli(str(tmp_path / "flipped.bin"), "--root-ca", str(root_file))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "signature" in bad.stderr
    (tmp_path / "short.bin").write_bytes(quote[:500])
    short = _cli(str(tmp_path / "short.bin"), "--root-ca", str(root_file), "--json")
    assert short.returncode == 1 and short.stderr.count("\n") == 1
    for args in (("--mrenclave", "abc"), ("--isvsvn-min", "-1")):
        usage = _cli(str(quote_file), "--root-ca", str(root_file), *args)
        assert usage.returncode != 0 and "Traceback" not in usage.stderr
    missing = _cli(str(tmp_path / "nothing"), "--root-ca", str(root_file))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def _with_chain(quote: bytes, chain_pem_bytes: bytes) -> bytes:
    from vsgx.arch.quote import assemble_quote, signature_data

    q = parse_quote(quote)
    return assemble_quote(q.signed_bytes, signature_data(
        q.signature, q.attestation_key, q.qe_report_bytes, q.qe_report_signature,
        q.qe_auth_data, 5, chain_pem_bytes))


def test_pck_leaf_must_be_a_p256_signing_certificate_with_sgx_extensions(platform, quote,
                                                                         root):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from vsgx.crypto.pck import Issuer, name
    from vsgx.evm.quoting import PLATFORM_CA_KEY_FILE

    # The platform CA's key (kept in the QE's directory) signs these test leaves.
    ca_key = serialization.load_pem_private_key(
        (platform.qe.directory / PLATFORM_CA_KEY_FILE).read_bytes(), None)
    ca = Issuer(platform.qe.pck_chain[1], ca_key)
    now = datetime.datetime.now(datetime.UTC)

    def leaf(key, ca_flag: bool, sgx: bool):
        builder = (x509.CertificateBuilder().subject_name(name("test leaf"))
                   .issuer_name(ca.certificate.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(True, True, False, False, False, ca_flag,
                                                ca_flag, False, False), critical=True))
        if sgx:
            builder = builder.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.2.840.113741.1.13.1"),
                platform.qe.sgx_extensions.to_der()), critical=False)
        return builder.sign(ca.key, hashes.SHA256())

    from cryptography.hazmat.primitives.asymmetric import ec

    garbled = (x509.CertificateBuilder().subject_name(name("test leaf"))
               .issuer_name(ca.certificate.subject).public_key(generate_key().public_key())
               .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.UnrecognizedExtension(x509.oid.ExtensionOID.KEY_USAGE,
                                                         b"\x30\x03\x01"), critical=False)
               .sign(ca.key, hashes.SHA256()))
    cases = [(garbled, "malformed"), (leaf(generate_key(), False, False), "no SGX Extensions"),
             (leaf(generate_key(), True, True), "not an end-entity"),
             (leaf(ec.generate_private_key(ec.SECP384R1()), False, True), "not ECDSA P-256"),
             (leaf(generate_key(), False, True), "QE report's signature does not verify")]
    for certificate, reason in cases:
        forged = _with_chain(quote, chain_pem([certificate, ca.certificate, root]) + b"\0")
        with pytest.raises(QuoteVerificationError, match=reason):
            verify_quote(forged, root)
    assert verify_quote(_with_chain(quote, parse_quote(quote).certification_data), root)


def test_attestation_key_bound_by_the_evms_snp_report(platform, quote):
    import test_snp
    from vsgx.crypto.quote import snp_report_data_for, verify_quote_snp_binding
    from vsgx.crypto.snp import SnpVerificationError

    binding = platform.qe.snp_report_data
    assert binding == snp_report_data_for(parse_quote(quote).attestation_key)
    chain = test_snp.make_chain()
    report = test_snp.make_report(chain.vcek_key, report_data=binding)
    policy = test_snp.SnpPolicy(trusted_arks=(chain.ark,))
    assert verify_quote_snp_binding(quote, report, chain.certificates, policy).report_data \
        == binding
    other = test_snp.make_report(chain.vcek_key, report_data=snp_report_data_for(bytes(64)))
    with pytest.raises(SnpVerificationError, match="REPORT_DATA"):
        verify_quote_snp_binding(quote, other, chain.certificates, policy)


@pytest.mark.skipif(os.path.exists("/dev/sev-guest"), reason="an SEV-SNP guest")
def test_snp_evidence_is_a_clean_error_without_sev(platform):
    from vsgx.errors import VsgxError

    with pytest.raises(VsgxError, match="not an SEV-SNP guest"):
        platform.qe.snp_evidence()


@requires_qvl
def test_sdk_enclave_report_through_its_ecall_is_quoted(sdk_enclave, platform, collateral,
                                                        root):
    """The SDK sample enclave EREPORTs to the QE from its own ECALL (as an
    application calls sgx_create_report with sgx_qe_get_target_info's result)."""
    from vsgx.samples import HELLO_DIR
    from vsgx.sdk import Enclave as SdkEnclave

    enclave = SdkEnclave.load(sdk_enclave.signed, edl=HELLO_DIR / "hello.edl",
                              ocalls={"ocall_print": print, "ocall_nop": lambda: None,
                                      "ocall_call_back": lambda x: x},
                              evm=platform.avm, debug=False)
    try:
        status, report = enclave.ecall_report(qe_target_info(platform.avm), REPORT_DATA)
        assert status == 0
        quote = get_quote(report, platform.avm)
        verified = verify_quote(quote, root, QuotePolicy(mrenclave=enclave.mrenclave))
        assert verified.report_body.reportdata == REPORT_DATA
        assert third_party_verify(quote, collateral, root).status == "UpToDate"
    finally:
        enclave.destroy()


@requires_qvl
def test_cli_collateral_feeds_the_third_party_verifier(plain_enclave, tmp_path):
    """`vsgx quote collateral` on an EVM's data directory writes what a
    verifier needs; dcap-qvl reads its collateral.json and accepts a quote
    from that EVM."""
    data = tmp_path / "evm-data"
    data.mkdir()
    (data / "platform-root-secret").write_bytes(OTHER_SECRET)
    (data / "platform-root-secret").chmod(0o600)
    evm = Platform(plain_enclave, data / "attestation", secret=OTHER_SECRET)
    try:
        quote = get_quote(evm.report(), evm.enclave)
    finally:
        evm.close()
    out = tmp_path / "collateral"
    result = subprocess.run([sys.executable, "-m", "vsgx", "quote", "collateral", "--data-dir",
                             str(data), "-o", str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    collateral = dcap_qvl.QuoteCollateralV3.from_json((out / "collateral.json").read_text())
    root = load_pem_chain((out / "root-ca.pem").read_bytes())[0]
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    assert dcap_qvl.verify_with_root_ca(quote, collateral, der(root), now).status == "UpToDate"
    assert json.loads((out / "tcb_info.json").read_text())["tcbInfo"]["id"] == "SGX"
    verify = _cli(str(tmp_path / "q.bin"), "--data-dir", str(data))
    assert verify.returncode == 1 and "cannot read quote" in verify.stderr
    (tmp_path / "q.bin").write_bytes(quote)
    assert _cli(str(tmp_path / "q.bin"), "--data-dir", str(data)).returncode == 0
    missing = subprocess.run([sys.executable, "-m", "vsgx", "quote", "collateral", "--data-dir",
                              str(tmp_path / "none"), "-o", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1 and "no EVM platform secret" in missing.stderr
