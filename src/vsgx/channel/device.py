"""The messages between the library injected into an unmodified program
(``vsgx.native``'s C library) and the program's AVM (the ``vsgx exec``
launcher).

They travel as SOCK_SEQPACKET datagrams over Unix sockets, one message per
datagram: a fixed C struct (declared here, field by field, and rendered into
the C header at build time, never written twice) and an optional payload.
Every struct starts with ``type`` and ``status`` and has only 8-byte fields
or pairs of 4-byte fields, so its layout is the same with and without
packing; ``tests/test_exec.py`` compares offsetof/sizeof from gcc with this
table.

Sockets: the launcher hands the program a *control* socket (its number in
``VSGX_EXEC_FD``). A process registers itself with SESSION on it, passing one
end of a fresh socket pair (SCM_RIGHTS): that is its *session* socket, and
its closing ends the session (the process exited). Each thread that needs
the launcher registers a *thread* socket with THREAD on the session socket;
requests and their replies go over it, strictly one at a time. While a
thread waits for a reply, the launcher may ask it for pages of the program's
memory (PAGE_FETCH, PAGE_WRITEBACK): the EVM's untrusted-memory requests.
FAST_FILES, the reply to FAST_ATTACH, carries the TCS runner's CLIENT area
and page pool (SCM_RIGHTS) for the library's fast path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from vsgx.errors import VsgxError

VERSION = 1
PAGE_SIZE = 4096
REGISTER_COUNT = 20  # rax rcx rdx rbx rsp rbp rsi rdi r8-r15 rflags rip fsbase gsbase
MAX_DATAGRAM = 160 * 1024  # below the default Unix socket send buffer
ADD_PAGES_BATCH = 32  # source pages per ADD_PAGES request
MAX_PUSHED_PAGES = 8
MAX_SEGMENTS = 64
IOCTL_ARG_WORDS = 6  # the largest uapi argument struct: sgx_enclave_add_pages


class DeviceProtocolError(VsgxError):
    """A datagram that does not follow the library <-> launcher protocol."""


class Msg(IntEnum):
    # registration
    SESSION = 1  # control socket, with the session socket (SCM_RIGHTS)
    THREAD = 2  # session socket, with the thread socket (SCM_RIGHTS)
    CPUID_MODEL = 3  # launcher -> a self-starting library, first on the control socket
    # requests of a thread, and their replies
    IOCTL = 10
    IOCTL_DONE = 11
    MAP = 12
    DONE = 13  # status only
    MPROTECT = 14
    UNMAP = 15
    RELEASE = 16
    ENTER = 17
    EXIT = 18
    CPUID_SITES = 19
    SITES = 20
    # the fast path (entries straight to the TCS's runner): its files, and
    # an entry the runner handed over to the EVM
    FAST_ATTACH = 21
    FAST_FILES = 22  # status; with the CLIENT area and the pool's (SCM_RIGHTS)
    CONTINUE = 23  # replied with EXIT
    # the queued ADD_PAGES of an enclave file, sent at its next synchronous
    # point (INIT, another ioctl, a mapping, a full queue); IOCTL_DONE's
    # count is the pages added
    ADD_RUNS = 40
    # mappings of initialized enclaves the library checked itself
    # (sgx_encl_may_map over the pages it added) and answered, sent in
    # order at the next request of the process or entry; DONE's status is
    # 0 or the first failure's -errno
    MAPS = 41
    # the launcher's requests while a thread waits
    PAGE_FETCH = 30
    PAGE = 31
    PAGE_WRITEBACK = 32
    WRITEBACK_DONE = 33


class ExitKind(IntEnum):
    EEXIT = 0
    AEX = 1  # an exception the program sees (vector, error code, address)
    FAULT = 2  # the ENCLU itself faulted; registers unchanged
    LOST = 3  # the enclave or its EVM is gone; status is an errno


class PageState(IntEnum):
    MISSING = 0
    READ_ONLY = 1
    WRITABLE = 2


# IOCTL flags: which user buffers the library could read (copy_from_user).
ARG_READABLE = 1 << 0
BUFFER_READABLE = 1 << 1  # SECS, SIGSTRUCT, SECINFO
# CREATE of an enclave of a legacy driver (/dev/isgx, the DCAP driver's
# /dev/sgx): its mappings are not checked against the EPCM's rights.
LEGACY_DRIVER = 1 << 2
IOCTL_COPY_BACK = 1 << 0  # IOCTL_DONE.flags: copy arg back to the caller (copy_to_user)

_CTYPES = {"u64": ("uint64_t", "Q", 8), "u32": ("uint32_t", "I", 4), "i32": ("int32_t", "i", 4),
           "i64": ("int64_t", "q", 8)}


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # u64, u32, i32, i64
    count: int = 1

    @property
    def size(self) -> int:
        return _CTYPES[self.ctype][2] * self.count


@dataclass(frozen=True)
class Message:
    msg: Msg
    fields: tuple[Field, ...]
    payload: str = ""  # what follows the struct (documentation, rendered as a comment)

    @property
    def c_name(self) -> str:
        return f"vsgx_msg_{self.msg.name.lower()}"

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return (Field("type", "u32"), Field("status", "i32"), *self.fields)

    @property
    def layout(self) -> struct.Struct:
        fmt = "<" + "".join(f"{f.count}{_CTYPES[f.ctype][1]}" for f in self.all_fields)
        return struct.Struct(fmt)

    def offsets(self) -> dict[str, int]:
        offset, out = 0, {}
        for f in self.all_fields:
            out[f.name] = offset
            offset += f.size
        return out


def _m(msg: Msg, *spec: str, payload: str = "") -> Message:
    fields = []
    for item in spec:
        name, _, ctype = item.partition(":")
        count = 1
        if "[" in ctype:
            ctype, _, rest = ctype.partition("[")
            count = int(rest.rstrip("]"))
        fields.append(Field(name, ctype, count))
    return Message(msg, tuple(fields), payload)


MESSAGES: dict[Msg, Message] = {m.msg: m for m in (
    _m(Msg.SESSION, "version:u32", "pid:u32", "ppid:u32", "reserved:u32"),
    _m(Msg.THREAD, "tid:u32", "reserved:u32"),
    _m(Msg.CPUID_MODEL, "count:u32", "reserved:u32",
       payload="count sub-leaves of CPUID 0x12 from 0: eax, ebx, ecx, edx (u32 each)"),
    _m(Msg.IOCTL, "file:u64", "cmd:u32", "flags:u32", f"arg:u64[{IOCTL_ARG_WORDS}]",
       "position:u64", "pages:u32", "readable_pages:u32", "provision_fd:u32", "reserved:u32",
       payload="the buffer the argument points to (SECS page, SIGSTRUCT, SECINFO); for "
               "ADD_PAGES then one u8 per page (1 = all zero, not sent) and the other pages"),
    _m(Msg.IOCTL_DONE, "flags:u32", "reserved:u32", f"arg:u64[{IOCTL_ARG_WORDS}]",
       "count:u64"),
    _m(Msg.MAP, "file:u64", "address:u64", "length:u64", "prot:u32", "flags:u32"),
    _m(Msg.DONE),
    _m(Msg.MPROTECT, "file:u64", "address:u64", "length:u64", "prot:u32", "reserved:u32"),
    _m(Msg.UNMAP, "file:u64", "address:u64", "length:u64"),
    _m(Msg.RELEASE, "file:u64"),
    _m(Msg.ENTER, "file:u64", "leaf:u32", "pushed:u32", "return_rip:u64",
       f"regs:u64[{REGISTER_COUNT}]",
       payload="pushed pages: u64 address, u32 state, u32 0, then 4096 bytes unless MISSING"),
    _m(Msg.EXIT, "kind:u32", "vector:u32", "error_code:u32", "exitinfo_valid:u32",
       "address:u64", f"regs:u64[{REGISTER_COUNT}]"),
    _m(Msg.CPUID_SITES, "base:u64", "dev:u64", "ino:u64", "size:u64", "mtime_ns:u64",
       "segments:u32", "path_length:u32",
       payload="segments x (u64 vaddr, u64 memsz) of executable PT_LOADs, then the path"),
    _m(Msg.SITES, "count:u32", "reserved:u32",
       payload="count u64 link-time addresses of CPUID instructions"),
    _m(Msg.FAST_ATTACH, "file:u64", "tcs:u64"),
    _m(Msg.FAST_FILES),  # status; the two files go with it
    _m(Msg.CONTINUE, "file:u64", "tcs:u64", "aep:u64", "fsbase:u64", "gsbase:u64"),
    _m(Msg.PAGE_FETCH, "address:u64"),
    _m(Msg.PAGE, "address:u64", "state:u32", "reserved:u32",
       payload="4096 bytes unless MISSING"),
    _m(Msg.PAGE_WRITEBACK, "address:u64", "length:u32", "reserved:u32",
       payload="runs of (u16 offset, u16 length, bytes)"),
    _m(Msg.WRITEBACK_DONE),
    _m(Msg.ADD_RUNS, "file:u64", "runs:u32", "pages:u32",
       payload="runs x struct vsgx_add_run, then the pages of the runs that are not "
               "uniform, in order (pages in all)"),
    _m(Msg.MAPS, "count:u32", "reserved:u32", payload="count x struct vsgx_map_record"),
)}


@dataclass(frozen=True)
class Record:
    """A fixed struct inside a payload (rendered into the header too)."""

    name: str
    fields: tuple[Field, ...]

    @property
    def layout(self) -> struct.Struct:
        return struct.Struct("<" + "".join(f"{f.count}{_CTYPES[f.ctype][1]}"
                                           for f in self.fields))

    def offsets(self) -> dict[str, int]:
        offset, out = 0, {}
        for f in self.fields:
            out[f.name] = offset
            offset += f.size
        return out


# ADD_RUNS: consecutive pages of one ADD_PAGES SECINFO and flags; a
# uniform run's pages are all its 32-bit fill and are not sent.
ADD_RUN = Record("vsgx_add_run", (Field("offset", "u64"), Field("count", "u64"),
                                  Field("secinfo", "u64"), Field("fill", "u32"),
                                  Field("flags", "u32")))
ADD_RUN_MEASURE = 1 << 0  # SGX_PAGE_MEASURE
ADD_RUN_UNIFORM = 1 << 1
ADD_RUNS_MAX = 512  # runs in one ADD_RUNS
ADD_RUNS_PAGES = 32  # pages sent in one ADD_RUNS (a datagram's worth)
# MAPS: one mmap of an enclave file, as MAP would have carried it, or (its
# flags MAP_RECORD_UNMAP, a bit no mmap flag uses) one munmap, as UNMAP.
MAP_RECORD = Record("vsgx_map_record", (Field("file", "u64"), Field("address", "u64"),
                                        Field("length", "u64"), Field("prot", "u32"),
                                        Field("flags", "u32")))
MAP_RECORD_UNMAP = 1 << 31
MAPS_MAX = 256  # records in one MAPS
RECORDS = (ADD_RUN, MAP_RECORD)


def pack(msg: Msg, payload: bytes = b"", status: int = 0, **values: int | list[int]) -> bytes:
    """A datagram: the struct with ``values`` (missing fields are 0) + payload."""
    message = MESSAGES[msg]
    flat: list[int] = []
    for f in message.all_fields:
        if f.name == "type":
            flat.append(int(msg))
        elif f.name == "status":
            flat.append(status)
        elif f.count > 1:
            value = list(values.pop(f.name, [0] * f.count))  # type: ignore[arg-type]
            if len(value) != f.count:
                raise DeviceProtocolError(f"{msg.name}.{f.name} takes {f.count} values")
            flat.extend(value)
        else:
            flat.append(int(values.pop(f.name, 0)))  # type: ignore[arg-type]
    if values:
        raise DeviceProtocolError(f"{msg.name} has no field {next(iter(values))}")
    return message.layout.pack(*flat) + payload


@dataclass
class Decoded:
    msg: Msg
    status: int
    values: dict[str, int | list[int]]
    payload: bytes

    def __getitem__(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int)
        return value

    def words(self, name: str) -> list[int]:
        value = self.values[name]
        assert isinstance(value, list)
        return value


_BY_CODE = {int(m): m for m in Msg}


def unpack(datagram: bytes) -> Decoded:
    if len(datagram) < 8:
        raise DeviceProtocolError(f"a datagram of {len(datagram)} bytes")
    code = int.from_bytes(datagram[:4], "little")
    msg = _BY_CODE.get(code)
    if msg is None:
        raise DeviceProtocolError(f"unknown message type {code}")
    message = MESSAGES[msg]
    layout = message.layout
    if len(datagram) < layout.size:
        raise DeviceProtocolError(f"{msg.name}: {len(datagram)} bytes, the struct needs "
                                  f"{layout.size}")
    flat = list(layout.unpack_from(datagram))
    values: dict[str, int | list[int]] = {}
    position = 0
    for f in message.all_fields:
        if f.count > 1:
            values[f.name] = flat[position:position + f.count]
        else:
            values[f.name] = flat[position]
        position += f.count
    status = values.pop("status")
    values.pop("type")
    assert isinstance(status, int)
    return Decoded(msg, status, values, datagram[layout.size:])


def render_c_header() -> str:
    """The C declarations of every message (the library includes this)."""
    lines = ["/* Generated from vsgx.channel.device at build time: do not edit. */",
             "#ifndef VSGX_DEVICE_PROTOCOL_H", "#define VSGX_DEVICE_PROTOCOL_H",
             "#include <stdint.h>", "",
             f"#define VSGX_PROTOCOL_VERSION {VERSION}",
             f"#define VSGX_REGISTER_COUNT {REGISTER_COUNT}",
             f"#define VSGX_MAX_DATAGRAM {MAX_DATAGRAM}",
             f"#define VSGX_ADD_PAGES_BATCH {ADD_PAGES_BATCH}",
             f"#define VSGX_MAX_PUSHED_PAGES {MAX_PUSHED_PAGES}",
             f"#define VSGX_MAX_SEGMENTS {MAX_SEGMENTS}",
             f"#define VSGX_IOCTL_ARG_WORDS {IOCTL_ARG_WORDS}",
             f"#define VSGX_ARG_READABLE {ARG_READABLE}",
             f"#define VSGX_BUFFER_READABLE {BUFFER_READABLE}",
             f"#define VSGX_LEGACY_DRIVER {LEGACY_DRIVER}",
             f"#define VSGX_IOCTL_COPY_BACK {IOCTL_COPY_BACK}",
             f"#define VSGX_ADD_RUN_MEASURE {ADD_RUN_MEASURE}",
             f"#define VSGX_ADD_RUN_UNIFORM {ADD_RUN_UNIFORM}",
             f"#define VSGX_ADD_RUNS_MAX {ADD_RUNS_MAX}",
             f"#define VSGX_ADD_RUNS_PAGES {ADD_RUNS_PAGES}",
             f"#define VSGX_MAPS_MAX {MAPS_MAX}",
             f"#define VSGX_MAP_RECORD_UNMAP {MAP_RECORD_UNMAP}u", ""]
    for msg in Msg:
        lines.append(f"#define VSGX_MSG_{msg.name} {int(msg)}")
    for kind in ExitKind:
        lines.append(f"#define VSGX_EXIT_{kind.name} {int(kind)}")
    for state in PageState:
        lines.append(f"#define VSGX_PAGE_{state.name} {int(state)}")
    lines.append("")
    for message in MESSAGES.values():
        if message.payload:
            lines.append(f"/* followed by: {message.payload} */")
        lines.append(f"struct {message.c_name} {{")
        for f in message.all_fields:
            suffix = f"[{f.count}]" if f.count > 1 else ""
            lines.append(f"    {_CTYPES[f.ctype][0]} {f.name}{suffix};")
        lines.append("};")
        lines.append(f"_Static_assert(sizeof(struct {message.c_name}) == "
                     f"{message.layout.size}, \"{message.c_name}\");")
        lines.append("")
    for record in RECORDS:
        lines.append(f"struct {record.name} {{")
        for f in record.fields:
            suffix = f"[{f.count}]" if f.count > 1 else ""
            lines.append(f"    {_CTYPES[f.ctype][0]} {f.name}{suffix};")
        lines.append("};")
        lines.append(f"_Static_assert(sizeof(struct {record.name}) == {record.layout.size}, "
                     f"\"{record.name}\");")
        lines.append("")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


__all__ = ["ADD_PAGES_BATCH", "ADD_RUN", "MAPS_MAX", "MAP_RECORD", "MAP_RECORD_UNMAP", "MESSAGES",
           "RECORDS", "VERSION", "Decoded", "DeviceProtocolError", "ExitKind", "Msg", "PageState",
           "pack", "render_c_header", "unpack"]
