"""The EVM's hot paths, this tree against a baseline tree, in the same run:

* the null EENTER -> EEXIT round trip (p50 of each round; the best round);
* EPC paging, EBLOCK + ETRACK + EWB then ELDU, through the batch and the
  single leaves (pages/s of EWB + ELDU; the best round);
* the SDK protocol's null ECALL of the bundled sample through an in-process
  AVM, the whole Python host path (p50 of each round; the best round).

The baseline is a git revision (default ``main``) exported to a temporary
directory. Each round runs one child process per tree, the order of the
trees alternating from round to round, so that both see the same machine.
The measurements are benchmarks/evm.py's own.

    python benchmarks/hotpaths.py [--baseline main] [--rounds 5] [--entries 5000]
                                  [--pages 2000] [--executor unicorn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from common import bar_plot, print_table, save

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sdk_ecall_p50(workdir: Path, count: int, executor: str) -> float:
    """The bundled sample's ``ecall_nop`` through an in-process AVM: p50 us."""
    from vsgx.crypto import generate_signing_key
    from vsgx.evm import EnclaveVM
    from vsgx.host import Avm
    from vsgx.image import parse_config, sign_enclave
    from vsgx.samples import HELLO_DIR, build_sample
    from vsgx.sdk import Enclave

    from common import latencies_us, summary_us

    signed = workdir / "hello.signed.so"
    signed.write_bytes(sign_enclave(build_sample(workdir).read_bytes(), parse_config(
        (HELLO_DIR / "hello.toml").read_text()), generate_signing_key()).data)
    avm = Avm(EnclaveVM(root_secret=bytes(32), executor=executor))
    enclave = Enclave.load(signed, edl=HELLO_DIR / "hello.edl", evm=avm, ocalls={
        "ocall_print": lambda text: None, "ocall_nop": lambda: None,
        "ocall_call_back": lambda x: x})
    try:
        for _ in range(200):  # the TCS's runner started and attached
            enclave.ecall_nop()
        return float(summary_us(latencies_us(enclave.ecall_nop, count))["p50_us"])
    finally:
        enclave.destroy()
        avm.close()


def child(entries: int, pages: int, executor: str) -> None:
    """One measurement with whatever vsgx PYTHONPATH names; JSON on stdout."""
    import evm

    with tempfile.TemporaryDirectory() as tmp:
        avm, enclave = evm.load(Path(tmp), pages, executor)
        trip = evm.round_trip(avm, enclave, entries)
        records = evm.heap_records(enclave, pages)
        batch = evm.best(evm.batch_leaves, avm, enclave, records, 1)
        single = evm.best(evm.single_leaves, avm, enclave, records, 1)
        avm.close()
        ecall = sdk_ecall_p50(Path(tmp), entries, executor)

    def both(pair: tuple[float, float]) -> float:
        return 1 / (1 / pair[0] + 1 / pair[1])

    print(json.dumps({"p50_us": trip["p50_us"], "batch_pages_per_s": both(batch),
                      "single_pages_per_s": both(single), "sdk_ecall_p50_us": ecall}))


def export(revision: str, into: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--executor", default="unicorn", choices=["unicorn", "native"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.entries, args.pages, args.executor)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"baseline ({args.baseline})": export(args.baseline, Path(tmp)),
                 "this tree": ROOT / "src"}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for n in range(args.rounds):
            order = list(trees) if n % 2 == 0 else list(reversed(trees))
            for name in order:
                out = subprocess.run(
                    [sys.executable, str(Path(__file__)), "--child", "--entries",
                     str(args.entries), "--pages", str(args.pages), "--executor", args.executor],
                    check=True, capture_output=True, text=True, cwd=HERE,
                    env={**os.environ, "PYTHONPATH": str(trees[name])}).stdout
                runs[name].append(json.loads(out.splitlines()[-1]))
    best = {name: {"p50_us": min(r["p50_us"] for r in rs),
                   "batch_pages_per_s": max(r["batch_pages_per_s"] for r in rs),
                   "single_pages_per_s": max(r["single_pages_per_s"] for r in rs),
                   "sdk_ecall_p50_us": min(r["sdk_ecall_p50_us"] for r in rs)}
            for name, rs in runs.items()}
    base, this = best.values()
    print_table(f"EVM hot paths, {args.executor}, best of {args.rounds} interleaved rounds "
                "(p50 per round; EWB + ELDU pages/s)",
                ["tree", "null EENTER->EEXIT p50 us", "batch paging pages/s",
                 "single paging pages/s", "SDK null ECALL p50 us"],
                [[name, b["p50_us"], b["batch_pages_per_s"], b["single_pages_per_s"],
                  b["sdk_ecall_p50_us"]] for name, b in best.items()])
    ratio = {"round_trip": this["p50_us"] / base["p50_us"],
             "batch": this["batch_pages_per_s"] / base["batch_pages_per_s"],
             "single": this["single_pages_per_s"] / base["single_pages_per_s"],
             "sdk_ecall": this["sdk_ecall_p50_us"] / base["sdk_ecall_p50_us"]}
    print(f"\nthis tree / baseline: round trip time x{ratio['round_trip']:.3f}, batch paging "
          f"rate x{ratio['batch']:.3f}, single-leaf paging rate x{ratio['single']:.3f}, "
          f"SDK null ECALL time x{ratio['sdk_ecall']:.3f}")
    save("hotpaths", {"baseline": args.baseline, "executor": args.executor,
                      "rounds": args.rounds, "entries": args.entries, "pages": args.pages,
                      "runs": runs, "best": best, "ratio": ratio})
    bar_plot("hotpaths", "EWB + ELDU through the batch leaves (pages/s)", list(best),
             [b["batch_pages_per_s"] for b in best.values()], "pages/s",
             baseline_label=next(iter(best)))


if __name__ == "__main__":
    main()
