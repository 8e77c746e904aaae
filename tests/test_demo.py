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
        demo.root_ca_for(argparse.Namespace(), None)


class _SnpBackend:
    """An EVM's quoting calls, answering quote_ex with given SNP evidence."""

    qe_init = qe_target_info = qe_quote_size = quote = launch_token = None

    def __init__(self, result):
        self.result = result

    def quote_ex(self, report, qe_report_info=None, snp=False):
        assert snp
        return self.result


def test_the_snp_step_verifies_the_binding_to_the_root(plain_enclave, tmp_path, monkeypatch,
                                                        capsys):
    """On an SEV-SNP EVM the step checks the report beside the quote: to the
    root (a synthetic ARK trusted here in AMD's place) and its binding of
    the QE's key; a report binding another key fails, so does one without
    certificates."""
    import functools

    import test_snp
    from vsgx.crypto import snp as snp_module
    from vsgx.crypto.quote import QuoteResult, snp_report_data_for
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.quoting import quoting_enclave
    from vsgx.evm.vm import EnclaveVM
    from vsgx.host import Avm, Enclave
    from vsgx.host.attestation import get_quote, qe_target_info

    from plain_ops import PlainEnclave

    vm = EnclaveVM(PlatformConfig(), root_secret=bytes(32))
    qe = quoting_enclave(vm, tmp_path / "attestation")
    avm = Avm(vm)
    try:
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        report = plain.ereport(qe_target_info(avm), bytes(64))
        quote = get_quote(report, avm)
        plain.enclave.destroy()
    finally:
        avm.close()
    chain = test_snp.make_chain()
    table = snp_module.make_certificate_table(chain.certificates)
    monkeypatch.setattr(snp_module, "SnpPolicy", functools.partial(
        snp_module.SnpPolicy, trusted_arks=(chain.ark,)))
    args = argparse.Namespace(snp_certs=None, snp_min_tcb=None, snp_allow_debug=False,
                              snp_measurement=None)
    good = test_snp.make_report(chain.vcek_key, report_data=qe.snp_report_data)
    wrong = test_snp.make_report(chain.vcek_key, report_data=snp_report_data_for(bytes(64)))
    for snp_report, certificates, verdict in (
            (good, table, "ok   SEV-SNP evidence binding the QE's key: the EVM's SNP report "
                          "verifies to AMD's root"),
            (wrong, table, "FAIL SEV-SNP evidence binding the QE's key does not verify: "
                           "REPORT_DATA"),
            (good, b"", "FAIL SEV-SNP evidence binding the QE's key came without "
                        "certificates: give --snp-certs DIR")):
        checks = demo.Checks()
        demo.check_snp_binding(checks, args, _SnpBackend(QuoteResult(quote, None, snp_report,
                                                                certificates)), report)
        assert verdict in capsys.readouterr().out
        assert bool(checks.failed) == verdict.startswith("FAIL")
