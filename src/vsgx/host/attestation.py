"""Remote attestation from the host: the DCAP quote library's calls
(sgx_qe_get_target_info, sgx_qe_get_quote_size, sgx_qe_get_quote) against
the quoting enclave of the EVM an application uses, and the launch
enclave's tokens.

    target = qe_target_info(enclave)            # the QE's TARGETINFO (512 bytes)
    report = ...the enclave EREPORTs to target...
    quote = get_quote(report, enclave)          # a DCAP v3 quote

``evm`` is what ``vsgx.host.connect`` takes — None (this process's EVM), an
``Avm``, an EVM object, an address string — or an ``Enclave`` (its EVM).
An EVM in this process quotes directly; an EVM in another process or VM is
asked over the channel (QE_TARGET_INFO, QE_QUOTE_SIZE and QUOTE messages).
Either way a refusal raises ``vsgx.crypto.quote.QuoteGenerationError``
with the quote3_error_t status (``QuotingError``, its subclass, when the QE
is in this process).

``attestation_backend(evm)`` is the object with those calls (and
``launch_token``) that services such as ``vsgx.avm.aesmd`` serve from.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeGuard

from vsgx.crypto.quote import QuoteResult
from vsgx.errors import VsgxError

_CALLS = ("qe_init", "qe_target_info", "qe_quote_size", "quote", "quote_ex", "launch_token")


class AttestationBackend(Protocol):
    """The calls (``_CALLS``) of what ``attestation_backend`` returns; an EVM
    over the channel has them itself."""

    def qe_init(self) -> tuple[bytes, bytes]: ...
    def qe_target_info(self) -> bytes: ...
    def qe_quote_size(self) -> int: ...
    def quote(self, report: bytes) -> bytes: ...
    def quote_ex(self, report: bytes, qe_report_info: bytes | None = None, snp: bool = False
                 ) -> QuoteResult: ...
    def launch_token(self, mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int
                     ) -> bytes: ...


def _answers_quoting(evm: object) -> TypeGuard[AttestationBackend]:
    return all(hasattr(evm, name) for name in _CALLS)


def attestation_backend(evm: Any = None) -> AttestationBackend:
    """What quotes for ``evm``: the EVM itself when it answers quoting
    requests (an EVM over the channel), else a wrapper around the quoting
    and launch enclaves of an EVM in this process."""
    from vsgx.evm import EnclaveVM
    from vsgx.host.enclave import Avm, Enclave, connect

    if _answers_quoting(evm):
        return evm
    if isinstance(evm, EnclaveVM):
        return LocalBackend(evm)
    if isinstance(evm, Enclave):
        evm = evm.avm
    if not isinstance(evm, Avm):
        evm = connect(evm)
    target = evm.link  # the session: in this process too, quotes go through it
    if _answers_quoting(target):
        return target  # an EVM that answers quoting requests itself (over the channel)
    target = evm.evm
    if isinstance(target, EnclaveVM):
        return LocalBackend(target)
    raise VsgxError(f"this EVM ({type(target).__name__}) has no quoting enclave")


class LocalBackend:
    """The quoting and launch enclaves of an EVM in this process."""

    def __init__(self, vm: Any):
        from vsgx.evm import launch_enclave, quoting_enclave

        self.vm = vm
        self.qe = quoting_enclave(vm)
        self.le = launch_enclave(vm)

    def qe_target_info(self) -> bytes:
        return self.qe.target_info()

    def qe_init(self) -> tuple[bytes, bytes]:
        from vsgx.crypto.quote import attestation_key_id

        return self.qe.target_info(), attestation_key_id(self.qe.attestation_public_key)

    def qe_quote_size(self) -> int:
        return self.qe.quote_size()

    def quote(self, report: bytes) -> bytes:
        return self.qe.quote(report)

    def quote_ex(self, report: bytes, qe_report_info: bytes | None = None, snp: bool = False
                 ) -> QuoteResult:
        nonce = target = None
        if qe_report_info is not None:
            nonce, target = qe_report_info[:16], qe_report_info[16:]
        quote, qe_report = self.qe.quote_with_report(report, nonce, target)
        snp_report = snp_certificates = b""
        if snp:
            evidence = self.qe.snp_evidence()  # an AttestationError where there is no SEV
            snp_report, snp_certificates = evidence.report, evidence.certificates
        return QuoteResult(quote, qe_report, snp_report, snp_certificates)

    def launch_token(self, mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int
                     ) -> bytes:
        return self.le.token(mrenclave, modulus, attributes, xfrm)


def qe_target_info(evm: Any = None) -> bytes:
    """sgx_qe_get_target_info: the QE's TARGETINFO."""
    return attestation_backend(evm).qe_target_info()


def qe_quote_size(evm: Any = None) -> int:
    """sgx_qe_get_quote_size: the size of the quotes ``get_quote`` makes."""
    return attestation_backend(evm).qe_quote_size()


def get_quote(report: bytes, evm: Any = None) -> bytes:
    """sgx_qe_get_quote: a DCAP v3 quote of ``report``, a REPORT the enclave
    made for the QE's TARGETINFO. Raises QuoteGenerationError (status
    SGX_QL_INVALID_REPORT) for a report the QE cannot verify."""
    return attestation_backend(evm).quote(bytes(report))


def get_quote_ex(report: bytes, evm: Any = None, *, qe_report_info: bytes | None = None,
                 snp: bool = False) -> QuoteResult:
    """sgx_qe_get_quote with an sgx_ql_qe_report_info_t (``qe_report_info``:
    nonce || the application's TARGETINFO; the result carries the QE's
    REPORT for it) and, with ``snp``, the EVM's SEV-SNP evidence binding the
    attestation key (empty over the channel from an EVM without SEV; an
    error from an EVM in this process without SEV)."""
    return attestation_backend(evm).quote_ex(bytes(report), qe_report_info, snp)


def get_launch_token(mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int,
                     evm: Any = None) -> bytes:
    """An EINITTOKEN from the EVM's launch enclave (aesmd's GetLaunchToken);
    ``vsgx.channel.messages.LaunchTokenError`` if it gives none."""
    return attestation_backend(evm).launch_token(mrenclave, modulus, attributes, xfrm)
