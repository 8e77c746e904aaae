"""`vsgx evm serve` and `vsgx run`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from vsgx.cli.commands import describe, load_plan, print_inspection
from vsgx.cli.main import command
from vsgx.errors import VsgxError


def _fingerprints(args: argparse.Namespace) -> frozenset[str]:
    from vsgx.channel import parse_fingerprint

    texts = list(args.allow_client or [])
    if args.allow_clients_file:
        try:
            lines = Path(args.allow_clients_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise VsgxError(f"cannot read {args.allow_clients_file}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if text:
                try:
                    texts.append(parse_fingerprint(text))
                except VsgxError as exc:
                    raise VsgxError(f"{args.allow_clients_file}:{number}: {exc}") from None
    return frozenset(parse_fingerprint(text) for text in texts)


@command("evm serve")
def cmd_evm_serve(args: argparse.Namespace) -> int:
    from vsgx.channel import parse_address
    from vsgx.channel.identity import SERVER_KEY_FILE
    from vsgx.evm import (
        SECRET_FILE,
        Admission,
        EnclaveManager,
        EnclaveVM,
        LaunchPolicy,
        PlatformConfig,
        data_dir,
    )

    if args.epc_mib <= 0 or args.session_epc_mib <= 0:
        raise VsgxError("EPC sizes must be positive")
    family = parse_address(args.listen, listening=True).family
    clients = _fingerprints(args)
    if family == "unix" and clients:
        raise VsgxError("--allow-client and --allow-clients-file admit TCP and vsock clients; "
                        "a Unix socket admits by uid (--allow-uid)")
    if family != "unix" and args.allow_uid:
        raise VsgxError("--allow-uid admits Unix-socket clients; TCP and vsock admit by key "
                        "(--allow-client)")
    admission = Admission(uids=frozenset(args.allow_uid) if args.allow_uid else None,
                          clients=clients, any_client=args.allow_any_client,
                          max_client_sessions=args.max_client_sessions)
    folder = Path(args.data_dir) if args.data_dir else data_dir()
    # Launch control: flexible (the OS writes each signer into
    # IA32_SGXLEPUBKEYHASH, Linux's way) or locked to the launch enclave's
    # signer (every other enclave needs its EINITTOKEN, as before FLC).
    locked = getattr(args, "launch_control", "flexible") == "locked"
    config = PlatformConfig(epc_pages=args.epc_mib * 256,
                            launch_policy=LaunchPolicy(allowed_signers=frozenset())
                            if locked else LaunchPolicy())
    vm = EnclaveVM(config, secret_path=folder / SECRET_FILE, executor=args.executor,
                   fast_exits=args.fast_exits)
    manager = EnclaveManager(vm, session_epc_pages=args.session_epc_mib * 256,
                             evidence=args.evidence, admission=admission,
                             idle_timeout=args.idle_timeout, peer_timeout=args.peer_timeout,
                             key_path=folder / SERVER_KEY_FILE)

    def stop(*_: object) -> None:
        manager.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def announce() -> None:
        sessions = manager.slice_count
        print(f"vsgx evm: serving on {manager.address} (pid {os.getpid()}): EPC "
              f"{args.epc_mib} MiB, {sessions} sessions of {manager.session_pages // 256} MiB, "
              f"executor {vm.executor_factory.name}, evidence {args.evidence}", flush=True)
        print(f"vsgx evm: TLS key {manager.identity.fingerprint} (an AVM pins it with "
              f"--evm-pin {manager.identity.fingerprint})", flush=True)
        if admission.any_client:
            print("vsgx evm: " + "*" * 66 + "\n"
                  "vsgx evm: WARNING: --allow-any-client: ANY client that reaches "
                  f"{manager.address}\n"
                  "vsgx evm: may open sessions and run any enclave here.\n"
                  "vsgx evm: " + "*" * 66, flush=True)
        elif family == "unix":
            uids = ", ".join(str(uid) for uid in sorted(admission.allowed_uids()))
            print(f"vsgx evm: admits uid {uids}", flush=True)
        elif clients:
            print(f"vsgx evm: admits {len(clients)} client keys: {', '.join(sorted(clients))}",
                  flush=True)
        else:
            print("vsgx evm: admits no client yet: give it --allow-client SHA256 (an AVM "
                  "prints its own with `vsgx evm client-id`)", flush=True)
        print(f"vsgx evm: at most {manager.client_cap()} sessions per client; idle sessions "
              f"close after {args.idle_timeout:g} s", flush=True)
        if vm.executor_factory.name == "native":
            from vsgx.evm import native_isolation

            # which of the sandbox's layers this host gave (README: sandbox)
            print(f"vsgx evm: runners: {native_isolation()}", flush=True)
        if args.evidence == "none":
            print("vsgx evm: WARNING: no SEV protection here: enclave memory is protected by "
                  "process isolation only", flush=True)

    manager.serve(args.listen, ready=announce)
    print(f"vsgx evm: stopped after {manager.sessions_served} sessions", flush=True)
    return 0


@command("evm client-id")
def cmd_evm_client_id(args: argparse.Namespace) -> int:
    from vsgx.channel import ClientIdentity

    identity = ClientIdentity.load()
    print(identity.fingerprint)
    print(f"(the key of this user's AVM, {identity.path}; an EVM admits it with "
          f"--allow-client {identity.fingerprint})", file=sys.stderr)
    return 0


@contextlib.contextmanager
def client_options(args: argparse.Namespace) -> Iterator[None]:
    """While a command runs, its --evm-* options are what every connection
    to an EVM in this process uses."""
    if not hasattr(args, "evm_pin"):
        yield
        return
    from vsgx.channel import EvidencePolicy, parse_fingerprint
    from vsgx.host.remote import set_defaults

    pins = frozenset(parse_fingerprint(text) for text in args.evm_pin or [])
    if args.require_snp and args.allow_unattested:
        raise VsgxError("--require-snp and --allow-unattested contradict each other")
    from vsgx.cli.snp_options import snp_verifier

    verifier = snp_verifier(args)
    policy = EvidencePolicy(allow_unprotected=args.allow_unattested,
                            require_snp=args.require_snp,
                            allow_unverified_snp=args.allow_unverified_snp, pinned_keys=pins,
                            snp_verifier=verifier)
    set_defaults(policy, args.evm_timeout)
    try:
        yield
    finally:
        set_defaults()


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
