"""The AVM of an unmodified program: the ``vsgx exec`` launcher.

It serves the library injected into the program (and into the program's
children that open an SGX device) over the sockets of
``vsgx.channel.device``: one session per process, one channel per thread.
A session has its own connection to the EVM and its own ``ProgramDriver``;
its enclaves go when the process does (the session socket closes).

The program's untrusted memory is served by its own threads: while one of
them waits for a reply (an entry, an ioctl), the launcher relays the EVM's
PAGE_FETCH and PAGE_WRITEBACK to it and it copies from or into its own
address space. Any waiting thread of the process can answer for any entry:
they share the address space.

With an EVM on this host, most entries do not come here: the library asks
once per TCS for the runner's files (FAST_ATTACH; the EVM hands them out on
its side socket, the launcher passes them on with SCM_RIGHTS) and enters
the runner itself; an entry the runner hands over to the EVM comes back
here as CONTINUE.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from vsgx.arch.constants import ExitKind as EnclaveExitKind
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault
from vsgx.arch.sigstruct import SIGSTRUCT_SIZE
from vsgx.avm import DriverError, EnclaveLost
from vsgx.avm.uapi import (
    SGX_IOC_DCAP_INIT,
    SGX_IOC_ENCLAVE_ADD_PAGES,
    SGX_IOC_LEGACY_INIT,
    STRUCTS,
    AddRun,
    EnclaveFile,
    ProgramDriver,
)
from vsgx.channel.device import (
    ADD_RUN,
    ADD_RUN_MEASURE,
    ADD_RUN_UNIFORM,
    ADD_RUNS_MAX,
    ADD_RUNS_PAGES,
    ARG_READABLE,
    BUFFER_READABLE,
    IOCTL_ARG_WORDS,
    IOCTL_COPY_BACK,
    LEGACY_DRIVER,
    MAP_RECORD,
    MAP_RECORD_UNMAP,
    MAPS_MAX,
    MAX_DATAGRAM,
    PAGE_SIZE,
    REGISTER_COUNT,
    VERSION,
    Decoded,
    DeviceProtocolError,
    ExitKind,
    Msg,
    PageState,
    pack,
    unpack,
)
from vsgx.errors import VsgxError
from vsgx.native.cpuid_sites import CpuidSitesError, FileIdentity, cpuid_sites

RECV_SIZE = MAX_DATAGRAM + 8192
_PUSHED = struct.Struct("<QII")
_BUFFER_SIZES = {0x4008A400: 4096, 0x4008A402: SIGSTRUCT_SIZE, SGX_IOC_ENCLAVE_ADD_PAGES: 64,
                 SGX_IOC_LEGACY_INIT: SIGSTRUCT_SIZE + EINITTOKEN_SIZE,
                 SGX_IOC_DCAP_INIT: SIGSTRUCT_SIZE}

EvmFactory = Callable[[], Any]


class ProgramMemory:
    """The program's memory as the EVM sees it (``UntrustedMemory``),
    answered by whichever of its threads waits for the launcher."""

    def __init__(self) -> None:
        self._waiting: list[Channel] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def waiting(self, channel: Channel, on: bool) -> None:
        with self._lock:
            if on:
                self._waiting.append(channel)
            elif channel in self._waiting:
                self._waiting.remove(channel)

    def prefetched(self, pages: dict[int, tuple[bytes, bool] | None]) -> None:
        """Pages the library sent with an entry (this thread's entry)."""
        self._local.pages = pages

    def _pick(self) -> Channel | None:
        mine: Channel | None = getattr(self._local, "channel", None)
        with self._lock:
            if mine is not None and mine in self._waiting:
                return mine
            return self._waiting[0] if self._waiting else None

    def serving(self, channel: Channel | None) -> None:
        self._local.channel = channel

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        pages: dict[int, tuple[bytes, bool] | None] | None = getattr(self._local, "pages", None)
        if pages and page in pages:
            return pages.pop(page)
        for _ in range(3):
            channel = self._pick()
            if channel is None:
                return None
            try:
                return channel.fetch(page)
            except _NotWaiting:
                continue
        return None

    def write_back(self, page: int, changes: list[tuple[int, bytes]]) -> None:
        blob = b"".join(struct.pack("<HH", offset, len(data)) + data for offset, data in changes)
        for _ in range(3):
            channel = self._pick()
            if channel is None:
                return
            try:
                channel.write_back(page, blob)
                return
            except _NotWaiting:
                continue


class _NotWaiting(Exception):
    """The thread behind a channel stopped waiting before the request went."""


class Channel:
    """One thread of the program."""

    def __init__(self, session: Session, sock: socket.socket):
        self.session = session
        self.sock = sock
        self.lock = threading.Lock()  # one round trip at a time on the socket
        self.waiting = False

    # -- requests the launcher makes while the thread waits ------------------
    def _round_trip(self, datagram: bytes, expect: Msg) -> Decoded:
        with self.lock:
            if not self.waiting:
                raise _NotWaiting
            self.sock.send(datagram)
            reply = unpack(self.sock.recv(RECV_SIZE))
        if reply.msg != expect:
            raise DeviceProtocolError(f"expected {expect.name}, the library sent {reply.msg.name}")
        return reply

    def fetch(self, page: int) -> tuple[bytes, bool] | None:
        try:
            reply = self._round_trip(pack(Msg.PAGE_FETCH, address=page), Msg.PAGE)
        except (OSError, DeviceProtocolError):
            return None
        state = reply["state"]
        if state == PageState.MISSING or len(reply.payload) != PAGE_SIZE:
            return None
        return reply.payload, state == PageState.WRITABLE

    def write_back(self, page: int, runs: bytes) -> None:
        try:
            self._round_trip(pack(Msg.PAGE_WRITEBACK, runs, address=page, length=len(runs)),
                             Msg.WRITEBACK_DONE)
        except (OSError, DeviceProtocolError):
            pass

    # -- the thread's requests -------------------------------------------------
    def _reply(self, datagram: bytes, fds: tuple[int, ...] = ()) -> None:
        memory = self.session.memory
        with self.lock:
            self.waiting = False
            memory.waiting(self, False)
            if fds:
                socket.send_fds(self.sock, [datagram], list(fds))
            else:
                self.sock.send(datagram)

    def serve(self) -> None:
        memory = self.session.memory
        try:
            while True:
                try:
                    data = self.sock.recv(RECV_SIZE)
                except OSError:
                    break
                if not data:
                    break
                with self.lock:
                    self.waiting = True
                    memory.waiting(self, True)
                memory.serving(self)
                fds: tuple[int, ...] = ()
                try:
                    message = unpack(data)
                    if message.msg == Msg.FAST_ATTACH:
                        reply, fds = self.session.fast_attach(message)
                    else:
                        reply = self.session.handle(message)
                except DeviceProtocolError as exc:
                    self.session.log(f"a malformed request from pid {self.session.pid}: {exc}")
                    reply = pack(Msg.DONE, status=-errno.EPROTO)
                finally:
                    memory.serving(None)
                try:
                    self._reply(reply, fds)
                except OSError:
                    break
                finally:
                    for fd in fds:
                        os.close(fd)
        finally:
            memory.waiting(self, False)
            self.sock.close()


class Session:
    """One process of the program, from its first device use to its exit."""

    def __init__(self, launcher: Launcher, sock: socket.socket, pid: int):
        self.launcher = launcher
        self.sock = sock
        self.pid = pid
        self.memory = ProgramMemory()
        self.files: dict[int, EnclaveFile] = {}
        self._driver: ProgramDriver | None = None
        self._evm: Any = None
        self._lock = threading.RLock()
        self.closed = False

    def log(self, text: str) -> None:
        self.launcher.log(text)

    @property
    def driver(self) -> ProgramDriver:
        if self._driver is not None:
            return self._driver  # entries do not wait for a long ioctl's lock
        with self._lock:
            if self._driver is None:
                evm = self.launcher.take_connection()
                evm.attach_memory(self.memory)
                self._evm = evm
                self._driver = ProgramDriver(evm)
            return self._driver

    def file(self, file_id: int) -> EnclaveFile:
        with self._lock:
            found = self.files.get(file_id)
            if found is None:
                if file_id >> 32 != self.pid:
                    raise DeviceProtocolError(f"file {file_id:#x} is not of pid {self.pid}")
                driver = self.driver
                found = self.files[file_id] = EnclaveFile(driver)
                driver.files[file_id] = found
            return found

    # -- registration ------------------------------------------------------------
    def serve(self) -> None:
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
                except OSError:
                    break
                if not data:
                    for fd in fds:
                        os.close(fd)
                    break
                try:
                    message = unpack(data)
                except DeviceProtocolError:
                    message = None
                if message is None or message.msg != Msg.THREAD or len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    continue
                channel = Channel(self, socket.socket(fileno=fds[0]))
                self.launcher.threads.start(channel.serve,
                                            f"pid {self.pid} tid {message['tid']}")
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            files, self.files = list(self.files.values()), {}
        for file in files:
            try:
                file.release()
            except (VsgxError, Fault, OSError):
                pass
        if self._evm is not None:
            self._evm.close()
        self.sock.close()
        self.launcher.forget(self)

    # -- requests -------------------------------------------------------------------
    def handle(self, message: Decoded) -> bytes:
        kind = message.msg
        if kind == Msg.ENTER:
            return self._enter(message)
        if kind == Msg.IOCTL:
            return self._ioctl(message)
        if kind == Msg.ADD_RUNS:
            return self._add_runs(message)
        if kind == Msg.CPUID_SITES:
            return self._cpuid_sites(message)
        if kind == Msg.CONTINUE:
            return self._continue(message)
        if kind in (Msg.MAP, Msg.MPROTECT, Msg.UNMAP, Msg.RELEASE):
            return pack(Msg.DONE, status=self._mapping(message))
        if kind == Msg.MAPS:
            return pack(Msg.DONE, status=self._maps(message))
        raise DeviceProtocolError(f"{kind.name} is not a request")

    def _mapping(self, message: Decoded) -> int:
        file_id = message["file"]
        with self._lock:
            if message.msg == Msg.RELEASE:
                file = self.files.pop(file_id, None)
                if file is not None and self._driver is not None:
                    self._driver.files.pop(file_id, None)
                    file.release()
                return 0
            file = self.file(file_id)
            start, length = message["address"], message["length"]
            if start % PAGE_SIZE or length % PAGE_SIZE or start + length >= 1 << 64:
                return -errno.EINVAL
            try:
                if message.msg == Msg.MAP:
                    return file.map(start, length, message["prot"])
                if message.msg == Msg.MPROTECT:
                    return file.mprotect(start, length, message["prot"])
                return file.unmap(start, length)
            except (Fault, VsgxError) as exc:
                self.log(f"pid {self.pid}: mapping the enclave failed: {exc}")
                return -errno.EIO

    def _maps(self, message: Decoded) -> int:
        """MAPs the library answered itself and the UNMAPs it queued, in
        order (runs of one file go to the EVM together): 0, or the first
        failure's -errno."""
        count = message["count"]
        record = MAP_RECORD.layout
        if count > MAPS_MAX or len(message.payload) != count * record.size:
            raise DeviceProtocolError(f"MAPS: {count} records do not fit its payload")
        records = [record.unpack_from(message.payload, n * record.size) for n in range(count)]
        status = 0
        with self._lock:
            n = 0
            while n < count:
                file_id = records[n][0]
                ranges = []
                while n < count and records[n][0] == file_id:
                    _, start, length, prot, flags = records[n]
                    if start % PAGE_SIZE or length % PAGE_SIZE or start + length >= 1 << 64:
                        status = status or -errno.EINVAL
                    else:
                        ranges.append((start, length,
                                       None if flags & MAP_RECORD_UNMAP else prot))
                    n += 1
                try:
                    code = self.file(file_id).map_ranges(ranges)
                except (Fault, VsgxError) as exc:
                    self.log(f"pid {self.pid}: mapping the enclave failed: {exc}")
                    code = -errno.EIO
                status = status or code
        if status:
            self.log(f"pid {self.pid}: a mapping the library had answered failed "
                     f"({errno.errorcode.get(-status, status)})")
        return status

    def _ioctl(self, message: Decoded) -> bytes:
        cmd = message["cmd"]
        names = STRUCTS.get(cmd)
        file = self.file(message["file"])
        flags = message["flags"]
        arg = message.words("arg")[:len(names)] if names and flags & ARG_READABLE else None
        size = _BUFFER_SIZES.get(cmd, 0)
        payload = message.payload
        buffer = payload[:size] if size and flags & BUFFER_READABLE else None
        if size and flags & ARG_READABLE and len(payload) < size:
            raise DeviceProtocolError("IOCTL: the argument's buffer is cut short")
        try:
            with self._lock:
                if cmd == SGX_IOC_ENCLAVE_ADD_PAGES:
                    result = file.add_pages(arg, buffer, message["position"],
                                            self._source_pages(message, payload[size:]))
                else:
                    result = file.ioctl(cmd, arg, buffer,
                                        provision_fd=bool(message["provision_fd"]),
                                        legacy=bool(flags & LEGACY_DRIVER))
        except (Fault, EnclaveLost, DriverError) as exc:
            self.log(f"pid {self.pid}: ioctl {cmd:#x} failed: {exc}")
            return pack(Msg.IOCTL_DONE, status=-errno.EIO)
        out = list(result.arg or [])
        count = out[5] if cmd == SGX_IOC_ENCLAVE_ADD_PAGES and out else 0
        words = (out + [0] * IOCTL_ARG_WORDS)[:IOCTL_ARG_WORDS]
        return pack(Msg.IOCTL_DONE, status=result.ret,
                    flags=IOCTL_COPY_BACK if result.arg is not None else 0, arg=words,
                    count=count)

    def _add_runs(self, message: Decoded) -> bytes:
        """The ADD_PAGES the library queued and answered (it checked them as
        the kernel's ioctl does): added now, in one go where the EVM can."""
        file = self.file(message["file"])
        count, pages = message["runs"], message["pages"]
        if count > ADD_RUNS_MAX or pages > ADD_RUNS_PAGES:
            raise DeviceProtocolError(f"ADD_RUNS: {count} runs and {pages} pages are too many")
        payload = message.payload
        record = ADD_RUN.layout
        if len(payload) != count * record.size + pages * PAGE_SIZE:
            raise DeviceProtocolError("ADD_RUNS: runs and pages do not add up")
        data = memoryview(payload)[count * record.size:]
        runs: list[AddRun] = []
        used = 0
        for n in range(count):
            offset, length, secinfo, fill, flags = record.unpack_from(payload, n * record.size)
            secinfo_bytes = secinfo.to_bytes(8, "little") + bytes(56)
            if flags & ADD_RUN_UNIFORM:
                runs.append(AddRun(offset, length, secinfo_bytes, bool(flags & ADD_RUN_MEASURE),
                                   fill=fill))
                continue
            if length > pages - used:
                raise DeviceProtocolError("ADD_RUNS: a run's pages are missing")
            runs.append(AddRun(offset, length, secinfo_bytes, bool(flags & ADD_RUN_MEASURE),
                               bytes(data[used * PAGE_SIZE:(used + length) * PAGE_SIZE])))
            used += length
        if used != pages:
            raise DeviceProtocolError("ADD_RUNS: pages that no run takes")
        try:
            with self._lock:
                status, added = file.add_runs(runs)
        except (Fault, EnclaveLost, DriverError) as exc:
            self.log(f"pid {self.pid}: adding pages failed: {exc}")
            status, added = -errno.EIO, 0
        return pack(Msg.IOCTL_DONE, status=status, count=added * PAGE_SIZE)

    @staticmethod
    def _source_pages(message: Decoded, rest: bytes) -> list[bytes | None]:
        readable, wanted = message["readable_pages"], message["pages"]
        if readable > wanted or len(rest) < readable:
            raise DeviceProtocolError("ADD_PAGES: page flags are cut short")
        zero, data = rest[:readable], rest[readable:]
        pages: list[bytes | None] = []
        position = 0
        for flag in zero:
            if flag:
                pages.append(bytes(PAGE_SIZE))
                continue
            if position + PAGE_SIZE > len(data):
                raise DeviceProtocolError("ADD_PAGES: source pages are cut short")
            pages.append(data[position:position + PAGE_SIZE])
            position += PAGE_SIZE
        if readable < wanted:
            pages.append(None)
        return pages

    def _enter(self, message: Decoded) -> bytes:
        regs = message.words("regs")
        file = self.files.get(message["file"])
        encl = file.encl if file is not None else None
        if encl is None:
            return pack(Msg.EXIT, kind=ExitKind.LOST, status=-errno.EINVAL, regs=regs)
        self.memory.prefetched(self._pushed(message))
        try:
            result = self.driver.enter(encl, message["leaf"], list(regs), message["return_rip"],
                                       self.memory)
        except Fault as fault:
            if os.environ.get("VSGX_EXEC_DEBUG"):
                self.log(f"pid {self.pid}: ENCLU faulted: {fault}")
            return pack(Msg.EXIT, kind=ExitKind.FAULT, vector=int(fault.vector),
                        error_code=fault.error_code & 0xFFFFFFFF,
                        address=fault.address & ((1 << 64) - 1), regs=regs)
        except (EnclaveLost, DriverError, VsgxError) as exc:
            self.log(f"pid {self.pid}: the entry failed: {exc}")
            return pack(Msg.EXIT, kind=ExitKind.LOST, status=-errno.EIO, regs=regs)
        finally:
            self.memory.prefetched({})
        return self._exit_message(result)

    def _exit_message(self, result: Any) -> bytes:
        out = [value & ((1 << 64) - 1) for value in result.registers][:REGISTER_COUNT]
        if result.kind is not EnclaveExitKind.AEX:
            return pack(Msg.EXIT, kind=ExitKind.EEXIT, regs=out)
        if os.environ.get("VSGX_EXEC_DEBUG"):
            self.log(f"pid {self.pid}: AEX vector {result.vector} error code "
                     f"{result.error_code:#x} address {result.address:#x} rip {out[17]:#x}")
        return pack(Msg.EXIT, kind=ExitKind.AEX, vector=result.vector,
                    error_code=result.error_code & 0xFFFFFFFF,
                    exitinfo_valid=int(result.exitinfo_valid),
                    address=result.address & ((1 << 64) - 1), regs=out)

    def fast_attach(self, message: Decoded) -> tuple[bytes, tuple[int, ...]]:
        """The fast path's files of one of this process's TCSs (its CLIENT
        area and page pool, from an EVM on this host), passed on to the
        library; a negative status where there are none."""
        file = self.files.get(message["file"])
        encl = file.encl if file is not None else None
        if encl is None:
            return pack(Msg.FAST_FILES, status=-errno.EINVAL), ()
        evm = self.driver.evm
        client_files = getattr(evm, "client_files", None)
        if client_files is None:
            return pack(Msg.FAST_FILES, status=-errno.EOPNOTSUPP), ()
        try:
            fds = client_files(encl.secs_page, message["tcs"])
        except (Fault, VsgxError) as exc:
            if os.environ.get("VSGX_EXEC_DEBUG"):
                self.log(f"pid {self.pid}: no fast path for TCS {message['tcs']:#x}: {exc}")
            return pack(Msg.FAST_FILES, status=-errno.EOPNOTSUPP), ()
        return pack(Msg.FAST_FILES), tuple(fds)

    def _continue(self, message: Decoded) -> bytes:
        """An entry the TCS's runner handed over to the EVM: the EVM goes on
        with it, this process's threads serve its pages."""
        file = self.files.get(message["file"])
        encl = file.encl if file is not None else None
        regs = [0] * REGISTER_COUNT
        if encl is None:
            return pack(Msg.EXIT, kind=ExitKind.LOST, status=-errno.EINVAL, regs=regs)
        try:
            result = self.driver.continue_entry(encl, message["tcs"], message["aep"],
                                                (message["fsbase"], message["gsbase"]),
                                                self.memory)
        except Fault as fault:
            return pack(Msg.EXIT, kind=ExitKind.FAULT, vector=int(fault.vector),
                        error_code=fault.error_code & 0xFFFFFFFF,
                        address=fault.address & ((1 << 64) - 1), regs=regs)
        except (EnclaveLost, DriverError, VsgxError) as exc:
            self.log(f"pid {self.pid}: the entry failed: {exc}")
            return pack(Msg.EXIT, kind=ExitKind.LOST, status=-errno.EIO, regs=regs)
        return self._exit_message(result)

    @staticmethod
    def _pushed(message: Decoded) -> dict[int, tuple[bytes, bool] | None]:
        pages: dict[int, tuple[bytes, bool] | None] = {}
        blob, position = message.payload, 0
        for _ in range(message["pushed"]):
            if position + _PUSHED.size > len(blob):
                raise DeviceProtocolError("ENTER: pushed pages are cut short")
            address, state, _ = _PUSHED.unpack_from(blob, position)
            position += _PUSHED.size
            if address % PAGE_SIZE:
                raise DeviceProtocolError("ENTER: a pushed page is not aligned")
            if state == PageState.MISSING:
                pages[address] = None
                continue
            data = blob[position:position + PAGE_SIZE]
            if len(data) != PAGE_SIZE:
                raise DeviceProtocolError("ENTER: a pushed page is cut short")
            position += PAGE_SIZE
            pages[address] = (data, state == PageState.WRITABLE)
        return pages

    def _cpuid_sites(self, message: Decoded) -> bytes:
        count, length = message["segments"], message["path_length"]
        blob = message.payload
        if count > 64 or len(blob) != count * 16 + length:
            raise DeviceProtocolError("CPUID_SITES: segments and path do not add up")
        segments = [struct.unpack_from("<QQ", blob, 16 * i) for i in range(count)]
        path = blob[count * 16:].decode(errors="surrogateescape")
        identity = FileIdentity(message["dev"], message["ino"], message["size"],
                                message["mtime_ns"])
        try:
            sites = cpuid_sites(path, identity, segments)
        except CpuidSitesError as exc:
            self.log(f"CPUID of {path} stays the host's: {exc}")
            return pack(Msg.SITES, status=-errno.ESTALE)
        return pack(Msg.SITES, struct.pack(f"<{len(sites)}Q", *sites), count=len(sites))


class SpareThreads:
    """Threads started ahead for the first jobs: starting a thread costs
    0.3-3 ms on a busy VM, which the program's first device use or first
    thread would wait for. Later jobs get a thread of their own."""

    def __init__(self, count: int):
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], str]] = queue.SimpleQueue()
        self._idle = count
        self._lock = threading.Lock()
        for _ in range(count):
            threading.Thread(target=self._wait, daemon=True, name="spare").start()

    def _wait(self) -> None:
        job, name = self._jobs.get()
        threading.current_thread().name = name
        job()

    def start(self, job: Callable[[], None], name: str) -> None:
        with self._lock:
            spare = self._idle > 0
            self._idle -= spare
        if spare:
            self._jobs.put((job, name))
        else:
            threading.Thread(target=job, daemon=True, name=name).start()


class Launcher:
    """Serves the sessions that reach it over a control socket.

    ``spare`` is a connection to the EVM made already (the one vsgx exec
    asked the CPUID model over): the first session takes it, if it comes
    within SPARE_SECONDS, instead of making its own (a TLS handshake and
    the EVM's new session, milliseconds that the first ENCLAVE_CREATE
    would otherwise wait for)."""

    SPARE_SECONDS = 60.0  # well within an EVM's idle timeout (600 s by default)

    def __init__(self, connect_evm: EvmFactory, *, log: Callable[[str], None] | None = None,
                 spare: Any = None):
        self.connect_evm = connect_evm
        self.log = log or (lambda text: print(f"vsgx exec: {text}", file=sys.stderr, flush=True))
        self.sessions: list[Session] = []
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._spare = (time.monotonic(), spare) if spare is not None else None
        # the first session's thread and its first channel's
        self.threads = SpareThreads(2)

    def take_connection(self) -> Any:
        """A connection to the EVM for a new session: the spare while it is
        fresh, else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            made, evm = spare
            if time.monotonic() - made < self.SPARE_SECONDS:
                return evm
            evm.close()
        return self.connect_evm()

    def control_socket(self) -> int:
        """A control socket for the program: the inheritable descriptor to
        hand it (VSGX_EXEC_FD); the launcher serves the other end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        self._control = ours
        threading.Thread(target=self._serve_control, args=(ours,), daemon=True,
                         name="control").start()
        fd = theirs.detach()
        return fd

    def serve_fd(self, fd: int) -> None:
        """Serve an inherited control socket (a self-starting library)."""
        sock = socket.socket(fileno=fd)
        self._control = sock
        self._serve_control(sock)

    def _serve_control(self, sock: socket.socket) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 4096, 1)
            except OSError:
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                return
            try:
                message = unpack(data)
            except DeviceProtocolError:
                message = None
            if (message is None or message.msg != Msg.SESSION or len(fds) != 1
                    or message["version"] != VERSION):
                for fd in fds:
                    os.close(fd)
                if message is not None and message.msg == Msg.SESSION:
                    self.log(f"pid {message['pid']} speaks protocol {message['version']}, "
                             f"not {VERSION}")
                continue
            session = Session(self, socket.socket(fileno=fds[0]), message["pid"])
            with self._lock:
                self.sessions.append(session)
            self.threads.start(session.serve, f"session {message['pid']}")

    def forget(self, session: Session) -> None:
        with self._lock:
            if session in self.sessions:
                self.sessions.remove(session)

    def close(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].close()
        if self._control is not None:
            try:
                self._control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._control.close()
        for session in list(self.sessions):
            session.close()


def cpuid_model_text(cpuid: Any) -> str:
    """CPUID 0x12 sub-leaves 0, 1 and the EPC sections as the library reads
    them from VSGX_EXEC_CPUID: 8 hex digits per register."""
    count = 2 + len(cpuid.epc_sections)
    return "".join(f"{value & 0xFFFFFFFF:08x}" for i in range(count) for value in cpuid.leaf(i))


__all__ = ["Launcher", "ProgramMemory", "Session", "cpuid_model_text"]
