"""The application's memory: a sparse address space of 4 KiB pages.

Untrusted buffers, stacks and the ENCLU site live here; the enclave reads
and writes them through the page server (``fetch`` / ``write_back``), which
is what the EVM calls — in-process directly, or over the channel.
"""

from __future__ import annotations

import struct
import threading

from vsgx.arch.constants import ENCLU_OPCODE, PAGE_SIZE, page_align_up
from vsgx.errors import VsgxError

# Untrusted allocations grow up from here; enclaves are placed above
# ENCLAVE_REGION (naturally aligned to their size), so the two never meet.
UNTRUSTED_START = 0x10000000
ENCLAVE_REGION = 0x400000000000
ADDRESS_LIMIT = 0x7FFFFFFFF000


class UnmappedMemory(VsgxError):
    """An access to unmapped application memory."""


class AddressSpace:
    def __init__(self) -> None:
        self._pages: dict[int, bytearray] = {}
        self._writable: dict[int, bool] = {}
        self._lock = threading.Lock()
        self._next = UNTRUSTED_START
        self.fetches = 0
        self.write_backs = 0
        # Bumped whenever a page goes away or changes rights: executors that
        # map pages of this address space directly drop their mappings.
        self.generation = 0
        # The ENCLU site: EENTER returns to (and AEX lands at) the address
        # after it, as with the kernel's vDSO.
        self._next_enclave = ENCLAVE_REGION
        self.enclu_site = self.alloc(PAGE_SIZE, writable=False, init=ENCLU_OPCODE)
        self.return_rip = self.enclu_site + len(ENCLU_OPCODE)

    # -- mapping ------------------------------------------------------------
    def map(self, address: int, size: int, writable: bool = True) -> None:
        if address % PAGE_SIZE or size <= 0:
            raise UnmappedMemory("map: address and size must be page aligned")
        with self._lock:
            for page in range(address, address + page_align_up(size), PAGE_SIZE):
                self._pages.setdefault(page, bytearray(PAGE_SIZE))
                if self._writable.get(page, writable) != writable:
                    self.generation += 1
                self._writable[page] = writable

    def unmap(self, address: int, size: int) -> None:
        with self._lock:
            for page in range(address, address + page_align_up(size), PAGE_SIZE):
                self._pages.pop(page, None)
                self._writable.pop(page, None)
            self.generation += 1

    def alloc(self, size: int, writable: bool = True, init: bytes = b"",
              guard: bool = True) -> int:
        """Map fresh zeroed pages (with an unmapped guard page after them)."""
        size = page_align_up(max(size, len(init), 1))
        with self._lock:
            address = self._next
            self._next += size + (PAGE_SIZE if guard else 0)
            if self._next >= ENCLAVE_REGION:
                raise UnmappedMemory("the untrusted address space is exhausted")
        self.map(address, size, writable=True)
        if init:
            self.write(address, init)
        if not writable:
            self.map(address, size, writable=False)
        return address

    def free(self, address: int, size: int) -> None:
        self.unmap(address, size)

    def _enclave_base(self, size: int) -> int:
        base = (self._next_enclave + size - 1) & ~(size - 1)
        if base + size > ADDRESS_LIMIT:
            room = max(0, ADDRESS_LIMIT - ((self._next_enclave + PAGE_SIZE - 1)
                                           & ~(PAGE_SIZE - 1)))
            raise UnmappedMemory(f"no room in the application's address space for an "
                                 f"ELRANGE of {size >> 20:,} MiB aligned to its size "
                                 f"({room >> 20:,} MiB are left above {ENCLAVE_REGION:#x})")
        return base

    def check_enclave_range(self, size: int) -> None:
        """Raise UnmappedMemory now if reserve_enclave_range(size) would."""
        with self._lock:
            self._enclave_base(size)

    def reserve_enclave_range(self, size: int) -> int:
        """A naturally aligned ELRANGE for an enclave of ``size`` bytes."""
        with self._lock:
            base = self._enclave_base(size)
            self._next_enclave = base + size
            return base

    # -- access from the application -----------------------------------------
    def _page(self, page: int) -> bytearray:
        try:
            return self._pages[page]
        except KeyError:
            raise UnmappedMemory(f"address {page:#x} is not mapped") from None

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            page = address & ~(PAGE_SIZE - 1)
            offset = address - page
            chunk = min(size, PAGE_SIZE - offset)
            out += self._page(page)[offset:offset + chunk]
            address += chunk
            size -= chunk
        return bytes(out)

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        position = 0
        while position < len(data):
            page = address & ~(PAGE_SIZE - 1)
            offset = address - page
            chunk = min(len(data) - position, PAGE_SIZE - offset)
            self._page(page)[offset:offset + chunk] = data[position:position + chunk]
            address += chunk
            position += chunk

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<Q", value & ((1 << 64) - 1)))

    def read_cstring(self, address: int, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while len(out) < limit:
            page = address & ~(PAGE_SIZE - 1)
            data = self._page(page)[address - page:]
            end = data.find(b"\0")
            if end >= 0:
                return bytes(out + data[:end])
            out += data
            address = page + PAGE_SIZE
        raise UnmappedMemory("unterminated string")

    def mapped_pages(self) -> list[int]:
        """The addresses of the mapped pages, in order."""
        return sorted(self._pages)

    def is_mapped(self, address: int) -> bool:
        return (address & ~(PAGE_SIZE - 1)) in self._pages

    # -- the page server the EVM uses ---------------------------------------
    # An EVM in this process may map the pages themselves (``share``).
    shares_pages = True

    def share(self, page: int) -> tuple[bytearray, bool] | None:
        """The page itself, for an EVM in this process: it may map it and
        read and write it in place (as enclave code touches untrusted memory
        on hardware) until ``generation`` changes."""
        data = self._pages.get(page)
        if data is None:
            return None
        return data, self._writable.get(page, True)

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        data = self._pages.get(page)
        if data is None:
            return None
        self.fetches += 1
        return bytes(data), self._writable.get(page, True)

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        data = self._pages.get(page)
        if data is None or not self._writable.get(page, True):
            return  # the page went away or is read-only: the EVM had no right to it
        self.write_backs += 1
        for offset, chunk in changes:
            if offset >= 0 and offset + len(chunk) <= PAGE_SIZE:
                data[offset:offset + len(chunk)] = chunk
