"""EGETKEY and EREPORT executed by enclave code (every check of the leaves:
tests/leaves/test_leaf_enclu.py): sealing keys and local attestation."""

from __future__ import annotations

import struct

import pytest

from vsgx.arch import KeyName, KeyPolicy, Keyrequest, Report, SgxError, Targetinfo
from vsgx.host import Enclave

from plain_ops import PlainEnclave

INIT_DEBUG = 0x3


def seal_request(policy: int, isvsvn: int = 0, keyid: bytes = bytes(32),
                 cpusvn: bytes = bytes(16)) -> bytes:
    return Keyrequest(keyname=KeyName.SEAL_KEY, keypolicy=policy, isvsvn=isvsvn, keyid=keyid,
                      cpusvn=cpusvn, attributemask=INIT_DEBUG).pack()


def load_plain(path, avm) -> PlainEnclave:
    return PlainEnclave(Enclave.load(path, evm=avm))


@pytest.fixture
def second_plain(build_dir, plain_enclave, signing_key):
    """The plain enclave signed with another heap size: another MRENCLAVE,
    same signer."""
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    elf = build_dir / "plain-second.elf"
    elf.write_bytes(plain_enclave.unsigned.read_bytes())
    signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 17\n"
                                                         "isvsvn = 3\nisvprodid = 7\n"
                                                         "misc_select = 1\n"),
                          load_private_key(signing_key))
    (build_dir / "plain-second.elf.sig").write_bytes(signed.data)
    return elf


def test_seal_key_is_stable_across_evm_instances_sharing_the_root_secret(
        plain_enclave, make_avm, make_vm):
    keyid = bytes(range(32))
    first = load_plain(plain_enclave.signed, make_avm(make_vm()))
    second = load_plain(plain_enclave.signed, make_avm(make_vm()))
    status_1, key_1 = first.egetkey(seal_request(KeyPolicy.MRENCLAVE, keyid=keyid))
    status_2, key_2 = second.egetkey(seal_request(KeyPolicy.MRENCLAVE, keyid=keyid))
    assert status_1 == status_2 == SgxError.SUCCESS
    assert key_1 == key_2 and key_1 != bytes(16)
    other_platform = load_plain(plain_enclave.signed, make_avm(make_vm(secret=b"\x55" * 32)))
    assert other_platform.egetkey(seal_request(KeyPolicy.MRENCLAVE, keyid=keyid))[1] != key_1
    # The KEYID changes the key (it is the wear-out nonce).
    assert first.egetkey(seal_request(KeyPolicy.MRENCLAVE, keyid=bytes(32)))[1] != key_1


def test_mrenclave_policy_separates_enclaves_mrsigner_policy_shares(
        plain_enclave, second_plain, make_avm):
    avm = make_avm()
    first = load_plain(plain_enclave.signed, avm)
    second = load_plain(second_plain, avm)
    by_enclave = [e.egetkey(seal_request(KeyPolicy.MRENCLAVE))[1] for e in (first, second)]
    by_signer = [e.egetkey(seal_request(KeyPolicy.MRSIGNER))[1] for e in (first, second)]
    assert by_enclave[0] != by_enclave[1]
    assert by_signer[0] == by_signer[1]
    assert by_signer[0] != by_enclave[0]


def test_mrsigner_key_differs_for_another_signer(plain_enclave, other_signing_key, make_avm,
                                                 build_dir):
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    from conftest import PLAIN_CONFIG

    elf = build_dir / "plain-other-signer.elf"
    elf.write_bytes(plain_enclave.unsigned.read_bytes())
    signed = sign_enclave(elf.read_bytes(), parse_config(PLAIN_CONFIG),
                          load_private_key(other_signing_key))
    (build_dir / "plain-other-signer.elf.sig").write_bytes(signed.data)
    avm = make_avm()
    mine = load_plain(plain_enclave.signed, avm)
    theirs = load_plain(elf, avm)
    assert (mine.egetkey(seal_request(KeyPolicy.MRSIGNER))[1]
            != theirs.egetkey(seal_request(KeyPolicy.MRSIGNER))[1])


def test_seal_request_above_the_enclave_isvsvn_fails(plain):
    # The plain enclave is signed with ISVSVN 3.
    assert plain.egetkey(seal_request(KeyPolicy.MRENCLAVE, isvsvn=3))[0] == SgxError.SUCCESS
    status, _key = plain.egetkey(seal_request(KeyPolicy.MRENCLAVE, isvsvn=4))
    assert status == SgxError.INVALID_ISVSVN
    # Older ISVSVNs give older keys (for unsealing data of earlier versions).
    assert (plain.egetkey(seal_request(KeyPolicy.MRENCLAVE, isvsvn=2))[1]
            != plain.egetkey(seal_request(KeyPolicy.MRENCLAVE, isvsvn=3))[1])


def test_cpusvn_above_the_platform_fails(plain):
    status, _ = plain.egetkey(seal_request(KeyPolicy.MRENCLAVE, cpusvn=b"\xff" * 16))
    assert status == SgxError.INVALID_CPUSVN


def test_unknown_keyname_and_missing_attributes(plain):
    assert plain.egetkey(Keyrequest(keyname=9).pack())[0] == SgxError.INVALID_KEYNAME
    for name in (KeyName.PROVISION_KEY, KeyName.PROVISION_SEAL_KEY, KeyName.EINITTOKEN_KEY):
        assert plain.egetkey(Keyrequest(keyname=name).pack())[0] == SgxError.INVALID_ATTRIBUTE


def test_reserved_keypolicy_bits_fault(plain):
    from vsgx.arch import Vector

    request = bytearray(seal_request(KeyPolicy.MRENCLAVE))
    struct.pack_into("<H", request, 2, 1 << 10)
    result, _ = plain.call(0, 10, tail=bytes(request))
    assert result.aex and result.vector == Vector.GP


def targetinfo_of(report: bytes) -> bytes:
    r = Report.unpack(report)
    return Targetinfo(measurement=r.mrenclave, attributes=r.attributes, xfrm=r.xfrm,
                      miscselect=r.miscselect).pack()


def test_local_attestation_between_two_enclaves(plain_enclave, second_plain, make_avm):
    avm = make_avm()
    a = load_plain(plain_enclave.signed, avm)
    b = load_plain(second_plain, avm)
    b_self = b.ereport(bytes(512))
    report = a.ereport(targetinfo_of(b_self), b"hello B".ljust(64, b"\0"))
    parsed = Report.unpack(report)
    assert parsed.reportdata.startswith(b"hello B")
    assert parsed.isvprodid == 7 and parsed.isvsvn == 3
    assert parsed.attributes & 0x1  # INIT
    assert b.verify_report(report) == 0
    # A report for B does not verify in A (another target).
    assert a.verify_report(report) == 1


def test_one_flipped_bit_fails_verification(plain_enclave, second_plain, make_avm):
    """A bit flipped anywhere in the body, KEYID or MAC (enclave code checks it)."""
    avm = make_avm()
    a = load_plain(plain_enclave.signed, avm)
    b = load_plain(second_plain, avm)
    report = a.ereport(targetinfo_of(b.ereport(bytes(512))))
    assert b.verify_report(report) == 0
    for offset in (0, 64, 200, 320, 383, 384, 420, 431):
        flipped = bytearray(report)
        flipped[offset] ^= 0x10
        assert b.verify_report(bytes(flipped)) != 0, offset


def test_report_reflects_the_enclave_identity(plain, plain_enclave):
    from vsgx.crypto import mrsigner
    from vsgx.image import plan_from_bytes

    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    report = Report.unpack(plain.ereport(bytes(512), b"x" * 64))
    assert report.mrenclave == plan.measure()
    assert report.mrsigner == mrsigner(plan.sigstruct.modulus)
    assert report.reportdata == b"x" * 64 and report.miscselect == 1
