"""Remote attestation from the host: the DCAP quote library's calls
(sgx_qe_get_target_info, sgx_qe_get_quote_size, sgx_qe_get_quote) against
the quoting enclave of the EVM an application uses.

    target = qe_target_info(enclave)            # the QE's TARGETINFO (512 bytes)
    report = ...the enclave EREPORTs to target...
    quote = get_quote(report, enclave)          # a DCAP v3 quote

``evm`` is what ``vsgx.host.connect`` takes — None (this process's EVM), an
``Avm``, an EVM object — or an ``Enclave`` (its EVM). An EVM in this process
quotes directly; an EVM in another process is asked over the channel
(QE_TARGET_INFO and QUOTE messages), once the channel has them.
"""

from __future__ import annotations

from typing import Any

from vsgx.errors import VsgxError


def _quoter(evm: Any) -> Any:
    from vsgx.host.enclave import Avm, Enclave, connect

    if isinstance(evm, Enclave):
        evm = evm.avm
    if not isinstance(evm, Avm):
        evm = connect(evm)
    target = evm.evm
    if all(hasattr(target, name) for name in ("qe_target_info", "qe_quote_size", "quote")):
        return target  # an EVM that answers quoting requests itself (over the channel)
    from vsgx.evm.quoting import quoting_enclave
    from vsgx.evm.vm import EnclaveVM

    if isinstance(target, EnclaveVM):
        return _LocalQuoter(quoting_enclave(target))
    raise VsgxError("this EVM cannot quote: quoting through an EVM in another process "
                    "needs the channel's QE_TARGET_INFO and QUOTE messages, which this "
                    "version does not have")


class _LocalQuoter:
    def __init__(self, qe: Any):
        self.qe = qe

    def qe_target_info(self) -> bytes:
        return self.qe.target_info()

    def qe_quote_size(self) -> int:
        return self.qe.quote_size()

    def quote(self, report: bytes) -> bytes:
        return self.qe.quote(report)


def qe_target_info(evm: Any = None) -> bytes:
    """sgx_qe_get_target_info: the QE's TARGETINFO."""
    return _quoter(evm).qe_target_info()


def qe_quote_size(evm: Any = None) -> int:
    """sgx_qe_get_quote_size: the size of the quotes ``get_quote`` makes."""
    return _quoter(evm).qe_quote_size()


def get_quote(report: bytes, evm: Any = None) -> bytes:
    """sgx_qe_get_quote: a DCAP v3 quote of ``report``, a REPORT the enclave
    made for the QE's TARGETINFO. Raises QuotingError (status
    SGX_QL_INVALID_REPORT) for a report the QE cannot verify."""
    return _quoter(evm).quote(bytes(report))
