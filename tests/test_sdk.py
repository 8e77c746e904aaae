"""The SDK protocol end to end with the sample enclave (built here, signed by
`vsgx sign`, following the SDK's trts conventions): ECMD_INIT_ENCLAVE,
ECALLs and OCALLs through EDL marshalling, nested ECALLs, ECMD_EXCEPT,
sealing, local attestation, untrusted events, pthreads and the TCS pool."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from vsgx.arch.report import Report
from vsgx.image.config import parse_config
from vsgx.image.signer import sign_enclave
from vsgx.samples import HELLO_DIR
from vsgx.sdk import Enclave, OcallError, OcallFailed, SgxStatusError
from vsgx.sdk import status as st
from vsgx.sdk.bridges import ArgumentError
from vsgx.sdk.edl import EdlError
from vsgx.sdk.features import CPU_FEATURES, SYSTEM_FEATURES_SIZE, cpuid, system_features
from vsgx.sdk.stdocalls import StandardOcalls

EDL = HELLO_DIR / "hello.edl"


class Hello:
    """The sample enclave with Python OCALL handlers."""

    def __init__(self, path, evm=None, **overrides):
        self.printed: list[str] = []
        self.callback = lambda x: self.enclave.ecall_private(x) + 1
        ocalls = {"ocall_print": self.printed.append, "ocall_nop": lambda: None,
                  "ocall_call_back": lambda x: self.callback(x)}
        ocalls.update(overrides)
        self.enclave = Enclave.load(path, edl=EDL, ocalls={k: v for k, v in ocalls.items()
                                                           if v is not None}, evm=evm)

    def __getattr__(self, name):
        return getattr(self.enclave, name)


def signed_variant(sdk_enclave, tmp_path_factory, name: str, change: tuple[str, str]):
    from vsgx.crypto import load_private_key

    text = (HELLO_DIR / "hello.toml").read_text()
    assert change[0] in text
    config = parse_config(text.replace(*change))
    signed = sign_enclave(sdk_enclave.unsigned.read_bytes(), config,
                          load_private_key(sdk_enclave.key))
    path = tmp_path_factory.mktemp(name) / "hello.signed.so"
    path.write_bytes(signed.data)
    return path


@pytest.fixture(scope="module")
def two_tcs_variant(sdk_enclave, tmp_path_factory):
    """The same code with two TCSs: another MRENCLAVE."""
    return signed_variant(sdk_enclave, tmp_path_factory, "two", ("tcs_count = 4",
                                                                 "tcs_count = 2"))


@pytest.fixture(scope="module")
def bind_variant(sdk_enclave, tmp_path_factory):
    return signed_variant(sdk_enclave, tmp_path_factory, "bind", ('tcs_policy = "unbind"',
                                                                  'tcs_policy = "bind"'))


@pytest.fixture
def hello(sdk_enclave, make_avm):
    enclave = Hello(sdk_enclave.signed, evm=make_avm())
    yield enclave
    enclave.destroy()


# -- the protocol over every transport ------------------------------------------
def test_ecalls_and_ocalls_over_every_transport(sdk_enclave, split_avm):
    hello = Hello(sdk_enclave.signed, evm=split_avm)
    try:
        assert hello.ecall_hello("world") == 37
        assert hello.printed == ["Hello from inside the enclave, world!"]
        assert hello.ecall_add(2, 40) == 42
        assert hello.ecall_add(-5, 3) == -2
        assert hello.ecall_nop() is None
        assert hello.ecall_ocall_nop(25) == 25
        assert hello.ecall_call_back(21) == 43  # OCALL → nested private ECALL → ORET
        length, sealed = hello.ecall_seal(b"over the channel", None, None, 256)
        assert hello.ecall_unseal(sealed[:length], None, None, 64)[0] == 16
    finally:
        hello.destroy()


def test_init_runs_the_trts_and_the_results_are_typed(hello):
    assert hello.urts.initialized
    assert hello.ecall_hello(b"bytes too") == len("Hello from inside the enclave, bytes too!")
    status, regs = hello.ecall_cpuid(0)
    assert status == 0 and isinstance(regs, bytes) and len(regs) == 16
    assert hello.ecall_add(a=1, b=2) == 3


# -- marshalling errors --------------------------------------------------------------
def test_bad_arguments_are_refused_before_entering(hello):
    with pytest.raises(ArgumentError, match="missing 'b'"):
        hello.ecall_add(1)
    with pytest.raises(ArgumentError, match="takes 2 arguments"):
        hello.ecall_add(1, 2, 3)
    with pytest.raises(EdlError, match="bad argument"):
        hello.ecall_add("one", 2)
    with pytest.raises(EdlError, match="the EDL makes it 10"):
        hello.ecall_seal(b"abc", 10, None, 64)
    with pytest.raises(EdlError, match="takes bytes"):
        hello.ecall_seal(3.5, 4, None, 64)
    assert hello.call(999) == st.SGX_ERROR_INVALID_FUNCTION
    assert hello.call(-1) == st.SGX_ERROR_INVALID_FUNCTION
    with pytest.raises(AttributeError, match="no attribute or ECALL"):
        hello.ecall_missing()
    assert hello.ecall_add(20, 22) == 42  # nothing was entered


def test_the_trusted_bridge_checks_what_the_proxy_would_not_send(hello):
    # A raw ECALL with its ms struct inside the enclave: CHECK_REF_POINTER.
    assert hello.call(1, hello.raw.base + 0x1000) == st.SGX_ERROR_INVALID_PARAMETER
    assert hello.call(1, 0) == st.SGX_ERROR_INVALID_PARAMETER
    assert hello.ecall_add(1, 1) == 2


# -- sealing and local attestation -----------------------------------------------------
def test_sealed_data_unseals_in_a_later_run_of_the_same_platform(sdk_enclave, make_vm,
                                                                 make_avm):
    first = Hello(sdk_enclave.signed, evm=make_avm(make_vm(b"P" * 32)))
    length, sealed = first.ecall_seal(b"the secret", None, None, 256)
    assert length > 10 and b"the secret" not in sealed
    first.destroy()
    later = Hello(sdk_enclave.signed, evm=make_avm(make_vm(b"P" * 32)))
    count, secret = later.ecall_unseal(sealed[:length], None, None, 64)
    assert count == 10 and secret[:count] == b"the secret"
    tampered = bytearray(sealed[:length])
    tampered[-1] ^= 1
    assert later.ecall_unseal(bytes(tampered), None, None, 64)[0] == -st.SGX_ERROR_MAC_MISMATCH
    later.destroy()
    other_platform = Hello(sdk_enclave.signed, evm=make_avm(make_vm(b"Q" * 32)))
    assert other_platform.ecall_unseal(sealed[:length], None, None, 64)[0] == \
        -st.SGX_ERROR_MAC_MISMATCH
    other_platform.destroy()


def test_sealed_in_process_unseals_in_an_evm_process_of_the_same_platform(
        sdk_enclave, make_vm, make_avm, evm_processes):
    from vsgx.avm.remote import connect_evm
    from vsgx.channel import EvidencePolicy

    from conftest import ROOT_SECRET

    local = Hello(sdk_enclave.signed, evm=make_avm(make_vm(ROOT_SECRET)))
    length, sealed = local.ecall_seal(b"moves between deployments", None, None, 256)
    local.destroy()
    remote_avm = make_avm(connect_evm(evm_processes("unix"),
                                      EvidencePolicy(allow_unprotected=True), warn=False))
    remote = Hello(sdk_enclave.signed, evm=remote_avm)
    count, secret = remote.ecall_unseal(sealed[:length], None, None, 64)
    assert secret[:count] == b"moves between deployments"
    remote.destroy()


def test_two_enclaves_attest_each_other_locally(sdk_enclave, two_tcs_variant, make_avm):
    avm = make_avm()
    a = Hello(sdk_enclave.signed, evm=avm)
    b = Hello(two_tcs_variant, evm=avm)
    assert a.mrenclave != b.mrenclave and a.mrsigner == b.mrsigner
    for verifier, prover in ((b, a), (a, b)):
        status, target = verifier.ecall_target_info()
        assert status == 0
        data = b"nonce from " + prover.mrenclave[:4].hex().encode()
        status, report = prover.ecall_report(target, data.ljust(64, b"\0"))
        assert status == 0
        parsed = Report.unpack(report)
        assert parsed.mrenclave == prover.mrenclave and parsed.reportdata.startswith(data)
        assert verifier.ecall_verify_report(report) == 0
        forged = bytearray(report)
        forged[320] ^= 1  # REPORTDATA
        assert verifier.ecall_verify_report(bytes(forged)) == st.SGX_ERROR_MAC_MISMATCH
        assert prover.ecall_verify_report(report) == st.SGX_ERROR_MAC_MISMATCH  # not its key
    a.destroy()
    b.destroy()


# -- exceptions ---------------------------------------------------------------------
@pytest.mark.parametrize("kind, expected", [
    (1, 1_000_001),  # #UD: the handler skips ud2
    (2, 1_000_222),  # #DE: the handler skips div and sets RAX
    (3, 1_024_589),  # #PF on a guard page (EXINFO): the handler points RAX at a word
])
def test_faults_reach_the_enclaves_handler_and_execution_continues(hello, kind, expected):
    assert hello.ecall_fault(kind) == expected
    assert hello.ecall_fault(kind) == expected  # the SSA frame was released
    assert hello.ecall_add(1, 2) == 3


def test_an_unhandled_exception_crashes_the_enclave_for_good(hello):
    with pytest.raises(SgxStatusError) as crashed:
        hello.ecall_fault(4)  # int3: no handler takes #BP
    assert crashed.value.status == st.SGX_ERROR_ENCLAVE_CRASHED
    with pytest.raises(SgxStatusError) as again:
        hello.ecall_add(1, 2)
    assert again.value.status == st.SGX_ERROR_ENCLAVE_CRASHED


# -- OCALLs ---------------------------------------------------------------------------
def test_cpuid_ocall_describes_the_emulated_cpu(hello):
    status, regs = hello.ecall_cpuid(0)
    assert status == 0
    eax, ebx, ecx, edx = struct.unpack("<4I", regs)
    assert struct.pack("<3I", ebx, edx, ecx) == b"GenuineIntel" and eax >= 7
    _, regs = hello.ecall_cpuid(1)
    ecx = struct.unpack("<4I", regs)[2]
    assert ecx & 1 << 25 and ecx & 1 << 20 and ecx & 1 << 30  # AES, SSE4.2, RDRAND
    assert not ecx & (1 << 28 | 1 << 27 | 1 << 12)  # no AVX, OSXSAVE, FMA


def test_private_ecalls_only_through_the_ocalls_that_allow_them(hello):
    with pytest.raises(SgxStatusError) as root:
        hello.ecall_private(4)
    assert root.value.status == st.SGX_ERROR_ECALL_NOT_ALLOWED
    hello.callback = lambda x: hello.ecall_add(x, x)  # public, but not in allow()
    with pytest.raises(SgxStatusError) as nested:
        hello.ecall_call_back(5)
    assert nested.value.status == st.SGX_ERROR_ECALL_NOT_ALLOWED
    hello.callback = lambda x: hello.ecall_private(x) * 10
    assert hello.ecall_call_back(5) == 100


def test_an_ocall_without_handler_is_named_and_the_enclave_survives(sdk_enclave, make_avm):
    hello = Hello(sdk_enclave.signed, evm=make_avm(), ocall_nop=None)
    with pytest.raises(OcallError, match=r"ocall_nop \(index 1\)"):
        hello.ecall_ocall_nop(3)
    assert hello.ecall_add(2, 3) == 5
    hello.set_ocall("ocall_nop", lambda: None)
    assert hello.ecall_ocall_nop(3) == 3
    hello.destroy()


def test_a_failing_handler_surfaces_after_the_ecall_unwound(hello):
    def explode(text):
        raise RuntimeError("handler bug")

    hello.set_ocall("ocall_print", explode)
    with pytest.raises(OcallFailed, match="handler bug"):
        hello.ecall_hello("x")
    hello.set_ocall("ocall_print", hello.printed.append)
    assert hello.ecall_hello("y") > 0 and hello.printed[-1].endswith("y!")


def test_a_handler_failing_after_a_nested_ecall_fails_only_its_own_ecall(hello):
    def nested_then_fail(x):
        assert hello.ecall_private(x) == 2 * x  # a nested ECALL that succeeds
        raise ZeroDivisionError("after the nested ECALL")

    hello.callback = nested_then_fail
    with pytest.raises(OcallFailed, match="after the nested ECALL"):
        hello.ecall_call_back(4)
    hello.callback = lambda x: hello.ecall_private(x) + 1
    assert hello.ecall_call_back(4) == 9  # no error of the last ECALL is left over
    assert hello.ecall_add(1, 2) == 3


def test_unknown_ocall_names_are_refused(sdk_enclave, make_avm):
    from vsgx.errors import VsgxError

    with pytest.raises(VsgxError, match="no OCALL named ocall_typo"):
        Hello(sdk_enclave.signed, evm=make_avm(), ocall_typo=print)


# -- threads -------------------------------------------------------------------------
def run_in_thread(fn, *args):
    result: dict[str, object] = {}

    def body():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result


@pytest.mark.parametrize("how", [0, 1])  # set / set_multiple
def test_untrusted_events_wake_a_waiting_enclave_thread(hello, how):
    thread, result = run_in_thread(hello.ecall_wait_event)
    deadline = time.monotonic() + 30
    while hello.ecall_wake_event(how) == 0:
        assert time.monotonic() < deadline, "the waiter never registered"
        time.sleep(0.01)
    thread.join(30)
    assert not thread.is_alive() and result == {"value": 0}


def test_pthread_create_runs_new_enclave_threads_on_free_tcss(hello):
    assert hello.ecall_spawn(3) == 3
    assert not hello.standard.thread_errors


def test_out_of_tcs_as_intels_urts_reports_it(hello):
    release = threading.Event()
    entered = threading.Semaphore(0)

    def block(x):
        entered.release()
        release.wait(30)
        return x

    hello.callback = block
    threads = [run_in_thread(hello.ecall_call_back, i) for i in range(4)]
    for _ in range(4):
        assert entered.acquire(timeout=30)
    with pytest.raises(SgxStatusError) as busy:
        hello.ecall_add(1, 1)
    assert busy.value.status == st.SGX_ERROR_OUT_OF_TCS
    release.set()
    for thread, result in threads:
        thread.join(30)
        assert "error" not in result
    assert hello.ecall_add(1, 1) == 2


def test_bind_policy_keeps_a_thread_on_its_tcs_until_it_exits(bind_variant, sdk_enclave,
                                                               make_avm):
    bound = Hello(bind_variant, evm=make_avm())
    assert bound.urts.bind
    bound.ecall_add(1, 1)
    tcs = bound.urts.bound_tcs
    assert tcs is not None
    bound.ecall_add(1, 1)
    assert bound.urts.bound_tcs == tcs
    for _ in range(6):  # more threads than TCSs: exited threads give theirs back
        thread, result = run_in_thread(bound.ecall_add, 2, 2)
        thread.join(30)
        assert result == {"value": 4}
    bound.destroy()
    unbound = Hello(sdk_enclave.signed, evm=make_avm())
    unbound.ecall_add(1, 1)
    assert unbound.urts.bound_tcs is None
    unbound.destroy()


# -- the untrusted side's own pieces -----------------------------------------------------
def test_system_features_block_layout():
    block = system_features(cpu_core_num=3)
    assert len(block) == SYSTEM_FEATURES_SIZE == 176
    features, version, sfs = struct.unpack_from("<QIQ", block, 0)
    assert features == CPU_FEATURES and version == 0 and sfs == 0xC000000000000000
    assert struct.unpack_from("<4I", block, 20 + 16) == cpuid(1)
    assert struct.unpack_from("<4I", block, 20 + 16 * 7) == cpuid(7)
    assert block[20 + 32:20 + 64] == bytes(32)  # rows 2 and 3 stay zero
    size, ext, cores = struct.unpack_from("<QQI", block, 156)
    assert size == 176 and ext == CPU_FEATURES and cores == 3
    # Nothing the executor cannot run: AVX (16), SHA is ext bit 35, AVX2 (23).
    assert not CPU_FEATURES & (1 << 16 | 1 << 23 | 1 << 35)


def test_untrusted_events_remember_a_wake_before_the_wait():
    events = StandardOcalls(urts=None)  # type: ignore[arg-type]
    assert events.set_event(0x1000) == 0
    assert events.set_event(0x1000) == 0
    assert events.wait_event(0x1000) == 0 and events.wait_event(0x1000) == 0
    assert events.wait_event(0) == st.SGX_ERROR_INVALID_PARAMETER
    assert events.pthread_wait_timeout(0x2000, 1) == 0  # a timeout is not an error
    done = []
    waiter = threading.Thread(target=lambda: done.append(events.set_wait_events(0x3000,
                                                                                0x4000)))
    waiter.start()
    assert events.event(0x3000).acquire(timeout=30)  # set(0x3000) happened
    assert events.set_multiple_events(struct.pack("<Q", 0x4000), 1) == 0
    waiter.join(30)
    assert done == [0]
    assert events.set_multiple_events(b"\0" * 4, 1) == st.SGX_ERROR_INVALID_PARAMETER


# -- one EVM object, several loads -------------------------------------------------------
def test_loads_on_one_enclave_vm_share_its_driver_and_never_collide(sdk_enclave, make_vm):
    from vsgx.host import Avm, connect

    vm = make_vm()
    first = Hello(sdk_enclave.signed, evm=vm)
    second = Hello(sdk_enclave.signed, evm=vm)  # was: ECREATE faulted, the EPC page is in use
    try:
        assert first.raw.avm is second.raw.avm is connect(vm)
        assert first.raw.handle.secs_page != second.raw.handle.secs_page
        assert first.ecall_add(1, 2) == 3 and second.ecall_add(3, 4) == 7
        first.destroy()
        third = Hello(sdk_enclave.signed, evm=vm)  # reuses the freed EPC pages
        assert third.ecall_add(5, 6) == 11 and second.ecall_add(1, 1) == 2
        third.destroy()
        other = Avm(vm)  # a second application on the same machine: the same EPC allocator
        assert other.driver is second.raw.avm.driver
        fourth = Hello(sdk_enclave.signed, evm=other)
        assert fourth.ecall_add(2, 2) == 4
        other.close()  # destroys only what it loaded
        assert second.ecall_add(2, 3) == 5
    finally:
        second.destroy()
        connect(vm).close()


def test_concurrent_loads_on_one_enclave_vm(sdk_enclave, make_vm):
    vm = make_vm()
    results: list[object] = []

    def load_and_call(value):
        try:
            enclave = Hello(sdk_enclave.signed, evm=vm)
            results.append((enclave, enclave.ecall_add(value, value)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=load_and_call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert sorted(r[1] for r in results if isinstance(r, tuple)) == [0, 2, 4], results
    finally:
        for result in results:
            if isinstance(result, tuple):
                result[0].destroy()


def test_a_destroyed_enclave_gives_a_vsgx_error_not_a_fault(sdk_enclave, make_avm):
    from vsgx.avm.driver import EnclaveLost
    from vsgx.errors import VsgxError

    avm = make_avm()
    hello = Hello(sdk_enclave.signed, evm=avm)
    raw = hello.raw
    hello.destroy()
    for attempt in (lambda: hello.ecall_add(1, 2), lambda: raw.eenter(),
                    lambda: raw.eenter(tcs=raw.tcs[0]), lambda: raw.eresume(raw.tcs[0]),
                    lambda: raw.mprotect(raw.base, 4096, 1),
                    lambda: raw.restrict_permissions(raw.base, 4096, 1),
                    lambda: raw.modify_types(raw.base, 4096, 4),
                    lambda: raw.remove_pages(raw.base, 4096)):
        with pytest.raises(EnclaveLost, match="destroyed"):
            attempt()
    hello.destroy()  # twice is harmless
    survivor = Hello(sdk_enclave.signed, evm=avm)
    avm.close()  # the application goes away: its enclaves with it
    with pytest.raises(VsgxError, match="destroyed"):
        survivor.ecall_add(1, 2)
