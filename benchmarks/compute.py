"""The compute kernel (SHA-256 over 16 MiB, the same C code) natively, on
bare Unicorn (no vsgx: one emu_start over the function), and as an enclave
on vsgx (one ECALL into the plain test enclave) with the Unicorn executor
and with the native executor, in the same run.

    python benchmarks/compute.py [--mib 16]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bar_plot, print_table, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm import EnclaveVM, native_support  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.image import parse_config, read_elf, sign_enclave  # noqa: E402
from vsgx.samples import RUNTIME_DIR  # noqa: E402
from vsgx.samples.build import compiler  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import OP_SHA256, PlainEnclave  # noqa: E402

KERNELS = Path(__file__).resolve().parent / "kernels"
CFLAGS = ["-O2", "-fno-stack-protector", "-fno-builtin", "-msse4.1"]


def native(workdir: Path, size: int) -> tuple[float, str]:
    binary = workdir / "sha256_native"
    subprocess.run([compiler(), *CFLAGS, f"-I{RUNTIME_DIR}", "-o", str(binary),
                    str(KERNELS / "sha256_native.c"), str(RUNTIME_DIR / "sha256.c")], check=True)
    best, digest = float("inf"), ""
    for _ in range(3):
        seconds, digest = subprocess.run([str(binary), str(size)], check=True,
                                         capture_output=True, text=True).stdout.split()
        best = min(best, float(seconds))
    return best, digest


def bare_unicorn(workdir: Path, size: int) -> tuple[float, str]:
    from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
    from unicorn import x86_const as x86

    image = workdir / "sha256_flat.elf"
    subprocess.run([compiler(), *CFLAGS, "-nostdlib", "-static-pie", "-fPIE", "-ffreestanding",
                    f"-I{RUNTIME_DIR}", f"-Wl,-T,{KERNELS / 'flat.lds'}", "-Wl,-e,sha256",
                    "-o", str(image), str(RUNTIME_DIR / "sha256.c"),
                    str(RUNTIME_DIR / "string.c")], check=True)
    elf = read_elf(image.read_bytes())
    base, data, stack, stop = 0x400000, 0x10000000, 0x7F000000, 0x7E000000
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(x86.UC_CPU_X86_SKYLAKE_SERVER)
    end = max(s.vaddr + s.memsz for s in elf.segments)
    uc.mem_map(base, (end + 0xFFFF) & ~0xFFF)
    for seg in elf.segments:
        uc.mem_write(base + seg.vaddr, elf.data[seg.offset:seg.offset + seg.filesz])
    uc.mem_map(data, size + 4096, UC_PROT_ALL)
    uc.mem_map(stack - 0x100000, 0x100000 + 4096, UC_PROT_ALL)
    best = float("inf")
    for _ in range(3):
        uc.mem_write(stack - 8, stop.to_bytes(8, "little"))
        for reg, value in ((x86.UC_X86_REG_RSP, stack - 8), (x86.UC_X86_REG_RDI, data),
                           (x86.UC_X86_REG_RSI, size), (x86.UC_X86_REG_RDX, data + size)):
            uc.reg_write(reg, value)
        start = time.perf_counter()
        uc.emu_start(base + elf.symbols["sha256"], stop)
        best = min(best, time.perf_counter() - start)
    return best, bytes(uc.mem_read(data + size, 32)).hex()


def vsgx(workdir: Path, size: int, executor: str) -> tuple[float, str]:
    elf = build_plain(workdir / "plain.elf")
    heap_pages = size // 4096
    signed = sign_enclave(elf.read_bytes(), parse_config(f"[enclave]\nheap_pages = {heap_pages}\n"),
                          generate_signing_key())
    (workdir / "plain.elf.sig").write_bytes(signed.data)
    avm = Avm(EnclaveVM(root_secret=bytes(32), executor=executor))
    enclave = Enclave.load(elf, evm=avm)
    plain = PlainEnclave(enclave)
    heap = next(r for r in enclave.plan.runs if r.label == "heap")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result, _ = plain.call(0, OP_SHA256, heap.offset, size, 1)
        best = min(best, time.perf_counter() - start)
        assert result.kind == "eexit", result.describe()
    digest = plain.read_op(0, 32, 32).hex()
    avm.close()
    return best, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    size = args.mib << 20
    expected = hashlib.sha256(bytes(size)).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = {"native": native(workdir, size), "bare Unicorn": bare_unicorn(workdir, size),
                   "vsgx (Unicorn executor)": vsgx(workdir, size, "unicorn")}
        if native_support()[0]:
            results["vsgx (native executor)"] = vsgx(workdir, size, "native")
        else:
            print(f"(no native executor here: {native_support()[1]})")
    for name, (_, digest) in results.items():
        assert digest == expected, f"{name} computed a wrong digest"
    native_s = results["native"][0]
    unicorn_s = results["bare Unicorn"][0]
    rows = [[name, seconds * 1e3, size / seconds / 1e6, native_s / seconds, unicorn_s / seconds]
            for name, (seconds, _) in results.items()]
    print_table(f"SHA-256 over {args.mib} MiB, best of 3",
                ["where", "ms", "MB/s", "vs native", "vs bare Unicorn"], rows)
    ratio = unicorn_s / results["vsgx (Unicorn executor)"][0]
    print(f"\nvsgx / bare Unicorn speed: {ratio:.2f} (goal >= 0.8); "
          f"bare Unicorn / native: {native_s / unicorn_s:.3f}")
    native_ratio = None
    if "vsgx (native executor)" in results:
        native_ratio = native_s / results["vsgx (native executor)"][0]
        print(f"vsgx native executor / native speed: {native_ratio:.2f} (goal >= 0.9)")
    save("compute", {"mib": args.mib, **{name: seconds for name, (seconds, _) in results.items()},
                     "vsgx_vs_unicorn": ratio, "unicorn_vs_native": native_s / unicorn_s,
                     "native_executor_vs_native": native_ratio})
    bar_plot("compute", f"SHA-256 over {args.mib} MiB", list(results),
             [size / s / 1e6 for s, _ in results.values()], "MB/s", baseline_label="native")


if __name__ == "__main__":
    main()
