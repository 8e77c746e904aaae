"""ENCLU leaves executed inside an enclave (SDM "Intel SGX Instruction
References", user leaves): EREPORT, EGETKEY and SGX2's EACCEPT, EMODPE,
EACCEPTCOPY, checks in the order of the SDM's pseudocode. Operands are
enclave linear addresses; each must lie in ELRANGE on an accessible page of
the enclave, or the leaf faults as the SDM says. Every check has a name
(``Fault.check``, ``Machine.refusal``). (EENTER, ERESUME, EEXIT and AEX are
in vsgx.evm.thread: they need an executor.)"""

from __future__ import annotations

from vsgx.arch.constants import (
    PAGE_SIZE,
    Attribute,
    KeyPolicy,
    PageType,
    PfErrorCode,
    SecinfoFlags,
)
from vsgx.arch.errors import Fault, SgxError, gp, pf
from vsgx.arch.keyrequest import Keyrequest
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.report import REPORT_BODY_SIZE, Report, Targetinfo
from vsgx.arch.tcs import TCS_FLAGS_DBGOPTIN, Tcs
from vsgx.crypto.cmac import report_mac
from vsgx.errors import StructureError
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.epc import EpcmEntry
from vsgx.evm.key_derivation import derive, report_key, report_key_dependencies
from vsgx.evm.machine import Machine

_KSS_POLICIES = int(KeyPolicy.CONFIGID | KeyPolicy.ISVFAMILYID | KeyPolicy.ISVEXTPRODID
                    | KeyPolicy.NOISVPRODID)
_R, _W, _X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
_PENDING, _MODIFIED, _PR = (int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED),
                            int(SecinfoFlags.PR))
_NOT_PRESENT = int(PfErrorCode.U)
_EPCM_FAULT = int(PfErrorCode.P | PfErrorCode.U | PfErrorCode.SGX)
# Operand alignments (SDM EREPORT, EGETKEY, EACCEPT...).
TARGETINFO_ALIGN, REPORTDATA_ALIGN, REPORT_ALIGN = 512, 128, 512
KEYREQUEST_ALIGN, KEY_ALIGN, SECINFO_ALIGN = 512, 16, 64
REPORTDATA_SIZE, KEY_SIZE = 64, 16


def _operand(encl: EnclaveState, address: int, length: int, align: int, what: str,
             write: bool = False) -> memoryview:
    """The bytes of an in-enclave operand, after the SDM's checks (named
    "WHAT_alignment", "WHAT_outside_elrange", "WHAT_not_present", "WHAT_epcm")."""
    if address % align:
        raise gp(f"{what} {address:#x} is not {align}-byte aligned", f"{what}_alignment")
    if not encl.in_elrange(address, length):
        raise gp(f"{what} {address:#x} is outside ELRANGE", f"{what}_outside_elrange")
    page = address & ~(PAGE_SIZE - 1)
    entry = encl.pages.get(page)
    code = _NOT_PRESENT | (int(PfErrorCode.W) if write else 0)
    if entry is None:
        raise pf(address, code, f"{what}: no EPC page at {page:#x}", f"{what}_not_present")
    if (not entry.valid or entry.blocked or entry.pt != PageType.REG or entry.pending
            or entry.modified or not entry.r or (write and not entry.w)):
        raise pf(address, code | int(PfErrorCode.P | PfErrorCode.SGX),
                 f"{what}: the EPCM does not allow this access", f"{what}_epcm")
    return encl.memory.view[address - encl.base:address - encl.base + length]  # type: ignore[union-attr]


def ereport(m: Machine, encl: EnclaveState, targetinfo: int, reportdata: int, output: int
            ) -> None:
    """EREPORT: a REPORT about this enclave, MACed for the target enclave."""
    raw_target = bytes(_operand(encl, targetinfo, Targetinfo.SIZE, TARGETINFO_ALIGN,
                                "targetinfo"))
    data = bytes(_operand(encl, reportdata, REPORTDATA_SIZE, REPORTDATA_ALIGN, "reportdata"))
    out = _operand(encl, output, Report.SIZE, REPORT_ALIGN, "report", write=True)
    try:
        target = Targetinfo.unpack(raw_target)
    except StructureError as exc:
        raise gp(f"TARGETINFO: {exc}", "targetinfo_reserved") from None
    report = Report(cpusvn=m.config.cpusvn, miscselect=encl.miscselect,
                    cet_attributes=encl.cet_attributes, isvextprodid=encl.isvextprodid,
                    attributes=encl.attributes, xfrm=encl.xfrm, mrenclave=encl.mrenclave,
                    mrsigner=encl.mrsigner, configid=encl.configid, isvprodid=encl.isvprodid,
                    isvsvn=encl.isvsvn, configsvn=encl.configsvn,
                    isvfamilyid=encl.isvfamilyid, reportdata=data,
                    keyid=m.secrets.report_keyid)
    body = report.pack()[:REPORT_BODY_SIZE]
    out[:] = body + report.keyid + report_mac(report_key(m, target, report.keyid), body)


def egetkey(m: Machine, encl: EnclaveState, keyrequest: int, output: int) -> SgxError:
    """EGETKEY: derive the key KEYREQUEST names, as the SDM's key-derivation
    table says (vsgx.evm.key_derivation)."""
    raw = bytes(_operand(encl, keyrequest, Keyrequest.SIZE, KEYREQUEST_ALIGN, "keyrequest"))
    out = _operand(encl, output, KEY_SIZE, KEY_ALIGN, "outputdata", write=True)
    try:
        request = Keyrequest.unpack(raw)
    except StructureError as exc:
        raise gp(f"KEYREQUEST: {exc}", "keyrequest_reserved") from None
    if not encl.attributes & Attribute.KSS and (request.keypolicy & _KSS_POLICIES
                                                 or request.configsvn):
        raise gp("KEYREQUEST uses KSS policies in an enclave without KSS", "kss_policy")
    key = derive(m, encl, request)
    if isinstance(key, SgxError):
        return key
    out[:] = key
    return SgxError.SUCCESS


def _secinfo_operand(encl: EnclaveState, address: int) -> Secinfo:
    raw = bytes(_operand(encl, address, Secinfo.SIZE, SECINFO_ALIGN, "secinfo"))
    try:
        return Secinfo.unpack(raw)
    except StructureError as exc:
        raise gp(f"SECINFO: {exc}", "secinfo_reserved") from None


def _target_page(encl: EnclaveState, address: int, what: str = "page") -> EpcmEntry:
    if address % PAGE_SIZE:
        raise gp(f"{what} {address:#x} is not page aligned", f"{what}_alignment")
    if not encl.in_elrange(address, PAGE_SIZE):
        raise gp(f"{what} {address:#x} is outside ELRANGE", f"{what}_outside_elrange")
    entry = encl.pages.get(address)
    if entry is None:
        raise pf(address, _NOT_PRESENT, f"no EPC page at {address:#x}", f"{what}_not_present")
    return entry


def _sgx_pf(address: int, reason: str, check: str) -> Fault:
    return pf(address, _EPCM_FAULT, reason, check)


def eaccept(m: Machine, encl: EnclaveState, secinfo_address: int, page: int) -> SgxError:
    """EACCEPT: accept an EAUG, EMODPR or EMODT change to ``page``."""
    info = _secinfo_operand(encl, secinfo_address)
    entry = _target_page(encl, page)
    flags = info.flags
    pending, modified, pr = bool(flags & _PENDING), bool(flags & _MODIFIED), bool(flags & _PR)
    if info.page_type == PageType.REG:
        legal = (pr or pending) and not modified
    elif info.page_type in (PageType.TCS, PageType.TRIM):
        legal = not pending and modified and not pr
    else:
        legal = False
    if not legal:
        raise gp("EACCEPT: SECINFO requests an impossible combination", "secinfo_combination")
    if (not entry.valid or entry.blocked or entry.enclave is not encl
            or entry.pt not in (PageType.REG, PageType.TCS, PageType.TRIM)):
        raise _sgx_pf(page, "EACCEPT of a page that is not acceptable", "page_epcm")
    if (entry.linaddr != page or entry.pending != pending or entry.modified != modified
            or entry.r != bool(flags & _R) or entry.w != bool(flags & _W)
            or entry.x != bool(flags & _X) or entry.pt != info.page_type):
        return m.refuse(SgxError.PAGE_ATTRIBUTES_MISMATCH, "attributes_mismatch")
    if (entry.pr or entry.modified) and not encl.is_tracked(entry.mod_epoch):
        return m.refuse(SgxError.NOT_TRACKED, "not_tracked")
    if info.page_type == PageType.TCS:
        try:
            tcs = Tcs.unpack(encl.page_view(page))
        except StructureError as exc:
            raise gp(f"TCS: {exc}", "tcs_reserved") from None
        if tcs.flags & TCS_FLAGS_DBGOPTIN or tcs.cssa >= tcs.nssa or tcs.aep or tcs.state:
            raise gp("EACCEPT: the new TCS is not in its initial state", "tcs_state")
    entry.pending = entry.modified = entry.pr = False
    encl.note_change(page)
    return SgxError.SUCCESS


def emodpe(m: Machine, encl: EnclaveState, secinfo_address: int, page: int) -> None:
    """EMODPE: extend a REG page's EPCM permissions."""
    info = _secinfo_operand(encl, secinfo_address)
    entry = _target_page(encl, page)
    if (not entry.valid or entry.pending or entry.modified or entry.blocked
            or entry.pt != PageType.REG or entry.enclave is not encl or entry.linaddr != page):
        raise _sgx_pf(page, "EMODPE of a page that is not a plain REG page", "page_epcm")
    if not entry.r and not info.flags & _R and info.flags & _W:
        raise gp("EMODPE would make a writable page that is not readable",
                 "write_without_read")
    entry.r |= bool(info.flags & _R)
    entry.w |= bool(info.flags & _W)
    entry.x |= bool(info.flags & _X)
    encl.note_change(page)


def eacceptcopy(m: Machine, encl: EnclaveState, secinfo_address: int, dest: int, source: int
                ) -> SgxError:
    """EACCEPTCOPY: fill a PENDING page from ``source`` and accept it with
    SECINFO's permissions."""
    info = _secinfo_operand(encl, secinfo_address)
    target = _target_page(encl, dest)
    src = _target_page(encl, source, "source")
    if (info.flags & _W and not info.flags & _R) or info.page_type != PageType.REG:
        raise gp("EACCEPTCOPY: bad SECINFO", "secinfo_invalid")
    if (not src.valid or not src.r or src.pending or src.modified or src.blocked
            or src.pt != PageType.REG or src.enclave is not encl or src.linaddr != source):
        raise _sgx_pf(source, "EACCEPTCOPY: the source page is not readable", "source_epcm")
    if (not target.valid or not target.pending or target.modified or target.blocked
            or target.pt != PageType.REG or target.enclave is not encl
            or not (target.r and target.w and not target.x) or target.linaddr != dest):
        return m.refuse(SgxError.PAGE_ATTRIBUTES_MISMATCH, "page_not_pending_rw")
    encl.page_view(dest)[:] = bytes(encl.page_view(source))
    target.set_permissions(info.flags)
    target.pending = False
    encl.note_change(dest)
    return SgxError.SUCCESS


__all__ = ["eaccept", "eacceptcopy", "egetkey", "emodpe", "ereport", "report_key_dependencies"]
