"""The pages the EVM, a runner and its client share, declared once.

Four areas, each a memfd of the EVM mapped into the runner:

* REPORT — written by the runner, read by the EVM. Mapped read-write in the
  runner, so enclave code can write it too: everything in it is untrusted.
* COMMAND — written by the EVM, mapped read-only in the runner: the
  commands, the page operations, the registers to enter with and the
  *grant* (the TCS fields the EVM validated, for entries that do not pass
  through it) come only from here, and enclave code cannot forge them.
* CLIENT — the fast path's meeting point: the client (the program's
  injected library, or the Python host) asks the runner for EENTER and
  ERESUME here and gets EEXIT, AEX and page requests back, without the
  EVM. Writable by the client, the runner and enclave code: each side
  validates everything it reads from it.
* STATE — one page per enclave, written by the EVM, read-only in its
  runners: the version every grant is checked against at entry (bumped at
  every change of EPCM or page-table state and whenever the EVM looks at
  who is inside).

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
GRANT_FRAMES = 16  # SSA frames a grant can describe (a TCS with more NSSA: no grant)
PYTHON_SLOTS = 512  # page-pool slots the EVM's executor maps untrusted pages from
CLIENT_SLOTS = 256  # slots after those that the fast path's client fills
POOL_SLOTS = PYTHON_SLOTS + CLIENT_SLOTS
MAX_EXIT_SITES = 32  # rewritten EEXIT sites the COMMAND area names (vsgx.evm.fast_exits)
# Fast-exit mode's exit gate: one page of the runner just below ELRANGE,
# entry i at GATE_ENTRY_SIZE * i for the EEXIT site rewritten into a jump
# there (vsgx.evm.fast_exits); the runner builds it, the EVM aims at it.
GATE_ENTRY_SIZE = 32
GATE_LOWEST = 0x10000  # below this (mmap_min_addr) no page can be mapped


def exit_gate_address(enclave_base: int) -> int:
    """The exit gate's page for an enclave at ``enclave_base``, or 0 when
    the page below ELRANGE cannot be mapped."""
    gate = enclave_base - 4096
    return gate if gate >= GATE_LOWEST else 0


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
    Field("cs", 76, "u32"),  # the signal frame's code segment (0x33: 64-bit user mode)
    Field("regs", 80, "u64", REG_COUNT),
    Field("fpu", 256, "u8", 512),  # FXSAVE image (16-byte aligned)
    Field("message", 768, "u8", 128),  # STOP_DIED: why, NUL-terminated
    # The fast path, as the runner says it stands (untrusted: what enclave
    # code writes here can only mislead about its own thread).
    Field("fast_inside", 1024, "u32"),  # 1 from a fast EENTER/ERESUME to its exit
    Field("fast_handed_over", 1028, "u32"),  # the entry goes on in the EVM
    Field("fast_entry_epoch", 1032, "u64"),  # the grant's epoch when it entered
    Field("fault_client_slot", 1040, "u32"),  # a #PF on a page a client slot maps: slot + 1
    Field("fast_entries", 1044, "u32"),  # fast entries so far (statistics, tests)
    Field("gate_exits", 1048, "u32"),  # EEXITs through the exit gate (statistics, tests)
))

COMMAND = Area("vsgx_command", 9 * 4096, (
    Field("seq", 0, "u32"),  # futex word: bumped by the EVM for each command
    Field("command", 4, "u32"),  # CMD_*
    Field("nops", 8, "u32"),
    Field("load_fpu", 12, "u32"),  # RUN: 1 = FXRSTOR ``fpu``; 0 = keep the stopped state
    Field("regs", 16, "u64", REG_COUNT),
    Field("fpu", 192, "u8", 512),
    Field("ops", 704, "u64", OP_WORDS * MAX_OPS),
    # The grant: a seqlock (odd while the EVM writes it), then the TCS as
    # EENTER's checks found it, in linear addresses.
    Field("grant_seq", 32768, "u32"),
    Field("grant_valid", 32772, "u32"),
    Field("grant_version", 32776, "u64"),  # the STATE version it holds for
    Field("grant_epoch", 32784, "u64"),  # the enclave's epoch (ETRACK) at the grant
    Field("grant_tcs", 32792, "u64"),
    Field("grant_oentry", 32800, "u64"),
    Field("grant_ofsbase", 32808, "u64"),
    Field("grant_ogsbase", 32816, "u64"),
    Field("grant_cssa", 32824, "u32"),
    Field("grant_nssa", 32828, "u32"),
    Field("grant_frame_size", 32832, "u64"),  # SECS.SSAFRAMESIZE in bytes
    Field("grant_xfrm", 32840, "u64"),
    Field("grant_flags", 32848, "u32"),  # GRANT_*
    Field("grant_mxcsr_mask", 32852, "u32"),
    Field("grant_frames", 32856, "u64", GRANT_FRAMES),  # SSA frame i, 0: not accessible
    Field("interrupt_seq", 32984, "u32"),  # bumped by the EVM for an interrupt (a kick)
    # Fast-exit mode (vsgx.evm.fast_exits): the ENCLUs rewritten into INT3,
    # written before the runner's first entry and never changed.
    Field("exit_site_count", 32988, "u32"),
    Field("exit_sites", 32992, "u64", MAX_EXIT_SITES),
    Field("gate_entries", 33248, "u32"),  # bit i: exit gate entry i has a site (the rest #GP)
))

CLIENT = Area("vsgx_client", 4096, (
    Field("doorbell", 0, "u32"),  # the runner's futex word: client and EVM bump it
    Field("runner_sleeping", 4, "u32"),  # 1: the runner waits in FUTEX_WAIT (wake it)
    Field("request_seq", 8, "u32"),  # bumped by the client for each request
    Field("request", 12, "u32"),  # REQ_*
    Field("reply_seq", 16, "u32"),  # the client's futex word: bumped by the runner
    Field("reply", 20, "u32"),  # REPLY_*
    Field("client_sleeping", 24, "u32"),  # 1: the client waits in FUTEX_WAIT (wake it)
    Field("heartbeat", 28, "u32"),  # bumped by the runner about once a second
    Field("closed", 32, "u32"),  # set by the EVM: the runner is gone, use the EVM
    Field("magic", 36, "u32"),  # CLIENT_MAGIC, written by the EVM
    Field("return_rip", 40, "u64"),  # EENTER: the address after the ENCLU
    Field("regs", 48, "u64", REG_COUNT),  # in: at the ENCLU; out: after EEXIT or AEX
    Field("vector", 208, "u32"),  # REPLY_AEX: the exception
    Field("error_code", 212, "u32"),
    Field("address", 216, "u64"),  # #PF: the page (CR2 with bits 11:0 cleared)
    Field("exitinfo_valid", 224, "u32"),
    Field("interrupt", 228, "u32"),
    Field("page_address", 232, "u64"),  # REPLY_PAGE: the untrusted page wanted
    Field("page_write", 240, "u32"),  # ... for a write
    Field("page_slot", 244, "u32"),  # REQ_PAGE: the client slot that holds it
    Field("page_state", 248, "u32"),  # REQ_PAGE: PAGE_*
    # The client dropped a slot since the runner last looked at slot_pages:
    # before its next entry the runner unmaps what the client no longer holds.
    Field("slots_dropped", 252, "u32"),
    Field("entries", 512, "u32"),  # statistics the runner keeps (tests, benchmarks)
    Field("page_requests", 516, "u32"),
    # Where each side last ran (RDPID + 1; 0: unknown): a waiter whose peer
    # is on its own CPU yields at once instead of spinning (the peer cannot
    # run meanwhile). Hints only: written by everyone, trusted by no one.
    Field("runner_cpu", 520, "u32"),
    Field("client_cpu", 524, "u32"),
    # The page each client slot holds for the client (0: none). The runner
    # maps a slot only where the client answered a page; before an entry
    # (fast or the EVM's) it unmaps each slot that no longer holds what it
    # maps. A state, not a list of changes: nothing is lost if a signal cuts
    # that work short, the next entry finishes it.
    Field("slot_pages", 2048, "u64", CLIENT_SLOTS),
))

STATE = Area("vsgx_state", 4096, (
    Field("version", 0, "u64"),
))

CMD_RUN, CMD_OPS, CMD_QUIT = 1, 2, 3
# The fast path's requests (client -> runner) and replies (runner -> client).
REQ_EENTER, REQ_ERESUME, REQ_PAGE = 1, 2, 3
REPLY_EEXIT, REPLY_AEX, REPLY_REFUSED, REPLY_HANDED_OVER, REPLY_PAGE, REPLY_BAD = 1, 2, 3, 4, 5, 6
PAGE_MISSING, PAGE_READ_ONLY, PAGE_WRITABLE = 0, 1, 2
GRANT_EXINFO = 1  # MISCSELECT.EXINFO: #PF and #GP AEXs write EXINFO
GRANT_CODE_READABLE = 2  # every executable page is readable (the runner may check ENCLU)
CLIENT_MAGIC = 0x56534758  # "VSGX"
OP_PROTECT, OP_MAP, OP_UNMAP = 1, 2, 3
# What a report says happened.
STOP_READY = 1  # set up and sandboxed; features and isolation are valid
STOP_SIGNAL = 2  # a signal the kernel delivered while enclave code ran
STOP_NOT_DELIVERED = 3  # the handler was entered by a jump, not by the kernel
STOP_BEFORE_ENTRY = 4  # an interrupt came before the enclave's first instruction
STOP_OPS_DONE = 5
STOP_OP_FAILED = 6
STOP_DIED = 7
STOP_GATE = 8  # enclave code jumped to an exit gate entry (regs: RIP = the entry)
STOP_KINDS = frozenset(range(1, 9))

FEATURE_FSGSBASE, FEATURE_CPUID_FAULTING, FEATURE_RDTSC_FAULTS, FEATURE_XSAVE = 1, 2, 4, 8
FEATURE_EXIT_GATE = 16  # the runner mapped the exit gate
USER_CS = 0x33  # Linux's 64-bit user code segment (REPORT.cs of a stop in 64-bit mode)
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
RUNNER_FLAG_EXIT_GATE = 4  # map the exit gate (fast-exit mode)

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
        "VSGX_STOP_GATE": STOP_GATE, "VSGX_FEATURE_EXIT_GATE": FEATURE_EXIT_GATE,
        "VSGX_RUNNER_FLAG_EXIT_GATE": RUNNER_FLAG_EXIT_GATE,
        "VSGX_GATE_ENTRY_SIZE": GATE_ENTRY_SIZE, "VSGX_GATE_LOWEST": GATE_LOWEST,
        "VSGX_FEATURE_FSGSBASE": FEATURE_FSGSBASE, "VSGX_USER_CS": USER_CS,
        "VSGX_FEATURE_CPUID_FAULTING": FEATURE_CPUID_FAULTING,
        "VSGX_FEATURE_RDTSC_FAULTS": FEATURE_RDTSC_FAULTS, "VSGX_FEATURE_XSAVE": FEATURE_XSAVE,
        "VSGX_RUNNER_FLAG_RDTSC_FAULTS": RUNNER_FLAG_RDTSC_FAULTS,
        "VSGX_RUNNER_FLAG_NO_FSGSBASE": RUNNER_FLAG_NO_FSGSBASE,
        "VSGX_REG_COUNT": REG_COUNT,
        "VSGX_GRANT_FRAMES": GRANT_FRAMES, "VSGX_PYTHON_SLOTS": PYTHON_SLOTS,
        "VSGX_CLIENT_SLOTS": CLIENT_SLOTS, "VSGX_POOL_SLOTS": POOL_SLOTS,
        "VSGX_MAX_EXIT_SITES": MAX_EXIT_SITES,
        "VSGX_REQ_EENTER": REQ_EENTER, "VSGX_REQ_ERESUME": REQ_ERESUME,
        "VSGX_REQ_PAGE": REQ_PAGE, "VSGX_REPLY_EEXIT": REPLY_EEXIT, "VSGX_REPLY_AEX": REPLY_AEX,
        "VSGX_REPLY_REFUSED": REPLY_REFUSED, "VSGX_REPLY_HANDED_OVER": REPLY_HANDED_OVER,
        "VSGX_REPLY_PAGE": REPLY_PAGE, "VSGX_REPLY_BAD": REPLY_BAD,
        "VSGX_PAGE_MISSING": PAGE_MISSING, "VSGX_PAGE_READ_ONLY": PAGE_READ_ONLY,
        "VSGX_PAGE_WRITABLE": PAGE_WRITABLE, "VSGX_GRANT_EXINFO": GRANT_EXINFO,
        "VSGX_GRANT_CODE_READABLE": GRANT_CODE_READABLE, "VSGX_CLIENT_MAGIC": CLIENT_MAGIC,
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
             CLIENT.c_struct(), STATE.c_struct(), "#endif", ""]
    return "\n".join(parts)


def describe_isolation(bits: int) -> str:
    """A short description of what the host gave a runner."""
    names = [name for name, bit in ISOLATION_BITS.items() if bits & bit]
    return ", ".join(names) if names else "none beyond the seccomp filter"
