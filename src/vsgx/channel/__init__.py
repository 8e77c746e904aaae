"""The AVM <-> EVM channel: typed messages, a multiplexed connection, and
attested TLS 1.3 over Unix, TCP and vsock sockets. It knows neither side:
``vsgx.evm`` and ``vsgx.avm`` meet only through it."""

from vsgx.channel.connection import Connection, RemoteError, error_reply, reply_to
from vsgx.channel.evidence import AttestationError, Evidence, EvidencePolicy
from vsgx.channel.messages import Kind, Message, ProtocolError, Type
from vsgx.channel.transport import (
    Address,
    ChannelClosed,
    ChannelError,
    ServerIdentity,
    TlsStream,
    client_context,
    connect,
    listen,
    parse_address,
    vsock_available,
    vsock_loopback_available,
)

__all__ = [
    "Address", "AttestationError", "ChannelClosed", "ChannelError", "Connection", "Evidence",
    "EvidencePolicy", "Kind", "Message", "ProtocolError", "RemoteError", "ServerIdentity",
    "TlsStream", "Type", "client_context", "connect", "error_reply", "listen", "parse_address",
    "reply_to", "vsock_available", "vsock_loopback_available",
]
