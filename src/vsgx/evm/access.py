"""Access control in enclave mode (SDM "Access-control
Requirements", "Page-based Access Control"): what a page of ELRANGE
allows, and the #PF error code when it does not.

Paging checks come first (the application's page tables: a page with no EPC
page behind it is not present, and mprotect() can take rights away), then
the EPCM checks, whose faults carry the SGX bit."""

from __future__ import annotations

from enum import Enum

from vsgx.arch.constants import PAGE_SIZE, PageType, PfErrorCode
from vsgx.evm.enclave import PROT_ALL, PROT_R, PROT_W, PROT_X, EnclaveState
from vsgx.evm.epc import EpcmEntry


class Access(Enum):
    """The kind of an access to a page (the #PF error code's W and I bits)."""

    READ = "read"
    WRITE = "write"
    FETCH = "fetch"  # an instruction fetch


READ, WRITE, FETCH = Access.READ, Access.WRITE, Access.FETCH
_NEED = {READ: PROT_R, WRITE: PROT_W, FETCH: PROT_X}


def epcm_prot(entry: EpcmEntry | None) -> int:
    if (entry is None or not entry.valid or entry.blocked or entry.pending or entry.modified
            or entry.pt != PageType.REG):
        return 0
    return (PROT_R if entry.r else 0) | (PROT_W if entry.w else 0) | (PROT_X if entry.x else 0)


def page_prot(encl: EnclaveState, page: int) -> int:
    """Rights an access to ``page`` has: EPCM and page tables both allow it."""
    return epcm_prot(encl.pages.get(page)) & encl.pte_permissions(page)


def fault_code(encl: EnclaveState, page: int, access: Access) -> int:
    """The #PF error code of a denied ``access`` to ``page``."""
    code = PfErrorCode.U
    if access is WRITE:
        code |= PfErrorCode.W
    elif access is FETCH:
        code |= PfErrorCode.I
    entry = encl.pages.get(page)
    if entry is None:
        return int(code)  # not present: no EPC page is mapped there
    code |= PfErrorCode.P
    if not encl.pte_permissions(page) & _NEED[access]:
        return int(code)  # the application's page tables deny it
    return int(code | PfErrorCode.SGX)


def allowed(encl: EnclaveState, page: int, access: Access) -> bool:
    return bool(page_prot(encl, page) & _NEED[access])


def protection_runs(encl: EnclaveState, current: dict[int, int],
                    also: list[int] | tuple[int, ...] = ()
                    ) -> tuple[dict[int, int], list[tuple[int, int, int]]]:
    """What an executor must change so that its page protections follow
    EPCM and the page tables: the new page -> rights map, and (start, end,
    rights) runs of consecutive pages whose rights changed (or that are in
    ``also``, pages rewritten behind the executor's back)."""
    # page_prot of every page, its lookups hoisted: this runs over the whole enclave
    desired = {}
    pte = encl.pte
    for page, entry in encl.pages.items():
        prot = epcm_prot(entry)
        if prot and pte:
            prot &= pte.get(page, PROT_ALL)
        if prot:
            desired[page] = prot
    if not current and not also:
        return desired, _runs(desired)
    changes = {page: 0 for page in current if page not in desired}
    for page, prot in desired.items():
        if current.get(page) != prot:
            changes[page] = prot
    for page in also:
        changes.setdefault(page, desired.get(page, 0))
    return desired, _runs(changes)


def changed_protection_runs(encl: EnclaveState, current: dict[int, int],
                            pages: list[int]) -> list[tuple[int, int, int]]:
    """protection_runs for an executor whose ``current`` map was exact
    before ``pages`` changed (EnclaveState.changes_since): only those pages
    are looked at, and ``current`` is brought up to date in place. A batch
    of EWBs costs its own pages, not the enclave's."""
    changes = {}
    for page in set(pages):
        prot = page_prot(encl, page)
        if current.get(page, 0) != prot:
            changes[page] = prot
            if prot:
                current[page] = prot
            else:
                current.pop(page, None)
    return _runs(changes)


def _runs(changes: dict[int, int]) -> list[tuple[int, int, int]]:
    """(start, end, rights) runs of consecutive pages with the same rights."""
    runs: list[tuple[int, int, int]] = []
    for page in sorted(changes):
        prot = changes[page]
        if runs and runs[-1][1] == page and runs[-1][2] == prot:
            runs[-1] = (runs[-1][0], page + PAGE_SIZE, prot)
        else:
            runs.append((page, page + PAGE_SIZE, prot))
    return runs
