"""The untrusted runtime's half of the Intel SGX SDK protocol.

What Intel's urts does with the enclave's trts (psw/urts: enter_enclave.S
``__morestack``, enclave.cpp, routine.cpp, linux/sig_handler.cpp, tcs.cpp):

* ECMD_INIT_ENCLAVE (RDI = -1, RSI = system_features_t) once, first;
* an ECALL is EENTER with RDI = ordinal, RSI = ms; every EEXIT with RDI !=
  -1 is an OCALL (RDI = index, RSI = ms placed below the untrusted RSP):
  run it, then EENTER again with RDI = ECMD_ORET (-2), RSI = its status and
  the RSP/RBP the EEXIT left; EEXIT with RDI = -1 ends the ECALL with the
  sgx_status_t in RSI;
* an AEX with a fault is answered with a nested entry RDI = ECMD_EXCEPT
  (-3) on the same TCS (the trts moves the fault to its handlers), then
  ERESUME if that returned SGX_SUCCESS; any other status ends the ECALL;
* TCS binding: nested ECALLs, ORETs and ECMD_EXCEPT use the thread's TCS;
  with TCS_POLICY_BIND an OS thread keeps its TCS until it exits.

Registers are indexed as in ``vsgx.host.enclave.REGISTERS``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vsgx.arch.constants import Enclu, ExitKind
from vsgx.arch.errors import Fault
from vsgx.avm import EnclaveLost
from vsgx.errors import VsgxError
from vsgx.host.enclave import REGISTERS
from vsgx.host.enclave import Enclave as RawEnclave
from vsgx.sdk import status as st
from vsgx.sdk.features import system_features

ECMD_INIT_ENCLAVE = -1
ECMD_ORET = -2
ECMD_EXCEPT = -3
ECMD_ECALL_PTHREAD = -6
OCMD_ERET = (1 << 64) - 1
_MASK = (1 << 64) - 1

RAX, RCX, RBX, RSP, RBP, RSI, RDI, RFLAGS = (REGISTERS.index(name) for name in (
    "rax", "rcx", "rbx", "rsp", "rbp", "rsi", "rdi", "rflags"))
_NREGS = len(REGISTERS)
# members looked up once: an enum's attribute costs a descriptor call each time
_EENTER, _ERESUME, _AEX = int(Enclu.EENTER), int(Enclu.ERESUME), ExitKind.AEX
RED_ZONE = 256  # kept free below an OCALL's ms before a nested entry's frame
MAX_EXCEPTION_DEPTH = 8

OcallBridge = Callable[[int], int]  # ms address -> sgx_status_t
Marshal = Callable[[int], tuple[int, int]]  # stack top -> (ms address, entry RSP)


@dataclass
class _ThreadContext:
    """One OS thread's view of one enclave (Intel's CTrustThread binding)."""

    tcs: int | None = None
    depth: int = 0
    sp: int = 0
    stack_top: int = 0  # the thread's untrusted stack (the Avm's; made once per thread)
    errors: list[BaseException] = field(default_factory=list)


class OcallFailed(VsgxError):
    """An OCALL handler raised; the enclave saw SGX_ERROR_UNEXPECTED."""


class Urts:
    """Drives one loaded SDK enclave through the trts protocol."""

    def __init__(self, raw: RawEnclave, bind: bool):
        self.raw = raw
        self.bind = bind
        self.ocalls: list[OcallBridge | None] = []
        self.ocall_names: list[str] = []
        memory = raw.avm.memory
        self._memory = memory
        self._driver = raw.avm.driver
        self._handle = raw.handle
        self._return_rip = memory.return_rip
        # what every entry's registers start from
        self._registers = [0] * _NREGS
        self._registers[RFLAGS] = 0x202
        self._registers[RCX] = memory.return_rip
        self._free = list(reversed(raw.tcs))
        self._owners: dict[int, weakref.ref[threading.Thread]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._features = memory.alloc(4096, init=system_features(len(raw.tcs)))
        self.initialized = False

    # -- TCS pool (psw/urts/tcs.cpp) -----------------------------------------
    def _context(self) -> _ThreadContext:
        context = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = _ThreadContext()
        return context

    @property
    def bound_tcs(self) -> int | None:
        """The TCS this thread keeps between ECALLs (the bind policy), or None."""
        return self._context().tcs

    def take_tcs(self) -> int | None:
        """A free TCS, or None (after collecting those of exited threads)."""
        if not self.bind:
            # Nobody owns a TCS between ECALLs: nothing to collect, and a
            # list's pop and append are atomic (each ECALL takes one here).
            try:
                return self._free.pop()
            except IndexError:
                return None
        with self._lock:
            if not self._free:
                for tcs, owner in list(self._owners.items()):
                    thread = owner()
                    if thread is None or not thread.is_alive():
                        del self._owners[tcs]
                        self._free.append(tcs)
            return self._free.pop() if self._free else None

    def give_back(self, tcs: int) -> None:
        if not self.bind:
            self._free.append(tcs)
            return
        with self._lock:
            self._owners.pop(tcs, None)
            self._free.append(tcs)

    def _bind(self, context: _ThreadContext) -> int:
        if context.tcs is not None:
            return context.tcs
        tcs = self.take_tcs()
        if tcs is None:
            raise st.SgxStatusError(st.SGX_ERROR_OUT_OF_TCS, "no free TCS for this thread")
        context.tcs = tcs
        if self.bind:
            with self._lock:
                self._owners[tcs] = weakref.ref(threading.current_thread())
        return tcs

    def _unbind(self, context: _ThreadContext, force: bool = False) -> None:
        if context.tcs is not None and (force or not self.bind):
            self.give_back(context.tcs)
            context.tcs = None

    def forget_thread(self) -> None:
        """Release this thread's bound TCS now (BIND policy)."""
        context = self._context()
        if context.depth == 0:
            self._unbind(context, force=True)

    # -- entries ---------------------------------------------------------------
    def initialize(self) -> None:
        """ECMD_INIT_ENCLAVE on a pooled TCS, which goes back to the pool."""
        context = self._context()
        status = self.call(ECMD_INIT_ENCLAVE, lambda sp: (self._features, sp), context)
        self._unbind(context, force=True)
        if status != st.SGX_SUCCESS:
            raise st.SgxStatusError(status, "ECMD_INIT_ENCLAVE (the enclave's trts refused to "
                                    "initialise)")
        self.initialized = True

    def call(self, command: int, marshal: Marshal, context: _ThreadContext | None = None) -> int:
        """One ECALL (or another ECMD) on this thread's TCS: returns the
        sgx_status_t. ``marshal(stack_top)`` writes the ms struct and its
        buffers into untrusted memory and returns (ms, the RSP to enter with).
        An OCALL handler's exception is raised after the ECALL has unwound."""
        context = context or self._context()
        tcs = context.tcs
        if tcs is None:
            tcs = self._bind(context)
        depth = context.depth
        if depth == 0:
            context.sp = context.stack_top or self._stack_top(context)
        saved_sp = context.sp
        # this call's OCALL errors are those appended past the caller's
        errors = context.errors
        mark = len(errors)
        context.depth = depth + 1
        try:
            ms, rsp = marshal(saved_sp)
            status = self._run(tcs, command, ms, rsp, context)
        finally:
            context.depth = depth
            context.sp = saved_sp
            if depth == 0 and not self.bind:
                # the TCS goes back to the pool (give_back, inline)
                context.tcs = None
                self._free.append(tcs)
            raised = errors[mark:] if len(errors) > mark else None
            if raised:
                del errors[mark:]
        if raised:
            first = raised[0]
            if isinstance(first, VsgxError | KeyboardInterrupt | SystemExit):
                raise first
            raise OcallFailed(f"an OCALL handler raised {first!r}") from first
        return status

    def _stack_top(self, context: _ThreadContext) -> int:
        context.stack_top = self.raw.avm.stack_top()
        return context.stack_top

    def _enter(self, leaf: int, tcs: int, rdi: int, rsi: int, rsp: int, rbp: int) -> Any:
        registers = self._registers[:]  # RFLAGS and RCX (the AEP) set
        registers[RSP] = rsp
        registers[RBP] = rbp
        registers[RBX] = tcs
        registers[RDI] = rdi & _MASK
        registers[RSI] = rsi & _MASK
        if self.raw.closed:
            raise EnclaveLost("the enclave was destroyed")
        return self._driver.enter(self._handle, leaf, registers, self._return_rip, self._memory)

    def _run(self, tcs: int, command: int, ms: int, rsp: int, context: _ThreadContext,
             exception_depth: int = 0) -> int:
        """__morestack: EENTER, then serve OCALLs and exceptions until the
        EEXIT with RDI = OCMD_ERET."""
        try:
            result = self._enter(_EENTER, tcs, command, ms, rsp, rsp)
        except Fault:
            # Intel: a fault on EENTER itself means the enclave is gone.
            return st.SGX_ERROR_ENCLAVE_LOST
        while True:
            if result.kind is _AEX:
                if exception_depth >= MAX_EXCEPTION_DEPTH:
                    return st.SGX_ERROR_ENCLAVE_CRASHED
                registers: list[int] = result.registers
                status = self._run(tcs, ECMD_EXCEPT, 0, registers[RSP], context,
                                   exception_depth + 1)
                if status != st.SGX_SUCCESS:
                    return status
                try:
                    result = self._enter(_ERESUME, tcs, 0, 0, registers[RSP], registers[RBP])
                except Fault:
                    return st.SGX_ERROR_ENCLAVE_LOST
                continue
            registers = result.registers
            if registers[RDI] == OCMD_ERET:
                return registers[RSI] & 0xFFFFFFFF
            exit_rsp, exit_rbp = registers[RSP], registers[RBP]
            index = registers[RDI] & 0xFFFFFFFF
            context.sp = (exit_rsp - RED_ZONE) & ~15
            status = self._ocall(index, registers[RSI], context)
            try:
                result = self._enter(_EENTER, tcs, ECMD_ORET, status, exit_rsp, exit_rbp)
            except Fault:
                return st.SGX_ERROR_ENCLAVE_LOST

    def _ocall(self, index: int, ms: int, context: _ThreadContext) -> int:
        """CEnclave::ocall: the bridge's status goes back with ECMD_ORET."""
        bridge = self.ocalls[index] if index < len(self.ocalls) else None
        if bridge is None:
            name = self.ocall_names[index] if index < len(self.ocall_names) else None
            what = f"OCALL {name} (index {index})" if name else f"OCALL index {index}"
            if index >= 0x80000000:
                what = f"built-in OCALL {index - (1 << 32)} (EDMM is not offered)"
            context.errors.append(st.OcallError(f"the enclave called {what}, which has no "
                                                "handler"))
            return st.SGX_ERROR_INVALID_FUNCTION
        try:
            return bridge(ms) & 0xFFFFFFFF
        except BaseException as exc:
            context.errors.append(exc)
            return st.SGX_ERROR_UNEXPECTED

    def run_pthread(self, tcs: int, on_exit: Callable[[int], None]) -> None:
        """A host thread for pthread_create inside the enclave (Intel's
        enclave_thread.cpp): bind ``tcs``, enter with ECMD_ECALL_PTHREAD and
        a pointer to an untrusted ``uint64_t waiter``; afterwards wake the
        joiner the enclave wrote there."""
        context = self._context()
        context.tcs = tcs
        slots: list[int] = []

        def marshal(sp: int) -> tuple[int, int]:
            slot = (sp - 64) & ~15
            self._memory.write_u64(slot, 0)
            slots.append(slot)
            return slot, slot - 64

        try:
            self.call(ECMD_ECALL_PTHREAD, marshal, context)
            joiner = self._memory.read_u64(slots[0])
            if joiner:
                on_exit(joiner)
        finally:
            self._unbind(context, force=True)
