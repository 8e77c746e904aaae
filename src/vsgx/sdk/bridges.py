"""ECALL proxies and OCALL bridges: what edger8r generates into
Enclave_u.c, driven by the parsed EDL instead of generated C.

An ECALL proxy builds ``ms_<f>_t`` and the caller's buffers in untrusted
memory (on this thread's untrusted stack, as Intel's proxy builds ms on
the caller's stack), enters, and reads back the return value and the
``[out]`` buffers. An OCALL bridge reads the ms struct the enclave's proxy
left below the untrusted RSP, calls the Python handler, and writes
``ms_retval`` and the ``[out]`` buffers back (sdk/edger8r CodeGen.ml,
gen_func_uproxy / gen_func_ubridge).
"""

from __future__ import annotations

import errno as errno_module
import struct
from collections.abc import Callable
from typing import Any

from vsgx.sdk import status as st
from vsgx.sdk.ctypes_sysv import Field, MsLayout, TypeSystem, ms_layout, pack_value
from vsgx.sdk.edl import CType, EdlError, Function, Param
from vsgx.sdk.urts import Urts


class ArgumentError(EdlError, TypeError):
    """Python arguments that do not match the ECALL's C parameters."""


HEAP_THRESHOLD = 64 * 1024  # bigger ECALL buffers go to a heap block, not the stack
MAX_OCALL_BUFFER = 1 << 28


def _is_buffer(param: Param) -> bool:
    return param.type.is_pointer or bool(param.type.dims)


def _struct_format(layout: MsLayout, fields: list[Field] | None = None) -> str:
    """One struct format for the whole ms struct, with padding."""
    parts = ["<"]
    position = 0
    for item in fields if fields is not None else layout.fields:
        if item.offset > position:
            parts.append(f"{item.offset - position}x")
        parts.append(item.fmt or f"{item.size}s")
        position = item.offset + item.size
    if layout.size > position:
        parts.append(f"{layout.size - position}x")
    return "".join(parts)


class _BufferSpec:
    """How many bytes a checked pointer designates (edger8r gen_ptr_size)."""

    def __init__(self, function: Function, param: Param, types: TypeSystem):
        self.param = param
        self.where = f"{function.name}({param.name})"
        names = {p.name for p in function.params}
        for ref in (param.size, param.count):
            if ref is not None and not ref.isdigit() and not ref.lower().startswith("0x") \
                    and ref not in names:
                raise EdlError(f"{self.where}: size/count {ref!r} is neither a number nor a "
                               "parameter")
        ctype = param.type
        self.string = param.string or param.wstring
        self.char_size = 4 if param.wstring else 1
        if ctype.dims:
            element = CType(ctype.base, ctype.pointers, ctype.const)
            self.element_size = types.sizeof(element)
            self.element_fmt = types.scalar_format(element)
            self.fixed = self.element_size * _product(ctype.dims)
        else:
            pointee = ctype.pointee()
            if param.size is None and not self.string:
                if pointee.base == "void" and not pointee.pointers:
                    raise EdlError(f"{self.where}: a void pointer needs size=")
                self.element_size = types.sizeof(pointee)
            else:
                self.element_size = 1 if pointee.base == "void" and not pointee.pointers else (
                    types.sizeof(pointee) if not self.string else self.char_size)
            self.element_fmt = "" if pointee.base == "void" else types.scalar_format(pointee)
            self.fixed = None
        # a pointer to one scalar: ECALL results decode to a number
        self.single_scalar = (not ctype.dims and param.size is None and param.count is None
                              and not self.string and bool(self.element_fmt)
                              and not param.isary)

    def length(self, value_of: Callable[[str], int]) -> int:
        if self.fixed is not None:
            return self.fixed
        size = _ref(self.param.size, value_of) if self.param.size is not None \
            else self.element_size
        count = _ref(self.param.count, value_of) if self.param.count is not None else 1
        if size < 0 or count < 0:
            raise EdlError(f"{self.where}: negative size or count")
        total = size * count
        if total >= 1 << 63:
            raise EdlError(f"{self.where}: size × count overflows")
        return total


def _ref(reference: str, value_of: Callable[[str], int]) -> int:
    try:
        return int(reference, 0)
    except ValueError:
        return value_of(reference)


def _product(dims: tuple[int, ...]) -> int:
    result = 1
    for dim in dims:
        result *= dim
    return result


class EcallProxy:
    """``enclave.<ecall>(*args)``: the untrusted proxy of one ECALL.

    Arguments follow the C parameters. Checked pointers take bytes (or a
    list of numbers, or ``str`` for strings), None for NULL; ``[out]``
    buffers may be None to get a fresh buffer of the EDL's size, and a
    size/count parameter left as None is taken from its buffer's length.
    ``[user_check]`` pointers are untrusted addresses (ints).

    Returns the return value, then the ``[out]`` and ``[in, out]``
    buffers in parameter order (bytes; a number for a pointer to one
    scalar; ``str`` for strings): one value alone, several as a tuple, None
    if there is nothing. A status other than SGX_SUCCESS raises
    ``SgxStatusError``."""

    def __init__(self, urts: Urts, ordinal: int, function: Function, types: TypeSystem):
        self.urts = urts
        self.ordinal = ordinal
        self.function = function
        self.__name__ = function.name
        self.memory = urts.raw.avm.memory
        self.layout = ms_layout(function, types)
        self.types = types
        self.params = function.params
        self.index = {p.name: i for i, p in enumerate(self.params)}
        self.specs = {p.name: _BufferSpec(function, p, types) for p in self.params
                      if _is_buffer(p) and (p.direction_in or p.direction_out)}
        self.retval = self.layout.field("retval") if any(
            f.name == "retval" for f in self.layout.fields) else None
        self.outputs = [p.name for p in self.params if p.name in self.specs
                        and p.direction_out]
        self.scalar_only = not any(_is_buffer(p) for p in self.params)
        self.format = _struct_format(self.layout) if self.layout.size else ""
        self.value_fields = [f for f in self.layout.fields if f.param is not None]
        self.where = f"ECALL {function.name}"

    # -- binding the Python arguments to C parameters --------------------------
    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if len(args) > len(self.params):
            raise ArgumentError(f"{self.function.name}() takes {len(self.params)} arguments, "
                            f"{len(args)} given")
        values: list[Any] = list(args) + [None] * (len(self.params) - len(args))
        given = [True] * len(args) + [False] * (len(self.params) - len(args))
        for name, value in kwargs.items():
            if name not in self.index:
                raise ArgumentError(f"{self.function.name}() has no parameter {name!r}")
            if given[self.index[name]]:
                raise ArgumentError(f"{self.function.name}() got {name!r} twice")
            values[self.index[name]] = value
            given[self.index[name]] = True
        for i, param in enumerate(self.params):
            if not given[i] and not (param.name in self.specs or param.user_check) and \
                    not any(s.param.size == param.name or s.param.count == param.name
                            for s in self.specs.values()):
                raise ArgumentError(f"{self.function.name}() is missing {param.name!r}")
        return values

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.scalar_only and not kwargs and len(args) == len(self.params):
            return self._call_scalars(args)
        values = self._bind(args, kwargs)
        return self._call(values)

    def _call_scalars(self, args: tuple[Any, ...]) -> Any:
        layout = self.layout
        memory = self.memory
        if not layout.size:
            status = self.urts.call(self.ordinal, _no_ms)
            if status:
                raise st.SgxStatusError(status, self.where)
            return None
        try:
            if self.retval is not None:
                data = struct.pack(self.format, 0 if self.retval.fmt else bytes(self.retval.size),
                                   *args)
            else:
                data = struct.pack(self.format, *args)
        except struct.error as exc:
            raise EdlError(f"{self.where}: bad argument: {exc}") from None
        size = layout.size
        addresses: list[int] = []

        def marshal(sp: int) -> tuple[int, int]:
            ms = (sp - size) & ~15
            memory.write(ms, data)
            addresses.append(ms)
            return ms, ms - 64

        status = self.urts.call(self.ordinal, marshal)
        if status:
            raise st.SgxStatusError(status, self.where)
        if self.retval is None:
            return None
        return self._read_retval(addresses[0])

    def _read_retval(self, ms: int) -> Any:
        field = self.retval
        assert field is not None
        raw = self.memory.read(ms + field.offset, field.size)
        return struct.unpack("<" + field.fmt, raw)[0] if field.fmt else raw

    def _call(self, values: list[Any]) -> Any:
        function = self.function
        data_of: dict[str, bytes | None] = {}
        # input data, and size/count parameters left as None taken from it
        for name, spec in self.specs.items():
            value = values[self.index[name]]
            data = data_of[name] = self._input_bytes(spec, value)
            sized = data if data is not None else (
                value if isinstance(value, bytes | bytearray | memoryview) else None)
            if sized is not None and not spec.string:
                self._infer(spec, len(sized), values)
        for i, param in enumerate(self.params):
            if values[i] is None and not (param.name in self.specs or param.user_check):
                raise ArgumentError(f"{function.name}() is missing {param.name!r}")

        def value_of(name: str) -> int:
            value = values[self.index[name]]
            if not isinstance(value, int):
                raise EdlError(f"{self.where}: size/count parameter {name!r} must be an int")
            return value

        lengths: dict[str, int] = {}
        for name, spec in self.specs.items():
            data = data_of[name]
            value = values[self.index[name]]
            if spec.string:
                if data is not None:
                    lengths[name] = len(data)
                continue
            if data is None and value is None and not spec.param.direction_out:
                continue  # NULL
            if value is None and spec.param.direction_in:
                continue  # NULL [in, out]
            length = spec.length(value_of)
            if data is not None and len(data) != length:
                raise EdlError(f"{self.where}: {name} has {len(data)} bytes, the EDL makes it "
                               f"{length}")
            if data is None and isinstance(value, bytearray | memoryview) and \
                    len(value) != length:
                raise EdlError(f"{self.where}: {name} has {len(value)} bytes, the EDL makes "
                               f"it {length}")
            lengths[name] = length

        total = sum((n + 15) & ~15 for n in lengths.values()) + self.layout.size + 128
        heap = total > HEAP_THRESHOLD
        placed: dict[str, int] = {}
        ms_address: list[int] = []

        def marshal(sp: int) -> tuple[int, int]:
            top = sp
            if heap:
                block = self.memory.alloc(total)
                heap_block.append(block)
                top = block + total
            for name, length in lengths.items():
                top = (top - max(length, 1)) & ~15
                placed[name] = top
                data = data_of[name]
                if data is not None:
                    self.memory.write(top, data)
                elif length:
                    self.memory.write(top, bytes(length))
            ms = self._write_ms(top if not heap else sp, values, placed, lengths)
            ms_address.append(ms)
            return ms, ms - 64

        heap_block: list[int] = []
        try:
            status = self.urts.call(self.ordinal, marshal)
            if status:
                raise st.SgxStatusError(status, self.where)
            results: list[Any] = []
            if self.retval is not None:
                results.append(self._read_retval(ms_address[0]))
            for name in self.outputs:
                if name not in placed:
                    results.append(None)
                    continue
                results.append(self._decode_output(self.specs[name], placed[name],
                                                   lengths[name]))
        finally:
            for block in heap_block:
                self.memory.free(block, total)
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def _infer(self, spec: _BufferSpec, length: int, values: list[Any]) -> None:
        def known(reference: str | None, default: int) -> int | None:
            if reference is None:
                return default
            if reference in self.index:
                value = values[self.index[reference]]
                return value if isinstance(value, int) else None
            return int(reference, 0)

        size_ref, count_ref = spec.param.size, spec.param.count
        if size_ref in self.index and values[self.index[size_ref]] is None:
            count = known(count_ref, 1)
            if count:
                values[self.index[size_ref]] = length // count
        elif count_ref in self.index and values[self.index[count_ref]] is None:
            size = known(size_ref, spec.element_size)
            if size:
                values[self.index[count_ref]] = length // size

    def _input_bytes(self, spec: _BufferSpec, value: Any) -> bytes | None:
        param = spec.param
        if value is None or not param.direction_in:
            return None
        if spec.string:
            if isinstance(value, str):
                text = value.encode("utf-32-le" if param.wstring else "utf-8", "surrogateescape")
            elif isinstance(value, bytes | bytearray | memoryview):
                text = bytes(value)
            else:
                raise EdlError(f"{self.where}: {param.name} must be a str or bytes")
            end = text.find(b"\0" * spec.char_size)
            while end >= 0 and end % spec.char_size:
                end = text.find(b"\0" * spec.char_size, end + 1)
            if end >= 0:
                text = text[:end]
            return text + b"\0" * spec.char_size
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, list | tuple):
            if not spec.element_fmt:
                raise EdlError(f"{self.where}: {param.name} takes bytes")
            try:
                return struct.pack(f"<{len(value)}{spec.element_fmt}", *value)
            except struct.error as exc:
                raise EdlError(f"{self.where}: {param.name}: {exc}") from None
        if isinstance(value, dict):
            return self.types.pack_composite(param.type.pointee(), value)
        if isinstance(value, int | float) and spec.single_scalar:
            return struct.pack("<" + spec.element_fmt, value)
        raise EdlError(f"{self.where}: {param.name} takes bytes, not {type(value).__name__}")

    def _write_ms(self, sp: int, values: list[Any], placed: dict[str, int],
                  lengths: dict[str, int]) -> int:
        layout = self.layout
        if not layout.size:
            return 0
        ms = (sp - layout.size) & ~15
        buffer = bytearray(layout.size)
        for item in layout.fields:
            if item.name == "retval" or item.name == "errno":
                continue
            if item.param is None:  # ms_<string>_len
                owner = item.name[:-4]
                struct.pack_into("<Q", buffer, item.offset, lengths.get(owner, 0))
                continue
            param = item.param
            if param.name in self.specs:
                value: Any = placed.get(param.name, 0)
            elif param.user_check and _is_buffer(param):
                value = values[self.index[param.name]] or 0
            else:
                value = values[self.index[param.name]]
                if isinstance(value, dict):
                    value = self.types.pack_composite(param.type, value)
            buffer[item.offset:item.offset + item.size] = pack_value(
                item.fmt, item.size, value, f"{self.where}: {param.name}")
        self.memory.write(ms, bytes(buffer))
        return ms

    def _decode_output(self, spec: _BufferSpec, address: int, length: int) -> Any:
        data = self.memory.read(address, length)
        if spec.string:
            end = data.find(b"\0" * spec.char_size)
            while end >= 0 and end % spec.char_size:
                end = data.find(b"\0" * spec.char_size, end + 1)
            text = data[:end] if end >= 0 else data
            return text.decode("utf-32-le" if spec.param.wstring else "utf-8", "surrogateescape")
        if spec.single_scalar and length == struct.calcsize("<" + spec.element_fmt):
            return struct.unpack("<" + spec.element_fmt, data)[0]
        return data


def _no_ms(sp: int) -> tuple[int, int]:
    return 0, sp


class OcallBridge:
    """The untrusted bridge of one OCALL around a Python handler.

    The handler gets the C parameters: numbers for values, ``str`` for
    ``[in, string]``, bytes for ``[in]`` buffers, a ``bytearray`` to fill
    for ``[out]`` and ``[in, out]`` buffers, None for NULL, an int address
    for ``[user_check]``. Its return value becomes ``ms_retval``. With
    ``propagate_errno``, an ``OSError`` becomes the enclave's errno and the
    return value -1."""

    def __init__(self, memory: Any, function: Function, types: TypeSystem,
                 handler: Callable[..., Any]):
        self.memory = memory
        self.function = function
        self.handler = handler
        self.layout = ms_layout(function, types)
        self.format = _struct_format(self.layout) if self.layout.size else ""
        self.names = [f.name for f in self.layout.fields]
        self.specs = {p.name: _BufferSpec(function, p, types) for p in function.params
                      if _is_buffer(p) and (p.direction_in or p.direction_out)}
        self.retval = self.layout.field("retval") if "retval" in self.names else None
        self.errno_field = self.layout.field("errno") if "errno" in self.names else None
        self.simple = not self.specs

    def __call__(self, ms: int) -> int:
        layout = self.layout
        if not layout.size:
            if ms:
                return st.SGX_ERROR_INVALID_PARAMETER
            self.handler()
            return st.SGX_SUCCESS
        if not ms:
            return st.SGX_ERROR_INVALID_PARAMETER
        memory = self.memory
        fields = dict(zip(self.names, struct.unpack(self.format, memory.read(ms, layout.size)),
                          strict=True))
        args: list[Any] = []
        outputs: list[tuple[int, bytearray, int]] = []
        for param in self.function.params:
            value = fields[param.name]
            spec = self.specs.get(param.name)
            if spec is None or value == 0:
                args.append(None if spec is not None else value)
                continue
            if spec.string:
                text = memory.read_cstring(value, MAX_OCALL_BUFFER) if spec.char_size == 1 \
                    else _read_wstring(memory, value)
                args.append(text.decode("utf-32-le" if param.wstring else "utf-8",
                                        "surrogateescape"))
                if param.direction_out:
                    outputs.append((value, bytearray(text + b"\0" * spec.char_size),
                                    len(text) + spec.char_size))
                continue
            length = spec.length(lambda name: fields[name])
            if length > MAX_OCALL_BUFFER:
                raise st.OcallError(f"OCALL {self.function.name}: {param.name} claims "
                                    f"{length} bytes")
            if param.direction_out:
                buffer = bytearray(memory.read(value, length)) if param.direction_in \
                    else bytearray(length)
                args.append(buffer)
                outputs.append((value, buffer, length))
            else:
                args.append(memory.read(value, length))
        error = 0
        try:
            result = self.handler(*args)
        except OSError as exc:
            if self.errno_field is None:
                raise
            error = exc.errno or errno_module.EIO
            result = -1
        if self.retval is not None:
            if result is None:
                result = 0
            memory.write(ms + self.retval.offset, pack_value(
                self.retval.fmt, self.retval.size, result,
                f"OCALL {self.function.name}: return value"))
        if self.errno_field is not None:
            memory.write(ms + self.errno_field.offset, struct.pack("<i", error))
        for address, buffer, length in outputs:
            memory.write(address, bytes(buffer[:length]).ljust(length, b"\0"))
        return st.SGX_SUCCESS


def _read_wstring(memory: Any, address: int) -> bytes:
    out = bytearray()
    while len(out) < MAX_OCALL_BUFFER:
        unit = memory.read(address + len(out), 4)
        if unit == b"\0\0\0\0":
            return bytes(out)
        out += unit
    raise st.OcallError("unterminated wide string")
