"""The enclave VM's own costs, in-process (no AVM channel):

* the null EENTER -> EEXIT round trip (the plain test enclave's register
  ABI: a few instructions, then EEXIT), p50 and p99;
* EPC paging: EBLOCK + ETRACK + EWB, then ELDU, of heap pages, in pages/s.

    python benchmarks/evm.py [--entries 20000] [--pages 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import bar_plot, latencies_us, print_table, save, summary_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.arch import SgxError  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm.vm import EnclaveVM  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import build_plain  # noqa: E402


def load(workdir: Path, heap_pages: int, executor: str) -> tuple[Avm, Enclave]:
    elf = build_plain(workdir / "plain.elf")
    signed = sign_enclave(elf.read_bytes(), parse_config(f"[enclave]\nheap_pages = {heap_pages}\n"),
                          generate_signing_key())
    (workdir / "plain.elf.sig").write_bytes(signed.data)
    avm = Avm(EnclaveVM(root_secret=bytes(32), executor=executor))
    return avm, Enclave.load(elf, evm=avm)


def round_trip(avm: Avm, enclave: Enclave, count: int) -> dict[str, float]:
    vm, memory = avm.evm, avm.memory
    registers = enclave._registers(enclave.tcs[0], {"rdi": 0, "rsi": 1})
    secs = enclave.handle.secs_page

    def once() -> None:
        vm.eenter(secs, registers, memory.return_rip, memory)

    return summary_us(latencies_us(once, count))


def paging(avm: Avm, enclave: Enclave, pages: int) -> tuple[float, float]:
    vm, driver = avm.evm, avm.driver
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    targets = [enclave.base + heap.offset + 4096 * i for i in range(min(pages, heap.count))]
    records = [enclave.handle.pages[t] for t in targets]
    slots = []
    for _ in records:
        va_page, index = driver._va_slot()
        slots.append(va_page + 8 * index)
    secs = enclave.handle.secs_page
    start = time.perf_counter()
    for record in records:
        vm.eblock(record.epc)
    vm.etrack(secs)
    blobs = []
    for record, slot in zip(records, slots, strict=True):
        status, blob = vm.ewb(record.epc, slot)
        assert status is SgxError.SUCCESS
        blobs.append(blob)
    ewb_time = time.perf_counter() - start
    start = time.perf_counter()
    for record, slot, blob in zip(records, slots, blobs, strict=True):
        status = vm.eldu(record.epc, slot, secs, record.linaddr, blob.ciphertext, blob.pcmd)
        assert status is SgxError.SUCCESS
    eldu_time = time.perf_counter() - start
    return len(records) / ewb_time, len(records) / eldu_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--executor", default="unicorn", choices=["unicorn", "native"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        avm, enclave = load(Path(tmp), args.pages, args.executor)
        trip = round_trip(avm, enclave, args.entries)
        ewb_rate, eldu_rate = paging(avm, enclave, args.pages)
        avm.close()
    both = 1 / (1 / ewb_rate + 1 / eldu_rate)
    print_table("EENTER -> EEXIT inside the EVM (in-process, no channel)",
                ["measure", "p50 us", "p99 us", "mean us", "count"],
                [["null round trip", trip["p50_us"], trip["p99_us"], trip["mean_us"],
                  trip["count"]]])
    print_table(f"EPC paging of {args.pages} pages", ["operation", "pages/s"],
                [["EBLOCK+ETRACK+EWB", ewb_rate], ["ELDU", eldu_rate], ["EWB + ELDU", both]])
    print(f"\nnull round trip p50 {trip['p50_us']} us (goal <= 10); "
          f"EWB + ELDU {both:,.0f} pages/s (goal >= 50,000)")
    save("evm", {"round_trip": trip, "ewb_pages_per_s": ewb_rate,
                 "eldu_pages_per_s": eldu_rate, "ewb_eldu_pages_per_s": both})
    bar_plot("evm", "EPC paging", ["EWB", "ELDU", "EWB + ELDU"],
             [ewb_rate, eldu_rate, both], "pages/s")


if __name__ == "__main__":
    main()
