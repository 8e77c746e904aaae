"""Cryptography of SGX, on ``cryptography``, in SGX's nouns: MRENCLAVE,
SIGSTRUCT signing and MRSIGNER, key derivation for a KEYREQUEST-shaped set
of dependencies, the REPORT MAC and its check, paging encryption."""

from vsgx.crypto.cmac import report_mac, verify_report_mac
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
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
    "PKCS1_PADDING", "KeyDependencies", "MrEnclave", "attach_signature", "check_sigstruct",
    "data_to_sign", "derive_key", "generate_signing_key", "key_mrsigner", "load_private_key",
    "load_public_key", "mrsigner", "private_key_signer", "report_mac", "sign",
    "verify_report_mac",
]
