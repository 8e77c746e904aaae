"""EPC paging (SDM 38.5): EBLOCK, ETRACK, EWB, ELDU under a small EPC, and
the anti-replay of VA-slot versions."""

from __future__ import annotations

import hashlib

import pytest

from vsgx.arch import Fault, SgxError
from vsgx.host import Enclave

from plain_ops import OP_SHA256, PlainEnclave


@pytest.fixture
def big_plain(build_dir, plain_enclave, signing_key):
    """The plain enclave with a 300-page heap."""
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    elf = build_dir / "plain-big.elf"
    elf.write_bytes(plain_enclave.unsigned.read_bytes())
    signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 300\n"
                                                         "misc_select = 1\n"),
                          load_private_key(signing_key))
    (build_dir / "plain-big.elf.sig").write_bytes(signed.data)
    return elf


@pytest.fixture
def small_epc_avm(transport, split_avm, make_avm):
    """96 EPC pages in-process; a separate EVM gives each session 256."""
    return make_avm(epc_pages=96) if transport == "inproc" else split_avm


def test_an_enclave_larger_than_the_epc_runs(big_plain, small_epc_avm):
    avm = small_epc_avm
    enclave = Enclave.load(big_plain, evm=avm)
    plain = PlainEnclave(enclave)
    driver = avm.driver
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    assert enclave.plan.added_pages > avm.driver.epc_size // 4096
    # What did not fit was deferred (an EVM that can) or evicted at load.
    assert len(enclave.handle.deferred) > 0 if driver.defers else driver.evictions > 0
    # Write a value into every heap page, then read them all back: every
    # access to an evicted page faults, ELDU brings it back (and evicts
    # another), and the values survive the round trips.
    for i in range(heap.count):
        assert plain.put(enclave.base + heap.offset + i * 4096 + 8, i * 7 + 1).kind == "eexit"
    for i in range(heap.count):
        result, value = plain.get(enclave.base + heap.offset + i * 4096 + 8)
        assert result.kind == "eexit" and value == i * 7 + 1
    assert driver.reloads + driver.deferred_loads > heap.count
    # The whole heap hashed inside the enclave equals the same bytes hashed here.
    expected = bytearray(heap.count * 4096)
    for i in range(heap.count):
        expected[i * 4096 + 8:i * 4096 + 16] = (i * 7 + 1).to_bytes(8, "little")
    result, _ = plain.call(0, OP_SHA256, heap.offset, heap.count * 4096, 1)
    assert result.kind == "eexit"
    assert plain.read_op(0, 32, 32) == hashlib.sha256(expected).digest()
    enclave.destroy()
    assert driver.free_epc_pages > 0


def test_ewb_needs_a_blocked_and_tracked_page(plain):
    vm = plain.enclave.avm.evm
    driver = plain.enclave.avm.driver
    page = plain.enclave.handle.pages[plain.symbol("encl_buffer")]
    va_page, va_index = driver._va_slot()
    slot = va_page + 8 * va_index
    assert vm.ewb(page.epc, slot)[0] is SgxError.PAGE_NOT_BLOCKED
    assert vm.eblock(page.epc) is SgxError.SUCCESS
    assert vm.eblock(page.epc) is SgxError.BLKSTATE
    assert vm.ewb(page.epc, slot)[0] is SgxError.NOT_TRACKED
    secs = plain.enclave.handle.secs_page
    assert vm.etrack(secs) is SgxError.SUCCESS
    status, blob = vm.ewb(page.epc, slot)
    assert status is SgxError.SUCCESS and len(blob.ciphertext) == 4096
    # The blob is encrypted: the page held encl_buffer = {1, 0...}.
    assert blob.ciphertext != bytes([1]) + bytes(4095)
    assert vm.eblock(page.epc) is SgxError.PG_INVLD
    assert vm.eblock(secs) is SgxError.PG_IS_SECS
    assert vm.eblock(va_page) is SgxError.NOTBLOCKABLE


def evict(plain, linaddr):
    vm = plain.enclave.avm.evm
    driver = plain.enclave.avm.driver
    page = plain.enclave.handle.pages[linaddr]
    epc = page.epc
    va_page, va_index = driver._va_slot()
    slot = va_page + 8 * va_index
    vm.eblock(epc)
    vm.etrack(plain.enclave.handle.secs_page)
    status, blob = vm.ewb(epc, slot)
    assert status is SgxError.SUCCESS
    return epc, slot, blob


def test_a_replayed_old_blob_is_refused(plain):
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    linaddr = plain.symbol("encl_buffer")
    # Take the page out twice: the first blob is stale after the second EWB.
    epc, slot, old = evict(plain, linaddr)
    assert vm.eldu(epc, slot, secs, linaddr, old.ciphertext, old.pcmd) is SgxError.SUCCESS
    vm.eblock(epc)
    vm.etrack(secs)
    status, new = vm.ewb(epc, slot)
    assert status is SgxError.SUCCESS
    assert vm.eldu(epc, slot, secs, linaddr, old.ciphertext, old.pcmd) is \
        SgxError.MAC_COMPARE_FAIL
    # A fresh blob under a wrong linear address, or a flipped bit, fails too.
    assert vm.eldu(epc, slot, secs, linaddr + 4096, new.ciphertext, new.pcmd) is \
        SgxError.MAC_COMPARE_FAIL
    flipped = bytearray(new.ciphertext)
    flipped[10] ^= 1
    assert vm.eldu(epc, slot, secs, linaddr, bytes(flipped), new.pcmd) is \
        SgxError.MAC_COMPARE_FAIL
    assert vm.eldu(epc, slot, secs, linaddr, new.ciphertext, new.pcmd) is SgxError.SUCCESS
    # The version was consumed: loading the same blob again is a replay.
    vm.eremove(epc)
    assert vm.eldu(epc, slot, secs, linaddr, new.ciphertext, new.pcmd) is \
        SgxError.MAC_COMPARE_FAIL


def test_the_wrong_va_slot_is_refused(plain):
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    _, other_slot, _ = evict(plain, linaddr + 4096)
    assert vm.eldu(epc, other_slot, secs, linaddr, blob.ciphertext, blob.pcmd) is \
        SgxError.MAC_COMPARE_FAIL
    assert vm.eldu(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS


def test_eldb_loads_the_page_blocked(plain):
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    assert vm.eldb(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS
    assert vm.eblock(epc) is SgxError.BLKSTATE


def test_ewb_into_an_occupied_slot_still_evicts(plain):
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    first = plain.symbol("encl_buffer")
    _epc, slot, _ = evict(plain, first)
    second = plain.enclave.handle.pages[first + 4096].epc
    vm.eblock(second)
    vm.etrack(secs)
    status, blob = vm.ewb(second, slot)
    assert status is SgxError.VA_SLOT_OCCUPIED and blob is not None
    assert vm.eblock(second) is SgxError.PG_INVLD


def test_va_pages_themselves_can_be_evicted(plain):
    vm = plain.enclave.avm.evm
    driver = plain.enclave.avm.driver
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    va_page = slot & ~4095
    other_va = driver._free.pop()
    vm.epa(other_va)
    status, va_blob = vm.ewb(va_page, other_va)
    assert status is SgxError.SUCCESS
    assert vm.eldu(va_page, other_va, 0, 0, va_blob.ciphertext, va_blob.pcmd) is SgxError.SUCCESS
    secs = plain.enclave.handle.secs_page
    assert vm.eldu(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS


def test_eremove_rules(plain):
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    assert vm.eremove(secs) is SgxError.CHILD_PRESENT
    with pytest.raises(Fault):
        vm.epa(secs)
    free = plain.enclave.avm.driver._free[0]
    assert vm.eremove(free) is SgxError.SUCCESS  # a free page: nothing to do
