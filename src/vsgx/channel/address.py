"""EVM addresses: ``unix:PATH``, ``tcp:HOST:PORT``, ``tcp:[IPV6]:PORT`` and
``vsock:CID:PORT``, parsed strictly (a typo is an error, never a guess)."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from vsgx.errors import VsgxError

FORMS = "use unix:PATH, tcp:HOST:PORT, tcp:[IPV6]:PORT or vsock:CID:PORT"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
VMADDR_CID_LOCAL = 1
U32 = (1 << 32) - 1
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?$")


@dataclass(frozen=True)
class Address:
    family: str  # unix, tcp, vsock
    target: str | tuple[str | int, int]  # a path, (host, port) or (CID, port)

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.target}"
        host, port = self.endpoint
        if self.family == "tcp" and ":" in str(host):
            return f"tcp:[{host}]:{port}"
        return f"{self.family}:{host}:{port}"

    @property
    def path(self) -> str:
        assert self.family == "unix"
        return str(self.target)

    @property
    def endpoint(self) -> tuple[str | int, int]:
        """(host, port) of a TCP address, (CID, port) of a vsock one."""
        assert not isinstance(self.target, str), "a Unix address has a path"
        return self.target

    @property
    def sockaddr(self) -> str | tuple[str | int, int]:
        """What bind() and connect() take."""
        return self.target


def _bad(text: str, why: str) -> VsgxError:
    return VsgxError(f"bad EVM address {text!r}: {why}; {FORMS}")


def _number(text: str, value: str, what: str, high: int, low: int) -> int:
    # int() would take " 1", "+1", "1_0" and non-ASCII digits
    if not value.isascii() or not value.isdigit():
        raise _bad(text, f"{what} {value!r} is not a number")
    number = int(value)
    if not low <= number <= high:
        raise _bad(text, f"{what} {number} is outside {low}-{high}")
    return number


def parse_address(text: str, *, listening: bool = False) -> Address:
    """An EVM address; ``listening`` allows port 0 (any free port)."""
    family, colon, rest = text.partition(":")
    if not colon or family not in ("unix", "tcp", "vsock"):
        raise _bad(text, f"unknown kind {family!r}" if colon else "no kind")
    if "\0" in rest:
        raise _bad(text, "it contains a NUL byte")
    if family == "unix":
        if not rest:
            raise _bad(text, "the socket path is empty")
        if len(rest.encode()) > UNIX_PATH_MAX:
            raise _bad(text, f"the socket path is {len(rest.encode())} bytes long, "
                             f"at most {UNIX_PATH_MAX} fit")
        return Address("unix", rest)
    low = 0 if listening else 1
    if family == "tcp":
        if rest.startswith("["):
            host, bracket, port = rest[1:].partition("]")
            if not bracket or not port.startswith(":"):
                raise _bad(text, "an IPv6 address in brackets must be followed by :PORT")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _bad(text, f"{host!r} is not an IPv6 address") from None
            return Address("tcp", (host, _number(text, port[1:], "port", 65535, low)))
        host, colon, port = rest.rpartition(":")
        if not colon:
            raise _bad(text, "no port")
        if ":" in host:
            raise _bad(text, "write an IPv6 address in brackets, e.g. tcp:[::1]:PORT")
        if host and not _HOSTNAME.match(host):
            raise _bad(text, f"{host!r} is not a host name or IPv4 address")
        return Address("tcp", (host or "127.0.0.1", _number(text, port, "port", 65535, low)))
    cid, colon, port = rest.partition(":")
    if not colon:
        raise _bad(text, "no port")
    return Address("vsock", (_number(text, cid, "CID", U32, 0),
                             _number(text, port, "port", U32, low)))


def is_local_peer(sock: socket.socket) -> bool:
    """Whether the other end of a connected socket is on this machine: a
    Unix socket, a loopback IP address, or vsock's local CID. Decided from
    the connection itself, not from a name that DNS resolved."""
    if sock.family == socket.AF_UNIX:
        return True
    try:
        peer = sock.getpeername()
    except OSError:
        return False
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        ip = ipaddress.ip_address(peer[0].split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        return ip.is_loopback or bool(mapped and mapped.is_loopback)
    return getattr(socket, "AF_VSOCK", None) == sock.family and peer[0] == VMADDR_CID_LOCAL


def client_socket_path(evm_path: str) -> str:
    """Where an EVM listening on the Unix socket ``evm_path`` hands out the
    fast path's files (beside it, in the same directory)."""
    return evm_path + ".client"

