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

With fast exits (``EnclaveVM(fast_exits=True)``: the EEXIT sites rewritten
after EINIT into jumps to the runner's exit gate, opt-in and not exact) as
a third native run.

On the native executor, entries take the fast path (the runner enters and
completes EEXIT itself, runner/client.c and runner.c) and, as its baseline,
go through the EVM (``fast_path_allowed`` off); both quiet and with a CPU
hog this benchmark starts beside them, against the floors measured in the
same run: ENCLU -> its trap -> return and a bare futex ping-pong between two
processes (kernels/floors.c). Behind the Unix socket likewise: the AVM
enters the TCS's runner itself (its files from the EVM's side socket),
against every entry through the channel as the baseline, quiet and with
the hog.

    python benchmarks/sdk.py [--count 3000] [--skip-slow]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from common import (
    bar_plot,
    cpu_hog,
    evm_process,
    floors,
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
from vsgx.evm.native_executor import NativeExecutor  # noqa: E402
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
    parser.add_argument("--skip-slow", action="store_true",
                        help="only the native executor (no Unicorn, no Unix socket)")
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

        def in_process(executor: str, fast: bool = True, fast_exits: bool = False
                       ) -> dict[str, dict[str, float]]:
            NativeExecutor.fast_path_allowed = fast
            try:
                local = Avm(EnclaveVM(root_secret=bytes(32), executor=executor,
                                      fast_exits=fast_exits))
                try:
                    return run(local)
                finally:
                    local.close()
            finally:
                NativeExecutor.fast_path_allowed = True

        results: dict[str, dict[str, dict[str, float]]] = {}
        inits = {}
        runs: list[tuple[str, str, bool, bool]] = []
        if not args.skip_slow:
            runs.append(("in-process, unicorn", "unicorn", True, False))
        if native_support()[0]:
            runs += [("in-process, native, fast path", "native", True, False),
                     ("in-process, native, through the EVM", "native", False, False),
                     ("in-process, native, fast path, fast exits", "native", True, True)]
        for load in ("quiet", "CPU hog"):
            with contextlib.ExitStack() as stack:
                if load != "quiet":
                    stack.enter_context(cpu_hog())
                results[f"floors ({load})"] = floors(workdir, args.count)
                for where, executor, fast, fast_exits in runs:
                    if load != "quiet" and executor != "native":
                        continue
                    measured = in_process(executor, fast, fast_exits)
                    init = measured.pop("init_ms")
                    if load == "quiet":
                        inits[where] = round(init, 1)  # type: ignore[arg-type]
                    results[f"{where} ({load})"] = measured
        remote_executor = "native" if native_support()[0] else "unicorn"
        ping_pong = tls_ping_pong_us(args.count, FRAME_BYTES, workdir)
        # An AVM next to its EVM enters the runner itself (the fast path, on
        # the native executor); the baseline takes the channel for every entry.
        remote_runs = [(f"Unix socket, {remote_executor}, through the channel", False)]
        if remote_executor == "native":
            remote_runs.insert(0, ("Unix socket, native, fast path", True))
        for load in ("quiet", "CPU hog"):
            with contextlib.ExitStack() as stack:
                if load != "quiet":
                    stack.enter_context(cpu_hog())
                for where, fast in remote_runs:
                    with evm_process(workdir, remote_executor) as remote:
                        remote.link.fast_path = fast  # type: ignore[attr-defined]
                        measured = run(remote)
                        measured.pop("init_ms")
                        counts = remote.link.fast_counts  # type: ignore[attr-defined]
                        assert (counts["entries"] > 0) == fast, counts
                        results[f"{where} ({load})"] = measured
        remote_name = f"{remote_runs[0][0]} (quiet)"
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    for where, measures in results.items():
        base = measures.get("raw EENTER->EEXIT", {}).get("p50_us")
        ratios[where] = {}
        for what, stats in measures.items():
            ratio = round(stats["p50_us"] / base, 2) if base else ""
            if base and what != "raw EENTER->EEXIT":
                ratios[where][what] = ratio  # type: ignore[assignment]
            rows.append([where, what, stats["p50_us"], stats["p99_us"], ratio, stats["count"]])
    print_table("SDK protocol vs raw EENTER -> EEXIT and the floors (same run, provisional)",
                ["EVM", "call", "p50 us", "p99 us", "x raw p50", "count"], rows)
    under_load = {}
    for where in results:
        if where.endswith("(CPU hog)") and where.replace("CPU hog", "quiet") in results:
            quiet = results[where.replace("CPU hog", "quiet")]
            under_load[where[:-len(" (CPU hog)")]] = {
                what: round(stats["p50_us"] / quiet[what]["p50_us"], 2)
                for what, stats in results[where].items() if what in quiet}
    print(f"\np50 with a CPU hog / p50 quiet (goal <= 3): {under_load}")
    print("goal: in-process native null ECALL <= 12 us p50: "
          f"{results.get('in-process, native, fast path (quiet)', {}).get('null ECALL')}")
    remote_run = results[remote_name]
    ecall = remote_run["null ECALL"]["p50_us"]
    channel = results.get(f"{remote_runs[-1][0]} (quiet)", remote_run)["null ECALL"]["p50_us"]
    print(f"raw TLS ping-pong (Python ssl, the floor of a round trip): p50 "
          f"{ping_pong['p50_us']} us, p99 {ping_pong['p99_us']} us; Unix-socket null ECALL "
          f"{ecall} us ({ecall / ping_pong['p50_us']:.1f}x the ping-pong, "
          f"{channel / ecall:.1f}x faster than through the channel: {channel} us), null OCALL "
          f"{remote_run['null OCALL']['p50_us']} us; goal <= 60 us p50")
    print(f"enclave load + EINIT + ECMD_INIT_ENCLAVE (ms): {inits}")
    save("sdk", {"results": results, "ratio_to_raw_p50": ratios, "hog_over_quiet": under_load,
                 "init_ms": inits, "raw_tls_ping_pong": ping_pong})
    labels = [f"{w}\n{c}" for w, m in results.items() for c in m]
    bar_plot("sdk", "SDK ECALL / OCALL vs raw round trip and floors (p50)", labels,
             [s["p50_us"] for m in results.values() for s in m.values()], "microseconds")

if __name__ == "__main__":
    main()
