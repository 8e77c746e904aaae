"""The AVM's SEV-SNP options (--snp-certs, --snp-measurement, --snp-min-tcb,
--snp-allow-debug) turned into the evidence policy's verifier."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vsgx.errors import VsgxError

if TYPE_CHECKING:  # imported where used: the CLI starts without them
    from vsgx.channel.evidence import AmdSnpVerifier
    from vsgx.crypto.snp import TcbVersion

_TCB_NAMES = {"bootloader": "bootloader", "bl": "bootloader", "tee": "tee", "snp": "snp",
              "microcode": "microcode", "ucode": "microcode", "fmc": "fmc"}


def parse_tcb(text: str) -> TcbVersion:
    """``bootloader=3,tee=0,snp=14,microcode=209`` (``fmc=`` on Turin)."""
    from vsgx.crypto.snp import TcbVersion

    levels: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        field = _TCB_NAMES.get(name.strip().lower())
        if not sep or field is None:
            raise VsgxError(f"--snp-min-tcb: {item.strip()!r} is not NAME=LEVEL (names: "
                            "bootloader, tee, snp, microcode, fmc)")
        try:
            level = int(value, 0)
        except ValueError:
            raise VsgxError(f"--snp-min-tcb: {value.strip()!r} is not a number") from None
        if not 0 <= level <= 255:
            raise VsgxError(f"--snp-min-tcb: {name} {level} is not a level 0..255")
        if field in levels:
            raise VsgxError(f"--snp-min-tcb names {field} twice")
        levels[field] = level
    return TcbVersion(**levels)


def measurements(args: argparse.Namespace) -> frozenset[bytes]:
    found = set()
    for text in getattr(args, "snp_measurement", None) or []:
        try:
            value = bytes.fromhex(text.strip())
        except ValueError:
            raise VsgxError(f"--snp-measurement {text!r} is not hexadecimal") from None
        if len(value) != 48:
            raise VsgxError(f"--snp-measurement is 48 bytes (96 hex digits), not {len(value)}")
        found.add(value)
    return frozenset(found)


def snp_verifier(args: argparse.Namespace) -> AmdSnpVerifier | None:
    """The verifier of an EVM's SEV-SNP evidence to AMD's root, with the
    policy the options give; None with --allow-unverified-snp."""
    from vsgx.channel.evidence import AmdSnpVerifier
    from vsgx.crypto.snp import SnpPolicy

    certs = getattr(args, "snp_certs", None)
    min_tcb = getattr(args, "snp_min_tcb", None)
    allow_debug = getattr(args, "snp_allow_debug", False)
    wanted = measurements(args)
    if getattr(args, "allow_unverified_snp", False):
        if getattr(args, "require_snp", False):
            raise VsgxError("--require-snp (SEV-SNP verified to AMD's root) and "
                            "--allow-unverified-snp contradict each other")
        if certs or min_tcb or allow_debug or wanted:
            raise VsgxError("--allow-unverified-snp accepts SEV-SNP reports unverified: "
                            "--snp-certs, --snp-measurement, --snp-min-tcb and "
                            "--snp-allow-debug need verification")
        return None
    if certs is not None and not Path(certs).is_dir():
        raise VsgxError(f"--snp-certs {certs} is not a directory")
    policy = SnpPolicy(measurements=wanted, minimum_tcb=parse_tcb(min_tcb) if min_tcb else None,
                       allow_debug=allow_debug)
    return AmdSnpVerifier(policy, Path(certs) if certs else None)
