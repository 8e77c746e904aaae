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
  ``UntrustedMemory`` on first touch and written back by ``flush_untrusted``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from vsgx.arch.constants import ExitType

if TYPE_CHECKING:
    from vsgx.evm.enclave import EnclaveState

REG_COUNT = 20
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
RFLAGS, RIP, FSBASE, GSBASE = 16, 17, 18, 19
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rflags", "rip", "fsbase", "gsbase")


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


class UntrustedMemory(Protocol):
    """The application's memory as the enclave sees it (the AVM's page server,
    reached in-process or over the channel).

    An in-process address space may also offer ``share(page)`` (the page's
    own bytearray) and a ``generation`` counter: executors then map pages in
    place and keep them across entries until the generation changes."""

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        """(4096 bytes, writable) of the page at ``page``, or None if unmapped."""

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        """Apply the enclave's changes: (offset in page, bytes) runs."""


class ThreadExecutor(Protocol):
    interrupt_requested: bool
    generation: int  # the enclave generation its mappings reflect

    def load(self, registers: list[int]) -> None: ...

    def save(self) -> list[int]: ...

    def sync(self) -> None: ...

    def run(self, untrusted: UntrustedMemory) -> Stop: ...

    def xsave(self) -> bytes: ...

    def xrstor(self, area: bytes) -> None: ...

    def flush_untrusted(self, untrusted: UntrustedMemory) -> None: ...

    def request_stop(self, interrupt: bool = False) -> None: ...

    def close(self) -> None: ...


class ExecutorFactory(Protocol):
    name: str

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
