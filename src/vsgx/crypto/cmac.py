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


def report_mac(report_key: bytes, body: bytes | bytearray | memoryview) -> bytes:
    """REPORT.MAC: the CMAC of the REPORT body under the target's report key."""
    return aes_cmac(report_key, body)


def verify_report_mac(report_key: bytes, body: bytes | bytearray | memoryview,
                      mac: bytes) -> bool:
    """Whether ``mac`` is REPORT.MAC of ``body`` (compared in constant time)."""
    return cmac_equal(report_key, body, mac)
