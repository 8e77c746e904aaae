"""`vsgx exec` and the legacy drivers of Intel's PSW before 2.16: a loader
written here in C (tests/native_programs/isgx_loader.c) loads the plain
test enclave through /dev/isgx as that urts does — mmap of the device
before CREATE, ADD_PAGE with mrmask, a launch token from aesmd over the
socket path Intel compiles in, INIT with it, EENTER by raw ENCLU — and
through the DCAP driver's /dev/sgx (SET_ATTRIBUTE, INIT without a token),
with the drivers' answers to bad input (a wrong or absent token, bad ioctl
structs), on both executors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from test_exec import PROGRAMS, checks, compile_program, vsgx_exec
from vsgx.arch.sigstruct import Sigstruct
from vsgx.crypto import load_private_key
from vsgx.crypto.measurement import MrEnclave
from vsgx.crypto.sigstruct import private_key_signer, sign
from vsgx.image import plan_from_bytes

pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which("gcc") is None,
                                reason="vsgx exec needs Linux and gcc")

WANTED = {
    "isgx probe", "edmm probe", "mmap private", "mmap not a power of two", "mmap",
    "add before create", "create outside the mapping", "create without mode64bit",
    "create reserved set", "create from an unreadable secs", "create bad arg", "create",
    "add misaligned", "add unreadable secinfo", "add unreadable source", "add bad secinfo",
    "add bad tcs", "add pages", "add twice", "launch token", "init wrong token",
    "init without a token", "init wrong measurement", "init outside the enclave", "init",
    "init twice", "add after init", "dcap init on isgx", "enter", "after close",
    "dcap open", "dcap mmap", "dcap create", "dcap add pages",
    "dcap set attribute without provision fd", "dcap set attribute", "isgx init on dcap",
    "dcap init", "launch token valid bit", "launch library", "launch library bad argument",
    "launch library token",
}


@pytest.fixture(scope="module")
def isgx_loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("legacy")
    return compile_program(PROGRAMS / "isgx_loader.c", out / "isgx_loader")


def test_isgx_and_dcap_loader_runs_the_plain_enclave(isgx_loader, plain_enclave,
                                                     executor) -> None:
    assert plain_enclave.sigstruct is not None
    result = vsgx_exec("--", str(isgx_loader), str(plain_enclave.signed),
                       str(plain_enclave.sigstruct), executor=executor)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert set(found) >= WANTED | {"dcap enter"}, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def test_locked_launch_control_takes_the_launch_enclaves_macd_token(isgx_loader,
                                                                    plain_enclave) -> None:
    """Without flexible launch control (--launch-control locked), aesmd's
    token is the launch enclave's, MACed under EINITTOKEN_KEY: INIT with it
    passes EINIT's checks; a token without VALID fails with
    SGX_INVALID_EINITTOKEN, and so does the DCAP driver's INIT."""
    assert plain_enclave.sigstruct is not None
    result = subprocess.run(
        [sys.executable, "-m", "vsgx", "exec", "--executor", "unicorn", "--launch-control",
         "locked", "--", str(isgx_loader), str(plain_enclave.signed),
         str(plain_enclave.sigstruct), "locked"],
        capture_output=True, text=True, timeout=600, check=False)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert set(found) >= WANTED, result.stdout + result.stderr
    assert "dcap enter" not in found
    assert result.returncode == 0, result.stdout + result.stderr


def _loader_measurement(plan, heap_mask: int) -> bytes:
    """MRENCLAVE of the loader's sequence (ECREATE with one SSA frame, then
    each run's pages, measured whole or not), the first unmeasured page
    with the 256-byte chunks ``heap_mask`` names EEXTENDed."""
    m = MrEnclave()
    m.ecreate(1, plan.ecreate.size)
    first_unmeasured = True
    for run in plan.runs:
        for index in range(run.count):
            offset = run.offset + index * 4096
            page = (run.data[index * 4096:(index + 1) * 4096] if run.data is not None
                    else run.fill.to_bytes(4, "little") * 1024)
            m.eadd(offset, run.secinfo_flags)
            if run.measured:
                mask = 0xFFFF
            else:
                mask, first_unmeasured = (heap_mask if first_unmeasured else 0), False
            for chunk in range(16):
                if mask >> chunk & 1:
                    m.eextend(offset + chunk * 256, page[chunk * 256:(chunk + 1) * 256])
    return m.digest()


def test_add_page_with_a_partial_mrmask_measures_exactly_those_chunks(
        isgx_loader, plain_enclave, tmp_path) -> None:
    """sgx_measure: an ADD_PAGE with mrmask 0x0101 EEXTENDs chunks 0 and 8
    only. A SIGSTRUCT signed over that measurement initialises the enclave
    (the original, signed over an unmeasured page, would not)."""
    assert plain_enclave.sigstruct is not None
    original = plain_enclave.sigstruct.read_bytes()
    plan = plan_from_bytes(plain_enclave.signed.read_bytes(), original)
    assert _loader_measurement(plan, 0) == Sigstruct.unpack(original).enclavehash
    wanted = _loader_measurement(plan, 0x0101)
    assert wanted != Sigstruct.unpack(original).enclavehash
    key = load_private_key(plain_enclave.key)
    resigned = sign(replace(Sigstruct.unpack(original), enclavehash=wanted), key.public_key(),
                    private_key_signer(key))
    sigstruct = tmp_path / "partial.sig"
    sigstruct.write_bytes(resigned.pack())
    result = vsgx_exec("--", str(isgx_loader), str(plain_enclave.signed), str(sigstruct),
                       "partial", executor="unicorn")
    found = checks(result.stdout)
    assert found.get("init") == "ok" and found.get("dcap init") == "ok", \
        result.stdout + result.stderr
    assert found.get("enter") == "ok", result.stdout


def test_driver_chooses_the_nodes_the_program_finds(isgx_loader, plain_enclave) -> None:
    """--driver in-kernel hides /dev/isgx and /dev/sgx (a runtime that
    probes them falls through to the in-kernel nodes, as on such a host)."""
    assert plain_enclave.sigstruct is not None
    result = vsgx_exec("--driver", "in-kernel", "--", str(isgx_loader),
                       str(plain_enclave.signed), str(plain_enclave.sigstruct),
                       executor="unicorn")
    found = checks(result.stdout)
    assert found["isgx probe"] != "ok" and found["dcap open"] != "ok", result.stdout
    assert result.returncode != 0


def test_launch_control_belongs_to_the_private_evm() -> None:
    result = vsgx_exec("--evm", "unix:/nonexistent", "--launch-control", "locked", "--",
                       "/bin/true")
    assert result.returncode != 0
    assert "--launch-control" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_vsgx_exec_the_legacy_devices_are_absent(isgx_loader, plain_enclave) -> None:
    """The loader itself is honest: outside vsgx exec there is no /dev/isgx
    here, and its first checks fail."""
    if Path("/dev/isgx").exists():
        pytest.skip("this machine has the out-of-tree driver")
    assert plain_enclave.sigstruct is not None
    result = subprocess.run([str(isgx_loader), str(plain_enclave.signed),
                             str(plain_enclave.sigstruct)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert checks(result.stdout)["isgx probe"] != "ok"
    assert result.returncode != 0


def test_print_env_carries_the_driver_and_launch_control() -> None:
    """The LD_PRELOAD form: the nodes to show and the launcher's EVM setting."""
    result = vsgx_exec("--print-env", "--driver", "isgx", "--launch-control", "locked")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["VSGX_EXEC_DRIVERS"] == "isgx"
    assert "--launch-control locked" in lines["VSGX_EXEC_SPAWN"]
    default = vsgx_exec("--print-env")
    assert "VSGX_EXEC_DRIVERS" not in default.stdout
    assert "--launch-control" not in default.stdout
