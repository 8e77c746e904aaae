"""The OCALLs of the SDK's own trusted libraries, served as Intel's urts
serves them (psw/urts/se_ocalls.cpp, enclave_mutex.cpp, enclave_thread.cpp;
common/src/se_event.c), plus SGX SSL's two.

Untrusted events belong to enclave threads, named by their TCS address:
a wake before the wait is remembered (se_event is a counter), so each TCS
gets a semaphore.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from vsgx.sdk import status as st
from vsgx.sdk.features import cpuid
from vsgx.sdk.urts import Urts


class StandardOcalls:
    def __init__(self, urts: Urts):
        self.urts = urts
        self._events: dict[int, threading.Semaphore] = {}
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.thread_errors: list[BaseException] = []

    def event(self, tcs: int) -> threading.Semaphore:
        with self._lock:
            event = self._events.get(tcs)
            if event is None:
                event = self._events[tcs] = threading.Semaphore(0)
            return event

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "sgx_oc_cpuidex": self.cpuidex,
            "sgx_thread_wait_untrusted_event_ocall": self.wait_event,
            "sgx_thread_set_untrusted_event_ocall": self.set_event,
            "sgx_thread_setwait_untrusted_events_ocall": self.set_wait_events,
            "sgx_thread_set_multiple_untrusted_events_ocall": self.set_multiple_events,
            "pthread_wait_timeout_ocall": self.pthread_wait_timeout,
            "pthread_create_ocall": self.pthread_create,
            "pthread_wakeup_ocall": self.pthread_wakeup,
            "u_sgxssl_ftime": self.sgxssl_ftime,
            "u_sgxssl_usleep": self.sgxssl_usleep,
        }

    # -- sgx_tstdc.edl ------------------------------------------------------------
    @staticmethod
    def cpuidex(cpuinfo: bytearray | None, leaf: int, subleaf: int) -> None:
        if cpuinfo is not None:
            cpuinfo[:16] = struct.pack("<4I", *cpuid(leaf & 0xFFFFFFFF, subleaf & 0xFFFFFFFF))

    def wait_event(self, tcs: int) -> int:
        if not tcs:
            return st.SGX_ERROR_INVALID_PARAMETER
        self.event(tcs).acquire()
        return st.SGX_SUCCESS

    def set_event(self, waiter: int) -> int:
        if not waiter:
            return st.SGX_ERROR_INVALID_PARAMETER
        self.event(waiter).release()
        return st.SGX_SUCCESS

    def set_wait_events(self, waiter: int, tcs: int) -> int:
        status = self.set_event(waiter)
        return status if status else self.wait_event(tcs)

    def set_multiple_events(self, waiters: bytes | None, total: int) -> int:
        if waiters is None or len(waiters) < 8 * total:
            return st.SGX_ERROR_INVALID_PARAMETER
        for (waiter,) in struct.iter_unpack("<Q", waiters[:8 * total]):
            status = self.set_event(waiter)
            if status:
                return status
        return st.SGX_SUCCESS

    # -- sgx_pthread.edl -----------------------------------------------------------
    def pthread_wait_timeout(self, waiter: int, timeout: int) -> int:
        if not waiter:
            return st.SGX_ERROR_DEVICE_BUSY
        # seconds; 0 waits forever; a timeout is not an error (se_event.c)
        self.event(waiter).acquire(timeout=timeout if timeout else None)
        return st.SGX_SUCCESS

    def pthread_create(self, creator: int) -> int:
        if not creator:
            return st.SGX_ERROR_INVALID_PARAMETER
        tcs = self.urts.take_tcs()
        if tcs is None:
            return st.SGX_ERROR_OUT_OF_TCS
        thread = threading.Thread(target=self._pthread_main, args=(tcs,), daemon=True,
                                  name=f"enclave-pthread-{tcs:#x}")
        self.threads.append(thread)
        thread.start()
        return st.SGX_SUCCESS

    def _pthread_main(self, tcs: int) -> None:
        try:
            self.urts.run_pthread(tcs, lambda joiner: self.event(joiner).release())
        except Exception as exc:
            self.thread_errors.append(exc)

    def pthread_wakeup(self, waiter: int) -> int:
        if waiter:
            self.event(waiter).release()
        return st.SGX_SUCCESS

    # -- Intel SGX SSL (sgx_tsgxssl.edl) ------------------------------------------------
    @staticmethod
    def sgxssl_ftime(timeptr: bytearray | None, timeb_len: int) -> None:
        """struct timeb: time_t time, u16 millitm, i16 timezone, i16 dstflag."""
        if timeptr is None:
            return
        now = time.time()
        data = struct.pack("<qHhh", int(now), int(now * 1000) % 1000, 0, 0)
        size = min(len(timeptr), len(data))
        timeptr[:size] = data[:size]

    @staticmethod
    def sgxssl_usleep(micro_seconds: int) -> None:
        if micro_seconds > 0:
            time.sleep(micro_seconds / 1e6)
