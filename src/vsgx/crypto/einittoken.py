"""EINITTOKEN MAC: AES-128-CMAC under the launch key over bytes 0..191
(SDM "EINIT Token Structure (EINITTOKEN)" and EINIT)."""

from __future__ import annotations

from vsgx.arch.einittoken import EINITTOKEN_MACED_SIZE, Einittoken
from vsgx.crypto.cmac import aes_cmac, cmac_equal


def einittoken_mac(launch_key: bytes, token: Einittoken) -> bytes:
    return aes_cmac(launch_key, token.pack()[:EINITTOKEN_MACED_SIZE])


def einittoken_mac_is_valid(launch_key: bytes, token: Einittoken) -> bool:
    return cmac_equal(launch_key, token.pack()[:EINITTOKEN_MACED_SIZE], token.mac)
