"""Declarative field tables for the SDM's architectural structures.

A structure is a dataclass whose fields carry their SDM offset and size:

    @structure(size=64)
    class Secinfo:
        flags: int = u64(0, reserved_bits=...)

``structure`` checks the table (sorted, no overlap, inside SIZE), compiles a
``struct.Struct`` for it, and adds ``pack``/``unpack``. Bytes the table does
not name are reserved: ``unpack`` refuses them non-zero unless told not to, and
``reserved_bits`` names bits of a field that must be zero.

Hot paths read and write a few fields in place with ``fields_of(Tcs, "ossa",
"cssa")``: a ``struct.Struct`` compiled from the same table, so that no
offset or format is written twice. A raw field declared ``of=Secinfo`` holds
that structure, and its fields are named with a dot (``"secinfo.flags"``).
"""

from __future__ import annotations

import dataclasses
import functools
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
    of: type[Structure] | None = None  # the structure a raw field holds


def _spec(offset: int, size: int, is_int: bool, reserved_bits: int, default: Any,
          of: type[Structure] | None = None) -> Any:
    meta = {"vsgx": (offset, size, is_int, reserved_bits, of)}
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


def raw(offset: int, size: int, default: bytes | None = None, *, of: type[Structure] | None = None
        ) -> Any:
    held = getattr(of, "SIZE", size)
    if held != size:
        raise AssertionError(f"a {getattr(of, '__name__', of)} is {held} bytes, not {size}")
    return _spec(offset, size, False, 0, bytes(size) if default is None else default, of)


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


# The field helpers return their default for type checkers (they are not
# declared as field specifiers, whose defaults must be spelled ``default=``).
@dataclass_transform()
def structure(size: int) -> Callable[[type[T]], type[T]]:
    """Turn a class with offset-annotated fields into an SDM structure."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(slots=True)(cls)
        specs = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            offset, fsize, is_int, reserved_bits, of = f.metadata["vsgx"]
            specs.append(FieldSpec(f.name, offset, fsize, is_int, reserved_bits, of))
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
        # the constructor's positional order (the class's) as indexes into
        # the codec's (by offset): unpack passes values without keywords
        fields_in_init = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if not all(f.init for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
            raise AssertionError(f"{cls.__name__}: every field is a constructor argument")
        positions = tuple(names.index(name) for name in fields_in_init)
        in_offset_order = positions == tuple(range(len(positions)))
        checked_bits = tuple((s.name, s.reserved_bits) for s in order if s.reserved_bits)
        # compared against zero constants in C (any() over a 4 KiB span of a
        # TCS or SECS cost 40-75 us a structure)
        zero_spans = tuple((off, length, bytes(length)) for off, length in reserved)

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
            values: Any = codec.unpack_from(data)
            if wide:
                values = list(values)
                for i in wide:
                    values[i] = int.from_bytes(values[i], "little")
            obj = klass(*values) if in_offset_order else klass(*[values[i] for i in positions])
            if strict:
                view = memoryview(data)
                for off, length, zeros in zero_spans:
                    if view[off : off + length].tobytes() != zeros:
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

        cls.SIZE = size
        cls.FIELDS = order
        cls.RESERVED = tuple(reserved)
        setattr(cls, "pack", pack)  # noqa: B010 - generated methods replace the stubs
        setattr(cls, "unpack", classmethod(unpack))  # noqa: B010
        setattr(cls, "check_reserved_bits", check_reserved_bits)  # noqa: B010
        return cls

    return wrap


def _resolve(cls: type[Structure], name: str) -> tuple[int, FieldSpec]:
    """(offset in ``cls``, spec) of a field, dotted through ``of`` fields."""
    base = 0
    head, _, rest = name.partition(".")
    for spec in cls.FIELDS:
        if spec.name == head:
            if not rest:
                return base + spec.offset, spec
            if spec.of is None:
                break
            inner, found = _resolve(spec.of, rest)
            return base + spec.offset + inner, found
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _named_spans(cls: type[Structure], base: int = 0) -> list[tuple[int, int]]:
    """(start, end) of every innermost named field: the bytes that are not
    reserved."""
    spans = []
    for spec in cls.FIELDS:
        if spec.of is not None:
            spans += _named_spans(spec.of, base + spec.offset)
        else:
            spans.append((base + spec.offset, base + spec.offset + spec.size))
    return spans


def field_offset(cls: type[Structure], name: str) -> int:
    """The SDM offset of a field (dotted through nested structures), for
    code that patches raw pages."""
    return _resolve(cls, name)[0]


class Fields(struct.Struct):
    """Some fields of one structure, compiled from its table: a
    ``struct.Struct`` over the bytes from the first named field to the end
    of the last, so ``unpack_from(buffer, start + f.offset)`` gives their
    values (in the order named) and ``pack_into`` writes them in place.
    Bytes between named fields are reserved ones and are written as zero.
    16-byte integers are ``bytes`` here (no conversion on the hot path)."""

    offset: int  # of the first named field, from the start of the structure
    names: tuple[str, ...]

    def read(self, buffer: bytes | bytearray | memoryview, start: int = 0) -> tuple[Any, ...]:
        """The named fields of the structure at ``start`` of ``buffer``."""
        return self.unpack_from(buffer, start + self.offset)

    def write(self, buffer: bytearray | memoryview, start: int, *values: Any) -> None:
        self.pack_into(buffer, start + self.offset, *values)


@functools.cache
def fields_of(cls: type[Structure], *names: str, whole: bool = False) -> Fields:
    """A precompiled codec for ``names`` of ``cls``, given in offset order.
    ``whole``: the codec spans the whole structure (offset 0 to SIZE), so
    that writing it zeroes every reserved byte too."""
    if not names:
        raise ValueError("name at least one field")
    resolved = [_resolve(cls, name) for name in names]
    named = _named_spans(cls)

    def gap(start: int, end: int, before: str) -> str:
        if any(lo < end and hi > start for lo, hi in named):
            raise ValueError(f"{cls.__name__}: the bytes {start}..{end - 1} {before} hold a "
                             "field; name it too")
        return f"{end - start}x"

    first = 0 if whole else resolved[0][0]
    fmt = ["<"]
    position = first
    for name, (offset, spec) in zip(names, resolved, strict=True):
        if offset < position:
            raise ValueError(f"{cls.__name__}.{name} is out of offset order or overlaps")
        if offset > position:
            fmt.append(gap(position, offset, f"before {name}"))
        if spec.is_int and spec.size != 16:
            fmt.append(_INT_CODES[spec.size])
        else:
            fmt.append(f"{spec.size}s")
        position = offset + spec.size
    if whole and position < cls.SIZE:
        fmt.append(gap(position, cls.SIZE, "at the end"))
    codec = Fields("".join(fmt))
    codec.offset = first
    codec.names = names
    return codec
