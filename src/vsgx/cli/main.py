"""The `vsgx` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vsgx import __version__
from vsgx.errors import VsgxError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn

    return register


def read_file(path: str | Path, what: str = "file") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise VsgxError(f"cannot read {what} {path}: {exc.strerror}") from None


def write_file(path: str | Path, data: bytes, mode: int | None = None) -> None:
    try:
        target = Path(path)
        target.write_bytes(data)
        if mode is not None:
            target.chmod(mode)
    except OSError as exc:
        raise VsgxError(f"cannot write {path}: {exc.strerror}") from None


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsgx", description="Run unmodified, signed Intel SGX enclaves without SGX.")
    parser.add_argument("--version", action="version", version=f"vsgx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate an enclave signing key (RSA-3072, e = 3)")
    p.add_argument("-o", "--output", required=True, help="private key PEM to write")
    p.add_argument("--public", help="also write the public key PEM here")

    def enclave_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("enclave", help="enclave ELF (SDK-signed, or plain with a .sig)")
        p.add_argument("--sigstruct", help="sidecar SIGSTRUCT of a plain ELF enclave "
                       "(default: ENCLAVE.sig)")

    p = sub.add_parser("sign", help="sign an enclave (SDK format, or a plain ELF's sidecar)")
    p.add_argument("enclave", help="unsigned enclave ELF")
    p.add_argument("-k", "--key", required=True, help="private key PEM (RSA-3072, e = 3)")
    p.add_argument("-c", "--config", help="signing configuration (TOML)")
    p.add_argument("-o", "--output", help="output (default: NAME.signed.so for SDK format, "
                   "ENCLAVE.sig for a plain ELF)")
    p.add_argument("--resign", action="store_true", help="replace an existing signature")

    p = sub.add_parser("gendata", help="write the 256 bytes an external signer must sign")
    p.add_argument("enclave")
    p.add_argument("-c", "--config")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--resign", action="store_true")

    p = sub.add_parser("catsig", help="attach an external signature (after gendata)")
    p.add_argument("enclave")
    p.add_argument("-c", "--config")
    p.add_argument("--pubkey", required=True, help="public key PEM of the signer")
    p.add_argument("--data", required=True, help="the file gendata wrote")
    p.add_argument("--signature", required=True,
                   help="RSASSA-PKCS1-v1_5 SHA-256 signature over it (384 bytes, big-endian)")
    p.add_argument("-o", "--output")
    p.add_argument("--resign", action="store_true")

    p = sub.add_parser("measure", help="print MRENCLAVE and MRSIGNER")
    enclave_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="show metadata, layout and SIGSTRUCT; check them")
    enclave_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--layout", action="store_true", help="list every page run")

    p = sub.add_parser("demo", help="build, sign and run the bundled sample enclave in a "
                       "separate EVM process: ECALLs, OCALLs, an exception, sealing across an "
                       "EVM restart, local attestation")
    p.add_argument("--workdir", help="where to build (default: a new temporary directory)")
    p.add_argument("--evm", help="use this running EVM instead of starting one")

    p = sub.add_parser("run", help="load an enclave into an EVM, initialise it, show it")
    enclave_args(p)
    p.add_argument("--evm", help="EVM address (unix:PATH, tcp:HOST:PORT, vsock:CID:PORT); "
                   "default: in this process")
    p.add_argument("--production", action="store_true", help="load without the DEBUG attribute")
    p.add_argument("--enter", metavar="REG=VALUE,...",
                   help="then EENTER the first TCS with these registers and show the exit")

    p = sub.add_parser("ecall", help="call an ECALL of an SDK enclave, as its EDL declares it "
                       "(without NAME: list the ECALLs and OCALLs)")
    enclave_args(p)
    p.add_argument("--edl", required=True, help="the enclave's EDL file")
    p.add_argument("--edl-path", action="append", metavar="DIR",
                   help="where imported EDLs are looked for (repeatable)")
    p.add_argument("--evm", help="EVM address (default: in this process)")
    p.add_argument("--production", action="store_true", help="load without the DEBUG attribute")
    p.add_argument("name", nargs="?", help="the ECALL")
    p.add_argument("args", nargs="*", help="its arguments: numbers, strings; for [in] "
                   "buffers text, hex:HEX or @FILE; - for NULL or to leave a size or an "
                   "[out] buffer to the EDL")

    evm = sub.add_parser("evm", help="the enclave VM")
    evm_sub = evm.add_subparsers(dest="evm_command", metavar="COMMAND")
    p = evm_sub.add_parser("serve", help="serve AVMs over attested TLS")
    p.add_argument("--listen", required=True,
                   help="unix:PATH, tcp:HOST:PORT or vsock:CID:PORT")
    p.add_argument("--epc-mib", type=int, default=336, help="EPC size (default 336 MiB)")
    p.add_argument("--session-epc-mib", type=int, default=64,
                   help="EPC slice of each AVM session (default 64 MiB)")
    p.add_argument("--evidence", choices=["none", "sev-snp"], default="none",
                   help="evidence in the TLS certificate (default none: no SEV)")
    p.add_argument("--data-dir", help="where the platform root secret lives")
    p.add_argument("--executor", choices=["auto", "native", "unicorn"], default="auto",
                   help="what runs enclave code: native (runner processes on this CPU), "
                   "unicorn (portable, traceable), auto (native where supported; default)")

    from vsgx.cli import exec_command  # `vsgx exec` declares its own options

    exec_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "ecall":
        # NAME and ARGS may follow the options (argparse hands them over as extras).
        words = ([args.name] if args.name else []) + args.args + extra
        args.name, args.args = (words[0], words[1:]) if words else (None, [])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 2
    from vsgx.cli import commands, demo, evm_commands, sdk_commands  # noqa: F401  (registers)

    name = args.command if args.command != "evm" else f"evm {args.evm_command or ''}".strip()
    if name == "evm":
        parser.parse_args(["evm", "--help"])
    try:
        return _COMMANDS[name](args)
    except VsgxError as exc:
        print(f"vsgx {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vsgx {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the registered module (python -m vsgx.cli.main imports this file
    # twice: as __main__ and as vsgx.cli.main, where the commands register).
    from vsgx.cli.main import main as registered_main

    sys.exit(registered_main())
