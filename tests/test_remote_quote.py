"""Quoting by an EVM in another process: the QE_TARGET_INFO, QE_QUOTE_SIZE
and QUOTE messages over Unix and TCP, the host API over them, the QE's
report for the application, and the protocol version that has them."""

from __future__ import annotations

import hashlib

import pytest

from vsgx.arch.quote import QuoteStatus, parse_quote
from vsgx.arch.report import Report
from vsgx.avm import remote as remote_module
from vsgx.avm.remote import connect_evm
from vsgx.channel import EvidencePolicy, RemoteError, Type
from vsgx.crypto.pck import load_certificate
from vsgx.crypto.quote import QuoteGenerationError, QuotePolicy, attestation_key_id, verify_quote
from vsgx.errors import VsgxError
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.quoting import ATTESTATION_DIR, QE_IDENTITY, ROOT_CA_FILE
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave
from vsgx.host.attestation import get_quote, get_quote_ex, qe_quote_size, qe_target_info

from conftest import EvmProcess
from plain_ops import PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)
REPORT_DATA = hashlib.sha512(b"a key the enclave made").digest()
OTHER_SECRET = bytes(range(50, 82))


class RemotePlatform:
    """An EVM process, the plain enclave loaded in it over the channel."""

    def __init__(self, transport: str, base, plain_enclave):
        address = f"unix:{base / 'evm.sock'}" if transport == "unix" else "tcp:127.0.0.1:0"
        self.data = base / "data"
        self.process = EvmProcess(address, self.data)
        self.evm = connect_evm(self.process.address, DEV, warn=False)
        self.avm = Avm(self.evm)
        self.enclave = Enclave.load(plain_enclave.signed, evm=self.avm)
        self.plain = PlainEnclave(self.enclave)

    def report(self, data: bytes = REPORT_DATA) -> bytes:
        return self.plain.ereport(qe_target_info(self.enclave), data)

    def root(self):
        path = self.data / ATTESTATION_DIR / ROOT_CA_FILE
        return load_certificate(path.read_bytes(), str(path))

    def close(self) -> None:
        self.enclave.destroy()
        self.avm.close()
        self.process.stop()


@pytest.fixture(scope="module", params=["unix", "tcp"])
def remote(request, tmp_path_factory, plain_enclave):
    made = RemotePlatform(request.param, tmp_path_factory.mktemp(request.param), plain_enclave)
    yield made
    made.close()


def test_the_remote_qe_has_the_documented_identity(remote):
    assert remote.evm.version == 2
    assert qe_target_info(remote.enclave) == QE_IDENTITY.target_info().pack()
    target, key_id = remote.evm.qe_init()
    assert target == QE_IDENTITY.target_info().pack() and len(key_id) == 32


def test_a_remote_quote_verifies_to_the_evms_root(remote, plain_enclave):
    quote = get_quote(remote.report(), remote.enclave)
    assert len(quote) == qe_quote_size(remote.avm)
    verified = verify_quote(quote, remote.root(), QuotePolicy(
        mrenclave=remote.enclave.plan.measure(), allow_debug=True))
    assert verified.report_body.reportdata == REPORT_DATA
    # InitQuoteEx's key ID is the hash of the key that signed this quote.
    assert remote.evm.qe_init()[1] == attestation_key_id(parse_quote(quote).attestation_key)


def test_a_report_from_another_evm_or_altered_is_refused_and_the_session_goes_on(remote,
                                                                                 plain_enclave):
    other = Avm(EnclaveVM(PlatformConfig(), root_secret=OTHER_SECRET))
    try:
        stranger = PlainEnclave(Enclave.load(plain_enclave.signed, evm=other))
        foreign = stranger.ereport(qe_target_info(remote.avm), REPORT_DATA)
        stranger.enclave.destroy()
    finally:
        other.close()
    with pytest.raises(QuoteGenerationError) as refused:
        get_quote(foreign, remote.avm)
    assert refused.value.status == QuoteStatus.INVALID_REPORT
    assert "MAC does not verify" in str(refused.value)
    altered = bytearray(remote.report())
    altered[320] ^= 1  # REPORTDATA
    with pytest.raises(QuoteGenerationError) as refused:
        remote.evm.quote(bytes(altered))
    assert refused.value.status == QuoteStatus.INVALID_REPORT
    with pytest.raises(QuoteGenerationError) as refused:
        remote.evm.quote(bytes(100))
    assert refused.value.status == QuoteStatus.INVALID_PARAMETER
    assert parse_quote(get_quote(remote.report(), remote.avm)).report_body.reportdata \
        == REPORT_DATA


def test_the_qes_report_for_the_application_binds_the_quote(remote):
    """sgx_ql_qe_report_info_t: the QE EREPORTs to the application with
    REPORTDATA = SHA-256(nonce || quote) || 0*32; the enclave's EREPORT
    key verifies its MAC."""
    nonce = bytes(range(16))
    own_target = remote.plain.ereport(bytes(512))  # any report names our identity
    target = _target_of(own_target)
    result = get_quote_ex(remote.report(), remote.avm, qe_report_info=nonce + target)
    qe_report = Report.unpack(result.qe_report)
    assert qe_report.mrenclave == QE_IDENTITY.mrenclave
    assert qe_report.reportdata == hashlib.sha256(nonce + result.quote).digest() + bytes(32)
    assert remote.plain.verify_report(result.qe_report) == 0
    forged = bytearray(result.qe_report)
    forged[330] ^= 1
    assert remote.plain.verify_report(bytes(forged)) != 0
    with pytest.raises(QuoteGenerationError):
        remote.evm.quote_ex(remote.report(), nonce + target[:100])


def test_snp_evidence_beside_a_quote_is_empty_without_sev(remote):
    result = remote.evm.quote_ex(remote.report(), snp=True)
    assert result.snp_report == b"" and result.snp_certificates == b""
    parse_quote(result.quote)


def test_a_version_1_session_has_no_quoting(remote, monkeypatch):
    monkeypatch.setattr(remote_module, "PROTOCOL_VERSION", 1)
    old = connect_evm(remote.process.address, DEV, warn=False)
    try:
        assert old.version == 1
        with pytest.raises(VsgxError, match="protocol version 1"):
            old.qe_target_info()
        # Were a v1 AVM to ask anyway, the EVM says which version has it.
        with pytest.raises(RemoteError, match="needs protocol version 2"):
            old.conn.call(Type.QE_TARGET_INFO)
        assert old.cpuid().sgx2 is not None  # the rest of the session works
    finally:
        old.close()


@pytest.mark.parametrize("offered,agreed", [(2, 2), (7, 2)])
def test_hello_agrees_on_the_lower_version(remote, monkeypatch, offered, agreed):
    monkeypatch.setattr(remote_module, "PROTOCOL_VERSION", offered)
    evm = connect_evm(remote.process.address, DEV, warn=False)
    try:
        assert evm.version == agreed
    finally:
        evm.close()


def test_hello_with_a_version_the_evm_does_not_serve_is_refused(remote, monkeypatch):
    from vsgx.channel import ChannelError

    monkeypatch.setattr(remote_module, "PROTOCOL_VERSION", 0)
    with pytest.raises(ChannelError, match="older than the oldest this EVM serves"):
        connect_evm(remote.process.address, DEV, warn=False)


def _target_of(report: bytes) -> bytes:
    """The TARGETINFO of the enclave that made ``report``."""
    from vsgx.arch.report import Targetinfo

    parsed = Report.unpack(report)
    return Targetinfo(measurement=parsed.mrenclave, attributes=parsed.attributes,
                      xfrm=parsed.xfrm, miscselect=parsed.miscselect).pack()
