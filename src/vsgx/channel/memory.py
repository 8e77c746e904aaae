"""The in-memory transport: the two ends of a channel inside one process.

The in-process deployment goes through the same session layer as a socket
(the EVM's sessions, slices and ownership checks); only the transport
differs. Messages are handed across as objects: no framing, no TLS, no
threads. A request runs in the caller's thread, in the peer's handler,
exactly as the thread that reads it from a socket would run it; its reply
comes back as the return value.

A message may carry an ``attachment`` (``Message.attachment``): an object
that only this transport hands across, by reference (the application's
address space with an entry, say). The socket transports refuse such a
message, so nothing that relies on one can be sent to another process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from vsgx.channel.connection import RemoteError, error_reply
from vsgx.channel.messages import Kind, Message, Type
from vsgx.channel.transport import ChannelClosed, ChannelError

# A Message made without NamedTuple's __new__ (which costs a microsecond).
_new_message = tuple.__new__
MemoryHandler = Callable[["MemoryConnection", Message], "Message | None"]


class MemoryConnection:
    """One end of an in-memory channel, with the methods of a
    ``Connection`` that the two sides use (call, notify, send, close,
    ``on_close``, ``error``). ``in_memory`` tells a side that attachments
    reach the peer."""

    in_memory = True

    def __init__(self, name: str = "in-memory channel", peer: str = "the other side"):
        self.name = name
        self.peer = peer
        self.handler: MemoryHandler | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.on_close: list[Callable[[BaseException | None], None]] = []
        self._other: MemoryConnection | None = None
        self._sent = threading.local()  # a reply a handler sent itself (BYE)
        self._lock = threading.Lock()

    # -- sending ------------------------------------------------------------
    def call(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b"",
             attachment: object = None) -> Message:
        """Run a request in the peer's handler and return its reply (ERROR
        replies raise ``RemoteError``, as on a socket)."""
        other = self._other
        if self.error is not None or other is None:
            raise self._closed_error()
        reply = other._receive(
            _new_message(Message, (message_type, fields, blob, Kind.REQUEST, 0, attachment)))
        if reply is None:
            if self.error is not None:
                raise self._closed_error()
            raise ChannelError(f"{self.peer} gave no reply to {message_type.name}")
        if reply.type == Type.ERROR:
            raise RemoteError(reply.fields[0], reply.blob.decode(errors="replace"))
        return reply

    def notify(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b"") -> None:
        self.send(Message(message_type, fields, blob, Kind.NOTICE))

    def send(self, message: Message, sole: bool = False) -> None:
        """A reply sent by a handler itself (it then returns None), or a
        notice for the peer."""
        if message.kind == Kind.REPLY:
            self._sent.reply = message
            return
        if self.error is not None:
            raise self._closed_error()
        other = self._peer()
        if message.type == Type.CLOSING:
            other._fail(ChannelClosed(message.blob.decode(errors="replace")
                                      or f"{other.peer} closed the channel"))
            return
        other._receive(message)

    def _peer(self) -> MemoryConnection:
        other = self._other
        if other is None:
            raise ChannelClosed(f"the {self.name} has no other end")
        return other

    # -- receiving ------------------------------------------------------------
    def _receive(self, message: Message) -> Message | None:
        """Handle a request or notice of the peer, in its thread."""
        if self.error is not None:
            raise self._closed_error()
        handler = self.handler
        if handler is None:
            return error_reply(message, "this side serves no requests")
        try:
            reply = handler(self, message)
        except ChannelError:
            return None
        except Exception as exc:  # a handler bug must not end the session
            reply = error_reply(message, f"internal error: {type(exc).__name__}: {exc}")
        if reply is None:
            reply = self._sent.__dict__.pop("reply", None)
        return reply if message.kind == Kind.REQUEST else None

    def reclaim_role(self, busy_for: float) -> bool:
        """Nothing to reclaim: every request runs in its caller's thread."""
        return False

    # -- closing -------------------------------------------------------------
    def _closed_error(self) -> BaseException:
        if isinstance(self.error, ChannelError):
            return type(self.error)(str(self.error))
        return ChannelClosed(f"the {self.name} is closed")

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = error
        for callback in self.on_close:
            try:
                callback(error)
            except Exception:
                pass
        other = self._other
        if other is not None:
            other._fail(ChannelClosed(f"{other.peer} closed the channel"))

    def close(self, reason: str | None = None) -> None:
        self.closed = True
        self._fail(ChannelClosed(reason or f"the {self.name} was closed"))


def memory_pair(client_name: str = "channel to the EVM", server_name: str = "AVM session"
                ) -> tuple[MemoryConnection, MemoryConnection]:
    """The two ends of an in-memory channel: (the AVM's, the EVM's)."""
    client = MemoryConnection(client_name, peer="the EVM")
    server = MemoryConnection(server_name, peer="the AVM")
    client._other, server._other = server, client
    return client, server


__all__ = ["MemoryConnection", "memory_pair"]
