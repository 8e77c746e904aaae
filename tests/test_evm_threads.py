"""Several threads inside one enclave at the same time (in-process, on
every executor). Threads meet at real rendezvous — the EVM's record of who
is inside the enclave, or a flag inside the enclave — and every wait has a
deadline, so a broken executor fails the test instead of hanging it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from plain_ops import OP_SET_FLAG, OP_WAIT_FLAG

DEADLINE = 60.0
SPIN = 10**11  # the enclave's wait loop gives up after this many rounds


def wait_until(condition: Callable[[], bool], what: str, limit: float = DEADLINE) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit} s")
        time.sleep(0.001)


def joined(thread: threading.Thread) -> None:
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive(), f"{thread.name} is still running after {DEADLINE} s"


def inside(plain):
    """The EVM's set of TCSs a logical processor is inside, for ``plain``."""
    vm = plain.enclave.avm.evm
    return vm.enclave(plain.enclave.handle.secs_page).inside


def test_two_threads_inside_one_enclave_at_once(plain):
    """Thread A waits inside the enclave for a flag that thread B sets from
    inside the enclave: B enters only once the EVM has A inside, so this
    completes only if both are inside together."""
    results = {}

    def waiter():
        results["a"] = plain.call(0, OP_WAIT_FLAG, 42, SPIN)

    a = threading.Thread(target=waiter, name="waiter", daemon=True)
    a.start()
    wait_until(lambda: plain.tcs[0] in inside(plain), "entry of thread A")
    b_result, _ = plain.call(1, OP_SET_FLAG, 42)
    joined(a)
    result, words = results["a"]
    assert b_result.kind == "eexit" and result.kind == "eexit"
    assert words[3] == 1  # A saw the flag (not the end of its wait loop)


def test_many_threads_many_entries(plain):
    errors: list[object] = []
    start = threading.Barrier(4, timeout=DEADLINE)

    def worker(index):
        start.wait()
        for n in range(50):
            result = plain.enclave.eenter(tcs=plain.tcs[index], rdi=0, rsi=n, rdx=index)
            if result.kind != "eexit" or result.rsi != 2 * n + index:
                errors.append((index, n, result))

    threads = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}", daemon=True)
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        joined(t)
    assert errors == []


def test_an_interrupt_makes_a_thread_take_an_aex_and_resume(plain):
    """The driver's IPI (EVM kick): the spinning thread AEXes with no
    exception information, and the driver resumes it transparently."""
    results = {}

    def waiter():
        results["a"] = plain.call(0, OP_WAIT_FLAG, 7, SPIN)

    a = threading.Thread(target=waiter, name="waiter", daemon=True)
    a.start()
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    encl = vm.enclave(secs)
    wait_until(lambda: plain.tcs[0] in encl.inside, "entry of the spinning thread")
    epoch = encl.epoch
    assert vm.etrack(secs).name == "SUCCESS"
    vm.kick(secs)
    # After the AEX the thread re-enters (ERESUME) in the new epoch.
    wait_until(lambda: encl.inside.get(plain.tcs[0], epoch) > epoch, "ERESUME after the AEX")
    plain.call(1, OP_SET_FLAG, 7)
    joined(a)
    assert results["a"][0].kind == "eexit" and results["a"][1][3] == 1
