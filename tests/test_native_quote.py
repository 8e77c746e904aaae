"""C programs get quotes: one that speaks aesmd's wire format itself, and one
linked by name against vsgx's drop-in libsgx_dcap_ql.so.1 — both against
`vsgx aesmd serve` in front of an EVM process; the quotes verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsgx.avm.remote import connect_evm
from vsgx.channel import EvidencePolicy
from vsgx.crypto.pck import load_certificate
from vsgx.crypto.quote import QuotePolicy, verify_quote
from vsgx.evm.quoting import ATTESTATION_DIR, QE_IDENTITY, ROOT_CA_FILE
from vsgx.host import Avm, Enclave
from vsgx.native.dcap import LINK_NAME, SONAME, library_dir

from conftest import TESTS_DIR, EvmProcess
from plain_ops import PlainEnclave

PROGRAMS = TESTS_DIR / "native_programs"
pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="needs a C compiler")


def compile_program(name: str, out: Path, *flags: str) -> Path:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    target = out / name
    result = subprocess.run([compiler, "-O1", "-Wall", "-Werror", "-o", str(target),
                             str(PROGRAMS / f"{name}.c"), *flags], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return target


class AesmdProcess:
    """`vsgx aesmd serve` in a child process."""

    def __init__(self, socket: Path, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vsgx", "aesmd", "serve", "--socket", str(socket), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()
        if "serving on" not in line:
            self.process.kill()
            raise RuntimeError(f"aesmd did not start: {line}{self.process.stdout.read()}")
        self.socket = socket

    def stop(self) -> str:
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


class Setup:
    def __init__(self, base: Path, plain_enclave):
        self.base = base
        self.evm_process = EvmProcess(f"unix:{base / 'evm.sock'}", base / "data")
        self.aesmd = AesmdProcess(base / "aesm.socket", "--evm", self.evm_process.address)
        self.evm = connect_evm(self.evm_process.address, EvidencePolicy(allow_unprotected=True),
                               warn=False)
        self.avm = Avm(self.evm)
        self.plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=self.avm))
        root = base / "data" / ATTESTATION_DIR / ROOT_CA_FILE
        self.root_path = root

    def root(self):
        return load_certificate(self.root_path.read_bytes(), str(self.root_path))

    def close(self) -> str:
        self.plain.enclave.destroy()
        self.avm.close()
        out = self.aesmd.stop()
        self.evm_process.stop()
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, plain_enclave):
    made = Setup(tmp_path_factory.mktemp("native-quote"), plain_enclave)
    yield made
    made.close()


def run(program: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_a_c_program_speaking_the_aesmd_wire_format_gets_a_quote(setup, tmp_path):
    client = compile_program("aesm_client", tmp_path)
    target = run(client, setup.aesmd.socket, "target", tmp_path / "target.bin")
    assert target.returncode == 0, target.stdout + target.stderr
    assert (tmp_path / "target.bin").read_bytes() == QE_IDENTITY.target_info().pack()
    report = setup.plain.ereport((tmp_path / "target.bin").read_bytes(), b"\xc0" * 64)
    (tmp_path / "report.bin").write_bytes(report)
    quote = run(client, setup.aesmd.socket, "quote", tmp_path / "report.bin",
                tmp_path / "quote.bin")
    assert quote.returncode == 0, quote.stdout + quote.stderr
    verified = verify_quote((tmp_path / "quote.bin").read_bytes(), setup.root(), QuotePolicy(
        mrenclave=setup.plain.enclave.plan.measure(), allow_debug=True))
    assert verified.report_body.reportdata == b"\xc0" * 64
    epid = run(client, setup.aesmd.socket, "epid")
    assert epid.returncode == 0 and "status 30" in epid.stdout, epid.stdout


def test_a_program_linked_against_the_drop_in_libsgx_dcap_ql_gets_a_quote(setup, tmp_path):
    libs = library_dir()
    assert (libs / SONAME).is_file() and (libs / LINK_NAME).is_symlink()
    program = compile_program("dcap_quote", tmp_path, f"-L{libs}", "-lsgx_dcap_ql")
    needed = subprocess.run(["readelf", "-d", str(program)], capture_output=True, text=True)
    assert f"[{SONAME}]" in needed.stdout  # linked by name, found by the loader
    env = {"LD_LIBRARY_PATH": str(libs), "VSGX_AESM_SOCKET": str(setup.aesmd.socket)}
    target = run(program, "target", tmp_path / "target.bin", env=env)
    assert target.returncode == 0, target.stdout + target.stderr
    report = setup.plain.ereport((tmp_path / "target.bin").read_bytes(), b"\xd1" * 64)
    (tmp_path / "report.bin").write_bytes(report)
    quote = run(program, "quote", tmp_path / "report.bin", tmp_path / "quote.bin", env=env)
    assert quote.returncode == 0, quote.stdout + quote.stderr
    assert "ok sgx_qe_get_quote of an altered report" in quote.stdout
    verified = verify_quote((tmp_path / "quote.bin").read_bytes(), setup.root(), QuotePolicy(
        mrenclave=setup.plain.enclave.plan.measure(), allow_debug=True))
    assert verified.report_body.reportdata == b"\xd1" * 64
    api = run(program, "api", env={**env, "VSGX_AESM_SOCKET": str(tmp_path / "nobody")})
    assert api.returncode == 0, api.stdout


def test_aesmd_serve_refuses_bad_arguments_in_one_line(tmp_path):
    for args, text in ((["--socket", str(tmp_path / "no" / "aesm.socket")], "does not exist"),
                       (["--socket", str(tmp_path / "s"), "--mode", "999"], "file mode"),
                       (["--socket", str(tmp_path / "s"), "--evm", "unix:" + str(
                           tmp_path / "missing.sock")], "EVM")):
        result = subprocess.run([sys.executable, "-m", "vsgx", "aesmd", "serve", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and text in lines[-1], result.stderr
        assert "Traceback" not in result.stderr


def test_aesmd_keeps_serving_after_its_evm_restarts(tmp_path, plain_enclave):
    """The service makes its channel to the EVM again when the EVM comes back."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data")
    aesmd = AesmdProcess(tmp_path / "aesm.socket", "--evm", evm.address)
    client = compile_program("aesm_client", tmp_path)
    try:
        assert run(client, aesmd.socket, "target", tmp_path / "t").returncode == 0
        evm.stop()
        evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data")
        deadline = time.monotonic() + 30
        while True:
            result = run(client, aesmd.socket, "target", tmp_path / "t")
            if result.returncode == 0 or time.monotonic() > deadline:
                break
        assert result.returncode == 0, result.stdout
    finally:
        out = aesmd.stop()
        evm.stop()
    assert "stopped after" in out
