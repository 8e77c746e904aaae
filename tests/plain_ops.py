"""Driving the plain test enclave (tests/enclaves/plain): its operations as
Python calls. Each op is a struct in untrusted memory; RDI points at it."""

from __future__ import annotations

import struct

from vsgx.host import Enclave, Exit

OP_NOP, OP_PUT_BUFFER, OP_GET_BUFFER, OP_PUT_ADDRESS, OP_GET_ADDRESS = 0, 1, 2, 3, 4
OP_EACCEPT, OP_EMODPE, OP_INIT_TCS_PAGE, OP_DIVIDE, OP_READ_VIA_RAX = 5, 6, 7, 8, 9
OP_EGETKEY, OP_EREPORT, OP_VERIFY_REPORT, OP_SYSCALL, OP_CPUID = 10, 11, 12, 13, 14
OP_SHA256, OP_WAIT_FLAG, OP_SET_FLAG, OP_HANDLE_EXCEPTION, OP_COPY = 15, 16, 17, 18, 19
OP_EACCEPTCOPY, OP_INT3, OP_RECURSE, OP_BAD_JUMP = 20, 21, 22, 23
OP_MAKE_SECRET, OP_SECRET_HASH, OP_TOUCH, OP_RDTSC, OP_JUMP, OP_SYSCALL_ABI = 24, 25, 26, 27, 28, 29
FIX_NONE, FIX_SET_RAX, FIX_SET_RCX, FIX_SKIP, FIX_EMODPE, FIX_SET_RIP = 0, 1, 2, 3, 4, 5
ABI_SYSCALL, ABI_INT80, ABI_SYSENTER = 0, 1, 2
OP_SIZE = 4096


class PlainEnclave:
    """The plain test enclave loaded in vsgx, with one op buffer per TCS."""

    def __init__(self, enclave: Enclave):
        self.enclave = enclave
        self.ops = {tcs: enclave.alloc(OP_SIZE) for tcs in enclave.tcs}

    @property
    def tcs(self) -> list[int]:
        return self.enclave.tcs

    @property
    def base(self) -> int:
        return self.enclave.base

    def symbol(self, name: str) -> int:
        return self.base + self.enclave.plan.entry_symbols[name]

    def call(self, tcs_index: int, *words: int, tail: bytes = b"", tail_at: int = 64
             ) -> tuple[Exit, list[int]]:
        tcs = self.tcs[tcs_index]
        op = self.ops[tcs]
        data = bytearray(OP_SIZE)
        struct.pack_into(f"<{len(words)}Q", data, 0, *words)
        data[tail_at:tail_at + len(tail)] = tail
        self.enclave.write(op, bytes(data))
        result = self.enclave.eenter(tcs=tcs, rdi=op)
        return result, list(struct.unpack("<8Q", self.enclave.read(op, 64)))

    def read_op(self, tcs_index: int, offset: int, size: int) -> bytes:
        return self.enclave.read(self.ops[self.tcs[tcs_index]] + offset, size)

    def put(self, address: int, value: int, tcs_index: int = 0) -> Exit:
        return self.call(tcs_index, OP_PUT_ADDRESS, value, address)[0]

    def get(self, address: int, tcs_index: int = 0) -> tuple[Exit, int]:
        result, words = self.call(tcs_index, OP_GET_ADDRESS, 0, address)
        return result, words[1]

    def eaccept(self, address: int, flags: int, tcs_index: int = 0) -> tuple[Exit, int]:
        result, words = self.call(tcs_index, OP_EACCEPT, address, flags)
        return result, words[3]

    def egetkey(self, keyrequest: bytes, tcs_index: int = 0) -> tuple[int, bytes]:
        result, words = self.call(tcs_index, OP_EGETKEY, tail=keyrequest)
        assert not result.aex, result.describe()
        return words[1], self.read_op(tcs_index, 16, 16)

    def ereport(self, targetinfo: bytes, reportdata: bytes = bytes(64), tcs_index: int = 0
                ) -> bytes:
        data = targetinfo.ljust(512, b"\0") + reportdata.ljust(64, b"\0")
        result, _ = self.call(tcs_index, OP_EREPORT, tail=data)
        assert not result.aex, result.describe()
        return self.read_op(tcs_index, 640, 432)

    def verify_report(self, report: bytes, tcs_index: int = 0) -> int:
        result, words = self.call(tcs_index, OP_VERIFY_REPORT, tail=report)
        assert not result.aex, result.describe()
        return words[1]

    def handle_exception(self, tcs_index: int, action: int = FIX_NONE, value: int = 0
                         ) -> tuple[Exit, dict[str, int]]:
        result, words = self.call(tcs_index, OP_HANDLE_EXCEPTION, action, value)
        return result, {"exitinfo": words[3], "maddr": words[4], "errcd": words[5],
                        "rip": words[6]}
