"""Building the library that ``vsgx exec`` injects into programs.

It is compiled with the system's C compiler on first use and cached by the
digest of its sources, its flags and the protocol header, which is rendered
from ``vsgx.channel.device`` here (the C side never declares the messages
itself).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from vsgx.channel.device import render_c_header
from vsgx.errors import VsgxError
from vsgx.evm import runner_c_header

LIB_DIR = Path(__file__).resolve().parent / "lib"
SOURCES = ("main.c", "channel.c", "memory.c", "device.c", "legacy.c", "aesm.c", "entry.c",
           "entry_asm.S", "cpuid.c", "signals.c", "fast.c")
HEADERS = ("vsgx_exec.h",)
# The fast path's client (vsgx.evm.runner), built in with the program's own
# memory as the untrusted memory.
RUNNER_DIR = Path(__file__).resolve().parents[1] / "evm" / "runner"
RUNNER_SOURCES = ("client.c",)
RUNNER_HEADERS = ("vsgx_fast_client.h",)
LAYOUT_HEADER = "vsgx_layout.h"
PROTOCOL_HEADER = "vsgx_device_protocol.h"
CFLAGS = ("-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-attributes", "-Werror=implicit-function-declaration",
          "-fvisibility=hidden", "-ftls-model=initial-exec", "-fno-strict-aliasing",
          "-D_GNU_SOURCE", "-Wl,-z,noexecstack", "-Wl,-z,now", "-pthread")
LIBS = ("-ldl",)
LIBRARY_NAME = "libvsgx-exec"

_lock = threading.Lock()


class NativeBuildError(VsgxError):
    """The injected library cannot be built here."""


def cache_dir() -> Path:
    base = os.environ.get("VSGX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vsgx")
    return Path(base)


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    found = shutil.which(cc) or shutil.which("gcc")
    if found is None:
        raise NativeBuildError("vsgx exec builds its library with a C compiler: install gcc "
                               "(or set CC)")
    return found


def _digest() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (LIB_DIR / name).read_bytes())
    for name in RUNNER_SOURCES + RUNNER_HEADERS:
        h.update(name.encode() + b"\0" + (RUNNER_DIR / name).read_bytes())
    h.update(render_c_header().encode())
    h.update(runner_c_header().encode())
    h.update(" ".join(CFLAGS + LIBS).encode())
    return h.hexdigest()[:16]


def library_path() -> Path:
    """The injected library, built on first use."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeBuildError("vsgx exec needs x86-64 Linux")
    target = cache_dir() / f"{LIBRARY_NAME}-{_digest()}.so"
    with _lock:
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            work = Path(tmp)
            (work / PROTOCOL_HEADER).write_text(render_c_header())
            (work / LAYOUT_HEADER).write_text(runner_c_header())
            output = work / "lib.so"
            command = [compiler(), *CFLAGS, "-DVSGX_CLIENT_OWN_MEMORY", f"-I{work}",
                       f"-I{LIB_DIR}", f"-I{RUNNER_DIR}", "-o", str(output),
                       *(str(LIB_DIR / name) for name in SOURCES),
                       *(str(RUNNER_DIR / name) for name in RUNNER_SOURCES), *LIBS]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise NativeBuildError(f"building the vsgx exec library failed:\n"
                                       f"{result.stderr.strip()}")
            os.replace(output, target)
    return target


def protocol_header(directory: Path) -> Path:
    """Write the generated protocol header into ``directory`` (for tests and
    for programs that want the declarations)."""
    path = directory / PROTOCOL_HEADER
    path.write_text(render_c_header())
    return path


__all__ = ["LIB_DIR", "NativeBuildError", "library_path", "protocol_header"]
