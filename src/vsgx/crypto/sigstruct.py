"""SIGSTRUCT signing and verification (SDM "Enclave Signature Structure
(SIGSTRUCT)" and EINIT).

The signature is RSASSA-PKCS1-v1_5 with SHA-256 over SIGSTRUCT bytes 0..127
and 900..1027. MODULUS, SIGNATURE, Q1 and Q2 are stored little-endian, with
  Q1 = floor(S^2 / M),  Q2 = floor((S^3 - Q1 * S * M) / M).
Signing goes through a callback that receives the bytes to sign and returns
a big-endian PKCS#1 signature, so that an HSM or a remote signer fits; the
two-step flow of Intel's ``sgx_sign gendata`` / ``catsig`` is the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from vsgx.arch.constants import (
    RSA_KEY_BYTES,
    SIGSTRUCT_EXPONENT,
    SIGSTRUCT_HEADER,
    SIGSTRUCT_HEADER2,
    SIGSTRUCT_TYPE_PRODUCTION,
    SIGSTRUCT_VENDOR_INTEL,
)
from vsgx.arch.errors import SgxError
from vsgx.arch.sigstruct import Sigstruct, signed_bytes
from vsgx.errors import SignatureError, StructureError

Signer = Callable[[bytes], bytes]


def _le(value: int) -> bytes:
    return value.to_bytes(RSA_KEY_BYTES, "little")


def mrsigner(modulus_le: bytes) -> bytes:
    """MRSIGNER: SHA-256 of the little-endian modulus (SDM EINIT)."""
    return hashlib.sha256(modulus_le).digest()


def key_mrsigner(key: rsa.RSAPublicKey) -> bytes:
    return mrsigner(_le(key.public_numbers().n))


def data_to_sign(sig: Sigstruct) -> bytes:
    return signed_bytes(sig.pack())


def private_key_signer(key: rsa.RSAPrivateKey) -> Signer:
    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return sign


def attach_signature(sig: Sigstruct, modulus: int, signature_be: bytes) -> Sigstruct:
    """Fill MODULUS, EXPONENT, SIGNATURE, Q1 and Q2 from an external signature."""
    if len(signature_be) != RSA_KEY_BYTES:
        raise SignatureError(f"signature is {len(signature_be)} bytes, expected {RSA_KEY_BYTES}")
    s = int.from_bytes(signature_be, "big")
    q1 = s * s // modulus
    q2 = (s * s * s - q1 * s * modulus) // modulus
    signed = replace(sig, modulus=_le(modulus), exponent=SIGSTRUCT_EXPONENT,
                     signature=_le(s), q1=_le(q1), q2=_le(q2))
    reason = check_sigstruct(signed)
    if reason is not SgxError.SUCCESS:
        raise SignatureError(f"the signature does not verify over this SIGSTRUCT ({reason.name})")
    return signed


def sign(sig: Sigstruct, public_key: rsa.RSAPublicKey, signer: Signer) -> Sigstruct:
    """Sign ``sig`` with the callback ``signer`` for ``public_key``."""
    unsigned = replace(sig, modulus=_le(public_key.public_numbers().n),
                       exponent=SIGSTRUCT_EXPONENT)
    return attach_signature(unsigned, public_key.public_numbers().n,
                            signer(data_to_sign(unsigned)))


def header_is_valid(sig: Sigstruct) -> bool:
    """The fixed SIGSTRUCT fields EINIT checks before the signature."""
    return (sig.header == SIGSTRUCT_HEADER
            and sig.type & ~SIGSTRUCT_TYPE_PRODUCTION == 0
            and sig.vendor in (0, SIGSTRUCT_VENDOR_INTEL)
            and sig.header2 == SIGSTRUCT_HEADER2
            and sig.exponent == SIGSTRUCT_EXPONENT)


def check_sigstruct(sig: Sigstruct | bytes) -> SgxError:
    """EINIT's SIGSTRUCT checks: INVALID_SIG_STRUCT for a malformed header or
    a non-zero reserved field, INVALID_SIGNATURE when the RSA signature, Q1 or
    Q2 is wrong. Give the raw bytes where they exist: reserved bytes are part
    of what EINIT checks."""
    if not isinstance(sig, Sigstruct):
        try:
            sig = Sigstruct.unpack(sig)
        except StructureError:
            return SgxError.INVALID_SIG_STRUCT
    if not header_is_valid(sig):
        return SgxError.INVALID_SIG_STRUCT
    n = int.from_bytes(sig.modulus, "little")
    s = int.from_bytes(sig.signature, "little")
    if n.bit_length() != RSA_KEY_BYTES * 8 or s >= n:
        return SgxError.INVALID_SIGNATURE
    q1 = s * s // n
    q2 = (s * s * s - q1 * s * n) // n
    if int.from_bytes(sig.q1, "little") != q1 or int.from_bytes(sig.q2, "little") != q2:
        return SgxError.INVALID_SIGNATURE
    try:
        public = rsa.RSAPublicNumbers(SIGSTRUCT_EXPONENT, n).public_key()
        public.verify(s.to_bytes(RSA_KEY_BYTES, "big"), data_to_sign(sig),
                      padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return SgxError.INVALID_SIGNATURE
    return SgxError.SUCCESS


def parse_sigstruct(data: bytes) -> Sigstruct:
    """Parse SIGSTRUCT bytes for display; check_sigstruct on the raw bytes
    decides whether EINIT would accept them."""
    if len(data) < Sigstruct.SIZE:
        raise StructureError(f"SIGSTRUCT is {len(data)} bytes, expected {Sigstruct.SIZE}")
    return Sigstruct.unpack(data[: Sigstruct.SIZE], strict=False)
