"""The SGX architecture as data (SDM Vol. 3D): constants, error codes and
every architectural structure with its exact layout. Standard library only."""

from vsgx.arch.constants import (
    ENCLU_OPCODE,
    PAGE_SIZE,
    Attribute,
    Encls,
    Enclu,
    ExitKind,
    ExitType,
    KeyName,
    KeyPolicy,
    MiscSelect,
    PageType,
    PfErrorCode,
    SecinfoFlags,
    Vector,
    Xfrm,
)
from vsgx.arch.cpuid import EpcSection, SgxCpuid
from vsgx.arch.einittoken import Einittoken
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.keyrequest import Keyrequest
from vsgx.arch.pageinfo import Pageinfo, Pcmd, Secinfo
from vsgx.arch.report import Report, Targetinfo
from vsgx.arch.secs import Secs
from vsgx.arch.sigstruct import Sigstruct
from vsgx.arch.ssa import Exinfo, Gprsgx
from vsgx.arch.tcs import Tcs

__all__ = [
    "ENCLU_OPCODE", "PAGE_SIZE", "Attribute", "Einittoken", "Encls", "Enclu", "EpcSection",
    "Exinfo", "ExitKind", "ExitType", "Fault", "Gprsgx", "KeyName", "KeyPolicy", "Keyrequest",
    "MiscSelect", "PageType", "Pageinfo", "Pcmd", "PfErrorCode", "Report", "Secinfo",
    "SecinfoFlags", "Secs", "SgxCpuid", "SgxError", "Sigstruct", "Targetinfo", "Tcs", "Vector",
    "Xfrm",
]
