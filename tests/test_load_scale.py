"""Loading at scale: an SDK enclave whose ELRANGE is 32 GiB, almost all of
it heap that Intel's urts EADDs without EEXTEND, loads through a 64 MiB EPC
without materialising its pages: every EADD record is hashed in order (so
MRENCLAVE is the signed one), but pages get an EPC page and memory only
when first touched. Counted, never timed."""

from __future__ import annotations

import os

import pytest

from vsgx.samples import HELLO_DIR

EPC_PAGES = 16384  # 64 MiB
HEAP_SIZE = 28 << 30


@pytest.fixture(scope="module")
def huge_heap_enclave(build_dir, sdk_enclave, signing_key):
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    config = (HELLO_DIR / "hello.toml").read_text().replace(
        "heap_size = 0x40000", f"heap_size = {HEAP_SIZE:#x}")
    assert f"{HEAP_SIZE:#x}" in config
    signed = sign_enclave(sdk_enclave.unsigned.read_bytes(), parse_config(config),
                          load_private_key(signing_key))
    path = build_dir / "hello-28g-heap.signed.so"
    path.write_bytes(signed.data)
    return path


def test_a_32_gib_elrange_loads_without_materialising_its_heap(huge_heap_enclave, make_avm):
    from vsgx.sdk import Enclave

    avm = make_avm(epc_pages=EPC_PAGES)
    printed: list[str] = []
    enclave = Enclave.load(huge_heap_enclave, HELLO_DIR / "hello.edl", evm=avm,
                           ocalls={"ocall_print": printed.append})
    plan = enclave.raw.plan
    assert plan.ecreate.size == 32 << 30
    heap = sum(run.count for run in plan.runs if run.data is None and not run.measured)
    assert heap >= HEAP_SIZE // 4096
    driver, handle = avm.driver, enclave.raw.handle
    state = avm.evm.enclave(handle.secs_page)
    # Every page was EADDed (MRENCLAVE is the signed one: EINIT checked it,
    # and the plan agrees), but all beyond the EPC stayed deferred.
    assert state.mrenclave == plan.sigstruct.enclavehash == plan.measure()
    assert driver.stats["eadd"] + driver.stats["eadd_deferred"] == plan.added_pages
    assert driver.stats["eadd_deferred"] > plan.added_pages - EPC_PAGES
    assert len(handle.deferred) == len(state.deferred) > heap - EPC_PAGES
    assert len(state.pages) <= EPC_PAGES and driver.evictions == 0
    # The EVM's memory for the enclave is what is resident, not 32 GiB.
    allocated = os.fstat(state.memory.fd).st_blocks * 512
    assert allocated <= EPC_PAGES * 4096
    # And it runs: the trusted runtime's heap is used by the ECALLs.
    assert enclave.ecall_add(2, 3) == 5
    assert enclave.ecall_hello("a 32 GiB enclave") > 0
    assert any("a 32 GiB enclave" in line for line in printed)
    length, sealed = enclave.ecall_seal(b"secret", None, None, 1024)
    assert length > 0
    assert enclave.ecall_unseal(sealed[:length], None, None, 64)[1][:6] == b"secret"
    enclave.destroy()
    assert driver.free_epc_pages == EPC_PAGES
    assert not state.pages and not state.deferred  # the EVM removed them too
