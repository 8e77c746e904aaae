"""`vsgx demo`: the whole system on the bundled sample enclave.

Builds and signs the sample (an SDK-format enclave written here), starts an
EVM in a separate process, reaches it over attested TLS 1.3, and runs the
enclave through the SDK protocol: ECALLs and OCALLs, an in-enclave exception
handler, sealing that survives an EVM restart, and local attestation between
two enclaves.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vsgx.cli.main import command, write_file, write_new_file
from vsgx.errors import VsgxError


class _Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n[{self.step}] {text}", flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"    {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            self.failed.append(text)


class _EvmProcess:
    """`vsgx evm serve` as a child process on a Unix socket."""

    def __init__(self, workdir: Path):
        self.address = f"unix:{workdir / 'evm.sock'}"
        self.data_dir = workdir / "evm-data"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vsgx", "evm", "serve", "--listen", self.address,
             "--data-dir", str(self.data_dir), "--epc-mib", "64", "--session-epc-mib", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "serving on" not in line:
            self.stop()
            raise VsgxError(f"the EVM process did not start: {line.strip()}")
        return line.strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def _build(workdir: Path) -> tuple[Path, Path]:
    """The sample, and a second enclave from the same code with another
    configuration (two TCSs, product 2): another MRENCLAVE, same MRSIGNER."""
    from vsgx.cli.commands import load_config_file
    from vsgx.crypto import generate_signing_key, load_private_key
    from vsgx.crypto.rsa import private_key_pem
    from vsgx.image import sign_enclave
    from vsgx.samples import HELLO_DIR, build_sample

    unsigned = build_sample(workdir)
    key_path = workdir / "signing-key.pem"
    if not key_path.exists():
        write_new_file(key_path, private_key_pem(generate_signing_key()), mode=0o600,
                       what="signing key")
    key = load_private_key(key_path)
    config = load_config_file(str(HELLO_DIR / "hello.toml"))
    outputs = []
    for name, change in (("hello.signed.so", {}), ("hello-b.signed.so",
                                                    {"tcs_count": 2, "isvprodid": 2})):
        signed = sign_enclave(unsigned.read_bytes(), replace(config, **change), key)
        write_file(workdir / name, signed.data)
        outputs.append(workdir / name)
    return outputs[0], outputs[1]


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    if args.workdir:
        workdir = Path(args.workdir)
        if workdir.exists() and not workdir.is_dir():
            raise VsgxError(f"--workdir {workdir} exists and is not a directory")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VsgxError(f"cannot create --workdir {workdir}: {exc.strerror}") from None
        return _demo(args, workdir)
    workdir = Path(tempfile.mkdtemp(prefix="vsgx-demo-"))
    try:
        return _demo(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # keep nothing unless --workdir asked


def _demo(args: argparse.Namespace, workdir: Path) -> int:
    from vsgx.arch.report import Report
    from vsgx.avm.remote import connect_evm
    from vsgx.host import Avm
    from vsgx.samples import HELLO_DIR
    from vsgx.sdk import Enclave

    checks = _Checks()
    edl = HELLO_DIR / "hello.edl"

    checks.title(f"build the sample enclave with gcc and sign it (in {workdir})")
    signed, signed_b = _build(workdir)
    print(f"    {signed}\n    {signed_b}")

    evm = None if args.evm else _EvmProcess(workdir)
    address = args.evm or ""
    if evm is not None:
        checks.title("start an EVM in its own process")
        print(f"    {evm.start()}")
        address = evm.address

    def connect(warn: bool = True) -> Avm:
        # The user's trust options (--evm-pin, --require-snp...) apply; the
        # default admits an unattested EVM on this machine only, and says
        # so loudly (the banner) before it trusts it.
        avm = Avm(connect_evm(address, None, warn=warn))
        sys.stdout.flush()
        return avm

    printed: list[str] = []

    def load(avm: Avm, path: Path = signed) -> Any:
        return Enclave.load(path, edl=edl, evm=avm, ocalls={
            "ocall_print": lambda text: (printed.append(text), print(f"    enclave says: {text}")),
            "ocall_nop": lambda: None, "ocall_call_back": lambda x: x})

    try:
        checks.title(f"connect to the EVM over attested TLS 1.3 ({address})")
        avm = connect()
        enclave = load(avm)
        checks.check(True, "ECREATE/EADD/EEXTEND/EINIT in the EVM, ECMD_INIT_ENCLAVE in the "
                     "enclave's runtime")
        print(f"    MRENCLAVE {enclave.mrenclave.hex()}")
        print(f"    MRSIGNER  {enclave.mrsigner.hex()}")

        checks.title("ECALLs and OCALLs through the EDL")
        count = enclave.ecall_hello("vsgx demo")
        checks.check(count == len(printed[-1]) if printed else False,
                     f"ecall_hello printed through ocall_print and returned {count}")
        checks.check(enclave.ecall_add(2, 40) == 42, "ecall_add(2, 40) == 42")
        checks.check(enclave.ecall_fault(1) == 1_000_001,
                     "a #UD inside the enclave reached its own exception handler (ECMD_EXCEPT, "
                     "ERESUME) and execution went on")

        checks.title("sealing: seal, restart the EVM process, unseal")
        secret = b"a secret only this enclave on this platform can read"
        length, sealed = enclave.ecall_seal(secret, None, None, 512)
        sealed = sealed[:length]
        write_file(workdir / "sealed.bin", sealed)
        checks.check(length > len(secret) and secret not in sealed,
                     f"sealed {len(secret)} bytes into {length} (written to sealed.bin)")
        enclave.destroy()
        avm.close()
        if evm is not None:
            evm.stop()
            print(f"    {evm.start()}")
        avm = connect(warn=False)
        enclave = load(avm)
        count, plain = enclave.ecall_unseal(sealed, None, None, 512)
        checks.check(plain[:count] == secret, "a new enclave instance unsealed it after the "
                     "restart")

        checks.title("local attestation between two enclaves")
        other = load(avm, signed_b)
        print(f"    enclave A MRENCLAVE {enclave.mrenclave.hex()}")
        print(f"    enclave B MRENCLAVE {other.mrenclave.hex()}")
        status, target = other.ecall_target_info()
        status2, report = enclave.ecall_report(target, b"hello, other enclave".ljust(64, b"\0"))
        parsed = Report.unpack(report)
        checks.check(status == status2 == 0 and parsed.mrenclave == enclave.mrenclave
                     and parsed.mrsigner == other.mrsigner,
                     "enclave A wrote an EREPORT for enclave B's TARGETINFO")
        checks.check(other.ecall_verify_report(report) == 0,
                     "enclave B verified its MAC with its report key (EGETKEY)")
        forged = bytearray(report)
        forged[320] ^= 1
        checks.check(other.ecall_verify_report(bytes(forged)) != 0,
                     "a report with one changed byte is refused")
        other.destroy()
        enclave.destroy()
        avm.close()
    finally:
        if evm is not None:
            evm.stop()
    if checks.failed:
        print(f"\nvsgx demo: {len(checks.failed)} check(s) failed", file=sys.stderr)
        return 1
    print(f"\nvsgx demo: all checks passed ({time.process_time():.1f} s of CPU)")
    return 0
