"""The vSGX split's costs: the null EENTER -> EEXIT round trip with the EVM
in this process and in a separate EVM process over a Unix socket (attested
TLS 1.3), the same entry touching 1 and 16 untrusted pages (each fetched
from the AVM on first touch and written back), and one page fetch.

    python benchmarks/split.py [--count 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import bar_plot, evm_process, latencies_us, print_table, save, summary_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm.vm import EnclaveVM  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import OP_TOUCH, PlainEnclave  # noqa: E402


def measure(plain: PlainEnclave, count: int) -> dict[str, dict[str, float]]:
    enclave = plain.enclave
    tcs = enclave.tcs[0]
    buffer = enclave.alloc(16 * 4096)
    op = plain.ops[tcs]
    enclave.write(op, OP_TOUCH.to_bytes(8, "little") + buffer.to_bytes(8, "little"))

    def null() -> None:
        enclave.eenter(tcs=tcs, rdi=0, rsi=1)

    def touch(pages: int):
        enclave.write(op + 16, pages.to_bytes(8, "little"))

        def once() -> None:
            enclave.eenter(tcs=tcs, rdi=op)

        return once

    return {"null": summary_us(latencies_us(null, count)),
            "1 page": summary_us(latencies_us(touch(0), count)),
            "16 pages": summary_us(latencies_us(touch(15), count // 4))}


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(60, exit=True)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--executor", default="unicorn", choices=["unicorn", "native"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        elf = build_plain(workdir / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                              generate_signing_key())
        (workdir / "plain.elf.sig").write_bytes(signed.data)
        results = {}
        local = Avm(EnclaveVM(root_secret=bytes(32), executor=args.executor))
        results["in-process"] = measure(PlainEnclave(Enclave.load(elf, evm=local)), args.count)
        local.close()
        with evm_process(workdir, args.executor) as remote:
            results["Unix socket"] = measure(PlainEnclave(Enclave.load(elf, evm=remote)),
                                             args.count)
    rows = []
    for where, measures in results.items():
        for what, stats in measures.items():
            rows.append([where, what, stats["p50_us"], stats["p99_us"], stats["count"]])
    print_table("EENTER -> EEXIT through the AVM driver", ["EVM", "entry", "p50 us",
                                                           "p99 us", "count"], rows)
    fetch = {where: round(m["1 page"]["p50_us"] - m["null"]["p50_us"], 2)
             for where, m in results.items()}
    print(f"\none page fetch (1-page entry minus null entry, p50): {fetch}")
    print(f"goals: in-process null <= 15 us p50 (got {results['in-process']['null']['p50_us']}),"
          f" Unix socket <= 60 us p50 (got {results['Unix socket']['null']['p50_us']})")
    save("split", {"results": results, "page_fetch_us": fetch})
    labels = [f"{w}\n{e}" for w, m in results.items() for e in m]
    bar_plot("split", "EENTER -> EEXIT p50", labels,
             [s["p50_us"] for m in results.values() for s in m.values()], "microseconds")


if __name__ == "__main__":
    main()
