"""The vSGX split: the AVM and a separate EVM process over attested TLS —
what crosses the channel, evidence policy, failures on either side, and
concurrency. (Tampering: test_mitm.py; admission: test_admission.py.)"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from vsgx.avm.remote import connect_evm
from vsgx.channel import AttestationError, EvidencePolicy
from vsgx.errors import VsgxError
from vsgx.host import Avm, Enclave

from conftest import EvmProcess, build_plain
from mitm_proxy import TamperingProxy
from plain_ops import OP_MAKE_SECRET, OP_SECRET_HASH, OP_WAIT_FLAG, PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)


@pytest.fixture
def tcp_evm(evm_processes, executor):
    return evm_processes("tcp", executor)


def _in_thread(fn, timeout: float = 30.0):
    """Run ``fn`` in a thread; return its exception (or None), failing on a hang."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the AVM hung instead of reporting the broken channel"
    return outcome[0]


def test_a_canary_in_an_enclave_page_never_leaves_the_evm(tcp_evm, plain_enclave):
    relay = TamperingProxy(int(tcp_evm.rsplit(":", 1)[1]))
    remote = connect_evm(relay.address, DEV, warn=False)
    frames: list[bytes] = []
    stream = remote.conn.stream
    read_frame = stream.read_frame

    def recording(*args):
        frame = read_frame(*args)
        frames.append(frame)
        return frame

    stream.read_frame = recording
    avm = Avm(remote)
    plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
    assert plain.call(0, OP_MAKE_SECRET)[0].kind == "eexit"
    plain.call(0, OP_SECRET_HASH)
    digest = plain.read_op(0, 8, 32)
    # Evict the secret's page (the blob crosses the channel) and fault it back.
    secret_page = plain.symbol("encl_secret")
    driver = avm.driver
    with plain.enclave.handle.lock:
        assert driver.evict(plain.enclave.handle, [plain.enclave.handle.pages[secret_page]]) == 1
    plain.call(0, OP_SECRET_HASH)
    assert plain.read_op(0, 8, 32) == digest
    assert driver.reloads >= 1
    relay.capturing = False
    recorded = list(frames)
    stream.read_frame = read_frame
    # Read the secret with EDBGRD (a debug enclave), off the record.
    epc = plain.enclave.handle.pages[secret_page].epc
    secret = b"".join(remote.edbgrd(epc + 8 * i)[1].to_bytes(8, "little") for i in range(4))
    assert hashlib.sha256(secret).digest() == digest
    for piece in (secret, secret[:16], secret[16:]):
        assert piece not in relay.captured["c2s"] and piece not in relay.captured["s2c"]
        assert not any(piece in frame for frame in recorded)
        assert not any(piece in avm.memory.read(page, 4096) for page in avm.memory.mapped_pages())
    avm.close()


def test_an_evm_without_the_required_evidence_is_refused(tcp_evm, monkeypatch):
    import vsgx.avm.remote as remote

    def no_messages(*args, **kwargs):
        raise AssertionError("a message was sent to an unattested EVM")

    monkeypatch.setattr(remote, "Connection", no_messages)
    with pytest.raises(AttestationError, match="no protection evidence"):
        connect_evm(tcp_evm, EvidencePolicy(allow_unprotected_local=False))
    with pytest.raises(AttestationError, match="requires SEV-SNP"):
        connect_evm(tcp_evm, EvidencePolicy(require_snp=True))


def test_evidence_verification_rules():
    """Certificates with SEV-SNP evidence (made here: this machine has no
    SEV): the report must bind the key, and unverified reports need opt-in."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from vsgx.channel.evidence import (
        EVIDENCE_OID,
        SNP_REPORT_SIZE,
        Evidence,
        key_binding,
        verify_evidence,
    )

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def certificate(evidence: Evidence | None) -> bytes:
        name = x509.Name([])
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if evidence is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(EVIDENCE_OID, evidence.encode()), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)

    report = bytearray(SNP_REPORT_SIZE)
    report[0x50:0x90] = key_binding(spki)
    good = certificate(Evidence("sev-snp", bytes(report)))
    with pytest.raises(AttestationError, match="not verified"):
        verify_evidence(good, EvidencePolicy())
    assert verify_evidence(good, EvidencePolicy(allow_unverified_snp=True)).kind == "sev-snp"
    report[0x50] ^= 1
    with pytest.raises(AttestationError, match="bind"):
        verify_evidence(certificate(Evidence("sev-snp", bytes(report))),
                        EvidencePolicy(allow_unverified_snp=True))
    with pytest.raises(AttestationError, match="no evidence"):
        verify_evidence(certificate(None), EvidencePolicy.development())
    with pytest.raises(AttestationError, match="measurement"):
        report[0x50] ^= 1
        verify_evidence(certificate(Evidence("sev-snp", bytes(report))),
                        EvidencePolicy(allow_unverified_snp=True,
                                       snp_measurements=frozenset({b"\x01" * 48})))


def test_killing_the_evm_during_an_ecall_is_enclave_lost(tmp_path, plain_enclave):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data")
    try:
        avm = Avm(connect_evm(evm.address, DEV, warn=False))
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))

        def spin():
            plain.call(0, OP_WAIT_FLAG, 1, 10**12)

        started = time.monotonic()
        threading.Timer(0.5, evm.process.kill).start()
        error = _in_thread(spin, timeout=30)
        assert isinstance(error, VsgxError) and "lost" in str(error)
        assert time.monotonic() - started < 20
    finally:
        evm.stop()


APP = textwrap.dedent("""
    import sys, time, threading
    sys.path.insert(0, {tests!r})
    from plain_ops import PlainEnclave, OP_WAIT_FLAG
    from vsgx.avm.remote import connect_evm
    from vsgx.channel import EvidencePolicy
    from vsgx.host import Avm, Enclave
    avm = Avm(connect_evm({address!r}, EvidencePolicy(allow_unprotected=True), warn=False))
    plain = PlainEnclave(Enclave.load({enclave!r}, evm=avm))
    threading.Thread(target=plain.call, args=(0, OP_WAIT_FLAG, 1, 10**12), daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)
""")


def test_killing_the_application_frees_its_enclaves(tmp_path, plain_enclave):
    """An EVM with room for two sessions: after an application with a running
    enclave is killed, two new sessions fit again, and a session that was
    open all along keeps working."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--epc-mib", "2")
    try:
        survivor = Avm(connect_evm(evm.address, DEV, warn=False))
        kept = Enclave.load(plain_enclave.signed, evm=survivor)
        app = subprocess.Popen([sys.executable, "-c", APP.format(
            tests=os.path.dirname(__file__), address=evm.address,
            enclave=str(plain_enclave.signed))], stdout=subprocess.PIPE, text=True)
        assert app.stdout.readline().strip() == "ready"
        assert kept.eenter(rdi=0, rsi=3).rsi == 6
        os.kill(app.pid, signal.SIGKILL)
        app.wait()
        survivor.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                sessions = [Avm(connect_evm(evm.address, DEV, warn=False)) for _ in range(2)]
                enclaves = [Enclave.load(plain_enclave.signed, evm=a) for a in sessions]
                break
            except VsgxError:
                assert time.monotonic() < deadline, "the killed session's EPC was not freed"
                time.sleep(0.2)
        assert [e.eenter(rdi=0, rsi=5).rsi for e in enclaves] == [10, 10]
        for session in sessions:
            session.close()
    finally:
        evm.stop()


def test_eight_threads_into_one_enclave_while_four_others_run(build_dir, signing_key,
                                                               plain_enclave, evm_processes):
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    address = evm_processes("unix")
    elf = build_plain(build_dir / "plain8.elf", tcs_count=8)
    sig = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                       load_private_key(signing_key))
    (build_dir / "plain8.elf.sig").write_bytes(sig.data)
    main_avm = Avm(connect_evm(address, DEV, warn=False))
    enclave = Enclave.load(elf, evm=main_avm)
    assert len(enclave.tcs) == 8
    others = [Avm(connect_evm(address, DEV, warn=False)) for _ in range(4)]
    background = [PlainEnclave(Enclave.load(plain_enclave.signed, evm=a)) for a in others]
    stop = threading.Event()
    errors: list[object] = []

    def busy(plain):
        n = 0
        while not stop.is_set():
            n += 1
            result = plain.enclave.eenter(tcs=plain.tcs[n % 4], rdi=0, rsi=n)
            if result.rsi != 2 * n:
                errors.append(("background", n, result.rsi))

    def worker(index):
        tcs = enclave.tcs[index]
        for n in range(1000):
            result = enclave.eenter(tcs=tcs, rdi=0, rsi=n, rdx=index, r8=7)
            if result.kind != "eexit" or result.rsi != 2 * n + index + 7:
                errors.append((index, n, result.kind, result.rsi))

    runners = [threading.Thread(target=busy, args=(p,), daemon=True) for p in background]
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in runners + workers:
        t.start()
    for t in workers:
        t.join(timeout=600)
    stop.set()
    for t in runners:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in workers + runners), "deadlock"
    assert errors == []
    for avm in [main_avm, *others]:
        avm.close()


def test_sealing_survives_an_evm_restart(tmp_path, plain_enclave):
    """Two EVM processes in turn, one data directory: the same seal key."""
    from test_evm_keys import seal_request
    from vsgx.arch import KeyPolicy

    keys = []
    for _ in range(2):
        evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data")
        try:
            avm = Avm(connect_evm(evm.address, DEV, warn=False))
            plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
            keys.append(plain.egetkey(seal_request(KeyPolicy.MRENCLAVE))[1])
            avm.close()
        finally:
            evm.stop()
    assert keys[0] == keys[1]


def test_malformed_requests_get_errors_and_the_session_goes_on(tcp_evm, plain_enclave,
                                                               monkeypatch):
    import vsgx.channel.connection as connection
    from vsgx.channel import RemoteError, Type
    from vsgx.channel.messages import HEADER, LAYOUTS, MAGIC, VERSION

    remote = connect_evm(tcp_evm, DEV, warn=False)

    def careless(message, sole=False):  # an encoder that does not check what it sends
        body = LAYOUTS[message.type].fields.pack(*message.fields) + message.blob
        return HEADER.pack(MAGIC, VERSION, message.type, message.kind, message.request_id,
                           len(body)) + body

    with monkeypatch.context() as patch:
        patch.setattr(connection, "encode", careless)
        with pytest.raises(RemoteError, match="blob"):
            remote.conn.call(Type.ECREATE, (0, bytes(64)), b"short")
    with pytest.raises(RemoteError, match="outside this session"):
        remote.conn.call(Type.EREMOVE, (0x1000,))
    with pytest.raises(RemoteError, match="not an enclave of this session"):
        remote.conn.call(Type.ETRACK, (remote.cpuid().epc_sections[0].base,))
    with pytest.raises(RemoteError, match="not a request"):
        remote.conn.call(Type.PAGE, (1,), bytes(4096))
    avm = Avm(remote)
    with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
        assert enclave.eenter(rdi=0, rsi=4).rsi == 8
    avm.close()


def test_a_session_past_its_elrange_budget_is_refused_and_goes_on(monkeypatch):
    """The EVM maps every ELRANGE in its own address space: one session's
    enclaves may span SESSION_ELRANGE_BYTES in all, and an ECREATE past that
    gets a clear error while the session keeps working."""
    import vsgx.evm.manager as manager
    from vsgx.arch import PageType, Secinfo, Secs, SgxError
    from vsgx.avm import RemoteEvm
    from vsgx.channel import RemoteError
    from vsgx.evm import EnclaveVM
    from vsgx.host.enclave import local_manager

    monkeypatch.setattr(manager, "SESSION_ELRANGE_BYTES", 1 << 30)
    vm = EnclaveVM(root_secret=bytes(32), executor="unicorn")
    remote = RemoteEvm(local_manager(vm).open_local())
    epc = remote.cpuid().epc_sections[0].base
    secinfo = Secinfo.of(PageType.SECS).pack()

    def secs(n: int) -> bytes:
        return Secs(size=1 << 29, baseaddr=(n + 1) << 40, ssaframesize=1, miscselect=1,
                    attributes=6, xfrm=3).pack()

    remote.ecreate(epc, secs(0), secinfo)
    remote.ecreate(epc + 4096, secs(1), secinfo)
    with pytest.raises(RemoteError, match="span 0x40000000 bytes of ELRANGE already"):
        remote.ecreate(epc + 8192, secs(2), secinfo)
    assert remote.eremove(epc) is SgxError.SUCCESS
    remote.ecreate(epc + 8192, secs(2), secinfo)
    remote.close()
