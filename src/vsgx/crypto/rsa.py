"""RSA-3072 keys with public exponent 3, as SIGSTRUCT requires (SDM SIGSTRUCT)."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vsgx.arch.constants import RSA_KEY_BITS, SIGSTRUCT_EXPONENT
from vsgx.errors import KeyFileError


def generate_signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=SIGSTRUCT_EXPONENT, key_size=RSA_KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_numbers(numbers: rsa.RSAPublicNumbers, source: str) -> None:
    if numbers.e != SIGSTRUCT_EXPONENT:
        raise KeyFileError(f"{source}: RSA exponent is {numbers.e}, SIGSTRUCT requires 3")
    if numbers.n.bit_length() != RSA_KEY_BITS:
        raise KeyFileError(
            f"{source}: RSA key has {numbers.n.bit_length()} bits, SIGSTRUCT requires 3072")


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    """Load a PEM signing key; refuse anything but RSA-3072 with e = 3."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: not an RSA key")
    _check_numbers(key.public_key().public_numbers(), str(path))
    return key


def load_public_key(path: str | Path) -> rsa.RSAPublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"{path}: not an RSA key")
    _check_numbers(key.public_numbers(), str(path))
    return key
