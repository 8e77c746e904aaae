"""A bare machine for leaf unit tests: the EPC, EPCM and platform of
vsgx.evm.machine and nothing else — no executor, no process, no socket.

``Bare`` builds enclaves by calling the leaves themselves; ``faults`` and
``refuses`` assert the exact vector, error code and named check."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from vsgx.arch import Attribute, Fault, PageType, Secinfo, Secs, SgxError, Sigstruct, Vector
from vsgx.arch.constants import PfErrorCode, SecinfoFlags
from vsgx.crypto import generate_signing_key, private_key_signer, sign
from vsgx.evm import encls
from vsgx.evm.enclave import EnclaveState
from vsgx.evm.machine import Machine
from vsgx.evm.platform import PlatformConfig, PlatformSecrets

ROOT_SECRET = bytes(range(32))
BASE = 0x7F00_0000_0000
SIZE = 32 * 4096
R, W, X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
PENDING, MODIFIED, PR = (int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED),
                         int(SecinfoFlags.PR))
REG, TCS, TRIM = (int(PageType.REG) << 8, int(PageType.TCS) << 8, int(PageType.TRIM) << 8)
# #PF error codes: an EPC operand the EPCM refuses, an in-enclave page that
# is not present, and one whose EPCM entry denies the access.
EPC_PF = int(PfErrorCode.P | PfErrorCode.SGX)
NOT_PRESENT = int(PfErrorCode.U)
EPCM_PF = int(PfErrorCode.P | PfErrorCode.U | PfErrorCode.SGX)
DEBUG64 = int(Attribute.MODE64BIT | Attribute.DEBUG)


def secinfo(flags: int) -> bytes:
    return Secinfo(flags=flags).pack()


@functools.cache
def signing_key():
    return generate_signing_key()


class Bare:
    """One machine; EPC pages handed out in order from the bank's start."""

    def __init__(self, **config: Any):
        config.setdefault("epc_pages", 128)
        self.m = Machine(PlatformConfig(**config), PlatformSecrets(ROOT_SECRET))
        self.next = self.m.config.epc_base

    def page(self) -> int:
        address = self.next
        self.next += 4096
        return address

    def secs(self, **changes: Any) -> int:
        """ECREATE of a debug 64-bit enclave of SIZE at BASE (``changes`` to SECS)."""
        s = replace(Secs(size=SIZE, baseaddr=BASE, ssaframesize=1, miscselect=1,
                         attributes=DEBUG64, xfrm=3), **changes)
        page = self.page()
        encls.ecreate(self.m, page, s.pack(), Secinfo.of(PageType.SECS).pack())
        return page

    def add(self, secs: int, offset: int, flags: int = REG | R | W,
            content: bytes = bytes(4096), measure: bool = False) -> int:
        page = self.page()
        encls.eadd(self.m, page, secs, BASE + offset, content, secinfo(flags))
        if measure:
            encls.measure_pages(self.m, secs, page)
        return page

    def enclave(self, secs: int) -> EnclaveState:
        return self.m.epc.secs[secs]

    def sigstruct(self, secs: int, **changes: Any) -> Sigstruct:
        """A SIGSTRUCT for the enclave as measured so far (``changes`` first)."""
        encl = self.enclave(secs)
        assert encl.mrenclave_builder is not None
        body = Sigstruct(enclavehash=encl.mrenclave_builder.digest(),
                         attributes=encl.attributes, attributemask=int(Attribute.DEBUG),
                         xfrm=encl.xfrm, xfrmmask=0x3, miscselect=encl.miscselect,
                         miscmask=0xFFFFFFFF, isvprodid=7, isvsvn=3)
        key = signing_key()
        return sign(replace(body, **changes), key.public_key(), private_key_signer(key))

    def init(self, secs: int, **changes: Any) -> SgxError:
        return encls.einit(self.m, secs, self.sigstruct(secs, **changes).pack())

    def initialized(self, **secs_changes: Any) -> tuple[int, EnclaveState]:
        """An initialized enclave with a RW page at offsets 0..3 pages."""
        secs = self.secs(**secs_changes)
        for n in range(4):
            self.add(secs, n * 4096)
        assert self.init(secs) is SgxError.SUCCESS
        return secs, self.enclave(secs)


def faults(call: Callable[[], object], vector: Vector, check: str,
           error_code: int | None = None) -> Fault:
    """``call`` raises exactly this fault from exactly this check."""
    with pytest.raises(Fault) as raised:
        call()
    fault = raised.value
    assert (fault.vector, fault.check) == (vector, check), fault.describe()
    if error_code is not None:
        assert fault.error_code == error_code, fault.describe()
    return fault


def refuses(m: Machine, call: Callable[[], object], error: SgxError, check: str) -> None:
    """``call`` returns exactly this error code from exactly this check."""
    m.refusal = ""
    result = call()
    status = result[0] if isinstance(result, tuple) else result
    assert (status, m.refusal) == (error, check)
