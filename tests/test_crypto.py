"""MRENCLAVE records and SIGSTRUCT signatures (SDM ECREATE/EADD/EEXTEND,
SIGSTRUCT)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from vsgx.arch import SgxError, Sigstruct
from vsgx.arch.sigstruct import SIGNED_RANGES
from vsgx.crypto import (
    MrEnclave,
    attach_signature,
    check_sigstruct,
    data_to_sign,
    generate_signing_key,
    key_mrsigner,
    mrsigner,
    private_key_signer,
    sign,
)
from vsgx.crypto.cmac import aes_cmac
from vsgx.errors import KeyFileError, SignatureError


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


def hand_mrenclave(ssaframesize: int, size: int,
                   pages: list[tuple[int, int, bytes, bool]]) -> bytes:
    """MRENCLAVE assembled record by record, straight from the SDM's text."""
    h = hashlib.sha256()
    h.update(b"ECREATE\0" + struct.pack("<I", ssaframesize) + struct.pack("<Q", size) + bytes(44))
    for offset, flags, content, measured in pages:
        h.update(b"EADD\0\0\0\0" + struct.pack("<Q", offset) + struct.pack("<Q", flags)
                 + bytes(40))
        if measured:
            for chunk in range(0, 4096, 256):
                h.update(b"EEXTEND\0" + struct.pack("<Q", offset + chunk) + bytes(48))
                h.update(content[chunk:chunk + 256])
    return h.digest()


def test_builder_equals_hand_assembled_records():
    page_a = bytes(range(256)) * 16
    page_b = b"\xcc" * 4096
    pages = [(0, 0x100, page_a, True), (0x1000, 0x205, page_b, True),
             (0x2000, 0x203, bytes(4096), False)]
    mr = MrEnclave()
    mr.ecreate(1, 0x8000)
    for offset, flags, content, measured in pages:
        mr.eadd(offset, flags)
        if measured:
            for chunk in range(0, 4096, 256):
                mr.eextend(offset + chunk, content[chunk:chunk + 256])
    assert mr.digest() == hand_mrenclave(1, 0x8000, pages)


def test_bulk_paths_equal_single_records():
    data = bytes((i * 7) & 0xFF for i in range(4096 * 300))
    bulk = MrEnclave()
    bulk.ecreate(2, 1 << 24)
    bulk.add_pages(0x10000, data, 0x203, measured=True)
    bulk.add_uniform_pages(0x200000, 700, b"\xcc\xcc\xcc\xcc" * 1024, 0x203, measured=True)
    bulk.add_uniform_pages(0x800000, 1000, bytes(4096), 0x203, measured=False)
    pages = [(0x10000 + i * 4096, 0x203, data[i * 4096:(i + 1) * 4096], True) for i in range(300)]
    pages += [(0x200000 + i * 4096, 0x203, b"\xcc" * 4096, True) for i in range(700)]
    pages += [(0x800000 + i * 4096, 0x203, b"", False) for i in range(1000)]
    # batches of a page or two take another path: the same records
    at = 0xC00000
    for count in (1, 2, 3):
        bulk.add_pages(at, data[:count * 4096], 0x201, measured=True)
        pages += [(at + i * 4096, 0x201, data[i * 4096:(i + 1) * 4096], True)
                  for i in range(count)]
        at += count * 4096
        bulk.add_uniform_pages(at, count, b"\x5a" * 4096, 0x203, measured=True)
        pages += [(at + i * 4096, 0x203, b"\x5a" * 4096, True) for i in range(count)]
        at += count * 4096
        bulk.add_uniform_pages(at, count, bytes(4096), 0x203, measured=False)
        pages += [(at + i * 4096, 0x203, b"", False) for i in range(count)]
        at += count * 4096
    assert bulk.digest() == hand_mrenclave(2, 1 << 24, pages)


def test_eextend_chunks_equals_one_eextend_per_chunk():
    data = bytes((i * 13 + 5) & 0xFF for i in range(4096))
    for count in (0, 1, 15, 16):
        packed, single = MrEnclave(), MrEnclave()
        packed.eextend_chunks(0x7100, data[:count * 256])
        for n in range(count):
            single.eextend(0x7100 + n * 256, data[n * 256:(n + 1) * 256])
        assert packed.digest() == single.digest()
    with pytest.raises(ValueError):
        MrEnclave().eextend_chunks(0, data[:300])
    with pytest.raises(ValueError):
        MrEnclave().eextend_chunks(0, data + data[:256])


def test_one_byte_change_to_a_measured_page_changes_mrenclave():
    page = bytearray(4096)
    first = MrEnclave()
    first.add_pages(0, bytes(page), 0x203, True)
    page[4000] = 1
    second = MrEnclave()
    second.add_pages(0, bytes(page), 0x203, True)
    assert first.digest() != second.digest()


def test_sign_and_verify(key):
    sig = sign(Sigstruct(enclavehash=b"\x11" * 32, isvprodid=5), key.public_key(),
               private_key_signer(key))
    assert check_sigstruct(sig) is SgxError.SUCCESS
    assert int.from_bytes(sig.modulus, "little") == key.public_key().public_numbers().n
    assert mrsigner(sig.modulus) == hashlib.sha256(sig.modulus).digest() == key_mrsigner(
        key.public_key())
    s = int.from_bytes(sig.signature, "little")
    n = int.from_bytes(sig.modulus, "little")
    assert int.from_bytes(sig.q1, "little") == s * s // n
    assert int.from_bytes(sig.q2, "little") == (s ** 3 - (s * s // n) * s * n) // n


def test_signature_is_pkcs1_sha256_over_the_two_ranges(key):
    sig = sign(Sigstruct(enclavehash=b"\x22" * 32), key.public_key(), private_key_signer(key))
    raw = sig.pack()
    signed = b"".join(raw[lo:hi] for lo, hi in SIGNED_RANGES)
    assert signed == data_to_sign(sig) and len(signed) == 256
    key.public_key().verify(int.from_bytes(sig.signature, "little").to_bytes(384, "big"), signed,
                            padding.PKCS1v15(), hashes.SHA256())


def test_every_signed_byte_is_covered(key):
    sig = sign(Sigstruct(enclavehash=b"\x33" * 32), key.public_key(), private_key_signer(key))
    raw = sig.pack()
    for lo, hi in SIGNED_RANGES:
        for offset in range(lo, hi):
            flipped = bytearray(raw)
            flipped[offset] ^= 0x01
            result = check_sigstruct(bytes(flipped))
            assert result is not SgxError.SUCCESS, offset


def test_signature_modulus_and_q_tampering_fail(key):
    sig = sign(Sigstruct(enclavehash=b"\x44" * 32), key.public_key(), private_key_signer(key))
    for field, offset in (("signature", 0), ("modulus", 5), ("q1", 100), ("q2", 383)):
        value = bytearray(getattr(sig, field))
        value[offset] ^= 0x80
        from dataclasses import replace

        assert check_sigstruct(replace(sig, **{field: bytes(value)})) is not SgxError.SUCCESS


def test_malformed_header_is_invalid_sig_struct(key):
    from dataclasses import replace

    sig = sign(Sigstruct(enclavehash=b"\x55" * 32), key.public_key(), private_key_signer(key))
    assert check_sigstruct(replace(sig, vendor=0x1234)) is SgxError.INVALID_SIG_STRUCT
    assert check_sigstruct(replace(sig, exponent=65537)) is SgxError.INVALID_SIG_STRUCT


def test_two_step_signing(key):
    unsigned = Sigstruct(enclavehash=b"\x66" * 32, modulus=key.public_key().public_numbers().n
                         .to_bytes(384, "little"))
    external = key.sign(data_to_sign(unsigned), padding.PKCS1v15(), hashes.SHA256())
    signed = attach_signature(unsigned, key.public_key().public_numbers().n, external)
    assert check_sigstruct(signed) is SgxError.SUCCESS
    with pytest.raises(SignatureError):
        attach_signature(unsigned, key.public_key().public_numbers().n, bytes(384))


def test_key_with_wrong_exponent_or_size_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from vsgx.crypto import load_private_key

    for exponent, bits, message in ((65537, 3072, "exponent"), (3, 2048, "3072")):
        k = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
        path = tmp_path / f"k{exponent}-{bits}.pem"
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        with pytest.raises(KeyFileError, match=message):
            load_private_key(path)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="PEM"):
        load_private_key(tmp_path / "junk.pem")


def test_aes_cmac_matches_rfc4493_vectors():
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert aes_cmac(key, b"").hex() == "bb1d6929e95937287fa37d129b756746"
    message = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    assert aes_cmac(key, message).hex() == "070a16b46b4d4144f79bdd9dd04a287c"
