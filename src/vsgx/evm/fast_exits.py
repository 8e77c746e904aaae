"""The opt-in fast-exit mode: cheaper exits for those who trade exactness
for speed.

On AMD the hypervisor intercepts #UD, so each ENCLU costs a trip through
it (#UD -> SIGILL -> return: about 7.5 us here), while INT3 -> SIGTRAP
costs about a third of that. After EINIT has checked the measurement of
the original bytes, each EEXIT site of the trusted runtime — an ENCLU
right after ``mov $4, %eax`` or ``mov $4, %rax`` (the leaf number), as
Intel's trts and most runtimes write it — has its three ENCLU bytes
(0F 01 D7) rewritten into INT3 and a two-byte NOP (CC 66 90). The INT3 at
a recorded site is the ENCLU it replaced: the EVM and the runner carry out
the leaf RAX names exactly as they would for the ENCLU (an EEXIT through
the runner alone on the fast path), and RIP after it is the original
next instruction.

What the enclave can then observe (README, "Fast exits"): its code bytes
at those sites read CC 66 90 (a self-check of its own text would see
them); a jump to the middle of a rewritten ENCLU (its second or third
byte) runs the NOP instead of faulting; an INT3 exception it takes is
never one of these sites. Nothing else changes: MRENCLAVE, the SIGSTRUCT
check, keys and reports are those of the original bytes. Sites beyond
MAX_EXIT_SITES, and ENCLUs in any other form, keep trapping as ENCLU.
"""

from __future__ import annotations

from vsgx.arch.constants import ENCLU_OPCODE, PAGE_SIZE, PageType
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.runner.layout import MAX_EXIT_SITES

EEXIT_LEADS = (b"\xb8\x04\x00\x00\x00",  # mov $4, %eax
               b"\x48\xc7\xc0\x04\x00\x00\x00")  # mov $4, %rax
REWRITTEN_ENCLU = b"\xcc\x66\x90"  # int3; xchg %ax, %ax


def _executable_runs(encl: EnclaveState) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive executable REG pages."""
    pages = sorted(page for page, entry in encl.pages.items()
                   if entry.x and entry.pt == PageType.REG)
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][1] == page:
            runs[-1] = (runs[-1][0], page + PAGE_SIZE)
        else:
            runs.append((page, page + PAGE_SIZE))
    return runs


def find_exit_sites(encl: EnclaveState) -> list[int]:
    """The linear addresses of the enclave's EEXIT ENCLUs (at most
    MAX_EXIT_SITES, lowest first)."""
    assert encl.memory is not None
    view = encl.memory.view
    sites: list[int] = []
    for start, end in _executable_runs(encl):
        code = bytes(view[start - encl.base:end - encl.base])
        at = code.find(ENCLU_OPCODE)
        while at >= 0:
            if any(at >= len(lead) and code[at - len(lead):at] == lead for lead in EEXIT_LEADS):
                sites.append(start + at)
                if len(sites) == MAX_EXIT_SITES:
                    return sites
            at = code.find(ENCLU_OPCODE, at + 1)
    return sites


def is_exit_site(encl: EnclaveState, address: int) -> bool:
    """Whether ``address`` is a rewritten site that still holds what the EVM
    wrote there (code the enclave later put at a former site is its own)."""
    if address not in encl.exit_sites:
        return False
    assert encl.memory is not None
    offset = address - encl.base
    return encl.memory.view[offset:offset + len(REWRITTEN_ENCLU)] == REWRITTEN_ENCLU


def rewrite_exit_sites(encl: EnclaveState) -> frozenset[int]:
    """Rewrite the EEXIT sites of an initialised enclave (machine lock
    held); the executors hear of the changed pages as of EDBGWR's."""
    if not encl.initialized:
        raise ValueError("exit sites are rewritten after EINIT only")
    sites = find_exit_sites(encl)
    assert encl.memory is not None
    view = encl.memory.view
    for site in sites:
        offset = site - encl.base
        view[offset:offset + len(REWRITTEN_ENCLU)] = REWRITTEN_ENCLU
        for page in {site & ~(PAGE_SIZE - 1), (site + 2) & ~(PAGE_SIZE - 1)}:
            encl.rewritten.append(page)
            encl.note_change(page)
    encl.exit_sites = frozenset(sites)
    return encl.exit_sites


__all__ = ["MAX_EXIT_SITES", "REWRITTEN_ENCLU", "find_exit_sites", "is_exit_site",
           "rewrite_exit_sites"]
