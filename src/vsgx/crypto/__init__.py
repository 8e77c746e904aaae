"""Cryptography of SGX, on ``cryptography``: MRENCLAVE, SIGSTRUCT, CMAC-based
MACs and key derivation, paging encryption."""

from vsgx.crypto.measurement import MrEnclave
from vsgx.crypto.rsa import generate_signing_key, load_private_key, load_public_key
from vsgx.crypto.sigstruct import (
    attach_signature,
    check_sigstruct,
    data_to_sign,
    key_mrsigner,
    mrsigner,
    private_key_signer,
    sign,
)

__all__ = [
    "MrEnclave", "attach_signature", "check_sigstruct", "data_to_sign", "generate_signing_key",
    "key_mrsigner", "load_private_key", "load_public_key", "mrsigner", "private_key_signer",
    "sign",
]
