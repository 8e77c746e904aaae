"""A TCP man in the middle for the channel's tests and benchmarks (loopback
only): it forwards TLS records between an AVM and an EVM and, when armed,
tampers with the next application-data record in one direction."""

from __future__ import annotations

import random
import socket
import threading
import time

APPLICATION_DATA = 0x17
# Which direction an attack touches: "c2s" (AVM -> EVM), "s2c", or both.
MODES = ("flip", "length", "replay", "drop", "reorder", "truncate", "blackhole")
BOTH_WAYS = ("truncate", "blackhole")


class TamperingProxy:
    """Forwards one connection to ``target_port`` record by record.

    ``arm(mode, direction)`` applies ``mode`` to the next application-data
    record going ``direction``: flip a bit of its ciphertext, flip a bit of
    its length field, send it twice, drop it, swap it with the one after,
    close both connections (truncate), or stop forwarding anything while
    keeping both connections open (blackhole). ``fired`` is the monotonic
    time the attack took effect."""

    def __init__(self, target_port: int, rng: random.Random | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.rng = rng or random.Random(0)
        self.captured = {"c2s": bytearray(), "s2c": bytearray()}
        self.capturing = True
        self.attack: tuple[str, str] | None = None
        self.fired: float | None = None
        self.detail = ""
        self.blackholed = threading.Event()
        self.held: bytes | None = None
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def arm(self, mode: str, direction: str = "c2s") -> None:
        assert mode in MODES, mode
        self.fired = None
        self.attack = (mode, "both" if mode in BOTH_WAYS else direction)

    def close(self) -> None:
        self.blackholed.set()
        for sock in [self.listener, *self.sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        self.listener.close()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server, "c2s"), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, "s2c"), daemon=True).start()

    @staticmethod
    def _exactly(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _fire(self, detail: str = "") -> None:
        self.fired = time.monotonic()
        self.detail = detail
        self.attack = None

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while True:
                header = self._exactly(source, 5)
                record = header + self._exactly(source, int.from_bytes(header[3:5], "big"))
                if self.blackholed.is_set():
                    continue  # swallowed; both connections stay open
                if self.capturing:
                    self.captured[direction] += record
                with self._lock:
                    record = self._tamper(record, direction, sink)
                if record is not None:
                    sink.sendall(record)
        except (OSError, ConnectionError):
            pass
        finally:
            if not self.blackholed.is_set():
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _tamper(self, record: bytes, direction: str, sink: socket.socket) -> bytes | None:
        attack = self.attack
        if not attack or attack[1] not in (direction, "both") or record[0] != APPLICATION_DATA:
            return record
        mode = attack[0]
        if mode == "flip":
            position = self.rng.randrange(5, len(record))
            bit = self.rng.randrange(8)
            self._fire(f"byte {position} bit {bit}")
            return record[:position] + bytes([record[position] ^ (1 << bit)]) + \
                record[position + 1:]
        if mode == "length":
            bit = self.rng.randrange(16)
            length = int.from_bytes(record[3:5], "big") ^ (1 << bit)
            self._fire(f"length bit {bit}")
            return record[:3] + length.to_bytes(2, "big") + record[5:]
        if mode == "replay":
            self._fire()
            sink.sendall(record)
            return record
        if mode == "drop":
            self._fire()
            return None
        if mode == "reorder":
            if self.held is None:
                self.held = record
                return None
            held, self.held = self.held, None
            self._fire()
            sink.sendall(record)
            return held
        if mode == "truncate":
            self._fire()
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return None
        self.blackholed.set()  # blackhole
        self._fire()
        return None
