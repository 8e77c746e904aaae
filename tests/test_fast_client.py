"""The fast path's client (runner/client.c, through FastClient) against a
runner played here: a thread that writes the CLIENT area as the runner does
— and as enclave code, which runs in the runner, can. Whatever the area
says, the client answers from one of its slots, and what the enclave wrote
into a slot reaches the application's page."""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import time
from collections.abc import Callable

import pytest

from vsgx.arch.constants import PAGE_SIZE
from vsgx.evm import native_support
from vsgx.evm.executor import REG_COUNT
from vsgx.evm.native_executor import FAST_EEXIT, FAST_REFUSED, FastClient, client_library
from vsgx.evm.runner import layout

USABLE, WHY = native_support()
pytestmark = pytest.mark.skipif(not USABLE, reason=f"no native executor here: {WHY}")

CLIENT = layout.CLIENT
FIRST_PAGE = 0x10000000
ENCLAVE_BASE = 0x400000000000


class Pages:
    """Untrusted memory as FastClient wants it: pages it may copy from."""

    shares_pages = True
    generation = 0

    def __init__(self, count: int):
        self.pages = {FIRST_PAGE + i * PAGE_SIZE: bytearray(struct.pack("<Q", i + 1)
                                                            .ljust(PAGE_SIZE, b"\0"))
                      for i in range(count)}

    def share(self, page: int) -> tuple[bytearray, bool] | None:
        data = self.pages.get(page)
        return None if data is None else (data, True)


class PlayedRunner:
    """The runner's side of the CLIENT area, one reply at a time."""

    def __init__(self, area: mmap.mmap, pool: mmap.mmap):
        self.area, self.pool = area, pool
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        self.lib = client_library()
        self.seen = 0

    def u32(self, name: str) -> int:
        return int(struct.unpack_from("<I", self.area, CLIENT.offset(name))[0])

    def wait_request(self) -> None:
        deadline = time.monotonic() + 10
        while self.u32("request_seq") == self.seen:
            if time.monotonic() > deadline:
                raise AssertionError("the client sent no request")
        self.seen = self.u32("request_seq")

    def reply(self, kind: int) -> None:
        struct.pack_into("<I", self.area, CLIENT.offset("reply"), kind)
        self.lib.vsgx_wake_client(self.address)  # moves reply_seq on, wakes a sleeper

    def ask_page(self, page: int) -> int:
        """REPLY_PAGE for ``page``; the slot the client answered with."""
        struct.pack_into("<QI", self.area, CLIENT.offset("page_address"), page, 1)
        self.reply(layout.REPLY_PAGE)
        self.wait_request()
        assert self.u32("request") == layout.REQ_PAGE
        return self.u32("page_slot")

    def slot(self, slot: int) -> memoryview:
        return memoryview(self.pool)[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE]


def played_client() -> tuple[FastClient, PlayedRunner]:
    """A client on a CLIENT area and a pool of this process, with the
    runner played here."""
    area = mmap.mmap(-1, CLIENT.size)
    struct.pack_into("<I", area, CLIENT.offset("magic"), layout.CLIENT_MAGIC)
    pool = mmap.mmap(-1, layout.CLIENT_SLOTS * PAGE_SIZE)
    return (FastClient(area, pool, 0, ENCLAVE_BASE, 1 << 20, None, "played"),
            PlayedRunner(area, pool))


def enter_once(client: FastClient, memory: Pages, play: Callable[[], None]) -> int:
    """One EENTER of ``client`` while ``play`` plays the runner: its result."""
    player = threading.Thread(target=play)
    player.start()
    assert client.begin(memory)
    code = client.enter(layout.REQ_EENTER, [0] * REG_COUNT, 0x1234, memory)
    client.end()
    player.join()
    return int(code)


def test_made_up_page_requests_are_answered_from_the_slot_that_holds_the_page():
    """Every slot filled, then 300 requests for pages the client holds
    already (enclave code can make them up): each comes back from the slot
    that holds it, with what the enclave wrote there, never from a slot
    past the last (the client's memory after its slots) — and the write
    reaches the application at the exit."""
    client, runner = played_client()
    memory = Pages(layout.CLIENT_SLOTS)
    answers: list[tuple[int, int]] = []
    failures: list[BaseException] = []

    def play() -> None:
        try:
            runner.wait_request()  # the EENTER
            for page in memory.pages:
                answers.append((page, runner.ask_page(page)))
            held = {page: slot for page, slot in answers}
            first = next(iter(memory.pages))
            runner.slot(held[first])[8:16] = struct.pack("<Q", 0xE0C1A7E)  # the enclave's write
            for n in range(300):
                page = first if n % 2 == 0 else list(memory.pages)[n % layout.CLIENT_SLOTS]
                answers.append((page, runner.ask_page(page)))
            runner.reply(layout.REPLY_EEXIT)
        except BaseException as exc:  # shown by the main thread
            failures.append(exc)
            runner.reply(layout.REPLY_EEXIT)

    code = enter_once(client, memory, play)
    assert not failures, failures
    assert code == FAST_EEXIT
    assert all(slot < layout.CLIENT_SLOTS for _, slot in answers)
    first_slot = {page: slot for page, slot in answers[:layout.CLIENT_SLOTS]}
    for page, slot in answers[layout.CLIENT_SLOTS:]:
        assert slot == first_slot[page]  # the slot that holds it, not a new one
    first = FIRST_PAGE
    assert struct.unpack_from("<QQ", memory.pages[first]) == (1, 0xE0C1A7E)


def test_a_reply_the_runner_never_sends_is_a_refusal():
    """REPLY_BAD, or a value no runner writes, sends the entry to the EVM;
    neither is taken for the EVM's closing of the runner."""
    for value in (layout.REPLY_BAD, 7, 0xFFFFFFFF):
        client, runner = played_client()

        def play(value: int = value, runner: PlayedRunner = runner) -> None:
            runner.wait_request()
            runner.reply(value)

        assert enter_once(client, Pages(1), play) == FAST_REFUSED, value
        assert not client.closed

