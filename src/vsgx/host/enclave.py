"""The Python host API: load an enclave into an EVM through the AVM driver
and enter it with raw EENTER semantics.

    with Enclave.load("enclave.signed.so") as enclave:
        result = enclave.eenter(rdi=0, rsi=21)
        print(result.rsi)

An ``Avm`` is the application side: its address space (untrusted memory),
its driver, and the EVM it talks to — in this process by default, or a
separate EVM process (``evm="unix:/path"``, ``"tcp:host:port"``,
``"vsock:cid:port"``).

An EVM object in this process is reached as any other EVM is: through a
session of its enclave manager (``local_manager``), over the in-memory
channel transport, so the session's EPC slice and ownership checks apply
here too. One EVM object has one such session and one driver, as one
machine has one EPC allocator: every ``Avm`` made for the same EVM object
shares them (``connect(evm)`` returns the same ``Avm``), so enclaves loaded
through any of them never collide. A second session of the same EVM (a
second application, with its own slice) is
``Avm(RemoteEvm(local_manager(vm, ...).open_local()))``.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsgx.arch.constants import PAGE_SIZE, Enclu, ExitKind
from vsgx.arch.errors import Fault
from vsgx.arch.registers import REG_NAMES
from vsgx.avm import AddressSpace, DriverEnclave, EnclaveLost, SgxDriver, load_plan
from vsgx.errors import VsgxError
from vsgx.image import BuildPlan, plan_from_bytes

REGISTERS = REG_NAMES
_INDEX = {name: i for i, name in enumerate(REGISTERS)}
STACK_SIZE = 256 * 1024


@dataclass
class Exit:
    """How an entry came back: ``kind`` is ExitKind.EEXIT or ExitKind.AEX
    (equal to the strings "eexit" and "aex")."""

    kind: ExitKind
    registers: dict[str, int]
    vector: int = 0
    error_code: int = 0
    address: int = 0
    exitinfo_valid: bool = False
    tcs: int = 0

    @property
    def aex(self) -> bool:
        return self.kind is ExitKind.AEX

    def __getattr__(self, name: str) -> int:
        registers: dict[str, int] = self.__dict__.get("registers", {})
        if name in registers:
            return registers[name]
        raise AttributeError(name)

    def describe(self) -> str:
        if not self.aex:
            return "EEXIT"
        return (f"AEX vector {self.vector} error code {self.error_code:#x} "
                f"address {self.address:#x}")


_managers_lock = threading.Lock()


def local_manager(vm: Any, *, session_epc_pages: int | None = None) -> Any:
    """The enclave manager that serves in-process sessions of ``vm`` (an
    EnclaveVM), made on first use. Its sessions get ``session_epc_pages``
    of EPC each; by default one session gets all of it (an in-process EVM
    serves one application unless told otherwise)."""
    from vsgx.evm import EnclaveManager

    with _managers_lock:
        manager = vm.local_sessions
        if manager is None:
            manager = EnclaveManager(vm, session_epc_pages=session_epc_pages
                                     or vm.config.epc_pages)
            vm.local_sessions = manager
        elif session_epc_pages is not None and session_epc_pages != manager.session_pages:
            raise VsgxError(f"this EVM already serves sessions of {manager.session_pages} EPC "
                            f"pages, not {session_epc_pages}")
        return manager


def _is_vm(evm: Any) -> bool:
    from vsgx.evm import EnclaveVM

    return isinstance(evm, EnclaveVM)


class _SharedDriver:
    """The driver of one EVM object and the Avms that use it: for an EVM
    in this process, over its session (``link``)."""

    def __init__(self, evm: Any):
        if _is_vm(evm):
            from vsgx.avm import RemoteEvm

            self.link: Any = RemoteEvm(local_manager(evm).open_local())
        else:
            self.link = evm
        self.driver = SgxDriver(self.link)
        self.avms: weakref.WeakSet[Avm] = weakref.WeakSet()


_drivers: weakref.WeakKeyDictionary[Any, _SharedDriver] = weakref.WeakKeyDictionary()
_drivers_lock = threading.RLock()


def _offer_fast_path(link: Any) -> None:
    """An EVM on this host (a Unix socket) hands out its runners' files:
    entries then go straight to the TCS's runner, as in-process ones do,
    where this process can build the client (the native executor's
    runner/client.c)."""
    from vsgx.avm import RemoteEvm

    if not isinstance(link, RemoteEvm) or link.client_socket is None \
            or link.fast_clients is not None:
        return
    from vsgx.evm import fast_client_from_files, native_support

    if native_support()[0]:
        link.fast_clients = fast_client_from_files


class Avm:
    """The application VM side of one process: memory, driver, EVM link."""

    def __init__(self, evm: Any):
        self.evm = evm  # what it was made for (an EnclaveVM, or an EVM session)
        self.link: Any = evm  # the EVM session the driver talks through
        self.memory = AddressSpace()
        self._enclaves: set[int] = set()  # SECS pages of the enclaves loaded through it
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        attach = None if _is_vm(evm) else getattr(evm, "attach_memory", None)
        with _drivers_lock:
            try:
                shared = _drivers.get(evm)
            except TypeError:  # an EVM that cannot be weakly referenced: its own driver
                shared = None
                self._shared: _SharedDriver | None = None
                self.driver = SgxDriver(evm)
            else:
                if shared is None:
                    shared = _SharedDriver(evm)
                    _drivers[evm] = shared
                live = [avm for avm in shared.avms if not avm._closed]
                if live and attach is not None:
                    # A connection's page server serves one address space.
                    raise VsgxError("this EVM connection already serves another Avm: share "
                                    "it (vsgx.host.connect(evm) returns it) or connect again")
                shared.avms.add(self)
                self._shared = shared
                self.driver = shared.driver
                self.link = shared.link
        if attach is not None:
            attach(self.memory)
        _offer_fast_path(self.link)

    @classmethod
    def of(cls, evm: Any) -> Avm:
        """The live Avm of an EVM object, made on first use."""
        with _drivers_lock:
            try:
                shared = _drivers.get(evm)
            except TypeError:
                shared = None
            if shared is not None:
                for avm in shared.avms:
                    if not avm._closed:
                        return avm
            return cls(evm)

    def track(self, encl: DriverEnclave) -> None:
        """An enclave this Avm loaded (``close`` destroys it)."""
        with self._lock:
            self._enclaves.add(encl.secs_page)

    def untrack(self, encl: DriverEnclave) -> None:
        with self._lock:
            self._enclaves.discard(encl.secs_page)

    def stack_top(self) -> int:
        """This thread's untrusted stack (the RSP an ENCLU runs with)."""
        top = getattr(self._local, "stack_top", None)
        if top is None:
            bottom = self.memory.alloc(STACK_SIZE)
            top = bottom + STACK_SIZE - 64
            self._local.stack_top = top
        return top

    def close(self) -> None:
        """Destroy the enclaves loaded through this Avm (all of the driver's
        when no other Avm shares it), then close the EVM link."""
        with _drivers_lock:
            if self._closed:
                return
            self._closed = True
            alone = self._shared is None or not any(
                avm is not self and not avm._closed for avm in self._shared.avms)
        with self._lock:
            own = set(self._enclaves)
        for encl in list(self.driver.enclaves.values()):
            if not alone and encl.secs_page not in own:
                continue
            try:
                self.driver.destroy(encl)
            except (VsgxError, Fault, OSError):
                pass
        if not alone:
            return
        if self._shared is not None and self._shared.link is not self.evm:
            # The session of an in-process EVM ends with its last Avm: the
            # next one opens a new one.
            with _drivers_lock:
                if _drivers.get(self.evm) is self._shared:
                    del _drivers[self.evm]
        close = getattr(self.link, "close", None)
        if close is not None:
            close()


_default_avm: Avm | None = None
_default_lock = threading.Lock()


def default_avm() -> Avm:
    """The process's AVM with an in-process EVM (created on first use)."""
    global _default_avm
    with _default_lock:
        if _default_avm is None:
            from vsgx.evm import EnclaveVM

            _default_avm = Avm(EnclaveVM())
        return _default_avm


def connect(evm: Any = None, policy: Any = None) -> Avm:
    """An AVM for ``evm``: None (this process's in-process EVM), an EVM
    object (its one live Avm), or an address string of an EVM process (a
    new session), whose evidence must satisfy ``policy`` (a
    ``vsgx.channel.EvidencePolicy``; default: an unattested EVM only on
    this machine)."""
    if policy is not None and not isinstance(evm, str):
        raise VsgxError("an evidence policy applies to an EVM address (evm=\"tcp:...\")")
    if evm is None:
        return default_avm()
    if isinstance(evm, Avm):
        if evm._closed:
            raise VsgxError("this Avm was closed")
        return evm
    if isinstance(evm, str):
        from vsgx.host.remote import connect_evm

        return Avm(connect_evm(evm, policy))
    return Avm.of(evm)


class Enclave:
    def __init__(self, avm: Avm, driver_enclave: DriverEnclave, plan: BuildPlan,
                 owns_avm: bool = False):
        self.avm = avm
        self.handle = driver_enclave
        self.plan = plan
        self.base = driver_enclave.base
        self.size = driver_enclave.size
        self.tcs = [self.base + offset for offset in plan.tcs_offsets]
        self._free_tcs = list(reversed(self.tcs))
        self._tcs_lock = threading.Condition()
        self._owns_avm = owns_avm
        self.closed = False

    # -- loading ----------------------------------------------------------------
    @classmethod
    def load(cls, enclave: str | Path | bytes | BuildPlan, *, sigstruct: str | Path | None = None,
             evm: Any = None, debug: bool = True, policy: Any = None) -> Enclave:
        """Load an SDK-signed enclave, or a plain ELF with its SIGSTRUCT
        (``sigstruct``, default ``ENCLAVE.sig``); ``policy`` is what an EVM
        at the address ``evm`` must prove (see ``connect``)."""
        plan = enclave if isinstance(enclave, BuildPlan) else _plan(enclave, sigstruct)
        owns = isinstance(evm, str)
        avm = connect(evm, policy)
        try:
            handle = load_plan(avm.driver, avm.memory, plan, debug=debug)
        except Fault as fault:
            if owns:
                avm.close()
            raise VsgxError(f"loading the enclave faulted in the EVM: {fault}") from None
        except BaseException:
            if owns:
                avm.close()
            raise
        avm.track(handle)
        return cls(avm, handle, plan, owns_avm=owns)

    # -- untrusted memory ------------------------------------------------------
    @property
    def memory(self) -> AddressSpace:
        return self.avm.memory

    def alloc(self, size: int, data: bytes = b"") -> int:
        return self.avm.memory.alloc(max(size, len(data), 1), init=data)

    def read(self, address: int, size: int) -> bytes:
        return self.avm.memory.read(address, size)

    def write(self, address: int, data: bytes) -> None:
        self.avm.memory.write(address, data)

    # -- entering ----------------------------------------------------------------
    def acquire_tcs(self) -> int:
        with self._tcs_lock:
            while not self._free_tcs:
                self._tcs_lock.wait()
            return self._free_tcs.pop()

    def release_tcs(self, tcs: int) -> None:
        with self._tcs_lock:
            self._free_tcs.append(tcs)
            self._tcs_lock.notify()

    def entry_registers(self, tcs: int, values: dict[str, int]) -> list[int]:
        """The registers an entry on ``tcs`` starts with: ``values`` (by
        name), RBX = the TCS, RCX = the AEP, the AVM's stack, RFLAGS.IF."""
        registers = [0] * len(REGISTERS)
        registers[_INDEX["rsp"]] = registers[_INDEX["rbp"]] = self.avm.stack_top()
        registers[_INDEX["rflags"]] = 0x202
        for name, value in values.items():
            if name not in _INDEX:
                raise VsgxError(f"unknown register {name!r}")
            registers[_INDEX[name]] = value & ((1 << 64) - 1)
        registers[_INDEX["rbx"]] = tcs
        registers[_INDEX["rcx"]] = self.avm.memory.return_rip  # the AEP
        return registers

    def _exit(self, result: Any, tcs: int) -> Exit:
        return Exit(result.kind, dict(zip(REGISTERS, result.registers, strict=True)),
                    result.vector, result.error_code, result.address, result.exitinfo_valid,
                    tcs)

    def _live(self) -> None:
        if self.closed or self.handle.destroyed:
            raise EnclaveLost("the enclave was destroyed")

    def _enter(self, leaf: int, tcs: int, registers: list[int]) -> Exit:
        self._live()
        memory = self.avm.memory
        result = self.avm.driver.enter(self.handle, leaf, registers, memory.return_rip, memory)
        return self._exit(result, tcs)

    def eenter(self, tcs: int | None = None, **registers: int) -> Exit:
        """EENTER on ``tcs`` (default: a free TCS, held for the call) with the
        given registers (rdi, rsi, rdx, r8, r9, ...). Faults of the ENCLU
        itself (a busy TCS, CSSA == NSSA) raise ``Fault``."""
        if tcs is not None:
            return self._enter(Enclu.EENTER, tcs, self.entry_registers(tcs, registers))
        chosen = self.acquire_tcs()
        try:
            return self._enter(Enclu.EENTER, chosen, self.entry_registers(chosen, registers))
        finally:
            self.release_tcs(chosen)

    def eresume(self, tcs: int, **registers: int) -> Exit:
        """ERESUME a TCS after an AEX."""
        return self._enter(Enclu.ERESUME, tcs, self.entry_registers(tcs, registers))

    # -- SGX2 and page management, as the driver's ioctls ----------------------
    def restrict_permissions(self, address: int, length: int, permissions: int) -> int:
        self._live()
        return self.avm.driver.restrict_permissions(self.handle, address - self.base, length,
                                                    permissions)

    def modify_types(self, address: int, length: int, page_type: int) -> int:
        self._live()
        return self.avm.driver.modify_types(self.handle, address - self.base, length, page_type)

    def remove_pages(self, address: int, length: int) -> int:
        self._live()
        return self.avm.driver.remove_pages(self.handle, address - self.base, length)

    def mprotect(self, address: int, length: int, prot: int) -> None:
        self._live()
        self.avm.driver.mprotect(self.handle, address, length, prot)

    @property
    def page_size(self) -> int:
        return PAGE_SIZE

    # -- lifetime ------------------------------------------------------------------
    def destroy(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.avm.driver.destroy(self.handle)
        except Fault as fault:
            raise VsgxError(f"destroying the enclave faulted in the EVM: {fault}") from None
        finally:
            self.avm.untrack(self.handle)
            if self._owns_avm:
                self.avm.close()

    def __enter__(self) -> Enclave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _plan(enclave: str | Path | bytes, sigstruct: str | Path | None) -> BuildPlan:
    if isinstance(enclave, bytes):
        data = enclave
        side = Path(sigstruct).read_bytes() if sigstruct else None
    else:
        path = Path(enclave)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VsgxError(f"cannot read enclave {path}: {exc.strerror}") from None
        side_path = Path(sigstruct) if sigstruct else path.with_name(path.name + ".sig")
        side = side_path.read_bytes() if side_path.is_file() else None
    return plan_from_bytes(data, side)
