"""SEV-SNP in the channel: the AVM's policy verifies an EVM's SNP evidence
to the AMD root it trusts (synthesised chains, as test_snp.py makes them),
over real TLS with an EVM whose evidence is injected; the EVM's collection
of evidence through configfs-tsm and the sev-guest ioctls, with the kernel
stood in for; SNP evidence beside a quote over the channel."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import threading

import pytest
from cryptography.hazmat.primitives import serialization

import test_snp
from vsgx.avm.remote import connect_evm
from vsgx.channel import AttestationError, EvidencePolicy
from vsgx.channel import identity as identity_module
from vsgx.channel.evidence import (
    KIND_SEV_SNP,
    AmdSnpVerifier,
    ConfigFs,
    Evidence,
    SnpCollector,
    key_binding,
)
from vsgx.crypto.quote import snp_report_data_for, verify_quote_snp_binding
from vsgx.crypto.snp import SnpPolicy, TcbVersion, make_certificate_table, verify_snp_evidence
from vsgx.evm import quoting as quoting_module
from vsgx.evm.manager import EnclaveManager
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave
from vsgx.host.attestation import get_quote_ex, qe_target_info

from conftest import ROOT_SECRET
from plain_ops import PlainEnclave

CHAIN = test_snp.make_chain()
TABLE = make_certificate_table(CHAIN.certificates)


def policy(**changes) -> SnpPolicy:
    return dataclasses.replace(SnpPolicy(trusted_arks=(CHAIN.ark,), minimum_tcb=test_snp.TCB,
                                         measurements=frozenset({test_snp.MEASUREMENT})),
                               **changes)


def synthetic(report_data: bytes, table: bytes = TABLE, chain=CHAIN, **fields) -> Evidence:
    return Evidence(KIND_SEV_SNP, test_snp.make_report(chain.vcek_key, report_data=report_data,
                                                        **fields), table)


class SnpEvm:
    """An EVM serving on a Unix socket whose SEV-SNP evidence (for its TLS
    key, and for its QE's attestation key) is made by ``make``."""

    def __init__(self, tmp_path, monkeypatch, make=synthetic):
        monkeypatch.setattr(identity_module, "collect_evidence",
                            lambda kind, public: make(key_binding(public)))
        monkeypatch.setattr(quoting_module, "snp_evidence", lambda data: make(data))
        self.vm = EnclaveVM(PlatformConfig(epc_pages=2048), root_secret=ROOT_SECRET,
                            executor="unicorn", data_dir=tmp_path / "data")
        self.manager = EnclaveManager(self.vm, session_epc_pages=1024, evidence="sev-snp",
                                      log=lambda text: None)
        self.address = f"unix:{tmp_path / 'snp-evm.sock'}"
        ready = threading.Event()
        self.thread = threading.Thread(target=self.manager.serve, args=(self.address,),
                                       kwargs={"ready": ready.set}, daemon=True)
        self.thread.start()
        ready.wait(10)

    def connect(self, evidence_policy: EvidencePolicy):
        return connect_evm(self.address, evidence_policy, warn=False)

    def stop(self) -> None:
        self.manager.stop()
        self.thread.join(10)


@pytest.fixture
def snp_evm(tmp_path, monkeypatch):
    made = SnpEvm(tmp_path, monkeypatch)
    yield made
    made.stop()


def required(snp_policy: SnpPolicy, certificate_dir=None) -> EvidencePolicy:
    return EvidencePolicy(require_snp=True,
                          snp_verifier=AmdSnpVerifier(snp_policy, certificate_dir))


# -- the AVM's policy over real TLS ------------------------------------------------------
def test_snp_evidence_with_the_right_chain_is_accepted_under_require_snp(snp_evm):
    evm = snp_evm.connect(required(policy()))
    try:
        assert evm.evidence.kind == KIND_SEV_SNP
        assert evm.evidence.certificates == TABLE
        assert evm.cpuid() is not None  # the session works
    finally:
        evm.close()


def test_a_wrong_ark_is_refused(snp_evm):
    other = test_snp.make_chain()
    with pytest.raises(AttestationError, match="not a trusted AMD root key"):
        snp_evm.connect(required(policy(trusted_arks=(other.ark,))))
    # AMD's real roots do not trust a synthesised chain either (the default).
    with pytest.raises(AttestationError, match="not a trusted AMD root key"):
        snp_evm.connect(required(SnpPolicy()))


def test_a_tcb_below_the_minimum_or_another_measurement_is_refused(snp_evm):
    higher = dataclasses.replace(test_snp.TCB, snp=test_snp.TCB.snp + 1)
    with pytest.raises(AttestationError, match="below the minimum"):
        snp_evm.connect(required(policy(minimum_tcb=higher)))
    with pytest.raises(AttestationError, match="launch measurement"):
        snp_evm.connect(required(policy(measurements=frozenset({bytes(48)}))))


def test_a_report_binding_another_key_is_refused(tmp_path, monkeypatch):
    """The evidence's report signs over REPORT_DATA of another TLS key."""
    made = SnpEvm(tmp_path, monkeypatch, make=lambda data: synthetic(bytes(64)))
    try:
        with pytest.raises(AttestationError, match="does not bind the TLS key"):
            made.connect(required(policy()))
    finally:
        made.stop()
    # The verifier checks the binding itself too (for callers that use it alone).
    verifier = AmdSnpVerifier(policy())
    with pytest.raises(AttestationError, match="REPORT_DATA"):
        verifier(synthetic(bytes(64)).report, TABLE, b"\x01" * 64)


def test_a_tampered_report_is_refused(tmp_path, monkeypatch):
    def tampered(data: bytes) -> Evidence:
        good = synthetic(data)
        report = bytearray(good.report)
        report[0x04] ^= 1  # GUEST_SVN, under the signature
        return Evidence(KIND_SEV_SNP, bytes(report), TABLE)

    made = SnpEvm(tmp_path, monkeypatch, make=tampered)
    try:
        with pytest.raises(AttestationError, match="does not verify with the VCEK"):
            made.connect(required(policy()))
    finally:
        made.stop()


def test_certificates_from_a_cache_directory_when_the_evidence_has_none(tmp_path,
                                                                       monkeypatch):
    made = SnpEvm(tmp_path, monkeypatch, make=lambda data: synthetic(data, table=b""))
    try:
        with pytest.raises(AttestationError, match="--snp-certs"):
            made.connect(required(policy()))
        cache = tmp_path / "certs"
        cache.mkdir()
        for name, certificate in (("vcek.der", CHAIN.vcek), ("ask.pem", CHAIN.ask),
                                  ("ark.pem", CHAIN.ark)):
            encoding = serialization.Encoding.DER if name.endswith(".der") else \
                serialization.Encoding.PEM
            (cache / name).write_bytes(certificate.public_bytes(encoding))
        made.connect(required(policy(), cache)).close()
    finally:
        made.stop()


def test_snp_evidence_beside_a_quote_over_the_channel(snp_evm, plain_enclave):
    """QUOTE with the SNP flag: the EVM's report binding its QE's
    attestation key travels with the quote and verifies to the root."""
    evm = snp_evm.connect(required(policy()))
    avm = Avm(evm)
    try:
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        report = plain.ereport(qe_target_info(avm), b"\x11" * 64)
        result = get_quote_ex(report, avm, snp=True)
        assert result.snp_certificates == TABLE
        parsed = verify_quote_snp_binding(result.quote, result.snp_report,
                                          result.snp_certificates, policy())
        assert parsed.report_data == snp_report_data_for(
            quoting_module.quoting_enclave(snp_evm.vm).attestation_public_key)
        plain.enclave.destroy()
    finally:
        avm.close()


# -- the CLI's options ------------------------------------------------------------------
def test_the_clis_snp_options_make_the_verifier(tmp_path):
    import argparse

    from vsgx.cli.snp_options import parse_tcb, snp_verifier
    from vsgx.errors import VsgxError

    assert parse_tcb("bootloader=3,tee=0,snp=14,microcode=209") == test_snp.TCB
    assert parse_tcb("ucode=1,fmc=2") == TcbVersion(microcode=1, fmc=2)
    for bad in ("snp", "snp=x", "snp=256", "bl=1,bootloader=2", "color=1"):
        with pytest.raises(VsgxError, match="--snp-min-tcb"):
            parse_tcb(bad)

    def args(**given) -> argparse.Namespace:
        values = dict(snp_certs=None, snp_min_tcb=None, snp_allow_debug=False,
                      snp_measurement=None, allow_unverified_snp=False, require_snp=False)
        values.update(given)
        return argparse.Namespace(**values)

    verifier = snp_verifier(args(snp_certs=str(tmp_path), snp_min_tcb="snp=14",
                                 snp_measurement=[test_snp.MEASUREMENT.hex()]))
    assert verifier.certificate_dir == tmp_path
    assert verifier.policy.minimum_tcb == TcbVersion(snp=14)
    assert verifier.policy.measurements == {test_snp.MEASUREMENT}
    assert not verifier.policy.allow_debug
    assert snp_verifier(args(allow_unverified_snp=True)) is None
    for bad, text in ((dict(allow_unverified_snp=True, require_snp=True), "contradict"),
                      (dict(allow_unverified_snp=True, snp_min_tcb="snp=1"), "need"),
                      (dict(snp_certs=str(tmp_path / "none")), "not a directory"),
                      (dict(snp_measurement=["00"]), "48 bytes")):
        with pytest.raises(VsgxError, match=text):
            snp_verifier(args(**bad))


# -- collecting evidence: configfs-tsm ----------------------------------------------------
class FakeTsm(ConfigFs):
    """configfs-tsm as the kernel presents it for an SEV-SNP guest."""

    def __init__(self, root, provider: str = "sev_guest", table: bytes = TABLE,
                 racing: bool = False):
        self.root = root
        self.provider = provider
        self.table = table
        self.racing = racing
        self.entries: dict = {}
        self.removed: list = []

    def exists(self, path) -> bool:
        if path == self.root:
            return True
        entry = self.entries.get(path.parent)
        return entry is not None and path.name in ("provider", "inblob", "outblob",
                                                   "auxblob", "generation", "privlevel")

    def mkdir(self, root):
        entry = root / f"vsgx-{len(self.entries)}"
        self.entries[entry] = {"generation": 0, "inblob": bytes(64), "privlevel": 0}
        return entry

    def write(self, path, data: bytes) -> None:
        entry = self.entries[path.parent]
        entry[path.name] = int(data) if path.name == "privlevel" else data
        entry["generation"] += 1

    def read(self, path) -> bytes:
        entry = self.entries[path.parent]
        name = path.name
        if name == "provider":
            return self.provider.encode() + b"\n"
        if name == "generation":
            return f"{entry['generation']}\n".encode()
        if name == "outblob":
            if self.racing:
                entry["generation"] += 1  # another writer came by
            return test_snp.make_report(CHAIN.vcek_key, report_data=entry["inblob"],
                                        vmpl=entry["privlevel"])
        if name == "auxblob":
            return self.table + bytes(4096 - len(self.table) % 4096)  # page padded
        raise FileNotFoundError(path)

    def rmdir(self, path) -> None:
        self.removed.append(path)
        del self.entries[path]


def test_configfs_tsm_gives_the_report_and_the_certificate_table(tmp_path):
    fake = FakeTsm(tmp_path / "tsm")
    data = b"\x5a" * 64
    evidence = SnpCollector(tsm_root=str(tmp_path / "tsm"), configfs=fake).collect(data)
    assert evidence.kind == KIND_SEV_SNP and evidence.certificates == TABLE
    verify_snp_evidence(evidence.report, evidence.certificates, data, policy())
    assert fake.removed and not fake.entries  # the report entry is removed again
    # A VMPL is written as privlevel and shows in the report.
    report = SnpCollector(tsm_root=str(tmp_path / "tsm"), configfs=fake, vmpl=2).collect(data)
    from vsgx.crypto.snp import parse_report

    assert parse_report(report.report).vmpl == 2


@pytest.mark.parametrize("fake_args,text", [
    ({"provider": "tdx_guest"}, "not sev_guest"),
    ({"racing": True}, "another writer"),
])
def test_configfs_tsm_refusals(tmp_path, fake_args, text):
    fake = FakeTsm(tmp_path / "tsm", **fake_args)
    with pytest.raises(AttestationError, match=text):
        SnpCollector(tsm_root=str(tmp_path / "tsm"), configfs=fake).collect(b"\0" * 64)
    assert not fake.entries


def test_collection_without_sev_is_one_clear_error(tmp_path):
    with pytest.raises(AttestationError, match="not an SEV-SNP guest"):
        SnpCollector(device=str(tmp_path / "sev-guest"), tsm_root=str(tmp_path / "none")
                     ).collect(bytes(64))
    with pytest.raises(AttestationError, match="64 bytes"):
        SnpCollector().collect(b"short")


# -- collecting evidence: /dev/sev-guest ----------------------------------------------------
SNP_GET_REPORT = 0xC0205300  # _IOWR('S', 0, struct snp_guest_request_ioctl)
SNP_GET_EXT_REPORT = 0xC0205302


# The requests as the kernel reads them (include/uapi/linux/sev-guest.h),
# declared here rather than taken from vsgx: the fake checks vsgx's layout.
class SnpReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32),
                ("rsvd", ctypes.c_uint8 * 28)]


class SnpExtReportReq(ctypes.Structure):
    _fields_ = [("data", SnpReportReq), ("certs_address", ctypes.c_uint64),
                ("certs_len", ctypes.c_uint32)]


class FakeSevGuest:
    """The sev-guest driver's SNP_GET_REPORT and SNP_GET_EXT_REPORT."""

    def __init__(self, table: bytes = TABLE, needed: int = 0, status: int = 0,
                 extended: bool = True):
        self.table = table
        self.needed = needed or -(-len(table) // 4096) * 4096
        self.status = status
        self.extended = extended
        self.calls: list[int] = []

    def __call__(self, device, code: int, guest) -> int:
        self.calls.append(code)
        if code == SNP_GET_EXT_REPORT:
            if not self.extended:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            request = SnpExtReportReq.from_address(guest.req_data)
            if request.certs_len < self.needed:
                request.certs_len = self.needed  # the kernel says how much it needs
                guest.exitinfo2 = 1 << 32  # SNP_GUEST_VMM_ERR_INVALID_LEN
                raise OSError(errno.EIO, "Input/output error")
            ctypes.memmove(request.certs_address, self.table, len(self.table))
            request.certs_len = self.needed
            data = bytes(request.data.user_data)
            vmpl = request.data.vmpl
        elif code == SNP_GET_REPORT:
            request = SnpReportReq.from_address(guest.req_data)
            data, vmpl = bytes(request.user_data), request.vmpl
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        report = test_snp.make_report(CHAIN.vcek_key, report_data=data, vmpl=vmpl)
        response = self.status.to_bytes(4, "little") + len(report).to_bytes(4, "little") \
            + bytes(24) + report
        ctypes.memmove(guest.resp_data, response, len(response))
        return 0


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return str(path)


def test_the_extended_report_gives_the_certificate_table(device):
    fake = FakeSevGuest()
    data = b"\x33" * 64
    evidence = SnpCollector(device=device, tsm_root=None, ioctl=fake).collect(data)
    assert fake.calls == [SNP_GET_EXT_REPORT]
    assert evidence.certificates == TABLE
    verify_snp_evidence(evidence.report, evidence.certificates, data, policy())


def test_a_larger_certificate_buffer_is_asked_for_once(device):
    fake = FakeSevGuest(needed=5 * 4096)
    evidence = SnpCollector(device=device, tsm_root=None, ioctl=fake).collect(b"\x01" * 64)
    assert fake.calls == [SNP_GET_EXT_REPORT, SNP_GET_EXT_REPORT]
    assert evidence.certificates == TABLE
    with pytest.raises(AttestationError, match="SNP_GET_EXT_REPORT failed"):
        SnpCollector(device=device, tsm_root=None, ioctl=FakeSevGuest(needed=1 << 20)
                     ).collect(b"\x01" * 64)


def test_a_kernel_without_the_extended_request_gives_the_report_alone(device):
    fake = FakeSevGuest(extended=False)
    evidence = SnpCollector(device=device, tsm_root=None, ioctl=fake).collect(b"\x02" * 64)
    assert fake.calls == [SNP_GET_EXT_REPORT, SNP_GET_REPORT]
    assert evidence.certificates == b""
    verify_snp_evidence(evidence.report, CHAIN.certificates, b"\x02" * 64, policy())


def test_a_host_without_certificates_and_a_firmware_error(device):
    empty = SnpCollector(device=device, tsm_root=None, ioctl=FakeSevGuest(table=bytes(24)))
    assert empty.collect(bytes(64)).certificates == b""
    with pytest.raises(AttestationError, match="status 0x16"):
        SnpCollector(device=device, tsm_root=None, ioctl=FakeSevGuest(status=0x16)
                     ).collect(bytes(64))


def test_a_configfs_tsm_this_user_may_not_use_falls_back_to_the_device(tmp_path, device):
    class Refusing(FakeTsm):
        def mkdir(self, root):
            raise PermissionError(errno.EACCES, "Permission denied")

    fake = FakeSevGuest()
    collector = SnpCollector(device=device, tsm_root=str(tmp_path / "tsm"), ioctl=fake,
                             configfs=Refusing(tmp_path / "tsm"))
    assert collector.collect(b"\x07" * 64).certificates == TABLE
    assert fake.calls == [SNP_GET_EXT_REPORT]
    alone = SnpCollector(device=str(tmp_path / "none"), tsm_root=str(tmp_path / "tsm"),
                         configfs=Refusing(tmp_path / "tsm"))
    with pytest.raises(AttestationError, match="Permission denied"):
        alone.collect(bytes(64))
