"""Loading a build plan through the driver: what Intel's urts loader and the
kernel selftests' load.c do — choose a naturally aligned base, ECREATE with
the attributes the SIGSTRUCT allows, EADD/EEXTEND every run in plan order,
EINIT with the SIGSTRUCT.

Which pages are added is the plan's (that is Intel's loader's) choice, and
every one of them is EADDed in order, so MRENCLAVE cannot change: the SDK
heap that urts adds without EEXTEND still gets its EADD record. What the
loader decides is only where each page lives: pages with content get an
EPC page; uniform runs (zero heaps, 0xCC stacks, SSA frames) get EPC pages
while free ones are left over from the content still to come, and the rest
stay deferred inside the EVM until first touched. Regions the plan only
reserves (guards, ELRANGE beyond the image, EDMM heaps) are never touched.
Before ECREATE, the loader checks that the enclave can fit at all.
"""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, Attribute
from vsgx.arch.secs import Secs
from vsgx.avm.driver import RECLAIM_BATCH, VA_SLOTS, DriverEnclave, SgxDriver
from vsgx.avm.memory import AddressSpace
from vsgx.errors import VsgxError
from vsgx.image.plan import BuildPlan

_BATCH_PAGES = 256
# EPC pages an enclave needs beyond its VA pages to make progress: its SECS
# and a working set for one entry (TCS, SSA frames, code, stack, data).
_WORKING_SET = 16


class EnclaveTooLarge(VsgxError):
    """The enclave cannot fit this host: said before any work is done."""


def _mib(pages: int) -> str:
    return f"{pages * PAGE_SIZE / (1 << 20):,.1f} MiB"


def check_fits(driver: SgxDriver, memory: AddressSpace, plan: BuildPlan) -> None:
    """Refuse, with the sizes, an enclave that this EPC, this AVM's memory
    for evicted pages, or the address spaces cannot hold."""
    size = plan.ecreate.size
    limit_bits = driver.cpuid.max_enclave_size_64
    if size >= 1 << limit_bits:
        raise EnclaveTooLarge(f"the enclave's ELRANGE is {size >> 20:,} MiB; this EVM's "
                              f"enclaves are smaller than 2^{limit_bits} bytes")
    memory.check_enclave_range(size)
    content = sum(run.count for run in plan.runs
                  if run.data is not None or not driver.defers)
    va_pages = -(-content // VA_SLOTS)
    usable = driver.free_epc_pages + driver.reclaimable_pages
    needed = 1 + va_pages + _WORKING_SET
    if usable < needed:
        raise EnclaveTooLarge(
            f"the enclave does not fit the EPC: its {content:,} pages of content need "
            f"{va_pages:,} VA pages, and with its SECS and a working set at least {needed:,} "
            f"EPC pages ({_mib(needed)}); {usable:,} ({_mib(usable)}) are free or "
            f"reclaimable of the EPC's {driver.epc_pages:,}")
    spill = max(0, content - (usable - 1 - va_pages))
    room = driver.evicted_limit - driver.evicted_pages
    if spill > room:
        raise EnclaveTooLarge(
            f"the enclave does not fit: {content:,} pages ({_mib(content)}) of content must "
            f"stay in the EPC or be evicted to the AVM's memory; the EPC leaves room for "
            f"{usable - 1 - va_pages:,}, and the AVM may hold {room:,} more evicted pages "
            f"({_mib(room)}), not {spill:,}")


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
    desired = plan.details.get("desired_misc_select", 0)
    assert isinstance(desired, int)  # the SDK metadata's MiscSelect, as read
    miscselect = platform_misc & (sig.miscselect | desired)
    if miscselect & sig.miscmask != sig.miscselect & sig.miscmask:
        miscselect = sig.miscselect
    return Secs(size=plan.ecreate.size, baseaddr=base, ssaframesize=plan.ecreate.ssaframesize,
                miscselect=miscselect, attributes=attributes, xfrm=xfrm)


def load_plan(driver: SgxDriver, memory: AddressSpace, plan: BuildPlan, *, debug: bool = True
              ) -> DriverEnclave:
    if plan.sigstruct_bytes is None:
        raise VsgxError("the enclave is not signed")
    check_fits(driver, memory, plan)
    base = memory.reserve_enclave_range(plan.ecreate.size)
    cpuid = driver.cpuid
    secs = secs_for(plan, base, cpuid.xfrm, cpuid.miscselect, debug)
    encl = driver.create(secs)
    # Pages with content still to add once each run is done: uniform runs
    # leave them the free EPC pages.
    content_after = []
    remaining = 0
    for run in reversed(plan.runs):
        content_after.append(remaining)
        if run.data is not None:
            remaining += run.count
    content_after.reverse()
    try:
        for run, later in zip(plan.runs, content_after, strict=True):
            secinfo = run.secinfo_flags.to_bytes(8, "little") + bytes(56)
            if run.data is not None:
                for first in range(0, run.count, _BATCH_PAGES):
                    count = min(_BATCH_PAGES, run.count - first)
                    driver.add_pages(encl, run.offset + first * PAGE_SIZE,
                                     run.data[first * PAGE_SIZE:(first + count) * PAGE_SIZE],
                                     secinfo, run.measured)
                continue
            budget = driver.free_epc_pages - later - -(-later // VA_SLOTS) - RECLAIM_BATCH
            driver.add_uniform_pages(encl, run.offset, run.count, run.fill, secinfo,
                                     run.measured, resident=max(0, budget))
        driver.init(encl, plan.sigstruct_bytes)
    except BaseException:
        driver.destroy(encl)
        raise
    return encl
