"""The state every leaf works on: the EPC, the platform, and the counters the
CPU keeps (next enclave id, next page version)."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

from vsgx.arch.errors import SgxError
from vsgx.evm.epc import Epc
from vsgx.evm.platform import PlatformConfig, PlatformSecrets


@dataclass
class Machine:
    config: PlatformConfig
    secrets: PlatformSecrets
    epc: Epc = field(init=False)
    next_eid: int = 1
    # Page versions for EWB start at a random point and only grow, so a
    # version (the AES-GCM nonce) never repeats under one paging key.
    next_version: int = field(default_factory=lambda: secrets.randbits(40) + 1)
    # One lock serialises leaf functions (they mutate EPCM and SECS state);
    # enclave code runs outside it.
    lock: threading.RLock = field(default_factory=threading.RLock)
    # The check behind the last error code a leaf returned (Fault.check is
    # its twin for faults): what tests read to tell equal codes apart.
    refusal: str = ""

    def __post_init__(self) -> None:
        self.epc = Epc(self.config.epc_base, self.config.epc_pages)

    def new_eid(self) -> int:
        eid = self.next_eid
        self.next_eid += 1
        return eid

    def refuse(self, error: SgxError, check: str) -> SgxError:
        """Return ``error`` from a leaf, recording which check refused."""
        self.refusal = check
        return error
