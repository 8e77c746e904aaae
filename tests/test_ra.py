"""The sample's remote attestation: the runtime's own C crypto (X25519,
SHA-256, HMAC, HKDF) against RFC 7748's vectors and `cryptography`; the RA
ECALLs through vsgx.sdk on both executors and over an EVM process — quote,
verify, a secret provisioned only to the verified key, an HMAC proof — and
every tampered message refused by the enclave."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vsgx.crypto.pck import load_certificate
from vsgx.crypto.quote import QuotePolicy, QuoteVerificationError
from vsgx.evm.quoting import ATTESTATION_DIR, ROOT_CA_FILE, quoting_enclave
from vsgx.host.attestation import get_quote, qe_target_info
from vsgx.samples import HELLO_DIR, RUNTIME_DIR, ra
from vsgx.samples.build import RA_SOURCES
from vsgx.sdk import Enclave
from vsgx.sdk import status as st

from conftest import EvmProcess

EDL = HELLO_DIR / "hello.edl"
OCALLS = {"ocall_print": lambda text: None, "ocall_nop": lambda: None,
          "ocall_call_back": lambda x: x}
SECRET = b"the database password: correct horse battery staple"


# -- the runtime's C crypto, built for the host ---------------------------------------
@pytest.fixture(scope="module")
def rt_crypto(tmp_path_factory) -> ctypes.CDLL:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler")
    library = tmp_path_factory.mktemp("rt-crypto") / "librtcrypto.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{RUNTIME_DIR}", "-o", str(library),
                    *(str(RUNTIME_DIR / name) for name in RA_SOURCES)],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.hkdf_sha256.restype = ctypes.c_int
    for name in ("sha256_init", "sha256_update", "sha256_final", "hmac_sha256",
                 "x25519", "x25519_public_key"):
        getattr(lib, name).restype = None
    lib.sha256_update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.hmac_sha256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                ctypes.c_size_t, ctypes.c_void_p]
    lib.hkdf_sha256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_size_t]
    return lib


def c_x25519(lib, scalar: bytes, u: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.x25519(out, scalar, u)
    return out.raw


def c_public_key(lib, private: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.x25519_public_key(out, private)
    return out.raw


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# RFC 7748 section 5.2: (scalar, u-coordinate, output)
RFC7748_VECTORS = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",  # top bit set
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]


def test_x25519_gives_rfc7748s_vectors(rt_crypto):
    for scalar, u, out in RFC7748_VECTORS:
        assert c_x25519(rt_crypto, h(scalar), h(u)) == h(out)


def test_x25519_iterated_as_rfc7748_section_5_2(rt_crypto):
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = c_x25519(rt_crypto, k, u), k
        if i == 1:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_x25519_diffie_hellman_of_rfc7748_section_6_1(rt_crypto):
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_public = c_public_key(rt_crypto, alice)
    bob_public = c_public_key(rt_crypto, bob)
    assert alice_public == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob_public == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert c_x25519(rt_crypto, alice, bob_public) == c_x25519(rt_crypto, bob, alice_public) \
        == shared


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def test_x25519_agrees_with_cryptography(rt_crypto):
    rng = random.Random(7748)
    p = 2**255 - 19
    # Arbitrary u-coordinates too: the top bit set, values in [p, 2^255)
    # that RFC 7748 says to accept unreduced, and the edges 0..2 and p-1.
    specials = [p + i for i in range(19)] + [p - 1, 2**255 - 1] + list(range(3))
    for i in range(300):
        scalar = rng.randbytes(32)
        if i < len(specials):
            u = (specials[i] | (rng.getrandbits(1) << 255)).to_bytes(32, "little")
        elif i % 2:
            u = _raw_public(X25519PrivateKey.generate())
        else:
            u = rng.randbytes(32)
        try:
            theirs = X25519PrivateKey.from_private_bytes(scalar).exchange(
                X25519PublicKey.from_public_bytes(u))
        except ValueError:  # cryptography refuses an all-zero result
            theirs = bytes(32)
        assert c_x25519(rt_crypto, scalar, u) == theirs, (scalar.hex(), u.hex())
        assert c_public_key(rt_crypto, scalar) == _raw_public(
            X25519PrivateKey.from_private_bytes(scalar))


def test_x25519_of_a_low_order_point_is_zero(rt_crypto):
    # u = 0 and u = 1 are of small order: every scalar maps them to 0, which
    # the enclave refuses as a peer key.
    for u in (bytes(32), (1).to_bytes(32, "little")):
        assert c_x25519(rt_crypto, os.urandom(32), u) == bytes(32)


def test_sha256_hmac_and_hkdf_agree_with_python(rt_crypto):
    rng = random.Random(5869)
    context = ctypes.create_string_buffer(8 * 4 + 64 + 8)
    digest = ctypes.create_string_buffer(32)
    for length in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000):
        data = rng.randbytes(length)
        cuts = sorted(rng.sample(range(length + 1), min(3, length + 1)))
        rt_crypto.sha256_init(context)
        start = 0
        for cut in [*cuts, length]:
            rt_crypto.sha256_update(context, data[start:cut], cut - start)
            start = cut
        rt_crypto.sha256_final(context, digest)
        assert digest.raw == hashlib.sha256(data).digest(), length
    mac = ctypes.create_string_buffer(32)
    for key_length in (0, 1, 32, 64, 65, 200):
        key, data = rng.randbytes(key_length), rng.randbytes(rng.randrange(300))
        rt_crypto.hmac_sha256(key, len(key), data, len(data), mac)
        expected = crypto_hmac.HMAC(key, hashes.SHA256())
        expected.update(data)
        assert mac.raw == expected.finalize(), key_length
    for salt, length in ((None, 32), (b"", 1), (rng.randbytes(13), 33), (rng.randbytes(80), 255)):
        ikm, info = rng.randbytes(32), rng.randbytes(rng.randrange(100))
        out = ctypes.create_string_buffer(length)
        salt_length = 0 if salt is None else len(salt)
        assert rt_crypto.hkdf_sha256(salt, salt_length, ikm, len(ikm), info, len(info), out,
                                     length) == 0
        assert out.raw == HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                               info=info).derive(ikm)
    assert rt_crypto.hkdf_sha256(None, 0, b"k", 1, b"", 0, out, 255 * 32 + 1) == -1


# -- the flow through vsgx.sdk -----------------------------------------------------------
class Attested:
    """One RA session of an enclave: its REPORT, the quote, the bound key."""

    def __init__(self, enclave, evm, root, policy=None):
        status, self.report, self.public_key = enclave.ecall_ra_begin(qe_target_info(evm),
                                                                      None, None)
        assert status == 0
        self.quote = get_quote(self.report, evm)
        self.verified, self.key = ra.verify_attestation(
            self.quote, root, policy or QuotePolicy(mrenclave=enclave.mrenclave,
                                                    mrsigner=enclave.mrsigner))


def flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def provision_and_prove(enclave, attested: Attested, secret: bytes = SECRET) -> None:
    message = ra.encrypt_secret(attested.key, secret)
    assert enclave.ecall_ra_provision(*message.ecall_args()) == 0
    challenge = os.urandom(32)
    status, mac = enclave.ecall_ra_use(challenge, None)
    assert status == 0 and ra.check_proof(secret, challenge, mac)
    assert not ra.check_proof(secret, os.urandom(32), mac)


@pytest.fixture
def production(sdk_enclave, make_vm, tmp_path):
    """The sample as a production enclave (DEBUG clear) in an in-process
    EVM with its QE, on each executor: (enclave, avm, root CA)."""
    from vsgx.host import Avm

    vm = make_vm()
    qe = quoting_enclave(vm, tmp_path / "attestation")
    avm = Avm(vm)
    enclave = Enclave.load(sdk_enclave.signed, edl=EDL, evm=avm, debug=False, ocalls=OCALLS)
    yield enclave, avm, qe.root_certificate
    enclave.destroy()
    avm.close()


def test_a_secret_reaches_only_the_verified_enclave_on_each_executor(production):
    enclave, avm, root = production
    attested = Attested(enclave, avm, root)
    assert attested.key == attested.public_key
    assert attested.verified.report_body.reportdata == ra.report_data(attested.key)
    assert attested.report[:384] == attested.quote[48:432]  # the quote is of this report
    status, _mac = enclave.ecall_ra_use(os.urandom(32), None)
    assert status == st.SGX_ERROR_INVALID_STATE  # nothing provisioned yet
    provision_and_prove(enclave, attested)


def test_the_enclave_refuses_every_altered_message(production):
    enclave, avm, root = production
    attested = Attested(enclave, avm, root)
    message = ra.encrypt_secret(attested.key, SECRET)
    other_verifier = ra.encrypt_secret(attested.key, SECRET)  # another verifier key
    altered = [
        replace(message, ciphertext=flip(message.ciphertext, 5)),
        replace(message, tag=flip(message.tag, 15)),
        replace(message, nonce=flip(message.nonce, 3)),
        replace(message, peer_public_key=other_verifier.peer_public_key),
        replace(message, ciphertext=message.ciphertext[:-1]),
    ]
    for bad in altered:
        assert enclave.ecall_ra_provision(*bad.ecall_args()) == st.SGX_ERROR_MAC_MISMATCH
        assert enclave.ecall_ra_use(os.urandom(32), None)[0] == st.SGX_ERROR_INVALID_STATE
    # A peer key of small order gives a zero shared secret: refused as such.
    low_order = replace(message, peer_public_key=bytes(32))
    assert enclave.ecall_ra_provision(*low_order.ecall_args()) == \
        st.SGX_ERROR_INVALID_PARAMETER
    too_long = replace(message, ciphertext=bytes(ra.SECRET_MAX + 1))
    assert enclave.ecall_ra_provision(*too_long.ecall_args()) == st.SGX_ERROR_INVALID_PARAMETER
    # The failures left the session open: the real message still works,
    # once; a replay after it finds the session closed.
    provision_and_prove(enclave, attested)
    assert enclave.ecall_ra_provision(*message.ecall_args()) == st.SGX_ERROR_INVALID_STATE


def test_a_message_for_another_instance_is_refused(production, sdk_enclave):
    """Two instances of one enclave (same MRENCLAVE) have their own keys: a
    secret encrypted to one does not open in the other."""
    enclave, avm, root = production
    twin = Enclave.load(sdk_enclave.signed, edl=EDL, evm=avm, debug=False, ocalls=OCALLS)
    try:
        first, second = Attested(enclave, avm, root), Attested(twin, avm, root)
        assert first.key != second.key
        message = ra.encrypt_secret(first.key, SECRET)
        assert twin.ecall_ra_provision(*message.ecall_args()) == st.SGX_ERROR_MAC_MISMATCH
        provision_and_prove(enclave, first)
    finally:
        twin.destroy()


def test_the_verifier_refuses_what_it_should_not_trust(production, sdk_enclave):
    enclave, avm, root = production
    attested = Attested(enclave, avm, root)
    with pytest.raises(QuoteVerificationError, match=r"MRENCLAVE .* is not the expected"):
        ra.verify_attestation(attested.quote, root, QuotePolicy(mrenclave=bytes(32)))
    with pytest.raises(QuoteVerificationError, match="does not verify"):
        ra.verify_attestation(flip(attested.quote, 300), root,
                              QuotePolicy(mrenclave=enclave.mrenclave))
    # A debug instance of the same enclave: refused by the default policy.
    debug = Enclave.load(sdk_enclave.signed, edl=EDL, evm=avm, debug=True, ocalls=OCALLS)
    try:
        with pytest.raises(QuoteVerificationError, match="debug enclave"):
            Attested(debug, avm, root)
    finally:
        debug.destroy()
    # A report whose REPORTDATA is not the protocol's binding: no key.
    status, other = enclave.ecall_report(qe_target_info(avm), os.urandom(64))
    assert status == 0
    with pytest.raises(ra.RaError, match="does not bind a key"):
        ra.verify_attestation(get_quote(other, avm), root,
                              QuotePolicy(mrenclave=enclave.mrenclave))
    with pytest.raises(ra.RaError, match="1 to 1024 bytes"):
        ra.encrypt_secret(attested.key, b"")
    with pytest.raises(ra.RaError, match="unusable"):
        ra.encrypt_secret(bytes(32), SECRET)


def test_the_ra_bridges_refuse_pointers_into_the_enclave(production):
    from vsgx.sdk.edl import load_edl

    # Appended after the ECALLs tests and programs number by hand.
    interface = load_edl(EDL)
    assert [interface.ecall(name)[0] for name in ("ecall_spawn", "ecall_ra_begin",
                                                  "ecall_ra_provision", "ecall_ra_use")] == \
        [15, 16, 17, 18]
    enclave, _avm, _root = production
    inside = enclave.raw.base + 0x1000
    key = enclave.alloc(32, bytes(32))
    # ms_ecall_ra_use_t: retval, challenge, mac — a challenge inside the enclave.
    ms = enclave.alloc(24, bytes(8) + inside.to_bytes(8, "little") + key.to_bytes(8, "little"))
    assert enclave.call(18, ms) == st.SGX_ERROR_INVALID_PARAMETER
    # ms_ecall_ra_provision_t: a ciphertext pointer inside, and an absurd length.
    fields = [key, key, inside, 16, key]
    ms = enclave.alloc(48, bytes(8) + b"".join(v.to_bytes(8, "little") for v in fields))
    assert enclave.call(17, ms) == st.SGX_ERROR_INVALID_PARAMETER
    fields = [key, key, key, 1 << 40, key]
    enclave.write(ms + 8, b"".join(v.to_bytes(8, "little") for v in fields))
    assert enclave.call(17, ms) == st.SGX_ERROR_INVALID_PARAMETER
    # ms_ecall_ra_begin_t with its REPORT written into the enclave.
    ms = enclave.alloc(32, bytes(8) + key.to_bytes(8, "little") + inside.to_bytes(8, "little")
                       + key.to_bytes(8, "little"))
    assert enclave.call(16, ms) == st.SGX_ERROR_INVALID_PARAMETER
    assert enclave.ecall_add(1, 2) == 3


# -- over an EVM process: quoting through the channel --------------------------------
@pytest.fixture(scope="module")
def evm_process(tmp_path_factory):
    base = tmp_path_factory.mktemp("ra-evm")
    process = EvmProcess(f"unix:{base / 'evm.sock'}", base / "data")
    yield process, base / "data"
    process.stop()


def test_the_flow_with_the_evm_in_another_process(evm_process, sdk_enclave):
    from vsgx.avm.remote import connect_evm
    from vsgx.channel import EvidencePolicy
    from vsgx.host import Avm

    process, data = evm_process
    avm = Avm(connect_evm(process.address, EvidencePolicy(allow_unprotected=True), warn=False))
    enclave = Enclave.load(sdk_enclave.signed, edl=EDL, evm=avm, debug=False, ocalls=OCALLS)
    try:
        target = qe_target_info(avm)  # first, so that the QE has made its root CA
        status, report, public_key = enclave.ecall_ra_begin(target, None, None)
        assert status == 0
        path = Path(data) / ATTESTATION_DIR / ROOT_CA_FILE
        quote = get_quote(report, avm)
        root = load_certificate(path.read_bytes(), str(path))
        _, key = ra.verify_attestation(quote, root, QuotePolicy(
            mrenclave=enclave.mrenclave, mrsigner=enclave.mrsigner))
        assert key == public_key
        message = ra.encrypt_secret(key, SECRET)
        assert enclave.ecall_ra_provision(*replace(
            message, ciphertext=flip(message.ciphertext)).ecall_args()) == \
            st.SGX_ERROR_MAC_MISMATCH
        assert enclave.ecall_ra_provision(*message.ecall_args()) == 0
        challenge = os.urandom(32)
        status, mac = enclave.ecall_ra_use(challenge, None)
        assert status == 0 and ra.check_proof(SECRET, challenge, mac)
    finally:
        enclave.destroy()
        avm.close()
