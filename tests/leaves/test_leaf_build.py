"""Building an enclave: every check of ECREATE, EADD, EEXTEND and EINIT, in
the order of the SDM's pseudocode, on a bare machine."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from vsgx.arch import Attribute, Einittoken, PageType, Secinfo, Secs, SgxError, Tcs, Vector
from vsgx.arch.constants import Xfrm
from vsgx.crypto import mrsigner
from vsgx.crypto.einittoken import einittoken_mac
from vsgx.crypto.measurement import eadd_record, ecreate_record, eextend_record
from vsgx.evm import encls
from vsgx.evm.platform import LaunchPolicy

from bare import (
    BASE,
    DEBUG64,
    EPC_PF,
    REG,
    SIZE,
    TCS,
    Bare,
    R,
    W,
    X,
    faults,
    refuses,
    secinfo,
    signing_key,
)

SECS_SECINFO = Secinfo.of(PageType.SECS).pack()
GOOD = Secs(size=SIZE, baseaddr=BASE, ssaframesize=1, miscselect=1, attributes=DEBUG64, xfrm=3)


def ecreate(b: Bare, secs: Secs = GOOD, page: int | None = None, info: bytes = SECS_SECINFO,
            **pageinfo):
    page = b.page() if page is None else page
    return lambda: encls.ecreate(b.m, page, secs.pack(), info, **pageinfo)


# -- ECREATE --------------------------------------------------------------------------
def test_ecreate_of_a_misaligned_epc_page_fails_with_gp():
    b = Bare()
    faults(ecreate(b, page=b.page() + 8), Vector.GP, "secs_page_alignment")


def test_ecreate_outside_the_epc_fails_with_pf():
    faults(ecreate(Bare(), page=0x1000), Vector.PF, "secs_page_not_epc", EPC_PF)


def test_ecreate_with_pageinfo_linaddr_or_secs_set_fails_with_gp():
    b = Bare()
    faults(ecreate(b, linaddr=BASE), Vector.GP, "pageinfo_not_zero")
    faults(ecreate(b, secs_operand=b.m.config.epc_base), Vector.GP, "pageinfo_not_zero")


def test_ecreate_with_reserved_secinfo_bits_fails_with_gp():
    faults(ecreate(Bare(), info=(1 << 40 | 0).to_bytes(8, "little") + bytes(56)),
           Vector.GP, "secinfo_reserved")


def test_ecreate_with_secinfo_not_pt_secs_fails_with_gp():
    faults(ecreate(Bare(), info=secinfo(REG | R)), Vector.GP, "secinfo_page_type")


def test_ecreate_into_a_valid_epc_page_fails_with_pf():
    b = Bare()
    secs = b.secs()
    faults(ecreate(b, page=secs), Vector.PF, "epc_page_in_use", EPC_PF)


def test_ecreate_of_a_short_source_page_fails_with_gp():
    b = Bare()
    page = b.page()
    faults(lambda: encls.ecreate(b.m, page, GOOD.pack()[:100], SECS_SECINFO), Vector.GP,
           "source_size")


@pytest.mark.parametrize("xfrm", [0x1, 0x2, 0x7, 0x0])
def test_ecreate_with_an_illegal_xfrm_fails_with_gp(xfrm):
    # x87 and SSE are required; AVX (0x4) is not supported by this platform.
    faults(ecreate(Bare(), replace(GOOD, xfrm=xfrm)), Vector.GP, "xfrm_illegal")


@pytest.mark.parametrize("xfrm", [0x67, 0xE3, 0x0B, 0x20003])
def test_ecreate_with_xfrm_xsetbv_would_refuse_fails_with_gp(xfrm):
    """Partial AVX-512 state, AVX-512 without AVX, half of MPX, half of AMX."""
    faults(ecreate(Bare(xfrm=0x602FF), replace(GOOD, xfrm=xfrm, ssaframesize=2)), Vector.GP,
           "xfrm_illegal")


def test_ecreate_with_unsupported_miscselect_fails_with_gp():
    faults(ecreate(Bare(), replace(GOOD, miscselect=0x80)), Vector.GP, "miscselect_unsupported")


def test_ecreate_with_an_ssa_frame_too_small_fails_with_gp():
    b = Bare(xfrm=0x2FF)
    faults(ecreate(b, replace(GOOD, ssaframesize=0)), Vector.GP, "ssaframesize_too_small")
    # AVX-512 state (2688 bytes of XSAVE) fits one page with GPRSGX and EXINFO...
    encls.ecreate(b.m, b.page(), replace(GOOD, xfrm=0xE7).pack(), SECS_SECINFO)
    # ...PKRU (bit 9) pushes the XSAVE area past 2688 bytes: still one page.
    encls.ecreate(b.m, b.page(), replace(GOOD, xfrm=0x2E7).pack(), SECS_SECINFO)


def test_ecreate_of_a_32_bit_enclave_fails_with_gp():
    faults(ecreate(Bare(), replace(GOOD, attributes=int(Attribute.DEBUG))), Vector.GP,
           "mode64bit_clear")


def test_ecreate_with_a_non_canonical_base_fails_with_gp():
    faults(ecreate(Bare(), replace(GOOD, baseaddr=1 << 47)), Vector.GP,
           "baseaddr_not_canonical")


def test_ecreate_of_an_enclave_larger_than_cpuid_allows_fails_with_gp():
    b = Bare()
    size = 1 << b.m.config.cpuid().max_enclave_size_64
    faults(ecreate(b, replace(GOOD, size=size, baseaddr=0)), Vector.GP, "size_too_large")


@pytest.mark.parametrize("size", [4096, 3 * 4096, 0])
def test_ecreate_with_a_size_not_a_power_of_two_of_two_pages_fails_with_gp(size):
    faults(ecreate(Bare(), replace(GOOD, size=size)), Vector.GP, "size_not_power_of_two")


def test_ecreate_with_a_base_not_aligned_to_size_fails_with_gp():
    faults(ecreate(Bare(), replace(GOOD, baseaddr=BASE + 4096)), Vector.GP,
           "baseaddr_not_aligned")


@pytest.mark.parametrize("bit", [Attribute.INIT, 1 << 3, Attribute.CET, Attribute.AEXNOTIFY])
def test_ecreate_with_attributes_the_cpu_does_not_allow_fails_with_gp(bit):
    faults(ecreate(Bare(), replace(GOOD, attributes=DEBUG64 | int(bit))), Vector.GP,
           "attributes_unsupported")


def test_ecreate_with_reserved_secs_bytes_set_fails_with_gp():
    b = Bare()
    raw = bytearray(GOOD.pack())
    raw[30] = 1  # 24..47 are reserved
    page = b.page()
    faults(lambda: encls.ecreate(b.m, page, bytes(raw), SECS_SECINFO), Vector.GP,
           "secs_reserved")


def test_ecreate_with_configid_without_kss_fails_with_gp():
    faults(ecreate(Bare(), replace(GOOD, configid=b"\x01" * 64)), Vector.GP,
           "configid_without_kss")
    faults(ecreate(Bare(), replace(GOOD, configsvn=1)), Vector.GP, "configid_without_kss")


def test_ecreate_makes_a_secs_and_starts_the_measurement():
    b = Bare()
    page = b.page()
    encl = encls.ecreate(b.m, page, GOOD.pack(), SECS_SECINFO)
    entry = b.m.epc.entry(page)
    assert entry.valid and entry.pt is PageType.SECS and b.m.epc.secs[page] is encl
    assert (encl.base, encl.size, encl.ssaframesize, encl.attributes) == (BASE, SIZE, 1, DEBUG64)
    assert not encl.initialized and encl.child_count == 0
    assert encl.mrenclave_builder.digest() == hashlib.sha256(ecreate_record(1, SIZE)).digest()


# -- EADD --------------------------------------------------------------------------------
def eadd(b: Bare, secs: int, offset: int = 0, flags: int = REG | R | W, page: int | None = None,
         source: bytes = bytes(4096), linaddr: int | None = None):
    page = b.page() if page is None else page
    address = BASE + offset if linaddr is None else linaddr
    return lambda: encls.eadd(b.m, page, secs, address, source, secinfo(flags))


def test_eadd_of_a_misaligned_epc_page_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, page=b.page() + 64), Vector.GP, "page_alignment")


def test_eadd_at_a_misaligned_linaddr_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, linaddr=BASE + 8), Vector.GP, "linaddr_alignment")


def test_eadd_with_a_secs_operand_outside_the_epc_fails_with_pf():
    b = Bare()
    b.secs()
    faults(eadd(b, 0x1000), Vector.PF, "secs_not_epc", EPC_PF)
    faults(eadd(b, b.m.config.epc_base + 8), Vector.GP, "secs_alignment")


def test_eadd_with_reserved_secinfo_bits_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, flags=REG | R | 1 << 6), Vector.GP, "secinfo_reserved")


@pytest.mark.parametrize("page_type", [PageType.SECS, PageType.VA, PageType.TRIM])
def test_eadd_of_a_page_that_is_not_reg_or_tcs_fails_with_gp(page_type):
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, flags=int(page_type) << 8 | R), Vector.GP, "secinfo_page_type")


def test_eadd_into_a_valid_epc_page_fails_with_pf():
    b = Bare()
    secs = b.secs()
    page = b.add(secs, 0)
    faults(eadd(b, secs, 4096, page=page), Vector.PF, "epc_page_in_use", EPC_PF)


def test_eadd_with_a_secs_operand_that_is_not_a_secs_fails_with_pf():
    b = Bare()
    secs = b.secs()
    child = b.add(secs, 0)
    faults(eadd(b, child, 4096), Vector.PF, "secs_not_secs", EPC_PF)
    faults(eadd(b, b.page() + 4096 * 10, 4096), Vector.PF, "secs_not_secs", EPC_PF)


def test_eadd_of_a_short_source_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, source=bytes(100)), Vector.GP, "source_size")


def test_eadd_of_a_tcs_with_reserved_fields_set_fails_with_gp():
    b = Bare()
    secs = b.secs()
    source = bytearray(Tcs(nssa=1).pack())
    source[100] = 1
    faults(eadd(b, secs, flags=TCS, source=bytes(source)), Vector.GP, "tcs_reserved")


def test_eadd_of_a_writable_page_that_is_not_readable_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, flags=REG | W), Vector.GP, "secinfo_write_without_read")


def test_eadd_outside_elrange_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(eadd(b, secs, SIZE), Vector.GP, "linaddr_outside_elrange")
    faults(eadd(b, secs, linaddr=BASE - 4096), Vector.GP, "linaddr_outside_elrange")


def test_eadd_to_an_initialized_enclave_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    faults(eadd(b, secs, 8 * 4096), Vector.GP, "enclave_initialized")


def test_eadd_at_a_linear_page_that_has_an_epc_page_fails_with_gp():
    b = Bare()
    secs = b.secs()
    b.add(secs, 0)
    faults(eadd(b, secs, 0), Vector.GP, "linear_page_taken")


def test_eadd_of_a_tcs_measures_it_with_its_hidden_fields_cleared_and_no_permissions():
    b = Bare()
    secs = b.secs()
    source = Tcs(state=5, flags=1, ossa=0x3000, cssa=1, nssa=2, aep=0x1234, oentry=0x40).pack()
    page = b.add(secs, 0, flags=TCS | R | W | X, content=source)
    encl = b.enclave(secs)
    stored = Tcs.unpack(encl.page_view(BASE))
    assert (stored.state, stored.flags, stored.cssa, stored.aep) == (0, 0, 0, 0)
    assert (stored.ossa, stored.nssa, stored.oentry) == (0x3000, 2, 0x40)
    entry = b.m.epc.entry(page)
    assert entry.pt is PageType.TCS and not (entry.r or entry.w or entry.x)
    expected = hashlib.sha256(ecreate_record(1, SIZE) + eadd_record(0, TCS)).digest()
    assert encl.mrenclave_builder.digest() == expected
    assert encl.child_count == 1


# -- EEXTEND -----------------------------------------------------------------------------
def test_eextend_with_a_misaligned_secs_fails_with_gp():
    b = Bare()
    secs = b.secs()
    page = b.add(secs, 0)
    faults(lambda: encls.eextend(b.m, secs + 8, page), Vector.GP, "secs_alignment")


def test_eextend_of_a_chunk_not_256_byte_aligned_fails_with_gp():
    b = Bare()
    secs = b.secs()
    page = b.add(secs, 0)
    faults(lambda: encls.eextend(b.m, secs, page + 128), Vector.GP, "chunk_alignment")


def test_eextend_outside_the_epc_fails_with_pf():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eextend(b.m, secs, 0x1000), Vector.PF, "page_not_epc", EPC_PF)


def test_eextend_of_an_invalid_epc_page_fails_with_pf():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eextend(b.m, secs, b.page()), Vector.PF, "page_invalid", EPC_PF)


def test_eextend_of_a_page_that_is_neither_reg_nor_tcs_fails_with_pf():
    b = Bare()
    secs = b.secs()
    va = b.page()
    encls.epa(b.m, va)
    faults(lambda: encls.eextend(b.m, secs, va), Vector.PF, "page_type", EPC_PF)
    faults(lambda: encls.eextend(b.m, secs, secs), Vector.PF, "page_type", EPC_PF)


def test_eextend_of_another_enclaves_page_fails_with_gp():
    b = Bare()
    first = b.secs()
    second = b.secs(baseaddr=BASE + SIZE)
    page = b.add(first, 0)
    faults(lambda: encls.eextend(b.m, second, page), Vector.GP, "page_of_another_secs")


def test_eextend_in_an_initialized_enclave_fails_with_gp():
    b = Bare()
    secs, _ = b.initialized()
    page = b.m.epc.entry(b.m.config.epc_base + 4096).address
    faults(lambda: encls.eextend(b.m, secs, page), Vector.GP, "enclave_initialized")


def test_eextend_measures_the_256_bytes_at_its_offset():
    b = Bare()
    secs = b.secs()
    content = bytes(range(256)) * 16
    page = b.add(secs, 4096, content=content)
    encls.eextend(b.m, secs, page + 512)
    expected = hashlib.sha256(ecreate_record(1, SIZE) + eadd_record(4096, REG | R | W)
                              + eextend_record(4096 + 512) + content[512:768]).digest()
    assert b.enclave(secs).mrenclave_builder.digest() == expected


# -- EINIT --------------------------------------------------------------------------------
def measured(b: Bare, **secs_changes) -> int:
    secs = b.secs(**secs_changes)
    b.add(secs, 0, content=b"\x90" * 4096, measure=True)
    return secs


def test_einit_with_a_misaligned_secs_fails_with_gp():
    b = Bare()
    secs = measured(b)
    sig = b.sigstruct(secs).pack()
    faults(lambda: encls.einit(b.m, secs + 64, sig), Vector.GP, "secs_alignment")


def test_einit_with_a_short_sigstruct_or_token_fails_with_gp():
    b = Bare()
    secs = measured(b)
    sig = b.sigstruct(secs).pack()
    faults(lambda: encls.einit(b.m, secs, sig[:1000]), Vector.GP, "operand_size")
    faults(lambda: encls.einit(b.m, secs, sig, bytes(10)), Vector.GP, "operand_size")


def test_einit_with_a_bad_signature_fails_with_invalid_signature():
    b = Bare()
    secs = measured(b)
    raw = bytearray(b.sigstruct(secs).pack())
    raw[600] ^= 1
    refuses(b.m, lambda: encls.einit(b.m, secs, bytes(raw)), SgxError.INVALID_SIGNATURE,
            "sigstruct")


def test_einit_with_a_malformed_sigstruct_header_fails_with_invalid_sig_struct():
    b = Bare()
    secs = measured(b)
    raw = bytearray(b.sigstruct(secs).pack())
    raw[0] ^= 1
    refuses(b.m, lambda: encls.einit(b.m, secs, bytes(raw)), SgxError.INVALID_SIG_STRUCT,
            "sigstruct")


def test_einit_of_a_page_that_is_not_a_secs_fails_with_pf():
    b = Bare()
    secs = measured(b)
    sig = b.sigstruct(secs).pack()
    child = b.m.config.epc_base + 4096
    faults(lambda: encls.einit(b.m, child, sig), Vector.PF, "secs_not_secs", EPC_PF)


def test_einit_with_isvfamilyid_without_kss_fails_with_invalid_sig_struct():
    b = Bare()
    secs = measured(b)
    refuses(b.m, lambda: b.init(secs, isvfamilyid=b"\x01" * 16), SgxError.INVALID_SIG_STRUCT,
            "isvfamilyid_without_kss")


def test_einit_of_an_initialized_enclave_fails_with_gp():
    b = Bare()
    secs = measured(b)
    sig = b.sigstruct(secs).pack()
    assert encls.einit(b.m, secs, sig) is SgxError.SUCCESS
    faults(lambda: encls.einit(b.m, secs, sig), Vector.GP, "enclave_initialized")


def test_einit_with_another_enclavehash_fails_with_invalid_measurement():
    b = Bare()
    secs = measured(b)
    refuses(b.m, lambda: b.init(secs, enclavehash=b"\x01" * 32), SgxError.INVALID_MEASUREMENT,
            "enclavehash")


def test_einit_of_an_einittoken_key_enclave_not_signed_by_the_launch_signer_fails():
    b = Bare(launch_policy=LaunchPolicy(frozenset()))
    secs = measured(b, attributes=DEBUG64 | int(Attribute.EINITTOKEN_KEY))
    refuses(b.m, lambda: b.init(secs), SgxError.INVALID_ATTRIBUTE,
            "einittoken_key_not_launch_signer")


@pytest.mark.parametrize("changes", [{"attributes": DEBUG64 & ~int(Attribute.DEBUG)},
                                     {"xfrm": int(Xfrm.X87)}])
def test_einit_with_attributes_outside_the_sigstruct_mask_fails_with_invalid_attribute(changes):
    b = Bare()
    secs = measured(b)
    refuses(b.m, lambda: b.init(secs, **changes), SgxError.INVALID_ATTRIBUTE, "attributes_mask")


def test_einit_with_miscselect_outside_the_sigstruct_mask_fails_with_invalid_attribute():
    b = Bare()
    secs = measured(b)
    refuses(b.m, lambda: b.init(secs, miscselect=0), SgxError.INVALID_ATTRIBUTE,
            "miscselect_mask")


def _token_machine(**config):
    b = Bare(launch_policy=LaunchPolicy(frozenset()), **config)
    secs = measured(b)
    sig = b.sigstruct(secs)
    encl = b.enclave(secs)
    le_hash = b.m.config.launch_policy.launch_enclave_signer

    def token(**fields) -> bytes:
        t = Einittoken(valid=1, attributes=encl.attributes, xfrm=encl.xfrm,
                       mrenclave=encl.mrenclave_builder.digest(),
                       mrsigner=mrsigner(sig.modulus), cpusvnle=b.m.config.cpusvn,
                       keyid=b"\x07" * 32)
        t = replace(t, **fields)
        t = replace(t, mac=einittoken_mac(encls.launch_key(b.m, t, le_hash), t))
        return t.pack()

    return b, secs, sig.pack(), token


def test_einit_of_a_signer_outside_the_policy_without_a_token_fails_with_invalid_einittoken():
    b, secs, sig, _ = _token_machine()
    refuses(b.m, lambda: encls.einit(b.m, secs, sig), SgxError.INVALID_EINITTOKEN,
            "token_needed")


def test_einit_with_a_debug_token_for_a_production_enclave_fails_with_invalid_einittoken():
    b = Bare(launch_policy=LaunchPolicy(frozenset()))
    secs = measured(b, attributes=int(Attribute.MODE64BIT))
    sig = b.sigstruct(secs).pack()
    token = Einittoken(valid=1, maskedattributesle=int(Attribute.DEBUG)).pack()
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, token), SgxError.INVALID_EINITTOKEN,
            "token_debug_le")


def test_einit_with_reserved_token_bytes_set_fails_with_invalid_einittoken():
    b, secs, sig, token = _token_machine()
    raw = bytearray(token())
    raw[20] = 1
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, bytes(raw)), SgxError.INVALID_EINITTOKEN,
            "token_reserved")
    raw = bytearray(token())
    raw[0] = 3  # VALID bits 31:1 are reserved
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, bytes(raw)), SgxError.INVALID_EINITTOKEN,
            "token_reserved")


def test_einit_with_a_token_from_a_newer_cpusvn_fails_with_invalid_cpusvn():
    b, secs, sig, token = _token_machine()
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, token(cpusvnle=b"\xff" * 16)),
            SgxError.INVALID_CPUSVN, "token_cpusvn")


def test_einit_with_a_forged_token_mac_fails_with_invalid_einittoken():
    b, secs, sig, token = _token_machine()
    raw = bytearray(token())
    raw[-1] ^= 1
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, bytes(raw)), SgxError.INVALID_EINITTOKEN,
            "token_mac")


@pytest.mark.parametrize("field", ["mrenclave", "mrsigner"])
def test_einit_with_a_token_for_another_enclave_fails_with_invalid_measurement(field):
    b, secs, sig, token = _token_machine()
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, token(**{field: b"\x01" * 32})),
            SgxError.INVALID_MEASUREMENT, "token_identity")


def test_einit_with_a_token_for_other_attributes_fails_with_invalid_attribute():
    b, secs, sig, token = _token_machine()
    refuses(b.m, lambda: encls.einit(b.m, secs, sig, token(xfrm=7)), SgxError.INVALID_ATTRIBUTE,
            "token_attributes")


def test_einit_with_a_valid_token_initialises():
    b, secs, sig, token = _token_machine()
    assert encls.einit(b.m, secs, sig, token()) is SgxError.SUCCESS


def test_einit_sets_init_and_the_enclave_identity():
    b = Bare()
    secs = measured(b)
    digest = b.enclave(secs).mrenclave_builder.digest()
    assert b.init(secs) is SgxError.SUCCESS
    encl = b.enclave(secs)
    assert encl.initialized and encl.mrenclave == digest and encl.mrenclave_builder is None
    assert encl.mrsigner == hashlib.sha256(
        signing_key().public_key().public_numbers().n.to_bytes(384, "little")).digest()
    assert (encl.isvprodid, encl.isvsvn) == (7, 3)


# -- the batch entry points run EADD's checks for a run of REG pages ------------------
def test_eadd_pages_of_a_source_not_one_page_per_epc_page_fails_with_gp():
    b = Bare()
    secs = b.secs()
    pages = [b.page(), b.page()]
    faults(lambda: encls.eadd_pages(b.m, pages, secs, BASE, bytes(4096), secinfo(REG | R | W),
                                    False), Vector.GP, "source_size")


def test_eadd_pages_of_a_tcs_run_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eadd_pages(b.m, [b.page()], secs, BASE, bytes(4096), secinfo(TCS),
                                    False), Vector.GP, "secinfo_page_type")


def test_eadd_pages_naming_one_epc_page_twice_fails_with_gp():
    b = Bare()
    secs = b.secs()
    page = b.page()
    faults(lambda: encls.eadd_pages(b.m, [page, page], secs, BASE, bytes(8192),
                                    secinfo(REG | R | W), False), Vector.GP, "epc_page_twice")


def test_eadd_pages_over_a_linear_page_taken_fails_with_gp_and_adds_nothing():
    b = Bare()
    secs = b.secs()
    b.add(secs, 4096)
    pages = [b.page(), b.page()]
    faults(lambda: encls.eadd_pages(b.m, pages, secs, BASE, bytes(8192), secinfo(REG | R | W),
                                    True), Vector.GP, "linear_page_taken")
    assert not any(b.m.epc.entry(p).valid for p in pages) and b.enclave(secs).child_count == 1


def test_eadd_pages_beyond_elrange_or_after_einit_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eadd_pages(b.m, [b.page(), b.page()], secs, BASE + SIZE - 4096,
                                    bytes(8192), secinfo(REG | R | W), False), Vector.GP,
           "linaddr_outside_elrange")
    done = Bare()
    secs, _ = done.initialized()
    faults(lambda: encls.eadd_pages(done.m, [done.page()], secs, BASE + 8 * 4096,
                                    bytes(4096), secinfo(REG | R | W), False), Vector.GP,
           "enclave_initialized")


def test_eadd_uniform_of_a_pattern_wider_than_32_bits_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eadd_uniform(b.m, secs, BASE, 2, secinfo(REG | R | W), 1 << 32, False),
           Vector.GP, "fill_pattern")


def test_eadd_uniform_with_more_epc_pages_than_pages_fails_with_gp():
    b = Bare()
    secs = b.secs()
    faults(lambda: encls.eadd_uniform(b.m, secs, BASE, 1, secinfo(REG | R | W), 0, False,
                                      [b.page(), b.page()]), Vector.GP, "too_many_epc_pages")


def test_eadd_uniform_past_the_deferred_runs_limit_fails_with_gp_unless_resident():
    """A session cannot fill the EVM's memory with one-page deferred runs
    (they need no EPC page): past MAX_DEFERRED_RUNS an enclave's uniform
    run must come with its EPC pages."""
    b = Bare()
    runs = encls.MAX_DEFERRED_RUNS
    secs = b.secs(size=1 << (runs + 2).bit_length() + 12)
    info = secinfo(REG | R | W)
    for n in range(runs):
        encls.eadd_uniform(b.m, secs, BASE + n * 4096, 1, info, 0, False)
    assert b.enclave(secs).deferred.run_count == runs
    faults(lambda: encls.eadd_uniform(b.m, secs, BASE + runs * 4096, 1, info, 0, False),
           Vector.GP, "deferred_runs_limit")
    faults(lambda: encls.eadd_uniform(b.m, secs, BASE + runs * 4096, 2, info, 0, False,
                                      [b.page()]), Vector.GP, "deferred_runs_limit")
    encls.eadd_uniform(b.m, secs, BASE + runs * 4096, 1, info, 0, False, [b.page()])
    assert b.enclave(secs).child_count == 1


def test_eadd_uniform_measures_as_the_single_eadds_it_stands_for():
    single, run = Bare(), Bare()
    pattern = (0xCCCCCCCC).to_bytes(4, "little") * 1024
    s1, s2 = single.secs(), run.secs()
    for n in range(3):
        single.add(s1, n * 4096, content=pattern, measure=True)
    encls.eadd_uniform(run.m, s2, BASE, 3, secinfo(REG | R | W), 0xCCCCCCCC, True,
                       [run.page()])
    assert single.enclave(s1).mrenclave_builder.digest() == \
        run.enclave(s2).mrenclave_builder.digest()
    assert len(run.enclave(s2).deferred) == 2 and run.enclave(s2).child_count == 1
