"""EDBGRD / EDBGWR (debug enclaves only), EPA, the CPUID model, and the
platform secret."""

from __future__ import annotations

import os
import stat

import pytest

from vsgx.arch import Fault, SgxError, Vector
from vsgx.evm.platform import PlatformConfig, load_root_secret
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Enclave


@pytest.fixture
def executor():
    """EDBGRD, EDBGWR, CPUID and the platform secret do not depend on the
    executor (their checks: tests/leaves/test_leaf_sgx2_debug.py)."""
    return "unicorn"


def test_edbgrd_and_edbgwr_on_a_debug_enclave(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    buffer = plain.symbol("encl_buffer")
    epc = plain.enclave.handle.pages[buffer].epc
    status, value = vm.edbgrd(epc)
    assert status is SgxError.SUCCESS and value == 1
    assert vm.edbgwr(epc + 8, 0xFEEDFACE) is SgxError.SUCCESS
    from plain_ops import OP_GET_ADDRESS

    _, words = plain.call(0, OP_GET_ADDRESS, 0, buffer + 8)
    assert words[1] == 0xFEEDFACE
    tcs_epc = plain.enclave.handle.pages[plain.tcs[0]].epc
    status, ossa = vm.edbgrd(tcs_epc + 16)
    assert status is SgxError.SUCCESS and ossa == plain.symbol("encl_ssa") - plain.base
    with pytest.raises(Fault):
        vm.edbgwr(tcs_epc + 16, 0)  # only TCS.FLAGS is writable
    assert vm.edbgwr(tcs_epc + 8, 1) is SgxError.SUCCESS  # DBGOPTIN
    with pytest.raises(Fault):
        vm.edbgrd(epc + 3)


def test_a_breakpoint_written_into_code_that_already_ran_is_hit(plain):
    """EDBGWR of an INT3 into a function the enclave has run (a debugger's
    breakpoint): the next call stops there with #BP on every executor (no
    stale translation of the old bytes), and the old bytes run again once
    they are written back."""
    from plain_ops import OP_DIVIDE

    vm = plain.enclave.avm.evm
    function = plain.symbol("encl_divide")
    word = function & ~7
    epc = plain.enclave.handle.pages[function & ~4095].epc + (word & 4095)
    result, words = plain.call(0, OP_DIVIDE, 10, 2)
    assert result.kind == "eexit" and words[3] == 5
    status, original = vm.edbgrd(epc)
    assert status is SgxError.SUCCESS
    shift = 8 * (function - word)
    patched = original & ~(0xFF << shift) | 0xCC << shift
    assert vm.edbgwr(epc, patched) is SgxError.SUCCESS
    stopped, _ = plain.call(0, OP_DIVIDE, 10, 2)
    assert stopped.aex and stopped.vector == Vector.BP
    assert vm.edbgwr(epc, original) is SgxError.SUCCESS
    result, words = plain.call(1, OP_DIVIDE, 12, 3)  # TCS 0 waits in its AEX
    assert result.kind == "eexit" and words[3] == 4


def test_edbgrd_of_a_production_enclave_faults(plain_enclave, make_avm):
    enclave = Enclave.load(plain_enclave.signed, evm=make_avm(), debug=False)
    vm = enclave.avm.evm
    epc = next(iter(enclave.handle.pages.values())).epc
    with pytest.raises(Fault) as raised:
        vm.edbgrd(epc)
    assert raised.value.vector == Vector.GP
    enclave.destroy()


def test_cpuid_leaf_0x12_describes_the_platform(make_vm):
    vm = make_vm(epc_pages=1024, sgx2=False)
    cpuid = vm.cpuid()
    assert not cpuid.sgx2 and cpuid.epc_sections[0].size == 1024 * 4096
    assert cpuid.leaf(0)[0] & 0x3 == 0x1
    with pytest.raises(Fault):
        vm.eaug(vm.config.epc_base, vm.config.epc_base, 0)


def test_root_secret_persists_with_mode_0600(tmp_path):
    path = tmp_path / "state" / "secret"
    first = load_root_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_root_secret(path) == first and len(first) == 32
    vm = EnclaveVM(PlatformConfig(), secret_path=path)
    assert vm.machine.secrets.derivation_key
    os.chmod(path, 0o644)
    from vsgx.errors import VsgxError

    with pytest.raises(VsgxError, match="chmod 600"):
        load_root_secret(path)
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(VsgxError, match="corrupt"):
        load_root_secret(path)


def test_the_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    from vsgx.evm.platform import data_dir

    monkeypatch.setenv("VSGX_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
