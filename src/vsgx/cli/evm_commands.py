"""`vsgx evm serve` and `vsgx run`."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from vsgx.cli.commands import describe, load_plan, print_inspection
from vsgx.cli.main import command
from vsgx.errors import VsgxError


@command("evm serve")
def cmd_evm_serve(args: argparse.Namespace) -> int:
    from vsgx.evm.manager import EnclaveManager
    from vsgx.evm.platform import SECRET_FILE, PlatformConfig
    from vsgx.evm.vm import EnclaveVM

    if args.epc_mib <= 0 or args.session_epc_mib <= 0:
        raise VsgxError("EPC sizes must be positive")
    secret = Path(args.data_dir) / SECRET_FILE if args.data_dir else None
    config = PlatformConfig(epc_pages=args.epc_mib * 256)
    vm = EnclaveVM(config, secret_path=secret, executor=args.executor)
    manager = EnclaveManager(vm, session_epc_pages=args.session_epc_mib * 256,
                             evidence=args.evidence)

    def stop(*_: object) -> None:
        manager.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready = threading.Event()

    def announce() -> None:
        sessions = config.epc_pages // manager.session_pages
        print(f"vsgx evm: serving on {args.listen} (pid {os.getpid()}): EPC {args.epc_mib} MiB, "
              f"{sessions} sessions of {manager.session_pages // 256} MiB, executor "
              f"{vm.executor_factory.name}, evidence {args.evidence}", flush=True)
        if args.evidence == "none":
            print("vsgx evm: WARNING: no SEV protection here: enclave memory is protected by "
                  "process isolation only", flush=True)
        ready.set()

    manager.serve(args.listen, ready=announce)
    print(f"vsgx evm: stopped after {manager.sessions_served} sessions", flush=True)
    return 0


def _registers(text: str | None) -> dict[str, int]:
    values: dict[str, int] = {}
    if not text:
        return values
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            values[name.strip().lower()] = int(value, 0)
        except ValueError:
            raise VsgxError(f"--enter: {item!r} is not REG=VALUE") from None
    return values


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from vsgx.host import Enclave

    plan = load_plan(args.enclave, args.sigstruct)
    with Enclave.load(plan, evm=args.evm, debug=not args.production) as enclave:
        info = describe(plan)
        print_inspection(args.enclave, plan, info, layout=False)
        print(f"loaded         at {enclave.base:#x} ({'production' if args.production else 'debug'}"
              f"), EINIT ok, {len(enclave.tcs)} TCS, EVM {args.evm or 'in this process'}")
        if args.enter is not None:
            result = enclave.eenter(**_registers(args.enter))
            print(f"EENTER         -> {result.describe()}")
            for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9"):
                print(f"  {name:4s} {result.registers[name]:#018x}")
    return 0
