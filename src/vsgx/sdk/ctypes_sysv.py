"""C types of EDL interfaces with their x86-64 System V (LP64) sizes and
alignments, and the layout of edger8r's marshalling structs.

edger8r (sdk/edger8r/linux CodeGen.ml, gen_marshal_struct) emits
``ms_<function>_t`` as an ordinary C struct: ``ms_retval`` first (unless the
function returns void), ``int ocall_errno`` for ``propagate_errno`` OCALLs,
then one member per parameter (pointers and arrays as pointers), and for
ECALLs a ``size_t ms_<name>_len`` right after an ``[in]`` string. A
foreign array (``[isary] array_t a``) is passed as ``array_t *``, a foreign
pointer (``[isptr] buffer_t b``) as itself: both take 8 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vsgx.sdk.edl import Composite, CType, EdlError, Function, Param
from vsgx.sdk.sdk_types import SDK_TYPES

# name: (size, alignment, struct format for scalars or "" for blobs)
_BASE: dict[str, tuple[int, int, str]] = {
    "char": (1, 1, "b"), "signed char": (1, 1, "b"), "unsigned char": (1, 1, "B"),
    "short": (2, 2, "h"), "short int": (2, 2, "h"), "signed short": (2, 2, "h"),
    "unsigned short": (2, 2, "H"), "unsigned short int": (2, 2, "H"),
    "int": (4, 4, "i"), "signed": (4, 4, "i"), "signed int": (4, 4, "i"),
    "unsigned": (4, 4, "I"), "unsigned int": (4, 4, "I"),
    "long": (8, 8, "q"), "long int": (8, 8, "q"), "signed long": (8, 8, "q"),
    "unsigned long": (8, 8, "Q"), "unsigned long int": (8, 8, "Q"),
    "long long": (8, 8, "q"), "long long int": (8, 8, "q"), "signed long long": (8, 8, "q"),
    "unsigned long long": (8, 8, "Q"), "unsigned long long int": (8, 8, "Q"),
    "float": (4, 4, "f"), "double": (8, 8, "d"), "long double": (16, 16, ""),
    "int8_t": (1, 1, "b"), "uint8_t": (1, 1, "B"), "int16_t": (2, 2, "h"),
    "uint16_t": (2, 2, "H"), "int32_t": (4, 4, "i"), "uint32_t": (4, 4, "I"),
    "int64_t": (8, 8, "q"), "uint64_t": (8, 8, "Q"),
    "size_t": (8, 8, "Q"), "wchar_t": (4, 4, "i"),
    # POSIX and C library typedefs an EDL's included headers commonly use.
    "ssize_t": (8, 8, "q"), "intptr_t": (8, 8, "q"), "uintptr_t": (8, 8, "Q"),
    "ptrdiff_t": (8, 8, "q"), "off_t": (8, 8, "q"), "off64_t": (8, 8, "q"),
    "time_t": (8, 8, "q"), "clock_t": (8, 8, "q"), "suseconds_t": (8, 8, "q"),
    "mode_t": (4, 4, "I"), "pid_t": (4, 4, "i"), "uid_t": (4, 4, "I"), "gid_t": (4, 4, "I"),
    "socklen_t": (4, 4, "I"), "wint_t": (4, 4, "I"), "errno_t": (4, 4, "i"),
    "bool": (1, 1, "?"), "_Bool": (1, 1, "?"),
}

POINTER = (8, 8)


class UnknownTypeError(EdlError):
    """A type whose size vsgx does not know (a typedef the EDL only
    includes): the caller must give it."""

    def __init__(self, name: str, hint: str = "", needed_by: str = ""):
        self.type_name = name
        self.hint = hint
        self.needed_by = needed_by
        what = f"{needed_by} needs the size of type {name!r}, which vsgx does not know" \
            if needed_by else f"the size of type {name!r} is unknown"
        super().__init__(f"{what}: give it as types={{{name!r}: SIZE}} (vsgx ecall: --type "
                         f"{name}=SIZE){hint}")


@dataclass(frozen=True)
class Field:
    """One member of a marshalling struct."""

    name: str  # the parameter's name ("retval", "errno", "x", "x_len")
    offset: int
    size: int
    fmt: str  # struct format of the value ("Q" for pointers), "" for blobs
    param: Param | None = None


@dataclass(frozen=True)
class MsLayout:
    fields: tuple[Field, ...]
    size: int  # sizeof(ms_<function>_t); 0 when edger8r passes NULL

    def field(self, name: str) -> Field:
        for item in self.fields:
            if item.name == name:
                return item
        raise KeyError(name)


class TypeSystem:
    """Sizes of the types an interface uses: built-in, SGX foreign types,
    structs/unions/enums declared in the EDL, and the caller's own
    (``types={"my_t": 24}`` or ``{"my_t": (24, 8)}``)."""

    def __init__(self, composites: dict[str, Composite] | None = None,
                 enum_types: set[str] | None = None,
                 extra: dict[str, int | tuple[int, int]] | None = None):
        self.composites = composites or {}
        self.enum_types = enum_types or set()
        self.extra = {name: _user_size(name, value) for name, value in (extra or {}).items()}
        self._cache: dict[str, tuple[int, int]] = {}

    def scalar_format(self, ctype: CType) -> str:
        """The struct format of a value of this type ("" for a blob)."""
        if ctype.pointers:
            return "Q"
        base = _strip(ctype.base)
        if base in self.extra:
            size = self.extra[base][0]
            return {1: "B", 2: "H", 4: "I", 8: "Q"}.get(size, "")
        if base in _BASE:
            return _BASE[base][2]
        if base in SDK_TYPES:
            return SDK_TYPES[base][2]
        if base in self.enum_types or ctype.base.startswith("enum "):
            return "i"
        return ""

    def size_align(self, ctype: CType) -> tuple[int, int]:
        if ctype.pointers:
            size, align = POINTER
        else:
            size, align = self._base(ctype.base)
        for dim in ctype.dims:
            size *= dim
        return size, align

    def sizeof(self, ctype: CType) -> int:
        return self.size_align(ctype)[0]

    def pointee_size(self, name: str) -> int:
        """sizeof(*p) for a foreign pointer type ([isptr] without size=):
        the caller gives it as ``types={"*name": SIZE}``."""
        key = "*" + name
        if key in self.extra:
            return self.extra[key][0]
        raise UnknownTypeError(key, f" (the size of what {name} points to, or give the EDL "
                               "parameter a size=)")

    def _base(self, name: str) -> tuple[int, int]:
        if name in self._cache:
            return self._cache[name]
        base = _strip(name)
        if base in self.extra:
            result = self.extra[base]
        elif base in _BASE:
            result = _BASE[base][:2]
        elif base in SDK_TYPES:
            result = SDK_TYPES[base][:2]
        elif base in self.enum_types or name.startswith("enum "):
            result = (4, 4)
        elif base in self.composites:
            result = self._composite(self.composites[base])
        elif base == "void":
            raise EdlError("void has no size (a void pointer with a direction needs size=)")
        else:
            raise UnknownTypeError(base, " (8 if it is a pointer)")
        self._cache[name] = result
        return result

    def members(self, name: str) -> list[tuple[str, CType, int, int]]:
        """(name, type, offset, size) of an EDL struct's or union's members."""
        composite = self.composites.get(_strip(name))
        if composite is None:
            raise EdlError(f"{name!r} is not a struct or union of the EDL")
        out = []
        offset = 0
        for member in composite.members:
            size, align = self.size_align(member.type)
            if composite.kind == "struct":
                offset = _round(offset, align)
            out.append((member.name, member.type, offset if composite.kind == "struct" else 0,
                        size))
            if composite.kind == "struct":
                offset += size
        return out

    def pack_composite(self, ctype: CType, values: dict[str, object]) -> bytes:
        """An EDL struct from a dict of its members (numbers, lists of
        numbers for arrays, bytes, nested dicts); the rest stays zero."""
        name = ctype.base
        buffer = bytearray(self._base(name)[0])
        members = {m[0]: m for m in self.members(name)}
        for key, value in values.items():
            if key not in members:
                raise EdlError(f"{name} has no member {key!r}")
            _, mtype, offset, size = members[key]
            element = CType(mtype.base, mtype.pointers, mtype.const)
            if isinstance(value, dict):
                data = self.pack_composite(element, value)
            elif isinstance(value, bytes | bytearray | memoryview):
                data = bytes(value)
            elif isinstance(value, list | tuple):
                data = b"".join(pack_value(self.scalar_format(element), self.sizeof(element), v,
                                           f"{name}.{key}") for v in value)
            else:
                data = pack_value(self.scalar_format(element), self.sizeof(element), value,
                                  f"{name}.{key}")
            if len(data) > size:
                raise EdlError(f"{name}.{key}: {len(data)} bytes do not fit in {size}")
            buffer[offset:offset + len(data)] = data
        return bytes(buffer)

    def unpack_composite(self, name: str, data: bytes) -> dict[str, object]:
        """The members of an EDL struct (arrays as lists, blobs as bytes)."""
        out: dict[str, object] = {}
        for key, mtype, offset, size in self.members(name):
            element = CType(mtype.base, mtype.pointers, mtype.const)
            fmt = self.scalar_format(element)
            chunk = data[offset:offset + size]
            if _strip(element.base) in self.composites and not element.pointers:
                out[key] = self.unpack_composite(element.base, chunk)
            elif fmt and mtype.dims:
                out[key] = list(struct.unpack(f"<{size // struct.calcsize(fmt)}{fmt}", chunk))
            elif fmt:
                out[key] = struct.unpack("<" + fmt, chunk)[0]
            else:
                out[key] = chunk
        return out

    def _composite(self, composite: Composite) -> tuple[int, int]:
        offset = 0
        largest = 0
        align = 1
        for member in composite.members:
            size, member_align = self.size_align(member.type)
            align = max(align, member_align)
            if composite.kind == "union":
                largest = max(largest, size)
            else:
                offset = _round(offset, member_align) + size
        size = largest if composite.kind == "union" else offset
        return _round(size, align), align


def _user_size(name: str, value: object) -> tuple[int, int]:
    """A caller's ``types`` entry: SIZE (alignment: the size if 1/2/4/8,
    else 8 when a multiple of 8, else 1) or (SIZE, ALIGN)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size, align = value, (value if value in (1, 2, 4, 8) else 8 if value % 8 == 0 else 1)
    elif isinstance(value, tuple | list) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        size, align = value
    else:
        raise EdlError(f"types[{name!r}]: expected SIZE or (SIZE, ALIGN), got {value!r}")
    if not 0 < size <= 1 << 28 or align not in (1, 2, 4, 8, 16, 32, 64) or size % align:
        raise EdlError(f"types[{name!r}]: size {size} / alignment {align} are not valid")
    return size, align


def _strip(name: str) -> str:
    for prefix in ("struct ", "union ", "enum "):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _round(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def ms_layout(function: Function, types: TypeSystem) -> MsLayout:
    """The layout of ``ms_<function>_t`` (gen_marshal_struct)."""
    members: list[tuple[str, int, int, str, Param | None]] = []
    if function.returns.base != "void" or function.returns.pointers:
        size, align = types.size_align(function.returns)
        members.append(("retval", size, align, types.scalar_format(function.returns), None))
    if function.propagate_errno:
        members.append(("errno", 4, 4, "i", None))
    for param in function.params:
        if param.pointer_like:  # isptr: the typedef is a pointer; isary: passed as T*
            members.append((param.name, 8, 8, "Q", param))
        else:
            size, align = types.size_align(param.type)
            members.append((param.name, size, align, types.scalar_format(param.type), param))
        if function.trusted and (param.string or param.wstring) and param.direction_in:
            members.append((f"{param.name}_len", 8, 8, "Q", None))
    if not members:
        return MsLayout((), 0)
    fields = []
    offset = 0
    struct_align = 1
    for name, size, align, fmt, member in members:
        offset = _round(offset, align)
        fields.append(Field(name, offset, size, fmt, member))
        offset += size
        struct_align = max(struct_align, align)
    return MsLayout(tuple(fields), _round(offset, struct_align))


def pack_value(fmt: str, size: int, value: object, what: str) -> bytes:
    """A parameter's bytes in the ms struct."""
    if fmt:
        try:
            return struct.pack("<" + fmt, value)
        except (struct.error, TypeError):
            raise EdlError(f"{what}: {value!r} does not fit a {struct.calcsize(fmt)}-byte "
                           "value") from None
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == size:
        return bytes(value)
    raise EdlError(f"{what}: expected {size} bytes")
