"""The state every leaf works on: the EPC, the platform, and the counters the
CPU keeps (next enclave id, next page version)."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

from vsgx.arch.constants import PAGE_SIZE, Encls
from vsgx.arch.errors import SgxError
from vsgx.evm.epc import Epc
from vsgx.evm.platform import PlatformConfig, PlatformSecrets

# Leaves whose informational codes set CF instead of ZF (SDM EBLOCK, EWB).
_CF_CODES = {Encls.EBLOCK: {SgxError.BLKSTATE, SgxError.NOTBLOCKABLE, SgxError.PG_IS_SECS},
             Encls.EWB: {SgxError.VA_SLOT_OCCUPIED}}


def status_flags(leaf: int, code: SgxError) -> tuple[bool, bool]:
    """(ZF, CF) after a leaf that reports ``code`` in RAX."""
    if code is SgxError.SUCCESS:
        return False, False
    if code in _CF_CODES.get(leaf, ()):  # type: ignore[call-overload]
        return False, True
    return True, False


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

    def __post_init__(self) -> None:
        self.epc = Epc(self.config.epc_base, self.config.epc_pages)

    def new_eid(self) -> int:
        eid = self.next_eid
        self.next_eid += 1
        return eid

    def new_version(self) -> int:
        version = self.next_version
        self.next_version += 1
        return version

    @property
    def epc_size(self) -> int:
        return self.config.epc_pages * PAGE_SIZE
