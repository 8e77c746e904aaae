"""Running enclaves from Python: the host API over the AVM driver."""

from vsgx.host.enclave import Avm, Enclave, Exit, connect, default_avm

__all__ = ["Avm", "Enclave", "Exit", "connect", "default_avm"]
