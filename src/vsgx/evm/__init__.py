"""The enclave VM: the EPC and EPCM, every ENCLS/ENCLU leaf, enclave threads
on an executor, platform keys, the quoting and launch enclaves, and the
manager that serves AVM sessions over the channel.

These names are the layer's public face: what the host, CLI and users may
rely on. Everything else in the package is private by convention (tests of
the leaf core reach into ``vsgx.evm.encls`` and friends on purpose).

The names load on first use, so that importing one part of the package (a
leaf unit test importing ``vsgx.evm.encls``, say) does not import the
executors, Unicorn, the runner builder and the quoting enclave.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {
    # the machine, its configuration and secrets
    "EnclaveVM": ("vsgx.evm.vm", "EnclaveVM"),
    "EXECUTORS": ("vsgx.evm.vm", "EXECUTORS"),
    "executor_factory": ("vsgx.evm.vm", "executor_factory"),
    "Machine": ("vsgx.evm.machine", "Machine"),
    "PlatformConfig": ("vsgx.evm.platform", "PlatformConfig"),
    "PlatformSecrets": ("vsgx.evm.platform", "PlatformSecrets"),
    "LaunchPolicy": ("vsgx.evm.platform", "LaunchPolicy"),
    "INTEL_LE_PUBKEY_HASH": ("vsgx.evm.platform", "INTEL_LE_PUBKEY_HASH"),
    "SECRET_FILE": ("vsgx.evm.platform", "SECRET_FILE"),
    "data_dir": ("vsgx.evm.platform", "data_dir"),
    "load_root_secret": ("vsgx.evm.platform", "load_root_secret"),
    # what an entry returns, and the executor interface a new executor implements
    "EnclaveExit": ("vsgx.evm.thread", "EnclaveExit"),
    "ExecutorFactory": ("vsgx.evm.executor", "ExecutorFactory"),
    "ThreadExecutor": ("vsgx.evm.executor", "ThreadExecutor"),
    "UntrustedMemory": ("vsgx.evm.executor", "UntrustedMemory"),
    "native_support": ("vsgx.evm.native_executor", "native_support"),
    "native_isolation": ("vsgx.evm.native_executor", "native_isolation"),
    "fast_client_from_files": ("vsgx.evm.native_executor", "fast_client_from_files"),
    # the runner's shared areas as C declares them (the fast path's clients)
    "runner_c_header": ("vsgx.evm.runner.layout", "c_header"),
    "ExecutorCapability": ("vsgx.evm.executor", "ExecutorCapability"),
    # serving AVMs
    "EnclaveManager": ("vsgx.evm.manager", "EnclaveManager"),
    "Admission": ("vsgx.evm.manager", "Admission"),
    # the architectural enclaves
    "QuotingEnclave": ("vsgx.evm.quoting", "QuotingEnclave"),
    "QuotingError": ("vsgx.evm.quoting", "QuotingError"),
    "quoting_enclave": ("vsgx.evm.quoting", "quoting_enclave"),
    "ATTESTATION_DIR": ("vsgx.evm.quoting", "ATTESTATION_DIR"),
    "ROOT_CA_FILE": ("vsgx.evm.quoting", "ROOT_CA_FILE"),
    "LaunchEnclave": ("vsgx.evm.launch", "LaunchEnclave"),
    "LaunchEnclavePolicy": ("vsgx.evm.launch", "LaunchPolicy"),
    "launch_enclave": ("vsgx.evm.launch", "launch_enclave"),
}

__all__ = [
    "ATTESTATION_DIR",
    "EXECUTORS",
    "INTEL_LE_PUBKEY_HASH",
    "ROOT_CA_FILE",
    "SECRET_FILE",
    "Admission",
    "EnclaveExit",
    "EnclaveManager",
    "EnclaveVM",
    "ExecutorCapability",
    "ExecutorFactory",
    "LaunchEnclave",
    "LaunchEnclavePolicy",
    "LaunchPolicy",
    "Machine",
    "PlatformConfig",
    "PlatformSecrets",
    "QuotingEnclave",
    "QuotingError",
    "ThreadExecutor",
    "UntrustedMemory",
    "data_dir",
    "executor_factory",
    "fast_client_from_files",
    "launch_enclave",
    "load_root_secret",
    "native_isolation",
    "native_support",
    "quoting_enclave",
    "runner_c_header",
]

if TYPE_CHECKING:
    from vsgx.evm.executor import (
        ExecutorCapability,
        ExecutorFactory,
        ThreadExecutor,
        UntrustedMemory,
    )
    from vsgx.evm.launch import LaunchEnclave, launch_enclave
    from vsgx.evm.launch import LaunchPolicy as LaunchEnclavePolicy
    from vsgx.evm.machine import Machine
    from vsgx.evm.manager import Admission, EnclaveManager
    from vsgx.evm.native_executor import (
        fast_client_from_files,
        native_isolation,
        native_support,
    )
    from vsgx.evm.platform import (
        INTEL_LE_PUBKEY_HASH,
        SECRET_FILE,
        LaunchPolicy,
        PlatformConfig,
        PlatformSecrets,
        data_dir,
        load_root_secret,
    )
    from vsgx.evm.quoting import (
        ATTESTATION_DIR,
        ROOT_CA_FILE,
        QuotingEnclave,
        QuotingError,
        quoting_enclave,
    )
    from vsgx.evm.runner.layout import c_header as runner_c_header
    from vsgx.evm.thread import EnclaveExit
    from vsgx.evm.vm import EXECUTORS, EnclaveVM, executor_factory
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
