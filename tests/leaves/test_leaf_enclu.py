"""The ENCLU leaves an enclave executes without an executor's help:
EREPORT, EGETKEY (and the key-derivation table), EACCEPT, EMODPE and
EACCEPTCOPY — every check in the SDM's order, on a bare machine. Operands
are written straight into the enclave's memory, as enclave code would."""

from __future__ import annotations

import pytest

from vsgx.arch import (
    Attribute,
    KeyName,
    KeyPolicy,
    Keyrequest,
    PfErrorCode,
    Report,
    SgxError,
    Targetinfo,
    Tcs,
    Vector,
)
from vsgx.arch.report import REPORT_BODY_SIZE
from vsgx.crypto import verify_report_mac
from vsgx.evm import encls, enclu
from vsgx.evm.key_derivation import KEY_DERIVATION, key_dependencies

from bare import (
    BASE,
    EPCM_PF,
    MODIFIED,
    NOT_PRESENT,
    PENDING,
    PR,
    REG,
    SIZE,
    TCS,
    TRIM,
    Bare,
    R,
    W,
    X,
    faults,
    refuses,
    secinfo,
)

DATA, OUT, READONLY, SPARE, HOLE = 0, 4096, 2 * 4096, 3 * 4096, 10 * 4096
WRITE_PF = EPCM_PF | int(PfErrorCode.W)


class Inside:
    """An initialized enclave: RW pages at 0, 1 and 3, a read-only page at 2."""

    def __init__(self, attributes: int = 0, **config):
        self.b = b = Bare(**config)
        self.secs = b.secs(attributes=int(Attribute.MODE64BIT | Attribute.DEBUG) | attributes)
        for offset in (DATA, OUT, READONLY, SPARE):
            b.add(self.secs, offset, REG | R if offset == READONLY else REG | R | W)
        self.tcs_page = b.add(self.secs, 4 * 4096, TCS,
                              Tcs(nssa=1, ossa=SPARE).pack())
        assert b.init(self.secs, attributemask=0, isvsvn=3) is SgxError.SUCCESS
        self.m, self.encl = b.m, b.enclave(self.secs)

    def put(self, offset: int, data: bytes) -> int:
        self.encl.memory.view[offset:offset + len(data)] = data
        return BASE + offset

    def get(self, offset: int, size: int) -> bytes:
        return bytes(self.encl.memory.view[offset:offset + size])

    def egetkey(self, request: Keyrequest, out: int = OUT) -> tuple[SgxError, bytes]:
        address = self.put(DATA, request.pack())
        status = enclu.egetkey(self.m, self.encl, address, BASE + out)
        return status, self.get(out, 16)


def seal(policy: int = KeyPolicy.MRENCLAVE, **fields) -> Keyrequest:
    return Keyrequest(keyname=KeyName.SEAL_KEY, keypolicy=policy, **fields)


# -- EREPORT ------------------------------------------------------------------------------
def ereport(e: Inside, target: int = BASE + DATA, data: int = BASE + OUT,
            out: int = BASE + SPARE):
    return lambda: enclu.ereport(e.m, e.encl, target, data, out)


def test_ereport_with_a_misaligned_targetinfo_fails_with_gp():
    faults(ereport(Inside(), target=BASE + 64), Vector.GP, "targetinfo_alignment")


def test_ereport_with_targetinfo_outside_elrange_fails_with_gp():
    faults(ereport(Inside(), target=BASE + SIZE), Vector.GP, "targetinfo_outside_elrange")


def test_ereport_with_targetinfo_on_a_missing_page_fails_with_pf():
    fault = faults(ereport(Inside(), target=BASE + HOLE), Vector.PF, "targetinfo_not_present",
                   NOT_PRESENT)
    assert fault.address == BASE + HOLE


def test_ereport_with_targetinfo_on_a_tcs_page_fails_with_an_epcm_pf():
    faults(ereport(Inside(), target=BASE + 4 * 4096), Vector.PF, "targetinfo_epcm", EPCM_PF)


def test_ereport_with_misaligned_reportdata_fails_with_gp():
    faults(ereport(Inside(), data=BASE + OUT + 64), Vector.GP, "reportdata_alignment")


def test_ereport_into_a_read_only_page_fails_with_a_write_pf():
    faults(ereport(Inside(), out=BASE + READONLY), Vector.PF, "report_epcm", WRITE_PF)


def test_ereport_with_a_misaligned_output_fails_with_gp():
    faults(ereport(Inside(), out=BASE + SPARE + 16), Vector.GP, "report_alignment")


def test_ereport_with_reserved_targetinfo_bytes_set_fails_with_gp():
    e = Inside()
    raw = bytearray(Targetinfo().pack())
    raw[200] = 1
    e.put(DATA, bytes(raw))
    faults(ereport(e), Vector.GP, "targetinfo_reserved")


def test_ereport_reports_the_enclave_and_macs_it_with_the_targets_report_key():
    e = Inside()
    target = Targetinfo(measurement=e.encl.mrenclave, attributes=e.encl.attributes,
                        xfrm=e.encl.xfrm, miscselect=e.encl.miscselect)
    e.put(DATA, target.pack())
    e.put(OUT, b"d" * 64)
    ereport(e)()
    raw = e.get(SPARE, Report.SIZE)
    report = Report.unpack(raw)
    assert (report.mrenclave, report.mrsigner) == (e.encl.mrenclave, e.encl.mrsigner)
    assert report.reportdata == b"d" * 64 and report.isvsvn == 3
    assert report.attributes == e.encl.attributes and report.cpusvn == e.m.config.cpusvn
    status, key = e.egetkey(Keyrequest(keyname=KeyName.REPORT_KEY, keyid=report.keyid))
    assert status is SgxError.SUCCESS
    assert verify_report_mac(key, raw[:REPORT_BODY_SIZE], report.mac)
    flipped = bytearray(raw[:REPORT_BODY_SIZE])
    flipped[320] ^= 1
    assert not verify_report_mac(key, bytes(flipped), report.mac)


# -- EGETKEY ------------------------------------------------------------------------------
def test_egetkey_with_a_misaligned_keyrequest_fails_with_gp():
    e = Inside()
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE + 256, BASE + OUT), Vector.GP,
           "keyrequest_alignment")


def test_egetkey_with_a_keyrequest_outside_elrange_or_unmapped_faults():
    e = Inside()
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE - 4096, BASE + OUT), Vector.GP,
           "keyrequest_outside_elrange")
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE + HOLE, BASE + OUT), Vector.PF,
           "keyrequest_not_present", NOT_PRESENT)


def test_egetkey_with_a_misaligned_output_fails_with_gp():
    e = Inside()
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE, BASE + OUT + 8), Vector.GP,
           "outputdata_alignment")


def test_egetkey_into_a_read_only_page_fails_with_a_write_pf():
    e = Inside()
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE, BASE + READONLY), Vector.PF,
           "outputdata_epcm", WRITE_PF)


@pytest.mark.parametrize("where", ["reserved_byte", "keypolicy_bit"])
def test_egetkey_with_reserved_keyrequest_bits_fails_with_gp(where):
    e = Inside()
    raw = bytearray(seal().pack())
    if where == "reserved_byte":
        raw[100] = 1
    else:
        raw[2:4] = (1 << 9).to_bytes(2, "little")
    e.put(DATA, bytes(raw))
    faults(lambda: enclu.egetkey(e.m, e.encl, BASE, BASE + OUT), Vector.GP,
           "keyrequest_reserved")


@pytest.mark.parametrize("request_", [seal(KeyPolicy.CONFIGID), seal(KeyPolicy.NOISVPRODID),
                                      seal(KeyPolicy.ISVFAMILYID), seal(configsvn=1)])
def test_egetkey_with_kss_policies_in_an_enclave_without_kss_fails_with_gp(request_):
    e = Inside()
    faults(lambda: e.egetkey(request_), Vector.GP, "kss_policy")


def test_egetkey_of_an_unknown_keyname_is_invalid_keyname():
    e = Inside()
    refuses(e.m, lambda: e.egetkey(Keyrequest(keyname=9)), SgxError.INVALID_KEYNAME, "keyname")


@pytest.mark.parametrize("name", [KeyName.EINITTOKEN_KEY, KeyName.PROVISION_KEY,
                                  KeyName.PROVISION_SEAL_KEY])
def test_egetkey_of_a_key_the_attributes_do_not_grant_is_invalid_attribute(name):
    e = Inside()
    refuses(e.m, lambda: e.egetkey(Keyrequest(keyname=name)), SgxError.INVALID_ATTRIBUTE,
            "keyname_not_allowed")


@pytest.mark.parametrize("name", [KeyName.SEAL_KEY, KeyName.PROVISION_KEY])
def test_egetkey_for_a_cpusvn_above_the_platform_is_invalid_cpusvn(name):
    e = Inside(attributes=int(Attribute.PROVISIONKEY))
    refuses(e.m, lambda: e.egetkey(Keyrequest(keyname=name, cpusvn=b"\x03" * 16)),
            SgxError.INVALID_CPUSVN, "cpusvn")


def test_egetkey_for_an_isvsvn_above_the_enclave_is_invalid_isvsvn():
    e = Inside()
    refuses(e.m, lambda: e.egetkey(seal(isvsvn=4)), SgxError.INVALID_ISVSVN, "isvsvn")
    assert e.egetkey(seal(isvsvn=3))[0] is SgxError.SUCCESS


def test_egetkey_for_a_configsvn_above_the_enclave_is_invalid_isvsvn():
    e = Inside(attributes=int(Attribute.KSS))
    refuses(e.m, lambda: e.egetkey(seal(KeyPolicy.CONFIGID, configsvn=1)),
            SgxError.INVALID_ISVSVN, "configsvn")


def test_the_key_table_names_a_row_for_every_keyname():
    assert set(KEY_DERIVATION) == set(KeyName)


def test_a_seal_key_is_bound_to_what_keypolicy_selects():
    e, other = Inside(), Inside()
    other.encl.mrenclave = b"\x42" * 32  # another enclave of the same signer
    by_enclave = [x.egetkey(seal(KeyPolicy.MRENCLAVE))[1] for x in (e, other)]
    by_signer = [x.egetkey(seal(KeyPolicy.MRSIGNER))[1] for x in (e, other)]
    assert by_enclave[0] != by_enclave[1] and by_signer[0] == by_signer[1]
    assert len({by_enclave[0], by_signer[0], e.egetkey(seal(0))[1]}) == 3
    assert e.egetkey(seal(keyid=b"\x01" * 32))[1] != by_enclave[0]
    assert e.egetkey(seal(isvsvn=2))[1] != e.egetkey(seal(isvsvn=3))[1]


def test_a_seal_key_always_includes_init_and_debug_and_masks_the_rest():
    e = Inside()
    deps = key_dependencies(e.m, e.encl, seal(attributemask=0, xfrmmask=0x1, miscmask=0))
    assert deps.attributes == e.encl.attributes & int(Attribute.INIT | Attribute.DEBUG)
    assert deps.xfrm == 0x1 and deps.miscselect == 0 and deps.miscmask == 0xFFFFFFFF
    assert deps.ownerepoch == e.m.secrets.owner_epoch and deps.padding == e.encl.padding


def test_the_report_key_takes_the_enclave_and_cpu_not_the_request():
    e = Inside()
    request = Keyrequest(keyname=KeyName.REPORT_KEY, cpusvn=b"\x01" * 16, isvsvn=1,
                         attributemask=0, keyid=b"\x09" * 32)
    deps = key_dependencies(e.m, e.encl, request)
    assert (deps.cpusvn, deps.isvsvn, deps.attributes) == (e.m.config.cpusvn, 0,
                                                            e.encl.attributes)
    assert deps.mrenclave == e.encl.mrenclave and deps.mrsigner == bytes(32)
    assert deps.keyid == b"\x09" * 32


def test_the_provisioning_key_ignores_the_owner_epoch_and_the_seal_fuses():
    e = Inside(attributes=int(Attribute.PROVISIONKEY))
    deps = key_dependencies(e.m, e.encl, Keyrequest(keyname=KeyName.PROVISION_KEY))
    assert deps.ownerepoch == bytes(16) and deps.seal_key_fuses == bytes(16)
    assert deps.mrsigner == e.encl.mrsigner and deps.mrenclave == bytes(32)
    seal_deps = key_dependencies(e.m, e.encl, Keyrequest(keyname=KeyName.PROVISION_SEAL_KEY))
    assert seal_deps.seal_key_fuses == e.m.secrets.seal_key_fuses
    assert e.egetkey(Keyrequest(keyname=KeyName.PROVISION_KEY))[0] is SgxError.SUCCESS


# -- EACCEPT ------------------------------------------------------------------------------
class Sgx2(Inside):
    """With a page EAUGed at HOLE (pending) and SECINFO operands written at DATA."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aug = self.b.page()
        encls.eaug(self.m, self.aug, self.secs, BASE + HOLE)

    def accept(self, flags: int, page: int = BASE + HOLE, at: int = DATA):
        address = self.put(at, secinfo(flags))
        return lambda: enclu.eaccept(self.m, self.encl, address, page)


def test_eaccept_with_a_misaligned_secinfo_fails_with_gp():
    e = Sgx2()
    faults(e.accept(REG | R | W | PENDING, at=DATA + 32), Vector.GP, "secinfo_alignment")


def test_eaccept_with_reserved_secinfo_bits_fails_with_gp():
    e = Sgx2()
    faults(e.accept(REG | R | W | PENDING | 1 << 20), Vector.GP, "secinfo_reserved")


def test_eaccept_of_a_misaligned_page_or_one_outside_elrange_fails_with_gp():
    e = Sgx2()
    faults(e.accept(REG | R | W | PENDING, page=BASE + HOLE + 8), Vector.GP, "page_alignment")
    faults(e.accept(REG | R | W | PENDING, page=BASE + SIZE), Vector.GP,
           "page_outside_elrange")


def test_eaccept_of_a_page_with_no_epc_page_fails_with_a_not_present_pf():
    e = Sgx2()
    faults(e.accept(REG | R | W | PENDING, page=BASE + HOLE + 4096), Vector.PF,
           "page_not_present", NOT_PRESENT)


@pytest.mark.parametrize("flags", [REG | R | W | PENDING | MODIFIED, REG | R | W,
                                   TCS | PENDING | MODIFIED, TRIM | MODIFIED | PR,
                                   (3 << 8) | MODIFIED])
def test_eaccept_of_an_impossible_secinfo_combination_fails_with_gp(flags):
    faults(Sgx2().accept(flags), Vector.GP, "secinfo_combination")


def test_eaccept_of_a_blocked_page_fails_with_an_epcm_pf():
    e = Sgx2()
    assert encls.eblock(e.m, e.aug) is SgxError.SUCCESS
    faults(e.accept(REG | R | W | PENDING), Vector.PF, "page_epcm", EPCM_PF)


@pytest.mark.parametrize("flags", [REG | R | PENDING, REG | R | W | X | PENDING,
                                   REG | R | W | PR])
def test_eaccept_with_other_attributes_than_the_epcm_is_page_attributes_mismatch(flags):
    e = Sgx2()
    refuses(e.m, e.accept(flags), SgxError.PAGE_ATTRIBUTES_MISMATCH, "attributes_mismatch")


def test_eaccept_of_a_restriction_before_its_etrack_is_not_tracked():
    e = Sgx2()
    page = e.m.config.epc_base + 4096  # DATA's EPC page
    assert encls.emodpr(e.m, page, secinfo(R)) is SgxError.SUCCESS
    accept = e.accept(REG | R | PR, page=BASE + DATA, at=OUT)
    refuses(e.m, accept, SgxError.NOT_TRACKED, "not_tracked")
    assert encls.etrack(e.m, e.secs) is SgxError.SUCCESS
    assert accept() is SgxError.SUCCESS


def test_eaccept_of_a_new_tcs_not_in_its_initial_state_fails_with_gp():
    e = Sgx2()
    e.put(HOLE, Tcs(nssa=1, cssa=1).pack())
    assert enclu.eaccept(e.m, e.encl, e.put(DATA, secinfo(REG | R | W | PENDING)),
                         BASE + HOLE) is SgxError.SUCCESS
    assert encls.emodt(e.m, e.aug, secinfo(TCS)) is SgxError.SUCCESS
    assert encls.etrack(e.m, e.secs) is SgxError.SUCCESS
    faults(e.accept(TCS | MODIFIED), Vector.GP, "tcs_state")


def test_eaccept_of_an_eaug_clears_pending_and_makes_the_page_usable():
    e = Sgx2()
    assert e.accept(REG | R | W | PENDING)() is SgxError.SUCCESS
    entry = e.m.epc.entry(e.aug)
    assert not (entry.pending or entry.modified or entry.pr)


# -- EMODPE -------------------------------------------------------------------------------
def emodpe(e: Sgx2, flags: int, page: int):
    address = e.put(DATA, secinfo(flags))
    return lambda: enclu.emodpe(e.m, e.encl, address, page)


def test_emodpe_with_reserved_secinfo_bits_fails_with_gp():
    e = Sgx2()
    faults(emodpe(e, R | 1 << 30, BASE + READONLY), Vector.GP, "secinfo_reserved")


def test_emodpe_of_a_page_with_no_epc_page_fails_with_a_not_present_pf():
    e = Sgx2()
    faults(emodpe(e, R | W, BASE + HOLE + 4096), Vector.PF, "page_not_present", NOT_PRESENT)


def test_emodpe_of_a_pending_page_fails_with_an_epcm_pf():
    e = Sgx2()
    faults(emodpe(e, R | W | X, BASE + HOLE), Vector.PF, "page_epcm", EPCM_PF)


def test_emodpe_to_a_writable_page_that_is_not_readable_fails_with_gp():
    e = Sgx2()
    page = e.m.config.epc_base + 2 * 4096  # OUT's EPC page
    encls.emodpr(e.m, page, secinfo(0))
    entry = e.m.epc.entry(page)
    entry.pr = False  # accepted
    faults(emodpe(e, W, BASE + OUT), Vector.GP, "write_without_read")


def test_emodpe_only_adds_rights():
    e = Sgx2()
    assert emodpe(e, W | X, BASE + READONLY)() is None
    entry = e.encl.pages[BASE + READONLY]
    assert (entry.r, entry.w, entry.x) == (True, True, True)


# -- EACCEPTCOPY --------------------------------------------------------------------------
def acceptcopy(e: Sgx2, flags: int, dest: int = BASE + HOLE, source: int = BASE + SPARE):
    address = e.put(DATA, secinfo(flags))
    return lambda: enclu.eacceptcopy(e.m, e.encl, address, dest, source)


def test_eacceptcopy_with_a_misaligned_secinfo_fails_with_gp():
    e = Sgx2()
    e.put(DATA + 64, secinfo(REG | R))
    faults(lambda: enclu.eacceptcopy(e.m, e.encl, BASE + DATA + 8, BASE + HOLE, BASE + SPARE),
           Vector.GP, "secinfo_alignment")


def test_eacceptcopy_to_or_from_a_page_with_no_epc_page_fails_with_a_not_present_pf():
    e = Sgx2()
    faults(acceptcopy(e, REG | R, dest=BASE + HOLE + 4096), Vector.PF, "page_not_present",
           NOT_PRESENT)
    faults(acceptcopy(e, REG | R, source=BASE + HOLE + 4096), Vector.PF,
           "source_not_present", NOT_PRESENT)


@pytest.mark.parametrize("flags", [REG | W, TCS | R, TRIM | R])
def test_eacceptcopy_with_a_bad_secinfo_fails_with_gp(flags):
    faults(acceptcopy(Sgx2(), flags), Vector.GP, "secinfo_invalid")


def test_eacceptcopy_from_a_pending_source_fails_with_an_epcm_pf():
    e = Sgx2()
    other = e.b.page()
    encls.eaug(e.m, other, e.secs, BASE + HOLE + 4096)
    faults(acceptcopy(e, REG | R, source=BASE + HOLE + 4096), Vector.PF, "source_epcm",
           EPCM_PF)


def test_eacceptcopy_into_a_page_that_is_not_pending_is_page_attributes_mismatch():
    e = Sgx2()
    refuses(e.m, acceptcopy(e, REG | R, dest=BASE + OUT), SgxError.PAGE_ATTRIBUTES_MISMATCH,
            "page_not_pending_rw")


def test_eacceptcopy_copies_the_source_and_sets_secinfos_rights():
    e = Sgx2()
    e.put(SPARE, b"\x77" * 4096)
    assert acceptcopy(e, REG | R | X)() is SgxError.SUCCESS
    assert e.get(HOLE, 4096) == b"\x77" * 4096
    entry = e.m.epc.entry(e.aug)
    assert (entry.r, entry.w, entry.x, entry.pending) == (True, False, True, False)
