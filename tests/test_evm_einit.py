"""EINIT (SDM EINIT): the signature, the measurement, the attribute masks and
launch control are checked; the seed's vSGX checked none of them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vsgx.arch import Attribute, Einittoken, SgxError
from vsgx.avm.driver import DriverError
from vsgx.avm.loader import load_plan
from vsgx.crypto import check_sigstruct, load_private_key, mrsigner, private_key_signer, sign
from vsgx.crypto.einittoken import einittoken_mac
from vsgx.evm.platform import LaunchPolicy
from vsgx.image import plan_from_bytes


@pytest.fixture
def executor():
    """EINIT does not depend on the executor (every check of it, on a bare
    machine: tests/leaves/test_leaf_build.py)."""
    return "unicorn"


def plain_plan(built):
    return plan_from_bytes(built.signed.read_bytes(), built.sigstruct.read_bytes())


def einit_error(avm, plan) -> SgxError:
    with pytest.raises(DriverError) as raised:
        load_plan(avm.driver, avm.memory, plan)
    return raised.value.sgx_error


class RawBuilder:
    """ECREATE and EADD/EEXTEND a plan straight on an EnclaveVM (no driver),
    to call EINIT with SECS values a loader would never choose."""

    def __init__(self, vm):
        from vsgx.avm.memory import AddressSpace

        self.vm = vm
        self.memory = AddressSpace()
        self.next_page = vm.config.epc_base

    def build(self, plan, **secs_changes) -> int:
        from vsgx.arch import PageType, Secinfo, Secs

        secs = Secs(size=plan.ecreate.size,
                    baseaddr=self.memory.reserve_enclave_range(plan.ecreate.size),
                    ssaframesize=plan.ecreate.ssaframesize, miscselect=1,
                    attributes=int(Attribute.MODE64BIT | Attribute.DEBUG), xfrm=3)
        secs = replace(secs, **secs_changes)
        secs_page = self.next_page
        self.vm.ecreate(secs_page, secs.pack(), Secinfo.of(PageType.SECS).pack())
        page = secs_page + 4096
        for run in plan.runs:
            for i in range(run.count):
                self.vm.eadd(page, secs_page, secs.baseaddr + run.offset + 4096 * i, run.page(i),
                             Secinfo(flags=run.secinfo_flags).pack(), measure=run.measured)
                page += 4096
        self.next_page = page
        return secs_page


def test_a_correct_enclave_initialises(plain_enclave, make_avm):
    avm = make_avm()
    encl = load_plan(avm.driver, avm.memory, plain_plan(plain_enclave))
    assert encl.initialized


def test_wrong_signature_is_refused(plain_enclave, make_avm):
    plan = plain_plan(plain_enclave)
    raw = bytearray(plan.sigstruct_bytes)
    raw[600] ^= 1  # inside SIGNATURE
    assert check_sigstruct(bytes(raw)) is SgxError.INVALID_SIGNATURE
    tampered = replace(plan, sigstruct_bytes=bytes(raw))
    assert einit_error(make_avm(), tampered) is SgxError.INVALID_SIGNATURE


def test_malformed_sigstruct_is_refused(plain_enclave, make_avm):
    plan = plain_plan(plain_enclave)
    raw = bytearray(plan.sigstruct_bytes)
    raw[100] = 1  # a reserved byte
    assert einit_error(make_avm(), replace(plan, sigstruct_bytes=bytes(raw))) is \
        SgxError.INVALID_SIG_STRUCT


def test_one_byte_change_to_a_measured_page_is_refused(plain_enclave, make_avm):
    plan = plain_plan(plain_enclave)
    text = next(run for run in plan.runs if run.secinfo_flags == 0x205)
    data = bytearray(text.data)
    data[100] ^= 0x40
    runs = tuple(replace(run, data=bytes(data)) if run is text else run for run in plan.runs)
    assert einit_error(make_avm(), replace(plan, runs=runs)) is SgxError.INVALID_MEASUREMENT


def test_an_unmeasured_change_is_not_caught(plain_enclave, make_avm):
    """Heap pages are added without EEXTEND: their content is not measured."""
    plan = plain_plan(plain_enclave)
    heap = plan.runs[-1]
    assert not heap.measured
    runs = (*plan.runs[:-1], replace(heap, fill=0xAB))
    avm = make_avm()
    assert load_plan(avm.driver, avm.memory, replace(plan, runs=runs)).initialized


def test_attribute_mask_mismatch_is_refused(plain_enclave, make_avm, make_vm, signing_key):
    plan = plain_plan(plain_enclave)
    key = load_private_key(signing_key)
    # DEBUG is now in the mask and required clear: a debug enclave fails.
    strict = sign(replace(plan.sigstruct, attributemask=(1 << 64) - 1), key.public_key(),
                  private_key_signer(key))
    strict_plan = replace(plan, sigstruct=strict, sigstruct_bytes=strict.pack())
    raw = RawBuilder(make_vm())
    debug_secs = raw.build(strict_plan)
    assert raw.vm.einit(debug_secs, strict.pack()) is SgxError.INVALID_ATTRIBUTE
    production = raw.build(strict_plan, attributes=4)
    assert raw.vm.einit(production, strict.pack()) is SgxError.SUCCESS
    # The loader knows this and refuses a debug load itself.
    from vsgx.errors import VsgxError

    avm = make_avm()
    with pytest.raises(VsgxError, match="debug=False"):
        load_plan(avm.driver, avm.memory, strict_plan)
    # MISCSELECT outside what the SIGSTRUCT allows under its mask.
    misc_secs = raw.build(plan, miscselect=0)
    assert plan.sigstruct.miscselect == 1 and plan.sigstruct.miscmask == 0xFFFFFFFF
    assert raw.vm.einit(misc_secs, plan.sigstruct_bytes) is SgxError.INVALID_ATTRIBUTE
    # XFRM is masked too (x87 and SSE are required, MPX must be clear).
    assert raw.vm.einit(raw.build(plan), plan.sigstruct_bytes) is SgxError.SUCCESS


def test_restrictive_launch_policy(plain_enclave, make_avm, make_vm):
    plan = plain_plan(plain_enclave)
    signer = mrsigner(plan.sigstruct.modulus)
    allowed = make_avm(make_vm(launch_policy=LaunchPolicy(frozenset({signer}))))
    assert load_plan(allowed.driver, allowed.memory, plan).initialized
    refused = make_avm(make_vm(launch_policy=LaunchPolicy(frozenset({b"\x01" * 32}))))
    assert einit_error(refused, plan) is SgxError.INVALID_EINITTOKEN


def test_einittoken_path(plain_enclave, make_vm):
    """A signer outside the policy launches with a valid EINITTOKEN (as a
    launch enclave would mint it); a forged MAC does not."""
    from vsgx.evm import encls

    plan = plain_plan(plain_enclave)
    vm = make_vm(launch_policy=LaunchPolicy(frozenset()))
    raw = RawBuilder(vm)
    secs_page = raw.build(plan)
    encl = vm.enclave(secs_page)
    le_hash = vm.config.launch_policy.launch_enclave_signer

    def minted(**fields) -> Einittoken:
        token = Einittoken(valid=1, attributes=encl.attributes, xfrm=encl.xfrm,
                           mrenclave=plan.measure(), mrsigner=mrsigner(plan.sigstruct.modulus),
                           cpusvnle=vm.config.cpusvn, keyid=b"\x07" * 32)
        token = replace(token, **fields)
        return replace(token, mac=einittoken_mac(encls.launch_key(vm.machine, token, le_hash),
                                                  token))

    token = minted()
    assert vm.einit(secs_page, plan.sigstruct_bytes) is SgxError.INVALID_EINITTOKEN
    forged = replace(token, mac=bytes(16))
    assert vm.einit(secs_page, plan.sigstruct_bytes, forged.pack()) is \
        SgxError.INVALID_EINITTOKEN
    future = minted(cpusvnle=b"\xff" * 16)
    assert vm.einit(secs_page, plan.sigstruct_bytes, future.pack()) is SgxError.INVALID_CPUSVN
    other = minted(mrenclave=b"\x01" * 32)
    assert vm.einit(secs_page, plan.sigstruct_bytes, other.pack()) is \
        SgxError.INVALID_MEASUREMENT
    assert vm.einit(secs_page, plan.sigstruct_bytes, token.pack()) is SgxError.SUCCESS


def test_einittoken_key_attribute_needs_the_launch_signer(plain_enclave, make_vm, make_avm):
    plan = plain_plan(plain_enclave)
    with_le_attr = replace(plan, ecreate=replace(
        plan.ecreate, attributes=plan.ecreate.attributes | Attribute.EINITTOKEN_KEY))
    avm = make_avm(make_vm(launch_policy=LaunchPolicy(frozenset())))
    with pytest.raises(DriverError):
        load_plan(avm.driver, avm.memory, with_le_attr)


def test_eadd_after_einit_and_second_einit_fault(leaf_plain):
    plain = leaf_plain
    from vsgx.arch import Fault, PageType, Secinfo, Vector

    vm = plain.enclave.avm.evm
    secs_page = plain.enclave.handle.secs_page
    driver = plain.enclave.avm.driver
    free = driver.take_epc_page()
    with pytest.raises(Fault) as raised:
        vm.eadd(free, secs_page, plain.base + plain.enclave.size - 4096, bytes(4096),
                Secinfo.of(PageType.REG, 3).pack())
    assert raised.value.vector == Vector.GP
    driver.give_epc_page(free)
    with pytest.raises(Fault):
        vm.einit(secs_page, plain.enclave.plan.sigstruct_bytes)


def test_ecreate_checks(make_vm):
    from vsgx.arch import Fault, PageType, Secinfo, Secs, Vector

    vm = make_vm()
    epc = vm.config.epc_base
    good = Secs(size=1 << 16, baseaddr=1 << 40, ssaframesize=1, attributes=4, xfrm=3)
    cases = [replace(good, size=3 << 12), replace(good, baseaddr=(1 << 40) + 4096),
             replace(good, xfrm=1), replace(good, attributes=5), replace(good, ssaframesize=0),
             replace(good, miscselect=0x80), replace(good, attributes=0),
             replace(good, xfrm=0x7)]
    for secs in cases:
        with pytest.raises(Fault) as raised:
            vm.ecreate(epc, secs.pack(), Secinfo.of(PageType.SECS).pack())
        assert raised.value.vector == Vector.GP, secs
    with pytest.raises(Fault):
        vm.ecreate(epc, good.pack(), Secinfo.of(PageType.REG).pack())
    with pytest.raises(Fault) as raised:
        vm.ecreate(0x1000, good.pack(), Secinfo.of(PageType.SECS).pack())
    assert raised.value.vector == Vector.PF
    vm.ecreate(epc, good.pack(), Secinfo.of(PageType.SECS).pack())
    with pytest.raises(Fault) as raised:
        vm.ecreate(epc, good.pack(), Secinfo.of(PageType.SECS).pack())
    assert raised.value.vector == Vector.PF
