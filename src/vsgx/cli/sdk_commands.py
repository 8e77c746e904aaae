"""`vsgx ecall`: call an SDK enclave's ECALL from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsgx.cli.main import command, read_file
from vsgx.errors import VsgxError


def _is_print_shaped(function: Any) -> bool:
    """``void/int f([in, string] const char *text)``: the common print OCALL."""
    params = function.params
    return (len(params) == 1 and params[0].string and params[0].direction_in
            and not params[0].direction_out and not function.returns.pointers)


def _print_text(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def print_handlers(interface: Any) -> dict[str, Any]:
    """Default handlers: every print-shaped OCALL prints its string."""
    return {f.name: _print_text for f in interface.ocalls if _is_print_shaped(f)}


# -- type sizes ------------------------------------------------------------------------
def parse_type(text: str, source: str = "--type") -> tuple[str, tuple[int, int] | int]:
    """NAME=SIZE or NAME=SIZE:ALIGN."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise VsgxError(f"{source} {text!r}: expected NAME=SIZE or NAME=SIZE:ALIGN")
    size_text, _, align_text = value.partition(":")
    try:
        size = int(size_text, 0)
        return name, (size, int(align_text, 0)) if align_text else size
    except ValueError:
        raise VsgxError(f"{source} {text!r}: SIZE and ALIGN must be numbers") from None


def load_types_file(path: str) -> dict[str, Any]:
    """TOML: ``NAME = SIZE`` or ``NAME = [SIZE, ALIGN]``, at the top or under
    ``[types]``."""
    try:
        document = tomllib.loads(read_file(path, "types file").decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VsgxError(f"{path}: not valid TOML ({exc})") from None
    table = document.get("types", document) if set(document) <= {"types"} else document
    types: dict[str, Any] = {}
    for name, value in table.items():
        if isinstance(value, list) and len(value) == 2:
            value = tuple(value)
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (
                isinstance(value, tuple) and all(isinstance(v, int) for v in value)):
            raise VsgxError(f"{path}: {name} = {value!r}: expected SIZE or [SIZE, ALIGN]")
        types[name] = value
    return types


def type_sizes(args: argparse.Namespace) -> dict[str, Any]:
    from vsgx.sdk.ctypes_sysv import TypeSystem

    types = load_types_file(args.types) if args.types else {}
    for text in args.type:
        name, value = parse_type(text)
        types[name] = value
    TypeSystem(extra=types)  # every entry checked now, with its name
    return types


# -- arguments -------------------------------------------------------------------------
@dataclass
class Untrusted:
    """A [user_check] argument given as data: placed in untrusted memory,
    its address passed, its bytes shown after the call."""

    data: bytes


def _bytes(param: Any, text: str) -> bytes | None:
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise VsgxError(f"{param.name}: {text!r} is not hex") from None
    if text.startswith("@"):
        return read_file(text[1:], f"the file for {param.name}")
    return None


def _json(param: Any, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise VsgxError(f"{param.name}: {text!r} is not JSON ({exc.msg})") from None


def convert_argument(param: Any, text: str, enums: dict[str, int]) -> Any:
    """A command-line word as the C parameter wants it."""
    if text == "-":
        return None
    name = param.name
    if param.pointer_like and param.user_check:
        try:
            return int(text, 0)  # an address
        except ValueError:
            pass
        if text.startswith("alloc:"):
            try:
                return Untrusted(bytes(int(text[6:], 0)))
            except ValueError:
                raise VsgxError(f"{name}: {text!r} is not alloc:SIZE") from None
        data = _bytes(param, text)
        return Untrusted(data if data is not None else text.encode() + b"\0")
    if param.pointer_like:
        if not param.direction_in:
            raise VsgxError(f"{name} is an [out] buffer: leave it out or pass -")
        if param.string or param.wstring:
            return text
        data = _bytes(param, text)
        if data is not None:
            return data
        if text[:1] in "{[":
            return _json(param, text)
        return text.encode()
    base = param.type.base
    if base in ("float", "double"):
        try:
            return float(text)
        except ValueError:
            raise VsgxError(f"{name}: {text!r} is not a number") from None
    if text in enums:
        return enums[text]
    data = _bytes(param, text)
    if data is not None:
        return data  # a struct, union or foreign type by value, as its bytes
    if text[:1] == "{":
        return _json(param, text)
    try:
        return int(text, 0)
    except ValueError:
        pass
    if base in ("char", "signed char", "unsigned char", "wchar_t") and len(text) == 1:
        return ord(text)
    raise VsgxError(f"{name}: {text!r} is not an integer")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.rstrip(b"\0")
        if text and all(32 <= b < 127 or b in (9, 10, 13) for b in text):
            return repr(text.decode())
        return value.hex() if value else "(empty)"
    return repr(value)


def _decode(types: Any, param: Any, value: Any) -> Any:
    """An [out] struct or union of the EDL as its members."""
    pointee = param.type.pointee() if param.type.is_pointer else None
    if isinstance(value, bytes) and pointee is not None and not pointee.pointers:
        name = pointee.base.split()[-1]
        if name in types.composites and len(value) == types.sizeof(pointee):
            return types.unpack_composite(name, value)
    return value


@command("ecall")
def cmd_ecall(args: argparse.Namespace) -> int:
    from vsgx.sdk import Enclave, load_edl
    from vsgx.sdk.bridges import check_function
    from vsgx.sdk.ctypes_sysv import TypeSystem

    types = type_sizes(args)
    interface = load_edl(args.edl, [Path(p) for p in args.edl_path or []])
    if not args.name:
        for index, function in enumerate(interface.ecalls):
            visibility = "public " if function.public else "private"
            print(f"ECALL {index:3d}  {visibility} {function.name}")
        for index, function in enumerate(interface.ocalls):
            print(f"OCALL {index:3d}  {function.name}")
        return 0
    _, function = interface.ecall(args.name)
    type_system = TypeSystem(interface.composites, interface.enum_types, types)
    check_function(function, type_system)  # before loading: names the type it lacks
    if len(args.args) > len(function.params):
        raise VsgxError(f"{function.name} takes {len(function.params)} arguments "
                        f"({', '.join(p.name for p in function.params)})")
    values = [convert_argument(p, text, interface.enums)
              for p, text in zip(function.params, args.args, strict=False)]
    with Enclave.load(args.enclave, edl=interface, ocalls=print_handlers(interface),
                      types=types, evm=args.evm,
                      debug=not args.production) as enclave:
        placed: list[tuple[str, int, int]] = []
        for index, value in enumerate(values):
            if isinstance(value, Untrusted):
                address = enclave.alloc(len(value.data), value.data)
                placed.append((function.params[index].name, address, len(value.data)))
                values[index] = address
        result = enclave.ecall(function.name, *values)
        untrusted_after = [(name, enclave.read(address, size)) for name, address, size in placed]
    outputs = [p for p in function.params if p.checked_pointer and p.direction_out]
    has_return = function.returns.base != "void" or function.returns.pointers
    names: list[Any] = (["return"] if has_return else []) + outputs
    values_out = [result] if len(names) == 1 else list(result or ())
    if not names:
        print(f"{function.name} returned")
    for param, value in zip(names, values_out, strict=True):
        if param == "return":
            print(f"{function.name} returned {_show(value)}")
        else:
            print(f"{param.name} = {_show(_decode(type_system, param, value))}")
    for name, data in untrusted_after:
        print(f"{name} (untrusted) = {_show(data)}")
    return 0
