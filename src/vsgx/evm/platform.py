"""The platform the EVM emulates: its secrets (the fused keys of a real CPU)
and its configuration (CPUSVN, SGX2, launch control, CPUID leaf 0x12).

The root secret persists across EVM restarts (sealed data must unseal after
a restart): 32 random bytes in a 0600 file under the user's data directory,
which must be the user's own and writable by nobody else (whoever can write
the directory can swap the secret). It never leaves the EVM. The paging key
and the report KEYID are per boot, as on hardware.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vsgx.arch.cpuid import EpcSection, SgxCpuid
from vsgx.crypto.keys import derivation_key, platform_value
from vsgx.crypto.paging import page_primitives, paging_cipher
from vsgx.errors import VsgxError

ROOT_SECRET_SIZE = 32
SECRET_FILE = "platform-root-secret"
# IA32_SGXLEPUBKEYHASH after reset on CPUs without flexible launch control:
# the hash of Intel's launch enclave signing key.
INTEL_LE_PUBKEY_HASH = bytes.fromhex(
    "a6053e051270b7ac6cfbe8ba8b3b413dc4916d99f2b3735dd4f8c05909f9bb3b")


def data_dir() -> Path:
    explicit = os.environ.get("VSGX_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vsgx"


def check_private_dir(path: Path, what: str = "data directory") -> None:
    """Refuse a directory that another user owns or that group or others
    may write: a secret kept there could be replaced or removed."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise VsgxError(f"cannot use the {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise VsgxError(f"the {what} {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise VsgxError(f"the {what} {path} belongs to uid {info.st_uid}, not to you "
                        f"(uid {os.geteuid()}): refusing it")
    if info.st_mode & 0o022:
        raise VsgxError(f"the {what} {path} is writable by group or others (mode "
                        f"{stat.S_IMODE(info.st_mode):04o}): chmod go-w it, or choose "
                        "another")


def private_dir(path: Path, what: str = "data directory") -> Path:
    """``path``, created 0700 if missing, after ``check_private_dir``."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise VsgxError(f"cannot create the {what} {path}: {exc.strerror}") from None
    check_private_dir(path, what)
    return path


def _read_secret(path: Path) -> bytes | None:
    """The secret file's bytes, None if it does not exist. No symlinks; a
    file of another user, or one others may read, is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VsgxError(f"cannot read the platform secret {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VsgxError(f"the platform secret {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise VsgxError(f"the platform secret {path} belongs to uid {info.st_uid}, not "
                            "to you: refusing it")
        if info.st_mode & 0o077:
            raise VsgxError(f"the platform secret {path} is readable by others; chmod 600 it")
        return os.read(fd, ROOT_SECRET_SIZE + 1)
    finally:
        os.close(fd)


def load_root_secret(path: Path | None = None) -> bytes:
    """The platform root secret, created on first use (0600 from the start,
    in a directory of the user's own that nobody else may write)."""
    path = path or data_dir() / SECRET_FILE
    private_dir(path.parent)
    data = _read_secret(path)
    if data is None:
        data = secrets.token_bytes(ROOT_SECRET_SIZE)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic: the first writer wins
            except FileExistsError:
                data = _read_secret(path) or b""
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise VsgxError(f"cannot create the platform secret {path}: {exc.strerror}") \
                from None
    if len(data) != ROOT_SECRET_SIZE:
        raise VsgxError(f"the platform secret {path} is corrupt ({len(data)} bytes)")
    return data


@dataclass(frozen=True)
class LaunchPolicy:
    """Launch control for EINIT.

    ``allowed_signers`` None is flexible launch control as Linux runs it: the
    kernel writes each enclave's MRSIGNER into IA32_SGXLEPUBKEYHASH before
    EINIT, so every signer launches. A set restricts that: other signers
    need an EINITTOKEN from the launch enclave (whose signer is
    ``launch_enclave_signer``).
    """

    allowed_signers: frozenset[bytes] | None = None
    launch_enclave_signer: bytes = INTEL_LE_PUBKEY_HASH

    def lepubkeyhash_for(self, mrsigner: bytes) -> bytes:
        """The IA32_SGXLEPUBKEYHASH value the OS sets for this EINIT."""
        if self.allowed_signers is None or mrsigner in self.allowed_signers:
            return mrsigner
        return self.launch_enclave_signer


@dataclass(frozen=True)
class PlatformConfig:
    cpusvn: bytes = bytes([2] * 16)
    sgx2: bool = True
    epc_base: int = 0x80000000  # as the vSGX EPC bank
    epc_pages: int = 0x15000000 // 4096
    # What the executor can run: XFRM bits and MISCSELECT the CPU accepts.
    xfrm: int = 0x3
    miscselect: int = 0x1
    launch_policy: LaunchPolicy = field(default_factory=LaunchPolicy)

    def cpuid(self) -> SgxCpuid:
        return SgxCpuid(sgx2=self.sgx2, miscselect=self.miscselect, xfrm=self.xfrm,
                        epc_sections=(EpcSection(self.epc_base, self.epc_pages * 4096),))


class PlatformSecrets:
    """Keys derived from the root secret, and the per-boot values."""

    def __init__(self, root_secret: bytes):
        if len(root_secret) != ROOT_SECRET_SIZE:
            raise VsgxError("the platform root secret must be 32 bytes")
        self.derivation_key = derivation_key(root_secret)
        self.seal_key_fuses = platform_value(root_secret, "seal key fuses")
        self.owner_epoch = platform_value(root_secret, "owner epoch")
        self.report_keyid = secrets.token_bytes(32)
        self.paging_key = secrets.token_bytes(16)
        self.paging_cipher = paging_cipher(self.paging_key)
        self.paging_primitives = page_primitives(self.paging_cipher)  # for the batches
