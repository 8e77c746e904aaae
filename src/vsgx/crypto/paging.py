"""EPC paging encryption for EWB / ELDB / ELDU (SDM 38.5).

The page is sealed with AES-128-GCM under the EVM's paging key; the nonce is
the page's version (the value EWB stores in the VA slot), which never
repeats under one key; the additional data is a 128-byte header binding the
page's SECINFO, linear address and enclave id and PCMD's reserved bytes, so
that any change to them, the ciphertext, the MAC or the version fails.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_HEADER = struct.Struct("<64sQQ40s8x")
MAC_SIZE = 16


def paging_header(secinfo: bytes, linaddr: int, enclave_id: int, pcmd_reserved: bytes) -> bytes:
    return _HEADER.pack(secinfo, linaddr, enclave_id, pcmd_reserved)


def _nonce(version: int) -> bytes:
    return struct.pack("<Q", version) + bytes(4)


def paging_cipher(paging_key: bytes) -> AESGCM:
    return AESGCM(paging_key)


def encrypt_page(cipher: AESGCM, version: int, header: bytes,
                 page: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(ciphertext, MAC) of ``page``."""
    sealed = cipher.encrypt(_nonce(version), bytes(page), header)
    return sealed[:-MAC_SIZE], sealed[-MAC_SIZE:]


def decrypt_page(cipher: AESGCM, version: int, header: bytes, ciphertext: bytes,
                 mac: bytes) -> bytes | None:
    """The page, or None when the MAC does not verify."""
    try:
        return cipher.decrypt(_nonce(version), ciphertext + mac, header)
    except InvalidTag:
        return None
