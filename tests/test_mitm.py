"""A man in the middle on loopback between an AVM and an EVM process: every
kind of tampering with TLS records ends the session with a clear error
within the configured bound, and the EVM goes on serving a client that was
not touched. (benchmarks/mitm.py measures the same cases over many trials.)"""

from __future__ import annotations

import random
import threading
import time

import pytest

from vsgx.avm.remote import connect_evm
from vsgx.channel import EvidencePolicy
from vsgx.errors import VsgxError
from vsgx.host import Avm, Enclave

from conftest import EvmProcess
from mitm_proxy import TamperingProxy
from plain_ops import OP_SET_FLAG, OP_WAIT_FLAG, PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)
TIMEOUT = 2.0  # the AVM's deadline in these tests
PEER_TIMEOUT = 3.0  # the EVM's
SLACK = 15.0  # generous: a loaded machine must not fail these
BOUND = TIMEOUT + SLACK
CLEAR = ("tampered", "truncated", "closed", "stopped answering", "stopped reading")
CASES = [("flip", "c2s"), ("flip", "s2c"), ("length", "c2s"), ("length", "s2c"),
         ("replay", "c2s"), ("replay", "s2c"), ("drop", "c2s"), ("drop", "s2c"),
         ("reorder", "c2s"), ("reorder", "s2c"), ("truncate", "both"), ("blackhole", "both")]


@pytest.fixture(scope="module")
def mitm_evm(tmp_path_factory):
    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path_factory.mktemp("mitm") / "data",
                     "--peer-timeout", str(PEER_TIMEOUT))
    yield evm
    evm.stop()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


class Bystander:
    """A second client, connected straight to the EVM, entering its enclave
    all the time the attack goes on."""

    def __init__(self, address: str, enclave_path):
        self.avm = Avm(connect_evm(address, DEV, warn=False, timeout=TIMEOUT))
        self.enclave = Enclave.load(enclave_path, evm=self.avm)
        self.calls = 0
        self.errors: list[object] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.calls += 1
            try:
                result = self.enclave.eenter(rdi=0, rsi=self.calls)
                if result.rsi != 2 * self.calls:
                    self.errors.append(("wrong result", self.calls, result.rsi))
            except VsgxError as exc:
                self.errors.append(exc)
                return
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the untouched client hung"
        assert self.errors == [] and self.calls > 0
        assert self.enclave.eenter(rdi=0, rsi=21).rsi == 42
        self.avm.close()


def _until_error(enclave: Enclave, limit: float) -> tuple[BaseException | None, float]:
    """Enter the enclave again and again (with a second thread now and then,
    so that requests overlap) until an error; (error, when it came)."""
    outcome: list[tuple[BaseException | None, float]] = []

    def run() -> None:
        try:
            for _ in range(1000):
                enclave.eenter(rdi=0, rsi=1)
                threading.Thread(target=_quiet, args=(enclave,), daemon=True).start()
            outcome.append((None, time.monotonic()))
        except BaseException as exc:
            outcome.append((exc, time.monotonic()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the AVM still waits after {limit:.0f} s"
    return outcome[0]


def _quiet(enclave: Enclave) -> None:
    try:
        enclave.eenter(rdi=0, rsi=1)
    except VsgxError:
        pass


@pytest.mark.parametrize(("mode", "direction"), CASES)
def test_tampering_ends_the_session_within_its_bound(mitm_evm, plain_enclave, mode, direction):
    bystander = Bystander(mitm_evm.address, plain_enclave.signed)
    proxy = TamperingProxy(_port(mitm_evm.address), random.Random(f"{mode}/{direction}"))
    avm = Avm(connect_evm(proxy.address, DEV, warn=False, timeout=TIMEOUT))
    try:
        enclave = Enclave.load(plain_enclave.signed, evm=avm)
        assert enclave.eenter(rdi=0, rsi=1).rsi == 2
        proxy.arm(mode, direction)
        armed = time.monotonic()
        error, when = _until_error(enclave, BOUND + 10)
        assert isinstance(error, VsgxError), f"{mode}/{direction} went unnoticed"
        text = str(error)
        assert "\n" not in text and any(word in text for word in CLEAR), text
        assert proxy.fired is not None
        assert when - max(proxy.fired, armed) <= BOUND, \
            f"{mode}/{direction}: detected after {when - proxy.fired:.1f} s"
    finally:
        proxy.close()
        avm.close()
    bystander.finish()


def test_an_avm_gone_silent_during_a_long_ecall_is_dropped_by_the_evm(mitm_evm, plain_enclave):
    """A blackhole while an enclave runs: the AVM gives up after its
    deadline, and the EVM, which no longer hears the AVM's PINGs, ends the
    session after its own (and stops the enclave)."""
    proxy = TamperingProxy(_port(mitm_evm.address))
    avm = Avm(connect_evm(proxy.address, DEV, warn=False, timeout=TIMEOUT))
    try:
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        spinning = threading.Thread(target=_quiet_call, args=(plain, OP_WAIT_FLAG, 99, 10**15),
                                    daemon=True)
        spinning.start()
        time.sleep(0.5)
        before = len(mitm_evm.output())
        proxy.arm("blackhole")
        error = _call_error(plain, 1, OP_SET_FLAG, 98)
        assert isinstance(error, VsgxError) and "stopped answering" in str(error)
        deadline = time.monotonic() + PEER_TIMEOUT + SLACK
        while "the AVM stopped answering" not in mitm_evm.output()[before:]:
            assert time.monotonic() < deadline, mitm_evm.output()[-2000:]
            time.sleep(0.1)
        spinning.join(timeout=BOUND)
        assert not spinning.is_alive()
    finally:
        proxy.close()
        avm.close()


def _quiet_call(plain: PlainEnclave, *words: int) -> None:
    try:
        plain.call(0, *words)
    except VsgxError:
        pass


def _call_error(plain: PlainEnclave, tcs_index: int, *words: int) -> BaseException | None:
    try:
        plain.call(tcs_index, *words)
    except VsgxError as exc:
        return exc
    return None
