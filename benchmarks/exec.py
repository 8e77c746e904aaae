"""`vsgx exec`: an unmodified program (tests/native_programs/urts_host.c,
which follows Intel's urts) enters the bundled SDK sample through the vDSO
that the injected library provides, with a private EVM on the native
executor. Measured in the program, in the same run:

* null ECALL (``void ecall_nop(void)``) and null OCALL (``void
  ocall_nop(void)``, between two of its handler calls), p50 and p99;
* the baselines: ENCLU -> its trap (#UD, or #GP on Intel) -> return in a plain process (the
  floor of one trap per exit) and a bare futex ping-pong between two
  processes (kernels/floors.c);
* all of it quiet and again with a CPU hog this benchmark starts beside it
  (``python -c 'while 1: pass'``, killed by its PID);
* creating a 16 MiB, 10-TCS SDK enclave (probe, CREATE, one ADD_PAGES per
  page, INIT, the mappings, ECMD_INIT_ENCLAVE), first and second time,
  and destroying it in between (close, munmap).

Each three times: through the fast path (the injected library enters the
TCS's runner itself over shared memory), through the launcher and the EVM
process (``VSGX_EXEC_FAST=0``, the baseline), and through the fast path
with fast exits (``--fast-exits``: EEXIT sites rewritten after EINIT into
jumps to the runner's exit gate, no trap per exit, against a spinning
ping-pong between two processes); the library's count of fast entries is
printed with them.

    python benchmarks/exec.py [--count 2000] [--executor native]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import bar_plot, cpu_hog, floors, print_table, save, summary_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_exec import FAST_STATS, PROGRAMS, compile_program, write_plan  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.image import parse_config, plan_from_bytes, sign_enclave  # noqa: E402
from vsgx.samples import HELLO_DIR, build_sample  # noqa: E402
from vsgx.sdk.edl import load_edl  # noqa: E402

BIG_CONFIG = """
[enclave]
isvprodid = 1
isvsvn = 1
debug = true
tcs_count = 10
tcs_policy = "unbind"
stack_size = 0x10000
heap_size = 0xD00000
nssa = 2
misc_select = 1
misc_mask = 0xFFFFFFFF
"""


def samples(output: str, key: str) -> list[float]:
    return [int(line.split()[1]) / 1000 for line in output.splitlines()
            if line.startswith(key + " ")]


STEP_NAMES = ("probe+open", "CREATE", "ADD_PAGES", "INIT", "mmap", "ECMD_INIT_ENCLAVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--executor", default="native", choices=["native", "unicorn"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_signing_key()
        unsigned = build_sample(work)
        signed = work / "big.signed.so"
        signed.write_bytes(sign_enclave(unsigned.read_bytes(), parse_config(BIG_CONFIG),
                                        key).data)
        plan = plan_from_bytes(signed.read_bytes())
        size_mib = plan.ecreate.size / (1 << 20)
        plan_file = write_plan(signed, work / "big.plan")
        host = compile_program(PROGRAMS / "urts_host.c", work / "urts_host")
        edl = load_edl(HELLO_DIR / "hello.edl")
        ordinals = [str(edl.ecall(name)[0]) for name in ("ecall_hello", "ecall_add",
                                                         "ecall_ocall_nop", "ecall_fault")]
        ordinals += [str(edl.ocall(name)[0]) for name in ("ocall_print", "ocall_nop")]
        nop = str(edl.ecall("ecall_nop")[0])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        results: dict[str, dict[str, float]] = {}
        creates: dict[str, list[float]] = {}
        destroys: dict[str, list[float]] = {}
        steps: dict[str, list[dict[str, float]]] = {}
        fast_counts: dict[str, str] = {}
        for load in ("quiet", "CPU hog"):
            with contextlib.ExitStack() as stack:
                if load != "quiet":
                    stack.enter_context(cpu_hog())
                for name, stats in floors(work, args.count).items():
                    results[f"{name} ({load})"] = stats
                for path, fast, extra in (("fast path", "1", []), ("launcher", "0", []),
                                          ("fast path, fast exits", "1", ["--fast-exits"])):
                    run = subprocess.run(
                        [sys.executable, "-m", "vsgx", "exec", "--executor", args.executor,
                         *extra, "--", str(host), "--bench", str(args.count), nop, str(plan_file),
                         *ordinals], capture_output=True, text=True,
                        env={**env, "VSGX_EXEC_FAST": fast, "VSGX_EXEC_FAST_STATS": "1"},
                        check=False, timeout=3600)
                    if run.returncode != 0:
                        raise SystemExit(f"the benchmark program failed ({run.returncode}):\n"
                                         f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
                    results[f"null ECALL, {path} ({load})"] = summary_us(samples(run.stdout,
                                                                                 "ecall"))
                    results[f"null OCALL, {path} ({load})"] = summary_us(samples(run.stdout,
                                                                                 "ocall"))
                    counted = FAST_STATS.search(run.stderr)
                    fast_counts[f"{path} ({load})"] = counted.group(0) if counted else "none"
                    if load == "quiet":  # creation, first and second, on each path
                        creates[path] = [round(value / 1000, 1)
                                         for value in samples(run.stdout, "create")]
                        destroys[path] = [round(value / 1000, 2)
                                          for value in samples(run.stdout, "destroy")]
                        steps[path] = [dict(zip(STEP_NAMES, (round(int(v) / 1e6, 2)
                                                             for v in line.split()[1:]),
                                                strict=True))
                                       for line in run.stdout.splitlines()
                                       if line.startswith("steps ")]
    rows = []
    for name, stats in results.items():
        load = name[name.rindex("(") + 1:-1]
        baseline = results[f"raw ENCLU trap round trip ({load})"]["p50_us"]
        quiet = results.get(name.replace("(CPU hog)", "(quiet)"), stats)["p50_us"]
        rows.append([name, stats["p50_us"], stats["p99_us"], round(stats["p50_us"] / baseline, 1),
                     round(stats["p50_us"] / quiet, 1), stats["count"]])
    print_table(f"vsgx exec, {args.executor} executor, private EVM (provisional numbers)",
                ["path", "p50 us", "p99 us", "x ENCLU trap p50", "x quiet p50", "count"], rows)
    for name, text in fast_counts.items():
        print(f"{name}: {text}")
    print(f"\ncreating a {size_mib:.0f} MiB, {len(plan.tcs_offsets)}-TCS SDK enclave (goal "
          "<= 10 ms; Intel's simulation mode: 6-16 ms on the first development machine)")
    for path, values in creates.items():
        print(f"  {path}: {values} ms (first, second)")
        for n, step in enumerate(steps[path]):
            print(f"    {('first', 'second')[n] if n < 2 else n}: " + ", ".join(
                f"{name} {ms} ms" for name, ms in step.items()))
    print("destroying it (close, munmap: the UNMAPs and RELEASE):")
    for path, values in destroys.items():
        print(f"  {path}: {values} ms")
    save("exec", {"executor": args.executor, "results": results,
                  "create_ms": creates.get("launcher", []),
                  "create_steps_ms": steps.get("launcher", []),
                  "create_ms_by_path": creates, "create_steps_ms_by_path": steps,
                  "destroy_ms_by_path": destroys,
                  "enclave_mib": size_mib,
                  "tcs": len(plan.tcs_offsets), "fast_path_counts": fast_counts,
                  "ratio_to_enclu_trap_p50": {row[0]: row[3] for row in rows},
                  "ratio_to_quiet_p50": {row[0]: row[4] for row in rows}})
    bar_plot("exec", "vsgx exec: null ECALL / OCALL vs the floors, quiet and with a hog (p50)",
             [name.replace(" (", "\n(") for name in results],
             [stats["p50_us"] for stats in results.values()], "microseconds",
             baseline_label="raw ENCLU trap round trip\n(quiet)")

if __name__ == "__main__":
    main()
