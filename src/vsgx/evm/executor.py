"""The executor interface: what runs enclave code for one TCS.

Leaf semantics (vsgx.evm.thread: EENTER, ERESUME, EEXIT, AEX) talk to an
executor only through this interface, so that a second executor (enclave
code run natively in an isolated process) fits beside Unicorn:

* registers are one list of 20 values in GPRSGX order (RAX, RCX, RDX, RBX,
  RSP, RBP, RSI, RDI, R8-R15, RFLAGS, RIP), then FSBASE and GSBASE;
* ``sync`` makes the enclave's pages accessible exactly as EPCM and the
  application's page tables allow (called when the enclave's generation
  changes, and on entry);
* ``run`` executes until an ENCLU, an exception, or a stop request;
* untrusted memory (outside ELRANGE) is fetched page by page from an
  ``UntrustedMemory`` on first touch and written back by ``flush_untrusted``;
* what an executor can do beyond that is declared, not probed: its
  ``capabilities`` (an ``ExecutorCapability``), and its factory's.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, Flag, auto
from typing import TYPE_CHECKING, NamedTuple, Protocol

from vsgx.arch.constants import ExitType

# The register order is declared once (vsgx.arch.registers); the executors
# take it from here.
from vsgx.arch.registers import (
    FSBASE,
    GSBASE,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    RAX,
    RBP,
    RBX,
    RCX,
    RDI,
    RDX,
    REG_COUNT,
    REG_NAMES,
    RFLAGS,
    RIP,
    RSI,
    RSP,
)

if TYPE_CHECKING:
    from vsgx.evm.enclave import EnclaveState


class StopKind(Enum):
    ENCLU = "enclu"
    EXCEPTION = "exception"
    PREEMPTED = "preempted"  # another thread of the enclave wants the CPU
    INTERRUPTED = "interrupted"  # an interrupt (the driver's IPI): AEX, then ERESUME


class Stop(NamedTuple):
    """Why ``run`` returned, with the registers at that point (RIP at the
    ENCLU or the faulting instruction)."""

    kind: StopKind
    registers: list[int]
    vector: int = 0
    error_code: int = 0
    address: int = 0
    exit_type: ExitType = ExitType.HARDWARE

    @property
    def rip(self) -> int:
        return self.registers[RIP]


class ExecutorCapability(Flag):
    """What an executor (or every executor a factory makes) can do."""

    NONE = 0
    # Threads of one enclave run at once, on shared memory with real
    # atomics (no turn-taking on the enclave's lock).
    PARALLEL = auto()
    # Every access to enclave memory is seen: pages' accessed bits are kept
    # for the driver's reclaimer (test_and_clear_young).
    TRACKS_ACCESS = auto()
    # Untrusted pages of an address space that shares them
    # (``UntrustedMemory.shares_pages``) are mapped in place: zero-copy.
    SHARES_UNTRUSTED = auto()
    # Entries and exits can complete in the executor without the EVM, under
    # a grant the EVM gives and revokes (the executor is a FastEntryExecutor).
    FAST_ENTRIES = auto()


class UntrustedMemory(Protocol):
    """The application's memory as the enclave sees it (the AVM's page server,
    reached in-process or over the channel).

    An address space in the EVM's own process (``shares_pages``) also hands
    out the pages themselves (``share``): executors that can map them in
    place keep them across entries until ``generation`` changes."""

    shares_pages: bool
    generation: int

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        """(4096 bytes, writable) of the page at ``page``, or None if unmapped."""

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        """Apply the enclave's changes: (offset in page, bytes) runs."""

    def share(self, page: int) -> tuple[bytearray, bool] | None:
        """(the page's own bytearray, writable), or None if unmapped (asked
        only where ``shares_pages``)."""


class Closable(Protocol):
    """What an enclave keeps per TCS (vsgx.evm.thread.EnclaveThread): its
    executor goes when the enclave does."""

    def close(self) -> None: ...


class ThreadExecutor(Protocol):
    capabilities: ExecutorCapability
    interrupt_requested: bool
    generation: int  # the enclave generation its mappings reflect
    closed: bool  # after close(): its thread needs a new one to enter

    def load(self, registers: list[int]) -> None: ...

    def save(self) -> list[int]: ...

    def sync(self) -> None: ...

    def run(self, untrusted: UntrustedMemory) -> Stop: ...

    def xsave(self) -> bytes: ...

    def xrstor(self, area: bytes) -> None: ...

    def flush_untrusted(self, untrusted: UntrustedMemory) -> None: ...

    def request_stop(self, interrupt: bool = False) -> None: ...

    def close(self) -> None: ...


class FastEntryClient(Protocol):
    """The fast path's client for a host in the EVM's process (the EVM's
    own entries of the TCS, and an in-process AVM's)."""

    closed: bool

    def begin(self, untrusted: UntrustedMemory) -> bool: ...

    def end(self) -> None: ...

    def enter(self, request: int, registers: list[int], return_rip: int,
              untrusted: UntrustedMemory) -> int: ...

    def call(self, request: int, registers: list[int], return_rip: int,
             untrusted: UntrustedMemory) -> tuple[int, bool] | None: ...

    def exit_registers(self) -> Sequence[int]: ...

    def eenter(self, registers: list[int], return_rip: int, untrusted: UntrustedMemory
               ) -> tuple[str, Sequence[int] | None, bool] | None: ...


class FastEntryExecutor(ThreadExecutor, Protocol):
    """An executor with ``ExecutorCapability.FAST_ENTRIES``: the EVM grants
    it the TCS as EENTER's checks found it, revokes the grant before any
    entry or change of its own, and takes over what it hands back."""

    fast_path: bool  # this one's fast path is on (it may be off per executor)

    @property
    def fast_client(self) -> FastEntryClient | None: ...

    def grant(self, *, epoch: int, tcs: int, oentry: int, ofsbase: int, ogsbase: int,
              cssa: int, nssa: int, frame_size: int, flags: int, frames: list[int]) -> None: ...

    def revoke(self) -> None: ...

    def claim(self) -> bool: ...

    def fast_entry_epoch(self) -> int | None: ...

    @property
    def fast_entries(self) -> int:
        """Entries the runner made alone so far (its count: for the EVM's
        choice of idle runners only)."""

    def handed_over(self) -> bool: ...

    def end_fast_entry(self) -> None: ...

    def resume_handed_over(self, untrusted: UntrustedMemory) -> Stop: ...

    def maps_writable(self, address: int, length: int) -> bool: ...

    def code_readable(self) -> bool: ...

    def client_files(self) -> tuple[int, int]:
        """The CLIENT area's and the page pool's descriptors, for a client
        in another process on this host (sealed against resizing)."""
        ...


class ExecutorFactory(Protocol):
    name: str
    capabilities: ExecutorCapability  # of every executor it makes

    def __call__(self, enclave: EnclaveState, tcs: int, /) -> ThreadExecutor: ...


def page_changes(old: bytes, new: bytes, granule: int = 64) -> list[tuple[int, bytes]]:
    """The runs of ``new`` that differ from ``old`` (page diffs for write-back),
    in ``granule``-byte steps. The differing span is found first by halving
    (slices compare with memcmp), so a small change costs a few comparisons
    rather than a walk over the whole page."""
    if old == new:
        return []
    size = len(new)
    low, high = 0, size  # the first difference is in [low, high)
    while high - low > granule:
        middle = (low + high) // 2
        if old[low:middle] == new[low:middle]:
            low = middle
        else:
            high = middle
    first = low - low % granule
    low, high = first, size  # the last difference is in [low, high)
    while high - low > granule:
        middle = (low + high) // 2
        if old[middle:high] == new[middle:high]:
            high = middle
        else:
            low = middle
    end = min(size, high + (-high) % granule)
    changes: list[tuple[int, bytes]] = []
    start = -1
    for offset in range(first, end, granule):
        differs = old[offset:offset + granule] != new[offset:offset + granule]
        if differs and start < 0:
            start = offset
        elif not differs and start >= 0:
            changes.append((start, new[start:offset]))
            start = -1
    if start >= 0:
        changes.append((start, new[start:end]))
    return changes


__all__ = [
    "FSBASE",
    "GSBASE",
    "R8",
    "R9",
    "R10",
    "R11",
    "R12",
    "R13",
    "R14",
    "R15",
    "RAX",
    "RBP",
    "RBX",
    "RCX",
    "RDI",
    "RDX",
    "REG_COUNT",
    "REG_NAMES",
    "RFLAGS",
    "RIP",
    "RSI",
    "RSP",
    "Closable",
    "ExecutorCapability",
    "ExecutorFactory",
    "FastEntryClient",
    "FastEntryExecutor",
    "Stop",
    "StopKind",
    "ThreadExecutor",
    "UntrustedMemory",
    "page_changes",
]
