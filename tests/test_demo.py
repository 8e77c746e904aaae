"""`vsgx demo` end to end, as the Quick start runs it: every step ok, the
remote-attestation steps included; without the third-party verifier its
step is skipped and the demo still passes; with --evm the quote is verified
to the root CA of the user's data directory."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from vsgx.cli import demo
from vsgx.cli.main import main
from vsgx.errors import VsgxError

from conftest import EvmProcess

RA_CHECKS = [
    "the QE's TARGETINFO (sgx_qe_get_target_info, over the channel)",
    "ecall_ra_begin: an X25519 key made in the enclave, bound into its REPORT for the QE",
    "a DCAP v3 quote of that report (sgx_qe_get_quote)",
    "the quote verifies to the EVM's root CA with the signed file's MRENCLAVE and MRSIGNER",
    "a policy that names enclave B's MRENCLAVE refuses it",
    "a ciphertext with one flipped bit is refused by the enclave: SGX_ERROR_MAC_MISMATCH",
    "a 51-byte secret encrypted to the bound key is accepted",
    "the enclave proves it holds it: HMAC-SHA256 of a random challenge matches",
]


def lines(output: str, mark: str) -> list[str]:
    return [line.strip()[len(mark):].strip() for line in output.splitlines()
            if line.strip().startswith(mark + " ")]


def test_the_demo_passes_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "vsgx", "demo", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not lines(result.stdout, "FAIL"), result.stdout
    passed = lines(result.stdout, "ok")
    for wanted in RA_CHECKS:
        assert any(line.startswith(wanted) for line in passed), (wanted, result.stdout)
    quote_size = re.search(r"sgx_qe_get_quote\): (\d+) bytes", result.stdout)
    assert quote_size and int(quote_size.group(1)) > 1000
    try:
        import dcap_qvl  # noqa: F401
    except ImportError:
        assert any(line.startswith("dcap-qvl") for line in lines(result.stdout, "skip"))
    else:
        assert any(line.startswith("dcap-qvl") and line.endswith("UpToDate")
                   for line in passed), result.stdout
    if not os.path.exists("/dev/sev-guest"):
        assert "skip SEV-SNP evidence binding the QE's key: skipped, the EVM has no SEV-SNP" \
            in result.stdout
    assert "vsgx demo: all checks passed" in result.stdout
    assert (workdir / "evm-data" / "attestation" / "root-ca.pem").is_file()


def test_without_the_third_party_verifier_its_step_is_skipped(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dcap_qvl", None)  # `import dcap_qvl` fails
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "skip dcap-qvl (a third-party DCAP verifier): skipped, it is not installed" in out
    assert not lines(out, "FAIL") and "all checks passed, " in out


def test_with_evm_the_root_ca_is_the_data_directorys(capsys, monkeypatch, tmp_path):
    data = tmp_path / "evm-data"
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", data)
    try:
        monkeypatch.setenv("VSGX_DATA_DIR", str(data))
        assert main(["demo", "--evm", evm.address]) == 0
    finally:
        evm.stop()
    out = capsys.readouterr().out
    assert f"root CA {data / 'attestation' / 'root-ca.pem'}; REPORTDATA binds the key" in out
    assert "skip dcap-qvl (a third-party DCAP verifier): skipped" in out
    assert not lines(out, "FAIL"), out


def test_a_missing_root_ca_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VSGX_DATA_DIR", str(tmp_path))
    with pytest.raises(VsgxError, match=r"no root CA to verify the quote against at .*"
                       r"root-ca\.pem"):
        demo._root_ca(argparse.Namespace(), None)
