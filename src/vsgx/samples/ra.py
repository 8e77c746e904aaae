"""The sample enclave's remote attestation, verifier side (the enclave side
is ``hello/ra.c``): a secret reaches an enclave only after a quote proves
which enclave holds the key it is encrypted to.

1. The host hands the QE's TARGETINFO (``sgx_qe_get_target_info``) to
   ``ecall_ra_begin``. The enclave makes an X25519 key pair from RDRAND and
   EREPORTs to the QE with REPORTDATA = public key (32 bytes) ||
   SHA-256(``LABEL``) (32 bytes); the host has the report quoted
   (``sgx_qe_get_quote``).
2. The verifier checks the quote (``verify_quote``: PCK chain to the root CA
   it trusts, QE, signature, and its policy on MRENCLAVE, MRSIGNER, debug)
   and takes the key from the verified REPORTDATA (``bound_public_key``) —
   never from the host.
3. ``encrypt_secret``: an ephemeral X25519 key of the verifier's; the shared
   secret through HKDF-SHA256 (no salt, info = ``LABEL`` || " provisioning"
   || enclave key || verifier key) into 32 bytes: an AES-128-CTR key and an
   AES-CMAC key; ciphertext = AES-128-CTR(key, 16-byte nonce as the counter
   block, secret), tag = AES-CMAC(nonce || ciphertext). The host passes
   these to ``ecall_ra_provision``; the enclave checks the tag before it
   decrypts, and a good message ends the session (its key pair is wiped).
4. ``ecall_ra_use(challenge)`` returns HMAC-SHA256(secret, challenge): the
   verifier checks it with ``check_proof``.

Every primitive here is ``cryptography``'s; the enclave's are the runtime's
own C (x25519.c, hmac_sha256.c, aes_cmac.c).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives import hmac as hmac_sha256
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vsgx.errors import VsgxError

LABEL = b"vsgx ra demo v1"
KEYS_INFO = LABEL + b" provisioning"
KEY_SIZE = 32
NONCE_SIZE = 16
TAG_SIZE = 16
SECRET_MAX = 1024  # RA_SECRET_MAX in ra.c


class RaError(VsgxError):
    """The attestation evidence does not bind a key, or a message is malformed."""


def report_data(public_key: bytes) -> bytes:
    """The REPORTDATA that binds an enclave's X25519 public key."""
    if len(public_key) != KEY_SIZE:
        raise RaError(f"an X25519 public key is {KEY_SIZE} bytes, not {len(public_key)}")
    return public_key + hashlib.sha256(LABEL).digest()


def bound_public_key(verified: Any) -> bytes:
    """The enclave's X25519 key from a quote ``verify_quote`` accepted;
    RaError if its REPORTDATA is not this protocol's binding."""
    data = verified.report_body.reportdata
    if not hmac.compare_digest(data[KEY_SIZE:], hashlib.sha256(LABEL).digest()):
        raise RaError(f"the quote's REPORTDATA does not bind a key for {LABEL.decode()} "
                      "(its second half is not SHA-256 of the label)")
    return bytes(data[:KEY_SIZE])


def verify_attestation(quote: bytes, root_ca: Any, policy: Any, *, now: Any = None
                       ) -> tuple[Any, bytes]:
    """``verify_quote`` to ``root_ca`` under ``policy``, then the key binding:
    (the VerifiedQuote, the enclave's X25519 public key). Raises
    QuoteVerificationError or RaError with a one-line reason."""
    from vsgx.crypto.quote import verify_quote

    verified = verify_quote(quote, root_ca, policy, now=now)
    return verified, bound_public_key(verified)


@dataclass(frozen=True)
class Provisioning:
    """A secret encrypted to one enclave key: what ``ecall_ra_provision`` takes."""

    peer_public_key: bytes  # the verifier's X25519 key
    nonce: bytes
    ciphertext: bytes
    tag: bytes

    def ecall_args(self) -> tuple[bytes, bytes, bytes, int, bytes]:
        return self.peer_public_key, self.nonce, self.ciphertext, len(self.ciphertext), self.tag


def _keys(shared: bytes, enclave_key: bytes, verifier_key: bytes) -> tuple[bytes, bytes]:
    keys = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=KEYS_INFO + enclave_key + verifier_key).derive(shared)
    return keys[:16], keys[16:]


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encrypt_secret(enclave_key: bytes, secret: bytes, *,
                   private_key: X25519PrivateKey | None = None,
                   nonce: bytes | None = None) -> Provisioning:
    """Encrypt ``secret`` so that only the holder of ``enclave_key``'s
    private half can read it (a fresh verifier key and nonce unless given)."""
    if not 1 <= len(secret) <= SECRET_MAX:
        raise RaError(f"the enclave takes a secret of 1 to {SECRET_MAX} bytes, not "
                      f"{len(secret)}")
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise RaError(f"the nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    private_key = private_key or X25519PrivateKey.generate()
    verifier_key = _raw(private_key.public_key())
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(enclave_key))
    except ValueError as exc:  # a malformed key, or one of small order
        raise RaError(f"the enclave's key is unusable for X25519 ({exc})") from None
    encryption_key, mac_key = _keys(shared, enclave_key, verifier_key)
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CTR(nonce)).encryptor()
    ciphertext = encryptor.update(secret) + encryptor.finalize()
    tag = cmac.CMAC(algorithms.AES(mac_key))
    tag.update(nonce + ciphertext)
    return Provisioning(verifier_key, nonce, ciphertext, tag.finalize())


def proof(secret: bytes, challenge: bytes) -> bytes:
    """What ``ecall_ra_use(challenge)`` returns from an enclave holding ``secret``."""
    mac = hmac_sha256.HMAC(secret, hashes.SHA256())
    mac.update(challenge)
    return mac.finalize()


def check_proof(secret: bytes, challenge: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(proof(secret, challenge), bytes(mac))
