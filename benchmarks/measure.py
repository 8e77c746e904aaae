"""MRENCLAVE of a 64 MiB enclave against plain hashlib.sha256 over the same
bytes, measured in the same run. The builder hashes 5184 bytes per 4096-byte
page (one EADD and sixteen EEXTEND records), so 0.79 is its ceiling.

    python benchmarks/measure.py [--mib 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os

from vsgx.arch.constants import PAGE_SIZE
from vsgx.image.plan import BuildPlan, Ecreate, PageRun

from common import bar_plot, print_table, save, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    size = args.mib << 20
    data = os.urandom(size)
    plan = BuildPlan(Ecreate(size=1 << 30, ssaframesize=1, miscselect=0, attributes=4, xfrm=3),
                     (PageRun(0, size // PAGE_SIZE, 0x203, True, data),), None)
    raw = min(timed(lambda: hashlib.sha256(data).digest(), args.repeat))
    builder = min(timed(plan.measure, args.repeat))
    # Unmeasured (EADD-only) pages, as a large SDK heap has: 1 GiB worth.
    heap = BuildPlan(plan.ecreate, (PageRun(0, (1 << 30) // PAGE_SIZE, 0x203, False),), None)
    heap_time = min(timed(heap.measure, args.repeat))
    ratio = raw / builder
    rows = [
        ["hashlib.sha256 (baseline)", f"{args.mib} MiB", raw * 1e3, size / raw / 1e6, 1.0],
        ["MRENCLAVE builder", f"{args.mib} MiB", builder * 1e3, size / builder / 1e6, ratio],
        ["EADD-only heap", "1 GiB", heap_time * 1e3, (1 << 30) / heap_time / 1e6,
         raw / size * (1 << 30) / heap_time],
    ]
    print_table("MRENCLAVE throughput (enclave bytes per second, best of "
                f"{args.repeat})", ["what", "size", "ms", "MB/s", "vs sha256"], rows)
    print(f"\nbuilder / raw SHA-256 throughput: {ratio:.2f} (goal >= 0.5)")
    save("measure", {"mib": args.mib, "raw_sha256_s": raw, "builder_s": builder,
                     "ratio": ratio, "eadd_only_1gib_s": heap_time})
    bar_plot("measure", f"MRENCLAVE of a {args.mib} MiB enclave",
             ["sha256", "MRENCLAVE"], [size / raw / 1e6, size / builder / 1e6], "MB/s",
             baseline_label="sha256")


if __name__ == "__main__":
    main()
