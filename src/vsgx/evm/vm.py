"""The enclave VM: the SGX CPU that vSGX's EVM kernel patch and enclave
manager implement, as one object with a method per leaf.

Every ENCLS leaf takes its operands as values and EPC addresses and either
returns (an SgxError where the leaf reports one) or raises a Fault. EENTER
and ERESUME take the application's registers and an ``UntrustedMemory``
through which the enclave reads and writes the application's memory.
"""

from __future__ import annotations

import itertools
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from vsgx.arch.constants import PAGE_SIZE, PageType
from vsgx.arch.cpuid import SgxCpuid
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError, gp
from vsgx.errors import VsgxError
from vsgx.evm import encls
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.encls import EvictedPage
from vsgx.evm.executor import (
    RBX,
    ExecutorCapability,
    ExecutorFactory,
    FastEntryClient,
    UntrustedMemory,
)
from vsgx.evm.fast_exits import rewrite_exit_sites
from vsgx.evm.machine import Machine
from vsgx.evm.platform import PlatformConfig, PlatformSecrets, load_root_secret
from vsgx.evm.runner.layout import exit_gate_address
from vsgx.evm.thread import EnclaveExit, EnclaveThread
from vsgx.evm.unicorn_executor import UnicornExecutorFactory

if TYPE_CHECKING:  # the manager imports this module
    from vsgx.evm.manager import EnclaveManager

EXECUTORS = ("native", "unicorn")
# mprotect() ranges up to this many pages are named page by page to the
# executors (see EnclaveState.note_change)
_JOURNALLED_PROTECT = 512
_TCS_OSSA_NSSA = struct.Struct("<QII")  # TCS.OSSA, CSSA, NSSA (from offset 16)
_MAX_TOUCHED_SSA = 16
# Executors kept at once over all enclaves (a native one is a runner
# process): past it, the idle one entered longest ago is closed, and its
# TCS gets a new one at its next entry. Without a bound a session could
# start a process for each TCS page its EPC share allows.
MAX_LIVE_EXECUTORS = 512


def executor_factory(machine: Machine, name: str | None = None) -> ExecutorFactory:
    """``native`` (enclave code on the CPU, in runner processes),
    ``unicorn`` (portable, traceable), or ``auto`` / None: the one named by
    $VSGX_EXECUTOR, else native where this host supports it."""
    name = name or os.environ.get("VSGX_EXECUTOR") or "auto"
    if name == "unicorn":
        return UnicornExecutorFactory(machine)
    from vsgx.evm.native_executor import NativeExecutorFactory, native_support

    if name == "native":
        return NativeExecutorFactory(machine)
    if name != "auto":
        raise VsgxError(f"unknown executor {name!r}: choose native, unicorn or auto")
    return NativeExecutorFactory(machine) if native_support()[0] \
        else UnicornExecutorFactory(machine)


class EnclaveVM:
    """One emulated SGX platform: EPC, EPCM, leaves and enclave threads."""

    def __init__(self, config: PlatformConfig | None = None, *, root_secret: bytes | None = None,
                 secret_path: Path | None = None,
                 executor: ExecutorFactory | str | None = None,
                 data_dir: Path | None = None, fast_exits: bool = False,
                 max_live_executors: int = MAX_LIVE_EXECUTORS):
        """``fast_exits``: rewrite each enclave's EEXIT sites after EINIT
        (vsgx.evm.fast_exits; opt-in, not exact). Either executor carries
        them out; the native one's runner completes them alone."""
        config = config or PlatformConfig()
        secret = root_secret if root_secret is not None else load_root_secret(secret_path)
        # Where this platform's files live (its QE's keys and certificates):
        # given, or beside the root secret, or the user's data directory.
        self.data_dir = Path(data_dir) if data_dir is not None else (
            Path(secret_path).parent if secret_path is not None else None)
        self.machine = Machine(config, PlatformSecrets(secret))
        if executor is None or isinstance(executor, str):
            executor = executor_factory(self.machine, executor)
        self.executor_factory: ExecutorFactory = executor
        self.fast_exits = fast_exits
        self.max_live_executors = max(1, max_live_executors)
        self._uses = itertools.count(1)
        self._tracks_access = ExecutorCapability.TRACKS_ACCESS in executor.capabilities
        # (enclave id, TCS) -> (generation, the TCS and SSA pages it names)
        self._thread_pages: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        # The manager of this process's sessions of it (vsgx.host.local_manager):
        # held here, not in a map keyed by this VM, so the two go together.
        self.local_sessions: EnclaveManager | None = None

    @property
    def config(self) -> PlatformConfig:
        return self.machine.config

    def cpuid(self) -> SgxCpuid:
        return self.config.cpuid()

    def enclave(self, secs_page: int) -> EnclaveState:
        with self.machine.lock:
            return encls.secs_of(self.machine, secs_page)

    # -- ENCLS ----------------------------------------------------------
    def ecreate(self, epc_page: int, secs: bytes, secinfo: bytes) -> None:
        with self.machine.lock:
            encl = encls.ecreate(self.machine, epc_page, secs, secinfo)
            if self.fast_exits:
                encl.exit_gate = exit_gate_address(encl.base)
            # An executor that starts slowly (a runner process) starts now,
            # while the enclave is built, not at its first EENTER.
            prepare = getattr(self.executor_factory, "prepare", None)
            if prepare is not None:
                prepare(encl)

    def eadd(self, epc_page: int, secs_page: int, linaddr: int, source: bytes, secinfo: bytes,
             measure: bool = False) -> None:
        """EADD, and the sixteen EEXTENDs of the page when ``measure``."""
        with self.machine.lock:
            encls.eadd(self.machine, epc_page, secs_page, linaddr, source, secinfo)
            if measure:
                encls.measure_pages(self.machine, secs_page, epc_page)

    def eadd_pages(self, epc_pages: list[int], secs_page: int, linaddr: int,
                   source: bytes | memoryview, secinfo: bytes, measure: bool = False) -> None:
        """EADD (and EEXTEND when ``measure``) of consecutive REG pages, one
        EPC page each, in one call (encls.eadd_pages)."""
        with self.machine.lock:
            encls.eadd_pages(self.machine, epc_pages, secs_page, linaddr, source, secinfo,
                             measure)

    def eadd_uniform(self, secs_page: int, linaddr: int, count: int, secinfo: bytes, fill: int,
                     measure: bool = False, epc_pages: list[int] | tuple[int, ...] = ()
                     ) -> None:
        """EADD of ``count`` pages of one 32-bit pattern; pages past
        ``epc_pages`` stay deferred until eldu_deferred (encls.eadd_uniform)."""
        with self.machine.lock:
            encls.eadd_uniform(self.machine, secs_page, linaddr, count, secinfo, fill, measure,
                               epc_pages)

    def eadd_runs(self, secs_page: int, runs: list[tuple]  # type: ignore[type-arg]
                  ) -> list[SgxError | Fault]:
        """Several runs of EADDs in one call (the pages a program queued
        with ENCLAVE_ADD_PAGES). A run is (LINADDR, count, SECINFO, measure,
        fill, data, EPC pages): with ``data``, ``count`` pages from it, one
        EPC page each (eadd_pages; a TCS run is one page, through eadd);
        without, ``count`` pages of the 32-bit ``fill``, the first
        ``len(EPC pages)`` resident (eadd_uniform). Each run is all or
        nothing; SUCCESS per run done, and a Fault (last) ends the list."""
        results: list[SgxError | Fault] = []
        for linaddr, count, secinfo, measure, fill, data, epc_pages in runs:
            try:
                if data is None:
                    self.eadd_uniform(secs_page, linaddr, count, secinfo, fill, measure,
                                      epc_pages)
                elif int.from_bytes(secinfo[:8], "little") >> 8 & 0xFF == PageType.REG:
                    self.eadd_pages(list(epc_pages), secs_page, linaddr, data, secinfo, measure)
                else:
                    if count != 1 or len(epc_pages) != 1 or len(data) != PAGE_SIZE:
                        raise gp("a run of pages other than PT_REG is one page")
                    self.eadd(epc_pages[0], secs_page, linaddr, bytes(data), secinfo, measure)
            except Fault as fault:
                results.append(fault)
                break
            results.append(SgxError.SUCCESS)
        return results

    def eldu_deferred(self, epc_page: int, secs_page: int, linaddr: int) -> None:
        with self.machine.lock:
            encls.eldu_deferred(self.machine, epc_page, secs_page, linaddr)

    def eextend(self, secs_page: int, chunk: int) -> None:
        with self.machine.lock:
            encls.eextend(self.machine, secs_page, chunk)

    def einit(self, secs_page: int, sigstruct: bytes, token: bytes = bytes(EINITTOKEN_SIZE)
              ) -> SgxError:
        with self.machine.lock:
            status = encls.einit(self.machine, secs_page, sigstruct, token)
            if status == SgxError.SUCCESS and self.fast_exits:
                rewrite_exit_sites(encls.secs_of(self.machine, secs_page))
            return status

    def eremove(self, epc_page: int) -> SgxError:
        with self.machine.lock:
            return encls.eremove(self.machine, epc_page)

    def edbgrd(self, address: int) -> tuple[SgxError, int]:
        with self.machine.lock:
            return encls.edbgrd(self.machine, address)

    def edbgwr(self, address: int, value: int) -> SgxError:
        with self.machine.lock:
            return encls.edbgwr(self.machine, address, value)

    def epa(self, epc_page: int) -> None:
        with self.machine.lock:
            encls.epa(self.machine, epc_page)

    def eblock(self, epc_page: int) -> SgxError:
        with self.machine.lock:
            return encls.eblock(self.machine, epc_page)

    def etrack(self, secs_page: int) -> SgxError:
        with self.machine.lock:
            return encls.etrack(self.machine, secs_page)

    def ewb(self, epc_page: int, va_slot: int) -> tuple[SgxError, EvictedPage | None]:
        with self.machine.lock:
            return encls.ewb(self.machine, epc_page, va_slot)

    def eblock_pages(self, epc_pages: list[int]) -> list[SgxError | Fault]:
        """EBLOCK of each page; a Fault (as the last item) ends the batch."""
        with self.machine.lock:
            return encls.eblock_pages(self.machine, epc_pages)

    def ewb_pages(self, pairs: list[tuple[int, int]]
                  ) -> list[tuple[SgxError, EvictedPage | None] | Fault]:
        """EWB of each (EPC page, VA slot); a Fault (as the last item) ends
        the batch, and the pages before it are written out."""
        with self.machine.lock:
            return encls.ewb_pages(self.machine, pairs)

    def evict_pages(self, secs_page: int, pairs: list[tuple[int, int]]
                    ) -> tuple[list[SgxError | Fault], SgxError | None,
                               list[tuple[SgxError, EvictedPage | None] | Fault]]:
        """A reclaimer's batch in one call (Linux's sgx_reclaim_pages): EBLOCK
        of each EPC page; if any is blocked (SUCCESS or BLKSTATE), one
        ETRACK of the enclave and EWB of those pages into their VA slots.
        Returns the EBLOCK results, the ETRACK status (None if none was
        blocked) and the EWB results of the blocked pages, in order; a Fault
        ends either list (and the call)."""
        blocks = self.eblock_pages([epc for epc, _ in pairs])
        blocked = [pair for pair, status in zip(pairs, blocks, strict=False)
                   if status is SgxError.SUCCESS or status is SgxError.BLKSTATE]
        if not blocked or (blocks and isinstance(blocks[-1], Fault)):
            return blocks, None, []
        track = self.etrack(secs_page)
        return blocks, track, self.ewb_pages(blocked)

    def eldu_pages(self, secs_page: int,
                   items: list[tuple[int, int, int, bytes | memoryview, bytes]]
                   ) -> list[SgxError | Fault]:
        """ELDU of each (EPC page, VA slot, LINADDR, blob, PCMD) of one
        enclave; a blob may be EvictedPage.sealed (no copy is made)."""
        with self.machine.lock:
            return encls.eld_pages(self.machine, secs_page, items)

    def eldu(self, epc_page: int, va_slot: int, secs_page: int, linaddr: int, ciphertext: bytes,
             pcmd: bytes) -> SgxError:
        with self.machine.lock:
            return encls.eld(self.machine, epc_page, va_slot, secs_page, linaddr, ciphertext,
                             pcmd, blocked=False)

    def eldb(self, epc_page: int, va_slot: int, secs_page: int, linaddr: int, ciphertext: bytes,
             pcmd: bytes) -> SgxError:
        with self.machine.lock:
            return encls.eld(self.machine, epc_page, va_slot, secs_page, linaddr, ciphertext,
                             pcmd, blocked=True)

    def eaug(self, epc_page: int, secs_page: int, linaddr: int) -> None:
        self._sgx2()
        with self.machine.lock:
            encls.eaug(self.machine, epc_page, secs_page, linaddr)

    def emodpr(self, epc_page: int, secinfo: bytes) -> SgxError:
        self._sgx2()
        with self.machine.lock:
            return encls.emodpr(self.machine, epc_page, secinfo)

    def emodt(self, epc_page: int, secinfo: bytes) -> SgxError:
        self._sgx2()
        with self.machine.lock:
            return encls.emodt(self.machine, epc_page, secinfo)

    def _sgx2(self) -> None:
        if not self.config.sgx2:
            raise gp("SGX2 leaves are not enabled on this platform")

    # -- the application's page tables for ELRANGE -------------------------
    def set_page_protection(self, secs_page: int, linaddr: int, count: int, prot: int) -> None:
        """What mprotect() on the enclave mapping does to its page-table entries."""
        with self.machine.lock:
            encl = encls.secs_of(self.machine, secs_page)
            if linaddr % PAGE_SIZE or not encl.in_elrange(linaddr, count * PAGE_SIZE):
                raise gp("the range is not page aligned inside ELRANGE")
            end = linaddr + count * PAGE_SIZE
            pte, pages = encl.pte, range(linaddr, end, PAGE_SIZE)
            if encl.inside and prot != 0b111 and (
                    count > _JOURNALLED_PROTECT  # too many to look at: as if some lost rights
                    or any(pte.get(page, 0b111) & ~prot for page in pages)):
                # Rights taken away: Linux's TLB shootdown interrupts every
                # CPU that runs the process, so a thread inside takes an
                # AEX and its next page walk sees the new PTEs (SDM 37.3:
                # the page tables are checked before the EPCM).
                self._interrupt_inside(encl)
            if prot != 0b111:
                pte.update(dict.fromkeys(pages, prot))
            elif count > len(pte):  # all rights: the default, no entry
                for page in [p for p in pte if linaddr <= p < end]:
                    del pte[page]
            else:
                pop = pte.pop
                for page in pages:
                    pop(page, None)
            if count <= _JOURNALLED_PROTECT:
                encl.note_changes(list(pages))  # under the lock: one change to see
            else:
                encl.note_unnamed_change()  # too many to name: executors re-read all

    def set_page_protections(self, secs_page: int, ranges: list[tuple[int, int, int]]
                             ) -> None:
        """set_page_protection of each (LINADDR, count, prot), in order, under
        one hold of the lock (a program's mmaps, sent together); a bad
        range raises as it would alone, after the ranges before it."""
        with self.machine.lock:
            for linaddr, count, prot in ranges:
                self.set_page_protection(secs_page, linaddr, count, prot)

    # -- ENCLU from outside --------------------------------------------------
    def _thread(self, secs_page: int, tcs: int) -> EnclaveThread:
        encl = self.machine.epc.secs.get(secs_page)
        if encl is not None:
            thread = encl.threads.get(tcs)
            if isinstance(thread, EnclaveThread) and not thread.executor.closed:
                thread.last_used = next(self._uses)
                return thread  # it checks everything again under the lock
        with self.machine.lock:
            encl = encls.secs_of(self.machine, secs_page)
            thread = encl.threads.get(tcs)
            if thread is None:
                entry = encl.pages.get(tcs)
                if entry is None or entry.pt != PageType.TCS:
                    raise encls.epc_pf(tcs, "RBX is not a TCS of this enclave")
                thread = EnclaveThread(self.machine, encl, tcs, self.executor_factory)
                encl.threads[tcs] = thread
                self._limit_executors(thread)
            assert isinstance(thread, EnclaveThread)
            if thread.executor.closed:  # parked (see _limit_executors)
                thread.renew()
                self._limit_executors(thread)
            thread.last_used = next(self._uses)
            return thread

    def _limit_executors(self, keep: EnclaveThread) -> None:
        """Past max_live_executors, close idle executors, those entered
        longest ago first (machine lock held)."""
        live = [thread for encl in self.machine.epc.secs.values()
                for thread in encl.threads.values()
                if isinstance(thread, EnclaveThread) and not thread.executor.closed]
        excess = len(live) - self.max_live_executors
        if excess <= 0:
            return
        for thread in live:
            # Entries straight to a runner (a host through its client) ask
            # the EVM for nothing: its count says the TCS is in use.
            fast = thread.fast
            count = fast.fast_entries if fast is not None else 0
            if count != thread.fast_entries_seen:
                thread.fast_entries_seen = count
                thread.last_used = next(self._uses)
        for thread in sorted(live, key=lambda t: t.last_used):
            if thread is not keep and thread.park():
                excess -= 1
                if not excess:
                    return

    def eenter(self, secs_page: int, registers: list[int], return_rip: int,
               untrusted: UntrustedMemory) -> EnclaveExit:
        """EENTER: ``registers`` are the application's 20 registers with
        RBX = TCS and RCX = AEP; ``return_rip`` is the address after its ENCLU."""
        thread = self._thread(secs_page, registers[RBX])
        if self._tracks_access:
            self._touch_thread_pages(thread.encl, registers[RBX])
        return thread.eenter(registers, return_rip, untrusted)

    def eresume(self, secs_page: int, registers: list[int], untrusted: UntrustedMemory
                ) -> EnclaveExit:
        thread = self._thread(secs_page, registers[RBX])
        if self._tracks_access:
            self._touch_thread_pages(thread.encl, registers[RBX])
        return thread.eresume(registers, untrusted)

    def client_files(self, secs_page: int, tcs: int) -> tuple[int, int]:
        """The CLIENT area and page pool of a TCS's runner, for a fast-path
        client in another process on this host (``vsgx exec``'s library):
        VsgxError where the TCS's executor has no fast path."""
        thread = self._thread(secs_page, tcs)
        executor = thread.fast
        if executor is None:
            raise VsgxError(f"TCS {tcs:#x} has no fast path (its executor is not the "
                            "native one)")
        return executor.client_files()

    def fast_client(self, secs_page: int, tcs: int) -> FastEntryClient:
        """The fast-path client of a TCS's runner that the EVM's own entries
        of the TCS use, for a host in this process to enter the runner with
        (an in-process AVM): VsgxError where the TCS has no fast path."""
        thread = self._thread(secs_page, tcs)
        client = thread.fast.fast_client if thread.fast is not None else None
        if client is None:
            raise VsgxError(f"TCS {tcs:#x} has no fast path (its executor is not the "
                            "native one, or its runner has none)")
        return client

    def continue_entry(self, secs_page: int, tcs: int, aep: int, entry_fsgs: tuple[int, int],
                       untrusted: UntrustedMemory) -> EnclaveExit:
        """Go on with an entry the TCS's runner handed over to the EVM (a
        client in another process entered through the fast path)."""
        thread = self._thread(secs_page, tcs)
        if self._tracks_access:
            self._touch_thread_pages(thread.encl, tcs)
        return thread.continue_entry(aep, entry_fsgs, untrusted)

    def _touch_thread_pages(self, encl: EnclaveState, tcs: int) -> None:
        """EENTER and ERESUME access the TCS and the SSA frames themselves
        (not through the executor): their pages' accessed bits are set."""
        old = encl.old
        cached = self._thread_pages.get((encl.eid, tcs))
        if cached is None or cached[0] != encl.generation:
            with self.machine.lock:
                if tcs not in encl.pages or encl.memory is None:
                    return
                ossa, _cssa, nssa = _TCS_OSSA_NSSA.unpack_from(encl.memory.view,
                                                             tcs - encl.base + 16)
                frames = min(nssa, _MAX_TOUCHED_SSA) * encl.ssaframesize
                first = encl.base + (ossa & ~(PAGE_SIZE - 1))
                pages = (tcs, *range(first, first + frames * PAGE_SIZE, PAGE_SIZE))
                cached = self._thread_pages[encl.eid, tcs] = (encl.generation, pages)
        if any(page in old for page in cached[1]):
            with self.machine.lock:
                for page in cached[1]:
                    encl.touch(page)

    def test_and_clear_young(self, secs_page: int, linaddrs: list[int]) -> list[bool] | None:
        """For the driver's reclaimer: whether each page was touched since
        this was last asked for it (and clear that), or None when the
        executor cannot tell (the native one maps pages once)."""
        if not self._tracks_access:
            return None
        with self.machine.lock:
            return encls.secs_of(self.machine, secs_page).age(linaddrs)

    def kick(self, secs_page: int) -> None:
        """An IPI to every logical processor inside the enclave: each takes
        an AEX (the driver's way to complete ETRACK tracking)."""
        with self.machine.lock:
            self._interrupt_inside(encls.secs_of(self.machine, secs_page))

    @staticmethod
    def _interrupt_inside(encl: EnclaveState) -> None:
        for tcs in list(encl.inside):
            thread = encl.threads.get(tcs)
            if isinstance(thread, EnclaveThread):
                thread.executor.request_stop(interrupt=True)

    def clear_epc(self, base: int, size: int) -> None:
        """EREMOVE every page of an EPC range (an AVM session's slice when it
        ends): children and VA pages first, then the SECS pages."""
        with self.machine.lock:
            epc = self.machine.epc
            addresses = range(base, base + size, PAGE_SIZE)
            for address in addresses:
                entry = epc.entry(address)
                if entry.valid and entry.pt != PageType.SECS:
                    encls.eremove(self.machine, address)
            for address in addresses:
                if epc.entry(address).valid:
                    encls.secs_of(self.machine, address).inside.clear()
                    encls.eremove(self.machine, address)

    def destroy(self, secs_page: int) -> None:
        """Remove every page of an enclave and its SECS (what the driver does
        when the application closes the enclave)."""
        with self.machine.lock:
            encls.eremove_enclave(self.machine, secs_page)


__all__ = ["EnclaveExit", "EnclaveVM", "EvictedPage"]
