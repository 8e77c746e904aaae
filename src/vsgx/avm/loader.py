"""Loading a build plan through the driver: what Intel's urts loader and the
kernel selftests' load.c do — choose a naturally aligned base, ECREATE with
the attributes the SIGSTRUCT allows, EADD/EEXTEND every run in plan order,
EINIT with the SIGSTRUCT."""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, Attribute
from vsgx.arch.secs import Secs
from vsgx.avm.driver import DriverEnclave, SgxDriver
from vsgx.avm.memory import AddressSpace
from vsgx.errors import VsgxError
from vsgx.image.plan import BuildPlan

_BATCH_PAGES = 256


def secs_for(plan: BuildPlan, base: int, platform_xfrm: int, platform_misc: int,
             debug: bool) -> Secs:
    """The SECS a loader asks ECREATE for (psw/urts: get_misc_attr)."""
    sig = plan.sigstruct
    if sig is None:
        raise VsgxError("the plan has no SIGSTRUCT")
    attributes = (plan.ecreate.attributes | int(Attribute.MODE64BIT)) & ~int(Attribute.INIT)
    attributes &= ~int(Attribute.DEBUG)
    if debug:
        if sig.attributemask & Attribute.DEBUG and not sig.attributes & Attribute.DEBUG:
            raise VsgxError("the enclave was signed without DEBUG: load it with debug=False")
        attributes |= int(Attribute.DEBUG)
    # XFRM: what the SIGSTRUCT requires, plus what the enclave wants and the
    # platform can run among the bits it leaves free.
    free = ~sig.xfrmmask & ((1 << 64) - 1)
    xfrm = (sig.xfrm & sig.xfrmmask) | (plan.ecreate.xfrm & platform_xfrm & free) | 0x3
    desired = int(plan.details.get("desired_misc_select", 0))  # type: ignore[call-overload]
    miscselect = platform_misc & (sig.miscselect | desired)
    if miscselect & sig.miscmask != sig.miscselect & sig.miscmask:
        miscselect = sig.miscselect
    return Secs(size=plan.ecreate.size, baseaddr=base, ssaframesize=plan.ecreate.ssaframesize,
                miscselect=miscselect, attributes=attributes, xfrm=xfrm)


def load_plan(driver: SgxDriver, memory: AddressSpace, plan: BuildPlan, *, debug: bool = True
              ) -> DriverEnclave:
    if plan.sigstruct_bytes is None:
        raise VsgxError("the enclave is not signed")
    base = memory.reserve_enclave_range(plan.ecreate.size)
    cpuid = driver.cpuid
    secs = secs_for(plan, base, cpuid.xfrm, cpuid.miscselect, debug)
    encl = driver.create(secs)
    try:
        for run in plan.runs:
            secinfo = run.secinfo_flags.to_bytes(8, "little") + bytes(56)
            if run.data is not None:
                driver.add_pages(encl, run.offset, run.data, secinfo, run.measured)
                continue
            fill = run.fill_page()
            for first in range(0, run.count, _BATCH_PAGES):
                count = min(_BATCH_PAGES, run.count - first)
                driver.add_pages(encl, run.offset + first * PAGE_SIZE, fill * count, secinfo,
                                 run.measured)
        driver.init(encl, plan.sigstruct_bytes)
    except BaseException:
        driver.destroy(encl)
        raise
    return encl
