"""An EPC smaller than the enclave (SDM "EPC and management of EPC
pages"; Linux sgx/main.c): contents survive eviction and reload exactly,
MRENCLAVE does not depend on where pages live, and the reclaimer's work per
eviction is a constant — counted in leaves and clock steps, never timed."""

from __future__ import annotations

import dataclasses
import errno
import os
import random

import pytest

from vsgx.arch import PageType
from vsgx.avm.driver import RECLAIM_BATCH
from vsgx.avm.loader import EnclaveTooLarge, check_fits
from vsgx.host import Enclave

from plain_ops import OP_COPY, OP_TOUCH, PlainEnclave

EPC_PAGES = 128


@pytest.fixture(scope="module")
def plain_heap_signed(tmp_path_factory, signing_key):
    """The plain enclave signed with a heap of 4 x EPC_PAGES pages (and
    another of 8 x, for the scaling check)."""
    from vsgx.crypto import load_private_key
    from vsgx.image import parse_config, sign_enclave

    from conftest import build_plain

    directory = tmp_path_factory.mktemp("oversubscribed")
    built = {}
    for heap in (4 * EPC_PAGES, 8 * 8 * EPC_PAGES):
        elf = build_plain(directory / f"plain-{heap}.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config(
            f"[enclave]\nheap_pages = {heap}\nmisc_select = 1\n"), load_private_key(signing_key))
        elf.with_name(elf.name + ".sig").write_bytes(signed.data)
        built[heap] = elf
    return built


def heap_of(enclave: Enclave) -> tuple[int, int]:
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    return enclave.base + heap.offset, heap.count


def copy_in(plain: PlainEnclave, target: int, data: bytes) -> None:
    source = plain.enclave.alloc(len(data))
    plain.enclave.write(source, data)
    result, _ = plain.call(0, OP_COPY, source, target, len(data))
    assert result.kind == "eexit", result.describe()


def copy_out(plain: PlainEnclave, source: int, size: int) -> bytes:
    target = plain.enclave.alloc(size)
    result, _ = plain.call(0, OP_COPY, source, target, size)
    assert result.kind == "eexit", result.describe()
    return plain.enclave.read(target, size)


def test_an_enclave_four_times_the_epc_keeps_every_byte(plain_heap_signed, make_avm):
    avm = make_avm(epc_pages=EPC_PAGES)
    driver = avm.driver
    enclave = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=avm)
    plain = PlainEnclave(enclave)
    heap, pages = heap_of(enclave)
    assert pages == 4 * EPC_PAGES
    # Most of the heap never took an EPC page at load, yet MRENCLAVE is the
    # signed one (EINIT checked it) and what the plan computes.
    deferred = len(enclave.handle.deferred)
    assert deferred > pages - EPC_PAGES
    state = avm.evm.enclave(enclave.handle.secs_page)
    assert state.mrenclave == enclave.plan.measure() == enclave.plan.sigstruct.enclavehash
    rng = random.Random(7)
    image = bytearray(rng.randbytes(pages * 4096))
    # A sequential sweep writes it all (each page faults in, evicting others).
    copy_in(plain, heap, bytes(image))
    assert driver.evictions > 0 and driver.deferred_loads == deferred
    assert copy_out(plain, heap, pages * 4096) == image
    # Strided, backwards and random single-page rewrites, then all of it again.
    order = list(range(0, pages, 3)) + list(range(pages - 1, -1, -7))
    order += rng.sample(range(pages), 64)
    for index in order:
        chunk = rng.randbytes(4096)
        image[index * 4096:(index + 1) * 4096] = chunk
        copy_in(plain, heap + index * 4096, chunk)
    for index in rng.sample(range(pages), 32):
        assert copy_out(plain, heap + index * 4096, 4096) == image[index * 4096:
                                                                   (index + 1) * 4096]
    assert copy_out(plain, heap, pages * 4096) == image
    assert driver.reloads > pages
    # Nothing leaked: every page is resident, evicted or still deferred once.
    handle = enclave.handle
    resident = sum(1 for p in handle.pages.values() if p.epc is not None)
    evicted = sum(1 for p in handle.pages.values() if p.evicted is not None)
    assert resident + evicted == len(handle.pages)
    assert resident <= EPC_PAGES and evicted == driver.evicted_pages
    enclave.destroy()
    assert driver.free_epc_pages == EPC_PAGES and driver.evicted_pages == 0


def test_mrenclave_does_not_depend_on_the_epc_size(plain_heap_signed, make_avm):
    small = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=make_avm(epc_pages=EPC_PAGES))
    large = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=make_avm())
    assert len(small.handle.deferred) > 0 and len(large.handle.deferred) == 0
    assert small.avm.evm.enclave(small.handle.secs_page).mrenclave == \
        large.avm.evm.enclave(large.handle.secs_page).mrenclave


def fault_in_everything(avm, enclave: Enclave, passes: int) -> None:
    """Touch every heap page through the driver's fault path (what a #PF
    in the enclave leads to), ``passes`` times."""
    heap, pages = heap_of(enclave)
    for _ in range(passes):
        for index in range(pages):
            avm.driver.handle_fault(enclave.handle, heap + index * 4096, 0x4)


@pytest.mark.parametrize("epc_pages", [EPC_PAGES, 8 * EPC_PAGES])
def test_eviction_work_per_page_is_constant(plain_heap_signed, make_avm, epc_pages):
    """The same bounds hold for an EPC eight times larger (the walked LRU
    this replaces made every eviction cost one step per resident page)."""
    avm = make_avm(epc_pages=epc_pages)
    enclave = Enclave.load(plain_heap_signed[8 * 8 * EPC_PAGES], evm=avm)
    fault_in_everything(avm, enclave, 1)  # fills the EPC and keeps it full
    driver = avm.driver
    before = driver.stats.copy()
    evictions_before = driver.evictions
    fault_in_everything(avm, enclave, 2)
    work = driver.stats - before
    evictions = driver.evictions - evictions_before
    assert evictions >= 2 * (8 * 8 * EPC_PAGES - epc_pages)
    # One EBLOCK and one EWB per evicted page, one ETRACK per batch of 16,
    # and a few steps of the clock's hand per eviction.
    assert work["ewb"] == evictions and work["eblock"] == evictions
    assert work["etrack"] * RECLAIM_BATCH <= evictions + RECLAIM_BATCH
    assert work["ewb_calls"] == work["reclaim_batches"]
    assert work["clock_steps"] <= 3 * evictions
    assert work["young_tested"] <= 3 * evictions


def test_modify_types_over_more_pages_than_the_epc(plain_heap_signed, make_avm):
    """SGX_IOC_ENCLAVE_MODIFY_TYPES over 4 x the EPC: every page is
    brought in, changed and pushed out again, each at a constant cost."""
    avm = make_avm(epc_pages=EPC_PAGES)
    enclave = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=avm)
    heap, pages = heap_of(enclave)
    driver = avm.driver
    before = driver.stats.copy()
    assert enclave.modify_types(heap, pages * 4096, PageType.TRIM) == pages * 4096
    work = driver.stats - before
    assert work["emodt"] == pages
    assert work["clock_steps"] <= 3 * driver.evictions
    assert all(enclave.handle.pages[heap + i * 4096].page_type == PageType.TRIM
               for i in range(pages))


def test_a_hot_set_survives_a_sweep_through_four_epcs(plain_heap_signed, make_avm, executor):
    """Pages touched between every few evictions stay resident while a
    sweep four times the EPC streams past them: the reclaimer goes by the
    accessed bits the EVM keeps, not by the order pages came in."""
    if executor == "native":
        pytest.skip("the native executor reports no accessed bits (its runner maps a page "
                    "once); its reclaim goes by young bits alone")
    avm = make_avm(epc_pages=EPC_PAGES)
    enclave = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=avm)
    plain = PlainEnclave(enclave)
    heap, pages = heap_of(enclave)
    hot = heap  # eight pages at the start of the heap
    for first in range(8, pages, 16):
        assert plain.call(0, OP_TOUCH, hot, 8)[0].kind == "eexit"
        assert plain.call(0, OP_TOUCH, heap + first * 4096, min(16, pages - first))[0].kind \
            == "eexit"
    assert avm.driver.evictions > 2 * EPC_PAGES
    # Each hot page came into the EPC at most once (its first touch, if it
    # was not resident from the load) and is resident now.
    records = [enclave.handle.pages[hot + i * 4096] for i in range(8)]
    assert all(record.loads <= 1 and record.epc is not None for record in records), \
        [record.loads for record in records]


def test_an_elrange_beyond_the_address_space_is_refused_up_front(plain_enclave, make_avm):
    from vsgx.avm.memory import UnmappedMemory
    from vsgx.image import plan_from_bytes

    avm = make_avm()
    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    huge = dataclasses.replace(plan, ecreate=dataclasses.replace(plan.ecreate, size=1 << 46))
    with pytest.raises(UnmappedMemory, match="67,108,864 MiB"):
        Enclave.load(huge, evm=avm)
    assert not avm.driver.enclaves and not avm.driver.stats


def test_content_that_cannot_fit_is_refused_up_front(plain_enclave, make_avm):
    from vsgx.image import PageRun, plan_from_bytes

    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    avm = make_avm(epc_pages=12)
    with pytest.raises(EnclaveTooLarge, match=r"does not fit the EPC.*at least 18 EPC pages"):
        Enclave.load(plan, evm=avm)
    assert not avm.driver.enclaves and avm.driver.stats["eadd"] == 0
    # Content beyond the EPC goes to the AVM's memory, as far as it may.
    avm = make_avm(epc_pages=64)
    avm.driver.evicted_limit = 100
    data = PageRun(0x100000, 200, plan.runs[1].secinfo_flags, True, os.urandom(200 * 4096))
    bigger = dataclasses.replace(plan, runs=(*plan.runs, data))
    with pytest.raises(EnclaveTooLarge, match="may hold 100 more evicted pages"):
        check_fits(avm.driver, avm.memory, bigger)
    avm.driver.evicted_limit = 1000
    check_fits(avm.driver, avm.memory, bigger)


def test_remove_pages_of_a_deferred_page_needs_its_trim(plain_heap_signed, make_avm):
    """A page that never left the EVM's deferred state still obeys the
    SGX2 ioctls: REMOVE_PAGES of a page not trimmed is EPERM."""
    from vsgx.avm.driver import DriverError

    avm = make_avm(epc_pages=EPC_PAGES)
    enclave = Enclave.load(plain_heap_signed[4 * EPC_PAGES], evm=avm)
    heap, pages = heap_of(enclave)
    last = heap + (pages - 1) * 4096
    assert enclave.handle.deferred.get(last) is not None
    with pytest.raises(DriverError) as raised:
        enclave.remove_pages(last, 4096)
    assert raised.value.errno == errno.EPERM
    assert enclave.handle.deferred.get(last) is None  # it was brought in to be checked


def test_free_epc_pages_hand_out_what_a_list_of_every_page_did():
    """The driver's free pages, without a list of the whole section: given
    back pages first (last in, first out), then the unused ones from the
    base up; the count is every page not handed out."""
    from vsgx.avm.driver import FreeEpcPages

    base, size = 0x8000_0000, 64 * 4096
    lazy = FreeEpcPages(base, size)
    listed = list(range(base + size - 4096, base - 1, -4096))
    rng = random.Random(7)
    held: list[int] = []
    for _ in range(2000):
        assert len(lazy) == len(listed) and bool(lazy) == bool(listed)
        if listed and (not held or rng.random() < 0.6):
            page = lazy.pop()
            assert page == listed.pop()
            held.append(page)
        else:
            count = rng.randint(1, min(3, len(held)))
            back = [held.pop(rng.randrange(len(held))) for _ in range(count)]
            if len(back) == 1:
                lazy.append(back[0])
                listed.append(back[0])
            else:
                lazy.extend(back)
                listed.extend(back)
    while listed:
        assert lazy.pop() == listed.pop()
    assert not lazy and len(lazy) == 0
    with pytest.raises(IndexError):
        lazy.pop()
