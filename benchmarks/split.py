"""The vSGX split's costs: the null EENTER -> EEXIT round trip with the EVM
in this process and in a separate EVM process over a Unix socket (attested
TLS 1.3), the same entry touching 1 and 16 untrusted pages (each fetched
from the AVM on first touch and written back), and one page fetch.

Baselines in the same run: a raw TLS ping-pong (Python's ssl, the channel's
TLS contexts, blocking sockets, an EENTER-sized message each way, no
framing) — the floor of any round trip through Python's ssl here — and the
channel's own round trip (a PING through the framing, the reader roles and
the EVM's serving threads, no enclave). For the Unix-socket null entry, the
CPU time each side spends per entry (the AVM; the EVM with its runners).

    python benchmarks/split.py [--count 3000] [--executor native|unicorn]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import (
    bar_plot,
    cpu_seconds,
    evm_process,
    latencies_us,
    print_table,
    save,
    summary_us,
    tls_ping_pong_us,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.channel import Type  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm import EnclaveVM, native_support  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import OP_TOUCH, PlainEnclave  # noqa: E402

FRAME_BYTES = 200  # an EENTER frame without pushed pages, and about its EXIT_PAGES


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


def cpu_per_entry(avm: Avm, plain: PlainEnclave, count: int) -> dict[str, float]:
    """CPU microseconds per null entry in the AVM and in the EVM (with its
    runners), over ``count`` entries."""
    enclave = plain.enclave
    tcs = enclave.tcs[0]
    pid = avm.evm_pid  # type: ignore[attr-defined]
    avm_before, evm_before = time.process_time(), cpu_seconds(pid)
    for _ in range(count):
        enclave.eenter(tcs=tcs, rdi=0, rsi=1)
    return {"avm_us": round((time.process_time() - avm_before) / count * 1e6, 1),
            "evm_us": round((cpu_seconds(pid) - evm_before) / count * 1e6, 1)}


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(600, exit=True)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--executor", default="native" if native_support()[0] else "unicorn",
                        choices=["unicorn", "native"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        elf = build_plain(workdir / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                              generate_signing_key())
        (workdir / "plain.elf.sig").write_bytes(signed.data)
        results = {}
        baselines = {"raw TLS ping-pong": tls_ping_pong_us(args.count, FRAME_BYTES, workdir)}
        local = Avm(EnclaveVM(root_secret=bytes(32), executor=args.executor))
        results["in-process"] = measure(PlainEnclave(Enclave.load(elf, evm=local)), args.count)
        local.close()
        with evm_process(workdir, args.executor) as remote:
            conn = remote.evm.conn  # type: ignore[attr-defined]
            baselines["channel PING"] = summary_us(latencies_us(lambda: conn.call(Type.PING),
                                                                args.count))
            plain = PlainEnclave(Enclave.load(elf, evm=remote))
            results["Unix socket"] = measure(plain, args.count)
            cpu = cpu_per_entry(remote, plain, args.count)
    rows = [["baseline", what, stats["p50_us"], stats["p99_us"], stats["count"]]
            for what, stats in baselines.items()]
    for where, measures in results.items():
        for what, stats in measures.items():
            rows.append([where, what, stats["p50_us"], stats["p99_us"], stats["count"]])
    print_table(f"EENTER -> EEXIT through the AVM driver ({args.executor} executor; "
                "provisional numbers)", ["EVM", "entry", "p50 us", "p99 us", "count"], rows)
    fetch = {where: round(m["1 page"]["p50_us"] - m["null"]["p50_us"], 2)
             for where, m in results.items()}
    remote_null = results["Unix socket"]["null"]["p50_us"]
    floor = round(results["in-process"]["null"]["p50_us"]
                  + baselines["raw TLS ping-pong"]["p50_us"], 2)
    print(f"\none page fetch (1-page entry minus null entry, p50): {fetch}")
    print(f"CPU per Unix-socket null entry: AVM {cpu['avm_us']} us, EVM and runner "
          f"{cpu['evm_us']} us")
    print(f"floor of a Unix-socket null entry (in-process null + raw TLS ping-pong, p50): "
          f"{floor} us; measured {remote_null} us ({remote_null / floor:.2f}x the floor)")
    print(f"goals: in-process null <= 15 us p50 (got {results['in-process']['null']['p50_us']}),"
          f" Unix socket <= 60 us p50 (got {remote_null}); load average "
          f"{os.getloadavg()[0]:.2f}")
    save("split", {"executor": args.executor, "results": results, "baselines": baselines,
                   "page_fetch_us": fetch, "cpu_per_remote_null_entry": cpu,
                   "floor_us": floor, "ratio_to_floor": round(remote_null / floor, 2),
                   "load_average": os.getloadavg()[0]})
    labels = [f"baseline\n{w}" for w in baselines] + \
        [f"{w}\n{e}" for w, m in results.items() for e in m]
    values = [s["p50_us"] for s in baselines.values()] + \
        [s["p50_us"] for m in results.values() for s in m.values()]
    bar_plot("split", "EENTER -> EEXIT p50", labels, values, "microseconds",
             baseline_label="baseline\nraw TLS ping-pong")


if __name__ == "__main__":
    main()
