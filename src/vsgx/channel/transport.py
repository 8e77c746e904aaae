"""Transports and TLS 1.3 over them.

Addresses: ``unix:/path``, ``tcp:host:port``, ``vsock:cid:port`` (AF_VSOCK,
for an EVM in another VM such as an SEV guest). TLS runs over Python's
``ssl`` through a MemoryBIO pair, so that one thread can read while others
write and the same code serves every socket family.
"""

from __future__ import annotations

import datetime
import os
import select
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vsgx.channel.evidence import (
    EVIDENCE_OID,
    Evidence,
    EvidencePolicy,
    collect_evidence,
    verify_evidence,
)
from vsgx.errors import VsgxError

RECV_SIZE = 256 * 1024


class ChannelError(VsgxError):
    """The channel to the other side failed (closed, tampered, truncated)."""


class ChannelClosed(ChannelError):
    """The other side went away."""


class ChannelIdle(Exception):
    """Nothing arrived for a while (the reader may send a keepalive)."""


IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class Address:
    family: str  # unix, tcp, vsock
    target: str | tuple[str, int] | tuple[int, int]

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.target}"
        host, port = self.target  # type: ignore[misc]
        return f"{self.family}:{host}:{port}"


def parse_address(text: str) -> Address:
    family, _, rest = text.partition(":")
    try:
        if family == "unix" and rest:
            return Address("unix", rest)
        if family == "tcp":
            host, _, port = rest.rpartition(":")
            return Address("tcp", (host or "127.0.0.1", int(port)))
        if family == "vsock":
            cid, _, port = rest.partition(":")
            return Address("vsock", (int(cid), int(port)))
    except ValueError:
        pass
    raise VsgxError(f"bad EVM address {text!r}: use unix:PATH, tcp:HOST:PORT or vsock:CID:PORT")


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
    server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]
    client = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]
    try:
        server.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))  # type: ignore[attr-defined]
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
        host = address.target[0]  # type: ignore[index]
        family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if not vsock_available():
        raise ChannelError("AF_VSOCK is not available on this machine")
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]


def listen(address: Address, backlog: int = 64) -> socket.socket:
    sock = _socket(address)
    if address.family == "unix":
        try:
            os.unlink(str(address.target))
        except FileNotFoundError:
            pass
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address.target)  # type: ignore[arg-type]
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot listen on {address}: {exc.strerror}") from None
    if address.family == "unix":
        os.chmod(str(address.target), 0o600)
    return sock


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    sock = _socket(address)
    sock.settimeout(timeout)
    try:
        sock.connect(address.target)  # type: ignore[arg-type]
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot connect to the EVM at {address}: "
                           f"{exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


# -- TLS ---------------------------------------------------------------------
class ServerIdentity:
    """The EVM's TLS key and certificate, with evidence binding the key."""

    def __init__(self, evidence_kind: str = "none"):
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.evidence: Evidence = collect_evidence(evidence_kind, public)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsgx enclave VM")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=30))
                       .add_extension(x509.UnrecognizedExtension(EVIDENCE_OID,
                                                                 self.evidence.encode()),
                                      critical=False)
                       .sign(key, hashes.SHA256()))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            with open(cert_path, "wb") as f:
                f.write(certificate.public_bytes(serialization.Encoding.PEM))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            self.context.load_cert_chain(cert_path, key_path)


def client_context() -> ssl.SSLContext:
    """TLS 1.3; the certificate is checked by its evidence, not by a CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class TlsStream:
    """A TLS session over a connected socket. The SSL object is used in
    non-blocking mode and only under one lock, so one thread can wait for
    data (in select, outside the lock) while others send."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool):
        self.raw = sock
        self.context = context
        self.server_side = server_side
        self.tls: ssl.SSLSocket | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.evidence: Evidence | None = None
        self._plain = bytearray()

    def handshake(self) -> None:
        self.raw.settimeout(30)
        try:
            self.tls = self.context.wrap_socket(self.raw, server_side=self.server_side,
                                                suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            raise ChannelError(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
                               ) from None
        self.tls.setblocking(False)

    def verify_peer(self, policy: EvidencePolicy) -> Evidence:
        assert self.tls is not None
        der = self.tls.getpeercert(binary_form=True)
        if not der:
            raise ChannelError("the EVM presented no certificate")
        self.evidence = verify_evidence(der, policy)
        return self.evidence

    def send(self, data: bytes) -> None:
        tls = self.tls
        if tls is None or self.closed:
            raise ChannelClosed("the channel is closed")
        view = memoryview(data)
        while view:
            with self.lock:
                try:
                    sent = tls.send(view)
                    view = view[sent:]
                    continue
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                except ssl.SSLError as exc:
                    raise ChannelError(f"TLS error: {exc.reason or exc}") from None
                except OSError as exc:
                    raise ChannelClosed(f"the channel is closed ({exc.strerror or exc})"
                                        ) from None
            select.select([], [tls], [], IDLE_SECONDS)

    def _read_into_buffer(self, size: int) -> None:
        """Read until the plaintext buffer holds ``size`` bytes (only the
        reader calls this). Bytes stay buffered if ChannelIdle interrupts."""
        tls = self.tls
        if tls is None:
            raise ChannelClosed("the channel is closed")
        while len(self._plain) < size:
            with self.lock:
                try:
                    chunk = tls.recv(RECV_SIZE)
                except (ssl.SSLWantReadError, BlockingIOError):
                    chunk = None
                except ssl.SSLZeroReturnError:
                    raise ChannelClosed("the other side closed the channel") from None
                except ssl.SSLEOFError:
                    raise ChannelError("the channel was truncated (EOF without TLS close)"
                                       ) from None
                except ssl.SSLError as exc:
                    raise ChannelError(f"the channel was tampered with: TLS "
                                       f"{exc.reason or exc}") from None
                except OSError as exc:
                    raise ChannelClosed(f"the channel is closed ({exc.strerror or exc})"
                                        ) from None
            if chunk is None:
                try:
                    readable, _, _ = select.select([tls], [], [], IDLE_SECONDS)
                except (ValueError, OSError):
                    raise ChannelClosed("the channel is closed") from None
                if not readable:
                    raise ChannelIdle
                continue
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            self._plain += chunk

    def read_frame(self, header_size: int, body_length: Callable[[bytes], int]) -> bytes:
        """One whole frame: a header, then ``body_length(header)`` bytes."""
        self._read_into_buffer(header_size)
        size = header_size + body_length(bytes(self._plain[:header_size]))
        self._read_into_buffer(size)
        frame = bytes(self._plain[:size])
        del self._plain[:size]
        return frame

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        sock = self.tls or self.raw
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
