"""A multiplexed connection: many requests in flight from many threads, in
both directions, over one stream.

Threads cooperate as leader and followers: a thread waiting for its reply
becomes the reader if nobody is reading, and dispatches what arrives —
replies to the threads waiting for them, requests to the handler — until
its own reply comes; then another waiting thread takes over. A single
thread entering an enclave therefore never hands a message to another
thread. Requests that run long (EENTER, ERESUME) go to worker threads so
that the reader keeps reading.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from vsgx.channel.messages import (
    HEADER_SIZE,
    Kind,
    Message,
    ProtocolError,
    Type,
    decode_body,
    decode_header,
    encode,
)
from vsgx.channel.transport import ChannelClosed, ChannelError, ChannelIdle
from vsgx.errors import VsgxError


class Stream(Protocol):
    def send(self, data: bytes) -> None: ...
    def read_frame(self, header_size: int, body_length: Callable[[bytes], int]) -> bytes: ...
    def close(self) -> None: ...


class RemoteError(VsgxError):
    """The other side answered a request with ERROR."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


Handler = Callable[["Connection", Message], Message | None]


class _Waiter:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = False
        self.reply: Message | None = None
        self.error: BaseException | None = None


def reply_to(request: Message, message_type: Type, fields: tuple = (), blob: bytes = b""
             ) -> Message:
    return Message(message_type, fields, blob, Kind.REPLY, request.request_id)


def error_reply(request: Message, text: str, code: int = 1) -> Message:
    return reply_to(request, Type.ERROR, (code,), text.encode()[:4000])


class Connection:
    def __init__(self, stream: Stream, handler: Handler | None = None, *,
                 blocking: Collection[Type] = (), workers: int = 0, name: str = "channel"):
        self.stream = stream
        self.handler = handler
        self.blocking = frozenset(blocking)
        self.name = name
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._reader = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) \
            if workers else None
        self.error: BaseException | None = None
        self.closed = False
        self.on_close: list[Callable[[BaseException | None], None]] = []

    # -- sending ------------------------------------------------------------
    def send(self, message: Message) -> None:
        self.stream.send(encode(message))

    def notify(self, message_type: Type, fields: tuple = (), blob: bytes = b"") -> None:
        self.send(Message(message_type, fields, blob, Kind.NOTICE))

    def call(self, message_type: Type, fields: tuple = (), blob: bytes = b"") -> Message:
        """Send a request and return its reply (ERROR replies raise)."""
        if self.error is not None:
            raise self._closed_error()
        request_id = next(self._ids)
        waiter = _Waiter()
        with self._mutex:
            self._waiters[request_id] = waiter
        try:
            self.send(Message(message_type, fields, blob, Kind.REQUEST, request_id))
        except BaseException:
            with self._mutex:
                self._waiters.pop(request_id, None)
            raise
        self._wait(waiter)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.reply
        assert reply is not None
        if reply.type == Type.ERROR:
            raise RemoteError(reply.fields[0], reply.blob.decode(errors="replace"))
        return reply

    def _closed_error(self) -> BaseException:
        if isinstance(self.error, ChannelError):
            return type(self.error)(str(self.error))
        return ChannelClosed(f"the {self.name} is closed")

    def _wait(self, waiter: _Waiter) -> None:
        while not waiter.done:
            if self._reader.acquire(blocking=False):
                try:
                    while not waiter.done:
                        try:
                            self._read_one()
                        except ChannelIdle:
                            self._keepalive()
                except BaseException as exc:
                    self._fail(exc)
                finally:
                    self._reader.release()
                    with self._cond:
                        self._cond.notify_all()
            else:
                with self._cond:
                    if not waiter.done:
                        self._cond.wait(0.05)

    def _keepalive(self) -> None:
        """A PING while we wait, answered by the other side without waiting
        for it here: if a record was dropped or reordered in either
        direction, one side's TLS fails on the PING or its answer."""
        self.send(Message(Type.PING, (), b"", Kind.REQUEST, next(self._ids)))

    # -- receiving ------------------------------------------------------------
    def serve_forever(self) -> None:
        """Keep reading (the server's idle reader) until the stream ends."""
        try:
            while self.error is None:
                with self._reader:
                    try:
                        self._read_one()
                    except ChannelIdle:
                        if self._waiters:
                            self._keepalive()
                with self._cond:
                    self._cond.notify_all()
        except BaseException as exc:
            self._fail(exc)

    def _read_one(self) -> None:
        frame = self.stream.read_frame(HEADER_SIZE, lambda h: decode_header(h)[3])
        message_type, kind, request_id, _ = decode_header(frame[:HEADER_SIZE])
        body = frame[HEADER_SIZE:]
        try:
            message = decode_body(message_type, kind, request_id, body)
        except ProtocolError as exc:
            if kind == Kind.REQUEST:
                self.send(Message(Type.ERROR, (2,), str(exc).encode(), Kind.REPLY, request_id))
                return
            raise
        if kind == Kind.REPLY:
            with self._cond:
                waiter = self._waiters.pop(request_id, None)
                if waiter is not None:
                    waiter.reply = message
                    waiter.done = True
                    self._cond.notify_all()
            return
        if message_type == Type.PING:
            if kind == Kind.REQUEST:
                self.send(Message(Type.OK, (), b"", Kind.REPLY, request_id))
            return
        if message_type in self.blocking and self._pool is not None:
            self._pool.submit(self._handle, message)
        else:
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if self.handler is None:
            reply: Message | None = error_reply(message, "this side serves no requests")
        else:
            try:
                reply = self.handler(self, message)
            except ChannelError:
                return
            except Exception as exc:  # a handler bug must not end the session
                reply = error_reply(message, f"internal error: {type(exc).__name__}: {exc}")
        if reply is not None and message.kind == Kind.REQUEST:
            try:
                self.send(reply)
            except ChannelError:
                pass

    # -- closing -------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        with self._cond:
            first = self.error is None
            if first:
                self.error = error if isinstance(error, ChannelError) else ChannelError(
                    f"the {self.name} failed: {error}")
            waiters = list(self._waiters.values())
            self._waiters.clear()
            for waiter in waiters:
                waiter.error = self._closed_error()
                waiter.done = True
            self._cond.notify_all()
        if first:
            self.stream.close()
            for callback in self.on_close:
                try:
                    callback(self.error)
                except Exception:
                    pass

    def close(self) -> None:
        self.closed = True
        self._fail(ChannelClosed(f"the {self.name} was closed"))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
