"""The SDK protocol's costs: a null ECALL (``void ecall_nop(void)``: EENTER
with the ordinal, the trts dispatch and bridge, EEXIT with OCMD_ERET) and a
null OCALL (``void ocall_nop(void)``: EEXIT with the index, the Python
bridge, EENTER with ECMD_ORET), against the raw EENTER -> EEXIT round trip
that the split's benchmark measures, all in the same run; with the EVM in
this process (on the Unicorn and on the native executor) and in an EVM process
behind a Unix socket (native executor where there is one), with a raw TLS
ping-pong (Python's ssl) as the floor of any round trip through the
channel; and the enclave's initialisation (load, EINIT and
ECMD_INIT_ENCLAVE) on each executor.

    python benchmarks/sdk.py [--count 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from common import (
    bar_plot,
    evm_process,
    latencies_us,
    print_table,
    save,
    summary_us,
    tls_ping_pong_us,
)
from split import FRAME_BYTES
from split import measure as measure_raw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm import EnclaveVM, native_support  # noqa: E402
from vsgx.host import Avm  # noqa: E402
from vsgx.host import Enclave as RawEnclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402
from vsgx.samples import HELLO_DIR, build_sample  # noqa: E402
from vsgx.sdk import Enclave  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import PlainEnclave  # noqa: E402


def measure_sdk(path: Path, avm: Avm, count: int) -> dict[str, dict[str, float]]:
    stamps: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    enclave = Enclave.load(path, edl=HELLO_DIR / "hello.edl", evm=avm, ocalls={
        "ocall_print": print, "ocall_nop": lambda: stamps.append(clock()),
        "ocall_call_back": lambda x: x})
    init_ms = (time.perf_counter() - started) * 1e3
    try:
        ecall = summary_us(latencies_us(enclave.ecall_nop, count))
        enclave.ecall_ocall_nop(50)  # warm up
        stamps.clear()
        enclave.ecall_ocall_nop(count + 1)
        # Between two handler calls: return to the enclave (ECMD_ORET), its
        # loop, the next OCALL's EEXIT and the bridge: one OCALL round trip.
        ocall = summary_us([(b - a) / 1000 for a, b in pairwise(stamps)])
    finally:
        enclave.destroy()
    return {"null ECALL": ecall, "null OCALL": ocall, "init_ms": init_ms}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        key = generate_signing_key()
        elf = build_plain(workdir / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                              key)
        (workdir / "plain.elf.sig").write_bytes(signed.data)
        hello = workdir / "hello.signed.so"
        hello.write_bytes(sign_enclave(build_sample(workdir).read_bytes(), parse_config(
            (HELLO_DIR / "hello.toml").read_text()), key).data)

        def run(avm: Avm) -> dict[str, dict[str, float]]:
            raw = measure_raw(PlainEnclave(RawEnclave.load(elf, evm=avm)), args.count)
            return {"raw EENTER->EEXIT": raw["null"], **measure_sdk(hello, avm, args.count)}

        results = {}
        inits = {}
        executors = ["unicorn"] + (["native"] if native_support()[0] else [])
        for executor in executors:
            local = Avm(EnclaveVM(root_secret=bytes(32), executor=executor))
            measured = run(local)
            inits[executor] = round(measured.pop("init_ms"), 1)  # type: ignore[arg-type]
            results[f"in-process, {executor}"] = measured
            local.close()
        remote_executor = executors[-1]
        ping_pong = tls_ping_pong_us(args.count, FRAME_BYTES, workdir)
        with evm_process(workdir, remote_executor) as remote:
            measured = run(remote)
            measured.pop("init_ms")
            results[f"Unix socket, {remote_executor}"] = measured
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    for where, measures in results.items():
        base = measures["raw EENTER->EEXIT"]["p50_us"]
        ratios[where] = {}
        for what, stats in measures.items():
            ratio = round(stats["p50_us"] / base, 2)
            if what != "raw EENTER->EEXIT":
                ratios[where][what] = ratio
            rows.append([where, what, stats["p50_us"], stats["p99_us"], ratio, stats["count"]])
    print_table("SDK protocol vs raw EENTER -> EEXIT (same run)",
                ["EVM", "call", "p50 us", "p99 us", "x raw p50", "count"], rows)
    print(f"\ngoal: null ECALL and null OCALL within 2x of the raw round trip: {ratios}")
    remote = results[f"Unix socket, {remote_executor}"]
    ecall = remote["null ECALL"]["p50_us"]
    print(f"raw TLS ping-pong (Python ssl, the floor of a round trip): p50 "
          f"{ping_pong['p50_us']} us, p99 {ping_pong['p99_us']} us; Unix-socket null ECALL "
          f"{ecall} us ({ecall / ping_pong['p50_us']:.1f}x), null OCALL "
          f"{remote['null OCALL']['p50_us']} us; goal <= 60 us p50 (provisional numbers)")
    print(f"enclave load + EINIT + ECMD_INIT_ENCLAVE (ms): {inits}")
    save("sdk", {"results": results, "ratio_to_raw_p50": ratios, "init_ms": inits,
                 "raw_tls_ping_pong": ping_pong})
    labels = [f"{w}\n{c}" for w, m in results.items() for c in m]
    bar_plot("sdk", "SDK ECALL / OCALL vs raw round trip (p50)", labels,
             [s["p50_us"] for m in results.values() for s in m.values()], "microseconds")


if __name__ == "__main__":
    main()
