"""Signing configuration: what Intel's Enclave.config.xml holds, as TOML.

    [enclave]
    isvprodid = 0
    isvsvn = 0
    debug = true            # DisableDebug = 0
    tcs_count = 2           # TCSNum
    tcs_policy = "unbind"   # TCSPolicy: "bind" or "unbind"
    stack_size = 0x40000    # StackMaxSize (bytes, page multiple)
    heap_size = 0x100000    # HeapMaxSize
    nssa = 2                # SSA frames per thread
    ssa_frame_size = 1      # pages per SSA frame
    misc_select = 0
    misc_mask = 0xFFFFFFFF
    xfrm = 3                # the XFRM the enclave asks for
    provision_key = false
    heap_pages = 1          # plain-ELF format only: unmeasured heap after the segments
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from typing import Any

from vsgx.arch.constants import PAGE_SIZE, XFRM_LEGACY
from vsgx.errors import ConfigError


@dataclass(frozen=True)
class EnclaveConfig:
    isvprodid: int = 0
    isvsvn: int = 0
    debug: bool = True
    tcs_count: int = 1
    tcs_policy: str = "unbind"
    stack_size: int = 0x40000
    heap_size: int = 0x100000
    nssa: int = 2
    ssa_frame_size: int = 1
    misc_select: int = 0
    misc_mask: int = 0xFFFFFFFF
    xfrm: int = int(XFRM_LEGACY)
    provision_key: bool = False
    heap_pages: int = 1

    def __post_init__(self) -> None:
        limits = {"isvprodid": 0xFFFF, "isvsvn": 0xFFFF, "misc_select": 0xFFFFFFFF,
                  "misc_mask": 0xFFFFFFFF, "xfrm": (1 << 64) - 1}
        for name, top in limits.items():
            value = getattr(self, name)
            if not 0 <= value <= top:
                raise ConfigError(f"{name} = {value:#x} is out of range (0..{top:#x})")
        if not 1 <= self.tcs_count <= 1024:
            raise ConfigError(f"tcs_count = {self.tcs_count}: must be 1..1024")
        if self.tcs_policy not in ("bind", "unbind"):
            raise ConfigError(f"tcs_policy = {self.tcs_policy!r}: must be 'bind' or 'unbind'")
        for name in ("stack_size", "heap_size"):
            value = getattr(self, name)
            if value <= 0 or value % PAGE_SIZE:
                raise ConfigError(f"{name} = {value:#x}: must be a positive multiple of 4096")
        if not 1 <= self.nssa <= 16:
            raise ConfigError(f"nssa = {self.nssa}: must be 1..16")
        if not 1 <= self.ssa_frame_size <= 4:
            raise ConfigError(f"ssa_frame_size = {self.ssa_frame_size}: must be 1..4 pages")
        if self.xfrm & 0x3 != 0x3:
            raise ConfigError("xfrm must include x87 and SSE (bits 0 and 1)")
        if not 0 <= self.heap_pages <= (1 << 24):
            raise ConfigError(f"heap_pages = {self.heap_pages}: out of range")


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if kind is int:
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                raise ConfigError(f"{name} = {value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a number")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def parse_config(text: str, source: str = "config") -> EnclaveConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    table = document.get("enclave", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [enclave] must be a table")
    unknown = set(document) - {"enclave"}
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}")
    known = {f.name: f for f in fields(EnclaveConfig)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key enclave.{key}")
        kind = {"int": int, "bool": bool, "str": str}[str(known[key].type)]
        try:
            values[key] = _coerce(f"enclave.{key}", value, kind)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return EnclaveConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
