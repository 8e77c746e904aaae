"""Enclave image formats turned into one build plan (pure: bytes in, plan out)."""

from __future__ import annotations

from vsgx.errors import ImageError
from vsgx.image.config import EnclaveConfig, parse_config
from vsgx.image.elf import ElfImage, read_elf
from vsgx.image.plain import plain_plan
from vsgx.image.plan import BuildPlan, Ecreate, PageRun, Region, RegionKind
from vsgx.image.sdk import sdk_plan
from vsgx.image.sdk_metadata import METADATA_NOTE_SECTION
from vsgx.image.signer import SignedEnclave, catsig, gendata, sign_enclave


def plan_from_bytes(data: bytes, sigstruct: bytes | None = None) -> BuildPlan:
    """The build plan of an enclave file: an SDK-signed ELF, or a plain ELF
    with its sidecar SIGSTRUCT bytes."""
    from vsgx.crypto.sigstruct import parse_sigstruct

    elf = read_elf(data)
    if METADATA_NOTE_SECTION in elf.sections:
        return sdk_plan(elf)
    if sigstruct is None:
        raise ImageError("a plain ELF enclave needs its SIGSTRUCT (the .sig file `vsgx sign` "
                         "wrote next to it)")
    return plain_plan(elf, parse_sigstruct(sigstruct), sigstruct_bytes=sigstruct[:1808])


__all__ = [
    "BuildPlan", "Ecreate", "ElfImage", "EnclaveConfig", "PageRun", "Region", "RegionKind",
    "SignedEnclave", "catsig", "gendata", "parse_config", "plain_plan",
    "plan_from_bytes", "read_elf", "sdk_plan", "sign_enclave",
]
