"""Enclave threads on Unicorn: one engine per TCS, the enclave's whole
ELRANGE mapped from its memory (so every thread sees the same EPC pages),
with page protections that follow EPCM and the application's page tables.

The hot path calls libunicorn through ctypes directly (register batches,
uc_emu_start) — the Python wrapper costs several microseconds per entry.
ENCLU reaches us as Unicorn's invalid-instruction stop (the user-mode
analogue of vSGX's #UD trap); faults, exceptions and the instructions SGX
forbids (SYSCALL, SYSENTER, CPUID, IN, OUT, INT n) through hooks that are
never on the hot path.

Unicorn instances are not atomic with respect to each other on shared
memory, so the threads of one enclave take turns (``EnclaveState.exec_lock``;
a waiting thread asks the running one to yield): several TCS are inside the
enclave at once and interleave, as on a single core.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as x86
from unicorn.unicorn_const import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_TLB_FILL,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
)
from unicorn.unicorn_py3.unicorn import uclib

from vsgx.arch.constants import ENCLU_OPCODE, PAGE_SIZE, ExitType, PfErrorCode, Vector
from vsgx.arch.ssa import xsave_size
from vsgx.evm.access import FETCH, READ, WRITE, Access, allowed, fault_code, page_prot
from vsgx.evm.enclave import PROT_R, PROT_W, PROT_X, EnclaveState
from vsgx.evm.executor import (
    REG_COUNT,
    RIP,
    ExecutorCapability,
    Stop,
    StopKind,
    UntrustedMemory,
    page_changes,
)
from vsgx.evm.machine import Machine

_UC_REGS = (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX,
            x86.UC_X86_REG_RSP, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI,
            x86.UC_X86_REG_R8, x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11,
            x86.UC_X86_REG_R12, x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15,
            x86.UC_X86_REG_RFLAGS, x86.UC_X86_REG_RIP, x86.UC_X86_REG_FS_BASE,
            x86.UC_X86_REG_GS_BASE)
_UC_ERR_INSN_INVALID = 10
_REGISTERS = struct.Struct(f"<{REG_COUNT}Q")
_ACCESS = {19: READ, 20: WRITE, 21: FETCH, 22: WRITE, 23: READ, 24: FETCH}
_FAULT_VECTORS = {0, 1, 4, 5, 7, 13, 16, 17, 19}
_CPU_MODEL = x86.UC_CPU_X86_SKYLAKE_SERVER
INTERRUPT_RETRY_SECONDS = 0.01
INTERRUPT_RETRIES = 500  # five seconds of asking
# ELRANGE is mapped in chunks of this size, or as one chunk when smaller
# (ELRANGE is aligned to its size, a power of two)
_CHUNK = 512 * PAGE_SIZE
# Denied accesses go to their address with this bit set, where nothing is
# mapped (x86-64 physical addresses have 52 bits; linear ones here < 2^47).
_DENIED = 1 << 51
_TLB_NEED = {16: 1, 17: 2, 18: 4}  # UC_MEM_READ, UC_MEM_WRITE, UC_MEM_FETCH -> right
_KIND_NEED = {READ: 1, WRITE: 2, FETCH: 4}
_XMM = tuple(getattr(x86, f"UC_X86_REG_XMM{i}") for i in range(16))
_ST = tuple(getattr(x86, f"UC_X86_REG_ST{i}") for i in range(8))


class UnicornExecutor:
    capabilities = ExecutorCapability.TRACKS_ACCESS | ExecutorCapability.SHARES_UNTRUSTED
    """The executor of one TCS on a Unicorn engine."""

    name = "unicorn"

    def __init__(self, machine: Machine, encl: EnclaveState, tcs: int):
        assert encl.memory is not None
        self.machine = machine
        self.encl = encl
        self.tcs = tcs
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_cpu_model(_CPU_MODEL)
        self.handle = self.uc._uch
        # ELRANGE is mapped from the enclave's memory a chunk at a time, on
        # first touch (one region for a whole 32 GiB ELRANGE would cost a
        # second to unmap), with all rights: the TLB hook gives the rights.
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)  # type: ignore[attr-defined]  # see pyproject
        self.chunks: set[int] = set()
        self.chunk_size = min(_CHUNK, encl.size)
        # pages whose code the engine may have translated (granted X)
        self.code_pages: set[int] = set()
        # rights of the untrusted pages mapped now
        self.untrusted_prot: dict[int, int] = {}
        self.generation = -1
        self.mark = (0, 0)  # the enclave's change mark at our last sync
        self.event: Stop | None = None
        self.retry: tuple[list[int], int | None] | None = None
        self.stop_requested = False
        self.interrupt_requested = False
        self.untrusted: UntrustedMemory | None = None
        # page -> (snapshot, buffer, ctypes array keeping the buffer pinned)
        self.untrusted_pages: dict[int, tuple[bytes, bytearray, ctypes.Array[ctypes.c_char]]] = {}
        # pages of an in-process address space mapped in place, kept across
        # entries while (source, generation) is unchanged
        self.shared_pages: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.shared_source: tuple[object, int] | None = None
        self.closed = False
        self._regs = (ctypes.c_int * REG_COUNT)(*_UC_REGS)
        self._values = (ctypes.c_uint64 * REG_COUNT)()
        self._view = memoryview(self._values).cast("B")
        self._list = self._view.cast("Q")
        base = ctypes.addressof(self._values)
        self._ptrs = (ctypes.c_void_p * REG_COUNT)(*[base + 8 * i for i in range(REG_COUNT)])
        self._rip = ctypes.c_uint64()
        self._rip_ref = ctypes.byref(self._rip)
        self._start = 0
        self.uc.hook_add(UC_HOOK_MEM_INVALID, self._on_invalid_memory)
        self.uc.hook_add(UC_HOOK_TLB_FILL, self._on_tlb_fill)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        for insn in (x86.UC_X86_INS_SYSCALL, x86.UC_X86_INS_SYSENTER):
            self.uc.hook_add(UC_HOOK_INSN, self._on_forbidden, None, 1, 0, insn)
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        # The architectural FPU/SSE reset state (Unicorn starts from zeros).
        self.uc.reg_write(x86.UC_X86_REG_MXCSR, 0x1F80)
        self.uc.reg_write(x86.UC_X86_REG_FPCW, 0x037F)
        # After an exception hook Unicorn keeps QEMU's "previous exception"
        # (the next #DE becomes a double fault); restoring this pristine CPU
        # context before the next run clears it.
        self._pristine = self.uc.context_save()
        self._dirty = False

    # registers ---------------------------------------------------------
    def load(self, registers: list[int]) -> None:
        if self._dirty:
            uclib.uc_context_restore(self.handle, self._pristine.context)
            self._dirty = False
        _REGISTERS.pack_into(self._view, 0, *registers)
        uclib.uc_reg_write_batch(self.handle, self._regs, self._ptrs, REG_COUNT)
        self._start = registers[RIP]

    def save(self) -> list[int]:
        uclib.uc_reg_read_batch(self.handle, self._regs, self._ptrs, REG_COUNT)
        return self._list.tolist()

    def _read_rip(self) -> int:
        uclib.uc_reg_read(self.handle, x86.UC_X86_REG_RIP, self._rip_ref)
        return self._rip.value

    def _at(self, rip: int) -> list[int]:
        """The registers, with RIP replaced (for stops recorded in hooks)."""
        registers = self.save()
        registers[RIP] = rip
        return registers

    # memory ------------------------------------------------------------
    # The engine runs with a virtual TLB: on every TLB miss Unicorn asks
    # _on_tlb_fill for the page's rights, which follow EPCM and the page
    # tables at that moment, and for where the page is. Mapped regions keep
    # all rights and never change (Unicorn's mem_protect costs time in
    # proportion to its region count and to the region it splits). A change
    # of rights is a TLB flush, as a TLB shootdown is on hardware; a denied
    # access is sent to an address with nothing mapped, so that it reaches
    # _on_invalid_memory with its exact address.
    def sync(self) -> None:
        """Make the engine see EPCM and the page tables as they are now
        (call with the machine lock held): flush its TLB, and drop the
        translated code of pages that changed (only the journal's pages
        when it can name them, every executable page otherwise)."""
        encl = self.encl
        if self.generation == encl.generation:
            return
        # rewritten code (EDBGWR, fast-exit sites) is in the journal as well
        changed = encl.changes_since(self.mark) if self.generation >= 0 else None
        code = self.code_pages
        stale = set(code) if changed is None else code.intersection(changed)
        for page in stale:
            self.uc.ctl_remove_cache(page, page + PAGE_SIZE)
            code.discard(page)
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self.generation = encl.generation
        self.mark = encl.change_mark()

    def _on_tlb_fill(self, uc: Uc, vaddr: int, access: int, entry: Any, data: object) -> bool:
        """A TLB miss at ``vaddr`` (a page): where it is and what it allows."""
        encl = self.encl
        need = _TLB_NEED.get(access, PROT_R)
        if encl.base <= vaddr < encl.base + encl.size:
            with self.machine.lock:
                prot = page_prot(encl, vaddr)
                if prot & need:
                    if vaddr in encl.old:
                        encl.touch(vaddr)  # the page walk sets the accessed bit
                    if prot & PROT_X:
                        self.code_pages.add(vaddr)
                    entry.paddr = vaddr
                    entry.perms = prot
                    return True
        elif need != PROT_X:
            prot = self.untrusted_prot.get(vaddr, UC_PROT_ALL)  # not mapped yet: any
            if prot & need:
                entry.paddr = vaddr
                entry.perms = prot
                return True
        entry.paddr = vaddr | _DENIED
        entry.perms = UC_PROT_ALL
        return True

    def _map_chunk(self, chunk: int) -> None:
        encl = self.encl
        assert encl.memory is not None
        self.uc.mem_map_ptr(chunk, self.chunk_size, UC_PROT_ALL,
                            encl.memory.address + chunk - encl.base)
        self.chunks.add(chunk)

    def _on_invalid_memory(self, uc: Uc, access: int, address: int, size: int, value: int,
                           data: object) -> bool:
        kind = _ACCESS.get(access, READ)
        encl = self.encl
        denied = bool(address & _DENIED)
        address &= ~_DENIED
        page = address & ~(PAGE_SIZE - 1)
        if encl.in_elrange(address):
            # Mappings are not changed from inside a hook (Unicorn may still
            # use the region): the run stops, run() fixes what is missing and
            # goes on from the same instruction (memory faults are precise).
            with self.machine.lock:
                if not denied:
                    # an access may cross into the next chunk
                    self.retry = (sorted({a & ~(self.chunk_size - 1) for a in (
                        address, address + size - 1) if encl.in_elrange(a)} - self.chunks),
                        None)
                    return False
                if allowed(encl, page, kind):
                    # A stale TLB entry: EPCM changed since it was filled (a
                    # TLB miss on hardware would see the new entry).
                    self.retry = ([], page)
                    return False
                code = fault_code(encl, page, kind)
            self.event = Stop(StopKind.EXCEPTION, self.save(), Vector.PF, code, address)
            return False
        rip = self._read_rip()
        if kind is FETCH:
            # Code fetches outside ELRANGE are #GP(0) in enclave mode.
            self.event = Stop(StopKind.EXCEPTION, self._at(rip), Vector.GP, 0, 0)
            return False
        if page in self.untrusted_pages or page in self.shared_pages or self.untrusted is None:
            code = PfErrorCode.U | PfErrorCode.P | (PfErrorCode.W if kind is WRITE else 0)
            self.event = Stop(StopKind.EXCEPTION, self._at(rip), Vector.PF, int(code), address)
            return False
        if self.untrusted.shares_pages:
            shared = self.untrusted.share(page)
            if shared is None:
                code = PfErrorCode.U | (PfErrorCode.W if kind is WRITE else 0)
                self.event = Stop(StopKind.EXCEPTION, self._at(rip), Vector.PF, int(code),
                                  address)
                return False
            buffer, writable = shared
            pinned = (ctypes.c_char * PAGE_SIZE).from_buffer(buffer)
            prot = PROT_R | (PROT_W if writable else 0)
            self.uc.mem_map_ptr(page, PAGE_SIZE, prot, ctypes.addressof(pinned))
            self.shared_pages[page] = pinned
            self.untrusted_prot[page] = prot
            return self._mapped_allows(prot, kind, rip, address)
        fetched = self.untrusted.fetch(page)
        if fetched is None:
            code = PfErrorCode.U | (PfErrorCode.W if kind is WRITE else 0)
            self.event = Stop(StopKind.EXCEPTION, self._at(rip), Vector.PF, int(code), address)
            return False
        data_bytes, writable = fetched
        buffer = bytearray(data_bytes)
        pinned = (ctypes.c_char * PAGE_SIZE).from_buffer(buffer)
        prot = PROT_R | (PROT_W if writable else 0)
        self.uc.mem_map_ptr(page, PAGE_SIZE, prot, ctypes.addressof(pinned))
        self.untrusted_pages[page] = (bytes(data_bytes), buffer, pinned)
        self.untrusted_prot[page] = prot
        return self._mapped_allows(prot, kind, rip, address)

    def _mapped_allows(self, prot: int, kind: Access, rip: int, address: int) -> bool:
        """After mapping an untrusted page: go on, or the access faults
        (a write to a read-only page is #PF with P set)."""
        if prot & _KIND_NEED[kind]:
            return True
        code = PfErrorCode.U | PfErrorCode.P | (PfErrorCode.W if kind is WRITE else 0)
        self.event = Stop(StopKind.EXCEPTION, self._at(rip), Vector.PF, int(code), address)
        return False

    def _fix_mappings(self, chunks: list[int], page: int | None) -> None:
        """What a stop in _on_invalid_memory asked for: map chunks of
        ELRANGE, or drop a stale TLB entry."""
        with self.machine.lock:
            self.sync()
            for chunk in chunks:
                self._map_chunk(chunk)
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def flush_untrusted(self, untrusted: UntrustedMemory) -> None:
        """Write back what the enclave changed in untrusted memory, and forget
        the pages: the next entry fetches them afresh."""
        pages = self.untrusted_pages
        if not pages:
            return
        self.untrusted_pages = {}
        for page, (snapshot, buffer, _pinned) in pages.items():
            changes = page_changes(snapshot, bytes(buffer))
            if changes:
                untrusted.write_back(page, changes)
            self.uc.mem_unmap(page, PAGE_SIZE)
            self.untrusted_prot.pop(page, None)
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # events --------------------------------------------------------------
    def _stop_with(self, stop: Stop) -> None:
        self.event = stop
        self._dirty = True
        self.uc.emu_stop()

    def _on_interrupt(self, uc: Uc, intno: int, data: object) -> None:
        rip = self._read_rip()
        memory = self._code_bytes(rip - 2, 2)
        if intno == 3 and memory[1:] == b"\xcc":
            self._stop_with(Stop(StopKind.EXCEPTION, self._at(rip), Vector.BP,
                                 exit_type=ExitType.SOFTWARE))
        elif memory == bytes([0xCD, intno & 0xFF]) and (intno >= 32 or intno not in
                                                         _FAULT_VECTORS or intno == 3):
            self._stop_with(Stop(StopKind.EXCEPTION, self._at(rip - 2), Vector.UD))  # INT n: #UD
        elif intno in _FAULT_VECTORS or intno == 6:
            self._stop_with(Stop(StopKind.EXCEPTION, self._at(rip), intno))
        else:
            self._stop_with(Stop(StopKind.EXCEPTION, self._at(rip), Vector.UD))

    def _forbidden(self) -> None:
        self._stop_with(Stop(StopKind.EXCEPTION, self.save(), Vector.UD))

    def _on_forbidden(self, uc: Uc, data: object) -> None:
        self._forbidden()

    def _on_cpuid(self, uc: Uc, data: object) -> int:
        self._forbidden()
        return 1

    def _on_in(self, uc: Uc, port: int, size: int, data: object) -> int:
        self._forbidden()
        return 0

    def _on_out(self, uc: Uc, port: int, size: int, value: int, data: object) -> None:
        self._forbidden()

    def _code_bytes(self, address: int, length: int) -> bytes:
        encl = self.encl
        if encl.in_elrange(address, length) and encl.memory is not None:
            offset = address - encl.base
            return bytes(encl.memory.view[offset:offset + length])
        return b""

    def _check_shared(self, untrusted: UntrustedMemory) -> None:
        source = self.shared_source
        if (source is None or source[0] is not untrusted
                or source[1] != untrusted.generation):
            for page in self.shared_pages:
                self.uc.mem_unmap(page, PAGE_SIZE)
                self.untrusted_prot.pop(page, None)
            if self.shared_pages:
                self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
            self.shared_pages = {}
            self.shared_source = (untrusted, untrusted.generation)

    def run(self, untrusted: UntrustedMemory) -> Stop:
        if self.shared_pages or self.shared_source is not None:
            self._check_shared(untrusted)
        elif untrusted.shares_pages:
            self.shared_source = (untrusted, untrusted.generation)
        self.untrusted = untrusted
        self.event = None
        start, self._start = self._start, -1
        if start < 0:
            start = self._read_rip()
        last_retry = None
        while True:
            if self.stop_requested or self.interrupt_requested:
                # Asked before the engine (re)started: uc_emu_stop is lost on
                # an engine that is not running, so never start it.
                status = 0
                break
            status = uclib.uc_emu_start(self.handle, start, 0, 0, 0)
            retry, self.retry = self.retry, None
            if retry is None:
                break
            start = self._read_rip()
            if (start, retry) == last_retry:
                # The fix did not take: never spin; the access faults.
                encl = self.encl
                page = retry[1] if retry[1] is not None else retry[0][0]
                self.event = Stop(StopKind.EXCEPTION, self.save(), Vector.PF,
                                  fault_code(encl, page, READ), page)
                break
            last_retry = (start, retry)
            self._fix_mappings(*retry)
        if self.event is not None:
            event = self.event
            if event.vector == Vector.PF and self.encl.in_elrange(event.address):
                # Unicorn leaves the refused page in its TLB: a second access
                # would succeed.
                self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
            return event
        registers = self.save()
        rip = registers[RIP]
        if status == _UC_ERR_INSN_INVALID:
            encl = self.encl
            offset = rip - encl.base
            if 0 <= offset < encl.size - 3 and encl.memory.map[offset:offset + 3] == ENCLU_OPCODE:  # type: ignore[union-attr]
                return Stop(StopKind.ENCLU, registers)
            return Stop(StopKind.EXCEPTION, registers, Vector.UD)
        if status == 0 and self.interrupt_requested:
            self.interrupt_requested = self.stop_requested = False
            return Stop(StopKind.INTERRUPTED, registers)
        if status == 0 and self.stop_requested:
            self.stop_requested = False
            return Stop(StopKind.PREEMPTED, registers)
        # HLT (or another privileged stop) in user mode is #GP(0).
        if status == 0:
            registers[RIP] = rip - 1
        return Stop(StopKind.EXCEPTION, registers, Vector.GP)

    def request_stop(self, interrupt: bool = False) -> None:
        if interrupt:
            self.interrupt_requested = True
        self.stop_requested = True
        uclib.uc_emu_stop(self.handle)
        if interrupt:
            # An IPI always causes an AEX; a request that lands just before
            # the engine starts would be lost, so ask again until it is taken.
            self._reassert_interrupt(INTERRUPT_RETRIES)

    def _reassert_interrupt(self, tries: int) -> None:
        if not self.interrupt_requested or self.closed or tries <= 0:
            return
        uclib.uc_emu_stop(self.handle)
        timer = threading.Timer(INTERRUPT_RETRY_SECONDS, self._reassert_interrupt, (tries - 1,))
        timer.daemon = True
        timer.start()

    # extended state ------------------------------------------------------
    def xsave(self) -> bytes:
        """The SSA's XSAVE area (standard format) for XFRM = x87 | SSE."""
        uc = self.uc
        area = bytearray(xsave_size(self.encl.xfrm))
        struct.pack_into("<HHBxH", area, 0, uc.reg_read(x86.UC_X86_REG_FPCW),
                         uc.reg_read(x86.UC_X86_REG_FPSW),
                         _abridged_tag(uc.reg_read(x86.UC_X86_REG_FPTAG)), 0)
        struct.pack_into("<II", area, 24, uc.reg_read(x86.UC_X86_REG_MXCSR), 0xFFFF)
        for i, reg in enumerate(_ST):
            area[32 + 16 * i:42 + 16 * i] = _st_bytes(uc.reg_read(reg))
        for i, reg in enumerate(_XMM):
            area[160 + 16 * i:176 + 16 * i] = uc.reg_read(reg).to_bytes(16, "little")
        struct.pack_into("<Q", area, 512, 0x3 & self.encl.xfrm)  # XSTATE_BV
        return bytes(area)

    def xrstor(self, area: bytes) -> None:
        uc = self.uc
        fcw, fsw, ftw = struct.unpack_from("<HHB", area, 0)
        uc.reg_write(x86.UC_X86_REG_FPCW, fcw)
        uc.reg_write(x86.UC_X86_REG_FPSW, fsw)
        uc.reg_write(x86.UC_X86_REG_MXCSR, struct.unpack_from("<I", area, 24)[0])
        for i, reg in enumerate(_XMM):
            uc.reg_write(reg, int.from_bytes(area[160 + 16 * i:176 + 16 * i], "little"))
        del ftw

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for chunk in self.chunks:
            try:
                self.uc.mem_unmap(chunk, self.chunk_size)
            except UcError:
                pass
        self.chunks.clear()


def _abridged_tag(full: int) -> int:
    """FXSAVE's one-bit-per-register tag from the two-bit x87 tag word."""
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


def _st_bytes(value: int | tuple[int, int]) -> bytes:
    if isinstance(value, tuple):
        mantissa, exponent = value
        return int(mantissa).to_bytes(8, "little") + int(exponent).to_bytes(2, "little")
    return int(value).to_bytes(10, "little")


class UnicornExecutorFactory:
    name = "unicorn"
    # Its engines map pages whose accessed bit is clear without rights, so
    # EnclaveState.old is exact (see vm.EnclaveVM.test_and_clear_young).
    capabilities = ExecutorCapability.TRACKS_ACCESS | ExecutorCapability.SHARES_UNTRUSTED

    def __init__(self, machine: Machine):
        self.machine = machine

    def __call__(self, enclave: EnclaveState, tcs: int) -> UnicornExecutor:
        return UnicornExecutor(self.machine, enclave, tcs)


__all__ = ["RIP", "UnicornExecutor", "UnicornExecutorFactory"]
