"""The EVM's launch enclave: EINITTOKENs that EINIT accepts on a platform
whose launch control needs them, keyed as EGETKEY(EINITTOKEN_KEY) of the
LE's identity; its policy; and the token over the channel."""

from __future__ import annotations

import pytest

from vsgx.arch import Attribute, Einittoken, SgxError
from vsgx.arch.constants import PAGE_SIZE
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.avm.driver import DriverError
from vsgx.avm.loader import secs_for
from vsgx.channel.messages import LaunchStatus, LaunchTokenError
from vsgx.crypto import mrsigner
from vsgx.evm import encls
from vsgx.evm.launch import (
    VSGX_LE_ATTRIBUTES,
    VSGX_LE_ISVPRODID,
    VSGX_LE_ISVSVN,
    LaunchEnclave,
    LaunchPolicy,
    einittoken_key,
    launch_enclave,
)
from vsgx.evm.platform import INTEL_LE_PUBKEY_HASH
from vsgx.evm.platform import LaunchPolicy as PlatformLaunchPolicy
from vsgx.host import Avm
from vsgx.host.attestation import get_launch_token
from vsgx.image import plan_from_bytes

OTHER_SECRET = bytes(range(60, 92))
TOKENS_NEEDED = PlatformLaunchPolicy(allowed_signers=frozenset())


def plain_plan(built):
    return plan_from_bytes(built.signed.read_bytes(), built.sigstruct.read_bytes())


def load_with_token(avm: Avm, plan, token_for) -> None:
    """What a /dev/isgx loader does: ECREATE, EADD, ask for a token with
    the SECS attributes, EINIT with it."""
    driver, memory = avm.driver, avm.memory
    base = memory.reserve_enclave_range(plan.ecreate.size)
    secs = secs_for(plan, base, driver.cpuid.xfrm, driver.cpuid.miscselect, debug=True)
    encl = driver.create(secs)
    for run in plan.runs:
        secinfo = run.secinfo_flags.to_bytes(8, "little") + bytes(56)
        data = run.data if run.data is not None else run.fill_page() * run.count
        for at in range(0, len(data), 256 * PAGE_SIZE):
            driver.add_pages(encl, run.offset + at, data[at:at + 256 * PAGE_SIZE], secinfo,
                             run.measured)
    try:
        driver.init(encl, plan.sigstruct_bytes, token_for(secs))
    except BaseException:
        driver.destroy(encl)
        raise


def ask(le, plan, secs, **changes) -> bytes:
    fields = dict(mrenclave=plan.sigstruct.enclavehash, modulus=plan.sigstruct.modulus,
                  attributes=secs.attributes, xfrm=secs.xfrm)
    fields.update(changes)
    return le.token(**fields)


def einit_status(avm, plan, token_for) -> SgxError:
    with pytest.raises(DriverError) as refused:
        load_with_token(avm, plan, token_for)
    return refused.value.sgx_error


def test_the_les_key_is_what_einit_recomputes(plain_enclave, make_vm):
    vm = make_vm(launch_policy=TOKENS_NEEDED)
    le = launch_enclave(vm)
    plan = plain_plan(plain_enclave)
    raw = le.token(plan.sigstruct.enclavehash, plan.sigstruct.modulus, 0x7, 0x3)
    token = Einittoken.unpack(raw)
    assert token.valid == 1 and token.isvprodidle == VSGX_LE_ISVPRODID
    assert token.isvsvnle == VSGX_LE_ISVSVN and token.cpusvnle == vm.config.cpusvn
    assert token.maskedattributesle == VSGX_LE_ATTRIBUTES & ~int(Attribute.MODE64BIT)
    assert token.maskedxfrmle == 0 and token.mrsigner == mrsigner(plan.sigstruct.modulus)
    from vsgx.arch.constants import KeyName
    from vsgx.arch.keyrequest import Keyrequest

    request = Keyrequest(keyname=KeyName.EINITTOKEN_KEY, cpusvn=token.cpusvnle,
                         isvsvn=token.isvsvnle, attributemask=~int(Attribute.MODE64BIT)
                         & (1 << 64) - 1, xfrmmask=0, miscmask=0xFFFFFFFF, keyid=token.keyid)
    assert einittoken_key(vm.machine, INTEL_LE_PUBKEY_HASH, VSGX_LE_ISVPRODID,
                          VSGX_LE_ATTRIBUTES, 0x3, 0, VSGX_LE_ISVSVN, request) == \
        encls.launch_key(vm.machine, token, INTEL_LE_PUBKEY_HASH)


def test_einit_accepts_the_les_token_where_tokens_are_needed(plain_enclave, make_vm,
                                                               make_avm):
    plan = plain_plan(plain_enclave)
    vm = make_vm(launch_policy=TOKENS_NEEDED)
    le = launch_enclave(vm)
    avm = make_avm(vm)
    assert einit_status(avm, plan, lambda secs: bytes(EINITTOKEN_SIZE)) \
        is SgxError.INVALID_EINITTOKEN
    load_with_token(avm, plan, lambda secs: ask(le, plan, secs))
    # What EINIT checks in the token, each refused.
    assert einit_status(avm, plan, lambda secs: ask(le, plan, secs, mrenclave=bytes(32))) \
        is SgxError.INVALID_MEASUREMENT
    assert einit_status(avm, plan, lambda secs: ask(
        le, plan, secs, attributes=secs.attributes & ~int(Attribute.DEBUG))) \
        is SgxError.INVALID_ATTRIBUTE

    def forged(secs) -> bytes:
        token = bytearray(ask(le, plan, secs))
        token[300] ^= 1  # the MAC
        return bytes(token)

    assert einit_status(avm, plan, forged) is SgxError.INVALID_EINITTOKEN


def test_a_token_from_another_platforms_le_is_refused(plain_enclave, make_vm, make_avm):
    plan = plain_plan(plain_enclave)
    other = launch_enclave(make_vm(secret=OTHER_SECRET, launch_policy=TOKENS_NEEDED))
    avm = make_avm(make_vm(launch_policy=TOKENS_NEEDED))
    assert einit_status(avm, plan, lambda secs: ask(other, plan, secs)) \
        is SgxError.INVALID_EINITTOKEN


def test_the_le_signs_as_the_signer_the_platform_trusts(plain_enclave, make_vm, make_avm):
    """A platform whose launch control names another LE signer: the LE is
    that signer (EINIT recomputes the key with it)."""
    plan = plain_plan(plain_enclave)
    custom = PlatformLaunchPolicy(allowed_signers=frozenset(), launch_enclave_signer=b"\x42" * 32)
    vm = make_vm(launch_policy=custom)
    le = LaunchEnclave(vm.machine)
    assert le.mrsigner == b"\x42" * 32
    load_with_token(make_avm(vm), plan, lambda secs: ask(le, plan, secs))


def test_with_flexible_launch_control_the_token_is_the_invalid_one_einit_accepts(
        plain_enclave, make_vm, make_avm):
    plan = plain_plan(plain_enclave)
    vm = make_vm()  # vsgx's default: every signer launches without a token
    le = launch_enclave(vm)
    avm = make_avm(vm)
    tokens = []

    def token_for(secs) -> bytes:
        tokens.append(ask(le, plan, secs))
        return tokens[-1]

    load_with_token(avm, plan, token_for)
    assert tokens == [bytes(EINITTOKEN_SIZE)]
    # A signer the platform lists launches without a token too.
    listed = PlatformLaunchPolicy(allowed_signers=frozenset({mrsigner(plan.sigstruct.modulus)}))
    assert not LaunchEnclave(make_vm(launch_policy=listed).machine).needs_token(
        mrsigner(plan.sigstruct.modulus))


@pytest.mark.parametrize("change,status,text", [
    ({"attributes": 0x7 | int(Attribute.PROVISIONKEY)}, LaunchStatus.INVALID_ATTRIBUTE,
     "PROVISIONKEY"),
    ({"attributes": 0x7 | int(Attribute.EINITTOKEN_KEY)}, LaunchStatus.INVALID_ATTRIBUTE,
     "EINITTOKEN_KEY"),
    ({"attributes": 0x7 | 1 << 8}, LaunchStatus.INVALID_ATTRIBUTE, "reserved"),
    ({"mrenclave": bytes(31)}, LaunchStatus.INVALID_PARAMETER, "32-byte"),
    ({"modulus": bytes(100)}, LaunchStatus.INVALID_PARAMETER, "384-byte"),
    ({"xfrm": 1 << 64}, LaunchStatus.INVALID_PARAMETER, "range"),
])
def test_the_le_policy_refuses(plain_enclave, make_vm, change, status, text):
    plan = plain_plan(plain_enclave)
    le = launch_enclave(make_vm(launch_policy=TOKENS_NEEDED))
    fields = dict(mrenclave=plan.sigstruct.enclavehash, modulus=plan.sigstruct.modulus,
                  attributes=0x7, xfrm=0x3)
    fields.update(change)
    with pytest.raises(LaunchTokenError, match=text) as refused:
        le.token(**fields)
    assert refused.value.status == status


def test_the_les_lists(plain_enclave, make_vm):
    plan = plain_plan(plain_enclave)
    signer = mrsigner(plan.sigstruct.modulus)
    vm = make_vm(launch_policy=TOKENS_NEEDED)
    fields = dict(mrenclave=plan.sigstruct.enclavehash, modulus=plan.sigstruct.modulus,
                  attributes=0x7, xfrm=0x3)
    closed = LaunchEnclave(vm.machine, LaunchPolicy(allowed_signers=frozenset({b"\x01" * 32})))
    with pytest.raises(LaunchTokenError, match="not on the launch enclave's list") as refused:
        closed.token(**fields)
    assert refused.value.status == LaunchStatus.SIGNER_NOT_ALLOWED
    listed = LaunchEnclave(vm.machine, LaunchPolicy(allowed_signers=frozenset({signer}),
                                                    provision_signers=frozenset({signer})))
    token = Einittoken.unpack(listed.token(**{**fields, "attributes": 0x17}))
    assert token.valid == 1 and token.attributes == 0x17


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_launch_token_over_the_channel(plain_enclave, evm_processes, transport):
    """LAUNCH_TOKEN: the EVM's LE answers (vsgx's EVM launches every signer,
    so the token is the all-zero one EINIT accepts), and its refusals keep
    their status."""
    from vsgx.avm.remote import connect_evm
    from vsgx.channel import EvidencePolicy

    plan = plain_plan(plain_enclave)
    evm = connect_evm(evm_processes(transport), EvidencePolicy(allow_unprotected=True),
                      warn=False)
    avm = Avm(evm)
    try:
        load_with_token(avm, plan, lambda secs: get_launch_token(
            plan.sigstruct.enclavehash, plan.sigstruct.modulus, secs.attributes, secs.xfrm,
            avm))
        assert get_launch_token(plan.sigstruct.enclavehash, plan.sigstruct.modulus, 0x7, 0x3,
                                evm) == bytes(EINITTOKEN_SIZE)
        with pytest.raises(LaunchTokenError, match="PROVISIONKEY") as refused:
            get_launch_token(plan.sigstruct.enclavehash, plan.sigstruct.modulus, 0x17, 0x3,
                             evm)
        assert refused.value.status == LaunchStatus.INVALID_ATTRIBUTE
        with pytest.raises(LaunchTokenError) as refused:
            evm.launch_token(bytes(32), bytes(10), 0, 0)
        assert refused.value.status == LaunchStatus.INVALID_PARAMETER
    finally:
        avm.close()
