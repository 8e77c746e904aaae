"""The AVM <-> EVM channel: typed messages, a multiplexed connection, and
attested TLS 1.3 over Unix, TCP and vsock sockets. It knows neither side:
``vsgx.evm`` and ``vsgx.avm`` meet only through it."""

from vsgx.channel.address import Address, is_local_peer, parse_address
from vsgx.channel.connection import (
    Connection,
    ErrorCode,
    RemoteError,
    error_reply,
    reply_to,
)
from vsgx.channel.evidence import AttestationError, Evidence, EvidencePolicy, SnpVerifier
from vsgx.channel.identity import (
    ClientIdentity,
    ServerIdentity,
    parse_fingerprint,
    user_data_dir,
)
from vsgx.channel.memory import MemoryConnection, memory_pair
from vsgx.channel.messages import Kind, Message, ProtocolError, Type
from vsgx.channel.transport import (
    DEFAULT_TIMEOUT,
    ChannelClosed,
    ChannelError,
    Listener,
    TlsStream,
    client_context,
    connect,
    listen,
    peer_uid,
    vsock_available,
    vsock_loopback_available,
)

__all__ = [
    "DEFAULT_TIMEOUT", "Address", "AttestationError", "ChannelClosed", "ChannelError",
    "ClientIdentity", "Connection", "ErrorCode", "Evidence", "EvidencePolicy", "Kind",
    "Listener", "MemoryConnection", "Message", "ProtocolError", "RemoteError", "ServerIdentity",
    "SnpVerifier",
    "TlsStream", "Type", "client_context", "connect", "error_reply", "is_local_peer", "listen",
    "memory_pair", "parse_address", "parse_fingerprint", "peer_uid", "reply_to", "user_data_dir",
    "vsock_available", "vsock_loopback_available",
]
