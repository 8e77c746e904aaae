"""The side socket that hands a runner's CLIENT area and page pool to a
program on the EVM's host (vsgx exec's fast path): only with the token the
session got over its channel, only to the session's peer uid, only once
(test_native.py checks that the files are sealed against resizing)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from vsgx.evm.manager import CLIENT_TOKEN_SIZE, ClientFileOffers

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Unix sockets with SO_PEERCRED")


def claim(path: str, token: bytes) -> tuple[bytes, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as side:
        side.settimeout(5.0)
        side.connect(path)
        side.sendall(token)
        data, fds, _, _ = socket.recv_fds(side, 1, 2)
    return data, fds


@pytest.fixture
def offers(tmp_path: Path):
    logged: list[str] = []
    server = ClientFileOffers(str(tmp_path / "evm.sock.client"), logged.append)
    server.logged = logged  # type: ignore[attr-defined]
    yield server
    server.close()


def two_files() -> tuple[int, int]:
    a, b = os.memfd_create("a"), os.memfd_create("b")
    os.write(a, b"client")
    return a, b


def test_the_token_and_the_uid_claim_the_files_once(offers) -> None:
    a, b = two_files()
    token = offers.offer((a, b), os.getuid())
    os.close(a)
    os.close(b)  # the offer holds copies of its own
    data, fds = claim(offers.path, token)
    try:
        assert data == b"\1" and len(fds) == 2
        assert os.pread(fds[0], 6, 0) == b"client"
    finally:
        for fd in fds:
            os.close(fd)
    assert claim(offers.path, token) == (b"\0", [])  # once


def test_another_uid_or_another_token_gets_nothing(offers) -> None:
    a, b = two_files()
    token = offers.offer((a, b), os.getuid() + 1)
    assert claim(offers.path, token) == (b"\0", [])
    assert any("refused" in line for line in offers.logged)
    mine = offers.offer((a, b), os.getuid())
    wrong = bytes(x ^ 1 for x in mine)
    assert claim(offers.path, wrong) == (b"\0", [])
    assert len(mine) == CLIENT_TOKEN_SIZE
    os.close(a)
    os.close(b)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "evm.sock.client"
    path.write_text("keep me")
    with pytest.raises(OSError):
        ClientFileOffers(str(path), print)
    assert path.read_text() == "keep me"
