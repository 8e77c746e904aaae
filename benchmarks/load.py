"""Loading SDK enclaves larger than the EPC: the bundled runtime's sample
enclave signed with heaps of 16 MiB, 1 GiB, 4 GiB (and 28 GiB: a 32 GiB
ELRANGE), loaded through an EPC of 64 MiB with `vsgx.sdk.Enclave.load`
(ECREATE, every EADD/EEXTEND in Intel's order, EINIT, the trusted runtime's
initialisation). Pages per second and seconds in total.

Baselines measured in the same run: MRENCLAVE of the same plan computed
alone (every EADD record must be hashed, so this is the floor), and for the
smaller enclaves the load with every page put in the EPC (as an EVM without
deferred pages does it; evictions go to the AVM's memory).

    python benchmarks/load.py [--executor unicorn|native] [--sizes 16M,1G,4G,28G]
                              [--eager 16M,1G] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from vsgx.avm import RemoteEvm
from vsgx.crypto import generate_signing_key
from vsgx.evm import EnclaveVM, PlatformConfig
from vsgx.host import Avm
from vsgx.host.enclave import local_manager
from vsgx.image import parse_config, plan_from_bytes, sign_enclave
from vsgx.samples import HELLO_DIR, build_sample

from common import print_table, save

EPC_PAGES = 16384  # 64 MiB
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size_of(text: str) -> int:
    return int(text[:-1]) * _UNITS[text[-1].upper()]


def sign(unsigned: bytes, heap: int, key: object, directory: Path) -> Path:
    config = (HELLO_DIR / "hello.toml").read_text().replace(
        "heap_size = 0x40000", f"heap_size = {heap:#x}")
    signed = sign_enclave(unsigned, parse_config(config), key)
    path = directory / f"hello-{heap >> 20}m.signed.so"
    path.write_bytes(signed.data)
    return path


def load_once(path: Path, executor: str, eager: bool = False) -> tuple[float, dict]:
    from vsgx.sdk import Enclave

    vm = EnclaveVM(PlatformConfig(epc_pages=EPC_PAGES), root_secret=bytes(32),
                   executor=executor)
    # A session of protocol version 2 has no batch leaves, so the driver
    # cannot defer: every page goes through the EPC (the eager baseline).
    avm = Avm(RemoteEvm(local_manager(vm).open_local(), offer=2)) if eager else Avm(vm)
    assert avm.driver.defers is not eager
    gc.collect()
    start = time.perf_counter()
    enclave = Enclave.load(path, HELLO_DIR / "hello.edl", evm=avm,
                           ocalls={"ocall_print": lambda text: None})
    seconds = time.perf_counter() - start
    assert enclave.ecall_add(20, 22) == 42
    driver = avm.driver
    facts = {"deferred_pages": len(enclave.raw.handle.deferred),
             "resident_pages": sum(1 for p in enclave.raw.handle.pages.values()
                                   if p.epc is not None),
             "evictions": driver.evictions}
    enclave.destroy()
    avm.close()
    return seconds, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", default="unicorn", choices=["unicorn", "native"])
    parser.add_argument("--sizes", default="16M,1G,4G,28G")
    parser.add_argument("--eager", default="16M,1G",
                        help="sizes also loaded with every page put in the EPC")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [size_of(s) for s in args.sizes.split(",")]
    eager = {size_of(s) for s in args.eager.split(",") if s}
    key = generate_signing_key()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        unsigned = build_sample(directory).read_bytes()
        for heap in sizes:
            path = sign(unsigned, heap, key, directory)
            plan = plan_from_bytes(path.read_bytes())
            pages = plan.added_pages
            start = time.perf_counter()
            assert plan.measure() == plan.sigstruct.enclavehash
            measure = time.perf_counter() - start
            runs = [load_once(path, args.executor) for _ in range(args.repeat)]
            seconds = min(r[0] for r in runs)
            facts = runs[0][1]
            label = f"{heap >> 20:,} MiB heap"
            entry = {"heap_bytes": heap, "elrange_bytes": plan.ecreate.size,
                     "added_pages": pages, "load_seconds": seconds,
                     "load_pages_per_s": pages / seconds, "measure_seconds": measure,
                     "measure_pages_per_s": pages / measure, **facts}
            rows.append([label, f"{plan.ecreate.size >> 20:,} MiB", pages, seconds,
                         pages / seconds, measure, pages / measure,
                         facts["deferred_pages"], facts["resident_pages"]])
            if heap in eager:
                eager_seconds, eager_facts = load_once(path, args.executor, eager=True)
                entry["eager_load_seconds"] = eager_seconds
                entry["eager_evictions"] = eager_facts["evictions"]
                rows.append([f"{label}, all through the EPC", "", pages, eager_seconds,
                             pages / eager_seconds, "", "", 0,
                             eager_facts["resident_pages"]])
            results.append(entry)
    print_table(f"SDK enclave loads through a {EPC_PAGES * 4096 >> 20} MiB EPC "
                f"({args.executor} executor; best of {args.repeat})",
                ["enclave", "ELRANGE", "pages", "load s", "pages/s", "MRENCLAVE alone s",
                 "hash pages/s", "deferred", "resident"], rows)
    save("load", {"epc_pages": EPC_PAGES, "executor": args.executor, "results": results})
    plot(results)


def plot(results: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install 'vsgx[plot]')")
        return
    from common import RESULTS

    labels = [f"{r['heap_bytes'] >> 20:,} MiB" for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [r["load_seconds"] for r in results], 0.4,
           label="Enclave.load", color="#3b6ea8")
    ax.bar([x + 0.2 for x in xs], [r["measure_seconds"] for r in results], 0.4,
           label="MRENCLAVE alone (baseline)", color="#888888")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("seconds")
    ax.set_title(f"Loading through a {EPC_PAGES * 4096 >> 20} MiB EPC")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
