"""What only the native executor has to show: its runner survives what
enclave code does (a system call, a crash) and its own death is an error,
never a hang; RDTSC follows the SGX version; EPC plaintext stays in the EVM
and its runners."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from vsgx.arch import Vector
from vsgx.errors import VsgxError
from vsgx.evm.native_executor import NativeExecutor, native_support
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave

from conftest import ROOT_SECRET
from plain_ops import (
    OP_BAD_JUMP,
    OP_MAKE_SECRET,
    OP_NOP,
    OP_RDTSC,
    OP_RECURSE,
    OP_SECRET_HASH,
    OP_SYSCALL,
    OP_WAIT_FLAG,
    PlainEnclave,
)

pytestmark = pytest.mark.skipif(not native_support()[0],
                                reason=f"no native executor here: {native_support()[1]}")


@pytest.fixture
def native_plain(plain_enclave):
    def load(**config):
        vm = EnclaveVM(PlatformConfig(**config), root_secret=ROOT_SECRET, executor="native")
        avm = Avm(vm)
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        made.append(avm)
        return plain

    made: list[Avm] = []
    yield load
    for avm in made:
        avm.close()


def runner_of(plain: PlainEnclave, tcs_index: int) -> NativeExecutor:
    encl = plain.enclave.avm.evm.enclave(plain.enclave.handle.secs_page)
    executor = encl.threads[plain.tcs[tcs_index]].executor
    assert isinstance(executor, NativeExecutor)
    return executor


def test_a_system_call_is_ud_and_the_runner_survives(native_plain):
    plain = native_plain()
    result, _ = plain.call(0, OP_SYSCALL)
    assert result.aex and result.vector == Vector.UD and result.exitinfo_valid
    runner = runner_of(plain, 0)
    assert runner.process.poll() is None
    assert plain.call(1, OP_NOP)[0].kind == "eexit"
    # The refused call did not happen: the runner is still the same process.
    assert runner_of(plain, 0).process.pid == runner.process.pid


@pytest.mark.parametrize("op, argument", [(OP_RECURSE, 1 << 20), (OP_BAD_JUMP, 0x1000)])
def test_a_crashing_enclave_ends_as_an_aex(native_plain, op, argument):
    plain = native_plain()
    result, _ = plain.call(0, op, argument)
    assert result.aex and result.vector in (Vector.PF, Vector.GP)
    assert runner_of(plain, 0).process.poll() is None
    assert plain.call(1, OP_NOP)[0].kind == "eexit"


def test_a_dead_runner_is_an_error_not_a_hang(native_plain):
    plain = native_plain()
    plain.call(0, OP_NOP)
    runner = runner_of(plain, 0)
    outcome: list[BaseException | None] = []

    def spin() -> None:
        try:
            plain.call(0, OP_WAIT_FLAG, 0xDEAD, 1 << 62)  # waits for a flag nobody sets
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.3)
    os.kill(runner.process.pid, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive(), "the entry hung after its runner died"
    assert outcome and isinstance(outcome[0], VsgxError)
    assert "runner" in str(outcome[0])
    # The TCS got a new runner; the enclave and the EVM go on.
    assert runner_of(plain, 0).process.pid != runner.process.pid
    assert plain.call(0, OP_NOP)[0].kind == "eexit"
    other = native_plain()
    assert other.call(0, OP_NOP)[0].kind == "eexit"


@pytest.mark.parametrize("sgx2", [True, False])
def test_rdtsc_follows_the_sgx_version(native_plain, sgx2):
    plain = native_plain(sgx2=sgx2)
    result, words = plain.call(0, OP_RDTSC)
    if sgx2:
        assert result.kind == "eexit" and words[1] > 0
    else:
        assert result.aex and result.vector == Vector.UD


def test_epc_plaintext_never_reaches_application_memory(native_plain):
    plain = native_plain()
    assert plain.call(0, OP_MAKE_SECRET)[0].kind == "eexit"
    for index in range(4):
        plain.call(index % len(plain.tcs), OP_SECRET_HASH)
    vm = plain.enclave.avm.evm
    secret_page = plain.symbol("encl_secret")
    epc = plain.enclave.handle.pages[secret_page].epc
    secret = b"".join(vm.edbgrd(epc + (secret_page % 4096) + 8 * i)[1].to_bytes(8, "little")
                      for i in range(4))
    assert len(set(secret)) > 4
    memory = plain.enclave.avm.memory
    for page in list(memory._pages):
        assert secret[:16] not in bytes(memory._pages[page]), f"the secret is in {page:#x}"
