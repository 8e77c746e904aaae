"""Removing pages (SDM EREMOVE, "Remove a page from the EPC"): a child page
leaves its enclave, a VA page is freed, and the SECS goes last, taking the
enclave's memory and executors with it."""

from __future__ import annotations

from vsgx.arch.constants import PageType
from vsgx.arch.errors import SgxError
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.encls.operands import detach, secs_of
from vsgx.evm.machine import Machine


def eremove(m: Machine, epc_page: int) -> SgxError:
    entry = m.epc.entry(epc_page)
    if not entry.valid:
        return SgxError.SUCCESS
    if entry.pt == PageType.VA:
        m.epc.va_slots.pop(epc_page, None)
        entry.clear()
        return SgxError.SUCCESS
    if entry.pt == PageType.SECS:
        encl = m.epc.secs[epc_page]
        if encl.child_count:
            return m.refuse(SgxError.CHILD_PRESENT, "child_present")
        destroy_enclave(encl)
        del m.epc.secs[epc_page]
        entry.clear()
        return SgxError.SUCCESS
    owner = entry.enclave
    assert owner is not None
    if entry.pt == PageType.TRIM and not entry.modified:
        detach(owner, entry)
        return SgxError.SUCCESS
    if owner.inside:
        return m.refuse(SgxError.ENCLAVE_ACT, "enclave_active")
    thread = owner.threads.pop(entry.linaddr, None)
    if thread is not None:
        thread.close()
    detach(owner, entry)
    return SgxError.SUCCESS


def eremove_enclave(m: Machine, secs_page: int) -> None:
    """EREMOVE of every page of an enclave, then of its SECS: a driver's
    release, with nobody inside (EENTERed threads are forgotten). The end
    state of the EREMOVEs one by one, in one step under the machine lock:
    the pages' memory and executors go with the SECS, not one by one."""
    encl = secs_of(m, secs_page)
    encl.inside.clear()
    removed = list(encl.pages)
    for entry in encl.pages.values():
        entry.clear()
    encl.pages.clear()
    encl.old.clear()
    encl.child_count = 0
    encl.note_changes(removed)
    eremove(m, secs_page)


def destroy_enclave(encl: EnclaveState) -> None:
    """Release an enclave's executors and memory (when its SECS goes)."""
    encl.deferred.clear()
    for thread in list(encl.threads.values()):
        thread.close()
    encl.threads.clear()
    spare, encl.spare_executor = encl.spare_executor, None
    if spare is not None:
        spare.close()
    if encl.memory is not None:
        encl.memory.close()
        encl.memory = None
