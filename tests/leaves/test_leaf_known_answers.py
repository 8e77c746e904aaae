"""Known answers from an independent implementation: MRENCLAVE, SIGSTRUCT
and MRSIGNER of a small layout stated here, as the Linux kernel's SGX
selftests compute them.

The expected values were obtained once, outside this repository: a local
harness linked the selftests' own measurement and signing code
(tools/testing/selftests/sgx/sigstruct.c, encl_measure(), Linux 6.12) with
this test's key (tests/data/kat_signing_key.pem, made for this test) and
the layout below (a ``struct encl`` of five segments), and printed
SIGSTRUCT.ENCLAVEHASH, SHA-256 of SIGSTRUCT.MODULUS and SHA-256 of the
whole 1808-byte SIGSTRUCT. Nothing of the kernel's code or output is in
this repository but these three hashes.

The layout, as the selftests' encl_measure() measures it: ECREATE with
SSAFRAMESIZE 1 and SIZE 0x8000 (the smallest power of two of at least the
five pages), then one EADD per page at offsets 0, 0x1000 ... 0x4000 with
SECINFO.FLAGS 0x100 (TCS), 0x205 (REG R X), 0x203, 0x203, 0x203 (REG R W),
each followed by its sixteen EEXTENDs except the last page's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vsgx.arch import Attribute, PageType, Secinfo, Secs, SgxError, Sigstruct, Tcs
from vsgx.crypto import MrEnclave, key_mrsigner, load_private_key, private_key_signer, sign
from vsgx.evm import encls

from bare import BASE, Bare, secinfo

KEY = Path(__file__).resolve().parents[1] / "data" / "kat_signing_key.pem"
SELFTEST_MRENCLAVE = "a8c5cab48e1d6f8f55ba1a39ff8aee5210a764bbe2a860b496b25b9d66ac564b"
SELFTEST_MRSIGNER = "5d8b0dc765db7e52702d501d040b82cf06cd9e4079bfdf3c139bf5051ba475ab"
SELFTEST_SIGSTRUCT_SHA256 = "87203af139aac28f776250468907fe5bab50ddcc83d6ed71887f05c915d95437"

SIZE = 0x8000
FLAGS = (0x100, 0x205, 0x203, 0x203, 0x203)
MEASURED = (True, True, True, True, False)


def pages() -> list[bytes]:
    tcs = Tcs(ossa=0x3000, nssa=1, oentry=0x1000).pack()
    text = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    data = bytes(255 - i % 251 for i in range(4096))
    return [tcs, text, data, bytes(4096), b"\xcc" * 4096]


def test_mrenclave_of_the_stated_layout_built_by_the_leaves_is_the_selftests():
    b = Bare()
    secs = b.page()
    encls.ecreate(b.m, secs, Secs(size=SIZE, baseaddr=BASE, ssaframesize=1,
                                  attributes=int(Attribute.MODE64BIT), xfrm=3).pack(),
                  Secinfo.of(PageType.SECS).pack())
    for n, (content, flags, measured) in enumerate(zip(pages(), FLAGS, MEASURED, strict=True)):
        page = b.page()
        encls.eadd(b.m, page, secs, BASE + n * 4096, content, secinfo(flags))
        if measured:
            encls.measure_pages(b.m, secs, page)
    assert b.enclave(secs).mrenclave_builder.digest().hex() == SELFTEST_MRENCLAVE
    # EINIT takes the selftests' SIGSTRUCT body signed by vsgx; the enclave's
    # MRSIGNER is theirs.
    assert encls.einit(b.m, secs, selftest_body_signed().pack()) is SgxError.SUCCESS
    assert b.enclave(secs).mrsigner.hex() == SELFTEST_MRSIGNER


def test_mrenclave_of_the_stated_layout_from_the_measurement_alone_is_the_selftests():
    mr = MrEnclave()
    mr.ecreate(1, SIZE)
    for n, (content, flags, measured) in enumerate(zip(pages(), FLAGS, MEASURED, strict=True)):
        mr.add_pages(n * 4096, content, flags, measured)
    assert mr.digest().hex() == SELFTEST_MRENCLAVE


def selftest_body_signed() -> Sigstruct:
    """The SIGSTRUCT encl_measure() fills: the fixed headers, EXPONENT 3,
    ATTRIBUTES MODE64BIT, XFRM 3, the measurement, every other field zero."""
    key = load_private_key(KEY)
    body = Sigstruct(attributes=int(Attribute.MODE64BIT), xfrm=3,
                     enclavehash=bytes.fromhex(SELFTEST_MRENCLAVE))
    return sign(body, key.public_key(), private_key_signer(key))


def test_sigstruct_signed_by_vsgx_is_byte_for_byte_the_selftests():
    """RSASSA-PKCS1-v1_5 is deterministic: same key, same body, same bytes
    (signature, modulus and exponent, Q1 and Q2 included)."""
    signed = selftest_body_signed().pack()
    assert len(signed) == Sigstruct.SIZE
    assert hashlib.sha256(signed).hexdigest() == SELFTEST_SIGSTRUCT_SHA256


def test_mrsigner_of_the_key_is_the_selftests():
    assert key_mrsigner(load_private_key(KEY).public_key()).hex() == SELFTEST_MRSIGNER
