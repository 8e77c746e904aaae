"""Several threads inside one enclave at the same time."""

from __future__ import annotations

import threading
import time

from plain_ops import OP_SET_FLAG, OP_WAIT_FLAG


def test_two_threads_inside_one_enclave_at_once(plain):
    """Thread A waits inside the enclave for a flag that thread B sets from
    inside the enclave: this completes only if both are inside together."""
    results = {}

    def waiter():
        results["a"] = plain.call(0, OP_WAIT_FLAG, 42, 10**11)

    a = threading.Thread(target=waiter)
    a.start()
    time.sleep(0.3)
    assert a.is_alive()  # A is inside, spinning
    b_result, _ = plain.call(1, OP_SET_FLAG, 42)
    a.join(timeout=60)
    assert not a.is_alive()
    result, words = results["a"]
    assert b_result.kind == "eexit" and result.kind == "eexit"
    assert words[3] == 1  # A saw the flag (not a timeout)


def test_many_threads_many_entries(plain):
    errors = []

    def worker(index):
        for n in range(50):
            result = plain.enclave.eenter(tcs=plain.tcs[index], rdi=0, rsi=n, rdx=index)
            if result.kind != "eexit" or result.rsi != 2 * n + index:
                errors.append((index, n, result))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_an_interrupt_makes_a_thread_take_an_aex_and_resume(local_plain):
    """The driver's IPI (EVM kick): the spinning thread AEXes with no
    exception information, and the driver resumes it transparently."""
    plain = local_plain
    results = {}

    def waiter():
        results["a"] = plain.call(0, OP_WAIT_FLAG, 7, 10**11)

    a = threading.Thread(target=waiter)
    a.start()
    vm = plain.enclave.avm.evm
    encl = vm.enclave(plain.enclave.handle.secs_page)
    while plain.tcs[0] not in encl.inside:
        pass
    epoch = encl.epoch
    assert vm.etrack(plain.enclave.handle.secs_page).name == "SUCCESS"
    vm.kick(plain.enclave.handle.secs_page)
    # After the AEX the thread re-enters (ERESUME) in the new epoch.
    while encl.inside.get(plain.tcs[0], epoch) <= epoch:
        pass
    plain.call(1, OP_SET_FLAG, 7)
    a.join(timeout=60)
    assert results["a"][0].kind == "eexit" and results["a"][1][3] == 1
