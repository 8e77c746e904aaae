"""`vsgx ecall`: call an SDK enclave's ECALL from the command line."""

from __future__ import annotations

import argparse
import sys
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


def convert_argument(param: Any, text: str, enums: dict[str, int]) -> Any:
    """A command-line word as the C parameter wants it."""
    if text == "-":
        return None
    name = param.name
    pointer = param.type.is_pointer or bool(param.type.dims)
    if pointer and param.user_check:
        return int(text, 0)
    if pointer:
        if not param.direction_in:
            raise VsgxError(f"{name} is an [out] buffer: leave it out or pass -")
        if param.string or param.wstring:
            return text
        if text.startswith("hex:"):
            try:
                return bytes.fromhex(text[4:])
            except ValueError:
                raise VsgxError(f"{name}: {text!r} is not hex") from None
        if text.startswith("@"):
            return read_file(text[1:], f"the file for {name}")
        return text.encode()
    if param.type.base in ("float", "double"):
        try:
            return float(text)
        except ValueError:
            raise VsgxError(f"{name}: {text!r} is not a number") from None
    if text in enums:
        return enums[text]
    try:
        return int(text, 0)
    except ValueError:
        raise VsgxError(f"{name}: {text!r} is not an integer") from None


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.rstrip(b"\0")
        if text and all(32 <= b < 127 or b in (9, 10, 13) for b in text):
            return repr(text.decode())
        return value.hex() if value else "(empty)"
    return repr(value)


@command("ecall")
def cmd_ecall(args: argparse.Namespace) -> int:
    from vsgx.sdk import Enclave, load_edl

    interface = load_edl(args.edl, [Path(p) for p in args.edl_path or []])
    if not args.name:
        for index, function in enumerate(interface.ecalls):
            visibility = "public " if function.public else "private"
            print(f"ECALL {index:3d}  {visibility} {function.name}")
        for index, function in enumerate(interface.ocalls):
            print(f"OCALL {index:3d}  {function.name}")
        return 0
    _, function = interface.ecall(args.name)
    if len(args.args) > len(function.params):
        raise VsgxError(f"{function.name} takes {len(function.params)} arguments "
                        f"({', '.join(p.name for p in function.params)})")
    values = [convert_argument(p, text, interface.enums)
              for p, text in zip(function.params, args.args, strict=False)]
    with Enclave.load(args.enclave, edl=args.edl, ocalls=print_handlers(interface),
                      edl_paths=args.edl_path, evm=args.evm,
                      debug=not args.production) as enclave:
        result = enclave.ecall(function.name, *values)
    outputs = [p.name for p in function.params
               if (p.type.is_pointer or p.type.dims) and p.direction_out]
    has_return = function.returns.base != "void" or function.returns.pointers
    names = (["return"] if has_return else []) + outputs
    values_out = [result] if len(names) == 1 else list(result or ())
    if not names:
        print(f"{function.name} returned")
    for name, value in zip(names, values_out, strict=True):
        label = f"{function.name} returned" if name == "return" else f"{name} ="
        print(f"{label} {_show(value)}")
    return 0
