"""SGX key derivation (EGETKEY, EREPORT, EINIT's launch key), SDM
EGETKEY: the key-derivation table (vsgx.evm.key_derivation reads it).

The hardware's derivation function is not architectural; vsgx derives every
key as AES-128-CMAC, keyed by the platform's derivation key, over a
fixed-layout encoding of the SDM's key-dependency fields in the SDM's order.
The encoding is injective (fixed sizes), so two requests get the same key
exactly when the SDM says they must.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vsgx.crypto.cmac import aes_cmac

_DEPENDENCIES = struct.Struct("<H16s16sHH16sQQQQ32s32s32s16s16s352sIIH64sHBB")
_DOMAIN = b"vsgx key derivation v1\0"

# The PKCS#1 v1.5 padding of a SHA-256 signature with a 3072-bit key: the
# top 352 bytes of S^3 mod N, equal for every initialised enclave
# (SECS.PADDING; "HARDCODED_PKCS1_5_PADDING" in the SDM).
SHA256_DIGESTINFO = bytes.fromhex("3031300d060960864801650304020105000420")
PKCS1_PADDING = b"\x00\x01" + b"\xff" * 330 + b"\x00" + SHA256_DIGESTINFO
assert len(PKCS1_PADDING) == 352


@dataclass(frozen=True)
class KeyDependencies:
    """The SDM's TMP_KEYDEPENDENCIES, every field defaulting to zero."""

    keyname: int = 0
    isvfamilyid: bytes = bytes(16)
    isvextprodid: bytes = bytes(16)
    isvprodid: int = 0
    isvsvn: int = 0
    ownerepoch: bytes = bytes(16)
    attributes: int = 0
    xfrm: int = 0
    attributemask: int = 0
    xfrmmask: int = 0
    mrenclave: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    keyid: bytes = bytes(32)
    seal_key_fuses: bytes = bytes(16)
    cpusvn: bytes = bytes(16)
    padding: bytes = PKCS1_PADDING
    miscselect: int = 0
    miscmask: int = 0
    keypolicy: int = 0
    configid: bytes = bytes(64)
    configsvn: int = 0
    cet_attributes: int = 0
    cet_attributes_mask: int = 0

    def encode(self) -> bytes:
        return _DEPENDENCIES.pack(
            self.keyname, self.isvfamilyid, self.isvextprodid, self.isvprodid, self.isvsvn,
            self.ownerepoch, self.attributes, self.xfrm, self.attributemask, self.xfrmmask,
            self.mrenclave, self.mrsigner, self.keyid, self.seal_key_fuses, self.cpusvn,
            self.padding, self.miscselect, self.miscmask, self.keypolicy, self.configid,
            self.configsvn, self.cet_attributes, self.cet_attributes_mask)


def derivation_key(root_secret: bytes) -> bytes:
    """The 128-bit CMAC key of the platform's key derivation."""
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None,
                info=b"vsgx derivation key").derive(root_secret)


def platform_value(root_secret: bytes, name: str, length: int = 16) -> bytes:
    """A per-platform constant (seal fuses, owner epoch...) from the root secret."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=b"vsgx platform " + name.encode()).derive(root_secret)


def derive_key(key: bytes, dependencies: KeyDependencies) -> bytes:
    """A 128-bit SGX key for ``dependencies`` under derivation key ``key``."""
    return aes_cmac(key, _DOMAIN + dependencies.encode())
