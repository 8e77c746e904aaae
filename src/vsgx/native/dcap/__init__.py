"""vsgx's drop-in for Intel's DCAP quote library, ``libsgx_dcap_ql.so.1``:
the same C API (sgx_qe_get_target_info, sgx_qe_get_quote_size,
sgx_qe_get_quote, sgx_qe_set_enclave_load_policy, sgx_qe_cleanup_by_policy,
sgx_ql_set_path) as a client of an aesmd socket (``vsgx aesmd serve``).

It is compiled with the system's C compiler on first use and cached by the
digest of its source and flags. ``library_dir()`` is the folder to put on
LD_LIBRARY_PATH (for running) or -L (for linking with -lsgx_dcap_ql); it
holds ``libsgx_dcap_ql.so.1`` (the SONAME programs record) and the
``libsgx_dcap_ql.so`` link a linker looks for.

Beside it, ``libsgx_launch.so.1``: vsgx's drop-in for Intel's launch library
(``get_launch_token``), which libsgx_enclave_common dlopens by that name to
INIT an enclave on /dev/isgx; it asks the same aesmd for the token.
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

from vsgx.errors import VsgxError

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("sgx_dcap_ql.c",)
SONAME = "libsgx_dcap_ql.so.1"
LINK_NAME = "libsgx_dcap_ql.so"
LAUNCH_SOURCES = ("sgx_launch.c",)
LAUNCH_SONAME = "libsgx_launch.so.1"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
          "-pthread", "-Wl,-z,now", "-Wl,-z,noexecstack")
# (SONAME, sources) of each library the folder holds
LIBRARIES = ((SONAME, SOURCES), (LAUNCH_SONAME, LAUNCH_SOURCES))
SOCKET_ENV = "VSGX_AESM_SOCKET"  # where the library finds aesmd (else Intel's path)

_lock = threading.Lock()


class DcapLibraryError(VsgxError):
    """The drop-in quote library cannot be built here."""


def _cache_dir() -> Path:
    base = os.environ.get("VSGX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vsgx")
    return Path(base)


def _digest() -> str:
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for name in SOURCES + LAUNCH_SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def library_dir() -> Path:
    """The folder with the built library (built on first use)."""
    if platform.system() != "Linux":
        raise DcapLibraryError("the drop-in libsgx_dcap_ql is built for Linux")
    target = _cache_dir() / f"dcap-{_digest()}"
    with _lock:
        if (all((target / soname).is_file() for soname, _ in LIBRARIES)
                and (target / LINK_NAME).is_symlink()):
            return target
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if compiler is None:
            raise DcapLibraryError("the drop-in libsgx_dcap_ql is built with a C compiler: "
                                   "install gcc (or set CC)")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            staging = Path(tmp) / "lib"
            staging.mkdir()
            for soname, sources in LIBRARIES:
                result = subprocess.run(
                    [compiler, *CFLAGS, f"-Wl,-soname,{soname}", "-o", str(staging / soname),
                     *(str(SOURCE_DIR / name) for name in sources)],
                    capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise DcapLibraryError(f"building {soname} failed:\n"
                                           f"{result.stderr.strip()}")
            os.symlink(SONAME, staging / LINK_NAME)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / SONAME).is_file():  # not another builder that won
                    raise
    return target
