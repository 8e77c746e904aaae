"""`vsgx aesmd serve`: an aesmd-compatible socket for out-of-process quoting
and launch tokens, answered by an EVM's quoting and launch enclaves."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from vsgx.cli.main import command
from vsgx.errors import VsgxError


def default_socket() -> str:
    """Intel's path where this user may make it, else a clear error."""
    from vsgx.avm.aesmd import DEFAULT_SOCKET

    folder = Path(DEFAULT_SOCKET).parent
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except OSError:
        pass
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return DEFAULT_SOCKET
    raise VsgxError(f"{folder} is not writable by this user (Intel's aesmd socket lives "
                    f"there): give --socket PATH, or run as a user who may write {folder}")


@command("aesmd serve")
def cmd_aesmd_serve(args: argparse.Namespace) -> int:
    from vsgx.avm.aesmd import AesmdService, EvmBackend
    from vsgx.host.attestation import AttestationBackend, attestation_backend

    path = args.socket or default_socket()
    backend: AttestationBackend
    if args.evm:
        backend = EvmBackend(args.evm)
        where = f"the EVM at {args.evm}"
    else:
        backend = attestation_backend(None)
        where = "an EVM in this process (this user's data directory)"
    service = AesmdService(backend)

    def stop(*_: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def announce() -> None:
        places = [path] + (["the abstract socket sgx_aesm_socket_base (this uid only)"]
                           if args.abstract else [])
        print(f"vsgx aesmd: serving on {' and '.join(places)} (pid {os.getpid()}), quoting "
              f"with {where}", flush=True)
        print("vsgx aesmd: DCAP ECDSA quotes and launch tokens; EPID requests are answered "
              "AESM_SERVICE_UNAVAILABLE", flush=True)

    try:
        service.serve(path, abstract=args.abstract, mode=args.mode, ready=announce)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    print(f"vsgx aesmd: stopped after {service.requests_served} requests", flush=True)
    return 0
