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
import threading
from collections.abc import Callable
from typing import Any

from vsgx.avm import AddressSpace
from vsgx.sdk import status as st
from vsgx.sdk.ctypes_sysv import (
    Field,
    MsLayout,
    TypeSystem,
    UnknownTypeError,
    ms_layout,
    pack_value,
)
from vsgx.sdk.edl import MAX_BUFFER, CType, EdlError, Function, Param
from vsgx.sdk.urts import Urts


class ArgumentError(EdlError, TypeError):
    """Python arguments that do not match the ECALL's C parameters."""


HEAP_THRESHOLD = 64 * 1024  # bigger ECALL buffers go to a heap block, not the stack
MAX_OCALL_BUFFER = MAX_BUFFER
SizeFunc = Callable[[Any], int]


class UntrustedView:
    """What an OCALL's sizefunc sees: the untrusted memory the pointer
    designates, read on demand (``view[0:4]``, ``view[8]``, ``view.read(o, n)``)."""

    def __init__(self, memory: AddressSpace, address: int):
        self.memory = memory
        self.address = address

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > MAX_BUFFER:
            raise st.OcallError(f"a sizefunc read {size} bytes at offset {offset}")
        return self.memory.read(self.address + offset, size)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, int):
            return self.read(key, 1)[0]
        if key.step not in (None, 1) or key.stop is None:
            raise st.OcallError("a sizefunc may read a slice [start:stop] of the buffer")
        start = key.start or 0
        return self.read(start, max(key.stop - start, 0))


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


class BufferSpec:
    """How many bytes a checked pointer designates (edger8r gen_ptr_size):
    a foreign array's sizeof; an array's dimensions; a string's length;
    otherwise size= (or, SDK 1.x, the sizefunc's result) or sizeof(*p),
    times count=."""

    def __init__(self, function: Function, param: Param, types: TypeSystem):
        self.param = param
        self.where = f"{function.name}({param.name})"
        ctype = param.type
        self.string = param.string or param.wstring
        self.char_size = 4 if param.wstring else 1
        self.fixed: int | None = None
        self.element_size = 1
        self.element_fmt = ""
        if param.isary:  # [isary] array_t: sizeof(array_t)
            try:
                self.fixed = types.sizeof(CType(ctype.base))
            except UnknownTypeError as exc:
                raise UnknownTypeError(exc.type_name, " (an [isary] type: the size of the "
                                       "whole array, e.g. 40 for int[10])") from None
        elif ctype.dims:
            element = CType(ctype.base, ctype.pointers, ctype.const)
            self.element_size = types.sizeof(element)
            self.element_fmt = types.scalar_format(element)
            self.fixed = self.element_size * _product(ctype.dims)
        elif param.isptr and not ctype.is_pointer:  # the typedef is the pointer
            if param.size is None and param.sizefunc is None:
                self.element_size = types.pointee_size(ctype.base)
        else:
            pointee = ctype.pointee()
            void = pointee.base == "void" and not pointee.pointers
            self.element_fmt = "" if void else types.scalar_format(pointee)
            if self.string:
                self.element_size = self.char_size
            elif param.size is None and param.sizefunc is None:
                if void:
                    raise EdlError(f"{self.where}: a void pointer needs size=")
                self.element_size = types.sizeof(pointee)
        if self.fixed is not None and self.fixed > MAX_BUFFER:
            raise EdlError(f"{self.where}: {self.fixed} bytes are more than vsgx passes in "
                           f"one buffer ({MAX_BUFFER})")
        # a pointer to one scalar: ECALL results decode to a number
        self.single_scalar = (not ctype.dims and param.size is None and param.count is None
                              and param.sizefunc is None and not self.string
                              and bool(self.element_fmt) and not param.isary
                              and not (param.isptr and not ctype.is_pointer))

    def length(self, value_of: Callable[[str], int], measure: Callable[[], int] | None = None
               ) -> int:
        """The buffer's length; ``measure`` runs the sizefunc ([sizefunc=])."""
        if self.fixed is not None:
            return self.fixed
        if self.param.sizefunc is not None:
            if measure is None:
                raise EdlError(f"{self.where}: sized by sizefunc {self.param.sizefunc}, which "
                               "vsgx cannot run here")
            size = measure()
        elif self.param.size is not None:
            size = _ref(self.param.size, value_of)
        else:
            size = self.element_size
        count = _ref(self.param.count, value_of) if self.param.count is not None else 1
        if not isinstance(size, int) or not isinstance(count, int) or size < 0 or count < 0:
            raise EdlError(f"{self.where}: size {size!r} and count {count!r} must be "
                           "non-negative integers")
        total = size * count
        if total > MAX_BUFFER:
            raise EdlError(f"{self.where}: {total} bytes are more than vsgx passes in one "
                           f"buffer ({MAX_BUFFER})")
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


def check_function(function: Function, types: TypeSystem) -> None:
    """Raise what marshalling ``function`` would raise (an unknown type, a
    void pointer without a size), naming the function, before any call."""
    what = f"{'ECALL' if function.trusted else 'OCALL'} {function.name}"
    try:
        ms_layout(function, types)
        for param in function.params:
            if param.checked_pointer:
                BufferSpec(function, param, types)
    except UnknownTypeError as exc:
        raise UnknownTypeError(exc.type_name, exc.hint, what) from None
    except EdlError as exc:
        raise EdlError(f"{what}: {exc}") from None


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

    def __init__(self, urts: Urts, ordinal: int, function: Function, types: TypeSystem,
                 sizefuncs: dict[str, SizeFunc] | None = None):
        self.urts = urts
        self.ordinal = ordinal
        self.function = function
        self.__name__ = function.name
        self.memory = urts.raw.avm.memory
        self.layout = ms_layout(function, types)
        self.types = types
        self.sizefuncs = sizefuncs if sizefuncs is not None else {}
        self.params = function.params
        self.index = {p.name: i for i, p in enumerate(self.params)}
        self.specs = {p.name: BufferSpec(function, p, types) for p in self.params
                      if p.checked_pointer}
        self.retval = self.layout.field("retval") if any(
            f.name == "retval" for f in self.layout.fields) else None
        self.outputs = [p.name for p in self.params if p.name in self.specs
                        and p.direction_out]
        self.format = _struct_format(self.layout) if self.layout.size else ""
        self.value_fields = [f for f in self.layout.fields if f.param is not None]
        # The fast path packs numbers only: structs by value go through _call.
        self.scalar_only = not any(p.pointer_like for p in self.params) and all(
            f.fmt for f in self.value_fields)
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
                    if len(data) > MAX_BUFFER:
                        raise EdlError(f"{self.where}: {name} is longer than vsgx passes in "
                                       f"one buffer ({MAX_BUFFER})")
                    lengths[name] = len(data)
                continue
            if data is None and value is None and not spec.param.direction_out:
                continue  # NULL
            if value is None and spec.param.direction_in:
                continue  # NULL [in, out]
            length = spec.length(value_of, self._measure(spec, data, value_of))
            if data is not None and len(data) != length:
                raise EdlError(f"{self.where}: {name} has {len(data)} bytes, the EDL makes it "
                               f"{length}")
            if data is None and isinstance(value, bytearray | memoryview) and \
                    len(value) != length:
                raise EdlError(f"{self.where}: {name} has {len(value)} bytes, the EDL makes "
                               f"it {length}")
            lengths[name] = length

        total = sum((n + 15) & ~15 for n in lengths.values()) + self.layout.size + 128
        if total > MAX_BUFFER:
            raise EdlError(f"{self.where}: its buffers take {total} bytes, more than vsgx "
                           f"passes in one ECALL ({MAX_BUFFER})")
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

    def _measure(self, spec: BufferSpec, data: bytes | None,
                 value_of: Callable[[str], int]) -> Callable[[], int] | None:
        """SDK 1.x [sizefunc=f]: the trusted bridge runs f on the buffer; here
        the untrusted side's f (``sizefuncs``) measures the caller's bytes,
        and without one the bytes given are the buffer."""
        name = spec.param.sizefunc
        if name is None or data is None:
            return None
        count = 1
        if spec.param.count is not None:
            count = _ref(spec.param.count, value_of)
        function = self.sizefuncs.get(name)
        if function is None:
            if count <= 0 or len(data) % count:
                raise ArgumentError(f"{self.where}: {spec.param.name} has {len(data)} bytes, "
                                    f"not a multiple of its count {count}")
            return lambda: len(data) // count
        try:
            size = function(data)
        except Exception as exc:
            raise ArgumentError(f"{self.where}: sizefunc {name} raised {exc!r}") from exc
        if not isinstance(size, int) or size * count != len(data):
            raise ArgumentError(f"{self.where}: sizefunc {name} makes {spec.param.name} "
                                f"{size!r} × {count} bytes, {len(data)} given")
        return lambda: size

    def _infer(self, spec: BufferSpec, length: int, values: list[Any]) -> None:
        def known(reference: str | None, default: int) -> int | None:
            if reference is None:
                return default
            if reference in self.index:
                value = values[self.index[reference]]
                return value if isinstance(value, int) else None
            return int(reference, 0)

        size_ref, count_ref = spec.param.size, spec.param.count
        if spec.param.sizefunc is not None:
            return
        if size_ref in self.index and values[self.index[size_ref]] is None:
            count = known(count_ref, 1)
            if count:
                values[self.index[size_ref]] = length // count
        elif count_ref in self.index and values[self.index[count_ref]] is None:
            size = known(size_ref, spec.element_size)
            if size:
                values[self.index[count_ref]] = length // size

    def _input_bytes(self, spec: BufferSpec, value: Any) -> bytes | None:
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
            elif param.user_check and param.pointer_like:
                value = values[self.index[param.name]] or 0
            else:
                value = values[self.index[param.name]]
                if isinstance(value, dict):
                    value = self.types.pack_composite(param.type, value)
            buffer[item.offset:item.offset + item.size] = pack_value(
                item.fmt, item.size, value, f"{self.where}: {param.name}")
        self.memory.write(ms, bytes(buffer))
        return ms

    def _decode_output(self, spec: BufferSpec, address: int, length: int) -> Any:
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

    def __init__(self, memory: AddressSpace, function: Function, types: TypeSystem,
                 handler: Callable[..., Any], sizefuncs: dict[str, SizeFunc] | None = None):
        self.memory = memory
        self.function = function
        self.handler = handler
        self.types = types
        self.sizefuncs = sizefuncs if sizefuncs is not None else {}
        self._ready = False
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        """The layout, on first use: one OCALL whose types are unknown fails
        alone, naming them, and leaves the rest of the EDL usable."""
        function, types = self.function, self.types
        try:
            check_function(function, types)
        except EdlError as exc:
            raise st.OcallError(str(exc)) from None
        self.layout = ms_layout(function, types)
        self.specs = {p.name: BufferSpec(function, p, types) for p in function.params
                      if p.checked_pointer}
        self.format = _struct_format(self.layout) if self.layout.size else ""
        self.names = [f.name for f in self.layout.fields]
        self.retval = self.layout.field("retval") if "retval" in self.names else None
        self.errno_field = self.layout.field("errno") if "errno" in self.names else None
        self._ready = True

    def __call__(self, ms: int) -> int:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._prepare()
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
            try:
                length = spec.length(lambda name: fields[name], self._measure(param, value))
            except EdlError as exc:
                raise st.OcallError(f"OCALL {exc}") from None
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


    def _measure(self, param: Param, address: int) -> Callable[[], int] | None:
        """SDK 1.x [sizefunc=f]: the enclave measured its buffer with its own
        f; the untrusted side's f (``sizefuncs``) measures the copy."""
        name = param.sizefunc
        if name is None:
            return None
        function = self.sizefuncs.get(name)
        if function is None:
            raise st.OcallError(f"OCALL {self.function.name}: {param.name} is sized by "
                                f"sizefunc {name}: give it, e.g. sizefuncs={{{name!r}: f}}")
        return lambda: function(UntrustedView(self.memory, address))


def _read_wstring(memory: Any, address: int) -> bytes:
    out = bytearray()
    while len(out) < MAX_OCALL_BUFFER:
        unit = memory.read(address + len(out), 4)
        if unit == b"\0\0\0\0":
            return bytes(out)
        out += unit
    raise st.OcallError("unterminated wide string")
