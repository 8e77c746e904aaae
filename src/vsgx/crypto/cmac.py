"""AES-128-CMAC (NIST SP 800-38B), the MAC the SDM uses for REPORT,
EINITTOKEN and key derivation."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC


def aes_cmac(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    mac = CMAC(algorithms.AES128(key))
    mac.update(bytes(data))
    return mac.finalize()


def cmac_equal(key: bytes, data: bytes | bytearray | memoryview, tag: bytes) -> bool:
    return hmac.compare_digest(aes_cmac(key, data), tag)
