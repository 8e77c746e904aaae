"""Version Array pages, SDM "Version Array (VA)": 512 slots of 8 bytes, each holding the
version of one evicted page (zero = free)."""

from __future__ import annotations

from vsgx.arch.constants import PAGE_SIZE, VA_SLOT_COUNT, VA_SLOT_SIZE


def va_slot(address: int) -> tuple[int, int]:
    """(VA page address, slot index) of a slot address; slots are 8-byte aligned."""
    page = address & ~(PAGE_SIZE - 1)
    offset = address - page
    return page, offset // VA_SLOT_SIZE


def va_slot_is_aligned(address: int) -> bool:
    return address % VA_SLOT_SIZE == 0


__all__ = ["VA_SLOT_COUNT", "VA_SLOT_SIZE", "va_slot", "va_slot_is_aligned"]
