"""`vsgx exec`: run an unmodified SGX program, its enclaves in an EVM.

    vsgx exec [--evm ADDR] [--executor native|unicorn|auto] [--] PROGRAM [ARGS...]
    vsgx exec --print-env [--evm ADDR] [--executor ...]

The program gets the injected library (LD_PRELOAD) and a control socket;
this process stays alive as its AVM (``vsgx.native.launcher``) and, unless
``--evm`` names one, runs a private EVM (`vsgx evm serve` on a Unix socket
in a 0700 directory) that ends with the program. It also serves aesmd's
quoting messages for the program, from that EVM's quoting enclave, and
points vsgx's drop-in libsgx_dcap_ql at them (``vsgx.cli.exec_quoting``).
The exit status is the program's (128 + N when a signal N ended it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from vsgx.cli.main import command
from vsgx.errors import VsgxError

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
EVM_START_SECONDS = 60.0
_OUR_VARIABLES = ("VSGX_EXEC_FD", "VSGX_EXEC_CPUID", "VSGX_EXEC_SPAWN", "VSGX_EXEC_ATTACH_FD",
                  "VSGX_EXEC_DRIVERS")


class LocalEvm:
    """A private `vsgx evm serve` for one program."""

    def __init__(self, executor: str, launch_control: str = "flexible", fast_exits: bool = False):
        self.directory = Path(tempfile.mkdtemp(prefix="vsgx-exec-"))
        os.chmod(self.directory, 0o700)
        self.address = f"unix:{self.directory / 'evm.sock'}"
        env = _clean_environment(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vsgx", "evm", "serve", "--listen", self.address,
             "--executor", executor, "--launch-control", launch_control,
             *(["--fast-exits"] if fast_exits else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env)
        assert self.process.stdout is not None
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if not ready.is_set():
                    lines.append(line)
                    if "serving on" in line:
                        ready.set()
                elif "WARNING" not in line and "stopped after" not in line:
                    sys.stderr.write(line)
            ready.set()

        threading.Thread(target=read, daemon=True, name="evm output").start()
        ready.wait(EVM_START_SECONDS)
        if not any("serving on" in line for line in lines):
            self.stop()
            raise VsgxError("the EVM did not start: " + "".join(lines).strip()[-2000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _clean_environment(environ: Any) -> dict[str, str]:
    """The environment without our injection (for the EVM and the launcher)."""
    env = {k: v for k, v in environ.items() if k not in _OUR_VARIABLES}
    preload = [item for item in env.get("LD_PRELOAD", "").replace(":", " ").split()
               if "libvsgx-exec" not in item]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def _program(name: str) -> str:
    if os.sep in name:
        path = Path(name)
        if not path.exists():
            raise VsgxError(f"cannot run {name}: no such file")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise VsgxError(f"cannot run {name}: not an executable file")
        return os.path.abspath(name)
    found = shutil.which(name)
    if found is None:
        raise VsgxError(f"cannot run {name}: not found in PATH")
    return found


def _connect(address: str) -> Any:
    from vsgx.avm import connect_evm
    from vsgx.channel import ChannelError, EvidencePolicy, parse_address

    try:
        parse_address(address)
    except (VsgxError, ValueError) as exc:
        raise VsgxError(f"--evm {address}: {exc}") from None

    def connect(warn: bool = False) -> Any:
        try:
            return connect_evm(address, EvidencePolicy(allow_unprotected=True), warn=warn)
        except (ChannelError, OSError) as exc:
            raise VsgxError(f"cannot reach the EVM at {address}: {exc}") from None

    return connect


def _cpuid_text(connect: Any) -> tuple[str, Any]:
    """The CPUID model for the library, and the connection it came over
    (the launcher's spare for the first session)."""
    from vsgx.native.launcher import cpuid_model_text

    evm = connect(warn=True)
    try:
        return cpuid_model_text(evm.cpuid()), evm
    except BaseException:
        evm.close()
        raise


def _preload(library: Path, environ: Any) -> str:
    rest = [item for item in environ.get("LD_PRELOAD", "").replace(":", " ").split()
            if "libvsgx-exec" not in item]
    return " ".join([str(library), *rest])


def _spawn_command(args: argparse.Namespace) -> str:
    words = [sys.executable, "-m", "vsgx", "exec", "--attach"]
    if args.evm:
        words += ["--evm", args.evm]
    if args.executor:
        words += ["--executor", args.executor]
    if args.launch_control != "flexible":
        words += ["--launch-control", args.launch_control]
    if args.fast_exits:
        words += ["--fast-exits"]
    return " ".join(shlex.quote(word) for word in words)


def _print_env(args: argparse.Namespace) -> int:
    from vsgx.native import library_path

    library = library_path()
    lines = {"LD_PRELOAD": str(library), "VSGX_EXEC_SPAWN": _spawn_command(args)}
    if args.driver != "all":
        lines["VSGX_EXEC_DRIVERS"] = args.driver
    package_root = Path(__file__).resolve().parents[2]
    if os.environ.get("PYTHONPATH"):
        lines["PYTHONPATH"] = os.environ["PYTHONPATH"]
    elif not (package_root / "vsgx").is_dir() or "site-packages" not in str(package_root):
        lines["PYTHONPATH"] = str(package_root)
    for name, value in lines.items():
        print(f"{name}={shlex.quote(value)}")
    return 0


def _serve_attached(args: argparse.Namespace) -> int:
    """The launcher a self-starting library spawned (VSGX_EXEC_SPAWN): serve
    its inherited control socket until every process of the program is
    gone, then end our EVM."""
    from vsgx.channel.device import Msg, pack
    from vsgx.native.launcher import Launcher

    fd_text = os.environ.get("VSGX_EXEC_ATTACH_FD", "")
    if not fd_text.isdigit():
        raise VsgxError("--attach needs VSGX_EXEC_ATTACH_FD (it is started by the library)")
    fd = int(fd_text)
    local = None if args.evm else LocalEvm(args.executor or "auto", args.launch_control,
                                           args.fast_exits)
    try:
        connect = _connect(args.evm if local is None else local.address)
        text, spare = _cpuid_text(connect)
        model = bytes.fromhex(text)
        import socket

        control = socket.socket(fileno=os.dup(fd))
        control.send(pack(Msg.CPUID_MODEL, model, count=len(model) // 16))
        control.close()
        launcher = Launcher(lambda: connect(), spare=spare)
        launcher.serve_fd(fd)
        launcher.close()
    finally:
        if local is not None:
            local.stop()
    return 0


@command("exec")
def cmd_exec(args: argparse.Namespace) -> int:
    from vsgx.cli.exec_quoting import ProgramAesmd
    from vsgx.native import library_path
    from vsgx.native.launcher import Launcher

    if args.evm and args.executor:
        raise VsgxError("--executor chooses the executor of the EVM vsgx exec starts; with "
                        "--evm the EVM's own setting applies")
    if args.evm and args.launch_control != "flexible":
        raise VsgxError("--launch-control sets the EVM vsgx exec starts; with --evm the EVM's "
                        "own setting applies")
    if args.print_env:
        return _print_env(args)
    if args.attach:
        return _serve_attached(args)
    words = list(args.program)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise VsgxError("no program to run (vsgx exec [--evm ADDR] -- PROGRAM [ARGS...])")
    program = _program(words[0])
    library = library_path()
    local = None if args.evm else LocalEvm(args.executor or "auto", args.launch_control,
                                           args.fast_exits)
    launcher = None
    aesmd = None
    child = None
    try:
        connect = _connect(args.evm if local is None else local.address)
        model, spare = _cpuid_text(connect)
        launcher = Launcher(lambda: connect(), spare=spare)
        aesmd = ProgramAesmd(lambda: connect(), local.directory if local else None)
        control_fd = launcher.control_socket()
        env = _clean_environment(os.environ)
        env.update(aesmd.environment(os.environ))
        env.update(LD_PRELOAD=_preload(library, os.environ), VSGX_EXEC_FD=str(control_fd),
                   VSGX_EXEC_CPUID=model)
        if args.driver != "all":
            env["VSGX_EXEC_DRIVERS"] = args.driver
        try:
            child = subprocess.Popen([words[0], *words[1:]], executable=program, env=env,
                                     pass_fds=(control_fd,))
        except OSError as exc:
            raise VsgxError(f"cannot run {words[0]}: {exc.strerror}") from None
        finally:
            os.close(control_fd)
        previous = {}
        for sig in FORWARDED_SIGNALS:
            previous[sig] = signal.signal(sig, lambda number, _frame: child.send_signal(number))
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if launcher is not None:
            launcher.close()
        if aesmd is not None:
            aesmd.close()
        if local is not None:
            local.stop()
    return status if status >= 0 else 128 - status


def add_parser(sub: Any) -> None:
    p = sub.add_parser("exec", help="run an unmodified SGX program (Intel's PSW runtime or the "
                       "Linux driver API) with its enclaves in an EVM")
    p.add_argument("--evm", help="an EVM to use (unix:PATH, tcp:HOST:PORT, vsock:CID:PORT); "
                   "default: a private one that ends with the program")
    p.add_argument("--executor", choices=["auto", "native", "unicorn"],
                   help="what runs enclave code in the private EVM (default auto)")
    p.add_argument("--driver", choices=["all", "in-kernel", "isgx", "dcap"], default="all",
                   help="which SGX driver the program finds: the in-kernel one "
                   "(/dev/sgx_enclave, /dev/sgx/enclave), Intel's out-of-tree /dev/isgx, the "
                   "DCAP driver's /dev/sgx, or all (default; a runtime takes the first it "
                   "probes)")
    p.add_argument("--launch-control", choices=["flexible", "locked"], default="flexible",
                   help="launch control of the private EVM: flexible (default) or locked, "
                   "where only enclaves with an EINITTOKEN from its launch enclave (what "
                   "/dev/isgx programs get from aesmd) initialise")
    p.add_argument("--fast-exits", action="store_true",
                   help="not exact, opt-in: the private EVM rewrites each enclave's EEXIT "
                   "sites after EINIT into INT3, a cheaper trap than ENCLU's #UD (README: "
                   "Fast exits)")
    p.add_argument("--print-env", action="store_true",
                   help="print the environment that injects vsgx into programs started "
                   "elsewhere (service units, containers): LD_PRELOAD and VSGX_EXEC_SPAWN")
    p.add_argument("--attach", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="PROGRAM [ARGS...]")
