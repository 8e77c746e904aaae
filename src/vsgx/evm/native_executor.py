"""Enclave threads on the real CPU: one sandboxed runner process per TCS.

The runner (``runner/runner.c``, built with the system's C compiler on first
use) maps the enclave's memfd at the enclave's own addresses, with the
protections ``sync`` sends, and runs enclave code natively; ENCLU and every
fault come back as signals. The runner reports each one raw through its
REPORT area, and this executor decides what it means — the report is
untrusted input (enclave code can write that area and jump into the
runner's entry code), so it is read once, validated, and anything that does
not make sense ends the entry as a #GP AEX or, if the runner itself is in
doubt, as ``RunnerLost`` with a fresh runner for the TCS. Commands, page
operations and the registers to enter with go through the COMMAND area,
which the runner maps read-only (``runner/layout.py``).

EPC pages are shared between the EVM and its runners only — never with the
AVM. Untrusted pages are copied into a page pool the runner maps on first
touch; changes are written back at every exit (the split's per-entry model).
With an in-process address space, pages stay mapped across entries and are
refreshed only when the application changed them.

System calls from enclave code are refused by the runner's seccomp filter
(SIGSYS → #UD). RDTSC faults where SGX1 says so. CPUID faults only where the
CPU offers CPUID faulting (``cpuid_faulting()`` says whether it does here);
elsewhere enclave code that runs CPUID gets the host's answer.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import mmap
import os
import platform
import queue
import select
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vsgx.arch.constants import ENCLU_OPCODE, PAGE_SIZE, ExitType, PfErrorCode, Vector
from vsgx.arch.errors import gp
from vsgx.arch.ssa import xsave_size
from vsgx.errors import VsgxError
from vsgx.evm.access import (
    FETCH,
    READ,
    WRITE,
    allowed,
    changed_protection_runs,
    fault_code,
    protection_runs,
)
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.executor import (
    REG_COUNT,
    RFLAGS,
    RIP,
    ExecutorCapability,
    Stop,
    StopKind,
    UntrustedMemory,
    page_changes,
)
from vsgx.evm.machine import Machine
from vsgx.evm.runner import layout
from vsgx.evm.runner.layout import CLIENT, COMMAND, REPORT, STATE

RUNNER_DIR = Path(__file__).resolve().parent / "runner"
RUNNER_SOURCES = ("runner.c", "filter.c")
RUNNER_CFLAGS = ("-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-pie", "-O2",
                 "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
                 "-fno-asynchronous-unwind-tables", "-fno-jump-tables", "-fcf-protection=none",
                 "-Wall", "-Wextra", "-Werror")
RUNNER_LDFLAGS = ("-static", "-nostdlib", "-no-pie", "-Wl,--build-id=none",
                  "-Wl,-z,noexecstack", "-Wl,-z,max-page-size=4096")
# The runner's image: the entry section first (the only code left
# executable after set-up), then the set-up code and read-only data that
# set-up makes PROT_NONE, then data. Linked low, below where applications
# and the AVM put anything.
RUNNER_LINKER_SCRIPT = """\
ENTRY(_start)
PHDRS
{
    text PT_LOAD FLAGS(5);
    rodata PT_LOAD FLAGS(4);
    data PT_LOAD FLAGS(6);
    stack PT_GNU_STACK FLAGS(6);
}
SECTIONS
{
    . = 0x100000;
    vsgx_image_begin = .;
    .vsgx_entry : { vsgx_entry_begin = .; KEEP(*(.text.vsgx_entry))
                    vsgx_gate_begin = .; KEEP(*(.text.vsgx_gate)) vsgx_gate_end = .;
                    . = ALIGN(4096); vsgx_entry_end = .; } :text
    .text : ALIGN(4096) { vsgx_sealable_begin = .; *(.text .text.*) } :text
    .rodata : ALIGN(4096) { *(.rodata .rodata.*) . = ALIGN(4096); vsgx_sealable_end = .; } :rodata
    .data : ALIGN(4096) { *(.data .data.*) } :data
    .bss : { *(.bss .bss.*) *(COMMON) . = ALIGN(4096); } :data
    vsgx_image_end = .;
    /DISCARD/ : { *(.comment) *(.note*) *(.eh_frame*) }
}
"""
# Symbols the linker script defines: the entry section may use their addresses.
_LINKER_SYMBOLS = frozenset({"vsgx_image_begin", "vsgx_image_end", "vsgx_entry_begin",
                             "vsgx_entry_end", "vsgx_sealable_begin", "vsgx_sealable_end",
                             "vsgx_gate_begin", "vsgx_gate_end"})
# The code left executable after set-up (the exit gate's part of it kept
# together, so that an interrupt can tell it is there).
_ENTRY_SECTIONS = (".text.vsgx_entry", ".text.vsgx_gate")

_REPORT_COPY = REPORT.end("fpu")  # what one stop reads (the message only at STOP_DIED)
_FPU_AT = REPORT.offset("fpu")
_CMD_REGS_AT = COMMAND.offset("regs")
_CMD_FPU_AT = COMMAND.offset("fpu")
_CMD_OPS_AT = COMMAND.offset("ops")
_CMD_HEAD = struct.Struct("<III")  # command, nops, load_fpu
# Indexes into a report unpacked with layout.REPORT_STOP (the stop path
# works on that tuple; ``Report`` is built only when asked for).
_KIND, _SIGNO, _TRAPNO, _ERROR, _CR2, _SI_ADDR = 1, 2, 4, 5, 6, 7
FEATURE_FSGSBASE = layout.FEATURE_FSGSBASE
FEATURE_CPUID_FAULTING = layout.FEATURE_CPUID_FAULTING
FEATURE_RDTSC_FAULTS = layout.FEATURE_RDTSC_FAULTS
MAX_OPS = layout.MAX_OPS

POOL_SLOTS = layout.PYTHON_SLOTS  # untrusted pages this executor may have mapped at once
KEEP_SHARED = 32  # in-process pages kept mapped across entries (without a fast client)
CLIENT_KEEP = 16  # pages the in-process fast client keeps mapped across entries
SPIN_ROUNDS = 200  # sched_yield rounds before sleeping on the futex

# RFLAGS bits with an architectural meaning (no reserved bits); RF is
# dropped as well: it describes the runner's fault, not the enclave's state.
_KEPT_FLAGS = 0x3F7FD5 & ~(1 << 16)
_STOP_SIGNAL = layout.STOP_SIGNAL
_SIGILL, _SIGTRAP, _SIGBUS, _SIGFPE, _SIGUSR1, _SIGSEGV, _SIGALRM, _SIGSYS = (
    4, 5, 7, 8, 10, 11, 14, 31)
# Opcodes that fault (#GP or SIGSYS) natively and are #UD in an enclave.
_SYSCALL_ABIS = (b"\x0f\x05", b"\x0f\x34", b"\xcd\x80")  # syscall, sysenter, int $0x80
# rdtsc, rdtscp, cpuid; sysenter (#GP in place where the kernel has no 32-bit entry)
_UD_INSTEAD_OF_GP = (b"\x0f\x31", b"\x0f\x01\xf9", b"\x0f\xa2", b"\x0f\x34")
# Signals whose trap number is the enclave's vector as it stands.
_PASSED_THROUGH = frozenset({(_SIGBUS, Vector.NP), (_SIGBUS, Vector.SS), (_SIGBUS, Vector.AC),
                             (_SIGFPE, Vector.DE), (_SIGFPE, Vector.MF), (_SIGFPE, Vector.XM)})



def _enclu_trap(signo: int, trapno: int, error: int) -> bool:
    """Whether a signal is how this CPU refuses ENCLU outside SGX: #UD
    (SIGILL) on AMD; #GP(0) on Intel without SGX, or for EENTER and ERESUME
    a #PF on a data access near RBX (SIGSEGV either way). The bytes at RIP
    then say whether it was an ENCLU; a fetch #PF stays a #PF."""
    return signo == _SIGILL or (signo == _SIGSEGV and (
        trapno == Vector.GP or (trapno == Vector.PF and not error & PfErrorCode.I)))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_SYS_FUTEX = 202
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


_WAIT = _Timespec(0, 200_000_000)

# The grant (COMMAND.grant_valid onwards) and the fast path's words.
_GRANT = struct.Struct(f"<IQQQQQQIIQQII{layout.GRANT_FRAMES}Q")
_GRANT_AT = COMMAND.offset("grant_valid")
_GRANT_SEQ_AT = COMMAND.offset("grant_seq")
_INTERRUPT_SEQ_AT = COMMAND.offset("interrupt_seq")
_FAST_INSIDE = struct.Struct("<II Q")  # fast_inside, fast_handed_over, fast_entry_epoch
_FAST_INSIDE_AT = REPORT.offset("fast_inside")
_FAST_ENTRIES_AT = REPORT.offset("fast_entries")
_U32 = struct.Struct("<I")
_FAULT_CLIENT_SLOT_AT = REPORT.offset("fault_client_slot")
_EXIT = struct.Struct(f"<{REG_COUNT}QIIQII")  # struct vsgx_fast_exit
# struct vsgx_fast_call up to its exit: client, request, ended, return RIP, registers
_CALL_IN = struct.Struct(f"<QIIQ{REG_COUNT}Q")
_CALL_ENDED = 12
# vsgx_fast_client.h's results
FAST_EEXIT, FAST_AEX, FAST_REFUSED, FAST_HANDED_OVER, FAST_NEED_PAGE = 1, 2, 3, 4, 5
FAST_CLOSED, FAST_LOST, FAST_BUSY = 6, 7, 8
# VSGX_FAST_PATH=0: every entry through the EVM (the slow path: benchmarks' baseline).
FAST_PATH = os.environ.get("VSGX_FAST_PATH", "1") != "0"


_pku: bool | None = None


def _execute_only_mappings() -> bool:
    """Whether PROT_EXEC alone makes a mapping unreadable here (Linux does
    that with a protection key on CPUs that have them)."""
    global _pku
    if _pku is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
            _pku = " ospke" in flags or " pku" in flags
        except OSError:
            _pku = True
    return _pku


class NativeUnavailable(VsgxError):
    """This host cannot run enclave code natively."""


class RunnerLost(VsgxError):
    """The runner process of an enclave thread died or was killed."""


class Report(NamedTuple):
    """One runner report, copied out of the REPORT area and parsed."""

    kind: int
    signo: int
    code: int
    trapno: int
    error: int
    cr2: int
    si_addr: int
    sys_nr: int
    sys_arch: int
    registers: list[int]
    fpu: bytes


_build_lock = threading.Lock()
_built: Path | None = None


def _cache_dir() -> Path:
    base = os.environ.get("VSGX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vsgx")
    return Path(base)


def _check_entry_object(path: Path) -> None:
    """The entry section may not call or read anything that set-up seals
    away: every relocation in it must name entry code, writable data, or an
    address the linker script defines."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.sections import SymbolTableSection

    with path.open("rb") as f:
        elf = ELFFile(f)
        names = [s.name for s in elf.iter_sections()]
        symbols = elf.get_section_by_name(".symtab")
        for name in _ENTRY_SECTIONS:
            relocations = elf.get_section_by_name(".rela" + name)
            if (not isinstance(relocations, RelocationSection)
                    or not isinstance(symbols, SymbolTableSection)):
                raise NativeUnavailable(f"the runner's entry section {name} is missing")
            for relocation in relocations.iter_relocations():
                symbol = symbols.get_symbol(relocation["r_info_sym"])
                index = symbol["st_shndx"]
                if index == "SHN_UNDEF":
                    if symbol.name in _LINKER_SYMBOLS:
                        continue
                    raise NativeUnavailable(f"the runner's entry section uses {symbol.name}")
                section = names[index] if isinstance(index, int) else str(index)
                if section not in _ENTRY_SECTIONS and not section.startswith((".bss", ".data")):
                    raise NativeUnavailable(f"the runner's entry section refers to {section} "
                                            f"({symbol.name or 'a section'})")


def runner_compiler() -> str:
    """The C compiler the runner is built with ($CC, else cc or gcc)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise NativeUnavailable("the native executor's runner is built with a C compiler: "
                                "install gcc (or set CC), or use --executor unicorn")
    return compiler


def runner_key(header: str, compiler: str) -> str:
    """The runner's cache key: its sources, the generated header, the linker
    script, the flags and the compiler."""
    key = hashlib.sha256()
    for name in RUNNER_SOURCES:
        key.update((RUNNER_DIR / name).read_bytes())
    for part in (header, RUNNER_LINKER_SCRIPT, " ".join(RUNNER_CFLAGS + RUNNER_LDFLAGS),
                 os.path.realpath(compiler)):
        key.update(part.encode())
    return key.hexdigest()[:16]


def runner_binary() -> Path:
    """The runner, compiled on first use (cached by sources, generated
    header, linker script, flags and compiler)."""
    global _built
    if _built is not None:
        return _built
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeUnavailable("the native executor needs x86-64 Linux")
    compiler = runner_compiler()
    header = layout.c_header()
    target = _cache_dir() / f"runner-{runner_key(header, compiler)}"
    with _build_lock:
        if target.is_file():
            _built = target
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            build = Path(tmp)
            (build / "vsgx_layout.h").write_text(header)
            (build / "runner.lds").write_text(RUNNER_LINKER_SCRIPT)
            obj, output = build / "runner.o", build / "runner"
            steps = ([compiler, *RUNNER_CFLAGS, "-I", str(build), "-c",
                      str(RUNNER_DIR / "runner.c"), "-o", str(obj)],
                     [compiler, *RUNNER_LDFLAGS, "-Wl,-T," + str(build / "runner.lds"),
                      str(obj), "-o", str(output)])
            for index, step in enumerate(steps):
                result = subprocess.run(step, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise NativeUnavailable(f"building the runner failed:\n"
                                            f"{result.stderr.strip()}")
                if index == 0:
                    _check_entry_object(obj)
            os.replace(output, target)
    _built = target
    return target


CLIENT_SOURCES = ("client.c", "vsgx_fast_client.h")
CLIENT_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                 "-fvisibility=hidden")
_client_built: ctypes.CDLL | None = None


def client_library() -> ctypes.CDLL:
    """libvsgx-client.so (runner/client.c): the fast path's client for the
    Python host, and the atomics the EVM needs (built on first use, cached
    like the runner)."""
    global _client_built
    if _client_built is not None:
        return _client_built
    compiler = runner_compiler()
    header = layout.c_header()
    key = hashlib.sha256()
    for name in CLIENT_SOURCES:
        key.update((RUNNER_DIR / name).read_bytes())
    for part in (header, " ".join(CLIENT_CFLAGS), os.path.realpath(compiler)):
        key.update(part.encode())
    target = _cache_dir() / f"libvsgx-client-{key.hexdigest()[:16]}.so"
    with _build_lock:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                build = Path(tmp)
                (build / "vsgx_layout.h").write_text(header)
                output = build / "client.so"
                result = subprocess.run(
                    [compiler, *CLIENT_CFLAGS, "-I", str(build), "-I", str(RUNNER_DIR),
                     str(RUNNER_DIR / "client.c"), "-o", str(output)],
                    capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise NativeUnavailable(f"building the fast-path client failed:\n"
                                            f"{result.stderr.strip()}")
                os.replace(output, target)
        library = ctypes.CDLL(str(target))
    pointer, u32, u64, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    for name, restype, argtypes in (
            ("vsgx_atomic_add64", u64, [pointer, u64]),
            ("vsgx_atomic_add32", u32, [pointer, u32]),
            ("vsgx_store32", None, [pointer, u32]),
            ("vsgx_load32", u32, [pointer]),
            ("vsgx_ring", None, [pointer]),
            ("vsgx_wake_client", None, [pointer]),
            ("vsgx_fast_client_size", ctypes.c_size_t, []),
            ("vsgx_fast_init", c_int, [pointer, pointer, pointer, pointer, u64, u64, u32]),
            ("vsgx_fast_begin", c_int, [pointer]),
            ("vsgx_fast_end", None, [pointer]),
            ("vsgx_fast_forget", None, [pointer]),
            ("vsgx_fast_enter", c_int, [pointer, u32, ctypes.c_char_p, u64, pointer]),
            ("vsgx_fast_call_packed", c_int, [pointer]),
            ("vsgx_fast_page", c_int, [pointer, u64, u32, pointer]),
            ("vsgx_fast_slot_page", u64, [pointer, u32]),
            ("vsgx_fast_wanted", u64, [pointer]),
            ("vsgx_fast_stats", None, [pointer, pointer])):
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    _client_built = library
    return library


def runner_root() -> Path:
    """The empty directory runners chroot into: made 0500 under the cache
    directory; refused if anyone else owns it or it is not empty."""
    root = _cache_dir() / "runner-root"
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o500)
    except FileExistsError:
        pass
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise NativeUnavailable(f"{root} is not a directory of this user: remove it")
    if stat.S_IMODE(info.st_mode) != 0o500:
        os.chmod(root, 0o500)
    if os.listdir(root):
        raise NativeUnavailable(f"{root} must be empty: remove what is in it")
    return root


_support: tuple[bool, str] | None = None
_features = 0
_isolation = 0


def native_support() -> tuple[bool, str]:
    """(usable, why not): builds the runner and starts one on a scratch
    enclave range once per process."""
    global _support, _features, _isolation
    if _support is None:
        try:
            runner_binary()
            probe = EnclaveStateProbe()
            try:
                executor = NativeExecutor(None, probe, 0)  # type: ignore[arg-type]
                _features, _isolation = executor.features, executor.isolation
                executor.close()
            finally:
                probe.close()
            _support = (True, "")
        except (NativeUnavailable, RunnerLost, OSError) as exc:
            _support = (False, str(exc))
    return _support


def cpuid_faulting() -> bool:
    """Whether this CPU lets runners turn CPUID into #UD (else enclave code
    that runs CPUID gets the host's answer)."""
    return native_support()[0] and bool(_features & FEATURE_CPUID_FAULTING)


def native_isolation() -> str:
    """What this host gave the runners, in a few words (for the EVM's
    start-up message)."""
    usable, why = native_support()
    if not usable:
        return f"native executor unavailable: {why}"
    cpuid = ("CPUID faults (#UD)" if _features & FEATURE_CPUID_FAULTING
             else "no CPUID faulting (enclave CPUID gets the host's answer)")
    return (f"seccomp filter by number and arguments; {layout.describe_isolation(_isolation)}; "
            f"{cpuid}")


class EnclaveStateProbe:
    """Just enough of an enclave for the support check: a small memfd."""

    def __init__(self) -> None:
        from vsgx.evm.enclave import EnclaveMemory

        self.base = 0x400000000000
        self.size = 16 * PAGE_SIZE
        self.memory = EnclaveMemory(self.size)
        self.exit_sites: frozenset[int] = frozenset()
        self.exit_gate = 0
        self.exit_gates: dict[int, int] = {}
        self.xfrm = 3

    def close(self) -> None:
        self.memory.close()


class InsideMap(dict[int, int]):
    """``EnclaveState.inside`` once native runners may enter on their own:
    the threads that entered through the EVM (the dict itself) and those a
    runner says entered by the fast path. Every read looks at the runners
    anew, after revoking every grant of the enclave (``SharedEnclave.
    inside``): under the machine lock, nobody can enter between the look
    and what the caller does with it (EREMOVE's ENCLAVE_ACT check, ETRACK,
    the kick)."""

    def __init__(self, shared: SharedEnclave, initial: dict[int, int]):
        super().__init__(initial)
        self.shared = shared

    def _all(self) -> dict[int, int]:
        own = dict(dict.items(self))
        fast = self.shared.inside()
        if fast:
            fast.update(own)
            return fast
        return own

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._all())

    def __contains__(self, key: object) -> bool:
        return key in self._all()

    def keys(self):  # type: ignore[no-untyped-def]
        return self._all().keys()

    def values(self):  # type: ignore[no-untyped-def]
        return self._all().values()

    def items(self):  # type: ignore[no-untyped-def]
        return self._all().items()

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        return self._all().get(key, default)

    def copy(self) -> dict[int, int]:
        return self._all()

    def clear(self) -> None:
        """Everyone counts as gone (the enclave is being destroyed): the
        runners' word is not taken again until the next grant."""
        dict.clear(self)
        self.shared.ignoring = True


class SharedEnclave:
    """What the native runners of one enclave share in the EVM: the STATE
    page, whose version moves at every change of EPCM or page-table state
    (so no grant made before holds), and the view of who is inside."""

    def __init__(self, encl: EnclaveState):
        self.encl = encl
        self.executors: list[NativeExecutor] = []
        self.granted = False  # a grant went out since the version last moved
        self.ignoring = False
        self._lib = client_library()
        self.fd = os.memfd_create("vsgx-enclave-state", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, STATE.size)
            self.area = mmap.mmap(self.fd, STATE.size)
        except BaseException:
            os.close(self.fd)
            raise
        weakref.finalize(self, os.close, self.fd)  # it goes with its enclave
        self._version = ctypes.c_uint64.from_buffer(self.area, STATE.offset("version"))
        self._version_address = ctypes.addressof(self._version)
        hooks = getattr(encl, "on_change", None)
        if hooks is not None:
            hooks.append(self.changed)
        if hasattr(encl, "inside") and not isinstance(encl.inside, InsideMap):
            encl.inside = InsideMap(self, encl.inside)

    @property
    def version(self) -> int:
        return self._version.value

    def changed(self) -> None:
        """No grant holds any longer (a locked add: also the fence before
        the EVM looks at who is inside)."""
        if self.granted:
            self.granted = False
            self._lib.vsgx_atomic_add64(self._version_address, 1)

    def inside(self) -> dict[int, int]:
        """TCS -> entry epoch of the threads inside by the fast path."""
        self.changed()
        found: dict[int, int] = {}
        if self.ignoring:
            return found
        for executor in self.executors:
            epoch = executor.fast_entry_epoch()
            if epoch is not None:
                found[executor.tcs] = min(epoch, self.encl.epoch)
        return found

    def close(self) -> None:
        hooks = getattr(self.encl, "on_change", None)
        if hooks is not None and self.changed in hooks:
            hooks.remove(self.changed)
        del self._version
        try:
            self.area.close()
        except BufferError:
            pass


class NativeExecutor:
    """The executor of one TCS in a runner process."""

    name = "native"
    capabilities = ExecutorCapability.PARALLEL | ExecutorCapability.FAST_ENTRIES
    # A running runner reports at least once a second (its alarm); one that
    # is silent this long is stuck and gets SIGKILL.
    silence_limit = 10.0
    start_limit = 10.0
    # A command the runner is started under (tests run it as another uid
    # with ``setpriv``), and the empty directory it chroots into.
    launcher: tuple[str, ...] = ()
    root_dir: Path | None = None
    runner_flags = 0  # layout.RUNNER_FLAG_*, beyond what the platform asks
    fast_path_allowed = True  # entries without the EVM (tests turn it off)

    def __init__(self, machine: Machine | None, encl: EnclaveState, tcs: int | None,
                 rdtsc_faults: bool = False, shared: SharedEnclave | None = None):
        """``tcs`` None: a spare runner that ``adopt`` gives its TCS later."""
        assert encl.memory is not None
        self.machine = machine
        self.encl = encl
        self.tcs = tcs if tcs is not None else 0
        self.generation = -1
        self.mark = (-1, 0)  # EnclaveState.change_mark() at the last sync
        self.prot: dict[int, int] = {}
        self.interrupt_requested = False
        self.stop_requested = False
        self.closed = False
        self.features = self.isolation = 0
        self.mxcsr_mask = 0xFFBF
        self._raw = bytes(_REPORT_COPY)  # the last report, as copied
        self._base, self._size, self._view = encl.base, encl.size, encl.memory.view
        self._ops: list[tuple[int, int, int, int]] = []
        self._registers: list[int] = [0] * REG_COUNT
        self._pending_fpu: bytes | None = None
        # page -> [slot, snapshot, writable]
        self._mapped: dict[int, list[Any]] = {}
        self._free_slots = list(range(POOL_SLOTS - 1, -1, -1))
        self._source: tuple[object, int] | None = None
        self.fast_path = FAST_PATH and self.fast_path_allowed
        self._fast_client: FastClient | None = None
        self._lib = client_library()
        self._own_shared = shared is None
        self.shared = shared if shared is not None else SharedEnclave(encl)
        self._report_fd = os.memfd_create("vsgx-runner-report", os.MFD_CLOEXEC)
        self._command_fd = os.memfd_create("vsgx-runner-command", os.MFD_CLOEXEC)
        # Sealable: client_files hands these two to another process, which
        # must not resize them under the EVM's and the runner's mappings.
        sealable = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        self._client_fd = os.memfd_create("vsgx-runner-client", sealable)
        self._pool_fd = os.memfd_create("vsgx-runner-pool", sealable)
        pool_size = layout.POOL_SLOTS * PAGE_SIZE
        try:
            os.ftruncate(self._report_fd, REPORT.size)
            os.ftruncate(self._command_fd, COMMAND.size)
            os.ftruncate(self._client_fd, CLIENT.size)
            os.ftruncate(self._pool_fd, pool_size)
            for fd in (self._client_fd, self._pool_fd):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.report_area = mmap.mmap(self._report_fd, REPORT.size)
            self.command_area = mmap.mmap(self._command_fd, COMMAND.size)
            self.client_area = mmap.mmap(self._client_fd, CLIENT.size)
            self.pool = mmap.mmap(self._pool_fd, pool_size)
            self._report_seq = ctypes.c_uint32.from_buffer(self.report_area, 0)
            self._command_seq = ctypes.c_uint32.from_buffer(self.command_area, 0)
            self._grant_seq = ctypes.c_uint32.from_buffer(self.command_area, _GRANT_SEQ_AT)
            self._client_base = ctypes.c_char.from_buffer(self.client_area)
            self._pool_base = ctypes.c_char.from_buffer(self.pool)
            self.client_address = ctypes.addressof(self._client_base)
            self.pool_address = ctypes.addressof(self._pool_base)
            struct.pack_into("<I", self.client_area, CLIENT.offset("magic"), layout.CLIENT_MAGIC)
            self._write_exit_sites()
            memory_fd = encl.memory.fd
            flags = self.runner_flags | (layout.RUNNER_FLAG_RDTSC_FAULTS if rdtsc_faults else 0)
            if encl.exit_gate:
                flags |= layout.RUNNER_FLAG_EXIT_GATE
            root = self.root_dir if self.root_dir is not None else runner_root()
            fds = (self._report_fd, self._command_fd, self._client_fd, self.shared.fd, memory_fd,
                   self._pool_fd)
            self.process = subprocess.Popen(
                [*self.launcher, str(runner_binary()), *map(str, fds), hex(encl.base),
                 hex(encl.size), hex(pool_size), str(flags), str(root)],
                pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            # A spare starts beside the EVM's work: it sleeps, not spins.
            report = self._wait(0, self.start_limit, spin=tcs is not None)
            if report[_KIND] != layout.STOP_READY:
                raise RunnerLost(f"the runner did not start: {self._reason(report[_KIND])}")
            self.features, self.isolation, self.mxcsr_mask = struct.unpack_from(
                "<III", self.report_area, REPORT.offset("features"))
            self.mxcsr_mask &= 0xFFFF
            if tcs is not None:  # a spare joins when a TCS adopts it
                self.shared.executors.append(self)
        except BaseException:
            self.close()
            raise

    def adopt(self, tcs: int) -> None:
        """A spare runner (started before any entry) becomes TCS ``tcs``'s."""
        self.tcs = tcs
        self.shared.executors.append(self)
        self._write_exit_sites()  # a spare starts before EINIT rewrites them

    def _write_exit_sites(self) -> None:
        """Fast-exit mode: the rewritten EEXIT sites, for the runner's
        SIGTRAP path (read-only there; written before its first entry)."""
        sites = sorted(self.encl.exit_sites)[:layout.MAX_EXIT_SITES]
        struct.pack_into("<I", self.command_area, COMMAND.offset("exit_site_count"), len(sites))
        struct.pack_into(f"<{len(sites)}Q", self.command_area, COMMAND.offset("exit_sites"),
                         *sites)
        entries = sum(1 << (entry - self.encl.exit_gate) // layout.GATE_ENTRY_SIZE
                      for entry in self.encl.exit_gates)
        struct.pack_into("<I", self.command_area, COMMAND.offset("gate_entries"), entries)

    # -- the shared areas -------------------------------------------------------
    def _reason(self, kind: int) -> str:
        if kind == layout.STOP_DIED:
            message = self.report_area[REPORT.offset("message"):REPORT.end("message")]
            return message.split(b"\0", 1)[0].decode("ascii", "replace") or "no reason given"
        return f"stop {kind}"

    def _raw_u32(self, offset: int) -> int:
        return int.from_bytes(self._raw[offset:offset + 4], "little")

    def _read_report(self) -> tuple[int, ...]:
        """Copy the REPORT area once; everything after uses the copy."""
        raw = self._raw = self.report_area[:_REPORT_COPY]
        return layout.REPORT_STOP.unpack_from(raw, 0)

    @property
    def last_report(self) -> Report:
        """The last report as the runner wrote it (for tests and errors)."""
        values = layout.REPORT_STOP.unpack_from(self._raw, 0)
        return Report._make((*values[1:10], list(values[10:]), self._raw[_FPU_AT:]))

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def runner_lost(self) -> None:
        """A fast-path client found the runner dead or silent: killed and
        closed at once, so that the TCS's next entry, whoever makes it (the
        EVM, or a host in this process through the same client), gets a
        new runner."""
        self._kill()
        if self.machine is None:
            self.close()
            return
        with self.machine.lock:  # the EVM's looks at this runner (claim, revoke) hold it
            self.close()

    def _wait(self, seen: int, limit: float, spin: bool = True) -> tuple[int, ...]:
        """Wait until the runner reports again; the report."""
        sequence = self._report_seq
        # Spin first: a futex wake-up costs tens of microseconds in a VM (an
        # IPI), and most stops come sooner than that. sched_yield lets the
        # other Python threads run meanwhile.
        for _ in range(SPIN_ROUNDS if spin else 0):
            if sequence.value != seen:
                return self._read_report()
            os.sched_yield()
        address = ctypes.addressof(sequence)
        deadline = time.monotonic() + limit
        while sequence.value == seen:
            _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAIT, ctypes.c_int(seen),
                     ctypes.byref(_WAIT), None, 0)
            if sequence.value != seen:
                break
            if self.process.poll() is not None:
                raise RunnerLost(f"the runner of TCS {self.tcs:#x} died (status "
                                 f"{self.process.returncode})")
            if time.monotonic() > deadline:
                self._kill()
                raise RunnerLost(f"the runner of TCS {self.tcs:#x} stopped answering "
                                 f"for {limit:g} s and was killed")
        return self._read_report()

    def _command(self, command: int, registers: list[int] | None = None,
                 fpu: bytes | None = None) -> tuple[int, ...]:
        if self.closed:
            raise RunnerLost("the runner was closed")
        ops = self._ops
        while len(ops) > MAX_OPS:
            self._ops = ops[MAX_OPS:]
            report = self._send(layout.CMD_OPS, ops[:MAX_OPS])
            if report[_KIND] != layout.STOP_OPS_DONE:
                self._kill()
                raise RunnerLost(f"the runner of TCS {self.tcs:#x} answered page operations "
                                 f"with {self._reason(report[_KIND])} and was killed")
            ops = self._ops
        self._ops = []
        return self._send(command, ops, registers, fpu)

    def _send(self, command: int, ops: list[tuple[int, int, int, int]],
              registers: list[int] | None = None, fpu: bytes | None = None
              ) -> tuple[int, ...]:
        area = self.command_area
        for index, op in enumerate(ops):
            layout.OP.pack_into(area, _CMD_OPS_AT + index * layout.OP.size, *op)
        if registers is not None:
            layout.REGISTERS.pack_into(area, _CMD_REGS_AT, *registers)
        if fpu is not None:
            area[_CMD_FPU_AT:_CMD_FPU_AT + 512] = fpu
        _CMD_HEAD.pack_into(area, 4, command, len(ops), int(fpu is not None))
        seen = self._report_seq.value
        self._command_seq.value = (self._command_seq.value + 1) & 0xFFFFFFFF
        self._lib.vsgx_ring(self.client_address)
        report = self._wait(seen, self.silence_limit)
        if report[_KIND] == layout.STOP_OP_FAILED:
            index, errno = struct.unpack_from("<II", self.report_area, REPORT.offset("op_index"))
            address = ops[index][1] if index < len(ops) else 0
            self._kill()
            raise RunnerLost(f"the runner could not map or protect {address:#x} "
                             f"({os.strerror(errno) if errno < 200 else errno})")
        return report

    # -- registers and extended state -------------------------------------------
    def load(self, registers: list[int]) -> None:
        self._registers = list(registers)

    def save(self) -> list[int]:
        return list(self._registers)

    def xsave(self) -> bytes:
        """The SSA's XSAVE area for XFRM = x87 | SSE: the FXSAVE image of the
        enclave's state at the stop, and a header saying both are present."""
        area = bytearray(xsave_size(self.encl.xfrm))
        area[:512] = self._raw[_FPU_AT:_FPU_AT + 512]
        area[464:512] = bytes(48)  # software-available bytes: nothing of ours
        struct.pack_into("<Q", area, 512, 0x3)
        return bytes(area)

    def xrstor(self, area: bytes) -> None:
        image = bytearray(area[:512].ljust(512, b"\0"))
        # FXRSTOR faults on reserved MXCSR bits: keep the ones this CPU has.
        mxcsr = struct.unpack_from("<I", image, 24)[0] & self.mxcsr_mask
        struct.pack_into("<I", image, 24, mxcsr)
        self._pending_fpu = bytes(image)

    # -- page protections ---------------------------------------------------------
    def sync(self) -> None:
        """Send the runner the protections EPCM and the page tables give now
        (call with the machine lock held)."""
        encl = self.encl
        if self.generation == encl.generation:
            return
        # the journal names the pages changed since the last sync (EWB and
        # ELDU batches, EACCEPT, mprotect): only those are looked at
        changed = encl.changes_since(self.mark) if self.generation >= 0 else None
        if changed is None:
            self.prot, runs = protection_runs(encl, self.prot)
        else:
            runs = changed_protection_runs(encl, self.prot, changed)
        self._ops.extend((layout.OP_PROTECT, start, end - start, prot)
                         for start, end, prot in runs)
        self.generation = encl.generation
        self.mark = encl.change_mark()

    # -- untrusted pages ------------------------------------------------------------
    def _slot_view(self, slot: int) -> memoryview:
        return memoryview(self.pool)[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE]

    def _unmap(self, page: int) -> None:
        slot = self._mapped.pop(page)[0]
        self._free_slots.append(slot)
        self._ops.append((layout.OP_UNMAP, page, PAGE_SIZE, 0))

    def _write_back(self, untrusted: UntrustedMemory, page: int, entry: list[Any]) -> None:
        slot, snapshot, writable = entry
        current = bytes(self._slot_view(slot))
        if writable and current != snapshot:
            untrusted.write_back(page, page_changes(snapshot, current))
            entry[1] = current

    def _map_untrusted(self, untrusted: UntrustedMemory, page: int) -> bool:
        if page == self.encl.exit_gate:
            return False  # the runner's own there (fast-exit mode)
        fetched = untrusted.fetch(page)
        if fetched is None:
            return False
        data, writable = fetched
        if not self._free_slots:
            oldest = next(iter(self._mapped))
            self._write_back(untrusted, oldest, self._mapped[oldest])
            self._unmap(oldest)
        slot = self._free_slots.pop()
        self._slot_view(slot)[:] = data
        self._mapped[page] = [slot, bytes(data), writable]
        self._ops.append((layout.OP_MAP, page, PAGE_SIZE, slot << 1 | int(writable)))
        return True

    def _refresh(self, untrusted: UntrustedMemory) -> None:
        """Before an entry: the application may have changed the pages we
        keep mapped (in-process only; others were unmapped at the exit)."""
        source = (untrusted, untrusted.generation)
        if self._source is None or self._source[0] is not source[0] \
                or self._source[1] != source[1]:
            for page in list(self._mapped):
                self._unmap(page)
            self._source = source
            return
        if not untrusted.shares_pages:
            return
        share = untrusted.share
        for page, entry in list(self._mapped.items()):
            shared = share(page)
            if shared is None:
                self._unmap(page)
            elif shared[0] != entry[1]:
                self._slot_view(entry[0])[:] = shared[0]
                entry[1] = bytes(shared[0])

    def flush_untrusted(self, untrusted: UntrustedMemory) -> None:
        """Write back what the enclave changed in untrusted memory. With a
        fast path, nothing of ours stays mapped: fast entries would not
        refresh it."""
        keep = untrusted.shares_pages and not self.fast_path
        for page, entry in list(self._mapped.items()):
            self._write_back(untrusted, page, entry)
        if not keep:
            for page in list(self._mapped):
                self._unmap(page)
        else:
            while len(self._mapped) > KEEP_SHARED:
                self._unmap(next(iter(self._mapped)))

    # -- what a report means ----------------------------------------------------------
    def _code(self, address: int, length: int) -> bytes:
        """Enclave code bytes from the EVM's own copy of its memory."""
        encl = self.encl
        if encl.memory is None or not encl.in_elrange(address, length):
            return b""
        offset = address - encl.base
        return bytes(encl.memory.view[offset:offset + length])

    def _exception(self, report: tuple[int, ...], registers: list[int]) -> Stop:
        """The architectural exception behind a kernel-delivered signal.
        Only vectors an enclave can take come out of here."""
        rip = registers[RIP]
        signo, trapno = report[_SIGNO], report[_TRAPNO]
        if signo == _SIGSYS:
            # SYSCALL, SYSENTER and INT 0x80 are #UD in an enclave; RIP was
            # past the 2-byte instruction.
            registers[RIP] = rip = (report[_SI_ADDR] - 2) & (1 << 64) - 1
            if self._code(rip, 2) in _SYSCALL_ABIS:
                return Stop(StopKind.EXCEPTION, registers, Vector.UD)
            return Stop(StopKind.EXCEPTION, registers, Vector.GP)
        if self._raw_u32(REPORT.offset("cs")) != layout.USER_CS:
            # Enclave code left 64-bit mode: a far transfer, IRET or (on
            # Intel, where the kernel takes it) SYSENTER, each #UD in an
            # enclave. Their own address is gone; RIP is where they went.
            return Stop(StopKind.EXCEPTION, registers, Vector.UD)
        if not self.encl.in_elrange(rip):
            # A code fetch outside ELRANGE is #GP(0) in enclave mode.
            return Stop(StopKind.EXCEPTION, registers, Vector.GP)
        if _enclu_trap(signo, trapno, report[_ERROR]) and self._code(rip, 3) == ENCLU_OPCODE:
            return Stop(StopKind.ENCLU, registers)
        if signo == _SIGILL:
            return Stop(StopKind.EXCEPTION, registers, Vector.UD)
        if signo == _SIGTRAP:
            if trapno == Vector.BP:
                if self._code(rip - 2, 2) == b"\xcd\x03":  # INT 3 (two bytes): INT n is #UD
                    registers[RIP] = rip - 2
                    return Stop(StopKind.EXCEPTION, registers, Vector.UD)
                return Stop(StopKind.EXCEPTION, registers, Vector.BP,
                            exit_type=ExitType.SOFTWARE)
            if trapno == Vector.DB:
                return Stop(StopKind.EXCEPTION, registers, Vector.DB)
        elif signo in (_SIGSEGV, _SIGBUS) and trapno == Vector.PF:
            return Stop(StopKind.EXCEPTION, registers, Vector.PF, report[_ERROR] & 0xFFFFFFFF,
                        report[_CR2])
        elif signo == _SIGSEGV and trapno == Vector.GP:
            code = self._code(rip, 3)
            if code[:1] == b"\xcd" or code[:2] in _UD_INSTEAD_OF_GP \
                    or code in _UD_INSTEAD_OF_GP:
                return Stop(StopKind.EXCEPTION, registers, Vector.UD)  # INT n, RDTSC, CPUID
        elif (signo, trapno) in _PASSED_THROUGH:
            return Stop(StopKind.EXCEPTION, registers, Vector(trapno))
        return Stop(StopKind.EXCEPTION, registers, Vector.GP)

    def _stop(self, report: tuple[int, ...]) -> Stop:
        # The executor keeps the reported registers (a continue resumes with
        # them); the stop gets a copy, which the leaf code may change.
        registers = list(report[10:])
        registers[RFLAGS] = registers[RFLAGS] & _KEPT_FLAGS | 0x2
        self._registers = registers
        kind, signo = report[_KIND], report[_SIGNO]
        if kind == _STOP_SIGNAL and _enclu_trap(signo, report[_TRAPNO], report[_ERROR]):
            # The common stop: ENCLU inside ELRANGE (the bytes from the EVM's
            # own copy of enclave memory).
            offset = registers[RIP] - self._base
            if 0 <= offset <= self._size - 3 and self._view[offset:offset + 3] == ENCLU_OPCODE:
                return Stop(StopKind.ENCLU, registers.copy())
        registers = registers.copy()
        if kind == layout.STOP_BEFORE_ENTRY or (
                kind == _STOP_SIGNAL and signo in (_SIGUSR1, _SIGALRM)):
            if not self.encl.in_elrange(registers[RIP]):
                # Enclave code was running runner code: that jump was #GP(0).
                return Stop(StopKind.EXCEPTION, registers, Vector.GP)
            if self.interrupt_requested:
                self.interrupt_requested = False
                return Stop(StopKind.INTERRUPTED, registers)
            return Stop(StopKind.PREEMPTED, registers)
        if kind in (layout.STOP_NOT_DELIVERED, layout.STOP_GATE):
            # A jump to the handler or to an exit gate entry: on hardware, a
            # code fetch outside ELRANGE (the leaf code knows the gate).
            return Stop(StopKind.EXCEPTION, registers, Vector.GP)
        if kind != _STOP_SIGNAL:
            self._kill()
            raise RunnerLost(f"the runner of TCS {self.tcs:#x} sent an unexpected report "
                             f"({self._reason(kind)}) and was killed")
        return self._exception(report, registers)

    # -- running ------------------------------------------------------------------------
    def run(self, untrusted: UntrustedMemory) -> Stop:
        self._refresh(untrusted)
        self.stop_requested = False
        fpu, self._pending_fpu = self._pending_fpu, None
        return self._until_stop(untrusted, self._command(layout.CMD_RUN, self._registers, fpu))

    def resume_handed_over(self, untrusted: UntrustedMemory) -> Stop:
        """The stop a fast entry handed over (its report), as ``run`` would
        have returned it; the EVM goes on with the entry from there."""
        self._refresh(untrusted)
        self.stop_requested = False
        self._pending_fpu = None
        return self._until_stop(untrusted, self._read_report())

    def _until_stop(self, untrusted: UntrustedMemory, report: tuple[int, ...]) -> Stop:
        encl = self.encl
        while True:
            stop = self._stop(report)
            if stop.kind is not StopKind.EXCEPTION or stop.vector != Vector.PF:
                return stop
            address = stop.address
            access = FETCH if stop.error_code & PfErrorCode.I else (
                WRITE if stop.error_code & PfErrorCode.W else READ)
            page = address & ~(PAGE_SIZE - 1)
            registers = stop.registers
            if encl.in_elrange(address):
                assert self.machine is not None
                with self.machine.lock:
                    if allowed(encl, page, access):
                        # Stale protections: the EPCM changed since our sync.
                        self.generation = -1
                        self.sync()
                        report = self._command(layout.CMD_RUN, self._registers)
                        continue
                    code = fault_code(encl, page, access)
                return Stop(StopKind.EXCEPTION, registers, Vector.PF, code, address)
            if access is FETCH:
                # Code fetches outside ELRANGE are #GP(0) in enclave mode.
                return Stop(StopKind.EXCEPTION, registers, Vector.GP, 0, 0)
            # A page one of the fast path's client slots maps is mapped.
            client_mapped = struct.unpack_from("<I", self.report_area,
                                               _FAULT_CLIENT_SLOT_AT)[0] != 0
            if page not in self._mapped and not client_mapped and \
                    self._map_untrusted(untrusted, page):
                report = self._command(layout.CMD_RUN, self._registers)
                continue
            code = PfErrorCode.U | (PfErrorCode.W if access is WRITE else 0)
            if page in self._mapped or client_mapped:
                code |= PfErrorCode.P
            return Stop(StopKind.EXCEPTION, registers, Vector.PF, int(code), address)

    # -- the fast path: grants ---------------------------------------------------------
    def grant(self, *, epoch: int, tcs: int, oentry: int, ofsbase: int, ogsbase: int,
              cssa: int, nssa: int, frame_size: int, flags: int, frames: list[int]) -> None:
        """Let a client enter this TCS without the EVM (runner.c fast_eenter):
        the TCS as EENTER's checks found it just now, in linear addresses;
        ``frames`` are the SSA frames the runner may use (0: not). Call with
        the machine lock held, the protections in sync."""
        if not self.fast_path or self.closed:
            return
        if self._ops:
            self._command(layout.CMD_OPS)  # the runner's mappings must be current
        shared = self.shared
        shared.ignoring = False
        shared.granted = True  # before the version is read: any change from now on moves it
        frames = (list(frames) + [0] * layout.GRANT_FRAMES)[:layout.GRANT_FRAMES]
        sequence = self._grant_seq
        sequence.value = (sequence.value | 1) & 0xFFFFFFFF  # odd: being written
        _GRANT.pack_into(self.command_area, _GRANT_AT, 1, shared.version, epoch, tcs, oentry,
                         ofsbase, ogsbase, cssa, nssa, frame_size, self.encl.xfrm, flags,
                         self.mxcsr_mask, *frames)
        self._lib.vsgx_atomic_add32(ctypes.addressof(sequence), 1)

    def revoke(self) -> None:
        """No fast entry from now on, until the next grant (the sequence's
        last step is a locked add: a fence before whatever the EVM looks at
        next); a closed runner has none."""
        if self.closed:
            return
        sequence = self._grant_seq
        sequence.value = (sequence.value | 1) & 0xFFFFFFFF
        struct.pack_into("<I", self.command_area, _GRANT_AT, 0)
        self._lib.vsgx_atomic_add32(ctypes.addressof(sequence), 1)

    def claim(self) -> bool:
        """Before an entry through the EVM: revoke, then say whether a fast
        entry is running (the TCS is busy)."""
        self.revoke()
        return self.fast_entry_epoch() is not None

    def fast_entry_epoch(self) -> int | None:
        """The epoch a fast entry that is inside entered at, or None (the
        runner's word: enclave code may lie about its own thread)."""
        if self.closed:
            return None
        inside, _, epoch = _FAST_INSIDE.unpack_from(self.report_area, _FAST_INSIDE_AT)
        return epoch if inside == 1 else None

    @property
    def fast_entries(self) -> int:
        """The runner's count of the entries it made alone (enclave code can
        write the report area: it orders idle runners, nothing else)."""
        if self.closed:
            return 0
        return int(_U32.unpack_from(self.report_area, _FAST_ENTRIES_AT)[0])

    def handed_over(self) -> bool:
        return not self.closed and _FAST_INSIDE.unpack_from(
            self.report_area, _FAST_INSIDE_AT)[1] == 1

    def end_fast_entry(self) -> None:
        """The EVM finished an entry: the runner's word about it is reset."""
        if not self.closed:
            struct.pack_into("<II", self.report_area, _FAST_INSIDE_AT, 0, 0)

    def maps_writable(self, address: int, length: int) -> bool:
        """Whether the runner maps [address, address + length) read-write."""
        prot = self.prot
        return all(prot.get(page, 0) & 3 == 3
                   for page in range(address, address + length, PAGE_SIZE))

    def code_readable(self) -> bool:
        """Whether the runner may read every page it may execute (where the
        CPU has protection keys, an execute-only mapping is not readable)."""
        if not _execute_only_mappings():
            return True
        return all(prot & 1 for prot in self.prot.values() if prot & 4)

    @property
    def fast_client(self) -> FastClient | None:
        """The fast path's client for a host in this process, made on first
        use (None where there is no fast path)."""
        if not self.fast_path or self.closed:
            return None
        if self._fast_client is None:
            self._fast_client = FastClient.of(self)
        return self._fast_client

    def client_files(self) -> tuple[int, int]:
        """The CLIENT area and the page pool, for a client in another process
        (the program's library, through the launcher)."""
        if not self.fast_path or self.closed:
            raise NativeUnavailable("this runner has no fast path")
        return self._client_fd, self._pool_fd

    def request_stop(self, interrupt: bool = False) -> None:
        if interrupt:
            self.interrupt_requested = True
            if not self.closed:
                # A runner on a fast entry takes only this as an interrupt.
                self._lib.vsgx_atomic_add32(
                    ctypes.addressof(self._command_seq) + _INTERRUPT_SEQ_AT, 1)
        self.stop_requested = True
        if not self.closed and self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        shared = getattr(self, "shared", None)
        if shared is not None:
            if self in shared.executors:
                shared.executors.remove(self)
            if self._own_shared:
                shared.close()
        if hasattr(self, "_client_base"):
            # A client waiting on this runner goes to the EVM instead.
            self._lib.vsgx_store32(self.client_address + CLIENT.offset("closed"), 1)
            self._lib.vsgx_wake_client(self.client_address)
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                _CMD_HEAD.pack_into(self.command_area, 4, layout.CMD_QUIT, 0, 0)
                self._command_seq.value = (self._command_seq.value + 1) & 0xFFFFFFFF
                self._lib.vsgx_ring(self.client_address)
                if not wait_exit(process, 2):
                    process.kill()
                    process.wait()
            except ValueError:  # the command area is closed
                process.kill()
                process.wait()
        if self._fast_client is not None:
            self._fast_client.close()
        for name in ("_command_seq", "_report_seq", "_grant_seq", "_client_base", "_pool_base"):
            if hasattr(self, name):
                delattr(self, name)
        for name in ("report_area", "command_area", "client_area", "pool"):
            mapping = getattr(self, name, None)
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:
                    pass
        for fd in (self._report_fd, self._command_fd, self._client_fd, self._pool_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``process`` to exit and reap it: True
    if it did. Woken by the exit itself (a pidfd): Popen.wait with a
    timeout polls in growing sleeps, 1-2 ms for a runner that is gone in
    0.1 ms."""
    if process.returncode is not None:
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # reaped meanwhile, or no pidfd here
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        waiter = select.poll()  # not select(): a descriptor may be past FD_SETSIZE
        waiter.register(pidfd, select.POLLIN)
        exited = bool(waiter.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)
    if exited:
        process.wait()
    return exited


class _CallBlock:
    """vsgx_fast_call_packed's operand (_CALL_IN) and, after it, the exit
    the C side writes (_EXIT)."""

    __slots__ = ("address", "buffer", "ended", "holding", "out_address")

    def __init__(self) -> None:
        # This thread began an entry of the client and has not ended it:
        # an entry it makes meanwhile (the EVM's side of one an in-process
        # AVM began) goes through the EVM, within that one.
        self.holding = False
        self.buffer = ctypes.create_string_buffer(_CALL_IN.size + _EXIT.size)
        self.address = ctypes.addressof(self.buffer)
        self.ended = ctypes.c_uint32.from_buffer(self.buffer, _CALL_ENDED)
        self.out_address = self.address + _CALL_IN.size


class FastClient:
    """The fast path's client for a Python host: runner/client.c through
    ctypes, which lets go of the GIL while it waits. The host's untrusted
    memory must offer ``share`` (its pages as buffers): the client copies
    them into its pool slots before each entry and writes back what the
    enclave changed after it.

    Made on the runner's own areas (a host in the EVM's process, ``of``) or
    on the two files an EVM on this host hands out (``from_files``: an AVM
    behind a Unix socket)."""

    def __init__(self, area: mmap.mmap, pool: mmap.mmap, pool_offset: int, base: int,
                 size: int, on_lost: Any, name: str):
        lib = self._lib = client_library()
        self._state = ctypes.create_string_buffer(lib.vsgx_fast_client_size())
        self._c = ctypes.addressof(self._state)
        self._snapshots = mmap.mmap(-1, layout.CLIENT_SLOTS * PAGE_SIZE)
        self._snapshots_base = ctypes.c_char.from_buffer(self._snapshots)
        # vsgx_fast_call_packed's block, one per thread (two threads may
        # try the TCS at once: only one gets past vsgx_fast_begin, but both
        # pack first); every exit is written into its end
        self._blocks = threading.local()
        self._call_packed = lib.vsgx_fast_call_packed
        self._on_lost = on_lost
        self.name = name
        # Our own hold on the runner's areas: they stay mapped while C may
        # touch them, even if the executor is closed meanwhile.
        self._areas = (area, pool)
        self._area_hold = ctypes.c_char.from_buffer(area)
        self._pool_hold = ctypes.c_char.from_buffer(pool)
        status = lib.vsgx_fast_init(
            self._c, ctypes.addressof(self._area_hold),
            ctypes.addressof(self._pool_hold) + pool_offset,
            ctypes.addressof(self._snapshots_base), base, size, CLIENT_KEEP)
        if status != 0:
            raise NativeUnavailable("the runner's client area is not set up")
        self._pinned: dict[int, object] = {}  # page -> the buffer a slot copies from
        self._source: tuple[object, int] | None = None
        self.closed = False

    @classmethod
    def of(cls, executor: NativeExecutor) -> FastClient:
        encl = executor.encl
        return cls(executor.client_area, executor.pool, layout.PYTHON_SLOTS * PAGE_SIZE,
                   encl.base, encl.size, executor.runner_lost, f"TCS {executor.tcs:#x}")

    @classmethod
    def from_files(cls, client_fd: int, pool_fd: int, base: int, size: int, name: str
                   ) -> FastClient:
        """A client on a runner's CLIENT area and page pool as an EVM on this
        host handed them out (the descriptors stay the caller's). Both are
        checked: sizes, seals, and the area's magic."""
        try:
            if os.fstat(client_fd).st_size < CLIENT.size \
                    or os.fstat(pool_fd).st_size < layout.POOL_SLOTS * PAGE_SIZE:
                raise NativeUnavailable("the fast path's files are too small")
            # Sealed against shrinking: a file cut short under our mapping
            # would be SIGBUS in this process.
            for fd in (client_fd, pool_fd):
                if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
                    raise NativeUnavailable("the fast path's files are not sealed")
            area = mmap.mmap(client_fd, CLIENT.size)
            pool = mmap.mmap(pool_fd, layout.CLIENT_SLOTS * PAGE_SIZE,
                             offset=layout.PYTHON_SLOTS * PAGE_SIZE)
        except OSError as exc:
            raise NativeUnavailable(f"the fast path's files: {exc}") from None
        return cls(area, pool, 0, base, size, None, name)

    def _block(self) -> _CallBlock:
        try:
            return self._blocks.block  # type: ignore[no-any-return]
        except AttributeError:
            block = self._blocks.block = _CallBlock()
            return block

    def begin(self, untrusted: UntrustedMemory) -> bool:
        """Before any entry of the TCS (through the runner or the EVM): the
        kept pages refreshed. False when this memory has no fast path; #GP
        (the TCS is busy) while another thread's entry of the TCS holds the
        client. Not an entry through the EVM then: the runner maps the
        client's slots, which only the client refreshes and writes back (an
        EVM entry slipped in as the other ended read stale pages, and its
        writes were lost at the next refresh)."""
        block = self._block()
        if self.closed or block.holding:
            return False
        # Taken first: the slots are this entry's alone from here (another
        # thread's entry of the TCS may be using them right now).
        if self._lib.vsgx_fast_begin(self._c) != 0:
            if self.closed:
                return False  # close() holds it a moment: the entry goes to the EVM
            raise gp("the TCS is busy (another thread's entry of it is in flight)")
        block.holding = True
        source = (untrusted, untrusted.generation)
        if self._source is None or self._source[0] is not untrusted \
                or self._source[1] != source[1]:
            self._lib.vsgx_fast_forget(self._c)
            self._pinned.clear()
            self._source = source
        if not untrusted.shares_pages:
            self.end()
            return False
        return True

    def end(self) -> None:
        """After the entry: write back, keep a few pages for the next one
        (the areas are ours to touch until this client is dropped)."""
        self._lib.vsgx_fast_end(self._c)
        self._block().holding = False
        if len(self._pinned) > 2 * layout.CLIENT_SLOTS:
            self._trim_pinned()

    def _trim_pinned(self) -> None:
        held = {self._lib.vsgx_fast_slot_page(self._c, slot)
                for slot in range(layout.CLIENT_SLOTS)}
        self._pinned = {page: buffer for page, buffer in self._pinned.items() if page in held}

    def call(self, request: int, registers: list[int], return_rip: int,
             untrusted: UntrustedMemory) -> tuple[int, bool] | None:
        """``begin`` and ``enter`` in one foreign call where nothing about
        the memory changed since the last entry: (the result, whether the
        client is ended already — after an EEXIT); None where ``begin``
        would be False, #GP where it would raise it (busy: nothing begun).
        Without ``ended``, ``end`` follows as after ``begin``. If it raises
        (a lost runner, a signal's exception), what it began it has ended:
        the caller ends nothing then."""
        source = self._source
        if self.closed or source is None or source[0] is not untrusted \
                or source[1] != untrusted.generation or not untrusted.shares_pages:
            if not self.begin(untrusted):
                return None
            try:
                return self.enter(request, registers, return_rip, untrusted), False
            except BaseException:
                self._abandon()
                raise
        block = self._block()
        if block.holding:
            return None
        _CALL_IN.pack_into(block.buffer, 0, self._c, request, 0, return_rip, *registers)
        try:
            code = self._call_packed(block.address)
            if code == FAST_EEXIT:  # the client is ended with it (ended is 1)
                if len(self._pinned) > 2 * layout.CLIENT_SLOTS:
                    self._trim_pinned()
                return code, True
            if code == FAST_BUSY:  # nothing begun (ended is 0)
                if self.closed:
                    return None  # close() holds it a moment: the entry goes to the EVM
                raise gp("the TCS is busy (another thread's entry of it is in flight)")
            block.holding = True
            return self._served(code, untrusted), False
        except BaseException:
            if block.ended.value == 2:  # begun here, not ended (the C side says which)
                self._abandon()
            raise

    def _abandon(self) -> None:
        """An entry this client began is given up mid-way (an exception
        while the runner waited for a page, say): the runner is still inside
        the enclave for it, so the next request would be taken for its
        answer. The client ends it and goes; a runner of this process is
        lost, as a dead one is (the TCS gets a new one at its next entry)."""
        self.closed = True
        try:
            self.end()
        finally:
            if self._on_lost is not None:
                self._on_lost()

    def enter(self, request: int, registers: list[int], return_rip: int,
              untrusted: UntrustedMemory) -> int:
        """One EENTER through the runner: FAST_EEXIT (``exit_registers``),
        FAST_REFUSED, FAST_HANDED_OVER, FAST_CLOSED or FAST_LOST."""
        code = self._lib.vsgx_fast_enter(self._c, request, layout.REGISTERS.pack(*registers),
                                         return_rip, self._block().out_address)
        return self._served(code, untrusted)

    def _served(self, code: int, untrusted: UntrustedMemory) -> int:
        """The pages the runner asks for (NEED_PAGE), until the entry ends."""
        lib, c, out = self._lib, self._c, self._block().out_address
        share = untrusted.share
        while code == FAST_NEED_PAGE:
            page = lib.vsgx_fast_wanted(c)
            shared = share(page)
            if shared is None:
                code = lib.vsgx_fast_page(c, 0, 0, out)
                continue
            data, writable = shared
            buffer = (ctypes.c_char * PAGE_SIZE).from_buffer(data)
            self._pinned[page] = buffer
            code = lib.vsgx_fast_page(c, ctypes.addressof(buffer), int(writable), out)
        if code == FAST_LOST:
            if self._on_lost is not None:
                self._on_lost()
                raise RunnerLost(f"the runner of {self.name} stopped answering and was "
                                 "killed")
            self.closed = True  # a runner of another process: its EVM decides
        return int(code)

    def exit_registers(self) -> tuple[int, ...]:
        # eexit_registers copies them
        return layout.REGISTERS.unpack_from(self._block().buffer, _CALL_IN.size)

    def eenter(self, registers: list[int], return_rip: int, untrusted: UntrustedMemory
               ) -> tuple[str, Sequence[int] | None, bool] | None:
        """One EENTER for a host that goes to the runner itself (an AVM in
        this process or another), with ``begin`` in the same foreign call
        where nothing about the memory changed: None where ``begin`` would
        be False (nothing begun); else (what happened, the registers as
        the runner reported them at an EEXIT, whether the client is ended
        already). What happened: "eexit", "handed over" (the EVM goes on:
        CONTINUE, before ``end``), "refused" (the entry goes through the
        EVM) or "gone" (the runner closed or stopped answering: this client
        is done). Unless ended, ``end`` follows; if it raises, it has ended
        what it began."""
        called = self.call(layout.REQ_EENTER, registers, return_rip, untrusted)  # ends if it raises
        if called is None:
            return None
        code, ended = called
        if code == FAST_EEXIT:
            return "eexit", self.exit_registers(), ended
        if code == FAST_HANDED_OVER:
            return "handed over", None, ended
        if code in (FAST_CLOSED, FAST_LOST):
            self.closed = True
            return "gone", None, ended
        return "refused", None, ended

    def stats(self) -> dict[str, int]:
        values = (ctypes.c_uint64 * 6)()
        self._lib.vsgx_fast_stats(self._c, values)
        return dict(zip(("refreshed", "written_back", "pages_served", "slept", "descheduled",
                         "entries"), values, strict=True))

    def close(self) -> None:
        """No entry from now on. The buffers the slots copy from are let go
        only if no entry holds the client: one in flight (this thread's,
        whose runner was just lost, say) still writes back into them."""
        self.closed = True
        if self._lib.vsgx_fast_begin(self._c) == 0:
            self._lib.vsgx_fast_forget(self._c)
            self._lib.vsgx_fast_end(self._c)
            self._pinned.clear()


def fast_client_from_files(client_fd: int, pool_fd: int, base: int, size: int, name: str
                           ) -> FastClient:
    """A fast client for a host in another process than the EVM (an AVM
    behind a Unix socket): ``FastClient.from_files``."""
    return FastClient.from_files(client_fd, pool_fd, base, size, name)


class _SpareRunner:
    """A runner being started by the factory's starter thread: ``take``
    waits for it (None if it could not start: the caller starts one itself
    and sees why)."""

    def __init__(self) -> None:
        self._executor: NativeExecutor | None = None
        self._done = threading.Event()

    def start(self, start: Any) -> None:
        try:
            self._executor = start()
        except (VsgxError, OSError):
            self._executor = None
        finally:
            self._done.set()

    def started(self) -> NativeExecutor | None:
        """Wait for the start; the runner, still the spare's (None if it failed)."""
        self._done.wait()
        return self._executor

    def take(self) -> NativeExecutor | None:
        executor = self.started()
        self._executor = None
        return executor

    def close(self) -> None:
        executor = self.take()
        if executor is not None:
            executor.close()


# Spare runners start on one thread of this process, made with the first
# factory: a new thread per enclave costs more than it saves.
_SPARE_JOBS: queue.SimpleQueue[Any] = queue.SimpleQueue()
_starter_lock = threading.Lock()
_starter_running = False


_SPARE_DELAY = 0.001  # seconds


def _run_starter() -> None:
    while True:
        spare, start = _SPARE_JOBS.get()
        # Let the thread that asked first answer its request (Popen holds
        # the GIL for a while before the fork); a spare is needed only at
        # the enclave's first EENTER, after its pages and EINIT.
        time.sleep(_SPARE_DELAY)
        spare.start(start)


def _ensure_starter() -> None:
    global _starter_running
    with _starter_lock:
        if not _starter_running:
            threading.Thread(target=_run_starter, daemon=True, name="runner starter").start()
            _starter_running = True


class NativeExecutorFactory:
    name = "native"
    capabilities = ExecutorCapability.PARALLEL | ExecutorCapability.FAST_ENTRIES

    def __init__(self, machine: Machine):
        usable, why = native_support()
        if not usable:
            raise NativeUnavailable(f"the native executor is not available here: {why}")
        self.machine = machine
        _ensure_starter()

    def __call__(self, encl: EnclaveState, tcs: int) -> NativeExecutor:
        spare, encl.spare_executor = encl.spare_executor, None
        executor = spare.take() if isinstance(spare, _SpareRunner) else None
        if executor is not None and executor.encl is encl and not executor.closed:
            executor.adopt(tcs)
            return executor
        if executor is not None:
            executor.close()
        return NativeExecutor(self.machine, encl, tcs,
                              rdtsc_faults=not self.machine.config.sgx2,
                              shared=self._shared_of(encl))

    def prepare(self, encl: EnclaveState) -> None:
        """Start a runner for the enclave now, in the background (machine
        lock held): starting its process costs milliseconds that the first
        EENTER would otherwise wait for. The first TCS to need an executor
        adopts it; it goes with the enclave if none does."""
        if encl.spare_executor is not None or encl.memory is None:
            return
        shared = self._shared_of(encl)  # made here, under the lock
        rdtsc_faults = not self.machine.config.sgx2

        def start() -> NativeExecutor:
            return NativeExecutor(self.machine, encl, None, rdtsc_faults=rdtsc_faults,
                                  shared=shared)

        spare = encl.spare_executor = _SpareRunner()
        _SPARE_JOBS.put((spare, start))

    def _shared_of(self, encl: EnclaveState) -> SharedEnclave:
        """One SharedEnclave per enclave, kept with its InsideMap (it goes
        with the enclave)."""
        inside = encl.inside
        if isinstance(inside, InsideMap) and inside.shared.encl is encl:
            return inside.shared
        return SharedEnclave(encl)
