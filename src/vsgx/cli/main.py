"""The `vsgx` command."""

from __future__ import annotations

import argparse
import json
import os
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


def write_new_file(path: str | Path, data: bytes, *, mode: int = 0o644,
                   force: bool = False, what: str = "file") -> None:
    """Write a file that did not exist, created with ``mode`` from the start
    (O_CREAT | O_EXCL: never a moment with wider permissions, never through
    a symlink). With ``force``, an existing file is replaced atomically by
    a new one made the same way, so a failure leaves the old one whole."""
    target = Path(path)
    if target.is_dir():
        raise VsgxError(f"cannot write the {what} {path}: it is a directory")
    if not force and (target.exists() or target.is_symlink()):
        raise VsgxError(f"the {what} {path} exists; pass --force to replace it")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp") if force else target
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, mode)
    except FileExistsError:
        raise VsgxError(f"the {what} {path} exists; pass --force to replace it") from None
    except OSError as exc:
        raise VsgxError(f"cannot write the {what} {path}: {exc.strerror}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise VsgxError(f"cannot write the {what} {path}: {exc.strerror}") from None


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _number(kind: Callable[[str], float], text: str, what: str, low: float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _seconds(text: str) -> float:
    return _number(float, text, "a positive number of seconds", 1e-3)


def _positive_int(text: str) -> int:
    return int(_number(int, text, "a positive whole number", 1))


def _uid(text: str) -> int:
    return int(_number(int, text, "a user id (a whole number from 0)", 0))


def _socket_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode (000..777)")
    return value


def evm_client_args(p: argparse.ArgumentParser) -> None:
    """--evm and the AVM's trust policy, wherever an EVM is reached."""
    p.add_argument("--evm", help="EVM address (unix:PATH, tcp:HOST:PORT, tcp:[IPV6]:PORT, "
                   "vsock:CID:PORT); default: in this process")
    p.add_argument("--evm-pin", action="append", metavar="SHA256",
                   help="accept only an EVM with this TLS key fingerprint (repeatable; the EVM "
                   "prints it at start); a pinned EVM may be unattested")
    p.add_argument("--require-snp", action="store_true",
                   help="accept only an EVM with SEV-SNP evidence verified to AMD's root")
    p.add_argument("--allow-unattested", action="store_true",
                   help="accept an EVM without evidence even when it is not on this machine")
    p.add_argument("--allow-unverified-snp", action="store_true",
                   help="accept SEV-SNP reports without verifying their signature (by default "
                   "an EVM's SEV-SNP report is verified to AMD's root)")
    p.add_argument("--snp-certs", metavar="DIR",
                   help="VCEK, ASK and ARK certificates (vcek.pem or .der, ask.pem, ark.pem or "
                   "AMD KDS's cert_chain.pem) for EVMs whose evidence carries none; never "
                   "fetched")
    p.add_argument("--snp-measurement", action="append", metavar="HEX",
                   help="accept only an SEV-SNP EVM with this launch measurement (48 bytes; "
                   "repeatable)")
    p.add_argument("--snp-min-tcb", metavar="TCB",
                   help="minimum REPORTED_TCB: bootloader=N,tee=N,snp=N,microcode=N[,fmc=N] "
                   "(names left out are 0)")
    p.add_argument("--snp-allow-debug", action="store_true",
                   help="accept an SEV-SNP guest whose policy allows debugging")
    p.add_argument("--evm-timeout", type=_seconds, metavar="SECONDS",
                   help="give up on an EVM that is silent this long while we wait for it "
                   "(default 10; it is PINGed every second)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsgx", description="Run unmodified, signed Intel SGX enclaves without SGX.")
    parser.add_argument("--version", action="version", version=f"vsgx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(subcommand_parsers=sub.choices)  # for a usage line

    p = sub.add_parser("keygen", help="generate an enclave signing key (RSA-3072, e = 3)")
    p.add_argument("-o", "--output", required=True, help="private key PEM to write (created "
                   "0600; an existing file is refused)")
    p.add_argument("--public", help="also write the public key PEM here")
    p.add_argument("--force", action="store_true", help="replace existing key files")

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
                       "EVM restart, local and remote attestation")
    p.add_argument("--workdir", help="where to build and keep the files (default: a temporary "
                   "directory, removed at the end)")
    evm_client_args(p)  # --evm: use this running EVM instead of starting one
    p.add_argument("--root-ca", metavar="PEM", help="the root CA to verify the EVM's quotes "
                   "against (with --evm; default: the started EVM's own)")

    p = sub.add_parser("run", help="load an enclave into an EVM, initialise it, show it")
    enclave_args(p)
    evm_client_args(p)
    p.add_argument("--production", action="store_true", help="load without the DEBUG attribute")
    p.add_argument("--enter", metavar="REG=VALUE,...",
                   help="then EENTER the first TCS with these registers and show the exit")

    p = sub.add_parser("ecall", help="call an ECALL of an SDK enclave, as its EDL declares it "
                       "(without NAME: list the ECALLs and OCALLs)")
    enclave_args(p)
    p.add_argument("--edl", required=True, help="the enclave's EDL file")
    p.add_argument("--edl-path", action="append", metavar="DIR",
                   help="where imported EDLs are looked for (repeatable)")
    evm_client_args(p)
    p.add_argument("--production", action="store_true", help="load without the DEBUG attribute")
    p.add_argument("--type", action="append", metavar="NAME=SIZE[:ALIGN]", default=[],
                   help="the size of a type the EDL only includes (repeatable); *NAME is what "
                   "an [isptr] NAME points to")
    p.add_argument("--types", metavar="FILE", help="type sizes as TOML: NAME = SIZE or "
                   "NAME = [SIZE, ALIGN], at the top or under [types]")
    p.add_argument("name", nargs="?", help="the ECALL")
    p.add_argument("args", nargs="*", help="its arguments: numbers, strings; for [in] "
                   "buffers text, hex:HEX or @FILE; - for NULL or to leave a size or an "
                   "[out] buffer to the EDL")

    quote = sub.add_parser("quote", help="DCAP quotes (remote attestation)")
    quote_sub = quote.add_subparsers(dest="quote_command", metavar="COMMAND")
    p = quote_sub.add_parser("verify", help="verify a DCAP v3 quote to a root CA and check "
                             "the enclave against a policy (exit status 1 if it fails)")
    p.add_argument("quote", help="the quote (binary)")
    p.add_argument("--root-ca", metavar="PEM", help="the root CA to trust (PEM or DER; "
                   "default: this installation's vsgx root CA)")
    p.add_argument("--data-dir", help="where this installation's root CA is looked for")
    p.add_argument("--mrenclave", metavar="HEX", help="required MRENCLAVE")
    p.add_argument("--mrsigner", metavar="HEX", help="required MRSIGNER")
    p.add_argument("--isvprodid", type=int, metavar="N", help="required ISVPRODID")
    p.add_argument("--isvsvn-min", type=int, metavar="N", help="minimum ISVSVN")
    p.add_argument("--allow-debug", action="store_true", help="accept debug enclaves")
    p.add_argument("--json", action="store_true")

    p = quote_sub.add_parser("collateral", help="write verification collateral for this "
                             "installation's quotes (TCB info, QE identity, CRLs, chains), in "
                             "Intel PCS formats, for third-party verifiers")
    p.add_argument("-o", "--output", required=True, help="directory to write")
    p.add_argument("--data-dir", help="the EVM's data directory (default: this user's)")
    p.add_argument("--days", type=int, default=30, help="validity (default 30 days)")

    aesmd = sub.add_parser("aesmd", help="an aesmd-compatible socket (quotes, launch tokens)")
    aesmd_sub = aesmd.add_subparsers(dest="aesmd_command", metavar="COMMAND")
    p = aesmd_sub.add_parser("serve", help="answer aesmd's requests (InitQuoteEx, GetQuoteEx, "
                             "GetLaunchToken, ...) on a Unix socket with an EVM's quoting and "
                             "launch enclaves")
    p.add_argument("--socket", metavar="PATH", help="the socket to make (default "
                   "/var/run/aesmd/aesm.socket, where Intel's libraries look, if this user may "
                   "write there)")
    p.add_argument("--abstract", action="store_true",
                   help="also listen on the legacy abstract socket sgx_aesm_socket_base, which "
                   "Gramine and Fortanix's client try first (this uid only)")
    p.add_argument("--mode", type=_socket_mode, default=0o600, metavar="OCTAL",
                   help="the socket file's mode (default 600: this user's programs)")
    evm_client_args(p)

    evm = sub.add_parser("evm", help="the enclave VM")
    evm_sub = evm.add_subparsers(dest="evm_command", metavar="COMMAND")
    p = evm_sub.add_parser("serve", help="serve AVMs over attested TLS")
    p.add_argument("--listen", required=True,
                   help="unix:PATH, tcp:HOST:PORT, tcp:[IPV6]:PORT or vsock:CID:PORT (port 0: "
                   "any free one, printed at start)")
    p.add_argument("--epc-mib", type=int, default=336, help="EPC size (default 336 MiB)")
    p.add_argument("--launch-control", choices=["flexible", "locked"], default="flexible",
                   help="EINIT's launch control: flexible (every signer launches; default) or "
                   "locked to the launch enclave's signer (other enclaves need an EINITTOKEN "
                   "from it, as /dev/isgx programs get from aesmd)")
    p.add_argument("--session-epc-mib", type=int, default=64,
                   help="EPC slice of each AVM session (default 64 MiB)")
    p.add_argument("--evidence", choices=["none", "sev-snp"], default="none",
                   help="evidence in the TLS certificate (default none: no SEV)")
    p.add_argument("--data-dir", help="where the platform root secret and the EVM's TLS key "
                   "live")
    p.add_argument("--executor", choices=["auto", "native", "unicorn"], default="auto",
                   help="what runs enclave code: native (runner processes on this CPU), "
                   "unicorn (portable, traceable), auto (native where supported; default)")
    p.add_argument("--fast-exits", action="store_true",
                   help="not exact, opt-in: rewrite each enclave's EEXIT sites after EINIT "
                   "into INT3, a cheaper trap than ENCLU's #UD (README: Fast exits)")
    p.add_argument("--allow-uid", action="append", type=_uid, metavar="UID",
                   help="Unix socket: admit this user id (repeatable; default: this "
                   "process's own uid only)")
    p.add_argument("--allow-client", action="append", metavar="SHA256",
                   help="TCP/vsock: admit the AVM whose key has this fingerprint (repeatable; "
                   "an AVM prints its own with `vsgx evm client-id`)")
    p.add_argument("--allow-clients-file", metavar="FILE",
                   help="TCP/vsock: admit the fingerprints in FILE (one a line, # comments)")
    p.add_argument("--allow-any-client", action="store_true",
                   help="admit every client that reaches the EVM (said loudly at start)")
    p.add_argument("--max-client-sessions", type=_positive_int, metavar="N",
                   help="sessions one client may hold (default: half of them when several "
                   "clients are admitted, else all)")
    p.add_argument("--idle-timeout", type=_seconds, default=600.0, metavar="SECONDS",
                   help="close a session with no request for this long (default 600)")
    p.add_argument("--peer-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="end a session whose AVM is silent this long while the EVM waits for "
                   "it or runs its request (it PINGs every second; default 30)")
    p = evm_sub.add_parser("client-id", help="print this user's AVM key fingerprint (what an "
                           "EVM admits with --allow-client), making the key on first use")

    from vsgx.cli import exec_command  # `vsgx exec` declares its own options

    exec_command.add_parser(sub)
    return parser


def _stdout_gone() -> int:
    """The reader of our output went away (``vsgx measure … | head -1``):
    stop quietly, as a program killed by SIGPIPE would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the final flush must not fail again
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_gone()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "ecall":
        # NAME and ARGS may follow the options (argparse hands them over as extras).
        words = ([args.name] if args.name else []) + args.args + extra
        args.name, args.args = (words[0], words[1:]) if words else (None, [])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    from vsgx.cli import (  # noqa: F401  (registers)
        aesmd_commands,
        commands,
        demo,
        evm_commands,
        quote_commands,
        sdk_commands,
    )

    name = args.command if args.command != "evm" else f"evm {args.evm_command or ''}".strip()
    for group in ("quote", "aesmd"):
        if args.command == group:
            name = f"{group} {getattr(args, f'{group}_command') or ''}".strip()
    if name not in _COMMANDS:
        args.subcommand_parsers.get(args.command, parser).print_usage(sys.stderr)
        print(f"vsgx {name}: error: a subcommand is needed", file=sys.stderr)
        return 2
    try:
        with evm_commands.client_options(args):
            code = _COMMANDS[name](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        return _stdout_gone()
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
