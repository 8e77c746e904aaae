"""Intel SGX SDK enclaves from Python.

    from vsgx.sdk import Enclave

    with Enclave.load("enclave.signed.so", edl="Enclave.edl",
                      ocalls={"ocall_print": print}) as enclave:
        enclave.ecall_hello("world")

Loading runs ECMD_INIT_ENCLAVE (the trts's own initialisation). Every
ECALL of the EDL is an attribute; see ``EcallProxy`` for how arguments and
results map to C. OCALLs the SDK's trusted libraries make
(``sgx_oc_cpuidex``, the ``sgx_thread_*`` events, the pthread ones, SGX
SSL's time) are served unless ``ocalls`` overrides them; any other OCALL
needs a handler, and one without a handler fails the ECALL with an error
naming it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsgx.crypto.sigstruct import mrsigner
from vsgx.errors import VsgxError
from vsgx.host.enclave import Enclave as RawEnclave
from vsgx.image import BuildPlan
from vsgx.sdk import edl as edl_module
from vsgx.sdk.bridges import EcallProxy, OcallBridge, SizeFunc, check_function
from vsgx.sdk.ctypes_sysv import TypeSystem
from vsgx.sdk.stdocalls import StandardOcalls
from vsgx.sdk.urts import Urts

Handler = Callable[..., Any]


class Enclave:
    def __init__(self, raw: RawEnclave, interface: edl_module.Enclave | None,
                 ocalls: dict[str, Handler] | None = None,
                 types: dict[str, int | tuple[int, int]] | None = None,
                 sizefuncs: dict[str, SizeFunc] | None = None):
        if raw.plan.format != "sgx-sdk":
            raise VsgxError("the SDK protocol needs an enclave signed in the SDK's format "
                            "(.signed.so with sgx_metadata); this one is "
                            f"{raw.plan.format or 'a plain ELF'}")
        self.raw = raw
        # Intel's urts maps what it did not EADD PROT_NONE when EDMM is off
        # (always, here): guard pages fault into the enclave's handlers.
        raw.handle.holes_accessible = False
        self.interface = interface
        self.urts = Urts(raw, bind=raw.plan.details.get("tcs_policy") == "bind")
        self.standard = StandardOcalls(self.urts)
        self.types = TypeSystem(interface.composites if interface else {},
                                interface.enum_types if interface else set(), types)
        self.sizefuncs: dict[str, SizeFunc] = dict(sizefuncs or {})
        # Proxies are made on first use: an ECALL whose types vsgx does not
        # know fails alone, naming them; the rest of the EDL stays usable.
        self._proxies: dict[str, EcallProxy] = {}
        self._ordinals = {f.name: i for i, f in enumerate(interface.ecalls)} \
            if interface is not None else {}
        self._proxy_lock = threading.Lock()
        self._install_ocalls(ocalls or {})

    @classmethod
    def load(cls, enclave: str | Path | bytes | BuildPlan,
             edl: str | Path | edl_module.Enclave | None = None,
             ocalls: dict[str, Handler] | None = None, *,
             types: dict[str, int | tuple[int, int]] | None = None,
             sizefuncs: dict[str, SizeFunc] | None = None,
             edl_paths: list[str | Path] | None = None, evm: Any = None,
             debug: bool = True, policy: Any = None) -> Enclave:
        """Load, EINIT and initialise an SDK-signed enclave. ``evm`` is None
        (an EVM in this process), an EnclaveVM or Avm, or an EVM address
        ("unix:/path", ...) whose evidence must satisfy ``policy`` (a
        ``vsgx.channel.EvidencePolicy``; default: unattested only on this
        machine).

        ``types`` gives the sizes of types the EDL only includes: SIZE or
        (SIZE, ALIGN); ``"*name"`` is what an ``[isptr] name`` points to.
        ``sizefuncs`` are the untrusted side's functions of SDK 1.x
        ``[sizefunc=f]`` attributes: each gets the buffer (bytes, or a view
        of untrusted memory in an OCALL) and returns its size in bytes."""
        if isinstance(edl, edl_module.Enclave):
            interface: edl_module.Enclave | None = edl  # already read (load_edl)
        else:
            interface = edl_module.load_edl(edl, [Path(p) for p in edl_paths or []]) \
                if edl is not None else None
        if ocalls and interface is None:
            raise VsgxError("OCALL handlers are matched by name: pass edl= as well")
        raw = RawEnclave.load(enclave, evm=evm, debug=debug, policy=policy)
        try:
            self = cls(raw, interface, ocalls, types, sizefuncs)
            self.urts.initialize()
        except BaseException:
            raw.destroy()
            raise
        return self

    def _install_ocalls(self, handlers: dict[str, Handler]) -> None:
        interface = self.interface
        if interface is None:
            return
        names = [f.name for f in interface.ocalls]
        unknown = set(handlers) - set(names)
        if unknown:
            raise VsgxError(f"the EDL has no OCALL named {', '.join(sorted(unknown))}")
        standard = self.standard.handlers()
        memory = self.raw.avm.memory
        table: list[OcallBridge | None] = []
        for function in interface.ocalls:
            handler = handlers.get(function.name) or standard.get(function.name)
            table.append(OcallBridge(memory, function, self.types, handler, self.sizefuncs)
                         if handler is not None else None)
        self.urts.ocall_names = names
        self.urts.ocalls = list(table)

    def set_ocall(self, name: str, handler: Handler) -> None:
        """Install or replace the handler of one OCALL."""
        if self.interface is None:
            raise VsgxError("OCALL handlers are matched by name: load the enclave with edl=")
        index, function = self.interface.ocall(name)
        self.urts.ocalls[index] = OcallBridge(self.raw.avm.memory, function, self.types,
                                              handler, self.sizefuncs)

    # -- ECALLs ------------------------------------------------------------------
    def __getattr__(self, name: str) -> EcallProxy:
        if name in self.__dict__.get("_ordinals", {}):
            # Kept as an attribute: the next ``enclave.<name>`` is found
            # without this call (no other attribute has the name, or this
            # would not have been called).
            proxy = self.__dict__[name] = self.proxy(name)
            return proxy
        raise AttributeError(f"{type(self).__name__} has no attribute or ECALL {name!r}")

    def proxy(self, name: str) -> EcallProxy:
        """The proxy of one ECALL, made on first use."""
        proxy = self._proxies.get(name)
        if proxy is not None:
            return proxy
        if name not in self._ordinals:
            raise VsgxError(f"the EDL has no ECALL named {name!r}" if self.interface
                            else "ECALLs by name need the EDL (load with edl=)")
        assert self.interface is not None
        ordinal = self._ordinals[name]
        function = self.interface.ecalls[ordinal]
        check_function(function, self.types)  # names the ECALL and the type it lacks
        made = EcallProxy(self.urts, ordinal, function, self.types, self.sizefuncs)
        with self._proxy_lock:
            return self._proxies.setdefault(name, made)

    def ecall(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an ECALL by name (the same as ``enclave.<name>(...)``)."""
        return self.proxy(name)(*args, **kwargs)

    def call(self, ordinal: int, ms: int = 0) -> int:
        """A raw ECALL: ``ordinal`` with the ms struct at untrusted address
        ``ms``; returns the sgx_status_t."""
        if ordinal < 0:
            from vsgx.sdk import status as st

            return st.SGX_ERROR_INVALID_FUNCTION  # sgx_ecall refuses negative ordinals
        return self.urts.call(ordinal, lambda sp: (ms, sp - 64))

    @property
    def ecalls(self) -> list[str]:
        return list(self._ordinals)

    # -- identity and memory ---------------------------------------------------
    @property
    def mrenclave(self) -> bytes:
        sigstruct = self.raw.plan.sigstruct
        return bytes(sigstruct.enclavehash) if sigstruct else b""

    @property
    def mrsigner(self) -> bytes:
        sigstruct = self.raw.plan.sigstruct
        return mrsigner(bytes(sigstruct.modulus)) if sigstruct else b""

    def alloc(self, size: int, data: bytes = b"") -> int:
        """Untrusted memory (for [user_check] pointers)."""
        return self.raw.alloc(size, data)

    def read(self, address: int, size: int) -> bytes:
        return self.raw.read(address, size)

    def write(self, address: int, data: bytes) -> None:
        self.raw.write(address, data)

    # -- lifetime ------------------------------------------------------------------
    def destroy(self) -> None:
        """sgx_destroy_enclave. Without EDMM Intel's urts sends no
        ECMD_UNINIT_ENCLAVE (the trts would mark itself crashed), and neither
        does vsgx: the enclave's pages are simply removed."""
        self.raw.destroy()

    def __enter__(self) -> Enclave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
