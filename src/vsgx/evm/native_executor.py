"""Enclave threads on the real CPU: one runner process per TCS.

The runner (``runner/runner.c``, built with the system's C compiler on first
use) maps the enclave's memfd at the enclave's own addresses, with the
protections ``sync`` sends, and runs enclave code natively; ENCLU and every
fault come back as signals and reach this executor through a shared control
page, so the leaf code in ``vsgx.evm.thread`` is the same as for Unicorn.
EPC pages are shared between the EVM and its runners only — never with the
AVM. Untrusted pages are copied into a page pool the runner maps on first
touch; changes are written back at every exit (the split's per-entry model).
With an in-process address space, pages stay mapped across entries and are
refreshed only when the application changed them.

System calls from enclave code are refused by a seccomp filter (SIGSYS →
#UD), RDTSC faults where SGX1 says so, and CPUID faults only where the CPU
offers CPUID faulting — elsewhere enclave code gets the host's answer.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vsgx.arch.constants import PAGE_SIZE, ExitType, PfErrorCode, Vector
from vsgx.arch.ssa import xsave_size
from vsgx.errors import VsgxError
from vsgx.evm.access import FETCH, READ, WRITE, allowed, fault_code, protection_runs
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.executor import REG_COUNT, Stop, StopKind, UntrustedMemory, page_changes
from vsgx.evm.machine import Machine

RUNNER_SOURCE = Path(__file__).resolve().parent / "runner" / "runner.c"
RUNNER_CFLAGS = ("-static", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector",
                 "-fno-pie", "-no-pie", "-O2", "-mgeneral-regs-only",
                 "-fno-tree-loop-distribute-patterns", "-fno-asynchronous-unwind-tables",
                 "-Wl,--build-id=none", "-Wl,-z,noexecstack")

# The control page (struct control in runner.c).
CMD_RUN, CMD_CONTINUE, CMD_OPS, CMD_QUIT = 1, 2, 3, 4
STOP_READY, STOP_ENCLU, STOP_EXCEPTION, STOP_STOPPED, STOP_OPS_DONE, STOP_ERROR = range(1, 7)
OP_PROTECT, OP_MAP, OP_UNMAP = 1, 2, 3
MAX_OPS = 1000
_OFF_CMD_SEQ, _OFF_DONE_SEQ, _OFF_COMMAND, _OFF_STOP = 0, 4, 8, 12
_OFF_REGS, _OFF_VECTOR, _OFF_LOAD_FPU, _OFF_NOPS, _OFF_FEATURES = 16, 176, 208, 216, 220
_OFF_FPU, _OFF_OPS = 256, 768
CONTROL_SIZE = 32 * 1024
_REGS = struct.Struct(f"<{REG_COUNT}Q")
_STOP_INFO = struct.Struct("<QQQQ")  # vector, error code, address, exit type
_OP = struct.Struct("<QQQQ")
FEATURE_FSGSBASE, FEATURE_CPUID_FAULTING, FEATURE_RDTSC_FAULTS = 1, 2, 4

POOL_SLOTS = 512  # untrusted pages one thread may have mapped at once
KEEP_SHARED = 32  # in-process pages kept mapped across entries
SPIN_ROUNDS = 200  # sched_yield rounds before sleeping on the futex

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_SYS_FUTEX = 202
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


_WAIT = _Timespec(0, 200_000_000)


class NativeUnavailable(VsgxError):
    """This host cannot run enclave code natively."""


class RunnerLost(VsgxError):
    """The runner process of an enclave thread died."""


_build_lock = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("VSGX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vsgx")
    return Path(base)


def runner_binary() -> Path:
    """The runner, compiled on first use (cached by source and flags)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeUnavailable("the native executor needs x86-64 Linux")
    source = RUNNER_SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(RUNNER_CFLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"runner-{digest}"
    with _build_lock:
        if target.is_file():
            return target
        cc = os.environ.get("CC", "cc")
        compiler = shutil.which(cc) or shutil.which("gcc")
        if compiler is None:
            raise NativeUnavailable("the native executor's runner is built with a C compiler: "
                                    "install gcc (or set CC), or use --executor unicorn")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            output = Path(tmp) / "runner"
            result = subprocess.run([compiler, *RUNNER_CFLAGS, "-o", str(output),
                                     str(RUNNER_SOURCE)], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise NativeUnavailable(f"building the runner failed:\n{result.stderr.strip()}")
            os.replace(output, target)
    return target


_support: tuple[bool, str] | None = None
_features = 0


def native_support() -> tuple[bool, str]:
    """(usable, why not): builds the runner and starts one on a scratch
    enclave range once per process."""
    global _support, _features
    if _support is None:
        try:
            runner_binary()
            probe = EnclaveStateProbe()
            try:
                executor = NativeExecutor(None, probe, 0)  # type: ignore[arg-type]
                _features = executor.features
                executor.close()
            finally:
                probe.close()
            _support = (True, "")
        except (NativeUnavailable, RunnerLost, OSError) as exc:
            _support = (False, str(exc))
    return _support


def cpuid_faulting() -> bool:
    """Whether the CPU lets runners turn CPUID into #UD (else enclave code
    that runs CPUID gets the host's answer)."""
    return native_support()[0] and bool(_features & FEATURE_CPUID_FAULTING)


class EnclaveStateProbe:
    """Just enough of an enclave for the support check: a small memfd."""

    def __init__(self) -> None:
        from vsgx.evm.enclave import EnclaveMemory

        self.base = 0x400000000000
        self.size = 16 * PAGE_SIZE
        self.memory = EnclaveMemory(self.size)
        self.xfrm = 3

    def close(self) -> None:
        self.memory.close()


class NativeExecutor:
    """The executor of one TCS in a runner process."""

    name = "native"
    parallel = True  # threads of one enclave run at once, on shared memory

    def __init__(self, machine: Machine | None, encl: EnclaveState, tcs: int,
                 rdtsc_faults: bool = False):
        assert encl.memory is not None
        self.machine = machine
        self.encl = encl
        self.tcs = tcs
        self.generation = -1
        self.rewritten_seen = 0
        self.prot: dict[int, int] = {}
        self.interrupt_requested = False
        self.stop_requested = False
        self.closed = False
        self._ops: list[tuple[int, int, int, int]] = []
        self._loaded = False
        self._registers: list[int] = [0] * REG_COUNT
        # page -> [slot, snapshot, writable]
        self._mapped: dict[int, list] = {}
        self._free_slots = list(range(POOL_SLOTS - 1, -1, -1))
        self._source: tuple[object, int] | None = None
        self._control_fd = os.memfd_create("vsgx-runner-control", os.MFD_CLOEXEC)
        self._pool_fd = os.memfd_create("vsgx-runner-pool", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._control_fd, CONTROL_SIZE)
            os.ftruncate(self._pool_fd, POOL_SLOTS * PAGE_SIZE)
            self.control = mmap.mmap(self._control_fd, CONTROL_SIZE)
            self.pool = mmap.mmap(self._pool_fd, POOL_SLOTS * PAGE_SIZE)
            self._cmd_seq = ctypes.c_uint32.from_buffer(self.control, _OFF_CMD_SEQ)
            self._done_seq = ctypes.c_uint32.from_buffer(self.control, _OFF_DONE_SEQ)
            memory_fd = encl.memory.fd
            self.process = subprocess.Popen(
                [str(runner_binary()), str(self._control_fd), str(memory_fd), hex(encl.base),
                 hex(encl.size), str(self._pool_fd), "1" if rdtsc_faults else "0"],
                pass_fds=(self._control_fd, memory_fd, self._pool_fd), stdin=subprocess.DEVNULL)
            stop = self._wait(0, timeout=10.0)  # done_seq starts at 0
            if stop != STOP_READY:
                raise RunnerLost(f"the runner did not start (stop {stop})")
            self.features = struct.unpack_from("<I", self.control, _OFF_FEATURES)[0]
        except BaseException:
            self.close()
            raise

    # -- the control page -------------------------------------------------------
    def _wait(self, seen: int, timeout: float | None = None) -> int:
        """Wait until the runner stops again; its stop code."""
        done = self._done_seq
        # Spin first: a futex wake-up costs tens of microseconds in a VM (an
        # IPI), and most stops come sooner than that. sched_yield lets the
        # other Python threads run meanwhile.
        for _ in range(SPIN_ROUNDS):
            if done.value != seen:
                return struct.unpack_from("<I", self.control, _OFF_STOP)[0]
            os.sched_yield()
        address = ctypes.addressof(done)
        deadline = None if timeout is None else time.monotonic() + timeout
        while done.value == seen:
            _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAIT, ctypes.c_int(seen),
                     ctypes.byref(_WAIT), None, 0)
            if self._done_seq.value != seen:
                break
            if self.process.poll() is not None:
                raise RunnerLost(f"the runner of TCS {self.tcs:#x} died (status "
                                 f"{self.process.returncode})")
            if deadline is not None and time.monotonic() > deadline:
                raise RunnerLost("the runner does not answer")
        return struct.unpack_from("<I", self.control, _OFF_STOP)[0]

    def _command(self, command: int) -> int:
        if self.closed:
            raise RunnerLost("the runner was closed")
        ops = self._ops
        while len(ops) > MAX_OPS:
            self._ops = ops[MAX_OPS:]
            self._send(CMD_OPS, ops[:MAX_OPS])
            ops = self._ops
        self._ops = []
        return self._send(command, ops)

    def _send(self, command: int, ops: list[tuple[int, int, int, int]]) -> int:
        control = self.control
        for index, op in enumerate(ops):
            _OP.pack_into(control, _OFF_OPS + index * _OP.size, *op)
        struct.pack_into("<I", control, _OFF_NOPS, len(ops))
        struct.pack_into("<I", control, _OFF_COMMAND, command)
        seen = self._done_seq.value
        self._cmd_seq.value = (self._cmd_seq.value + 1) & 0xFFFFFFFF
        _syscall(_SYS_FUTEX, ctypes.c_void_p(ctypes.addressof(self._cmd_seq)), _FUTEX_WAKE, 1,
                 None, None, 0)
        stop = self._wait(seen)
        if stop == STOP_ERROR:
            _, errno, address, _ = _STOP_INFO.unpack_from(control, _OFF_VECTOR)
            raise RunnerLost(f"the runner could not map or protect {address:#x} "
                             f"({os.strerror(errno) if errno < 200 else errno})")
        return stop

    # -- registers and extended state -------------------------------------------
    def load(self, registers: list[int]) -> None:
        _REGS.pack_into(self.control, _OFF_REGS, *registers)
        self._loaded = True

    def save(self) -> list[int]:
        return list(_REGS.unpack_from(self.control, _OFF_REGS))

    def xsave(self) -> bytes:
        """The SSA's XSAVE area for XFRM = x87 | SSE: the FXSAVE image of the
        enclave's state at the stop, and a header saying both are present."""
        area = bytearray(xsave_size(self.encl.xfrm))
        area[:512] = self.control[_OFF_FPU:_OFF_FPU + 512]
        area[464:512] = bytes(48)  # software-available bytes: nothing of ours
        struct.pack_into("<Q", area, 512, 0x3)
        return bytes(area)

    def xrstor(self, area: bytes) -> None:
        self.control[_OFF_FPU:_OFF_FPU + 512] = area[:512].ljust(512, b"\0")
        struct.pack_into("<I", self.control, _OFF_LOAD_FPU, 1)

    # -- page protections ---------------------------------------------------------
    def sync(self) -> None:
        """Send the runner the protections EPCM and the page tables give now
        (call with the machine lock held)."""
        encl = self.encl
        if self.generation == encl.generation:
            return
        desired, runs = protection_runs(encl, self.prot)
        self.rewritten_seen = len(encl.rewritten)
        self._ops.extend((OP_PROTECT, start, end - start, prot) for start, end, prot in runs)
        self.prot = desired
        self.generation = encl.generation

    # -- untrusted pages ------------------------------------------------------------
    def _slot_view(self, slot: int) -> memoryview:
        return memoryview(self.pool)[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE]

    def _unmap(self, page: int) -> None:
        slot = self._mapped.pop(page)[0]
        self._free_slots.append(slot)
        self._ops.append((OP_UNMAP, page, PAGE_SIZE, 0))

    def _write_back(self, untrusted: UntrustedMemory, page: int, entry: list) -> None:
        slot, snapshot, writable = entry
        current = bytes(self._slot_view(slot))
        if writable and current != snapshot:
            untrusted.write_back(page, page_changes(snapshot, current))
            entry[1] = current

    def _map_untrusted(self, untrusted: UntrustedMemory, page: int) -> bool:
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
        self._ops.append((OP_MAP, page, PAGE_SIZE, slot << 1 | int(writable)))
        return True

    def _refresh(self, untrusted: UntrustedMemory) -> None:
        """Before an entry: the application may have changed the pages we
        keep mapped (in-process only; others were unmapped at the exit)."""
        source = (untrusted, getattr(untrusted, "generation", -1))
        if self._source is None or self._source[0] is not source[0] \
                or self._source[1] != source[1]:
            for page in list(self._mapped):
                self._unmap(page)
            self._source = source
            return
        share = getattr(untrusted, "share", None)
        if share is None:
            return
        for page, entry in list(self._mapped.items()):
            shared = share(page)
            if shared is None:
                self._unmap(page)
            elif shared[0] != entry[1]:
                self._slot_view(entry[0])[:] = shared[0]
                entry[1] = bytes(shared[0])

    def flush_untrusted(self, untrusted: UntrustedMemory) -> None:
        """Write back what the enclave changed in untrusted memory."""
        keep = hasattr(untrusted, "share")
        for page, entry in list(self._mapped.items()):
            self._write_back(untrusted, page, entry)
        if not keep:
            for page in list(self._mapped):
                self._unmap(page)
        else:
            while len(self._mapped) > KEEP_SHARED:
                self._unmap(next(iter(self._mapped)))

    # -- running ------------------------------------------------------------------------
    def run(self, untrusted: UntrustedMemory) -> Stop:
        self._refresh(untrusted)
        command = CMD_RUN if self._loaded else CMD_CONTINUE
        self._loaded = False
        self.stop_requested = False
        encl = self.encl
        while True:
            stop = self._command(command)
            command = CMD_CONTINUE
            registers = self.save()
            if stop == STOP_ENCLU:
                return Stop(StopKind.ENCLU, registers)
            if stop == STOP_STOPPED:
                if self.interrupt_requested:
                    self.interrupt_requested = False
                    return Stop(StopKind.INTERRUPTED, registers)
                return Stop(StopKind.PREEMPTED, registers)
            if stop != STOP_EXCEPTION:
                raise RunnerLost(f"unexpected stop {stop} from the runner")
            vector, error_code, address, exit_type = _STOP_INFO.unpack_from(self.control,
                                                                            _OFF_VECTOR)
            kind = ExitType.SOFTWARE if exit_type == 6 else ExitType.HARDWARE
            if vector != Vector.PF:
                if vector == Vector.GP:
                    error_code = 0
                return Stop(StopKind.EXCEPTION, registers, vector, error_code, 0, kind)
            access = FETCH if error_code & PfErrorCode.I else (
                WRITE if error_code & PfErrorCode.W else READ)
            page = address & ~(PAGE_SIZE - 1)
            if encl.in_elrange(address):
                assert self.machine is not None
                with self.machine.lock:
                    if allowed(encl, page, access):
                        # Stale protections: the EPCM changed since our sync.
                        self.generation = -1
                        self.sync()
                        continue
                    code = fault_code(encl, page, access)
                return Stop(StopKind.EXCEPTION, registers, Vector.PF, code, address)
            if access == FETCH:
                # Code fetches outside ELRANGE are #GP(0) in enclave mode.
                return Stop(StopKind.EXCEPTION, registers, Vector.GP, 0, 0)
            if page not in self._mapped and self._map_untrusted(untrusted, page):
                continue
            code = PfErrorCode.U | (PfErrorCode.W if access == WRITE else 0)
            if page in self._mapped:
                code |= PfErrorCode.P
            return Stop(StopKind.EXCEPTION, registers, Vector.PF, int(code), address)

    def request_stop(self, interrupt: bool = False) -> None:
        if interrupt:
            self.interrupt_requested = True
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
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                struct.pack_into("<II", self.control, _OFF_NOPS, 0, 0)
                struct.pack_into("<I", self.control, _OFF_COMMAND, CMD_QUIT)
                self._cmd_seq.value = (self._cmd_seq.value + 1) & 0xFFFFFFFF
                _syscall(_SYS_FUTEX, ctypes.c_void_p(ctypes.addressof(self._cmd_seq)),
                         _FUTEX_WAKE, 1, None, None, 0)
                process.wait(timeout=2)
            except (subprocess.TimeoutExpired, ValueError):
                process.kill()
                process.wait()
        for name in ("_cmd_seq", "_done_seq"):
            if hasattr(self, name):
                delattr(self, name)
        for name in ("control", "pool"):
            mapping = getattr(self, name, None)
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:
                    pass
        for fd in (self._control_fd, self._pool_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class NativeExecutorFactory:
    name = "native"

    def __init__(self, machine: Machine):
        usable, why = native_support()
        if not usable:
            raise NativeUnavailable(f"the native executor is not available here: {why}")
        self.machine = machine

    def __call__(self, encl: EnclaveState, tcs: int) -> NativeExecutor:
        return NativeExecutor(self.machine, encl, tcs,
                              rdtsc_faults=not self.machine.config.sgx2)
