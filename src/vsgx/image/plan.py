"""The build plan: what the loader does to an enclave, in measurement order.

Both the signer and the loader consume one plan, so that what is signed is
what is loaded (Intel's sgx_sign and urts share their loader the same way).
A plan is data only: no I/O, no EPC.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from vsgx.arch.constants import PAGE_SIZE, PageType
from vsgx.arch.cpuid import SgxCpuid
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.sigstruct import Sigstruct
from vsgx.crypto.measurement import MrEnclave
from vsgx.errors import ImageError

V = TypeVar("V")

# Work a plan may ask for, checked before anything is hashed or loaded: real
# signed enclaves add up to 2^23 pages (32 GiB, mostly unmeasured heap) and
# measure far fewer; hashing 2^22 measured pages takes about 15 s here.
MAX_ADDED_PAGES = 1 << 25
MAX_MEASURED_PAGES = 1 << 22
# ECREATE takes SECS.SIZE < 2^MaxEnclaveSize_64 (CPUID.(EAX=12H,ECX=0):EDX[15:8]).
MAX_ENCLAVE_SIZE_LOG2 = SgxCpuid().max_enclave_size_64


def check_plan_size(size: int, runs: list[PageRun] | tuple[PageRun, ...]) -> None:
    """Refuse, with the sizes, an enclave no SECS can hold or whose pages
    would take hours to measure (a crafted p_memsz of terabytes)."""
    if size >= 1 << MAX_ENCLAVE_SIZE_LOG2:
        raise ImageError(f"the enclave needs {size:#x} bytes of address space; a SECS holds "
                         f"less than 2^{MAX_ENCLAVE_SIZE_LOG2} ({1 << MAX_ENCLAVE_SIZE_LOG2:#x})")
    added = sum(run.count for run in runs)
    if added > MAX_ADDED_PAGES:
        raise ImageError(f"the enclave adds {added} pages ({added * PAGE_SIZE >> 30} GiB); "
                         f"vsgx loads at most {MAX_ADDED_PAGES}")
    measured = sum(run.count for run in runs if run.measured)
    if measured > MAX_MEASURED_PAGES:
        raise ImageError(f"the enclave measures {measured} pages ({measured * PAGE_SIZE >> 30} "
                         f"GiB); vsgx measures at most {MAX_MEASURED_PAGES}")


@dataclass(frozen=True)
class PageRun:
    """EADD of ``count`` pages at ``offset`` (from the enclave base) with one
    SECINFO, each followed by its sixteen EEXTENDs when ``measured``.

    Content is either ``data`` (count pages of bytes) or, when ``data`` is
    None, every page filled with the 32-bit little-endian ``fill`` pattern;
    uniform runs are never materialised (heaps reach gigabytes).
    """

    offset: int
    count: int
    secinfo_flags: int
    measured: bool
    data: bytes | None = None
    fill: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        if self.offset % PAGE_SIZE or self.count <= 0:
            raise ValueError(f"bad page run at {self.offset:#x} x {self.count}")
        if self.data is not None and len(self.data) != self.count * PAGE_SIZE:
            raise ValueError("page run data is not count pages long")

    @property
    def size(self) -> int:
        return self.count * PAGE_SIZE

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def page_type(self) -> int:
        return Secinfo(flags=self.secinfo_flags).page_type

    def fill_page(self) -> bytes:
        return (self.fill & 0xFFFFFFFF).to_bytes(4, "little") * (PAGE_SIZE // 4)

    def page(self, index: int) -> bytes:
        """The content of page ``index`` of the run."""
        if self.data is None:
            return self.fill_page()
        return self.data[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]


class RegionKind(Enum):
    """Ranges of ELRANGE that the loader does not EADD."""

    GUARD = "guard"  # never mapped
    DYNAMIC = "dynamic"  # added later with EAUG (SGX2 heap, stacks, threads)
    RESERVED = "reserved"  # reserved memory the enclave manages itself


@dataclass(frozen=True)
class Region:
    offset: int
    count: int
    kind: RegionKind
    label: str = ""
    secinfo_flags: int = 0


@dataclass(frozen=True)
class Ecreate:
    """The ECREATE parameters a plan fixes (SECS fields besides BASEADDR)."""

    size: int
    ssaframesize: int
    miscselect: int
    attributes: int
    xfrm: int


@dataclass(frozen=True)
class BuildPlan:
    ecreate: Ecreate
    runs: tuple[PageRun, ...]
    sigstruct: Sigstruct | None
    # The SIGSTRUCT exactly as the file carries it (what EINIT receives).
    sigstruct_bytes: bytes | None = None
    # Where the loaded image sits inside ELRANGE (non-zero only for SDK
    # enclaves with an ELRANGE configuration); offsets above include it.
    image_offset: int = 0
    regions: tuple[Region, ...] = ()
    entry_symbols: dict[str, int] = field(default_factory=dict)
    format: str = ""
    details: dict[str, object] = field(default_factory=dict)

    @property
    def tcs_offsets(self) -> tuple[int, ...]:
        return tuple(run.offset + i * PAGE_SIZE
                     for run in self.runs if run.page_type == PageType.TCS
                     for i in range(run.count))

    @property
    def added_pages(self) -> int:
        return sum(run.count for run in self.runs)

    @property
    def measured_pages(self) -> int:
        return sum(run.count for run in self.runs if run.measured)

    def measure(self) -> bytes:
        """MRENCLAVE of this plan, exactly as ECREATE/EADD/EEXTEND compute it."""
        mr = MrEnclave()
        mr.ecreate(self.ecreate.ssaframesize, self.ecreate.size)
        for run in self.runs:
            if run.data is not None:
                mr.add_pages(run.offset, run.data, run.secinfo_flags, run.measured)
            else:
                mr.add_uniform_pages(run.offset, run.count, run.fill_page(),
                                     run.secinfo_flags, run.measured)
        return mr.digest()


class _Run(Generic[V]):
    """One run of a PageRunSet: its pages, its value, which pages are live."""

    __slots__ = ("count", "live", "remaining", "start", "value")

    def __init__(self, start: int, count: int, value: V) -> None:
        self.start = start
        self.count = count
        self.value = value
        self.live: bytearray | None = None      # None: all pages are still deferred
        self.remaining = count

    def end(self) -> int:
        return self.start + self.count * PAGE_SIZE

    def live_between(self, start: int, end: int) -> bool:
        first = max(0, (start - self.start) // PAGE_SIZE)
        last = min(self.count, (end - self.start + PAGE_SIZE - 1) // PAGE_SIZE)
        if first >= last:
            return False
        return self.live is None or self.live.find(1, first, last) >= 0


class PageRunSet(Generic[V]):
    """Pages of runs that are added but not yet given memory of their own:
    the uniform runs whose EPC residency the EVM and the driver defer.

    Each run keeps one value for all its pages (its SECINFO and fill, say)
    and which of its pages are still deferred; a run of any size costs a few
    objects until its pages are taken one by one (then one byte per page).
    Lookups are a bisection over the runs, so a million-page heap is as cheap
    to hold and query as a one-page one.
    """

    __slots__ = ("_live", "_runs", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: list[_Run[V]] = []
        self._live = 0

    def __len__(self) -> int:
        """The number of pages still deferred."""
        return self._live

    @property
    def run_count(self) -> int:
        """The number of runs held (each costs a few objects, whatever its size)."""
        return len(self._runs)

    def _run_at(self, page: int) -> _Run[V] | None:
        index = bisect.bisect_right(self._starts, page) - 1
        if index < 0:
            return None
        run = self._runs[index]
        return run if page < run.end() else None

    def _overlapping(self, start: int, end: int) -> list[_Run[V]]:
        index = max(0, bisect.bisect_right(self._starts, start) - 1)
        found = []
        while index < len(self._runs) and self._runs[index].start < end:
            run = self._runs[index]
            if run.end() > start:
                found.append(run)
            index += 1
        return found

    def overlaps(self, start: int, count: int) -> bool:
        """True when a page of [start, start + count pages) is still deferred."""
        end = start + count * PAGE_SIZE
        return any(run.live_between(start, end) for run in self._overlapping(start, end))

    def add(self, start: int, count: int, value: V) -> None:
        if start % PAGE_SIZE or count <= 0:
            raise ValueError("a deferred run must be page aligned and non-empty")
        if self.overlaps(start, count):
            raise ValueError(f"pages at {start:#x} are already deferred")
        index = bisect.bisect_right(self._starts, start)
        self._starts.insert(index, start)
        self._runs.insert(index, _Run(start, count, value))
        self._live += count

    def get(self, page: int) -> V | None:
        """The value of a deferred page, or None."""
        run = self._run_at(page)
        if run is None:
            return None
        if run.live is not None and not run.live[(page - run.start) // PAGE_SIZE]:
            return None
        return run.value

    def take(self, page: int) -> V | None:
        """Stop deferring ``page``: its value, or None if it was not deferred."""
        run = self._run_at(page)
        if run is None:
            return None
        index = (page - run.start) // PAGE_SIZE
        if run.live is None:
            run.live = bytearray(b"\x01") * run.count
        elif not run.live[index]:
            return None
        run.live[index] = 0
        run.remaining -= 1
        self._live -= 1
        if run.remaining == 0:
            position = self._runs.index(run)
            del self._runs[position]
            del self._starts[position]
        return run.value

    def values_in(self, start: int, count: int) -> list[V]:
        """The values of the runs with deferred pages in the range."""
        end = start + count * PAGE_SIZE
        return [run.value for run in self._overlapping(start, end)
                if run.live_between(start, end)]

    def pages_in(self, start: int, count: int) -> Iterator[int]:
        """The deferred pages of the range, in address order."""
        end = start + count * PAGE_SIZE
        for run in self._overlapping(start, end):
            first = max(0, (start - run.start) // PAGE_SIZE)
            last = min(run.count, (end - run.start + PAGE_SIZE - 1) // PAGE_SIZE)
            live = run.live
            for index in range(first, last):
                if live is None or live[index]:
                    yield run.start + index * PAGE_SIZE

    def clear(self) -> None:
        self._starts.clear()
        self._runs.clear()
        self._live = 0
