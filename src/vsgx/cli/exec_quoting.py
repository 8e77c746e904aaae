"""Quoting for a program under `vsgx exec`: an aesmd service
(``vsgx.avm.aesmd``) in the `vsgx exec` process, answered by the program's
EVM, on a socket in a private (0700) directory, and the environment that
points the program at it:

* ``VSGX_AESM_SOCKET`` — the socket, read by vsgx's drop-in
  ``libsgx_dcap_ql.so.1`` (and by clients that speak aesmd's wire format and
  honour it);
* ``SGX_AESM_ADDR=1`` — Intel's libsgx_dcap_ql quotes out of process
  (through aesmd) when it is set, instead of loading QE3 itself;
* ``LD_LIBRARY_PATH`` — the drop-in library's folder first, so that a
  program linked with ``-lsgx_dcap_ql``, or one that dlopens it by its
  SONAME, gets vsgx's.

The service connects to the EVM at its first request, so a program that
never quotes costs the EVM no session. Intel's own ``libsgx_quote_ex`` has
aesmd's path compiled in (``/var/run/aesmd/aesm.socket``) and does not
reach this service.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vsgx.errors import VsgxError

SOCKET_NAME = "aesm.socket"


class ProgramAesmd:
    """aesmd for one program, on ``directory``/aesm.socket (a private
    directory of its own when ``directory`` is None)."""

    def __init__(self, connect: Callable[[], Any], directory: Path | None = None):
        from vsgx.avm.aesmd import AesmdService, EvmBackend

        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="vsgx-aesm-"))
        os.chmod(self.directory, 0o700)
        self.socket = self.directory / SOCKET_NAME
        self._backend = EvmBackend("the program's EVM", connect=connect, lazy=True)
        self._service = AesmdService(self._backend)
        self._thread: threading.Thread | None = None
        try:
            self._thread = self._service.start(str(self.socket))
        except BaseException:
            self.close()
            raise

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """What the program's environment gets (over ``environ``'s values)."""
        from vsgx.avm.aesmd import SOCKET_ENV
        from vsgx.native.dcap import library_dir

        env = {SOCKET_ENV: str(self.socket), "SGX_AESM_ADDR": "1"}
        try:
            folder = str(library_dir())
        except VsgxError as exc:  # no compiler: the socket is still served
            print(f"vsgx exec: no drop-in libsgx_dcap_ql for the program: {exc}",
                  file=sys.stderr)
            return env
        rest = [item for item in environ.get("LD_LIBRARY_PATH", "").split(":")
                if item and item != folder]
        env["LD_LIBRARY_PATH"] = ":".join([folder, *rest])
        return env

    def close(self) -> None:
        self._service.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)  # its listener closed (and its socket gone)
        self._backend.close()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            try:
                self.socket.unlink()
            except FileNotFoundError:
                pass
