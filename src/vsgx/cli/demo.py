"""`vsgx demo`: the whole system on the bundled sample enclave.

Builds and signs the sample (an SDK-format enclave written here), starts an
EVM in a separate process, reaches it over attested TLS 1.3, and runs the
enclave through the SDK protocol: ECALLs and OCALLs, an in-enclave exception
handler, sealing that survives an EVM restart, local attestation between
two enclaves, and remote attestation: a DCAP quote from the EVM's quoting
enclave, verified to the EVM's root CA, and a secret provisioned only to
the key the verified quote binds (``vsgx.samples.ra``).
"""

from __future__ import annotations

import argparse
import json
import os
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


class Checks:
    """The demo's verdicts: each step prints ok, FAIL or skip."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n[{self.step}] {text}", flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"    {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            self.failed.append(text)

    def skip(self, text: str, why: str) -> None:
        print(f"    skip {text}: skipped, {why}", flush=True)
        self.skipped.append(text)


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
    variants: tuple[tuple[str, dict[str, Any]], ...] = (
        ("hello.signed.so", {}), ("hello-b.signed.so", {"tcs_count": 2, "isvprodid": 2}))
    for name, change in variants:
        signed = sign_enclave(unsigned.read_bytes(), replace(config, **change), key)
        write_file(workdir / name, signed.data)
        outputs.append(workdir / name)
    return outputs[0], outputs[1]


def _identity(path: Path) -> tuple[bytes, bytes]:
    """MRENCLAVE and MRSIGNER as `vsgx measure` gives them for a signed file."""
    from vsgx.crypto import mrsigner
    from vsgx.image import plan_from_bytes

    plan = plan_from_bytes(path.read_bytes())
    assert plan.sigstruct is not None
    return plan.measure(), mrsigner(plan.sigstruct.modulus)


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
    from vsgx.avm import connect_evm
    from vsgx.host import Avm
    from vsgx.samples import HELLO_DIR
    from vsgx.sdk import Enclave

    checks = Checks()
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

    def ocall_print(text: str) -> None:
        printed.append(text)
        print(f"    enclave says: {text}")

    # Production instances (DEBUG clear): what a verifier's policy asks for.
    def load(avm: Avm, path: Path = signed) -> Any:
        return Enclave.load(path, edl=edl, evm=avm, debug=False, ocalls={
            "ocall_print": ocall_print, "ocall_nop": lambda: None,
            "ocall_call_back": lambda x: x})

    try:
        checks.title(f"connect to the EVM over attested TLS 1.3 ({address})")
        avm = connect()
        enclave = load(avm)
        checks.check(True, "ECREATE/EADD/EEXTEND/EINIT in the EVM (a production instance: "
                     "DEBUG clear), ECMD_INIT_ENCLAVE in the enclave's runtime")
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

        _remote_attestation(checks, args, avm, enclave, _identity(signed),
                            _identity(signed_b)[0], evm.data_dir if evm is not None else None)
        enclave.destroy()
        avm.close()
    finally:
        if evm is not None:
            evm.stop()
    if checks.failed:
        print(f"\nvsgx demo: {len(checks.failed)} check(s) failed", file=sys.stderr)
        return 1
    skipped = f", {len(checks.skipped)} skipped" if checks.skipped else ""
    print(f"\nvsgx demo: all checks passed{skipped} ({time.process_time():.1f} s of CPU)")
    return 0


def root_ca_for(args: argparse.Namespace, evm_data: Path | None) -> tuple[Any, str]:
    """The root CA a verifier trusts for this EVM: its data directory's
    (the EVM this demo started), else --root-ca or this user's default data
    directory's, as `vsgx quote verify` finds it."""
    from vsgx.crypto.pck import PckError, load_certificate
    from vsgx.evm import ATTESTATION_DIR, ROOT_CA_FILE, data_dir

    given = getattr(args, "root_ca", None)
    path = Path(given) if given else (evm_data or data_dir()) / ATTESTATION_DIR / ROOT_CA_FILE
    shown = str(path.relative_to(evm_data.parent)) if evm_data and not given else str(path)
    try:
        return load_certificate(path.read_bytes(), str(path)), shown
    except OSError as exc:
        raise VsgxError(f"no root CA to verify the quote against at {path} ({exc.strerror}): "
                        "it is the EVM's data directory's attestation/root-ca.pem") from None
    except PckError as exc:
        raise VsgxError(str(exc)) from None


def _remote_attestation(checks: Checks, args: argparse.Namespace, avm: Any, enclave: Any,
                        identity: tuple[bytes, bytes], other_mrenclave: bytes,
                        evm_data: Path | None) -> None:
    from dataclasses import replace

    from vsgx.arch.quote import parse_quote
    from vsgx.arch.report import Report, Targetinfo
    from vsgx.crypto.quote import QuoteGenerationError, QuotePolicy, QuoteVerificationError
    from vsgx.host.attestation import get_quote, qe_target_info
    from vsgx.samples import ra
    from vsgx.sdk import status_name
    from vsgx.sdk.status import SGX_ERROR_MAC_MISMATCH

    checks.title("remote attestation: a quote of the enclave, verified; a secret only it "
                 "can read")
    target = qe_target_info(avm)
    checks.check(True, "the QE's TARGETINFO (sgx_qe_get_target_info, over the channel): "
                 f"MRENCLAVE {Targetinfo.unpack(target).measurement.hex()[:16]}...")
    status, report, public_key = enclave.ecall_ra_begin(target, None, None)
    body = Report.unpack(report)
    checks.check(status == 0 and body.reportdata == ra.report_data(public_key),
                 "ecall_ra_begin: an X25519 key made in the enclave, bound into its REPORT "
                 "for the QE")
    print(f"    REPORTDATA = key || SHA-256(\"{ra.LABEL.decode()}\"), key "
          f"{public_key.hex()[:16]}...")
    if status != 0:
        return
    try:
        quote = get_quote(report, avm)
    except QuoteGenerationError as exc:
        checks.check(False, f"sgx_qe_get_quote refused the report: {exc}")
        return
    parsed = parse_quote(quote)
    checks.check(parsed.header.version == 3 and parsed.report_body.pack() == report[:384],
                 f"a DCAP v3 quote of that report (sgx_qe_get_quote): {len(quote)} bytes")
    try:
        root, root_path = root_ca_for(args, evm_data)
    except VsgxError as exc:
        checks.check(False, f"the quote cannot be verified: {exc}")
        return
    mrenclave, mrsigner = identity
    policy = QuotePolicy(mrenclave=mrenclave, mrsigner=mrsigner)
    try:
        _, key = ra.verify_attestation(quote, root, policy)
    except (QuoteVerificationError, ra.RaError) as exc:
        checks.check(False, f"the quote does not verify: {exc}")
        return
    checks.check(key == public_key, "the quote verifies to the EVM's root CA with the signed "
                 "file's MRENCLAVE and MRSIGNER, DEBUG clear")
    print(f"    root CA {root_path} (in the work directory); REPORTDATA binds the key"
          if evm_data else f"    root CA {root_path}; REPORTDATA binds the key")
    _third_party(checks, quote, root, evm_data)
    try:
        ra.verify_attestation(quote, root, replace(policy, mrenclave=other_mrenclave))
        checks.check(False, "a policy that names enclave B's MRENCLAVE accepted the quote")
    except QuoteVerificationError as exc:
        checks.check("MRENCLAVE" in str(exc), "a policy that names enclave B's MRENCLAVE "
                     "refuses it")

    secret = b"the database password: correct horse battery staple"
    message = ra.encrypt_secret(key, secret)
    flipped = bytes([message.ciphertext[0] ^ 1]) + message.ciphertext[1:]
    status = enclave.ecall_ra_provision(*replace(message, ciphertext=flipped).ecall_args())
    checks.check(status == SGX_ERROR_MAC_MISMATCH, "a ciphertext with one flipped bit is "
                 f"refused by the enclave: {status_name(status)}")
    status = enclave.ecall_ra_provision(*message.ecall_args())
    checks.check(status == 0, f"a {len(secret)}-byte secret encrypted to the bound key is "
                 "accepted (X25519, HKDF-SHA256, AES-128-CTR, AES-CMAC)")
    challenge = os.urandom(32)
    status, mac = enclave.ecall_ra_use(challenge, None)
    checks.check(status == 0 and ra.check_proof(secret, challenge, mac),
                 "the enclave proves it holds it: HMAC-SHA256 of a random challenge matches")
    check_snp_binding(checks, args, avm, report)


def _third_party(checks: Checks, quote: bytes, root: Any, evm_data: Path | None) -> None:
    """dcap-qvl (the `test` extra), with collateral made from the EVM's data
    directory as `vsgx quote collateral` makes it."""
    what = "dcap-qvl (a third-party DCAP verifier)"
    try:
        import dcap_qvl
    except ImportError:
        checks.skip(what, "it is not installed (pip install dcap-qvl)")
        return
    if evm_data is None:
        checks.skip(what, "its collateral comes from the EVM's data directory, and this "
                    "demo did not start the EVM")
        return
    from cryptography.hazmat.primitives import serialization

    from vsgx.evm import (
        ATTESTATION_DIR,
        SECRET_FILE,
        Machine,
        PlatformConfig,
        PlatformSecrets,
        QuotingEnclave,
        load_root_secret,
    )

    machine = Machine(PlatformConfig(), PlatformSecrets(load_root_secret(evm_data /
                                                                         SECRET_FILE)))
    collateral = QuotingEnclave(machine, evm_data / ATTESTATION_DIR).collateral()
    try:
        result = dcap_qvl.verify_with_root_ca(
            quote, dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral.split_json())),
            root.public_bytes(serialization.Encoding.DER), int(time.time()))
    except Exception as exc:  # whatever the library raises is its verdict
        checks.check(False, f"{what} refuses the quote: {' '.join(str(exc).split())}")
        return
    checks.check(result.status == "UpToDate", f"{what} accepts it with the EVM's collateral: "
                 f"{result.status}")


def check_snp_binding(checks: Checks, args: argparse.Namespace, avm: Any, report: bytes) -> None:
    """On an SEV-SNP EVM: its SNP report binds the QE's attestation key,
    verified to AMD's root."""
    from vsgx.cli.snp_options import measurements, parse_tcb
    from vsgx.crypto.quote import verify_quote_snp_binding
    from vsgx.crypto.snp import SnpPolicy
    from vsgx.host.attestation import get_quote_ex

    what = "SEV-SNP evidence binding the QE's key"
    result = get_quote_ex(report, avm, snp=True)
    if not result.snp_report:
        checks.skip(what, "the EVM has no SEV-SNP")
        return
    certificates = result.snp_certificates or getattr(args, "snp_certs", None)
    if not certificates:
        checks.check(False, f"{what} came without certificates: give --snp-certs DIR")
        return
    min_tcb = getattr(args, "snp_min_tcb", None)
    policy = SnpPolicy(measurements=measurements(args),
                       minimum_tcb=parse_tcb(min_tcb) if min_tcb else None,
                       allow_debug=getattr(args, "snp_allow_debug", False))
    try:
        snp = verify_quote_snp_binding(result.quote, result.snp_report, certificates, policy)
    except VsgxError as exc:
        checks.check(False, f"{what} does not verify: {exc}")
        return
    checks.check(True, f"{what}: the EVM's SNP report verifies to AMD's root (measurement "
                 f"{snp.measurement.hex()[:16]}...)")
