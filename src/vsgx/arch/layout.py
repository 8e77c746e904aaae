"""Declarative field tables for the SDM's architectural structures.

A structure is a dataclass whose fields carry their SDM offset and size:

    @structure(size=64)
    class Secinfo:
        flags: int = u64(0, reserved_bits=...)

``structure`` checks the table (sorted, no overlap, inside SIZE), compiles a
``struct.Struct`` for it, and adds ``pack``/``unpack``. Bytes the table does
not name are reserved: ``unpack`` refuses them non-zero unless told not to, and
``reserved_bits`` names bits of a field that must be zero.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform

from vsgx.errors import StructureError

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    offset: int
    size: int
    is_int: bool  # an unsigned little-endian integer of 1/2/4/8/16 bytes
    reserved_bits: int = 0


def _spec(offset: int, size: int, is_int: bool, reserved_bits: int, default: Any) -> Any:
    meta = {"vsgx": (offset, size, is_int, reserved_bits)}
    return dataclasses.field(default=default, metadata=meta)


def u8(offset: int, *, reserved_bits: int = 0, default: int = 0) -> Any:
    return _spec(offset, 1, True, reserved_bits, default)


def u16(offset: int, *, reserved_bits: int = 0, default: int = 0) -> Any:
    return _spec(offset, 2, True, reserved_bits, default)


def u32(offset: int, *, reserved_bits: int = 0, default: int = 0) -> Any:
    return _spec(offset, 4, True, reserved_bits, default)


def u64(offset: int, *, reserved_bits: int = 0, default: int = 0) -> Any:
    return _spec(offset, 8, True, reserved_bits, default)


def u128(offset: int, *, default: int = 0) -> Any:
    return _spec(offset, 16, True, 0, default)


def raw(offset: int, size: int, default: bytes | None = None) -> Any:
    return _spec(offset, size, False, 0, bytes(size) if default is None else default)


class Structure:
    """Base of every SDM structure; ``structure`` fills these in."""

    __slots__ = ()
    SIZE: ClassVar[int]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]
    RESERVED: ClassVar[tuple[tuple[int, int], ...]]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, *, strict: bool = True) -> Self:
        raise NotImplementedError

    def check_reserved_bits(self) -> None:
        raise NotImplementedError


T = TypeVar("T", bound=Structure)


@dataclass_transform(field_specifiers=(u8, u16, u32, u64, u128, raw))
def structure(size: int) -> Callable[[type[T]], type[T]]:
    """Turn a class with offset-annotated fields into an SDM structure."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(slots=True)(cls)
        specs = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            offset, fsize, is_int, reserved_bits = f.metadata["vsgx"]
            specs.append(FieldSpec(f.name, offset, fsize, is_int, reserved_bits))
        specs.sort(key=lambda s: s.offset)
        fmt = ["<"]
        reserved: list[tuple[int, int]] = []
        position = 0
        for s in specs:
            if s.offset < position:
                raise AssertionError(f"{cls.__name__}.{s.name} overlaps the field before it")
            if s.offset > position:
                fmt.append(f"{s.offset - position}x")
                reserved.append((position, s.offset - position))
            if s.is_int and s.size == 16:
                fmt.append("16s")
            elif s.is_int:
                fmt.append(_INT_CODES[s.size])
            else:
                fmt.append(f"{s.size}s")
            position = s.offset + s.size
        if position > size:
            raise AssertionError(f"{cls.__name__} fields run past its size {size}")
        if position < size:
            fmt.append(f"{size - position}x")
            reserved.append((position, size - position))
        codec = struct.Struct("".join(fmt))
        assert codec.size == size
        order = tuple(specs)
        wide = tuple(i for i, s in enumerate(order) if s.is_int and s.size == 16)
        names = tuple(s.name for s in order)
        checked_bits = tuple((s.name, s.reserved_bits) for s in order if s.reserved_bits)

        def pack(self: Any) -> bytes:
            values = [getattr(self, n) for n in names]
            for i in wide:
                values[i] = values[i].to_bytes(16, "little")
            try:
                return codec.pack(*values)
            except struct.error as exc:
                raise StructureError(f"{cls.__name__}: a field does not fit: {exc}") from None

        def unpack(klass: Any, data: bytes | bytearray | memoryview, *, strict: bool = True) -> Any:
            if len(data) < size:
                raise StructureError(f"{klass.__name__}: {len(data)} bytes, expected {size}")
            values = list(codec.unpack_from(data))
            for i in wide:
                values[i] = int.from_bytes(values[i], "little")
            obj = klass(**dict(zip(names, values, strict=True)))
            if strict:
                view = memoryview(data)
                for off, length in reserved:
                    if any(view[off : off + length]):
                        raise StructureError(
                            f"{klass.__name__}: reserved bytes {off}..{off + length - 1} "
                            "are not zero"
                        )
                obj.check_reserved_bits()
            return obj

        def check_reserved_bits(self: Any) -> None:
            for name, mask in checked_bits:
                if getattr(self, name) & mask:
                    raise StructureError(f"{cls.__name__}.{name}: reserved bits set")

        cls.SIZE = size  # type: ignore[attr-defined]
        cls.FIELDS = order  # type: ignore[attr-defined]
        cls.RESERVED = tuple(reserved)  # type: ignore[attr-defined]
        cls.pack = pack  # type: ignore[attr-defined]
        cls.unpack = classmethod(unpack)  # type: ignore[attr-defined]
        cls.check_reserved_bits = check_reserved_bits  # type: ignore[attr-defined]
        return cls

    return wrap


def field_offset(cls: type, name: str) -> int:
    """The SDM offset of a named field (for code that patches raw pages)."""
    for spec in cls.FIELDS:  # type: ignore[attr-defined]
        if spec.name == name:
            return spec.offset
    raise KeyError(name)
