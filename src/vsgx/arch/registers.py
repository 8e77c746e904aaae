"""The registers an entry carries, in one order everywhere: the executor
interface, the channel's entry and exit messages, the runner's areas and the
host API. GPRSGX's order (SDM "State Save Area (SSA) Frame": RAX..R15,
RFLAGS, RIP), then the FS and GS bases.

And EEXIT's register rule (SDM "EEXIT—Exits an Enclave"), for every side
that completes an EEXIT from a runner's report, which enclave code can
write: RIP = RBX, RCX = the AEP of the entry, FS and GS as at the entry,
RFLAGS.RF clear."""

from __future__ import annotations

from collections.abc import Sequence

REG_COUNT = 20
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
RFLAGS, RIP, FSBASE, GSBASE = 16, 17, 18, 19
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rflags", "rip", "fsbase", "gsbase")

RF = 1 << 16  # RFLAGS.RF
CANONICAL_HALF = 1 << 47


def canonical(address: int) -> bool:
    return address < CANONICAL_HALF or address >= (1 << 64) - CANONICAL_HALF


def eexit_registers(reported: Sequence[int], at_enclu: Sequence[int]) -> list[int] | None:
    """The registers after an EEXIT: ``reported`` (as the runner saw them at
    the ENCLU) with what EEXIT sets taken from the entry (``at_enclu``, the
    caller's registers at its EENTER). None if RIP would not be canonical
    (a runner whose report was tampered with)."""
    regs = list(reported)
    regs[RIP] = regs[RBX]
    regs[RCX] = at_enclu[RCX]
    regs[FSBASE], regs[GSBASE] = at_enclu[FSBASE], at_enclu[GSBASE]
    regs[RFLAGS] = (regs[RFLAGS] & ~RF) | 0x2
    return regs if canonical(regs[RIP]) else None


__all__ = ["CANONICAL_HALF", "FSBASE", "GSBASE", "R8", "R9", "R10", "R11", "R12", "R13", "R14",
           "R15", "RAX", "RBP", "RBX", "RCX", "RDI", "RDX", "REG_COUNT", "REG_NAMES", "RF",
           "RFLAGS", "RIP", "RSI", "RSP", "canonical", "eexit_registers"]
