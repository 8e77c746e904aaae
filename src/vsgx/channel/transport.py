"""Transports and TLS 1.3 over them.

Addresses (see ``address``): ``unix:/path``, ``tcp:host:port``,
``vsock:cid:port`` (AF_VSOCK, for an EVM in another VM such as an SEV
guest). TLS runs over Python's ``ssl`` in non-blocking mode, so that one
thread can read while others write and the same code serves every socket
family. Every wait is bounded: connecting, the handshake, a send that makes
no progress; a read gives up its turn after ``IDLE_SECONDS`` so the caller
can send a keepalive and check how long the peer has been silent.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable

from vsgx.channel.address import Address, is_local_peer
from vsgx.channel.evidence import Evidence, EvidencePolicy, verify_evidence
from vsgx.channel.identity import ClientIdentity, certificate_fingerprint
from vsgx.errors import VsgxError

RECV_SIZE = 256 * 1024
DEFAULT_TIMEOUT = 10.0  # connect, handshake, and silence while waiting for the peer


class ChannelError(VsgxError):
    """The channel to the other side failed (closed, tampered, truncated)."""


class ChannelClosed(ChannelError):
    """The other side went away."""


class ChannelIdle(Exception):
    """Nothing arrived for a while (the reader may send a keepalive)."""


IDLE_SECONDS = 1.0


def wait_ready(sock: socket.socket | ssl.SSLSocket, *, read: bool = False,
               write: bool = False, timeout: float | None = None) -> bool:
    """Whether ``sock`` became readable (``read``) or writable (``write``)
    within ``timeout`` seconds (None: wait as long as it takes). poll, not
    select: a descriptor past FD_SETSIZE (1024) is legal in a busy EVM.
    Raises ValueError or OSError for a closed socket, as select did."""
    fd = sock.fileno()
    if fd < 0:
        raise ValueError("the socket is closed")
    poller = select.poll()
    poller.register(fd, (select.POLLIN if read else 0)
                    | (select.POLLOUT if write else 0))
    wait = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(wait))


def vsock_available() -> bool:
    if not hasattr(socket, "AF_VSOCK"):
        return False
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def vsock_loopback_available() -> tuple[bool, str]:
    """Whether this machine can reach its own vsock port (CID 1), with why not."""
    if not vsock_available():
        return False, "AF_VSOCK is not available on this machine"
    server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        server.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        server.listen(1)
        port = server.getsockname()[1]
        client.settimeout(2)
        client.connect((1, port))  # VMADDR_CID_LOCAL
        return True, ""
    except OSError as exc:
        return False, f"vsock loopback (CID 1) is not available here: {exc.strerror or exc}"
    finally:
        client.close()
        server.close()


def _socket(address: Address) -> socket.socket:
    if address.family == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.family == "tcp":
        host = address.endpoint[0]
        family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if not vsock_available():
        raise ChannelError("AF_VSOCK is not available on this machine")
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)


def _resolve(address: Address) -> Address:
    """A TCP host name turned into the address family it resolves to."""
    if address.family != "tcp":
        return address
    host, port = address.endpoint
    try:
        infos = socket.getaddrinfo(str(host), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ChannelError(f"cannot resolve {host!r} of {address}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return Address("tcp", (str(sockaddr[0]), int(sockaddr[1]))) if family in (
        socket.AF_INET, socket.AF_INET6) else address


def _unix_path_in_use(path: str) -> None:
    """Refuse to listen where something stands, except a stale socket
    (one nobody listens on), which is removed. Never deletes anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ChannelError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ChannelError(f"cannot listen on unix:{path}: it is a symbolic link (refusing to "
                           "replace it)")
    if stat.S_ISDIR(info.st_mode):
        raise ChannelError(f"cannot listen on unix:{path}: it is a directory")
    if not stat.S_ISSOCK(info.st_mode):
        raise ChannelError(f"cannot listen on unix:{path}: a file that is not a socket stands "
                           "there (refusing to replace it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: nobody listens
    except OSError as exc:
        raise ChannelError(f"cannot listen on unix:{path}: cannot tell whether the socket "
                           f"there is in use ({exc.strerror or exc})") from None
    else:
        raise ChannelError(f"cannot listen on unix:{path}: another process (an EVM?) is "
                           "listening there")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ChannelError(f"cannot replace the stale socket unix:{path}: {exc.strerror}"
                           ) from None


class Listener:
    """A listening socket; for a Unix socket, the file it made, removed on
    close if it is still the one it made."""

    def __init__(self, sock: socket.socket, address: Address):
        self.sock = sock
        self.address = address
        self._file: tuple[int, int] | None = None
        if address.family == "unix":
            info = os.lstat(address.path)
            self._file = (info.st_dev, info.st_ino)

    def accept(self, timeout: float | None = None) -> socket.socket | None:
        """A new connection, or None after ``timeout`` seconds (a signal
        may go to any thread: a main thread that waits forever in accept
        would never run its handler)."""
        if timeout is not None and not wait_ready(self.sock, read=True, timeout=timeout):
            return None
        return self.sock.accept()[0]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._file is not None:
            try:
                info = os.lstat(self.address.path)
                if (info.st_dev, info.st_ino) == self._file:
                    os.unlink(self.address.path)
            except OSError:
                pass
            self._file = None


def listen(address: Address, backlog: int = 64, mode: int = 0o600) -> Listener:
    """Listen on ``address``; a Unix socket is made with ``mode`` (0600:
    only this user may connect)."""
    if address.family == "unix":
        path = address.path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ChannelError(f"cannot listen on {address}: the folder {folder} does not "
                               "exist")
        _unix_path_in_use(path)
    resolved = _resolve(address)
    sock = _socket(resolved)
    if address.family == "unix":
        os.fchmod(sock.fileno(), mode)  # Linux makes the file with the socket's mode
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound = address
    try:
        sock.bind(resolved.sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot listen on {address}: {exc.strerror}") from None
    if address.family == "unix":
        os.chmod(address.path, mode)
    else:
        name = sock.getsockname()
        bound = Address(address.family, (address.endpoint[0], int(name[1])))
    return Listener(sock, bound)


def connect(address: Address, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    if address.family == "unix" and os.path.isdir(address.path):
        raise ChannelError(f"cannot connect to the EVM at {address}: it is a directory, not "
                           "a socket")
    resolved = _resolve(address)
    sock = _socket(resolved)
    sock.settimeout(timeout)
    try:
        sock.connect(resolved.sockaddr)
    except TimeoutError:
        sock.close()
        raise ChannelError(f"cannot connect to the EVM at {address}: no answer within "
                           f"{timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot connect to the EVM at {address}: "
                           f"{exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket
    (SO_PEERCRED: the credentials it had when it connected)."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return int(uid)


# -- TLS ---------------------------------------------------------------------
def client_context(identity: ClientIdentity | None = None) -> ssl.SSLContext:
    """TLS 1.3; the EVM's certificate is checked by its evidence, not by a
    CA. With ``identity``, the AVM presents its certificate (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if identity is not None:
        identity.present(context)
    return context


class TlsStream:
    """A TLS session over a connected socket. The SSL object is used in
    non-blocking mode and only under one lock, so one thread can wait for
    data (in select, outside the lock) while others send.

    ``last_received`` is when plaintext last arrived: bytes that decrypt to
    nothing (a record whose length field was changed, say) are no sign of
    life. A send that cannot make progress for ``timeout`` seconds fails."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool, *,
                 timeout: float = DEFAULT_TIMEOUT, peer: str = "the other side"):
        self.raw = sock
        self.context = context
        self.server_side = server_side
        self.timeout = timeout
        self.peer = peer
        self.tls: ssl.SSLSocket | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.evidence: Evidence | None = None
        self.local = is_local_peer(sock)
        self.last_received = time.monotonic()
        self._plain = bytearray()
        self._poller: select.poll | None = None

    def handshake(self, timeout: float | None = None) -> None:
        """The TLS handshake, done within ``timeout`` seconds in all (a peer
        that sends a byte now and then does not stretch it)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.raw.setblocking(False)
        try:
            tls = self.context.wrap_socket(self.raw, server_side=self.server_side,
                                           do_handshake_on_connect=False,
                                           suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            raise ChannelError(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
                               ) from None
        self.tls = tls  # closed with the stream, whatever happens next
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                want_write = False
            except ssl.SSLWantWriteError:
                want_write = True
            except (ssl.SSLError, OSError) as exc:
                raise ChannelError(f"TLS handshake failed: "
                                   f"{getattr(exc, 'reason', None) or exc}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError(f"the TLS handshake did not finish within {limit:g} s")
            try:
                wait_ready(tls, read=not want_write, write=want_write, timeout=remaining)
            except (ValueError, OSError):
                raise ChannelClosed("the channel is closed") from None
        self.last_received = time.monotonic()

    def peer_certificate(self) -> bytes | None:
        assert self.tls is not None
        return self.tls.getpeercert(binary_form=True) or None

    def peer_fingerprint(self) -> str | None:
        """The fingerprint of the key the peer presented, if it did."""
        der = self.peer_certificate()
        if der is None:
            return None
        try:
            return certificate_fingerprint(der)
        except VsgxError:
            return None

    def verify_peer(self, policy: EvidencePolicy) -> Evidence:
        der = self.peer_certificate()
        if not der:
            raise ChannelError("the EVM presented no certificate")
        self.evidence = verify_evidence(der, policy, local=self.local)
        return self.evidence

    def send(self, data: bytes) -> None:
        tls = self.tls
        if tls is None or self.closed:
            raise ChannelClosed("the channel is closed")
        view = memoryview(data)
        stalled = 0.0
        while view:
            with self.lock:
                try:
                    sent = tls.send(view)
                    view = view[sent:]
                    stalled = 0.0
                    continue
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                except ssl.SSLEOFError:
                    # the peer's side ended without close_notify (as recv says it)
                    raise ChannelError("the channel was truncated (EOF without TLS close)"
                                       ) from None
                except ssl.SSLError as exc:
                    raise ChannelError(f"the channel was tampered with: TLS "
                                       f"{exc.reason or exc}") from None
                except OSError as exc:
                    raise ChannelClosed(f"the channel is closed ({exc.strerror or exc})"
                                        ) from None
            now = time.monotonic()
            if not stalled:
                stalled = now
            waited = now - stalled
            if waited >= self.timeout:
                raise ChannelError(f"{self.peer} stopped reading: nothing could be sent for "
                                   f"{waited:.0f} s")
            try:
                wait_ready(tls, write=True, timeout=min(IDLE_SECONDS, self.timeout - waited))
            except (ValueError, OSError):
                raise ChannelClosed("the channel is closed") from None

    def _readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the socket to be readable
        (the reader only: a poll object serves one caller at a time)."""
        poller = self._poller
        if poller is None:
            tls = self.tls
            if tls is None or self.closed:
                raise ChannelClosed("the channel is closed")
            try:
                poller = select.poll()
                poller.register(tls.fileno(), select.POLLIN)
            except (ValueError, OSError):
                raise ChannelClosed("the channel is closed") from None
            self._poller = poller
        try:
            return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))
        except (ValueError, OSError):
            raise ChannelClosed("the channel is closed") from None

    def _read_into_buffer(self, size: int, wait: float) -> None:
        """Read until the plaintext buffer holds ``size`` bytes (only the
        reader calls this); ChannelIdle after ``wait`` seconds without
        plaintext. Bytes stay buffered if ChannelIdle interrupts.

        The socket is polled before SSL_read when OpenSSL holds no
        plaintext: a reply that has not arrived costs one poll, not a
        failed read and its exception as well."""
        tls = self.tls
        if tls is None:
            raise ChannelClosed("the channel is closed")
        plain = self._plain
        started = time.monotonic()
        while len(plain) < size:
            if not tls.pending():
                remaining = wait - (time.monotonic() - started)
                if not self._readable(remaining):
                    if time.monotonic() - started >= wait:
                        raise ChannelIdle
                    continue
            with self.lock:
                try:
                    chunk = tls.recv(RECV_SIZE)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue  # a partial record, or a record with no data (a ticket)
                except ssl.SSLZeroReturnError:
                    raise ChannelClosed(f"{self.peer} closed the channel") from None
                except ssl.SSLEOFError:
                    raise ChannelError("the channel was truncated (EOF without TLS close)"
                                       ) from None
                except ssl.SSLError as exc:
                    raise ChannelError(f"the channel was tampered with: TLS "
                                       f"{exc.reason or exc}") from None
                except (OSError, ValueError) as exc:
                    raise ChannelClosed(f"the channel is closed "
                                        f"({getattr(exc, 'strerror', None) or exc})") from None
            if not chunk:
                raise ChannelClosed(f"{self.peer} closed the channel")
            plain += chunk
            started = self.last_received = time.monotonic()

    def read_frame(self, header_size: int, body_length: Callable[[bytes], int],
                   wait: float = IDLE_SECONDS) -> bytes:
        """One whole frame: a header, then ``body_length(header)`` bytes."""
        plain = self._plain
        if len(plain) < header_size:
            self._read_into_buffer(header_size, wait)
        size = header_size + body_length(bytes(plain[:header_size]))
        if len(plain) < size:
            self._read_into_buffer(size, wait)
        if len(plain) == size:  # the usual case: the frame is all there is
            frame = bytes(plain)
            plain.clear()
        else:
            frame = bytes(plain[:size])
            del plain[:size]
        return frame

    def pending(self) -> bool:
        """Whether something may be read right now (without waiting)."""
        tls = self.tls
        if tls is None or self.closed:
            return False
        if self._plain or tls.pending():
            return True
        try:  # not the reader's poll object: any thread may ask
            return wait_ready(tls, read=True, timeout=0)
        except (ValueError, OSError):
            return True  # closed: a read will say so

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tls is not None:
            with self.lock:
                try:
                    self.tls.unwrap()  # sends close_notify: an orderly end, not a truncation
                except (ssl.SSLError, OSError, ValueError):
                    pass
        sock = self.tls or self.raw
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
