"""A man in the middle on loopback: how soon each kind of tampering with the
channel's TLS records ends the session, over many trials with random bits.

Each trial connects an AVM to an EVM process through a tampering proxy,
loads the plain test enclave, arms one attack and enters the enclave until
an error (the time counts from when the proxy applied the attack). The
baseline, measured in the same run, is the control case: the same loop
through the same proxy with no attack, which must see no error at all. The
bound is the AVM's deadline (--timeout) plus the slack the tests allow.

    python benchmarks/mitm.py [--trials 5] [--timeout 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import bar_plot, print_table, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.avm import connect_evm  # noqa: E402
from vsgx.channel import EvidencePolicy  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.errors import VsgxError  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import EvmProcess, build_plain  # noqa: E402
from mitm_proxy import TamperingProxy  # noqa: E402

CASES = [("flip", "c2s"), ("flip", "s2c"), ("length", "c2s"), ("length", "s2c"),
         ("replay", "c2s"), ("replay", "s2c"), ("drop", "c2s"), ("drop", "s2c"),
         ("reorder", "c2s"), ("reorder", "s2c"), ("truncate", "both"), ("blackhole", "both")]
SLACK = 15.0
CONTROL_CALLS = 300


def trial(evm: EvmProcess, elf: Path, mode: str | None, direction: str, timeout: float,
          rng: random.Random) -> dict[str, object]:
    proxy = TamperingProxy(int(evm.address.rsplit(":", 1)[1]), rng)
    avm = Avm(connect_evm(proxy.address, EvidencePolicy(allow_unprotected=True), warn=False,
                          timeout=timeout))
    outcome: dict[str, object] = {"detected": False, "seconds": None, "error": "", "detail": ""}
    try:
        enclave = Enclave.load(elf, evm=avm)
        enclave.eenter(rdi=0, rsi=1)
        if mode is not None:
            proxy.arm(mode, direction)
        armed = time.monotonic()
        calls = CONTROL_CALLS if mode is None else 10**6
        done = threading.Event()

        def run() -> None:
            try:
                for _ in range(calls):
                    enclave.eenter(rdi=0, rsi=1)
                    if mode is not None:  # now and then two requests in flight
                        threading.Thread(target=_quiet, args=(enclave,), daemon=True).start()
            except VsgxError as exc:
                outcome.update(detected=True, error=str(exc))
            finally:
                outcome["when"] = time.monotonic()
                done.set()

        threading.Thread(target=run, daemon=True).start()
        if not done.wait(timeout + SLACK + 60):
            outcome["error"] = "no error after the bound: still waiting"
            return outcome
        if outcome["detected"]:
            start = max(proxy.fired or armed, armed)
            outcome["seconds"] = round(float(outcome["when"]) - start, 3)  # type: ignore[arg-type]
        outcome["detail"] = proxy.detail
        return outcome
    finally:
        outcome.pop("when", None)
        proxy.close()
        avm.close()


def _quiet(enclave: Enclave) -> None:
    try:
        enclave.eenter(rdi=0, rsi=1)
    except VsgxError:
        pass


def _short(error: str) -> str:
    return error.removeprefix("the enclave VM is lost: ")[:56]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0, help="the AVM's deadline")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["VSGX_DATA_DIR"] = str(workdir / "avm")
        elf = build_plain(workdir / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nheap_pages = 4\n"),
                              generate_signing_key())
        (workdir / "plain.elf.sig").write_bytes(signed.data)
        evm = EvmProcess("tcp:127.0.0.1:0", workdir / "evm", "--peer-timeout",
                         str(args.timeout + 1))
        results: dict[str, dict[str, object]] = {}
        try:
            for mode, direction in [(None, "none"), *CASES]:
                name = "control (no attack)" if mode is None else f"{mode} {direction}"
                outcomes = [trial(evm, elf, mode, direction, args.timeout, rng)
                            for _ in range(args.trials)]
                times = [o["seconds"] for o in outcomes if o["seconds"] is not None]
                results[name] = {
                    "trials": len(outcomes),
                    "detected": sum(bool(o["detected"]) for o in outcomes),
                    "median_s": round(statistics.median(times), 3) if times else None,
                    "worst_s": max(times) if times else None,
                    "errors": sorted({str(o["error"]) for o in outcomes if o["error"]}),
                    "details": [o["detail"] for o in outcomes],
                }
                print(f"  {name}: {results[name]['detected']}/{len(outcomes)} detected, worst "
                      f"{results[name]['worst_s']} s", flush=True)
        finally:
            evm.stop()
    bound = args.timeout + SLACK
    rows = [[name, r["trials"], r["detected"], r["median_s"] if r["median_s"] is not None else "-",
             r["worst_s"] if r["worst_s"] is not None else "-",
             _short(r["errors"][0]) if r["errors"] else "-"] for name, r in results.items()]
    print_table(f"Tampering with the channel (AVM deadline {args.timeout:g} s, bound "
                f"{bound:g} s; provisional: a shared machine)",
                ["case", "trials", "detected", "median s", "worst s", "first error"], rows)
    control = results["control (no attack)"]
    print(f"\nbaseline: the control case saw {control['detected']} errors in "
          f"{control['trials']} x {CONTROL_CALLS} entries (must be 0)")
    save("mitm", {"timeout_s": args.timeout, "bound_s": bound, "trials": args.trials,
                  "seed": args.seed, "results": results})
    labels = [name for name in results if name != "control (no attack)"]
    bar_plot("mitm", f"Worst time to detect (s); the AVM's deadline is {args.timeout:g} s",
             [label.replace(" ", "\n") for label in labels] + ["AVM\ndeadline"],
             [float(results[n]["worst_s"] or 0) for n in labels] + [args.timeout], "seconds",
             baseline_label="AVM\ndeadline")


if __name__ == "__main__":
    main()
