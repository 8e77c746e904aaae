"""Shared fixtures: test enclaves are built by gcc during the run and signed
by vsgx itself; nothing here comes from another project."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from vsgx.crypto import generate_signing_key
from vsgx.crypto.rsa import private_key_pem
from vsgx.image import parse_config, sign_enclave
from vsgx.samples import HELLO_DIR, RUNTIME_DIR, build_sample, compile_enclave

TESTS_DIR = Path(__file__).resolve().parent
PLAIN_DIR = TESTS_DIR / "enclaves" / "plain"


@dataclass(frozen=True)
class BuiltEnclave:
    unsigned: Path
    signed: Path  # the signed SDK file, or the ELF whose .sig sits next to it
    sigstruct: Path | None
    key: Path


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("enclaves")


@pytest.fixture(scope="session")
def signing_key(build_dir: Path) -> Path:
    path = build_dir / "key.pem"
    path.write_bytes(private_key_pem(generate_signing_key()))
    return path


@pytest.fixture(scope="session")
def other_signing_key(build_dir: Path) -> Path:
    path = build_dir / "other-key.pem"
    path.write_bytes(private_key_pem(generate_signing_key()))
    return path


def build_plain(output: Path, tcs_count: int = 4) -> Path:
    sources = [PLAIN_DIR / "bootstrap.S", PLAIN_DIR / "encl.c", RUNTIME_DIR / "aes_cmac.c",
               RUNTIME_DIR / "sha256.c", RUNTIME_DIR / "string.c"]
    return compile_enclave(sources, output, PLAIN_DIR / "encl.lds", include_dirs=[PLAIN_DIR],
                           extra_flags=[f"-DENCL_TCS_COUNT={tcs_count}"])


PLAIN_CONFIG = """
[enclave]
isvprodid = 7
isvsvn = 3
heap_pages = 16
misc_select = 1
"""


@pytest.fixture(scope="session")
def plain_enclave(build_dir: Path, signing_key: Path) -> BuiltEnclave:
    from vsgx.crypto import load_private_key

    elf = build_plain(build_dir / "plain.elf")
    signed = sign_enclave(elf.read_bytes(), parse_config(PLAIN_CONFIG),
                          load_private_key(signing_key))
    sig = elf.with_name(elf.name + ".sig")
    sig.write_bytes(signed.data)
    return BuiltEnclave(elf, elf, sig, signing_key)


@pytest.fixture(scope="session")
def sdk_enclave(build_dir: Path, signing_key: Path) -> BuiltEnclave:
    from vsgx.crypto import load_private_key

    unsigned = build_sample(build_dir / "sample")
    config = parse_config((HELLO_DIR / "hello.toml").read_text())
    signed = sign_enclave(unsigned.read_bytes(), config, load_private_key(signing_key))
    path = unsigned.with_name("hello.signed.so")
    path.write_bytes(signed.data)
    return BuiltEnclave(unsigned, path, None, signing_key)


ROOT_SECRET = bytes(range(32))


def _executors() -> list:
    from vsgx.evm.native_executor import native_support

    usable, why = native_support()
    native = pytest.param("native", marks=pytest.mark.skipif(
        not usable, reason=f"the native executor is not available here: {why}"))
    return ["unicorn", native]


EXECUTORS = _executors()


@pytest.fixture(params=EXECUTORS)
def executor(request):
    """Every enclave test runs on both executors: Unicorn and native."""
    return request.param


@pytest.fixture
def make_vm(executor):
    """Build EnclaveVMs (root secret fixed, so keys are comparable)."""
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM

    def make(secret: bytes = ROOT_SECRET, **config):
        return EnclaveVM(PlatformConfig(**config), root_secret=secret, executor=executor)

    return make


@pytest.fixture
def make_avm(make_vm):
    """AVMs over in-process EVMs, closed at the end of the test."""
    from vsgx.host import Avm

    made = []

    def make(vm=None, **config):
        avm = Avm(vm if vm is not None else make_vm(**config))
        made.append(avm)
        return avm

    yield make
    for avm in made:
        avm.close()


@pytest.fixture
def plain(plain_enclave, make_avm):
    """The plain test enclave in an in-process EVM, on every executor: what
    executors must show (entries, AEX and ERESUME state, threads, faults,
    SGX2 flows), and what tests look for inside the EVM."""
    from vsgx.host import Enclave

    from plain_ops import PlainEnclave

    enclave = Enclave.load(plain_enclave.signed, evm=make_avm())
    yield PlainEnclave(enclave)
    enclave.destroy()


@pytest.fixture
def leaf_plain(plain_enclave):
    """The plain test enclave in an in-process EVM on one executor, for
    tests of leaf results through the EVM's interface and the driver (the
    leaves' own semantics are tests/leaves', on a bare machine)."""
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM
    from vsgx.host import Avm, Enclave

    from plain_ops import PlainEnclave

    avm = Avm(EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor="unicorn"))
    enclave = Enclave.load(plain_enclave.signed, evm=avm)
    yield PlainEnclave(enclave)
    enclave.destroy()
    avm.close()


# -- the split: EVMs in separate processes, over every transport we have --
def _remote_transports() -> list:
    from vsgx.channel import vsock_loopback_available

    usable, why = vsock_loopback_available()
    vsock = pytest.param("vsock", marks=pytest.mark.skipif(not usable, reason=why))
    return ["unix", "tcp", vsock]


REMOTE_TRANSPORTS = _remote_transports()
# Where an AVM meets its EVM: in this process on each executor, or in an EVM
# process (on Unicorn) over each channel transport.
def _cell(param, transport: str | None) -> object:
    name = param if isinstance(param, str) else param.values[0]
    marks = () if isinstance(param, str) else param.marks
    value = ("inproc", name) if transport is None else (name, "unicorn")
    return pytest.param(value, id=f"inproc-{name}" if transport is None else name, marks=marks)


SPLIT_CELLS = [*(_cell(e, None) for e in EXECUTORS), *(_cell(t, "remote") for t in
                                                        REMOTE_TRANSPORTS)]


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory):
    """Keys and secrets that tests make by default (the AVM's client key,
    say) go to a directory of this run, not to the user's home."""
    import os

    if "VSGX_DATA_DIR" in os.environ:
        yield os.environ["VSGX_DATA_DIR"]
        return
    path = tmp_path_factory.mktemp("vsgx-data")
    os.environ["VSGX_DATA_DIR"] = str(path)
    yield str(path)
    os.environ.pop("VSGX_DATA_DIR", None)


def client_fingerprint() -> str:
    """The fingerprint of this test run's AVM key (what EVMs admit)."""
    from vsgx.channel import ClientIdentity

    return ClientIdentity.load().fingerprint


class EvmProcess:
    """`vsgx evm serve` in a child process. A TCP or vsock EVM admits this
    run's AVM key unless ``extra`` says whom to admit. Its output is read
    all along (``output``), so that a full pipe never stops it."""

    def __init__(self, address: str, data_dir: Path, *extra: str, executor: str = "unicorn"):
        import os
        import sys
        import threading

        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = data_dir / "platform-root-secret"
        if not secret.exists():
            secret.write_bytes(ROOT_SECRET)
            secret.chmod(0o600)
        admits = [] if address.startswith("unix:") or any(
            flag.startswith("--allow-") for flag in extra) else [
            "--allow-client", client_fingerprint()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vsgx", "evm", "serve", "--listen", address,
             "--data-dir", str(data_dir), "--epc-mib", "32", "--session-epc-mib", "1",
             "--executor", executor, *admits, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        line = self.process.stdout.readline()
        if "serving on" not in line:
            self.process.kill()
            raise RuntimeError(f"the EVM did not start: {line}{self.process.stdout.read()}")
        # The address it really listens on (a port 0 became a free port).
        self.address = line.split("serving on ", 1)[1].split(" (pid", 1)[0]
        self.lines: list[str] = [line]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, limit: float = 30.0) -> str:
        """Its output, once ``text`` is in it (it arrives line by line)."""
        import time

        deadline = time.monotonic() + limit
        while text not in self.output():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"the EVM never said {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        return self.output()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            import signal
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def evm_processes(tmp_path_factory):
    """Start one EVM process per transport on first use."""
    started: dict[tuple[str, str], EvmProcess] = {}
    base = tmp_path_factory.mktemp("evm")

    def get(transport: str, executor: str = "unicorn") -> str:
        key = (transport, executor)
        if key not in started:
            if transport == "unix":
                address = f"unix:{base / f'evm-{executor}.sock'}"
            elif transport == "tcp":
                address = "tcp:127.0.0.1:0"
            else:
                address = f"vsock:1:{free_tcp_port()}"
            started[key] = EvmProcess(address, base / "data", executor=executor)
        return started[key].address

    yield get
    for process in started.values():
        process.stop()



def _remote_avm(transport: str, evm_processes):
    from vsgx.avm.remote import connect_evm
    from vsgx.channel import EvidencePolicy
    from vsgx.host import Avm

    return Avm(connect_evm(evm_processes(transport), EvidencePolicy(allow_unprotected=True),
                           warn=False))


@pytest.fixture(params=SPLIT_CELLS)
def split_avm(request, evm_processes):
    """An AVM whose EVM is in this process (on each executor) or in an EVM
    process reached over attested TLS (each transport)."""
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM
    from vsgx.host import Avm

    transport, executor = request.param
    if transport == "inproc":
        avm = Avm(EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor=executor))
    else:
        avm = _remote_avm(transport, evm_processes)
    yield avm
    avm.close()


@pytest.fixture(params=REMOTE_TRANSPORTS)
def remote_avm(request, evm_processes):
    """An AVM over each channel transport to an EVM process."""
    avm = _remote_avm(request.param, evm_processes)
    yield avm
    avm.close()


@pytest.fixture
def remote_plain(plain_enclave, remote_avm):
    """The plain test enclave in an EVM process, over each transport: for
    the few tests of what the channel adds (an entry, an AEX, a fault, paging)."""
    from vsgx.host import Enclave

    from plain_ops import PlainEnclave

    enclave = Enclave.load(plain_enclave.signed, evm=remote_avm)
    yield PlainEnclave(enclave)
    enclave.destroy()
