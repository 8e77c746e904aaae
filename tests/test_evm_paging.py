"""EPC paging (SDM "EPC and Management of EPC Pages"): EBLOCK, ETRACK, EWB,
ELDU under a small EPC, and the anti-replay of VA-slot versions, through
the EVM's interface and the driver (every check of the leaves themselves:
tests/leaves/test_leaf_paging.py)."""

from __future__ import annotations

import hashlib

import pytest

from vsgx.arch import Fault, SgxError
from vsgx.host import Enclave

from conftest import REMOTE_TRANSPORTS, ROOT_SECRET, _remote_avm
from plain_ops import OP_NOP, OP_SHA256, PlainEnclave


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


@pytest.fixture(params=["inproc", *REMOTE_TRANSPORTS])
def small_epc_avm(request, evm_processes):
    """96 EPC pages in-process (on Unicorn: test_epc_oversubscribed pages on
    every executor); a separate EVM gives each session 256, over each
    transport (the blobs cross the channel)."""
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM
    from vsgx.host import Avm

    if request.param == "inproc":
        avm = Avm(EnclaveVM(PlatformConfig(epc_pages=96), root_secret=ROOT_SECRET,
                            executor="unicorn"))
    else:
        avm = _remote_avm(request.param, evm_processes)
    yield avm
    avm.close()


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


def test_ewb_needs_a_blocked_and_tracked_page(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    driver = plain.enclave.avm.driver
    page = plain.enclave.handle.pages[plain.symbol("encl_buffer")]
    va_page, va_index = driver.take_va_slot()
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
    va_page, va_index = driver.take_va_slot()
    slot = va_page + 8 * va_index
    vm.eblock(epc)
    vm.etrack(plain.enclave.handle.secs_page)
    status, blob = vm.ewb(epc, slot)
    assert status is SgxError.SUCCESS
    return epc, slot, blob


def test_a_replayed_old_blob_is_refused(leaf_plain):
    plain = leaf_plain
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


def test_the_wrong_va_slot_is_refused(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    _, other_slot, _ = evict(plain, linaddr + 4096)
    assert vm.eldu(epc, other_slot, secs, linaddr, blob.ciphertext, blob.pcmd) is \
        SgxError.MAC_COMPARE_FAIL
    assert vm.eldu(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS


def test_eldb_loads_the_page_blocked(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    assert vm.eldb(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS
    assert vm.eblock(epc) is SgxError.BLKSTATE


def test_ewb_into_an_occupied_slot_still_evicts(leaf_plain):
    plain = leaf_plain
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


def test_va_pages_themselves_can_be_evicted(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    driver = plain.enclave.avm.driver
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    va_page = slot & ~4095
    other_va = driver.take_epc_page()
    vm.epa(other_va)
    status, va_blob = vm.ewb(va_page, other_va)
    assert status is SgxError.SUCCESS
    assert vm.eldu(va_page, other_va, 0, 0, va_blob.ciphertext, va_blob.pcmd) is SgxError.SUCCESS
    secs = plain.enclave.handle.secs_page
    assert vm.eldu(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS


def test_eremove_rules(leaf_plain):
    plain = leaf_plain
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    assert vm.eremove(secs) is SgxError.CHILD_PRESENT
    with pytest.raises(Fault):
        vm.epa(secs)
    driver = plain.enclave.avm.driver
    free = driver.take_epc_page()
    assert vm.eremove(free) is SgxError.SUCCESS  # a free page: nothing to do
    driver.give_epc_page(free)


# -- the batch leaves and deferred pages, on an EVM alone ----------------------
BASE = 0x7F0000000000


def bare_enclave(pages: int = 64):
    """An EVM with one uninitialized enclave of ``pages`` pages."""
    from vsgx.arch import Attribute, PageType, Secinfo
    from vsgx.arch.secs import Secs
    from vsgx.evm.vm import EnclaveVM

    vm = EnclaveVM(root_secret=bytes(32), executor="unicorn")
    epc = vm.config.epc_base
    secs = Secs(size=pages * 4096, baseaddr=BASE, ssaframesize=1,
                attributes=int(Attribute.MODE64BIT | Attribute.DEBUG), xfrm=3)
    vm.ecreate(epc, secs.pack(), Secinfo.of(PageType.SECS).pack())
    return vm, epc


RW_REG = ((0x2 << 8) | 0x3).to_bytes(8, "little") + bytes(56)


def test_a_batch_of_ewb_and_eldu_is_exactly_the_single_leaves():
    import struct

    from vsgx.crypto.paging import decrypt_page, paging_header

    vm, secs = bare_enclave()
    pages = [secs + 4096 * (1 + i) for i in range(8)]
    va = secs + 4096 * 20
    vm.epa(va)
    content = bytes(range(256)) * 16 * 8
    vm.eadd_pages(pages, secs, BASE, content, RW_REG, measure=True)
    assert all(s is SgxError.SUCCESS for s in vm.eblock_pages(pages))
    assert vm.etrack(secs) is SgxError.SUCCESS
    results = vm.ewb_pages([(p, va + 8 * i) for i, p in enumerate(pages)])
    versions = vm.machine.epc.va_slots[va]
    eid = vm.enclave(secs).eid
    for i, (status, blob) in enumerate(results):
        assert status is SgxError.SUCCESS
        # PCMD: SECINFO (the EPCM flags), ENCLAVEID, zero reserved, MAC.
        flags, = struct.unpack_from("<Q", blob.pcmd)
        assert flags == 0x203 and blob.pcmd[8:64] == bytes(56)
        assert struct.unpack_from("<Q", blob.pcmd, 64)[0] == eid
        assert blob.pcmd[72:112] == bytes(40) and blob.pcmd[112:] == blob.sealed[4096:]
        # The version in the VA slot is the nonce; the header binds SECINFO,
        # LINADDR and the enclave id.
        header = paging_header(blob.pcmd[:64], BASE + 4096 * i, eid, bytes(40))
        assert decrypt_page(vm.machine.secrets.paging_cipher, versions[i], header,
                            blob.ciphertext, blob.pcmd[112:]) == content[4096 * i:4096 * (i + 1)]
    # Back: half through the batch (the sealed form), half one by one.
    batch = [(p, va + 8 * i, BASE + 4096 * i, blob.sealed, blob.pcmd)
             for i, (p, (_, blob)) in enumerate(zip(pages, results, strict=True))][:4]
    assert vm.eldu_pages(secs, batch) == [SgxError.SUCCESS] * 4
    for i in range(4, 8):
        blob = results[i][1]
        assert vm.eldu(pages[i], va + 8 * i, secs, BASE + 4096 * i, blob.ciphertext,
                       blob.pcmd) is SgxError.SUCCESS
    memory = vm.enclave(secs).memory
    assert bytes(memory.view[:8 * 4096]) == content
    assert not any(versions[:8])  # every version consumed


def test_a_fault_ends_a_batch_and_keeps_what_was_done():
    vm, secs = bare_enclave()
    pages = [secs + 4096 * (1 + i) for i in range(3)]
    va = secs + 4096 * 20
    vm.epa(va)
    vm.eadd_pages(pages, secs, BASE, bytes(3 * 4096), RW_REG)
    vm.eblock_pages(pages)
    vm.etrack(secs)
    results = vm.ewb_pages([(pages[0], va), (pages[1] + 8, va + 8), (pages[2], va + 16)])
    assert len(results) == 2 and results[0][0] is SgxError.SUCCESS
    assert isinstance(results[1], Fault)
    encl = vm.enclave(secs)
    assert BASE not in encl.pages and BASE + 4096 in encl.pages and BASE + 8192 in encl.pages
    # The evicted page comes back from the blob the batch did return.
    blob = results[0][1]
    assert vm.eldu_pages(secs, [(pages[0], va, BASE, blob.sealed, blob.pcmd)]) == \
        [SgxError.SUCCESS]


def test_eldu_compares_the_mac_of_the_pcmd_and_leaves_no_plaintext():
    vm, secs = bare_enclave()
    page, va = secs + 4096, secs + 4096 * 20
    vm.epa(va)
    secret = b"\x5a" * 4096
    vm.eadd_pages([page], secs, BASE, secret, RW_REG)
    vm.eblock(page)
    vm.etrack(secs)
    _, blob = vm.ewb(page, va)
    # A sealed blob whose own MAC copy is wrong still loads: PCMD's counts.
    forged_tail = blob.sealed[:4096] + bytes(16)
    bad_pcmd = blob.pcmd[:112] + bytes(16)
    assert vm.eldu_pages(secs, [(page, va, BASE, blob.sealed, bad_pcmd)]) == \
        [SgxError.MAC_COMPARE_FAIL]
    memory = vm.enclave(secs).memory
    assert bytes(memory.view[:4096]) == bytes(4096)  # the failed load left nothing
    flipped = bytearray(blob.sealed)
    flipped[100] ^= 1
    assert vm.eldu_pages(secs, [(page, va, BASE, bytes(flipped), blob.pcmd)]) == \
        [SgxError.MAC_COMPARE_FAIL]
    assert bytes(memory.view[:4096]) == bytes(4096)
    assert vm.eldu_pages(secs, [(page, va, BASE, forged_tail, blob.pcmd)]) == \
        [SgxError.SUCCESS]
    assert bytes(memory.view[:4096]) == secret
    # The single leaf takes the page's ciphertext only.
    with pytest.raises(Fault):
        vm.eldu(page + 4096, va + 8, secs, BASE + 4096, blob.sealed, blob.pcmd)


def test_eadd_uniform_measures_as_one_eadd_per_page():
    pages, fill = 40, 0xCCCCCCCC
    pattern = fill.to_bytes(4, "little") * 1024
    one, secs_one = bare_enclave()
    run, secs_run = bare_enclave()
    for i in range(pages):
        one.eadd(secs_one + 4096 * (1 + i), secs_one, BASE + 4096 * i, pattern, RW_REG,
                 measure=i % 2 == 0)
    # Half measured and half not, in the same order, some resident, some not.
    for i in range(0, pages, 2):
        run.eadd_uniform(secs_run, BASE + 4096 * i, 1, RW_REG, fill, measure=True,
                         epc_pages=[secs_run + 4096 * (1 + i)] if i < 10 else [])
        run.eadd_uniform(secs_run, BASE + 4096 * (i + 1), 1, RW_REG, fill, measure=False)
    a, b = one.enclave(secs_one), run.enclave(secs_run)
    assert a.mrenclave_builder.digest() == b.mrenclave_builder.digest()
    assert len(b.deferred) == pages - 5 and len(b.pages) == 5 and b.child_count == 5


def test_deferred_pages_load_once_and_hold_their_place():
    from vsgx.arch.errors import Fault as ArchFault

    vm, secs = bare_enclave()
    fill = 0x11223344
    vm.eadd_uniform(secs, BASE, 16, RW_REG, fill, measure=False, epc_pages=[secs + 4096])
    encl = vm.enclave(secs)
    assert BASE in encl.pages and len(encl.deferred) == 15
    # Their linear pages are taken: no EADD, no second run over them.
    with pytest.raises(ArchFault):
        vm.eadd(secs + 8192, secs, BASE + 4096 * 3, bytes(4096), RW_REG)
    with pytest.raises(ArchFault):
        vm.eadd_uniform(secs, BASE + 4096 * 15, 2, RW_REG, 0)
    vm.eldu_deferred(secs + 8192, secs, BASE + 4096 * 3)
    page = bytes(encl.memory.view[3 * 4096:4 * 4096])
    assert page == fill.to_bytes(4, "little") * 1024
    entry = vm.machine.epc.entry(secs + 8192)
    assert entry.valid and entry.linaddr == BASE + 4096 * 3 and entry.secinfo_flags() == 0x203
    with pytest.raises(ArchFault):  # loaded once: it is no longer deferred
        vm.eldu_deferred(secs + 12288, secs, BASE + 4096 * 3)
    # Deferred pages are no children of the SECS (like evicted ones).
    assert encl.child_count == 2
    vm.eremove(secs + 4096)
    vm.eremove(secs + 8192)
    assert vm.eremove(secs) is SgxError.SUCCESS


def test_a_failed_eldu_gives_the_memory_it_wrote_back(leaf_plain):
    """A blob that fails its MAC at a linear address the enclave never had
    leaves no memory behind: the unverified plaintext is scrubbed by giving
    the page back, not by writing zeros into it (an AVM that sent such
    ELDUs across a large ELRANGE would otherwise fill the EVM's memory)."""
    import os

    plain = leaf_plain
    vm = plain.enclave.avm.evm
    secs = plain.enclave.handle.secs_page
    state = vm.machine.epc.secs[secs]
    linaddr = plain.symbol("encl_buffer")
    epc, slot, blob = evict(plain, linaddr)
    taken = set(state.pages) | {linaddr}
    holes = [page for page in range(state.base, state.base + state.size, 4096)
             if page not in taken and state.deferred.get(page) is None]
    assert len(holes) >= 4, "the plain enclave's ELRANGE has room to spare"
    before = os.fstat(state.memory.fd).st_blocks
    for hole in holes:
        assert vm.eldu(epc, slot, secs, hole, blob.ciphertext, blob.pcmd) is \
            SgxError.MAC_COMPARE_FAIL
        # pread: a read through the mapping would give the hole a page itself
        assert os.pread(state.memory.fd, 4096, hole - state.base) == bytes(4096)
    assert os.fstat(state.memory.fd).st_blocks <= before
    # The slot was not consumed: the right blob at the right address loads.
    assert vm.eldu(epc, slot, secs, linaddr, blob.ciphertext, blob.pcmd) is SgxError.SUCCESS


def test_protections_kept_through_the_journal_equal_a_full_read():
    """What the native executor keeps: its page -> rights map, brought up
    to date from the journal's pages after each change (EWB, ELDU,
    EREMOVE, mprotect), is the map a full read of the EPCM gives, and the
    runs it sends turn the old map into the new one."""
    import random

    from vsgx.evm.access import changed_protection_runs, page_prot, protection_runs

    def read_all(encl):
        rights = {page: page_prot(encl, page) for page in encl.pages}
        return {page: prot for page, prot in rights.items() if prot}

    vm, secs = bare_enclave()
    encl = vm.enclave(secs)
    pages = [secs + 4096 * (1 + i) for i in range(24)]
    va = secs + 4096 * 40
    vm.epa(va)
    vm.eadd_pages(pages, secs, BASE, bytes(24 * 4096), RW_REG)
    kept, _ = protection_runs(encl, {})
    mark = encl.change_mark()
    rng = random.Random(13)
    resident = {BASE + 4096 * i: epc for i, epc in enumerate(pages)}
    evicted: dict[int, tuple[int, int, object]] = {}
    free_slots = list(range(512))
    for step in range(60):
        choice = rng.randrange(3)
        if choice == 0 and resident:
            batch = rng.sample(sorted(resident), min(len(resident), rng.randint(1, 5)))
            vm.eblock_pages([resident[p] for p in batch])
            vm.etrack(secs)
            slots = [free_slots.pop() for _ in batch]
            results = vm.ewb_pages([(resident[p], va + 8 * s) for p, s in
                                    zip(batch, slots, strict=True)])
            for page, slot, (status, blob) in zip(batch, slots, results, strict=True):
                assert status is SgxError.SUCCESS
                evicted[page] = (resident.pop(page), slot, blob)
        elif choice == 1 and evicted:
            for page in rng.sample(sorted(evicted), min(len(evicted), rng.randint(1, 5))):
                epc, slot, blob = evicted.pop(page)
                assert vm.eldu_pages(secs, [(epc, va + 8 * slot, page, blob.sealed,
                                             blob.pcmd)]) == [SgxError.SUCCESS]
                free_slots.append(slot)
                resident[page] = epc
        else:
            start = BASE + 4096 * rng.randrange(24)
            vm.set_page_protection(secs, start, 1, rng.choice([0b001, 0b011, 0b111, 0]))
        before = dict(kept)
        changed = encl.changes_since(mark)
        assert changed is not None, step
        runs = changed_protection_runs(encl, kept, changed)
        mark = encl.change_mark()
        assert kept == protection_runs(encl, {})[0] == read_all(encl), step
        for start, end, prot in runs:
            for page in range(start, end, 4096):
                if prot:
                    before[page] = prot
                else:
                    before.pop(page, None)
        assert before == kept, step
    gone = sorted(resident)[0]
    assert vm.eremove(resident.pop(gone)) is SgxError.SUCCESS
    changed = encl.changes_since(mark)
    assert changed is not None and gone in changed
    changed_protection_runs(encl, kept, changed)
    assert gone not in kept and kept == protection_runs(encl, {})[0] == read_all(encl)


def test_destroy_leaves_what_eremove_of_every_page_leaves(plain_enclave, make_avm):
    """The EVM's destroy (a driver's release, one request) removes the
    enclave's pages as EREMOVE one by one would: every EPCM entry it had is
    invalid, the SECS is gone, and the pages serve a new enclave."""
    avm = make_avm()
    enclave = Enclave.load(plain_enclave.signed, evm=avm)
    assert PlainEnclave(enclave).call(0, OP_NOP)[0].kind == "eexit"  # a TCS with its executor
    machine = avm.evm.machine
    secs = enclave.handle.secs_page
    state = machine.epc.secs[secs]
    owned = [entry for entry in machine.epc.entries if entry.valid and entry.enclave is state]
    assert len(owned) == len(state.pages) > 0
    avm.driver.destroy(enclave.handle)  # through EnclaveVM.destroy
    assert not any(entry.valid for entry in owned)
    assert not machine.epc.entry(secs).valid and secs not in machine.epc.secs
    assert state.memory is None and not state.threads and state.child_count == 0
    with pytest.raises(Fault):
        avm.evm.destroy(secs)  # no SECS there any more
    again = Enclave.load(plain_enclave.signed, evm=avm)
    reused = {entry.address for entry in owned} | {secs}
    assert reused & ({page.epc for page in again.handle.pages.values()} | {again.handle.secs_page})
    assert PlainEnclave(again).call(0, OP_NOP)[0].kind == "eexit"
