"""ENCLU leaves executed inside an enclave (SDM 38.4): EREPORT, EGETKEY and
SGX2's EACCEPT, EMODPE, EACCEPTCOPY. Operands are enclave linear addresses;
each must lie in ELRANGE on an accessible page of the enclave, or the leaf
faults as the SDM says."""

from __future__ import annotations

from vsgx.arch.constants import (
    PAGE_SIZE,
    Attribute,
    KeyName,
    KeyPolicy,
    PageType,
    PfErrorCode,
)
from vsgx.arch.errors import Fault, SgxError, gp, pf
from vsgx.arch.keyrequest import Keyrequest
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.report import REPORT_BODY_SIZE, Report, Targetinfo
from vsgx.arch.tcs import Tcs
from vsgx.crypto.cmac import aes_cmac
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
from vsgx.errors import StructureError
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.epc import EpcmEntry
from vsgx.evm.machine import Machine

_KSS_POLICIES = int(KeyPolicy.CONFIGID | KeyPolicy.ISVFAMILYID | KeyPolicy.ISVEXTPRODID
                    | KeyPolicy.NOISVPRODID)


def _operand(encl: EnclaveState, address: int, length: int, align: int, what: str,
             write: bool = False) -> memoryview:
    """The bytes of an in-enclave operand, after the SDM's checks."""
    if address % align or not encl.in_elrange(address, length):
        raise gp(f"{what} {address:#x} is misaligned or outside ELRANGE")
    page = address & ~(PAGE_SIZE - 1)
    entry = encl.pages.get(page)
    code = int(PfErrorCode.U | (PfErrorCode.W if write else 0))
    if entry is None:
        raise pf(address, code, f"{what}: no EPC page at {page:#x}")
    if (not entry.valid or entry.blocked or entry.pt != PageType.REG or entry.pending
            or entry.modified or not entry.r or (write and not entry.w)):
        raise pf(address, code | int(PfErrorCode.P | PfErrorCode.SGX),
                 f"{what}: the EPCM does not allow this access")
    return encl.memory.view[address - encl.base:address - encl.base + length]  # type: ignore[union-attr]


def _cpusvn_le(requested: bytes, current: bytes) -> bool:
    return all(a <= b for a, b in zip(requested, current, strict=True))


def report_key_dependencies(m: Machine, target: Targetinfo, keyid: bytes) -> KeyDependencies:
    """What EREPORT derives its MAC key from; equal to what the target's
    EGETKEY(REPORT_KEY) derives when TARGETINFO describes it."""
    return KeyDependencies(
        keyname=KeyName.REPORT_KEY, attributes=target.attributes, xfrm=target.xfrm,
        mrenclave=target.measurement, miscselect=target.miscselect, configid=target.configid,
        configsvn=target.configsvn, ownerepoch=m.secrets.owner_epoch,
        seal_key_fuses=m.secrets.seal_key_fuses, cpusvn=m.config.cpusvn, keyid=keyid,
        padding=PKCS1_PADDING, cet_attributes=target.cet_attributes)


def ereport(m: Machine, encl: EnclaveState, targetinfo: int, reportdata: int, output: int
            ) -> None:
    """EREPORT: a REPORT about this enclave, MACed for the target enclave."""
    raw_target = bytes(_operand(encl, targetinfo, Targetinfo.SIZE, 512, "TARGETINFO"))
    data = bytes(_operand(encl, reportdata, 64, 128, "REPORTDATA"))
    out = _operand(encl, output, Report.SIZE, 512, "REPORT output", write=True)
    try:
        target = Targetinfo.unpack(raw_target)
    except StructureError as exc:
        raise gp(f"TARGETINFO: {exc}") from None
    report = Report(cpusvn=m.config.cpusvn, miscselect=encl.miscselect,
                    cet_attributes=encl.cet_attributes, isvextprodid=encl.isvextprodid,
                    attributes=encl.attributes, xfrm=encl.xfrm, mrenclave=encl.mrenclave,
                    mrsigner=encl.mrsigner, configid=encl.configid, isvprodid=encl.isvprodid,
                    isvsvn=encl.isvsvn, configsvn=encl.configsvn,
                    isvfamilyid=encl.isvfamilyid, reportdata=data,
                    keyid=m.secrets.report_keyid)
    body = report.pack()[:REPORT_BODY_SIZE]
    key = derive_key(m.secrets.derivation_key, report_key_dependencies(m, target, report.keyid))
    out[:] = body + report.keyid + aes_cmac(key, body)


def egetkey(m: Machine, encl: EnclaveState, keyrequest: int, output: int) -> SgxError:
    """EGETKEY: derive the key KEYREQUEST names, bound as the SDM's table says."""
    raw = bytes(_operand(encl, keyrequest, Keyrequest.SIZE, 512, "KEYREQUEST"))
    out = _operand(encl, output, 16, 16, "key output", write=True)
    try:
        kr = Keyrequest.unpack(raw)
    except StructureError as exc:
        raise gp(f"KEYREQUEST: {exc}") from None
    kss = bool(encl.attributes & Attribute.KSS)
    if not kss and (kr.keypolicy & _KSS_POLICIES or kr.configsvn):
        raise gp("KEYREQUEST uses KSS policies in an enclave without KSS")
    attributes = (kr.attributemask | 0x3) & encl.attributes
    xfrm = kr.xfrmmask & encl.xfrm
    misc = kr.miscmask & encl.miscselect
    name = kr.keyname
    secrets = m.secrets
    policy = kr.keypolicy

    def svn_error(check_config: bool) -> SgxError | None:
        if not _cpusvn_le(kr.cpusvn, m.config.cpusvn):
            return SgxError.INVALID_CPUSVN
        if kr.isvsvn > encl.isvsvn or (check_config and kr.configsvn > encl.configsvn):
            return SgxError.INVALID_ISVSVN
        return None

    common = {"ownerepoch": secrets.owner_epoch, "seal_key_fuses": secrets.seal_key_fuses,
              "padding": encl.padding, "cpusvn": kr.cpusvn, "isvsvn": kr.isvsvn,
              "attributes": attributes, "xfrm": xfrm, "miscselect": misc}
    if name == KeyName.SEAL_KEY:
        error = svn_error(check_config=True)
        if error:
            return error
        deps = KeyDependencies(
            keyname=name, **common, attributemask=kr.attributemask, xfrmmask=kr.xfrmmask,
            miscmask=~kr.miscmask & 0xFFFFFFFF, keyid=kr.keyid, keypolicy=policy,
            isvprodid=0 if policy & KeyPolicy.NOISVPRODID else encl.isvprodid,
            isvextprodid=encl.isvextprodid if policy & KeyPolicy.ISVEXTPRODID else bytes(16),
            isvfamilyid=encl.isvfamilyid if policy & KeyPolicy.ISVFAMILYID else bytes(16),
            mrenclave=encl.mrenclave if policy & KeyPolicy.MRENCLAVE else bytes(32),
            mrsigner=encl.mrsigner if policy & KeyPolicy.MRSIGNER else bytes(32),
            configid=encl.configid if policy & KeyPolicy.CONFIGID else bytes(64),
            configsvn=kr.configsvn if policy & KeyPolicy.CONFIGID else 0,
            cet_attributes_mask=kr.cet_attributes_mask)
    elif name == KeyName.REPORT_KEY:
        deps = KeyDependencies(
            keyname=name, attributes=encl.attributes, xfrm=encl.xfrm,
            miscselect=encl.miscselect, ownerepoch=secrets.owner_epoch,
            seal_key_fuses=secrets.seal_key_fuses, cpusvn=m.config.cpusvn,
            mrenclave=encl.mrenclave, configid=encl.configid, configsvn=encl.configsvn,
            keyid=kr.keyid, padding=PKCS1_PADDING, cet_attributes=encl.cet_attributes)
    elif name == KeyName.EINITTOKEN_KEY:
        if not encl.attributes & Attribute.EINITTOKEN_KEY:
            return SgxError.INVALID_ATTRIBUTE
        error = svn_error(check_config=False)
        if error:
            return error
        deps = KeyDependencies(keyname=name, **common, isvprodid=encl.isvprodid,
                               mrsigner=encl.mrsigner, keyid=kr.keyid)
    elif name in (KeyName.PROVISION_KEY, KeyName.PROVISION_SEAL_KEY):
        if not encl.attributes & Attribute.PROVISIONKEY:
            return SgxError.INVALID_ATTRIBUTE
        error = svn_error(check_config=False)
        if error:
            return error
        seal = name == KeyName.PROVISION_SEAL_KEY
        deps = KeyDependencies(
            keyname=name, **{**common, "ownerepoch": bytes(16),
                             "seal_key_fuses": secrets.seal_key_fuses if seal else bytes(16)},
            attributemask=kr.attributemask, xfrmmask=kr.xfrmmask,
            miscmask=~kr.miscmask & 0xFFFFFFFF, mrsigner=encl.mrsigner,
            isvprodid=0 if seal and policy & KeyPolicy.NOISVPRODID else encl.isvprodid,
            isvextprodid=encl.isvextprodid if seal and policy & KeyPolicy.ISVEXTPRODID
            else bytes(16),
            isvfamilyid=encl.isvfamilyid if seal and policy & KeyPolicy.ISVFAMILYID
            else bytes(16),
            configid=encl.configid if seal and policy & KeyPolicy.CONFIGID else bytes(64),
            configsvn=kr.configsvn if seal and policy & KeyPolicy.CONFIGID else 0,
            keypolicy=policy if seal else 0)
    else:
        return SgxError.INVALID_KEYNAME
    out[:] = derive_key(secrets.derivation_key, deps)
    return SgxError.SUCCESS


def _secinfo_operand(encl: EnclaveState, address: int) -> Secinfo:
    raw = bytes(_operand(encl, address, Secinfo.SIZE, 64, "SECINFO"))
    try:
        return Secinfo.unpack(raw)
    except StructureError as exc:
        raise gp(f"SECINFO: {exc}") from None


def _target_page(encl: EnclaveState, address: int) -> EpcmEntry:
    if address % PAGE_SIZE or not encl.in_elrange(address, PAGE_SIZE):
        raise gp(f"page {address:#x} is misaligned or outside ELRANGE")
    entry = encl.pages.get(address)
    if entry is None:
        raise pf(address, int(PfErrorCode.U), f"no EPC page at {address:#x}")
    return entry


def _sgx_pf(address: int, reason: str) -> Fault:
    return pf(address, int(PfErrorCode.P | PfErrorCode.U | PfErrorCode.SGX), reason)


def eaccept(m: Machine, encl: EnclaveState, secinfo_address: int, page: int) -> SgxError:
    """EACCEPT: accept an EAUG, EMODPR or EMODT change to ``page``."""
    info = _secinfo_operand(encl, secinfo_address)
    entry = _target_page(encl, page)
    flags = info.flags
    pending, modified, pr = bool(flags & 0x8), bool(flags & 0x10), bool(flags & 0x20)
    if info.page_type == PageType.REG:
        legal = (pr or pending) and not modified
    elif info.page_type in (PageType.TCS, PageType.TRIM):
        legal = not pending and modified and not pr
    else:
        legal = False
    if not legal:
        raise gp("EACCEPT: SECINFO requests an impossible combination")
    if (not entry.valid or entry.blocked or entry.enclave is not encl
            or entry.pt not in (PageType.REG, PageType.TCS, PageType.TRIM)):
        raise _sgx_pf(page, "EACCEPT of a page that is not acceptable")
    if (entry.linaddr != page or entry.pending != pending or entry.modified != modified
            or entry.r != bool(flags & 1) or entry.w != bool(flags & 2)
            or entry.x != bool(flags & 4) or entry.pt != info.page_type):
        return SgxError.PAGE_ATTRIBUTES_MISMATCH
    if (entry.pr or entry.modified) and not encl.is_tracked(entry.mod_epoch):
        return SgxError.NOT_TRACKED
    if info.page_type == PageType.TCS:
        try:
            tcs = Tcs.unpack(encl.page_view(page))
        except StructureError as exc:
            raise gp(f"TCS: {exc}") from None
        if tcs.flags & 1 or tcs.cssa >= tcs.nssa or tcs.aep or tcs.state:
            raise gp("EACCEPT: the new TCS is not in its initial state")
    entry.pending = entry.modified = entry.pr = False
    encl.note_change(page)
    return SgxError.SUCCESS


def emodpe(m: Machine, encl: EnclaveState, secinfo_address: int, page: int) -> None:
    """EMODPE: extend a REG page's EPCM permissions."""
    info = _secinfo_operand(encl, secinfo_address)
    entry = _target_page(encl, page)
    if (not entry.valid or entry.pending or entry.modified or entry.blocked
            or entry.pt != PageType.REG or entry.enclave is not encl or entry.linaddr != page):
        raise _sgx_pf(page, "EMODPE of a page that is not a plain REG page")
    if not entry.r and not info.flags & 1 and info.flags & 2:
        raise gp("EMODPE would make a writable page that is not readable")
    entry.r |= bool(info.flags & 1)
    entry.w |= bool(info.flags & 2)
    entry.x |= bool(info.flags & 4)
    encl.note_change(page)


def eacceptcopy(m: Machine, encl: EnclaveState, secinfo_address: int, dest: int, source: int
                ) -> SgxError:
    """EACCEPTCOPY: fill a PENDING page from ``source`` and accept it with
    SECINFO's permissions."""
    info = _secinfo_operand(encl, secinfo_address)
    target = _target_page(encl, dest)
    src = _target_page(encl, source)
    if (info.flags & 2 and not info.flags & 1) or info.page_type != PageType.REG:
        raise gp("EACCEPTCOPY: bad SECINFO")
    if (not src.valid or not src.r or src.pending or src.modified or src.blocked
            or src.pt != PageType.REG or src.enclave is not encl or src.linaddr != source):
        raise _sgx_pf(source, "EACCEPTCOPY: the source page is not readable")
    if (not target.valid or not target.pending or target.modified or target.blocked
            or target.pt != PageType.REG or target.enclave is not encl
            or not (target.r and target.w and not target.x) or target.linaddr != dest):
        return SgxError.PAGE_ATTRIBUTES_MISMATCH
    encl.page_view(dest)[:] = bytes(encl.page_view(source))
    target.set_permissions(info.flags)
    target.pending = False
    encl.note_change(dest)
    return SgxError.SUCCESS
