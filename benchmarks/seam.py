"""What the seam costs in-process: the AVM driver reaching an EVM in this
process through a session of its enclave manager over the in-memory channel
transport (what ``Avm(vm)`` does), against the same driver calling the
EnclaveVM's methods directly (the in-process path before the seam, kept
here as the baseline), in the same run, on each executor. Both stay loaded
and batches of the two alternate, so that a busy machine weighs on both
alike; each figure is the median over the rounds.

Measured: a null EENTER -> EEXIT (wall-clock p50, and this thread's CPU
time per entry, which other processes on a shared machine disturb less;
the native executor's runner is not in it, and is the same on both paths),
an entry touching 1 and 16 untrusted pages, and an enclave load (EADD
runs, EINIT).

    python benchmarks/seam.py [--count 2000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import bar_plot, print_table, save
from split import measure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm.native_executor import native_support  # noqa: E402
from vsgx.evm.vm import EnclaveVM  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import PlainEnclave  # noqa: E402


class DirectEvm:
    """The EnclaveVM's methods, bound once, as the driver's EVM: no session
    (the baseline). Not an EnclaveVM, so ``Avm`` uses it as it is."""

    def __init__(self, vm: EnclaveVM):
        for name in dir(vm):
            if not name.startswith("_") and callable(getattr(vm, name)):
                setattr(self, name, getattr(vm, name))


def null_cpu_us(plain: PlainEnclave, count: int) -> float:
    """This thread's CPU microseconds per null entry."""
    enclave = plain.enclave
    tcs = enclave.tcs[0]
    started = time.thread_time_ns()
    for _ in range(count):
        enclave.eenter(tcs=tcs, rdi=0, rsi=1)
    return (time.thread_time_ns() - started) / count / 1000


def setups(executor: str) -> dict[str, Any]:
    return {"direct (no session)": lambda: Avm(DirectEvm(EnclaveVM(root_secret=bytes(32),
                                                                    executor=executor))),
            "in-memory session": lambda: Avm(EnclaveVM(root_secret=bytes(32),
                                                       executor=executor))}


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(900, exit=True)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="entries per batch")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    executors = ["unicorn"] + (["native"] if native_support()[0] else [])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        elf = build_plain(workdir / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                              generate_signing_key())
        (workdir / "plain.elf.sig").write_bytes(signed.data)
        for executor in executors:
            made = {name: make() for name, make in setups(executor).items()}
            samples: dict[str, dict[str, list[float]]] = {name: {} for name in made}
            plains = {}
            for name, avm in made.items():  # a first load each, then entries
                plains[name] = PlainEnclave(Enclave.load(elf, evm=avm))
            # Both paths stay loaded; batches of each alternate, so that
            # what else the machine does weighs on both alike.
            for _ in range(args.rounds):
                for name, avm in made.items():
                    started = time.perf_counter()
                    Enclave.load(elf, evm=avm).destroy()
                    samples[name].setdefault("load ms", []).append(
                        (time.perf_counter() - started) * 1e3)
                    measured = measure(plains[name], args.count)
                    for what, stats in measured.items():
                        samples[name].setdefault(what, []).append(stats["p50_us"])
                    samples[name].setdefault("null CPU", []).append(
                        null_cpu_us(plains[name], args.count))
            for name, avm in made.items():
                plains[name].enclave.destroy()
                avm.close()
            for name, by_what in samples.items():
                results[f"{executor}, {name}"] = {
                    what: {"median_p50": round(statistics.median(values), 2),
                           "rounds": [round(v, 2) for v in values]}
                    for what, values in by_what.items()}
    rows = []
    for executor in executors:
        base = results[f"{executor}, direct (no session)"]
        for name in setups(executor):
            measured = results[f"{executor}, {name}"]
            for what, stats in measured.items():
                rows.append([executor, name, what, stats["median_p50"],
                             round(stats["median_p50"] / base[what]["median_p50"], 3)])
    print_table(f"in-process EENTER -> EEXIT and load, median over {args.rounds} rounds "
                "(p50 us; CPU us per entry; load in ms); provisional numbers",
                ["executor", "path", "what", "median p50", "x direct"], rows)
    added = {executor: {what: round(
        results[f"{executor}, in-memory session"][what]["median_p50"]
        - results[f"{executor}, direct (no session)"][what]["median_p50"], 2)
        for what in ("null", "null CPU")} for executor in executors}
    print(f"\nthe session layer adds to a null entry (us; wall p50 and CPU): {added}; load "
          f"average {os.getloadavg()[0]:.2f}")
    save("seam", {"results": results, "session_adds_us": added, "count": args.count,
                  "rounds": args.rounds, "load_average": os.getloadavg()[0]})
    labels = [f"{key.replace(', ', chr(10))}" for key in results]
    bar_plot("seam", "in-process null EENTER -> EEXIT (median p50, us)", labels,
             [m["null"]["median_p50"] for m in results.values()], "us",
             baseline_label=labels[0])


if __name__ == "__main__":
    main()
