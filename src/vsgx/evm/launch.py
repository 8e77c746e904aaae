"""The EVM's launch enclave (LE): EINITTOKENs for applications that use the
legacy ``/dev/isgx`` driver, whose urts asks aesmd for a launch token
before every EINIT (aesmd's GetLaunchToken).

Like the quoting enclave (``vsgx.evm.quoting``) it is part of the EVM, not
an image run in it, and behaves as Intel's LE does (psw/ae/le):

* its identity is documented: MRENCLAVE = SHA-256("vsgx launch enclave 1"),
  ISVPRODID 0x20 and ISVSVN 1 (the numbers of Intel's LE configuration),
  ATTRIBUTES INIT | MODE64BIT | EINITTOKEN_KEY, XFRM x87 | SSE, MISCSELECT
  0, a production enclave; its MRSIGNER is whatever the platform's launch
  policy names as the launch enclave's signer
  (``PlatformConfig.launch_policy.launch_enclave_signer``, by default the
  hash of Intel's LE signing key that IA32_SGXLEPUBKEYHASH holds after
  reset). EINIT accepts an EINITTOKEN_KEY-derived token only from an
  enclave with that MRSIGNER, so that is the one the LE has;
* a token is the LE's: VALID, the enclave's MRENCLAVE, MRSIGNER (SHA-256
  of the modulus), ATTRIBUTES and XFRM; the LE's CPUSVN, ISVPRODID, ISVSVN
  and its attributes masked as its KEYREQUEST masks them (ATTRIBUTEMASK
  ~MODE64BIT, XFRMMASK 0, MISCMASK all ones); a random KEYID; and a MAC by
  AES-CMAC under EGETKEY(EINITTOKEN_KEY) of that KEYREQUEST
  (``einittoken_key`` computes that leaf's derivation; EINIT's
  ``encls.launch_key`` recomputes it from the token's fields);
* on a platform whose launch policy lets the signer launch without a token
  (flexible launch control, vsgx's default: the OS writes the enclave's
  own signer into IA32_SGXLEPUBKEYHASH), a MACed token could never verify
  — its key is bound to the LE's signer, not the enclave's — and EINIT
  accepts an invalid (VALID = 0) token exactly there. The LE then answers
  with an all-zero token, so that legacy programs, which always ask, run.

Policy (``LaunchPolicy`` below), as Intel's production LE applies it:
attribute bits that are reserved, and EINITTOKEN_KEY (only launch enclaves
have it), get no token; PROVISIONKEY only for the signers in
``provision_signers`` (Intel's LE: its own service enclaves; here none by
default — an enclave that needs the provisioning key uses the in-kernel
driver's /dev/sgx_provision); and ``allowed_signers`` None gives every
signer a token, as Intel's LE does with a wild-card white list (or for
debug enclaves, which it never checks).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any

from vsgx.arch.constants import ATTRIBUTES_DEFINED, Attribute, KeyName
from vsgx.arch.einittoken import EINITTOKEN_SIZE, Einittoken
from vsgx.arch.keyrequest import Keyrequest
from vsgx.channel.messages import LaunchStatus, LaunchTokenError
from vsgx.crypto.einittoken import einittoken_mac
from vsgx.crypto.keys import PKCS1_PADDING, KeyDependencies, derive_key
from vsgx.crypto.sigstruct import mrsigner as signer_of
from vsgx.evm.machine import Machine

VSGX_LE_MRENCLAVE = hashlib.sha256(b"vsgx launch enclave 1").digest()
VSGX_LE_ISVPRODID = 0x20
VSGX_LE_ISVSVN = 1
VSGX_LE_ATTRIBUTES = int(Attribute.INIT | Attribute.MODE64BIT | Attribute.EINITTOKEN_KEY)
VSGX_LE_XFRM = 0x3
VSGX_LE_MISCSELECT = 0
MODULUS_SIZE = 384
# What the LE's KEYREQUEST masks (Intel's le_calc_lic_token).
LE_ATTRIBUTE_MASK = 0xFFFFFFFFFFFFFFFF & ~int(Attribute.MODE64BIT)
LE_XFRM_MASK = 0
LE_MISC_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class LaunchPolicy:
    """Which enclaves the LE gives tokens. ``allowed_signers`` None: every
    signer (Intel's LE with a wild-card white list)."""

    allowed_signers: frozenset[bytes] | None = None
    provision_signers: frozenset[bytes] = frozenset()


def einittoken_key(machine: Machine, mrsigner: bytes, isvprodid: int, attributes: int,
                   xfrm: int, miscselect: int, isvsvn: int, request: Keyrequest) -> bytes:
    """EGETKEY(EINITTOKEN_KEY) as an enclave with this identity executes it
    (the EINITTOKEN_KEY branch of ``enclu.egetkey``): bound to the owner
    epoch, the fuses, the request's CPUSVN, ISVSVN and KEYID, the masked
    attributes, XFRM and MISCSELECT, and the enclave's ISVPRODID and MRSIGNER."""
    secrets_ = machine.secrets
    deps = KeyDependencies(
        keyname=KeyName.EINITTOKEN_KEY, ownerepoch=secrets_.owner_epoch,
        seal_key_fuses=secrets_.seal_key_fuses, padding=PKCS1_PADDING, cpusvn=request.cpusvn,
        isvsvn=request.isvsvn, attributes=(request.attributemask | 0x3) & attributes,
        xfrm=request.xfrmmask & xfrm, miscselect=request.miscmask & miscselect,
        isvprodid=isvprodid, mrsigner=mrsigner, keyid=request.keyid)
    return derive_key(secrets_.derivation_key, deps)


class LaunchEnclave:
    """The launch enclave of one EVM (one Machine)."""

    def __init__(self, machine: Machine, policy: LaunchPolicy | None = None):
        self.machine = machine
        self.policy = policy or LaunchPolicy()

    @property
    def mrsigner(self) -> bytes:
        """The LE's MRSIGNER: the signer the platform's launch control trusts."""
        return self.machine.config.launch_policy.launch_enclave_signer

    def needs_token(self, mrsigner: bytes) -> bool:
        """Whether EINIT on this platform needs a valid token for this signer."""
        return self.machine.config.launch_policy.lepubkeyhash_for(mrsigner) != mrsigner

    def token(self, mrenclave: bytes, modulus: bytes, attributes: int, xfrm: int) -> bytes:
        """An EINITTOKEN for the enclave (304 bytes); LaunchTokenError if the
        policy gives it none."""
        if len(mrenclave) != 32 or len(modulus) != MODULUS_SIZE:
            raise LaunchTokenError(LaunchStatus.INVALID_PARAMETER,
                                   f"a launch token request names a 32-byte MRENCLAVE and a "
                                   f"{MODULUS_SIZE}-byte modulus")
        if not 0 <= attributes < 1 << 64 or not 0 <= xfrm < 1 << 64:
            raise LaunchTokenError(LaunchStatus.INVALID_PARAMETER, "attributes out of range")
        if attributes & ~int(ATTRIBUTES_DEFINED):
            raise LaunchTokenError(LaunchStatus.INVALID_ATTRIBUTE,
                                   f"the attributes {attributes:#x} set reserved bits")
        if attributes & Attribute.EINITTOKEN_KEY:
            raise LaunchTokenError(LaunchStatus.INVALID_ATTRIBUTE,
                                   "only a launch enclave has EINITTOKEN_KEY; no token for it")
        signer = signer_of(modulus)
        policy = self.policy
        if attributes & Attribute.PROVISIONKEY and signer not in policy.provision_signers:
            raise LaunchTokenError(LaunchStatus.INVALID_ATTRIBUTE,
                                   f"signer {signer.hex()} may not have PROVISIONKEY (the launch "
                                   "enclave's provisioning list does not name it)")
        if policy.allowed_signers is not None and signer not in policy.allowed_signers:
            raise LaunchTokenError(LaunchStatus.SIGNER_NOT_ALLOWED,
                                   f"signer {signer.hex()} is not on the launch enclave's list")
        if not self.needs_token(signer):
            return bytes(EINITTOKEN_SIZE)  # see the module text
        config = self.machine.config
        request = Keyrequest(keyname=KeyName.EINITTOKEN_KEY, cpusvn=config.cpusvn,
                             isvsvn=VSGX_LE_ISVSVN, attributemask=LE_ATTRIBUTE_MASK,
                             xfrmmask=LE_XFRM_MASK, miscmask=LE_MISC_MASK,
                             keyid=secrets.token_bytes(32))
        token = Einittoken(
            valid=1, attributes=attributes, xfrm=xfrm, mrenclave=mrenclave, mrsigner=signer,
            cpusvnle=config.cpusvn, isvprodidle=VSGX_LE_ISVPRODID, isvsvnle=VSGX_LE_ISVSVN,
            maskedmiscselectle=VSGX_LE_MISCSELECT & LE_MISC_MASK,
            maskedattributesle=(LE_ATTRIBUTE_MASK | 0x3) & VSGX_LE_ATTRIBUTES,
            maskedxfrmle=LE_XFRM_MASK & VSGX_LE_XFRM, keyid=request.keyid)
        key = einittoken_key(self.machine, self.mrsigner, VSGX_LE_ISVPRODID,
                             VSGX_LE_ATTRIBUTES, VSGX_LE_XFRM, VSGX_LE_MISCSELECT,
                             VSGX_LE_ISVSVN, request)
        return replace(token, mac=einittoken_mac(key, token)).pack()


_LAUNCH_ENCLAVES: weakref.WeakKeyDictionary[Any, LaunchEnclave] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def launch_enclave(vm: Any, policy: LaunchPolicy | None = None) -> LaunchEnclave:
    """The LE of an EnclaveVM: one per VM, made on the first call (which
    decides its policy; a later call with another policy replaces it)."""
    with _REGISTRY_LOCK:
        le = _LAUNCH_ENCLAVES.get(vm)
        if le is None:
            le = LaunchEnclave(vm.machine, policy)
            _LAUNCH_ENCLAVES[vm] = le
        elif policy is not None:
            le.policy = policy
        return le
