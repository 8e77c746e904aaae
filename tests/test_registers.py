"""EEXIT's register rule (vsgx.arch.registers), which both fast-path
clients apply to what a runner reports (where it refuses, the EVM's thread
raises VsgxError and the AVM behind a Unix socket EnclaveLost): the CLIENT
area is writable by enclave code, so whatever it says about RIP, RCX and
the FS/GS bases, the exit gets RIP = RBX and the entry's AEP and bases,
with RF clear."""

from __future__ import annotations

import pytest

from vsgx.arch.registers import (
    FSBASE,
    GSBASE,
    RBX,
    RCX,
    REG_COUNT,
    RF,
    RFLAGS,
    RIP,
    RSI,
    canonical,
    eexit_registers,
)


def entry() -> list[int]:
    registers = [0] * REG_COUNT
    registers[RCX] = 0x401000  # the AEP
    registers[FSBASE], registers[GSBASE] = 0x7F0000001000, 0x7F0000002000
    return registers


def tampered(rbx: int) -> list[int]:
    reported = [0x41] * REG_COUNT
    reported[RBX] = rbx
    reported[RIP] = 0xDEAD0000  # what a hostile enclave wrote there
    reported[RCX] = 0xBAD
    reported[FSBASE] = reported[GSBASE] = 0xBAD000
    reported[RFLAGS] = RF | 0x246
    reported[RSI] = 7
    return reported


def test_what_the_runner_reports_is_overruled_where_eexit_defines_it() -> None:
    regs = eexit_registers(tampered(0x402000), entry())
    assert regs is not None
    assert regs[RIP] == 0x402000 and regs[RCX] == 0x401000
    assert (regs[FSBASE], regs[GSBASE]) == (0x7F0000001000, 0x7F0000002000)
    assert regs[RFLAGS] == 0x246 and not regs[RFLAGS] & RF
    assert regs[RSI] == 7  # the rest is the enclave's


@pytest.mark.parametrize("rbx", [1 << 47, (1 << 64) - (1 << 47) - 1, 0x8000DEAD00000000])
def test_a_non_canonical_target_is_refused(rbx: int) -> None:
    assert not canonical(rbx)
    assert eexit_registers(tampered(rbx), entry()) is None


def test_canonical_edges() -> None:
    assert canonical(0) and canonical((1 << 47) - 1)
    assert canonical((1 << 64) - (1 << 47)) and canonical((1 << 64) - 1)
