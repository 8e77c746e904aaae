"""EGETKEY's key derivation, as the SDM's key-derivation table (EGETKEY,
"Key Derivation"): for each KEYNAME, which dependencies come from the
enclave (SECS), which from KEYREQUEST, which are KEYREQUEST's mask applied
to the enclave's value, which the KEYPOLICY selects, which are CPU state —
and everything the table does not name is zero. One generic derivation
reads the table; EREPORT derives its MAC key with the REPORT_KEY row for
the target enclave.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from vsgx.arch.constants import Attribute, KeyName, KeyPolicy, cpusvn_at_most
from vsgx.arch.errors import SgxError
from vsgx.arch.keyrequest import Keyrequest
from vsgx.arch.report import Targetinfo
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
from vsgx.evm.machine import Machine


class KeyIdentity(Protocol):
    """What the table reads of an enclave: its SECS fields (read only, so a
    frozen identity such as the QE's serves as well as a live SECS)."""

    @property
    def attributes(self) -> int: ...

    @property
    def xfrm(self) -> int: ...

    @property
    def miscselect(self) -> int: ...

    @property
    def mrenclave(self) -> bytes: ...

    @property
    def mrsigner(self) -> bytes: ...

    @property
    def isvprodid(self) -> int: ...

    @property
    def isvsvn(self) -> int: ...

    @property
    def isvfamilyid(self) -> bytes: ...

    @property
    def isvextprodid(self) -> bytes: ...

    @property
    def configid(self) -> bytes: ...

    @property
    def configsvn(self) -> int: ...

    @property
    def cet_attributes(self) -> int: ...

    @property
    def padding(self) -> bytes: ...


@dataclass(frozen=True)
class _Context:
    machine: Machine
    secs: KeyIdentity
    request: Keyrequest


# -- the cells of the table ---------------------------------------------------
class Source(Protocol):
    def value(self, c: _Context) -> Any: ...


@dataclass(frozen=True)
class Secs:
    """The enclave's own SECS field."""

    name: str

    def value(self, c: _Context) -> Any:
        return getattr(c.secs, self.name)


@dataclass(frozen=True)
class Request:
    """KEYREQUEST's field."""

    name: str

    def value(self, c: _Context) -> Any:
        return getattr(c.request, self.name)


@dataclass(frozen=True)
class Masked:
    """KEYREQUEST's mask ANDed with the SECS field (``always`` bits are in
    every mask: INIT and DEBUG for ATTRIBUTES)."""

    mask: str
    name: str
    always: int = 0

    def value(self, c: _Context) -> int:
        return int((getattr(c.request, self.mask) | self.always) & getattr(c.secs, self.name))


@dataclass(frozen=True)
class Inverted:
    """The complement of a 32-bit KEYREQUEST mask (MISCMASK)."""

    name: str

    def value(self, c: _Context) -> int:
        return int(~getattr(c.request, self.name) & 0xFFFFFFFF)


@dataclass(frozen=True)
class Selected:
    """``source`` when KEYPOLICY has ``policy`` (or lacks it, ``unless``), else zero."""

    policy: KeyPolicy
    source: Source
    zero: Any
    unless: bool = False

    def value(self, c: _Context) -> Any:
        chosen = bool(c.request.keypolicy & self.policy) != self.unless
        return self.source.value(c) if chosen else self.zero


@dataclass(frozen=True)
class Cpu:
    """CPU state: the CPUSVN register, CSR_SEOWNEREPOCH, the seal fuses."""

    name: str

    def value(self, c: _Context) -> Any:
        if self.name == "cpusvn":
            return c.machine.config.cpusvn
        return getattr(c.machine.secrets, self.name)


@dataclass(frozen=True)
class Constant:
    """A key-dependent constant (HARDCODED_PKCS1_5_PADDING)."""

    data: Any

    def value(self, c: _Context) -> Any:
        return self.data


@dataclass(frozen=True)
class KeyRule:
    """One row of the table: the ATTRIBUTES bit the enclave needs, which
    SVNs the request may not exceed, and the source of each dependency."""

    requires: Attribute | None
    svn_checked: bool
    configsvn_checked: bool
    sources: dict[str, Source] = field(default_factory=dict)


_OWNER_EPOCH, _SEAL_FUSES = Cpu("owner_epoch"), Cpu("seal_key_fuses")
_ATTRIBUTES = Masked("attributemask", "attributes", always=int(Attribute.INIT | Attribute.DEBUG))
_XFRM, _MISC = Masked("xfrmmask", "xfrm"), Masked("miscmask", "miscselect")
# What every key an enclave names its SVNs for shares.
_REQUESTED: dict[str, Source] = {
    "ownerepoch": _OWNER_EPOCH, "seal_key_fuses": _SEAL_FUSES, "padding": Secs("padding"),
    "cpusvn": Request("cpusvn"), "isvsvn": Request("isvsvn"), "attributes": _ATTRIBUTES,
    "xfrm": _XFRM, "miscselect": _MISC}
_MASKS: dict[str, Source] = {"attributemask": Request("attributemask"),
                             "xfrmmask": Request("xfrmmask"), "miscmask": Inverted("miscmask")}


# The identity fields KEYPOLICY chooses for the two seal keys.
_BY_POLICY: dict[str, Source] = {
    "isvprodid": Selected(KeyPolicy.NOISVPRODID, Secs("isvprodid"), 0, unless=True),
    "isvextprodid": Selected(KeyPolicy.ISVEXTPRODID, Secs("isvextprodid"), bytes(16)),
    "isvfamilyid": Selected(KeyPolicy.ISVFAMILYID, Secs("isvfamilyid"), bytes(16)),
    "configid": Selected(KeyPolicy.CONFIGID, Secs("configid"), bytes(64)),
    "configsvn": Selected(KeyPolicy.CONFIGID, Request("configsvn"), 0),
    "keypolicy": Request("keypolicy"),
}


KEY_DERIVATION: dict[KeyName, KeyRule] = {
    KeyName.EINITTOKEN_KEY: KeyRule(Attribute.EINITTOKEN_KEY, True, False, {
        **_REQUESTED, "isvprodid": Secs("isvprodid"), "mrsigner": Secs("mrsigner"),
        "keyid": Request("keyid")}),
    KeyName.PROVISION_KEY: KeyRule(Attribute.PROVISIONKEY, True, False, {
        **_REQUESTED, **_MASKS, "ownerepoch": Constant(bytes(16)),
        "seal_key_fuses": Constant(bytes(16)), "mrsigner": Secs("mrsigner"),
        "isvprodid": Secs("isvprodid")}),
    KeyName.PROVISION_SEAL_KEY: KeyRule(Attribute.PROVISIONKEY, True, False, {
        **_REQUESTED, **_MASKS, "ownerepoch": Constant(bytes(16)),
        "mrsigner": Secs("mrsigner"), **_BY_POLICY}),
    KeyName.REPORT_KEY: KeyRule(None, False, False, {
        "attributes": Secs("attributes"), "xfrm": Secs("xfrm"),
        "miscselect": Secs("miscselect"), "ownerepoch": _OWNER_EPOCH,
        "seal_key_fuses": _SEAL_FUSES, "cpusvn": Cpu("cpusvn"), "mrenclave": Secs("mrenclave"),
        "configid": Secs("configid"), "configsvn": Secs("configsvn"),
        "keyid": Request("keyid"), "padding": Constant(PKCS1_PADDING),
        "cet_attributes": Secs("cet_attributes")}),
    KeyName.SEAL_KEY: KeyRule(None, True, True, {
        **_REQUESTED, **_MASKS, "keyid": Request("keyid"),
        "mrenclave": Selected(KeyPolicy.MRENCLAVE, Secs("mrenclave"), bytes(32)),
        "mrsigner": Selected(KeyPolicy.MRSIGNER, Secs("mrsigner"), bytes(32)),
        "cet_attributes_mask": Request("cet_attributes_mask"),
        **_BY_POLICY}),
}


def key_dependencies(m: Machine, secs: KeyIdentity, request: Keyrequest
                     ) -> KeyDependencies | SgxError:
    """The SDM's TMP_KEYDEPENDENCIES for ``request`` by the enclave ``secs``,
    or the error EGETKEY returns (``m.refusal`` names the check)."""
    try:
        name = KeyName(request.keyname)
    except ValueError:
        return m.refuse(SgxError.INVALID_KEYNAME, "keyname")
    rule = KEY_DERIVATION[name]
    if rule.requires is not None and not secs.attributes & rule.requires:
        return m.refuse(SgxError.INVALID_ATTRIBUTE, "keyname_not_allowed")
    if rule.svn_checked:
        if not cpusvn_at_most(request.cpusvn, m.config.cpusvn):
            return m.refuse(SgxError.INVALID_CPUSVN, "cpusvn")
        if request.isvsvn > secs.isvsvn:
            return m.refuse(SgxError.INVALID_ISVSVN, "isvsvn")
        if rule.configsvn_checked and request.configsvn > secs.configsvn:
            return m.refuse(SgxError.INVALID_ISVSVN, "configsvn")
    context = _Context(m, secs, request)
    return KeyDependencies(keyname=name, **{dependency: source.value(context)
                                            for dependency, source in rule.sources.items()})


def derive(m: Machine, secs: KeyIdentity, request: Keyrequest) -> bytes | SgxError:
    """The key, or the error EGETKEY returns."""
    deps = key_dependencies(m, secs, request)
    if isinstance(deps, SgxError):
        return deps
    return derive_key(m.secrets.derivation_key, deps)


@dataclass(frozen=True)
class TargetIdentity:
    """A TARGETINFO read as the target's SECS (what EREPORT MACs for)."""

    attributes: int
    xfrm: int
    miscselect: int
    mrenclave: bytes
    configid: bytes
    configsvn: int
    cet_attributes: int

    @classmethod
    def of(cls, target: Targetinfo) -> TargetIdentity:
        return cls(target.attributes, target.xfrm, target.miscselect, target.measurement,
                   target.configid, target.configsvn, target.cet_attributes)


def report_key_dependencies(m: Machine, target: Targetinfo, keyid: bytes) -> KeyDependencies:
    """What EREPORT derives its MAC key from: the REPORT_KEY row for the
    enclave TARGETINFO describes (what its EGETKEY(REPORT_KEY) derives with
    KEYREQUEST.KEYID = ``keyid``)."""
    deps = key_dependencies(m, TargetIdentity.of(target),  # type: ignore[arg-type]
                            Keyrequest(keyname=KeyName.REPORT_KEY, keyid=keyid))
    assert isinstance(deps, KeyDependencies)  # REPORT_KEY has no checks
    return deps


def report_key(m: Machine, target: Targetinfo, keyid: bytes) -> bytes:
    """The key EREPORT MACs with."""
    return derive_key(m.secrets.derivation_key, report_key_dependencies(m, target, keyid))
