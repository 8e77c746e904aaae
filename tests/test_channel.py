"""The channel on its own: addresses, listening on a Unix socket without
harming what stands there, keys and fingerprints, the evidence parser on
crafted and fuzzed certificates (also over real TLS), the AVM's trust
policy, and the deadlines of a connection whose peer falls silent."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import ssl
import stat
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsgx.avm.remote import connect_evm
from vsgx.channel import (
    Address,
    AttestationError,
    ChannelError,
    ClientIdentity,
    Connection,
    EvidencePolicy,
    ServerIdentity,
    TlsStream,
    Type,
    client_context,
    listen,
    parse_address,
    parse_fingerprint,
    reply_to,
)
from vsgx.channel.evidence import (
    EVIDENCE_OID,
    MAX_EVIDENCE,
    SNP_REPORT_SIZE,
    Evidence,
    key_binding,
    verify_evidence,
)
from vsgx.channel.identity import fingerprint, spki
from vsgx.channel.transport import connect
from vsgx.errors import VsgxError

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- addresses ---------------------------------------------------------------
@pytest.mark.parametrize(("text", "family", "target"), [
    ("unix:/run/vsgx/evm.sock", "unix", "/run/vsgx/evm.sock"),
    ("unix:relative.sock", "unix", "relative.sock"),
    ("tcp:127.0.0.1:7000", "tcp", ("127.0.0.1", 7000)),
    ("tcp:evm.example.org:65535", "tcp", ("evm.example.org", 65535)),
    ("tcp::7000", "tcp", ("127.0.0.1", 7000)),
    ("tcp:[::1]:7000", "tcp", ("::1", 7000)),
    ("tcp:[fe80::1%eth0]:1", "tcp", ("fe80::1%eth0", 1)),
    ("vsock:3:5000", "vsock", (3, 5000)),
    ("vsock:1:4294967295", "vsock", (1, 4294967295)),
])
def test_addresses_parse(text, family, target):
    address = parse_address(text)
    assert address == Address(family, target)
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(("text", "why"), [
    ("tcp:127.0.0.1:70000", "port 70000 is outside 1-65535"),
    ("tcp:127.0.0.1:65536", "outside"),
    ("tcp:127.0.0.1:-1", "not a number"),
    ("tcp:127.0.0.1: 80", "not a number"),
    ("tcp:127.0.0.1:+80", "not a number"),
    ("tcp:127.0.0.1:8_0", "not a number"),
    ("tcp:127.0.0.1:\u0668\u0660", "not a number"),
    ("tcp:127.0.0.1:0", "port 0 is outside 1-65535"),
    ("tcp:127.0.0.1", "no port"),
    ("tcp:::1:7000", "in brackets"),
    ("tcp:[::1]7000", "followed by :PORT"),
    ("tcp:[::1:7000", "followed by :PORT"),
    ("tcp:[not-v6]:7000", "not an IPv6 address"),
    ("tcp:bad host:7000", "not a host name"),
    ("tcp:a/b:7000", "not a host name"),
    ("unix:", "empty"),
    ("unix:/tmp/" + "x" * 120, "at most 107"),
    ("unix:/tmp/a\0b", "NUL"),
    ("vsock:1", "no port"),
    ("vsock:x:1", "CID 'x' is not a number"),
    ("vsock:4294967296:1", "outside"),
    ("udp:127.0.0.1:1", "unknown kind"),
    ("/tmp/evm.sock", "no kind"),
    ("", "no kind"),
])
def test_bad_addresses_are_one_line_errors(text, why):
    with pytest.raises(VsgxError, match="bad EVM address") as error:
        parse_address(text)
    assert why in str(error.value) and "\n" not in str(error.value)


def test_port_zero_means_any_port_only_when_listening():
    assert parse_address("tcp:127.0.0.1:0", listening=True).target == ("127.0.0.1", 0)
    with pytest.raises(VsgxError):
        parse_address("tcp:127.0.0.1:0")


def test_ipv6_loopback_listens_and_connects():
    listener = listen(parse_address("tcp:[::1]:0", listening=True))
    try:
        address = listener.address
        assert str(address).startswith("tcp:[::1]:")
        client = connect(parse_address(str(address)))
        client.close()
    finally:
        listener.close()


# -- listening on a Unix socket ------------------------------------------------
def _unix(path) -> Address:
    return parse_address(f"unix:{path}", listening=True)


def test_listen_refuses_a_regular_file_and_keeps_it(tmp_path):
    path = tmp_path / "evm.sock"
    path.write_text("precious")
    with pytest.raises(ChannelError, match="not a socket"):
        listen(_unix(path))
    assert path.read_text() == "precious"


def test_listen_refuses_a_symlink_and_keeps_it(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    path = tmp_path / "evm.sock"
    path.symlink_to(target)
    with pytest.raises(ChannelError, match="symbolic link"):
        listen(_unix(path))
    assert path.is_symlink() and target.read_text() == "precious"
    dangling = tmp_path / "dangling.sock"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ChannelError, match="symbolic link"):
        listen(_unix(dangling))
    assert dangling.is_symlink()


def test_listen_refuses_a_directory(tmp_path):
    with pytest.raises(ChannelError, match="is a directory"):
        listen(_unix(tmp_path))
    assert tmp_path.is_dir()


def test_listen_refuses_a_live_socket_which_keeps_serving(tmp_path):
    path = tmp_path / "evm.sock"
    first = listen(_unix(path))
    try:
        with pytest.raises(ChannelError, match="listening there"):
            listen(_unix(path))
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # still the first listener's
        accepted = first.accept(timeout=10)
        assert accepted is not None
        accepted.close()
        client.close()
    finally:
        first.close()


def test_listen_replaces_a_stale_socket(tmp_path):
    path = tmp_path / "evm.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    listener = listen(_unix(path))
    listener.close()


def test_listen_needs_the_folder(tmp_path):
    with pytest.raises(ChannelError, match="does not exist"):
        listen(_unix(tmp_path / "missing" / "evm.sock"))


def test_the_socket_is_private_from_creation(tmp_path):
    old = os.umask(0)  # what the file gets must not come from the umask
    try:
        listener = listen(_unix(tmp_path / "evm.sock"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "evm.sock").st_mode) == 0o600
    listener.close()


def test_closing_removes_its_own_socket_and_nobody_elses(tmp_path):
    path = tmp_path / "evm.sock"
    listener = listen(_unix(path))
    listener.close()
    assert not path.exists()
    listener = listen(_unix(path))
    os.unlink(path)
    other = listen(_unix(path))  # someone else's socket now stands there
    listener.close()
    assert path.exists()
    other.close()
    assert not path.exists()


def test_connecting_to_a_directory_or_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ChannelError, match="is a directory"):
        connect(parse_address(f"unix:{tmp_path}"))
    with pytest.raises(ChannelError, match="No such file"):
        connect(parse_address(f"unix:{tmp_path / 'none.sock'}"))


# -- keys and fingerprints -------------------------------------------------------
def test_the_avm_key_is_made_0600_on_first_use_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("VSGX_DATA_DIR", str(tmp_path / "data"))
    old = os.umask(0)
    try:
        identity = ClientIdentity.load()
    finally:
        os.umask(old)
    path = tmp_path / "data" / "avm-client-key.pem"
    assert identity.path == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert ClientIdentity.load().fingerprint == identity.fingerprint
    path.chmod(0o644)
    with pytest.raises(VsgxError, match="readable by others"):
        ClientIdentity.load()
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(VsgxError, match="not a PEM private key"):
        ClientIdentity.load()


def test_the_evm_key_persists_so_that_it_can_be_pinned(tmp_path):
    first = ServerIdentity("none", tmp_path / "evm-key.pem")
    second = ServerIdentity("none", tmp_path / "evm-key.pem")
    assert first.fingerprint == second.fingerprint
    assert ServerIdentity("none").fingerprint != first.fingerprint


@pytest.mark.parametrize("text", ["AB" * 32, "sha256:" + "ab" * 32,
                                  ":".join(["ab"] * 32), " " + "ab" * 32 + "\n"])
def test_fingerprints_parse_as_users_write_them(text):
    assert parse_fingerprint(text) == "ab" * 32


@pytest.mark.parametrize("text", ["ab" * 31, "ab" * 33, "zz" * 32, "", "sha1:" + "ab" * 32])
def test_bad_fingerprints_are_one_line_errors(text):
    with pytest.raises(VsgxError, match="not a SHA-256 key fingerprint"):
        parse_fingerprint(text)


# -- crafted certificates ----------------------------------------------------------
def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _length(len(body)) + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_OID = "2.25.231563318843497133508286432813658231978"


def _resign(tbs: bytes, key=KEY) -> bytes:
    """A certificate around edited TBS bytes, signed again (ECDSA)."""
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, _oid("1.2.840.10045.4.3.2"))
    return _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\0" + signature))


def certificate(payload: bytes | None, *, key=KEY, signer=None, extra: bool = False
                ) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "crafted")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if payload is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(EVIDENCE_OID, payload),
                                        critical=False)
    if extra:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier(OTHER_OID), b"{}"), critical=False)
    signer = signer or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def snp_report(public_key_der: bytes, size: int = SNP_REPORT_SIZE) -> bytes:
    report = bytearray(max(size, 0x90))
    report[0x50:0x90] = key_binding(public_key_der)
    return bytes(report[:size])


def evidence_json(**fields) -> bytes:
    return json.dumps(fields).encode()


def _edited_tbs(old: bytes, new: bytes, **kwargs) -> bytes:
    tbs = certificate(evidence_json(kind="none"), **kwargs).tbs_certificate_bytes
    assert old in tbs
    return _resign(tbs.replace(old, new, 1))


KEY_SPKI = spki(KEY.public_key())
# name -> (certificate DER, what the error says, can OpenSSL serve it over TLS)
CRAFTED = {
    "no extension": (lambda: der(certificate(None)), "carries no evidence", True),
    "garbage DER": (lambda: b"\x30\x82\x01\x00garbage" * 3, "not one vsgx can read", False),
    "empty": (lambda: b"", "not one vsgx can read", False),
    "truncated DER": (lambda: der(certificate(evidence_json(kind="none")))[:-7],
                      "not one vsgx can read", False),
    "bad version": (lambda: _edited_tbs(bytes.fromhex("a003020102"),
                                        bytes.fromhex("a003020105")),
                    "not a valid X509 version", True),
    "unknown key algorithm": (lambda: _edited_tbs(_oid("1.2.840.10045.2.1"),
                                                  _oid("1.2.840.10045.2.9")),
                              "Unknown key type", False),
    "wrong key type (DSA)": (lambda: der(certificate(
        evidence_json(kind="none"), key=dsa.generate_private_key(2048), signer=KEY)),
        "key type", False),
    "weak RSA key": (lambda: der(certificate(
        evidence_json(kind="none"), key=rsa.generate_private_key(65537, 1024), signer=KEY)),
        "key type", False),
    "duplicate evidence": (lambda: _edited_tbs(_oid(OTHER_OID), _oid(EVIDENCE_OID.dotted_string),
                                               extra=True),
                           "malformed extensions", True),
    "huge JSON": (lambda: der(certificate(b" " * (MAX_EVIDENCE + 1))), "more than", False),
    "huge JSON that TLS carries": (lambda: der(certificate(
        evidence_json(kind="none", padding="x" * 70000))), "more than", True),
    "deeply nested JSON": (lambda: der(certificate(b"[" * 60000)), "malformed evidence", True),
    "JSON not an object": (lambda: der(certificate(b"[1, 2]")), "not an object", True),
    "invalid UTF-8": (lambda: der(certificate(b'{"kind": "\xff\xfe"}')), "malformed", True),
    "kind missing": (lambda: der(certificate(evidence_json(report=""))), "'kind'", True),
    "kind not a string": (lambda: der(certificate(evidence_json(kind=7))), "'kind'", True),
    "report not hex": (lambda: der(certificate(evidence_json(kind="sev-snp", report="zz"))),
                       "not hex", True),
    "unknown kind": (lambda: der(certificate(evidence_json(kind="tdx\n\x1b[31m"))),
                     "unknown evidence kind", True),
    "empty SNP report": (lambda: der(certificate(evidence_json(kind="sev-snp", report=""))),
                         "0 bytes, not 1184", True),
    "short SNP report": (lambda: der(certificate(evidence_json(
        kind="sev-snp", report=snp_report(KEY_SPKI, SNP_REPORT_SIZE - 1).hex()))),
        "1183 bytes, not 1184", True),
    "long SNP report": (lambda: der(certificate(evidence_json(
        kind="sev-snp", report=snp_report(KEY_SPKI, SNP_REPORT_SIZE + 1).hex()))),
        "1185 bytes, not 1184", True),
    "SNP report for another key": (lambda: der(certificate(evidence_json(
        kind="sev-snp", report=snp_report(b"another key").hex()))), "does not bind", True),
}


def _one_line_refusal(excinfo, expected: str) -> None:
    text = str(excinfo.value)
    assert expected in text, text
    assert "\n" not in text and len(text) < 400 and text.isprintable(), repr(text)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_certificates_are_refused_in_one_line(case):
    make, expected, _ = CRAFTED[case]
    with pytest.raises(AttestationError) as excinfo:
        verify_evidence(make(), EvidencePolicy.development(), local=True)
    _one_line_refusal(excinfo, expected)


class CraftedServer:
    """A TLS 1.3 server on a Unix socket that presents a crafted certificate
    and nothing else."""

    def __init__(self, path, certificate_der: bytes, key=KEY):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        folder = path.parent
        (folder / "cert.pem").write_text(ssl.DER_cert_to_PEM_cert(certificate_der))
        (folder / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        self.listener = listen(_unix(path))
        self.address = f"unix:{path}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            sock = self.listener.accept(timeout=30)
            assert sock is not None
            tls = self.context.wrap_socket(sock, server_side=True)
            tls.settimeout(20)
            tls.recv(1)  # until the client goes away
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("case", sorted(c for c, v in CRAFTED.items() if v[2]))
def test_crafted_certificates_over_real_tls_are_refused_in_one_line(tmp_path, case):
    make, expected, _ = CRAFTED[case]
    server = CraftedServer(tmp_path / "evm.sock", make())
    try:
        with pytest.raises(AttestationError) as excinfo:
            connect_evm(server.address, EvidencePolicy.development(), warn=False, timeout=5)
        _one_line_refusal(excinfo, expected)
    finally:
        server.close()


# -- the AVM's policy ------------------------------------------------------------------
def test_unattested_evms_are_accepted_on_this_machine_only_by_default():
    none = der(certificate(evidence_json(kind="none", report="")))
    assert verify_evidence(none, EvidencePolicy(), local=True).kind == "none"
    with pytest.raises(AttestationError, match="not on this machine") as excinfo:
        verify_evidence(none, EvidencePolicy(), local=False)
    assert fingerprint(KEY_SPKI) in str(excinfo.value)  # what to pin, said in the refusal
    assert verify_evidence(none, EvidencePolicy(allow_unprotected=True)).kind == "none"
    with pytest.raises(AttestationError, match="requires it"):
        verify_evidence(none, EvidencePolicy(allow_unprotected_local=False), local=True)


def test_a_pinned_key_is_accepted_unattested_and_any_other_refused():
    none = der(certificate(evidence_json(kind="none")))
    pinned = EvidencePolicy(pinned_keys=frozenset({fingerprint(KEY_SPKI)}))
    assert verify_evidence(none, pinned, local=False).kind == "none"
    other = der(certificate(evidence_json(kind="none"), key=ec.generate_private_key(
        ec.SECP256R1())))
    with pytest.raises(AttestationError, match="not the pinned one"):
        verify_evidence(other, pinned, local=True)
    with pytest.raises(AttestationError, match="requires SEV-SNP"):
        verify_evidence(none, EvidencePolicy(require_snp=True, pinned_keys=pinned.pinned_keys,
                                             allow_unprotected=True), local=True)


def test_snp_evidence_goes_to_the_policys_verifier():
    chain = b"VCEK ASK ARK"
    report = snp_report(KEY_SPKI)
    good = der(certificate(Evidence("sev-snp", report, chain).encode()))
    seen = []

    def verifier(got_report: bytes, got_chain: bytes, binding: bytes) -> None:
        seen.append((got_report, got_chain, binding))

    policy = EvidencePolicy(require_snp=True, snp_verifier=verifier)
    assert verify_evidence(good, policy).kind == "sev-snp"
    assert seen == [(report, chain, key_binding(KEY_SPKI))]

    def refusing(got_report: bytes, got_chain: bytes, binding: bytes) -> None:
        raise AttestationError("the VCEK signature\ndoes not verify")

    with pytest.raises(AttestationError, match="the VCEK signature does not verify"):
        verify_evidence(good, EvidencePolicy(snp_verifier=refusing))

    def broken(got_report: bytes, got_chain: bytes, binding: bytes) -> None:
        raise KeyError("a verifier's own bug")

    with pytest.raises(AttestationError, match="failed verification"):
        verify_evidence(good, EvidencePolicy(snp_verifier=broken))
    with pytest.raises(AttestationError, match="not verified"):
        verify_evidence(good, EvidencePolicy(require_snp=True))
    # A pinned EVM is trusted as an unattested one would be; its SNP report
    # adds to that. Requiring SNP means requiring a verified report.
    pins = frozenset({fingerprint(KEY_SPKI)})
    assert verify_evidence(good, EvidencePolicy(pinned_keys=pins)).kind == "sev-snp"
    with pytest.raises(AttestationError, match="not verified"):
        verify_evidence(good, EvidencePolicy(pinned_keys=pins, require_snp=True))


def test_other_key_types_that_tls_uses_are_read():
    for key in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate(),
                rsa.generate_private_key(65537, 2048)):
        none = der(certificate(evidence_json(kind="none"), key=key, signer=KEY))
        assert verify_evidence(none, EvidencePolicy(), local=True).kind == "none"


# -- fuzzing the evidence parser -------------------------------------------------------
GOOD = {
    "none": der(certificate(evidence_json(kind="none"))),
    "sev-snp": der(certificate(Evidence("sev-snp", snp_report(KEY_SPKI)).encode())),
}


def _accepts_or_refuses_cleanly(data: bytes) -> None:
    for policy in (EvidencePolicy.development(), EvidencePolicy(require_snp=True)):
        try:
            verify_evidence(data, policy, local=True)
        except AttestationError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400


@FUZZ
@given(which=st.sampled_from(sorted(GOOD)), data=st.data())
def test_fuzz_mutated_certificates(which, data):
    original = GOOD[which]
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255),
                                         st.integers(1, 4)), min_size=1, max_size=4))
    mutated = bytearray(original)
    for position, value, length in edits:
        mutated[position:position + length] = bytes([value]) * length
    cut = data.draw(st.integers(len(original) // 2, len(mutated)))
    _accepts_or_refuses_cleanly(bytes(mutated[:cut]))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@FUZZ
@given(payload=st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["kind", "report", "certificates", "x"]), JSON_VALUES,
                    max_size=4).map(lambda d: json.dumps(d).encode()),
    st.builds(lambda kind, report: json.dumps({"kind": kind, "report": report}).encode(),
              st.sampled_from(["none", "sev-snp", "", "NONE"]),
              st.sampled_from(["", "00", snp_report(KEY_SPKI).hex(),
                               snp_report(KEY_SPKI)[:-1].hex(), "0" * 2368, "g" * 2368]))))
def test_fuzz_evidence_payloads(payload):
    _accepts_or_refuses_cleanly(der(certificate(payload)))


# -- deadlines of a connection ---------------------------------------------------------
def _tls_pair(timeout: float = 1.0) -> tuple[TlsStream, TlsStream]:
    """A client and server TLS stream over a socket pair, handshaken."""
    left, right = socket.socketpair()
    server = TlsStream(right, ServerIdentity("none").context, server_side=True,
                       timeout=timeout, peer="the AVM")
    client = TlsStream(left, client_context(), server_side=False, timeout=timeout,
                       peer="the EVM")
    thread = threading.Thread(target=server.handshake)
    thread.start()
    client.handshake()
    thread.join()
    return client, server


def _bounded(fn, limit: float):
    outcome: list[tuple[BaseException | None, float]] = []
    started = time.monotonic()

    def run() -> None:
        try:
            fn()
            outcome.append((None, time.monotonic() - started))
        except BaseException as exc:
            outcome.append((exc, time.monotonic() - started))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit} s"
    return outcome[0]


def test_a_silent_peer_ends_the_wait_with_a_clear_error():
    client, server = _tls_pair()
    conn = Connection(client, None, name="channel to the EVM", peer="the EVM", deadline=1.0)
    error, _ = _bounded(lambda: conn.call(Type.GET_CPUID), 1.0 + 15)
    assert isinstance(error, ChannelError)
    assert re.search(r"^the EVM stopped answering: nothing received for \d+ s$", str(error))
    server.close()


def test_a_peer_that_stops_reading_ends_the_send_with_a_clear_error():
    client, server = _tls_pair()
    error, _ = _bounded(lambda: client.send(b"x" * (64 << 20)), 1.0 + 15)
    assert isinstance(error, ChannelError) and "the EVM stopped reading" in str(error)
    server.close()


def test_a_long_request_of_a_live_peer_is_not_silence():
    """The peer works on our request for longer than the deadline; its
    reader answers our PINGs meanwhile, so the wait goes on."""
    client, server = _tls_pair()
    release = threading.Event()

    def slow(conn, message):
        release.wait(4.0)  # four deadlines
        return reply_to(message, Type.OK)

    serving = Connection(server, slow, blocking={Type.GET_CPUID}, peer="the AVM", deadline=1.0)
    for _ in range(2):
        threading.Thread(target=serving.serve_forever, daemon=True).start()

    def watchdog():  # the EVM's: a reader role held by a busy handler goes to another thread
        while not release.is_set():
            serving.reclaim_role(0.01)
            time.sleep(0.01)

    threading.Thread(target=watchdog, daemon=True).start()
    conn = Connection(client, None, peer="the EVM", deadline=1.0)
    error, _ = _bounded(lambda: conn.call(Type.GET_CPUID), 4.0 + 15)
    release.set()
    assert error is None
    conn.close()
    serving.close()


def test_a_closing_notice_says_why_the_session_ended():
    client, server = _tls_pair()
    serving = Connection(server, None, peer="the AVM")
    serving.notify(Type.CLOSING, (1,), b"the EVM closed the idle session (no request)\n\x1b")
    conn = Connection(client, None, peer="the EVM")
    error, _ = _bounded(lambda: conn.call(Type.GET_CPUID), 15)
    assert isinstance(error, ChannelError)
    assert str(error) == "the EVM closed the idle session (no request) ?"


def test_descriptors_past_fd_setsize_handshake_send_and_wait(tmp_path):
    """A busy EVM holds more than 1024 descriptors: select() refuses those
    (ValueError), so every wait is a poll."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on descriptors is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    high: list[int] = []

    def lifted(sock: socket.socket) -> socket.socket:
        fd = 1100 + len(high)
        os.dup2(sock.fileno(), fd)
        sock.close()
        high.append(fd)
        return socket.socket(fileno=fd)

    try:
        left, right = (lifted(s) for s in socket.socketpair())
        assert left.fileno() >= 1024 and right.fileno() >= 1024
        server = TlsStream(right, ServerIdentity("none").context, server_side=True,
                           timeout=2.0, peer="the AVM")
        client = TlsStream(left, client_context(), server_side=False, timeout=2.0,
                           peer="the EVM")
        thread = threading.Thread(target=server.handshake)
        thread.start()
        client.handshake()
        thread.join()
        assert not server.pending()
        client.send(b"\x00\x05hello")
        deadline = time.monotonic() + 5
        while not server.pending():
            assert time.monotonic() < deadline, "the frame never became readable"
            time.sleep(0.001)
        frame = server.read_frame(2, lambda header: int.from_bytes(header, "big"), 2.0)
        assert frame.endswith(b"hello")
        client.close()
        server.close()
        listener = listen(_unix(tmp_path / "high.sock"))
        lifted_listener = lifted(listener.sock)
        listener.sock = lifted_listener
        assert listener.accept(timeout=0.01) is None
        listener.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
