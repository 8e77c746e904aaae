"""Building enclaves with the system's C compiler.

Enclaves are static PIEs without libc: freestanding, no stack protector, no
red zone (the runtime's exception path writes below the interrupted RSP),
AES-NI for the enclave's own sealing crypto.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from vsgx.errors import VsgxError

SAMPLES_DIR = Path(__file__).resolve().parent
RUNTIME_DIR = SAMPLES_DIR / "rt"
HELLO_DIR = SAMPLES_DIR / "hello"
PARAMS_DIR = SAMPLES_DIR / "params"

ENCLAVE_CFLAGS = (
    "-nostdlib", "-static-pie", "-fPIE", "-ffreestanding", "-fno-stack-protector",
    "-fno-builtin", "-fvisibility=hidden", "-fno-jump-tables", "-fno-asynchronous-unwind-tables",
    "-mno-red-zone", "-O2", "-maes", "-msse4.1", "-Wall",
    "-Wl,--build-id=none", "-Wl,-z,noexecstack",
)
RUNTIME_SOURCES = ("rt_entry.S", "rt.c", "rt_seal.c", "rt_heap.c", "aes_cmac.c", "string.c")
# The runtime's key agreement, for enclaves that take part in remote
# attestation (the sample): plain C, also built for the host in the tests.
RA_SOURCES = ("sha256.c", "hmac_sha256.c", "x25519.c")


class BuildError(VsgxError):
    """The C compiler is missing or failed."""


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    found = shutil.which(cc) or shutil.which("gcc")
    if not found:
        raise BuildError("no C compiler found (install gcc, or set CC)")
    return found


def runtime_sources() -> list[Path]:
    return [RUNTIME_DIR / name for name in RUNTIME_SOURCES]


def compile_enclave(sources: Sequence[Path], output: Path, linker_script: Path,
                    include_dirs: Sequence[Path] = (), extra_flags: Sequence[str] = ()) -> Path:
    """Compile and link an enclave ELF."""
    command = [compiler(), *ENCLAVE_CFLAGS, *extra_flags,
               *(f"-I{d}" for d in (*include_dirs, RUNTIME_DIR)),
               f"-Wl,-T,{linker_script}", "-o", str(output), *map(str, sources)]
    output.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"building {output.name} failed:\n{result.stderr.strip()}")
    return output


def build_params(output_dir: Path) -> Path:
    """Build the unsigned parameter test enclave (params.so): an ECALL or
    OCALL of every EDL parameter kind, and every standard EDL imported."""
    sources = [*runtime_sources(), PARAMS_DIR / "params.c", PARAMS_DIR / "params_t.c"]
    return compile_enclave(sources, output_dir / "params.so", RUNTIME_DIR / "enclave.lds",
                           include_dirs=[PARAMS_DIR])


def build_sample(output_dir: Path) -> Path:
    """Build the unsigned sample enclave (hello.so) into ``output_dir``."""
    sources = [*runtime_sources(), *(RUNTIME_DIR / name for name in RA_SOURCES),
               HELLO_DIR / "hello.c", HELLO_DIR / "ra.c", HELLO_DIR / "hello_t.c"]
    return compile_enclave(sources, output_dir / "hello.so", RUNTIME_DIR / "enclave.lds",
                           include_dirs=[HELLO_DIR])
