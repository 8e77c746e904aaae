"""``sgx_status_t``: the status codes of the Intel SGX SDK (sgx_error.h).

These are what an ECALL or OCALL returns through the SDK protocol, as
opposed to the hardware's ENCLS/ENCLU codes in ``vsgx.arch.errors``.
"""

from __future__ import annotations

from vsgx.errors import VsgxError

SGX_SUCCESS = 0x0000
SGX_ERROR_UNEXPECTED = 0x0001
SGX_ERROR_INVALID_PARAMETER = 0x0002
SGX_ERROR_OUT_OF_MEMORY = 0x0003
SGX_ERROR_ENCLAVE_LOST = 0x0004
SGX_ERROR_INVALID_STATE = 0x0005
SGX_ERROR_FEATURE_NOT_SUPPORTED = 0x0008
SGX_PTHREAD_EXIT = 0x0009
SGX_ERROR_INVALID_FUNCTION = 0x1001
SGX_ERROR_OUT_OF_TCS = 0x1003
SGX_ERROR_ENCLAVE_CRASHED = 0x1006
SGX_ERROR_ECALL_NOT_ALLOWED = 0x1007
SGX_ERROR_OCALL_NOT_ALLOWED = 0x1008
SGX_ERROR_STACK_OVERRUN = 0x1009
SGX_ERROR_INVALID_ENCLAVE = 0x2001
SGX_ERROR_INVALID_SIGNATURE = 0x2003
SGX_ERROR_DEVICE_BUSY = 0x200C
SGX_ERROR_MAC_MISMATCH = 0x3001
SGX_ERROR_INVALID_ATTRIBUTE = 0x3002
SGX_ERROR_INVALID_CPUSVN = 0x3003
SGX_ERROR_INVALID_ISVSVN = 0x3004
SGX_ERROR_INVALID_KEYNAME = 0x3005
SGX_ERROR_SERVICE_UNAVAILABLE = 0x4001

NAMES = {value: name for name, value in globals().items()
         if name.startswith("SGX_") and isinstance(value, int)}


def status_name(status: int) -> str:
    name = NAMES.get(status)
    return f"{name} ({status:#x})" if name else f"sgx_status_t {status:#x}"


def external_status(status: int) -> int:
    """What Intel's urts returns to the application for a trts status
    (``CEnclave::error_trts2urts``): codes with bits 31:30 set are internal
    and become SGX_ERROR_UNEXPECTED."""
    status &= 0xFFFFFFFF
    return SGX_ERROR_UNEXPECTED if status >> 30 else status


class SgxStatusError(VsgxError):
    """An ECALL returned a status other than SGX_SUCCESS."""

    def __init__(self, status: int, where: str):
        self.status = status
        super().__init__(f"{where}: {status_name(status)}")


class OcallError(VsgxError):
    """The enclave made an OCALL the application cannot serve."""
