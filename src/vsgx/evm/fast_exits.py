"""The opt-in fast-exit mode: cheaper exits for those who trade exactness
for speed.

Every ENCLU outside SGX is a trap (#UD -> SIGILL on AMD, about 7.5 us on
an EPYC guest whose hypervisor intercepts #UD; #GP -> SIGSEGV on Intel,
about 1.9 us). After EINIT has checked the measurement of the original
bytes, each EEXIT site of the trusted runtime — an ENCLU right after
``mov $4, %eax`` or ``mov $4, %rax`` (the leaf number), as Intel's trts and
most runtimes write it — has its ``mov`` rewritten into a jump to an entry
of the *exit gate*, a page of the native runner just below ELRANGE
(``layout.exit_gate_address``): ``E9 rel32`` (and ``66 90`` after it for
the seven-byte form), the ENCLU left as it was. The gate entry sets RAX =
4 as the ``mov`` did and goes to the runner's gate code, which on the fast
path completes the EEXIT without a trap or a system call. Everywhere else
(an entry through the EVM, the Unicorn executor, a runner that could not
map the gate) the jump reaches the gate entry and stops there — a code
fetch outside ELRANGE — and the EVM carries that stop out as the EEXIT at
the site.

A site the gate is out of reach of (a rel32 reaches 2 GiB) has its ENCLU
rewritten into INT3 and a two-byte NOP (``CC 66 90``) instead; the INT3 at
a recorded site is the ENCLU it replaced, on both executors, and INT3 ->
SIGTRAP costs a third to a half of ENCLU's own trap on AMD.

What the enclave can then observe (README, "Fast exits"): its code bytes
at those sites read the jump (or CC 66 90); a jump into the middle of a
rewritten instruction runs different bytes; a jump to a gate entry a
site uses is an EEXIT from anywhere (to another entry, #GP); reading the
gate page shows the gate, and the application's page just below ELRANGE
is out of the enclave's reach. An INT3 exception it takes is never one of
these sites. Nothing else changes:
MRENCLAVE, the SIGSTRUCT check, keys and reports are those of the original
bytes. Sites beyond MAX_EXIT_SITES, and ENCLUs in any other form, keep
trapping as ENCLU.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsgx.arch.constants import ENCLU_OPCODE, PAGE_SIZE, PageType
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.runner.layout import GATE_ENTRY_SIZE, MAX_EXIT_SITES

EEXIT_LEADS = (b"\xb8\x04\x00\x00\x00",  # mov $4, %eax
               b"\x48\xc7\xc0\x04\x00\x00\x00")  # mov $4, %rax
REWRITTEN_ENCLU = b"\xcc\x66\x90"  # int3; xchg %ax, %ax
JUMP = 0xE9  # jmp rel32
JUMP_FILLER = b"\x66\x90"  # the seven-byte lead's last two bytes
EEXIT_LEAF = 4


@dataclass(frozen=True)
class ExitSite:
    """An EEXIT site as found: the ENCLU's address and its ``mov``'s length."""

    enclu: int
    lead: int

    def jump_to(self, entry: int) -> bytes | None:
        """The bytes that replace the ``mov`` by a jump to ``entry``, or
        None if a rel32 does not reach it."""
        start = self.enclu - self.lead
        displacement = entry - (start + 5)
        if not -(1 << 31) <= displacement < 1 << 31:
            return None
        code = bytes([JUMP]) + displacement.to_bytes(4, "little", signed=True)
        return code + JUMP_FILLER[:self.lead - 5]


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


def find_sites(encl: EnclaveState) -> list[ExitSite]:
    """The enclave's EEXIT sites (at most MAX_EXIT_SITES, lowest first)."""
    assert encl.memory is not None
    view = encl.memory.view
    sites: list[ExitSite] = []
    for start, end in _executable_runs(encl):
        code = bytes(view[start - encl.base:end - encl.base])
        at = code.find(ENCLU_OPCODE)
        while at >= 0:
            lead = next((len(lead) for lead in EEXIT_LEADS
                         if at >= len(lead) and code[at - len(lead):at] == lead), 0)
            if lead:
                sites.append(ExitSite(start + at, lead))
                if len(sites) == MAX_EXIT_SITES:
                    return sites
            at = code.find(ENCLU_OPCODE, at + 1)
    return sites


def find_exit_sites(encl: EnclaveState) -> list[int]:
    """The linear addresses of the enclave's EEXIT ENCLUs (at most
    MAX_EXIT_SITES, lowest first)."""
    return [site.enclu for site in find_sites(encl)]


def is_exit_site(encl: EnclaveState, address: int) -> bool:
    """Whether ``address`` is a site rewritten into INT3 that still holds
    what the EVM wrote there (code the enclave later put at a former site
    is its own)."""
    if address not in encl.exit_sites:
        return False
    assert encl.memory is not None
    offset = address - encl.base
    return encl.memory.view[offset:offset + len(REWRITTEN_ENCLU)] == REWRITTEN_ENCLU


def gate_site(encl: EnclaveState, address: int) -> int | None:
    """The EEXIT ENCLU whose jump goes to the gate entry at ``address``, if
    it is one in use."""
    return encl.exit_gates.get(address) if encl.exit_gates else None


def _write(encl: EnclaveState, address: int, code: bytes) -> None:
    assert encl.memory is not None
    offset = address - encl.base
    encl.memory.view[offset:offset + len(code)] = code
    for page in {address & ~(PAGE_SIZE - 1), (address + len(code) - 1) & ~(PAGE_SIZE - 1)}:
        encl.note_change(page)  # executors drop their translations of it


def rewrite_exit_sites(encl: EnclaveState) -> frozenset[int]:
    """Rewrite the EEXIT sites of an initialised enclave (machine lock
    held): into jumps to the exit gate where it is in reach, into INT3
    elsewhere. The executors hear of the changed pages as of EDBGWR's.
    Returns the sites rewritten either way."""
    if not encl.initialized:
        raise ValueError("exit sites are rewritten after EINIT only")
    int3_sites: list[int] = []
    gates: dict[int, int] = {}
    for index, site in enumerate(find_sites(encl)):
        entry = encl.exit_gate + GATE_ENTRY_SIZE * index
        jump = site.jump_to(entry) if encl.exit_gate else None
        if jump is None:
            _write(encl, site.enclu, REWRITTEN_ENCLU)
            int3_sites.append(site.enclu)
        else:
            _write(encl, site.enclu - site.lead, jump)
            gates[entry] = site.enclu
    encl.exit_sites = frozenset(int3_sites)
    encl.exit_gates = gates
    return encl.exit_sites | frozenset(gates.values())


__all__ = ["EEXIT_LEAF", "MAX_EXIT_SITES", "REWRITTEN_ENCLU", "ExitSite", "find_exit_sites",
           "find_sites", "gate_site", "is_exit_site", "rewrite_exit_sites"]
