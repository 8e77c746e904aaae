"""A multiplexed connection: many requests in flight from many threads, in
both directions, over one stream.

Threads cooperate as leader and followers (Schmidt's pattern): one thread at
a time reads. A thread waiting for its reply reads itself when nobody else
does, handing replies to the threads that wait for them, until its own
arrives. A server runs a few threads in ``serve_forever``: the one that
reads a request gives up the reader role before handling it, so the next
one reads on while it works. No message is ever passed between threads on
the way to its handler: a single thread entering an enclave does every step
itself.

Every wait has a deadline: while a thread waits for a reply, or a request
of the peer is being handled (the peer waits, and so keeps sending PINGs),
silence from the peer for ``deadline`` seconds ends the connection with a
clear error. The one who waits sends the PINGs, so an enclave that runs for
an hour is not silence.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from enum import IntEnum
from typing import Any, Protocol

from vsgx.channel.evidence import one_line
from vsgx.channel.messages import (
    HEADER_SIZE,
    Kind,
    Message,
    ProtocolError,
    Type,
    decode_body,
    decode_header,
    encode,
    is_sole,
)
from vsgx.channel.transport import (
    DEFAULT_TIMEOUT,
    IDLE_SECONDS,
    ChannelClosed,
    ChannelError,
    ChannelIdle,
)
from vsgx.errors import VsgxError


class Stream(Protocol):
    last_received: float  # monotonic time of the last plaintext from the peer

    def send(self, data: bytes) -> None: ...
    def read_frame(self, header_size: int, body_length: Callable[[bytes], int],
                   wait: float = IDLE_SECONDS) -> bytes: ...
    def pending(self) -> bool: ...
    def close(self) -> None: ...


class RemoteError(VsgxError):
    """The other side answered a request with ERROR."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


Handler = Callable[["Connection", Message], Message | None]


_events = threading.local()


def _thread_event() -> threading.Event:
    """This thread's event for its waits, made once (an Event costs a few
    microseconds to make; a thread waits for one reply at a time). A set
    left over from an earlier wait only makes the next one look again."""
    event = getattr(_events, "event", None)
    if event is None:
        event = _events.event = threading.Event()
    event.clear()
    return event


class _Waiter:
    """A request waiting for its reply. ``event`` is set (under the
    connection's mutex) only once its thread must sleep: a thread that
    reads its own reply is never woken."""

    __slots__ = ("done", "error", "event", "reply")

    def __init__(self) -> None:
        self.done = False
        self.event: threading.Event | None = None
        self.reply: Message | None = None
        self.error: BaseException | None = None


def reply_to(request: Message, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b""
             ) -> Message:
    return Message(message_type, fields, blob, Kind.REPLY, request.request_id)


class ErrorCode(IntEnum):
    """The code of an ERROR reply."""

    FAILED = 1
    PROTOCOL = 2  # a malformed request
    VIOLATION = 3  # a request touching what the session does not own
    REJECTED = 4  # the request is well-formed but cannot be done
    REFUSED = 5  # the EVM does not admit this client
    FULL = 6  # the EVM has no room for another session


def error_reply(request: Message, text: str, code: int = ErrorCode.FAILED) -> Message:
    return reply_to(request, Type.ERROR, (code,), text.encode()[:4000])


class Connection:
    in_memory = False  # attachments (see vsgx.channel.memory) cannot cross it

    def __init__(self, stream: Stream, handler: Handler | None = None, *,
                 blocking: Collection[Type] = (), name: str = "channel",
                 peer: str = "the other side", deadline: float = DEFAULT_TIMEOUT):
        self.stream = stream
        self.handler = handler
        self.peer = peer
        self.deadline = deadline
        # How long a read waits before a keepalive: several PINGs fit in a deadline.
        self._tick = min(IDLE_SECONDS, deadline / 4)
        # Requests that may run long: a thread that reads one while it waits
        # for its own reply hands it to a new thread.
        self.blocking = frozenset(blocking)
        self.name = name
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._mutex = threading.Lock()
        self._role = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._role_waiters = 0  # serving threads waiting for the role
        self._owner_reading = False
        self._busy_since = 0.0
        self._handling = 0  # requests of the peer being handled (it waits for them)
        self._expecting_since = time.monotonic()
        self._header: tuple[Type, Kind, int, int] = (Type.OK, Kind.REPLY, 0, 0)
        self.error: BaseException | None = None
        self.closed = False
        self.on_close: list[Callable[[BaseException | None], None]] = []

    # -- sending ------------------------------------------------------------
    def send(self, message: Message, sole: bool = False) -> None:
        self.stream.send(encode(message, sole))

    def notify(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b"") -> None:
        self.send(Message(message_type, fields, blob, Kind.NOTICE))

    def call(self, message_type: Type, fields: tuple[Any, ...] = (), blob: bytes = b"") -> Message:
        """Send a request and return its reply (ERROR replies raise). An
        interrupt (Ctrl-C) while waiting closes the connection: the reply
        could never be matched to anything again."""
        if self.error is not None:
            raise self._closed_error()
        request_id = next(self._ids)
        waiter = _Waiter()
        with self._mutex:
            sole = not self._waiters
            if sole and not self._handling:
                self._expecting_since = time.monotonic()
            self._waiters[request_id] = waiter
        try:
            self.send(Message(message_type, fields, blob, Kind.REQUEST, request_id), sole)
        except ChannelError:
            with self._mutex:
                self._waiters.pop(request_id, None)
            self._drain()  # the peer may have said why before it closed (idle, say)
            if self.error is not None:
                raise self._closed_error() from None
            raise
        except BaseException:
            with self._mutex:
                self._waiters.pop(request_id, None)
            raise
        try:
            self._wait(waiter)
        except BaseException:
            self._fail(ChannelClosed(f"the {self.name} was closed: interrupted while waiting "
                                     "for a reply"))
            raise
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

    # -- the reader role ----------------------------------------------------
    # One thread at a time reads. The role is a flag under a condition (not
    # a lock) so that a watchdog can take it back from a thread that holds
    # it while busy elsewhere (running a SOLE request's enclave code) and
    # give it to a serving thread: then the session keeps reading — new
    # requests, and the end of the stream — however long the work takes.
    def _take_role(self, wait: bool) -> bool:
        me = threading.get_ident()
        with self._role:
            while self._owner is not None:
                if not wait or self.error is not None:
                    return False
                self._role_waiters += 1
                try:
                    self._role.wait(0.5)
                finally:
                    self._role_waiters -= 1
            self._owner = me
            self._owner_reading = True
            return True

    def _give_role(self) -> None:
        with self._role:
            if self._owner == threading.get_ident():
                self._owner = None
                if self._role_waiters:
                    self._role.notify()
        if self._waiters:
            self._wake_a_follower()

    def _set_reading(self, reading: bool) -> bool:
        """Mark the owner reading or busy; False if the role was taken back."""
        with self._role:
            if self._owner != threading.get_ident():
                return False
            self._owner_reading = reading
            self._busy_since = time.monotonic()
            return True

    def reclaim_role(self, busy_for: float) -> bool:
        """The watchdog: take the role from an owner busy for ``busy_for``
        seconds and wake a serving thread to read."""
        with self._role:
            if (self._owner is None or self._owner_reading
                    or time.monotonic() - self._busy_since < busy_for):
                return False
            self._owner = None
            self._role.notify()
        self._wake_a_follower()
        return True

    def _wait(self, waiter: _Waiter) -> None:
        me = threading.get_ident()
        while not waiter.done:
            if self._owner == me:
                if self._set_reading(True):
                    self._lead(waiter)
                    self._set_reading(False)
                continue
            if self._take_role(wait=False):
                try:
                    self._lead(waiter)
                finally:
                    self._give_role()
                continue
            with self._mutex:
                if waiter.done:
                    break
                if waiter.event is None:
                    waiter.event = _thread_event()
                event = waiter.event
            # A role given back before the event was there woke nobody: look.
            if self._owner is None:
                continue
            event.wait(0.05)
            event.clear()

    def _lead(self, waiter: _Waiter) -> None:
        """Read until ``waiter`` has its reply (holding the reader role). An
        interrupt propagates (``call`` closes the connection)."""
        try:
            while not waiter.done:
                try:
                    message, _ = self._read_one(self._tick)
                except ChannelIdle:
                    self._idle()
                    continue
                if message is not None:
                    self._dispatch_while_waiting(message)
        except Exception as exc:
            self._fail(exc)

    def _drain(self) -> None:
        """Read what has already arrived, if nobody else is reading."""
        if self.error is not None or not self._take_role(wait=False):
            return
        try:
            while self.error is None and self.stream.pending():
                try:
                    message, _ = self._read_one(wait=0)
                except ChannelIdle:
                    break
                if message is not None:
                    self._dispatch_while_waiting(message)
        except Exception as exc:
            self._fail(exc)
        finally:
            self._give_role()

    def _idle(self) -> None:
        """Nothing arrived for a while. If we wait for the peer, keep it
        talking, and give up on it once it has been silent too long."""
        with self._mutex:
            waiting = bool(self._waiters)
            expecting = waiting or self._handling > 0
        if not expecting:
            return
        silent = time.monotonic() - max(self.stream.last_received, self._expecting_since)
        if silent >= self.deadline:
            raise ChannelError(f"{self.peer} stopped answering: nothing received for "
                               f"{silent:.0f} s")
        if waiting:
            self._keepalive()

    def _wake_a_follower(self) -> None:
        """The reader role is free: let a thread still waiting take it."""
        with self._mutex:
            for other in self._waiters.values():
                if other.event is not None:
                    other.event.set()  # it re-checks its reply and tries to lead
                    break

    def _keepalive(self) -> None:
        """A PING while we wait, answered by the other side without waiting
        for it here: if a record was dropped or reordered in either
        direction, one side's TLS fails on the PING or its answer."""
        self.send(Message(Type.PING, (), b"", Kind.REQUEST, next(self._ids)))

    # -- receiving ------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve requests until the stream ends (run it in several threads).
        A SOLE request, or a quick one, is handled by the thread that read
        it, which keeps the reader role for its own needs (its page
        fetches) unless the watchdog takes it back, and then reads on: a
        peer that sends one request at a time is served by one thread,
        with no hand-off. Any other long request is handled after the role
        went to the next thread."""
        me = threading.get_ident()
        try:
            while self.error is None:
                if self._owner != me and not self._take_role(wait=True):
                    continue
                try:
                    message, sole = self._read_one(self._tick)
                except ChannelIdle:
                    self._idle()
                    continue
                if message is None:
                    continue
                if message.type in self.blocking and not sole:
                    self._give_role()
                    self._handle(message)
                    continue
                self._set_reading(False)
                self._handle(message)
                self._set_reading(True)  # False if the watchdog took the role meanwhile
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._give_role()

    def _read_one(self, wait: float = IDLE_SECONDS) -> tuple[Message | None, bool]:
        """Read a frame; deliver replies; return requests and notices."""
        frame = self.stream.read_frame(HEADER_SIZE, self._body_length, wait)
        message_type, kind, request_id, _ = self._header
        try:
            message = decode_body(message_type, kind, request_id, memoryview(frame)[HEADER_SIZE:])
        except ProtocolError as exc:
            if kind == Kind.REQUEST:
                self.send(Message(Type.ERROR, (2,), str(exc).encode(), Kind.REPLY, request_id))
                return None, False
            raise
        if kind == Kind.REPLY:
            event = None
            with self._mutex:
                waiter = self._waiters.pop(request_id, None)
                if waiter is not None:
                    waiter.reply = message
                    waiter.done = True
                    event = waiter.event
            if waiter is not None and event is not None:
                event.set()
            return None, False
        if message_type == Type.PING:
            if kind == Kind.REQUEST:
                self.send(Message(Type.OK, (), b"", Kind.REPLY, request_id))
            return None, False
        if message_type == Type.CLOSING:
            raise ChannelClosed(one_line(message.blob.decode(errors="replace"), 300)
                                or f"{self.peer} closed the channel")
        return message, is_sole(frame)

    def _body_length(self, header: bytes) -> int:
        """The stream's callback: the body's length, keeping the decoded
        header for ``_read_one`` (only the reader calls it)."""
        self._header = decode_header(header)
        return self._header[3]

    def _dispatch_while_waiting(self, message: Message) -> None:
        if message.type in self.blocking:
            threading.Thread(target=self._handle, args=(message,), daemon=True,
                             name=f"{self.name} request").start()
        else:
            self._handle(message)

    def _handle(self, message: Message) -> None:
        request = message.kind == Kind.REQUEST
        if request:
            with self._mutex:
                if not self._handling and not self._waiters:
                    self._expecting_since = time.monotonic()
                self._handling += 1
        try:
            self._handle_one(message)
        finally:
            if request:
                with self._mutex:
                    self._handling -= 1

    def _handle_one(self, message: Message) -> None:
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
        with self._mutex:
            first = self.error is None
            if first:
                self.error = error if isinstance(error, ChannelError) else ChannelError(
                    f"the {self.name} failed: {error}")
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.error = self._closed_error()
            with self._mutex:
                waiter.done = True
                event = waiter.event
            if event is not None:
                event.set()
        with self._role:
            self._role.notify_all()
        if first:
            self.stream.close()
            for callback in self.on_close:
                try:
                    callback(self.error)
                except Exception:
                    pass

    def close(self, reason: str | None = None) -> None:
        self.closed = True
        self._fail(ChannelClosed(reason or f"the {self.name} was closed"))
