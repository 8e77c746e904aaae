"""EPC paging and large-enclave loads with the EVM behind a Unix socket,
against the EVM in this process (the baseline), in the same run:

* EWB + ELDU of heap pages (EBLOCK + one ETRACK + EWB per 16 pages, then
  ELDU), in pages/s: in-process through the EVM's batch entry points; over
  the channel through the batch messages (EBLOCK_PAGES, EWB_PAGES,
  ELDU_PAGES: protocol version 3) and through single leaves (a version-2
  session: one message per leaf); and the driver's own paths, in-process
  and over the channel (its reclaimer's batch is one EVICT_PAGES, a reload
  after a fault one ELDU_PAGES of a page);
* SDK enclaves (the bundled sample) with heaps of 16 MiB to 28 GiB loaded
  through a 64 MiB EPC in-process, and through a 64 MiB session of an EVM
  process (which defers uniform pages as the in-process EVM does).

    python benchmarks/remote_paging.py [--pages 4000] [--sizes 16M,1G,4G,28G]
                                       [--rounds 3] [--executor unicorn|native]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from load import EPC_PAGES, sign, size_of

from common import bar_plot, evm_process, print_table, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.arch import SgxError  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm import EnclaveVM, PlatformConfig  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, plan_from_bytes, sign_enclave  # noqa: E402
from vsgx.samples import HELLO_DIR, build_sample  # noqa: E402

from conftest import build_plain  # noqa: E402

BATCH = 16  # pages per EBLOCK/ETRACK/EWB batch, as the driver's reclaimer takes them
SESSION = ("--epc-mib", "64", "--session-epc-mib", "64")


def heap_records(enclave: Enclave) -> list:
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    records = [enclave.handle.pages.get(enclave.base + heap.offset + 4096 * i)
               for i in range(heap.count)]
    assert all(r is not None and r.epc is not None for r in records), "a deferred heap"
    return records


def _sealed(blob) -> bytes:  # type: ignore[no-untyped-def]
    return getattr(blob, "sealed", None) or blob.ciphertext


def batch_paging(avm: Avm, enclave: Enclave, records: list) -> tuple[float, float]:
    """(evict s, load s) through eblock_pages / ewb_pages / eldu_pages."""
    evm, driver, secs = avm.evm, avm.driver, enclave.handle.secs_page
    slots = [driver.take_va_slot() for _ in records]
    pairs = [(r.epc, va + 8 * i) for r, (va, i) in zip(records, slots, strict=True)]
    start = time.perf_counter()
    blobs = []
    for first in range(0, len(pairs), BATCH):
        batch = pairs[first:first + BATCH]
        evm.eblock_pages([epc for epc, _ in batch])
        evm.etrack(secs)
        blobs += evm.ewb_pages(batch)
    middle = time.perf_counter()
    items = [(epc, slot, r.linaddr, _sealed(blob[1]), blob[1].pcmd)
             for (epc, slot), r, blob in zip(pairs, records, blobs, strict=True)]
    statuses = []
    for first in range(0, len(items), BATCH):
        statuses += evm.eldu_pages(secs, items[first:first + BATCH])
    end = time.perf_counter()
    assert all(s is SgxError.SUCCESS for s in statuses), statuses[:3]
    assert all(b[0] is SgxError.SUCCESS for b in blobs)
    for va, i in slots:
        driver.give_va_slot(va, i)
    return middle - start, end - middle


def single_paging(avm: Avm, enclave: Enclave, records: list) -> tuple[float, float]:
    """The same, one leaf per call."""
    evm, driver, secs = avm.evm, avm.driver, enclave.handle.secs_page
    slots = [driver.take_va_slot() for _ in records]
    start = time.perf_counter()
    blobs = []
    for first in range(0, len(records), BATCH):
        batch = records[first:first + BATCH]
        for record in batch:
            evm.eblock(record.epc)
        evm.etrack(secs)
        for n, record in enumerate(batch):
            va, i = slots[first + n]
            status, blob = evm.ewb(record.epc, va + 8 * i)
            assert status is SgxError.SUCCESS
            blobs.append(blob)
    middle = time.perf_counter()
    for record, (va, i), blob in zip(records, slots, blobs, strict=True):
        assert evm.eldu(record.epc, va + 8 * i, secs, record.linaddr, blob.ciphertext,
                        blob.pcmd) is SgxError.SUCCESS
    end = time.perf_counter()
    for va, i in slots:
        driver.give_va_slot(va, i)
    return middle - start, end - middle


def driver_paging(avm: Avm, enclave: Enclave, records: list) -> tuple[float, float]:
    """The driver's own paths: its reclaimer's batches of 16 (one
    evict_pages each: EVICT_PAGES on a channel), then a reload per page as
    a fault brings it back (ELDU_PAGES of one page)."""
    driver, encl = avm.driver, enclave.handle
    start = time.perf_counter()
    for first in range(0, len(records), BATCH):
        batch = records[first:first + BATCH]
        assert driver.evict(encl, batch) == len(batch)
    middle = time.perf_counter()
    for record in records:
        driver.make_resident(encl, record)
    return middle - start, time.perf_counter() - middle


def paging_rate(measure, avm: Avm, elf: Path, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """EWB + ELDU pages/s of the fastest round."""
    enclave = Enclave.load(elf, evm=avm)
    records = heap_records(enclave)
    best = min(sum(measure(avm, enclave, records)) for _ in range(rounds))
    enclave.destroy()
    return len(records) / best


def timed_load(path: Path, avm: Avm) -> tuple[float, dict]:
    from vsgx.sdk import Enclave as SdkEnclave

    gc.collect()
    start = time.perf_counter()
    enclave = SdkEnclave.load(path, HELLO_DIR / "hello.edl", evm=avm,
                              ocalls={"ocall_print": lambda text: None})
    seconds = time.perf_counter() - start
    assert enclave.ecall_add(20, 22) == 42
    facts = {"deferred_pages": len(enclave.raw.handle.deferred),
             "resident_pages": sum(1 for p in enclave.raw.handle.pages.values()
                                   if p.epc is not None)}
    enclave.destroy()
    return seconds, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=4000)
    parser.add_argument("--sizes", default="16M,1G,4G,28G")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--executor", default="unicorn", choices=["unicorn", "native"])
    args = parser.parse_args()
    sizes = [size_of(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_signing_key()
        elf = build_plain(work / "plain.elf")
        (work / "plain.elf.sig").write_bytes(sign_enclave(elf.read_bytes(), parse_config(
            f"[enclave]\nheap_pages = {args.pages}\n"), key).data)
        rates = {}
        local = Avm(EnclaveVM(root_secret=bytes(32), executor=args.executor))
        rates["in-process, batch entry points"] = paging_rate(batch_paging, local, elf,
                                                              args.rounds)
        rates["in-process, single leaves"] = paging_rate(single_paging, local, elf,
                                                         args.rounds)
        rates["in-process, driver"] = paging_rate(driver_paging, local, elf, args.rounds)
        local.close()
        with evm_process(work, args.executor, *SESSION) as remote:
            rates["Unix socket, batch messages (v3)"] = paging_rate(batch_paging, remote, elf,
                                                                    args.rounds)
            rates["Unix socket, driver (v3)"] = paging_rate(driver_paging, remote, elf,
                                                            args.rounds)
        with evm_process(work, args.executor, *SESSION, protocol_version=2) as old:
            rates["Unix socket, single leaves (v2)"] = paging_rate(single_paging, old, elf,
                                                                   args.rounds)
        unsigned = build_sample(work).read_bytes()
        loads = []
        with evm_process(work, args.executor, *SESSION) as remote:
            for heap in sizes:
                path = sign(unsigned, heap, key, work)
                plan = plan_from_bytes(path.read_bytes())
                local = Avm(EnclaveVM(PlatformConfig(epc_pages=EPC_PAGES), root_secret=bytes(32),
                                      executor=args.executor))
                here, facts = timed_load(path, local)
                local.close()
                there, remote_facts = timed_load(path, remote)
                loads.append({"heap_bytes": heap, "added_pages": plan.added_pages,
                              "in_process_seconds": here, "remote_seconds": there,
                              "in_process": facts, "remote": remote_facts})
    print_table(f"EWB + ELDU of {args.pages} heap pages (pages/s, best of {args.rounds}; "
                "EBLOCK + ETRACK per 16 + EWB, then ELDU; provisional numbers)",
                ["path", "pages/s", "of in-process batch"],
                [[name, rate, f"{rate / rates['in-process, batch entry points']:.2f}"]
                 for name, rate in rates.items()])
    print_table(f"SDK enclave loads through a {EPC_PAGES * 4096 >> 20} MiB EPC / session",
                ["heap", "pages", "in-process s", "Unix socket s", "ratio", "deferred (remote)"],
                [[f"{r['heap_bytes'] >> 20:,} MiB", r["added_pages"], r["in_process_seconds"],
                  r["remote_seconds"], f"{r['remote_seconds'] / r['in_process_seconds']:.2f}",
                  r["remote"]["deferred_pages"]] for r in loads])
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    save("remote_paging", {"executor": args.executor, "pages": args.pages,
                           "paging_pages_per_s": rates, "loads": loads,
                           "load_average": os.getloadavg()[0]})
    bar_plot("remote_paging", "EWB + ELDU pages/s, in-process vs over a Unix socket",
             [name.replace(", ", "\n") for name in rates], list(rates.values()), "pages/s",
             baseline_label="in-process\nbatch entry points")


if __name__ == "__main__":
    main()
