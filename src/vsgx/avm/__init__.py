"""The application VM's side: the SGX driver (enclave objects, EPC
accounting and reclaim, ioctl semantics turned into ENCLS messages), the
loader of build plans, the application's untrusted memory and the page
server the EVM fetches from, the channel client of a remote EVM, and aesmd.

These names are the layer's public face: what the host, SDK, native layer
and users may rely on. Two modules are public as a whole because each is an
interface of its own: ``vsgx.avm.uapi``, the ``/dev/sgx_enclave`` ioctl ABI
(numbers, structures and their checks, as Linux's uapi ``sgx.h``), and
``vsgx.avm.aesmd``, aesmd's socket protocol. The rest is private by
convention.

The names load on first use, as in ``vsgx.evm``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    "SgxDriver": ("vsgx.avm.driver", "SgxDriver"),
    "DriverEnclave": ("vsgx.avm.driver", "DriverEnclave"),
    "EnclavePage": ("vsgx.avm.driver", "EnclavePage"),
    "DriverError": ("vsgx.avm.driver", "DriverError"),
    "EnclaveLost": ("vsgx.avm.driver", "EnclaveLost"),
    "AddRun": ("vsgx.avm.driver", "AddRun"),
    "load_plan": ("vsgx.avm.loader", "load_plan"),
    "check_fits": ("vsgx.avm.loader", "check_fits"),
    "EnclaveTooLarge": ("vsgx.avm.loader", "EnclaveTooLarge"),
    "AddressSpace": ("vsgx.avm.memory", "AddressSpace"),
    "UnmappedMemory": ("vsgx.avm.memory", "UnmappedMemory"),
    "RemoteEvm": ("vsgx.avm.remote", "RemoteEvm"),
    "EvmRefused": ("vsgx.avm.remote", "EvmRefused"),
    "connect_evm": ("vsgx.avm.remote", "connect_evm"),
    "set_defaults": ("vsgx.avm.remote", "set_defaults"),
    "NO_SEV_BANNER": ("vsgx.avm.remote", "NO_SEV_BANNER"),
    "EnclaveFile": ("vsgx.avm.uapi", "EnclaveFile"),
    "ProgramDriver": ("vsgx.avm.uapi", "ProgramDriver"),
    "AesmdService": ("vsgx.avm.aesmd", "AesmdService"),
    "EvmBackend": ("vsgx.avm.aesmd", "EvmBackend"),
}

__all__ = [
    "NO_SEV_BANNER",
    "AddRun",
    "AddressSpace",
    "AesmdService",
    "DriverEnclave",
    "DriverError",
    "EnclaveFile",
    "EnclaveLost",
    "EnclavePage",
    "EnclaveTooLarge",
    "EvmBackend",
    "EvmRefused",
    "ProgramDriver",
    "RemoteEvm",
    "SgxDriver",
    "UnmappedMemory",
    "check_fits",
    "connect_evm",
    "load_plan",
    "set_defaults"
]

if TYPE_CHECKING:
    from vsgx.avm.aesmd import AesmdService, EvmBackend
    from vsgx.avm.driver import (
        AddRun,
        DriverEnclave,
        DriverError,
        EnclaveLost,
        EnclavePage,
        SgxDriver,
    )
    from vsgx.avm.loader import EnclaveTooLarge, check_fits, load_plan
    from vsgx.avm.memory import AddressSpace, UnmappedMemory
    from vsgx.avm.remote import NO_SEV_BANNER, EvmRefused, RemoteEvm, connect_evm, set_defaults
    from vsgx.avm.uapi import EnclaveFile, ProgramDriver
else:
    def __getattr__(name: str) -> object:
        try:
            module, attribute = _EXPORTS[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # found once
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
