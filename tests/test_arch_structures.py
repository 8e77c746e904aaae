"""Every SGX structure against the SDM's offsets (the SDM's structure tables), and
pack/unpack round trips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsgx.arch import (
    Einittoken,
    Encls,
    Enclu,
    Exinfo,
    Gprsgx,
    Keyrequest,
    Pageinfo,
    Pcmd,
    Report,
    Secinfo,
    Secs,
    SgxError,
    Sigstruct,
    Targetinfo,
    Tcs,
)
from vsgx.arch.constants import PageType, SecinfoFlags
from vsgx.arch.cpuid import EpcSection, SgxCpuid
from vsgx.arch.ssa import exitinfo, exitinfo_fields, gprsgx_offset, xsave_size
from vsgx.errors import StructureError

# (structure, size, {field: (offset, size)}) as the SDM tables give them.
SDM_LAYOUTS = [
    (Secs, 4096, {"size": (0, 8), "baseaddr": (8, 8), "ssaframesize": (16, 4),
                  "miscselect": (20, 4), "attributes": (48, 8), "xfrm": (56, 8),
                  "mrenclave": (64, 32), "mrsigner": (128, 32), "configid": (192, 64),
                  "isvprodid": (256, 2), "isvsvn": (258, 2), "configsvn": (260, 2)}),
    (Tcs, 4096, {"state": (0, 8), "flags": (8, 8), "ossa": (16, 8), "cssa": (24, 4),
                 "nssa": (28, 4), "oentry": (32, 8), "aep": (40, 8), "ofsbase": (48, 8),
                 "ogsbase": (56, 8), "fslimit": (64, 4), "gslimit": (68, 4)}),
    (Gprsgx, 184, {"rax": (0, 8), "rcx": (8, 8), "rdx": (16, 8), "rbx": (24, 8),
                   "rsp": (32, 8), "rbp": (40, 8), "rsi": (48, 8), "rdi": (56, 8),
                   "r8": (64, 8), "r15": (120, 8), "rflags": (128, 8), "rip": (136, 8),
                   "ursp": (144, 8), "urbp": (152, 8), "exitinfo": (160, 4),
                   "aexnotify": (167, 1), "fsbase": (168, 8), "gsbase": (176, 8)}),
    (Exinfo, 16, {"maddr": (0, 8), "errcd": (8, 4)}),
    (Secinfo, 64, {"flags": (0, 8)}),
    (Pageinfo, 32, {"linaddr": (0, 8), "srcpge": (8, 8), "secinfo": (16, 8), "secs": (24, 8)}),
    (Pcmd, 128, {"secinfo": (0, 64), "enclaveid": (64, 8), "mac": (112, 16)}),
    (Sigstruct, 1808, {"header": (0, 12), "type": (12, 4), "vendor": (16, 4), "date": (20, 4),
                       "header2": (24, 16), "swdefined": (40, 4), "modulus": (128, 384),
                       "exponent": (512, 4), "signature": (516, 384), "miscselect": (900, 4),
                       "miscmask": (904, 4), "isvfamilyid": (912, 16), "attributes": (928, 8),
                       "xfrm": (936, 8), "attributemask": (944, 8), "xfrmmask": (952, 8),
                       "enclavehash": (960, 32), "isvextprodid": (1008, 16),
                       "isvprodid": (1024, 2), "isvsvn": (1026, 2), "q1": (1040, 384),
                       "q2": (1424, 384)}),
    (Einittoken, 304, {"valid": (0, 4), "attributes": (48, 8), "xfrm": (56, 8),
                       "mrenclave": (64, 32), "mrsigner": (128, 32), "cpusvnle": (192, 16),
                       "isvprodidle": (208, 2), "isvsvnle": (210, 2),
                       "maskedmiscselectle": (236, 4), "maskedattributesle": (240, 8),
                       "maskedxfrmle": (248, 8), "keyid": (256, 32), "mac": (288, 16)}),
    (Report, 432, {"cpusvn": (0, 16), "miscselect": (16, 4), "isvextprodid": (32, 16),
                   "attributes": (48, 8), "xfrm": (56, 8), "mrenclave": (64, 32),
                   "mrsigner": (128, 32), "configid": (192, 64), "isvprodid": (256, 2),
                   "isvsvn": (258, 2), "configsvn": (260, 2), "isvfamilyid": (304, 16),
                   "reportdata": (320, 64), "keyid": (384, 32), "mac": (416, 16)}),
    (Targetinfo, 512, {"measurement": (0, 32), "attributes": (32, 8), "xfrm": (40, 8),
                       "configsvn": (50, 2), "miscselect": (52, 4), "configid": (64, 64)}),
    (Keyrequest, 512, {"keyname": (0, 2), "keypolicy": (2, 2), "isvsvn": (4, 2),
                       "cpusvn": (8, 16), "attributemask": (24, 8), "xfrmmask": (32, 8),
                       "keyid": (40, 32), "miscmask": (72, 4), "configsvn": (76, 2)}),
]


@pytest.mark.parametrize(("cls", "size", "fields"), SDM_LAYOUTS,
                         ids=lambda v: getattr(v, "__name__", ""))
def test_structure_matches_sdm_offsets(cls, size, fields):
    assert size == cls.SIZE
    assert len(cls().pack()) == size
    table = {f.name: (f.offset, f.size) for f in cls.FIELDS}
    for name, where in fields.items():
        assert table[name] == where, name


def _field_strategy(spec):
    if spec.is_int:
        return st.integers(0, (1 << (8 * spec.size)) - 1 - spec.reserved_bits).map(
            lambda v, mask=spec.reserved_bits: v & ~mask)
    return st.binary(min_size=spec.size, max_size=spec.size)


def _instances(cls):
    return st.fixed_dictionaries({f.name: _field_strategy(f) for f in cls.FIELDS}).map(
        lambda kw: cls(**kw))


@pytest.mark.parametrize("cls", [c for c, _, _ in SDM_LAYOUTS], ids=lambda c: c.__name__)
def test_pack_unpack_round_trip(cls):
    @settings(max_examples=60, deadline=None)
    @given(_instances(cls))
    def check(obj):
        data = obj.pack()
        assert len(data) == cls.SIZE
        assert cls.unpack(data) == obj
        assert cls.unpack(data).pack() == data

    check()


@pytest.mark.parametrize("cls", [c for c, _, _ in SDM_LAYOUTS], ids=lambda c: c.__name__)
def test_bytes_round_trip_with_reserved_zero(cls):
    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.large_base_example])
    @given(st.binary(min_size=cls.SIZE, max_size=cls.SIZE))
    def check(raw):
        data = bytearray(raw)
        for offset, length in cls.RESERVED:
            data[offset:offset + length] = bytes(length)
        lenient = cls.unpack(bytes(data), strict=False)
        assert lenient.pack() == bytes(data)

    check()


@pytest.mark.parametrize("cls", [c for c, _, _ in SDM_LAYOUTS if c.RESERVED],
                         ids=lambda c: c.__name__)
def test_non_zero_reserved_bytes_are_refused(cls):
    offset, _ = cls.RESERVED[0]
    data = bytearray(cls().pack())
    data[offset] = 1
    with pytest.raises(StructureError, match="reserved"):
        cls.unpack(bytes(data))
    assert cls.unpack(bytes(data), strict=False) is not None


def test_secinfo_reserved_flag_bits_are_refused():
    with pytest.raises(StructureError, match="reserved bits"):
        Secinfo.unpack(Secinfo(flags=1 << 40).pack())
    secinfo = Secinfo.of(PageType.REG, SecinfoFlags.R | SecinfoFlags.W)
    assert secinfo.flags == 0x203
    assert Secinfo.unpack(secinfo.pack()).page_type == PageType.REG


def test_short_input_is_refused():
    with pytest.raises(StructureError, match="expected 64"):
        Secinfo.unpack(b"\0" * 10)


def test_error_codes_have_the_sdm_values():
    expected = {"SUCCESS": 0, "INVALID_SIG_STRUCT": 1, "INVALID_ATTRIBUTE": 2, "BLKSTATE": 3,
                "INVALID_MEASUREMENT": 4, "NOTBLOCKABLE": 5, "PG_INVLD": 6,
                "EPC_PAGE_CONFLICT": 7, "INVALID_SIGNATURE": 8, "MAC_COMPARE_FAIL": 9,
                "PAGE_NOT_BLOCKED": 10, "NOT_TRACKED": 11, "VA_SLOT_OCCUPIED": 12,
                "CHILD_PRESENT": 13, "ENCLAVE_ACT": 14, "ENTRYEPOCH_LOCKED": 15,
                "INVALID_EINITTOKEN": 16, "PREV_TRK_INCMPL": 17, "PG_IS_SECS": 18,
                "PAGE_ATTRIBUTES_MISMATCH": 19, "PAGE_NOT_MODIFIABLE": 20,
                "PAGE_NOT_DEBUGGABLE": 21, "INVALID_COUNTER": 25, "PG_NONEPC": 26,
                "TRACK_NOT_REQUIRED": 27, "INVALID_CPUSVN": 32, "INVALID_ISVSVN": 64,
                "UNMASKED_EVENT": 128, "INVALID_KEYNAME": 256}
    assert {e.name: e.value for e in SgxError} == expected


def test_leaf_numbers():
    assert [Encls.ECREATE, Encls.EADD, Encls.EINIT, Encls.EWB, Encls.EMODT] == [0, 1, 2, 11, 15]
    leaves = [Enclu.EREPORT, Enclu.EGETKEY, Enclu.EENTER, Enclu.ERESUME, Enclu.EEXIT,
              Enclu.EACCEPT, Enclu.EMODPE, Enclu.EACCEPTCOPY]
    assert leaves == list(range(8))


def test_ssa_layout_helpers():
    assert gprsgx_offset(1) == 4096 - 184
    assert xsave_size(0x3) == 576
    assert xsave_size(0x7) == 832
    assert xsave_size(0xE7) == 2688
    value = exitinfo(14, 3)
    assert exitinfo_fields(value) == (True, 14, 3)


def test_cpuid_leaf_0x12_round_trip():
    model = SgxCpuid(sgx2=True, miscselect=1, epc_sections=(EpcSection(0x80000000, 0x15000000),))
    leaves = [model.leaf(i) for i in range(4)]
    assert leaves[0][0] & 0x3 == 0x3
    assert leaves[2][0] & 0xF == 1 and leaves[3] == (0, 0, 0, 0)
    assert SgxCpuid.from_leaves(leaves) == model


# -- precompiled views of the tables (vsgx.arch.layout.fields_of) --------------------
def test_fields_of_reads_and_writes_named_fields_where_the_table_puts_them():
    from vsgx.arch.layout import field_offset, fields_of

    tcs = Tcs(state=1, flags=2, ossa=0x3000, cssa=4, nssa=5, oentry=6, aep=7, ofsbase=8,
              ogsbase=9, fslimit=10, gslimit=11)
    page = bytearray(8192)
    page[4096:8192] = tcs.pack()
    view = fields_of(Tcs, "ossa", "cssa", "nssa")
    assert view.offset == field_offset(Tcs, "ossa") == 16
    assert view.unpack_from(page, 4096 + view.offset) == (0x3000, 4, 5)
    assert view.read(page, 4096) == (0x3000, 4, 5)
    view.write(page, 4096, 0x5000, 1, 2)
    assert (Tcs.unpack(page[4096:]).ossa, Tcs.unpack(page[4096:]).cssa) == (0x5000, 1)
    assert Tcs.unpack(page[4096:]).flags == 2  # nothing outside the named fields moved


def test_fields_of_names_nested_structures_and_zeroes_reserved_bytes_between():
    from vsgx.arch.layout import field_offset, fields_of

    pcmd = fields_of(Pcmd, "secinfo.flags", "enclaveid", "mac")
    raw = pcmd.pack(0x203, 9, b"m" * 16)
    assert raw == Pcmd(secinfo=Secinfo(flags=0x203).pack(), enclaveid=9, mac=b"m" * 16).pack()
    assert field_offset(Pcmd, "secinfo.flags") == 0 and field_offset(Pcmd, "mac") == 112
    whole = fields_of(Exinfo, "maddr", "errcd", whole=True)
    assert whole.size == Exinfo.SIZE and whole.pack(1, 2) == Exinfo(maddr=1, errcd=2).pack()


@pytest.mark.parametrize("names", [("fsbase", "exitinfo"), ("exitinfo", "fsbase"),
                                   ("rax", "rax"), ("nosuch",)])
def test_fields_of_refuses_unordered_overlapping_skipped_or_unknown_fields(names):
    from vsgx.arch.layout import fields_of

    with pytest.raises((ValueError, KeyError)):
        fields_of(Gprsgx, *names)


def test_fields_declared_out_of_offset_order_unpack_to_their_names():
    from vsgx.arch.layout import Structure, structure, u32, u64

    @structure(16)
    class Backwards(Structure):
        high: int = u64(8)
        low: int = u32(0)

    raw = (0x11223344).to_bytes(4, "little") + bytes(4) + (0x5566778899AABBCC).to_bytes(
        8, "little")
    value = Backwards.unpack(raw)
    assert (value.low, value.high) == (0x11223344, 0x5566778899AABBCC)
    assert value.pack() == raw
