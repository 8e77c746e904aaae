"""An unmodified C program under `vsgx exec` quotes its enclave's REPORT the
two ways DCAP applications do — through Intel's quote library API (the
drop-in libsgx_dcap_ql.so.1 that `vsgx exec` puts first on the program's
library path) and through the aesmd socket that `vsgx exec` serves for it —
and both quotes verify to the EVM's root CA with the key the enclave bound."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from test_exec import checks, compile_program, vsgx_exec, write_plan
from vsgx.crypto.pck import load_certificate
from vsgx.crypto.quote import QuotePolicy
from vsgx.evm.quoting import ATTESTATION_DIR, ROOT_CA_FILE
from vsgx.image import plan_from_bytes
from vsgx.samples import HELLO_DIR, ra
from vsgx.sdk.edl import load_edl

PROGRAMS = Path(__file__).resolve().parent / "native_programs"
pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which("gcc") is None,
                                reason="vsgx exec needs Linux and gcc")


@pytest.fixture(scope="module")
def urts_host(tmp_path_factory) -> Path:
    return compile_program(PROGRAMS / "urts_host.c",
                           tmp_path_factory.mktemp("ra-programs") / "urts_host")


def test_a_c_program_under_vsgx_exec_gets_quotes_through_the_c_api_and_aesmd(
        urts_host, sdk_enclave, executor, tmp_path, private_data_dir) -> None:
    plan_file = write_plan(sdk_enclave.signed, tmp_path / "hello.plan")
    ordinal = load_edl(HELLO_DIR / "hello.edl").ecall("ecall_ra_begin")[0]
    out = tmp_path / "out"
    out.mkdir()
    result = vsgx_exec("--", str(urts_host), "--ra", str(plan_file), str(ordinal), str(out),
                       executor=executor)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed and result.returncode == 0, result.stdout + result.stderr
    assert {"dlopen libsgx_dcap_ql.so.1", "sgx_qe_get_target_info", "sgx_qe_get_quote",
            "SelectAttKeyID", "InitQuoteEx", "GetQuoteSizeEx", "GetQuoteEx"} <= set(found), \
        result.stdout
    # The private EVM keeps its QE's files in the user's data directory.
    path = Path(private_data_dir) / ATTESTATION_DIR / ROOT_CA_FILE
    root = load_certificate(path.read_bytes(), str(path))
    plan = plan_from_bytes(sdk_enclave.signed.read_bytes())
    policy = QuotePolicy(mrenclave=plan.measure(), allow_debug=True)  # urts_host loads debug
    keys = set()
    for way in ("dcap", "aesm"):
        quote = (out / f"{way}.quote").read_bytes()
        _, key = ra.verify_attestation(quote, root, policy)
        assert key == (out / f"{way}.key").read_bytes()
        keys.add(key)
    assert len(keys) == 2  # two sessions: a key pair each


def test_the_program_is_told_where_aesmd_is(tmp_path, private_data_dir) -> None:
    """The environment `vsgx exec` gives: the socket, out-of-process mode,
    and the drop-in library first on the library path."""
    from vsgx.native.dcap import library_dir

    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\necho "socket=$VSGX_AESM_SOCKET"\necho "addr=$SGX_AESM_ADDR"\n'
                      'echo "path=$LD_LIBRARY_PATH"\ntest -S "$VSGX_AESM_SOCKET" && '
                      'echo "is a socket"\n')
    script.chmod(0o755)
    env = {**os.environ, "LD_LIBRARY_PATH": "/opt/elsewhere"}
    result = vsgx_exec("--", str(script), executor="unicorn", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert values["addr"] == "1"
    assert values["path"] == f"{library_dir()}:/opt/elsewhere"
    assert values["socket"].endswith("/aesm.socket") and "is a socket" in result.stdout
    assert not Path(values["socket"]).exists()  # removed when the program ended
