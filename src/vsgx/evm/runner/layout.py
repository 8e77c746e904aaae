"""The pages the EVM and a runner share, declared once.

Two areas, each a memfd of the EVM mapped into the runner:

* REPORT — written by the runner, read by the EVM. Mapped read-write in the
  runner, so enclave code can write it too: everything in it is untrusted.
* COMMAND — written by the EVM, mapped read-only in the runner: the
  commands, the page operations and the registers to enter with come only
  from here, and enclave code cannot forge them.

The C declarations (``vsgx_layout.h``) are generated from these tables when
the runner is built; the header asserts every offset, and a test compiles a
program that prints them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vsgx.evm.executor import REG_COUNT, REG_NAMES

_C_TYPES = {"u8": ("uint8_t", 1), "u32": ("uint32_t", 4), "u64": ("uint64_t", 8)}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    kind: str  # "u8", "u32" or "u64"
    count: int = 1  # > 1: an array

    @property
    def size(self) -> int:
        return _C_TYPES[self.kind][1] * self.count


@dataclass(frozen=True)
class Area:
    """A shared area: named fields at fixed offsets, padded to ``size``."""

    c_name: str
    size: int
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        position = 0
        for f in self.fields:
            width = _C_TYPES[f.kind][1]
            if f.offset < position or f.offset % width:
                raise AssertionError(f"{self.c_name}.{f.name}: overlapping or misaligned")
            position = f.offset + f.size
        if position > self.size or self.size % 4096:
            raise AssertionError(f"{self.c_name}: fields past its size, or not whole pages")

    def offset(self, name: str) -> int:
        for f in self.fields:
            if f.name == name:
                return f.offset
        raise KeyError(name)

    def end(self, name: str) -> int:
        for f in self.fields:
            if f.name == name:
                return f.offset + f.size
        raise KeyError(name)

    def c_struct(self) -> str:
        prefix = self.c_name.upper()
        lines = [f"#define {prefix}_OFF_{f.name.upper()} {f.offset}" for f in self.fields]
        lines.append(f"struct {self.c_name} {{")
        position = 0
        for index, f in enumerate(self.fields):
            if f.offset > position:
                lines.append(f"    uint8_t _gap{index}[{f.offset - position}];")
            array = f"[{f.count}]" if f.count > 1 else ""
            lines.append(f"    {_C_TYPES[f.kind][0]} {f.name}{array}; /* {f.offset} */")
            position = f.offset + f.size
        if position < self.size:
            lines.append(f"    uint8_t _tail[{self.size - position}];")
        lines.append("} __attribute__((aligned(4096)));")
        for f in self.fields:
            lines.append(f"_Static_assert(offsetof(struct {self.c_name}, {f.name}) == {f.offset}, "
                         f"\"{self.c_name}.{f.name}\");")
        lines.append(f"_Static_assert(sizeof(struct {self.c_name}) == {self.size}, "
                     f"\"{self.c_name} size\");")
        return "\n".join(lines)


MAX_OPS = 1000
OP_WORDS = 4  # kind, address, length, argument

REPORT = Area("vsgx_report", 4096, (
    Field("seq", 0, "u32"),  # futex word: bumped by the runner at each report
    Field("kind", 4, "u32"),  # STOP_*
    Field("signo", 8, "u32"),
    Field("code", 12, "u32"),  # si_code
    Field("trapno", 16, "u64"),
    Field("error", 24, "u64"),  # the CPU's error code
    Field("cr2", 32, "u64"),
    Field("si_addr", 40, "u64"),
    Field("sys_nr", 48, "u32"),  # SIGSYS: the refused system call and its ABI
    Field("sys_arch", 52, "u32"),
    Field("features", 56, "u32"),  # FEATURE_* (at READY)
    Field("isolation", 60, "u32"),  # ISOLATED_* (at READY)
    Field("mxcsr_mask", 64, "u32"),
    Field("op_index", 68, "u32"),  # STOP_OP_FAILED: which op, and its errno
    Field("op_errno", 72, "u32"),
    Field("regs", 80, "u64", REG_COUNT),
    Field("fpu", 256, "u8", 512),  # FXSAVE image (16-byte aligned)
    Field("message", 768, "u8", 128),  # STOP_DIED: why, NUL-terminated
))

COMMAND = Area("vsgx_command", 9 * 4096, (
    Field("seq", 0, "u32"),  # futex word: bumped by the EVM for each command
    Field("command", 4, "u32"),  # CMD_*
    Field("nops", 8, "u32"),
    Field("load_fpu", 12, "u32"),  # RUN: 1 = FXRSTOR ``fpu``; 0 = keep the stopped state
    Field("regs", 16, "u64", REG_COUNT),
    Field("fpu", 192, "u8", 512),
    Field("ops", 704, "u64", OP_WORDS * MAX_OPS),
))

CMD_RUN, CMD_OPS, CMD_QUIT = 1, 2, 3
OP_PROTECT, OP_MAP, OP_UNMAP = 1, 2, 3
# What a report says happened.
STOP_READY = 1  # set up and sandboxed; features and isolation are valid
STOP_SIGNAL = 2  # a signal the kernel delivered while enclave code ran
STOP_NOT_DELIVERED = 3  # the handler was entered by a jump, not by the kernel
STOP_BEFORE_ENTRY = 4  # an interrupt came before the enclave's first instruction
STOP_OPS_DONE = 5
STOP_OP_FAILED = 6
STOP_DIED = 7
STOP_KINDS = frozenset(range(1, 8))

FEATURE_FSGSBASE, FEATURE_CPUID_FAULTING, FEATURE_RDTSC_FAULTS, FEATURE_XSAVE = 1, 2, 4, 8
ISOLATION_BITS = {
    "user namespace": 1 << 0,
    "mount namespace": 1 << 1,
    "network namespace": 1 << 2,
    "IPC namespace": 1 << 3,
    "UTS namespace": 1 << 4,
    "empty root": 1 << 5,
    "uid nobody": 1 << 6,
    "no capabilities": 1 << 7,
    "no_new_privs": 1 << 8,
    "rlimits": 1 << 9,
    "no file descriptor but its page pool": 1 << 10,
    "runner code sealed": 1 << 11,
}
RUNNER_FLAG_RDTSC_FAULTS = 1
RUNNER_FLAG_NO_FSGSBASE = 2  # use arch_prctl as on CPUs without FSGSBASE (tests)

REPORT_HEAD = struct.Struct("<IIIIQQQQII")  # seq .. sys_arch
REGISTERS = struct.Struct(f"<{REG_COUNT}Q")
# seq .. sys_arch, then the registers: what every stop reads, in one unpack
REPORT_STOP = struct.Struct(f"<IIIIQQQQII{REPORT.offset('regs') - REPORT_HEAD.size}x"
                            f"{REG_COUNT}Q")
OP = struct.Struct(f"<{OP_WORDS}Q")


def _defines() -> list[str]:
    values = {
        "VSGX_MAX_OPS": MAX_OPS, "VSGX_OP_WORDS": OP_WORDS,
        "VSGX_CMD_RUN": CMD_RUN, "VSGX_CMD_OPS": CMD_OPS, "VSGX_CMD_QUIT": CMD_QUIT,
        "VSGX_OP_PROTECT": OP_PROTECT, "VSGX_OP_MAP": OP_MAP, "VSGX_OP_UNMAP": OP_UNMAP,
        "VSGX_STOP_READY": STOP_READY, "VSGX_STOP_SIGNAL": STOP_SIGNAL,
        "VSGX_STOP_NOT_DELIVERED": STOP_NOT_DELIVERED,
        "VSGX_STOP_BEFORE_ENTRY": STOP_BEFORE_ENTRY, "VSGX_STOP_OPS_DONE": STOP_OPS_DONE,
        "VSGX_STOP_OP_FAILED": STOP_OP_FAILED, "VSGX_STOP_DIED": STOP_DIED,
        "VSGX_FEATURE_FSGSBASE": FEATURE_FSGSBASE,
        "VSGX_FEATURE_CPUID_FAULTING": FEATURE_CPUID_FAULTING,
        "VSGX_FEATURE_RDTSC_FAULTS": FEATURE_RDTSC_FAULTS, "VSGX_FEATURE_XSAVE": FEATURE_XSAVE,
        "VSGX_RUNNER_FLAG_RDTSC_FAULTS": RUNNER_FLAG_RDTSC_FAULTS,
        "VSGX_RUNNER_FLAG_NO_FSGSBASE": RUNNER_FLAG_NO_FSGSBASE,
        "VSGX_REG_COUNT": REG_COUNT,
    }
    for name, bit in ISOLATION_BITS.items():
        key = "".join(c if c.isalnum() else "_" for c in name.upper())
        values[f"VSGX_ISOLATED_{key}"] = bit
    for index, name in enumerate(REG_NAMES):
        values[f"VSGX_REG_{name.upper()}"] = index
    return [f"#define {name} {value}" for name, value in values.items()]


def c_header() -> str:
    """``vsgx_layout.h``: the areas and constants, for runner.c."""
    parts = ["/* Generated from vsgx.evm.runner.layout when the runner is built. */",
             "#ifndef VSGX_LAYOUT_H", "#define VSGX_LAYOUT_H", "#include <stddef.h>",
             "#include <stdint.h>", *_defines(), REPORT.c_struct(), COMMAND.c_struct(),
             "#endif", ""]
    return "\n".join(parts)


def describe_isolation(bits: int) -> str:
    """A short description of what the host gave a runner."""
    names = [name for name, bit in ISOLATION_BITS.items() if bits & bit]
    return ", ".join(names) if names else "none beyond the seccomp filter"
