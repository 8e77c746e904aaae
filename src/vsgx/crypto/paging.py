"""EPC paging encryption for EWB / ELDB / ELDU (SDM "EPC and Management of EPC
Pages").

The page is sealed with AES-128-GCM under the EVM's paging key; the nonce is
the page's version (the value EWB stores in the VA slot), which never
repeats under one key; the additional data is a 128-byte header binding the
page's SECINFO, linear address and enclave id and PCMD's reserved bytes, so
that any change to them, the ciphertext, the MAC or the version fails.

The functions take and give buffers without copying where they can: EWB
encrypts straight from the enclave's memory, ELDU decrypts straight into it
(``decrypt_page_into``), and the sealed form (ciphertext followed by the
MAC, what AES-GCM produces) travels as one object.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PAGE = 4096
MAC_SIZE = 16
_HEADER = struct.Struct("<64sQQ40s8x")
# The same header when SECINFO is FLAGS and zeros, and PCMD's reserved
# bytes are zero: what EWB builds (one pack instead of three).
EWB_HEADER = struct.Struct("<Q56xQQ40x8x")
# The 96-bit nonce: the version, zero-extended.
NONCE = struct.Struct("<Q4x")
_EWB_HEADER, _NONCE = EWB_HEADER, NONCE


def paging_header(secinfo: bytes, linaddr: int, enclave_id: int, pcmd_reserved: bytes) -> bytes:
    return _HEADER.pack(secinfo, linaddr, enclave_id, pcmd_reserved)


def ewb_header(secinfo_flags: int, linaddr: int, enclave_id: int) -> bytes:
    """paging_header(SECINFO of ``secinfo_flags``, linaddr, id, zero reserved bytes)."""
    return _EWB_HEADER.pack(secinfo_flags, linaddr, enclave_id)


def _nonce(version: int) -> bytes:
    return _NONCE.pack(version)


def paging_cipher(paging_key: bytes) -> AESGCM:
    return AESGCM(paging_key)


def seal_page(cipher: AESGCM, version: int, header: bytes,
              page: bytes | bytearray | memoryview) -> bytes:
    """Ciphertext followed by the MAC (PAGE + MAC_SIZE bytes) of ``page``."""
    return cipher.encrypt(_NONCE.pack(version), page, header)


def encrypt_page(cipher: AESGCM, version: int, header: bytes,
                 page: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(ciphertext, MAC) of ``page``."""
    sealed = cipher.encrypt(_NONCE.pack(version), page, header)
    return sealed[:-MAC_SIZE], sealed[-MAC_SIZE:]


def decrypt_page(cipher: AESGCM, version: int, header: bytes, ciphertext: bytes | memoryview,
                 mac: bytes) -> bytes | None:
    """The page, or None when the MAC does not verify."""
    try:
        return cipher.decrypt(_NONCE.pack(version), bytes(ciphertext) + mac, header)
    except InvalidTag:
        return None


def decrypt_page_into(cipher: AESGCM, version: int, header: bytes, sealed: bytes | memoryview,
                      out: memoryview | bytearray) -> bool:
    """Decrypt ``sealed`` (ciphertext then MAC) into ``out``; False when the
    MAC does not verify (``out`` then holds no plaintext: it is zeroed)."""
    try:
        cipher.decrypt_into(_NONCE.pack(version), sealed, header, out)
    except InvalidTag:
        out[:] = bytes(len(out))
        return False
    return True


# For loops over many pages (the EVM's EWB and ELDU batches): the cipher's
# own methods and the nonce's packer, so that a page costs no Python call of
# ours. ``decrypt_into`` raises MacMismatch when the MAC does not verify,
# and its output may then hold unverified plaintext: clear it.
MacMismatch = InvalidTag


def page_primitives(cipher: AESGCM) -> tuple[Callable[..., bytes], Callable[..., int],
                                             Callable[[int], bytes]]:
    """(encrypt, decrypt_into, nonce of a version) as seal_page and
    decrypt_page_into use them."""
    return cipher.encrypt, cipher.decrypt_into, _NONCE.pack


def sealed_form(ciphertext: bytes | memoryview, mac: bytes) -> bytes:
    """Ciphertext then MAC, as decrypt_page_into takes it."""
    return bytes(ciphertext) + mac
