"""REPORT and TARGETINFO, SDM "Report (REPORT)" and "Report Target Info
(TARGETINFO)". The REPORT MAC covers the
384-byte body."""

from __future__ import annotations

from vsgx.arch.layout import Structure, raw, structure, u8, u16, u32, u64

REPORT_SIZE = 432
REPORT_BODY_SIZE = 384
TARGETINFO_SIZE = 512


@structure(REPORT_BODY_SIZE)
class ReportBody(Structure):
    """sgx_report_body_t: the REPORT fields the MAC covers (the first 384 bytes);
    quotes carry it alone."""

    cpusvn: bytes = raw(0, 16)
    miscselect: int = u32(16)
    cet_attributes: int = u8(20)
    # 21..31 reserved
    isvextprodid: bytes = raw(32, 16)
    attributes: int = u64(48)
    xfrm: int = u64(56)
    mrenclave: bytes = raw(64, 32)
    # 96..127 reserved
    mrsigner: bytes = raw(128, 32)
    # 160..191 reserved
    configid: bytes = raw(192, 64)
    isvprodid: int = u16(256)
    isvsvn: int = u16(258)
    configsvn: int = u16(260)
    # 262..303 reserved
    isvfamilyid: bytes = raw(304, 16)
    reportdata: bytes = raw(320, 64)


@structure(REPORT_SIZE)
class Report(ReportBody):
    """REPORT: the body, then KEYID and MAC."""

    keyid: bytes = raw(384, 32)
    mac: bytes = raw(416, 16)


@structure(TARGETINFO_SIZE)
class Targetinfo(Structure):
    measurement: bytes = raw(0, 32)
    attributes: int = u64(32)
    xfrm: int = u64(40)
    cet_attributes: int = u8(48)
    # 49 reserved
    configsvn: int = u16(50)
    miscselect: int = u32(52)
    # 56..63 reserved
    configid: bytes = raw(64, 64)
    # 128..511 reserved
