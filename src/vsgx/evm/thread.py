"""EENTER, ERESUME, EEXIT and AEX (SDM 38.4 and 36: "Enclave Exiting
Events"), over any executor.

The application side sends its registers at the ENCLU (RAX = leaf, RBX =
TCS, RCX = AEP, the rest as they are) and the address after its ENCLU; it
gets back an ``EnclaveExit``: the registers after EEXIT, or the synthetic
state and exception information after an AEX.

On the native executor most entries do not come here: the EVM *grants* the
TCS (``_grant``: the fields EENTER's checks found, for the enclave's
current state) and the client enters through the runner, which checks the
grant, runs the enclave and completes EEXIT itself. Whatever it cannot do
alone it refuses (the entry then comes here, whole, and the checks below
run in the SDM's order) or hands over mid-entry (``continue_entry``). Any
change of EPCM or page-table state, any look at who is inside, and every
entry through here revoke the grant; the end of every entry through here
renews it. The Unicorn executor has no such path: every entry comes here.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import cast

from vsgx.arch.constants import (
    ENCLU_OPCODE,
    EXITINFO_ALWAYS,
    EXITINFO_WITH_EXINFO,
    PAGE_SIZE,
    SSA_EXINFO_SIZE,
    SSA_GPRSGX_SIZE,
    Attribute,
    Enclu,
    ExitKind,
    ExitType,
    MiscSelect,
    PageType,
    Vector,
)
from vsgx.arch.errors import Fault, SgxError, gp
from vsgx.arch.layout import fields_of
from vsgx.arch.registers import CANONICAL_HALF, RF, canonical, eexit_registers
from vsgx.arch.ssa import Exinfo, Gprsgx, exitinfo, xsave_size
from vsgx.arch.tcs import Tcs
from vsgx.errors import VsgxError
from vsgx.evm import enclu
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.epc import epc_pf
from vsgx.evm.executor import (
    FSBASE,
    GSBASE,
    RAX,
    RBP,
    RBX,
    RCX,
    RDX,
    REG_COUNT,
    RFLAGS,
    RIP,
    RSP,
    ExecutorCapability,
    ExecutorFactory,
    FastEntryClient,
    FastEntryExecutor,
    Stop,
    StopKind,
    ThreadExecutor,
    UntrustedMemory,
)
from vsgx.evm.fast_exits import EEXIT_LEAF, gate_site, is_exit_site
from vsgx.evm.machine import Machine
from vsgx.evm.runner.layout import (
    GRANT_CODE_READABLE,
    GRANT_EXINFO,
    GRANT_FRAMES,
    REQ_EENTER,
)

# Precompiled views of the arch tables (vsgx.arch.layout.fields_of).
_TCS = fields_of(Tcs, "state", "flags", "ossa", "cssa", "nssa", "oentry", "aep", "ofsbase",
                 "ogsbase")
_CSSA = fields_of(Tcs, "cssa")
_TCS_CSSA = _CSSA.offset
_URSP_URBP = fields_of(Gprsgx, "ursp", "urbp")
_INIT = int(Attribute.INIT)
_MISC_EXINFO = int(MiscSelect.EXINFO)  # an int: IntFlag's __and__ runs in Python
_AEXNOTIFY = int(Attribute.AEXNOTIFY)
_EXIT_FSGS = fields_of(Gprsgx, "exitinfo", "aexnotify", "fsbase", "gsbase")
# RAX..R15, RFLAGS, RIP, URSP, URBP: the GPRSGX fields before EXITINFO
_GPRS = fields_of(Gprsgx, *(f.name for f in Gprsgx.FIELDS if f.offset < _EXIT_FSGS.offset))
_FSGS = fields_of(Gprsgx, "fsbase", "gsbase")
_EXINFO = fields_of(Exinfo, "maddr", "errcd", whole=True)
_U64 = (1 << 64) - 1
_NONCANONICAL_END = (1 << 64) - CANONICAL_HALF
# RFLAGS bits the status leaves define, and those ERESUME restores.
_ZF, _CF = 1 << 6, 1 << 0
_STATUS_FLAGS = 0x8D5  # CF PF AF ZF SF OF
_RESTORED_FLAGS = 0x254D5 | (1 << 10) | (1 << 14) | (1 << 18) | (1 << 21)
_SYNTHETIC_CLEARED = 0x8D5 | (1 << 16)  # arithmetic flags and RF
_PREEMPT_AFTER = 0.002  # seconds a thread waits before asking the runner to yield
_VECTORS = frozenset(int(v) for v in Vector)
# Fast-path outcomes (vsgx.evm.native_executor, vsgx_fast_client.h).
_FAST_EEXIT, _FAST_HANDED_OVER = 1, 4


@dataclass
class EnclaveExit:
    """How an EENTER/ERESUME came back to the application."""

    kind: ExitKind
    registers: list[int]
    vector: int = 0
    error_code: int = 0
    address: int = 0  # for #PF: the page (CR2 with bits 11:0 cleared, as the OS sees it)
    exitinfo_valid: bool = False
    interrupt: bool = False  # an AEX caused by an interrupt, not an exception

    @property
    def is_aex(self) -> bool:
        return self.kind is ExitKind.AEX


class EnclaveThread:
    """The execution context of one TCS: its executor and entry bookkeeping."""

    def __init__(self, machine: Machine, encl: EnclaveState, tcs: int,
                 factory: ExecutorFactory):
        self.machine = machine
        self.encl = encl
        self.tcs = tcs
        self.factory = factory
        self._use(factory(encl, tcs))
        self.entry_fsgs = (0, 0)
        self.active = False
        self.last_used = 0  # when an entry last asked for it (EnclaveVM's count)
        self.fast_entries_seen = 0  # the runner's count when the EVM last looked
        self._tcs_cache: tuple[int, tuple[int, ...]] | None = None
        self._ssa_checked: tuple[int, int] | None = None

    def close(self) -> None:
        self.executor.close()

    # -- checks shared by EENTER and ERESUME (SDM EENTER steps 2-16) ------
    def _tcs_fields(self) -> tuple[int, ...]:
        encl, tcs = self.encl, self.tcs
        entry = encl.pages.get(tcs)
        if entry is None or not entry.valid:
            raise epc_pf(tcs, "RBX is not a TCS of this enclave")
        if entry.blocked or entry.pt != PageType.TCS or entry.pending or entry.modified:
            raise epc_pf(tcs, "the TCS page is blocked, pending, modified or not a TCS")
        fields = _TCS.unpack_from(encl.memory.view, tcs - encl.base)  # type: ignore[union-attr]
        flags, ossa, ofs, ogs = fields[1], fields[2], fields[7], fields[8]
        if (ossa | ofs | ogs) & (PAGE_SIZE - 1):
            raise gp("TCS.OSSA, OFSBASE and OGSBASE must be page aligned")
        if flags & ~0x3:
            raise gp("TCS.FLAGS has reserved bits set")
        if not encl.attributes & _INIT:
            raise gp("the enclave is not initialized")
        if not flags & 1 and bool(flags & 2) != bool(encl.attributes & _AEXNOTIFY):
            raise gp("TCS.FLAGS.AEXNOTIFY does not match ATTRIBUTES.AEXNOTIFY")
        return fields

    def _ssa_frame(self, ossa: int, index: int) -> int:
        """Address of SSA frame ``index``; its pages must be RW REG pages."""
        encl = self.encl
        frame = encl.base + ossa + index * encl.ssaframesize * PAGE_SIZE
        for page in range(frame, frame + encl.ssaframesize * PAGE_SIZE, PAGE_SIZE):
            entry = encl.pages.get(page)
            if (entry is None or not entry.valid or entry.blocked or entry.pending
                    or entry.modified or entry.pt != PageType.REG or not entry.r
                    or not entry.w):
                raise epc_pf(page, "the SSA frame is not an accessible REG page")
        return frame

    def _activate(self, cssa: int) -> None:
        # The busy flag and the AEP are hidden CPU state (the TCS page's
        # STATE and AEP fields stay as software left them); CSSA lives in
        # the TCS, where EDBGRD can read it.
        self.active = True
        encl = self.encl
        _CSSA.pack_into(encl.memory.view, self.tcs - encl.base + _TCS_CSSA, cssa)  # type: ignore[union-attr]
        encl.inside[self.tcs] = encl.epoch

    def _deactivate(self, cssa: int | None = None) -> None:
        self.active = False
        encl = self.encl
        if cssa is not None:
            _CSSA.pack_into(encl.memory.view, self.tcs - encl.base + _TCS_CSSA, cssa)  # type: ignore[union-attr]
        encl.inside.pop(self.tcs, None)

    # -- the leaves ---------------------------------------------------------
    def _checked_tcs(self) -> tuple[int, ...]:
        """The TCS fields after EENTER's checks; cached while the enclave's
        generation (EPCM, TCS contents) is unchanged."""
        cached = self._tcs_cache
        if cached is not None and cached[0] == self.encl.generation:
            return cached[1]
        fields = self._tcs_fields()
        self._tcs_cache = (self.encl.generation, fields)
        return fields

    def _fast(self) -> FastEntryClient | None:
        return self.fast.fast_client if self.fast is not None else None

    def eenter(self, registers: list[int], return_rip: int, untrusted: UntrustedMemory
               ) -> EnclaveExit:
        """EENTER with the application's registers (RBX = TCS, RCX = AEP):
        through the runner where a grant allows it, else through the EVM."""
        fast = self._fast()
        if fast is None:
            return self._eenter(registers, return_rip, untrusted)
        try:
            called = fast.call(REQ_EENTER, registers, return_rip, untrusted)
        except VsgxError:  # the client ended what it began
            self._lost()
            raise
        if called is None:  # not begun: no fast path for this memory (busy is #GP)
            return self._eenter(registers, return_rip, untrusted)
        outcome, ended = called
        try:
            if outcome == _FAST_EEXIT:
                # The CLIENT area is writable by enclave code: what EEXIT
                # sets from the entry (RCX = AEP, the caller's FS/GS) is
                # taken from the caller, RIP is RBX (SDM EEXIT).
                reported = fast.exit_registers()
                regs = eexit_registers(reported, registers)
                if regs is None:
                    self._lost()
                    raise VsgxError(f"the runner of TCS {self.tcs:#x} reported an EEXIT to "
                                    f"a non-canonical address {reported[RBX]:#x}")
                return EnclaveExit(ExitKind.EEXIT, regs)
            if outcome == _FAST_HANDED_OVER:
                return self.continue_entry(registers[RCX],
                                           (registers[FSBASE], registers[GSBASE]), untrusted)
            return self._eenter(registers, return_rip, untrusted)
        finally:
            if not ended:
                fast.end()

    def _eenter(self, registers: list[int], return_rip: int, untrusted: UntrustedMemory
                ) -> EnclaveExit:
        m, encl = self.machine, self.encl
        with m.lock:
            self._renew_if_parked()
            aep = registers[RCX]
            if CANONICAL_HALF <= aep < _NONCANONICAL_END:
                raise gp("the AEP is not canonical")
            _, _, ossa, _, nssa, oentry, _, ofs, ogs = self._checked_tcs()
            view = encl.memory.view  # type: ignore[union-attr]
            cssa = _CSSA.unpack_from(view, self.tcs - encl.base + _TCS_CSSA)[0]
            if cssa >= nssa:
                raise gp(f"TCS.CSSA {cssa} >= NSSA {nssa}: no free SSA frame")
            ssa_key = (encl.generation, cssa)
            if self._ssa_checked != ssa_key:
                self._ssa_frame(ossa, cssa)
                self._ssa_checked = ssa_key
            frame = encl.base + ossa + cssa * encl.ssaframesize * PAGE_SIZE
            if self._busy():
                raise gp("the TCS is busy")
            _URSP_URBP.pack_into(view, frame - encl.base + encl.ssaframesize * PAGE_SIZE
                                 - SSA_GPRSGX_SIZE + _URSP_URBP.offset, registers[RSP],
                                 registers[RBP])
            self.active = True
            encl.inside[self.tcs] = encl.epoch
            self.entry_fsgs = (registers[FSBASE], registers[GSBASE])
            base = encl.base
            regs = list(registers)
            regs[RAX] = cssa
            regs[RCX] = return_rip
            regs[RIP] = (base + oentry) & _U64
            regs[FSBASE] = (base + ofs) & _U64
            regs[GSBASE] = (base + ogs) & _U64
            executor = self.executor
            executor.load(regs)
            if executor.generation != encl.generation:
                executor.sync()
        return self._run(untrusted, aep, frame)

    def _busy(self) -> bool:
        """The busy check of EENTER and ERESUME (machine lock held): an entry
        through here, or one through the runner (whose grant is revoked
        first, so none can start after the look)."""
        return self.active or (self.fast is not None and self.fast.claim())

    def eresume(self, registers: list[int], untrusted: UntrustedMemory) -> EnclaveExit:
        """ERESUME: continue from SSA[CSSA - 1] (through the EVM; the
        client's kept pages are refreshed and written back around it)."""
        fast = self._fast()
        if fast is None or not fast.begin(untrusted):
            return self._eresume(registers, untrusted)
        try:
            return self._eresume(registers, untrusted)
        finally:
            fast.end()

    def _eresume(self, registers: list[int], untrusted: UntrustedMemory) -> EnclaveExit:
        m, encl = self.machine, self.encl
        with m.lock:
            self._renew_if_parked()
            if not canonical(registers[RCX]):
                raise gp("the AEP is not canonical")
            _state, _flags, ossa, cssa, _nssa, _oentry, _aep, _ofs, _ogs = self._tcs_fields()
            if cssa == 0:
                raise gp("TCS.CSSA is 0: nothing to resume")
            frame = self._ssa_frame(ossa, cssa - 1)
            if self._busy():
                raise gp("the TCS is busy")
            size = encl.ssaframesize * PAGE_SIZE
            view = encl.page_view(frame)
            area = bytes(encl.memory.view[frame - encl.base:frame - encl.base  # type: ignore[union-attr]
                                          + xsave_size(encl.xfrm)])
            xstate_bv = struct.unpack_from("<Q", area, 512)[0]
            if xstate_bv & ~encl.xfrm or any(area[520:536]):
                raise gp("the SSA's XSAVE header is invalid")
            saved = list(_GPRS.unpack_from(view, size - SSA_GPRSGX_SIZE))
            fsbase, gsbase = _FSGS.unpack_from(view, size - SSA_GPRSGX_SIZE + _FSGS.offset)
            if not canonical(saved[RIP]) or not canonical(fsbase) or not canonical(gsbase):
                raise gp("the SSA holds a non-canonical RIP or FS/GS base")
            aep = registers[RCX]
            self._activate(cssa - 1)
            self.entry_fsgs = (registers[FSBASE], registers[GSBASE])
            regs = [*saved[:18], fsbase, gsbase]
            flags = registers[RFLAGS] & ~_RESTORED_FLAGS | saved[RFLAGS] & _RESTORED_FLAGS
            regs[RFLAGS] = flags | 0x2
            self.executor.load(regs)
            self.executor.xrstor(area)
            self.executor.sync()
        return self._run(untrusted, aep, self._ssa_frame_unchecked(ossa, cssa - 1))

    def continue_entry(self, aep: int, entry_fsgs: tuple[int, int], untrusted: UntrustedMemory
                       ) -> EnclaveExit:
        """Go on with an entry the runner handed over (a stop it could not
        complete alone: an ENCLU leaf, a fault in ELRANGE, an interrupt...),
        as if it had been made here; ``aep`` and ``entry_fsgs`` are the
        client's, from its EENTER."""
        m, encl, executor = self.machine, self.encl, self.fast
        with m.lock:
            epoch = executor.fast_entry_epoch() if executor is not None else None
            if self.active or executor is None or not executor.handed_over() or epoch is None:
                raise VsgxError(f"TCS {self.tcs:#x} has no entry to go on with")
            if not canonical(aep):
                raise gp("the AEP is not canonical")
            view = encl.memory.view  # type: ignore[union-attr]
            fields = _TCS.unpack_from(view, self.tcs - encl.base)
            frame = self._ssa_frame_unchecked(fields[2], fields[3])
            executor.revoke()
            self.active = True
            encl.inside[self.tcs] = min(epoch, encl.epoch)
            self.entry_fsgs = entry_fsgs
        return self._run(untrusted, aep, frame, first=executor.resume_handed_over)

    def _grant(self) -> None:
        """An entry through here is over (machine lock held): let the next
        ones go through the runner if the TCS passes EENTER's checks now.
        The runner checks busy, CSSA < NSSA and the SSA frame against what
        is granted; the rest (TCS page, fields, INIT, AEXNOTIFY) holds until
        the enclave's state changes, which revokes the grant."""
        executor = self.fast
        if executor is None:
            return
        executor.end_fast_entry()
        if not executor.fast_path:
            return
        encl = self.encl
        try:
            _, _, ossa, _, nssa, oentry, _, ofs, ogs = self._checked_tcs()
        except Fault:
            executor.revoke()
            return
        if executor.generation != encl.generation:
            executor.sync()
        base, size = encl.base, encl.ssaframesize * PAGE_SIZE
        frames = []
        for index in range(min(nssa, GRANT_FRAMES)):
            try:
                frame = self._ssa_frame(ossa, index)
            except Fault:
                frame = 0
            # The runner writes the frame through its own mapping.
            frames.append(frame if frame and executor.maps_writable(frame, size) else 0)
        view = encl.memory.view  # type: ignore[union-attr]
        cssa = _CSSA.unpack_from(view, self.tcs - base + _TCS_CSSA)[0]
        flags = (GRANT_EXINFO if encl.miscselect & _MISC_EXINFO else 0) | (
            GRANT_CODE_READABLE if executor.code_readable() else 0)
        executor.grant(epoch=encl.epoch, tcs=self.tcs, oentry=(base + oentry) & _U64,
                       ofsbase=(base + ofs) & _U64, ogsbase=(base + ogs) & _U64, cssa=cssa,
                       nssa=nssa, frame_size=size, flags=flags, frames=frames)

    def _ssa_frame_unchecked(self, ossa: int, index: int) -> int:
        return self.encl.base + ossa + index * self.encl.ssaframesize * PAGE_SIZE

    # -- running ------------------------------------------------------------
    def _run(self, untrusted: UntrustedMemory, aep: int, frame: int, first=None  # type: ignore[no-untyped-def]
             ) -> EnclaveExit:
        encl, executor = self.encl, self.executor
        # Unicorn engines take turns on an enclave's memory; native runners
        # share it with real atomics and run at once.
        lock = _NO_LOCK if ExecutorCapability.PARALLEL in executor.capabilities \
            else encl.exec_lock
        if not lock.acquire(False):
            self._take_turn(lock)
        encl.running = executor
        try:
            while True:
                if first is None and executor.interrupt_requested:
                    executor.interrupt_requested = False
                    return self._aex(Stop(StopKind.INTERRUPTED, executor.save()),
                                     untrusted, aep, frame)
                try:
                    stop = self._validated(first(untrusted) if first is not None
                                           else executor.run(untrusted))
                except VsgxError:
                    self._lost()
                    raise
                first = None
                if stop.kind is StopKind.PREEMPTED:
                    lock.release()
                    time.sleep(0)
                    self._take_turn(lock)
                    encl.running = executor
                    continue
                if stop.kind is StopKind.ENCLU:
                    exit_ = self._enclu(stop, untrusted, aep, frame)
                    if exit_ is None:
                        continue
                    return exit_
                return self._aex(stop, untrusted, aep, frame)
        finally:
            encl.running = None
            lock.release()

    def _validated(self, stop: Stop) -> Stop:
        """An executor's stop, checked before use (a native runner shares its
        address space with enclave code): an ENCLU needs the ENCLU bytes at
        RIP inside ELRANGE; enclave code never runs outside ELRANGE (on
        hardware, fetching there is #GP(0)); only vectors an enclave can take."""
        encl, registers = self.encl, stop.registers
        rip = registers[RIP]
        site = gate_site(encl, rip) if stop.kind is StopKind.EXCEPTION else None
        if site is not None:
            # Fast-exit mode: enclave code jumped to an exit gate entry (a
            # fetch outside ELRANGE, or the runner's gate reported it): the
            # EEXIT the site's jump stands for, RAX as its `mov` set it.
            registers = list(registers)
            registers[RIP] = site
            registers[RAX] = EEXIT_LEAF
            return Stop(StopKind.ENCLU, registers)
        if encl.exit_sites and stop.kind is StopKind.EXCEPTION and stop.vector == Vector.BP \
                and stop.exit_type is ExitType.SOFTWARE and is_exit_site(encl, rip - 1):
            # Fast-exit mode: the INT3 at a rewritten site is its ENCLU (while
            # the site holds what the EVM wrote there).
            registers = list(registers)
            registers[RIP] = rip - 1
            return Stop(StopKind.ENCLU, registers)
        if stop.kind is StopKind.ENCLU:
            offset = rip - encl.base
            if not 0 <= offset <= encl.size - len(ENCLU_OPCODE):
                return Stop(StopKind.EXCEPTION, registers, Vector.GP)
            code = encl.memory.view[offset:offset + len(ENCLU_OPCODE)]  # type: ignore[union-attr]
            if code != ENCLU_OPCODE and not is_exit_site(encl, rip):
                return Stop(StopKind.EXCEPTION, registers, Vector.UD)
            return stop
        # A software exception (INT3) reports the RIP after it.
        after = stop.exit_type is ExitType.SOFTWARE and rip == encl.base + encl.size
        if not (encl.in_elrange(rip) or after) or (
                stop.kind is StopKind.EXCEPTION and stop.vector not in _VECTORS):
            return Stop(StopKind.EXCEPTION, registers, Vector.GP)
        return stop

    def _take_turn(self, lock: threading.Lock | _NoLock) -> None:
        """Wait for the enclave's engine lock, asking whoever runs to yield
        — again and again, since a request can land just before that thread
        starts its engine and be lost."""
        while not lock.acquire(timeout=_PREEMPT_AFTER):
            runner = self.encl.running
            if runner is not None and runner is not self.executor:
                runner.request_stop()

    def _lost(self) -> None:
        """The executor failed (a native runner died): this entry is lost,
        and the TCS gets a fresh executor so the enclave can go on."""
        with self.machine.lock:
            self.active = False
            self.encl.inside.pop(self.tcs, None)
        self.renew()

    def renew(self) -> None:
        """A fresh executor for the TCS (the old one closed, or it died)."""
        self.executor.close()
        self._use(self.factory(self.encl, self.tcs))

    def _renew_if_parked(self) -> None:
        # parked between the VM's look and this entry's lock (machine lock held)
        if self.executor.closed:
            self.renew()

    def park(self) -> bool:
        """Close the executor if nobody is inside the TCS, by the EVM or by
        the runner alone, and no handed-over entry waits (machine lock
        held): the next entry gets a new one (renew). Whether it closed."""
        fast = self.fast
        if self.active or self.encl.running is self.executor or (
                fast is not None and (fast.claim() or fast.handed_over())):
            return False
        self.executor.close()
        return True

    def _use(self, executor: ThreadExecutor) -> None:
        self.executor = executor
        # the same executor where it declares a fast path (runner/client.c)
        self.fast: FastEntryExecutor | None = (
            cast(FastEntryExecutor, executor)
            if ExecutorCapability.FAST_ENTRIES in executor.capabilities else None)

    def _enclu(self, stop: Stop, untrusted: UntrustedMemory, aep: int, frame: int
               ) -> EnclaveExit | None:
        m, encl, executor = self.machine, self.encl, self.executor
        regs = stop.registers
        leaf = regs[RAX] & 0xFFFFFFFF
        if leaf == Enclu.EEXIT:
            target = regs[RBX]
            if not canonical(target):
                return self._aex(Stop(StopKind.EXCEPTION, regs, Vector.GP), untrusted,
                                 aep, frame)
            executor.flush_untrusted(untrusted)
            with m.lock:
                self.active = False
                encl.inside.pop(self.tcs, None)
                self._grant()
            regs[RIP] = target
            regs[RCX] = aep
            regs[RFLAGS] &= ~RF  # ENCLU completed: RF is clear after it
            regs[FSBASE], regs[GSBASE] = self.entry_fsgs
            return EnclaveExit(ExitKind.EEXIT, regs)
        status: SgxError | None = None
        try:
            with m.lock:
                if leaf == Enclu.EREPORT:
                    enclu.ereport(m, encl, regs[RBX], regs[RCX], regs[RDX])
                elif leaf == Enclu.EGETKEY:
                    status = enclu.egetkey(m, encl, regs[RBX], regs[RCX])
                elif leaf == Enclu.EACCEPT and m.config.sgx2:
                    status = enclu.eaccept(m, encl, regs[RBX], regs[RCX])
                elif leaf == Enclu.EMODPE and m.config.sgx2:
                    enclu.emodpe(m, encl, regs[RBX], regs[RCX])
                elif leaf == Enclu.EACCEPTCOPY and m.config.sgx2:
                    status = enclu.eacceptcopy(m, encl, regs[RBX], regs[RCX], regs[RDX])
                else:
                    # EENTER/ERESUME inside an enclave, and unknown leaves.
                    raise gp(f"ENCLU leaf {leaf} is not allowed inside an enclave")
                executor.sync()
        except Fault as fault:
            return self._aex(Stop(StopKind.EXCEPTION, regs, fault.vector, fault.error_code,
                                  fault.address), untrusted, aep, frame)
        if status is not None:
            regs[RAX] = int(status)
            regs[RFLAGS] = regs[RFLAGS] & ~_STATUS_FLAGS | (_ZF if status else 0)
        regs[RIP] = stop.rip + 3
        executor.load(regs)
        return None

    def _aex(self, stop: Stop, untrusted: UntrustedMemory, aep: int, frame: int
             ) -> EnclaveExit:
        """AEX: save the state in SSA[CSSA], CSSA += 1, hand out synthetic state."""
        m, encl, executor = self.machine, self.encl, self.executor
        regs = stop.registers
        executor.flush_untrusted(untrusted)
        interrupt = stop.kind is StopKind.INTERRUPTED
        with m.lock:
            view = encl.page_view(self.tcs)
            cssa = _CSSA.unpack_from(view, _TCS_CSSA)[0]
            size = encl.ssaframesize * PAGE_SIZE
            base = frame - encl.base
            memory = encl.memory.view  # type: ignore[union-attr]
            gpr_at = base + size - SSA_GPRSGX_SIZE
            ursp, urbp = _URSP_URBP.unpack_from(memory, gpr_at + _URSP_URBP.offset)
            saved = regs[:18]
            vector = Vector(stop.vector)
            if not interrupt and stop.exit_type is ExitType.HARDWARE and vector != Vector.BP:
                saved[RFLAGS] |= 1 << 16  # RF for faults
            report = not interrupt and (vector in EXITINFO_ALWAYS or (
                vector in EXITINFO_WITH_EXINFO and bool(encl.miscselect & _MISC_EXINFO)))
            info = exitinfo(vector, stop.exit_type) if report else 0
            _GPRS.pack_into(memory, gpr_at, *saved, ursp, urbp)
            _EXIT_FSGS.pack_into(memory, gpr_at + _EXIT_FSGS.offset, info, 0, regs[FSBASE],
                             regs[GSBASE])
            if report and vector in EXITINFO_WITH_EXINFO:
                _EXINFO.pack_into(memory, gpr_at - SSA_EXINFO_SIZE,
                                  stop.address if vector == Vector.PF else 0, stop.error_code)
            area = executor.xsave()
            memory[base:base + len(area)] = area
            self._deactivate(cssa + 1)
            self._grant()
        synthetic = [0] * REG_COUNT
        synthetic[RAX] = Enclu.ERESUME
        synthetic[RBX] = self.tcs
        synthetic[RCX] = aep
        synthetic[RIP] = aep
        synthetic[RSP], synthetic[RBP] = ursp, urbp
        synthetic[RFLAGS] = (regs[RFLAGS] & ~_SYNTHETIC_CLEARED) | 0x2
        synthetic[FSBASE], synthetic[GSBASE] = self.entry_fsgs
        address = stop.address & ~(PAGE_SIZE - 1) if vector == Vector.PF else 0
        return EnclaveExit(ExitKind.AEX, synthetic, int(vector), stop.error_code, address, report,
                           interrupt)


class _NoLock:
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        pass


_NO_LOCK = _NoLock()

__all__ = ["EnclaveExit", "EnclaveThread"]
