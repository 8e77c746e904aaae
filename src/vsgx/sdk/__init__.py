"""Intel SGX SDK enclaves, unmodified: the urts's side of the trts protocol,
EDL-driven ECALLs and OCALLs, and the SDK libraries' standard OCALLs."""

from vsgx.sdk.edl import EdlError, load_edl
from vsgx.sdk.enclave import Enclave
from vsgx.sdk.status import OcallError, SgxStatusError, status_name
from vsgx.sdk.urts import OcallFailed

__all__ = ["EdlError", "Enclave", "OcallError", "OcallFailed", "SgxStatusError", "load_edl",
           "status_name"]
