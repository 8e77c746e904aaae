"""Every kind of EDL parameter, end to end, with the parameter test enclave
(built here, signed by vsgx): SampleEnclave's Types, Pointers, Arrays and
Functions, the foreign types of [isary] and [isptr], SDK 1.x's [sizefunc],
structs, enums and unions, private ECALLs and a nested ECALL from an OCALL,
and every standard EDL of the SDK imported at once — through the Python
API on both executors and through `vsgx ecall`. The ms structs of all of
them are compared with gcc's layout of hand-written edger8r-style C."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from vsgx.cli.main import main
from vsgx.image import parse_config, sign_enclave
from vsgx.samples import PARAMS_DIR, build_params
from vsgx.sdk import Enclave, OcallError, SgxStatusError, load_edl
from vsgx.sdk import status as st
from vsgx.sdk.bridges import ArgumentError
from vsgx.sdk.ctypes_sysv import TypeSystem, ms_layout

EDL = PARAMS_DIR / "params.edl"
TYPES = {"array_t": 40}
SIZEFUNCS = {"get_buffer_len": lambda buf: int.from_bytes(buf[0:4], "little")}


def fnv(*chunks: bytes) -> int:
    """FNV-1a, as the enclave's stand-ins for the standard ECALLs hash."""
    value = 2166136261
    for chunk in chunks:
        for byte in chunk:
            value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


@pytest.fixture(scope="module")
def params_signed(build_dir, signing_key):
    from vsgx.crypto import load_private_key

    unsigned = build_params(build_dir / "params")
    config = parse_config((PARAMS_DIR / "params.toml").read_text())
    signed = sign_enclave(unsigned.read_bytes(), config, load_private_key(signing_key))
    path = unsigned.with_name("params.signed.so")
    path.write_bytes(signed.data)
    return path


class Handlers:
    """The untrusted side of ecall_ocalls: each handler answers what the
    enclave checks, and records what it saw."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}
        self.enclave: Enclave | None = None

    def mapping(self) -> dict[str, object]:
        return {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")}

    def on_ocall_print_string(self, text):
        self.seen["print"] = text

    def on_ocall_function_allow(self, x):
        assert self.enclave is not None
        return self.enclave.ecall_function_private(x + 1) + 1  # a nested, allowed ECALL

    def on_ocall_pointer_user_check(self, address):
        self.seen["user_check"] = address

    def on_ocall_pointer_in(self, data):
        self.seen["in"] = data

    def on_ocall_pointer_out(self, buffer):
        self.seen["out"] = bytes(buffer)
        buffer[:] = struct.pack("<i", 99)

    def on_ocall_pointer_in_out(self, buffer):
        (value,) = struct.unpack("<i", buffer)
        buffer[:] = struct.pack("<i", value * 10)

    def on_ocall_strings(self, narrow, wide):
        self.seen["strings"] = (narrow, wide)
        return len(narrow) * 100 + len(wide)

    def on_ocall_sizefunc(self, buffer):
        self.seen["sizefunc"] = len(buffer)
        payload = bytes(buffer[4:])
        buffer[4:] = payload[::-1]
        return sum(payload)

    def on_ocall_isary(self, buffer):
        values = struct.unpack("<10i", buffer)
        buffer[:] = struct.pack("<10i", *(2 * v for v in values))
        return sum(values)

    def on_ocall_isptr(self, data, length):
        self.seen["isptr"] = (data, length)
        return sum(data)

    def on_ocall_struct(self, foo, copy, e, u):
        low, high = struct.unpack("<I4xQ", foo)
        copy[:] = struct.pack("<I4xQ", high & 0xFFFFFFFF, high >> 32 << 32 | low)
        return e + struct.unpack_from("<I", u)[0]

    def on_ocall_errno(self, value):
        raise OSError(value, "set by the untrusted side")


@pytest.fixture
def params(params_signed, make_avm):
    handlers = Handlers()
    enclave = Enclave.load(params_signed, edl=EDL, evm=make_avm(), types=TYPES,
                           sizefuncs=SIZEFUNCS, ocalls=handlers.mapping())
    handlers.enclave = enclave
    enclave.handlers = handlers
    yield enclave
    enclave.destroy()


# -- layouts -----------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to compare layouts")
def test_every_ms_struct_of_every_ecall_and_ocall_matches_gcc(tmp_path):
    """The enclave's own functions and those of all nine standard EDLs:
    vsgx's layout against gcc's offsetof on the hand-written structs."""
    interface = load_edl(EDL)
    assert len(interface.ecalls) == 42 and len(interface.ocalls) == 38
    types = TypeSystem(interface.composites, interface.enum_types, TYPES)
    ours, lines = set(), []
    for function in interface.ecalls + interface.ocalls:
        layout = ms_layout(function, types)
        name = f"ms_{function.name}_t"
        for field in layout.fields:
            member = {"retval": "ms_retval", "errno": "ocall_errno"}.get(field.name,
                                                                        "ms_" + field.name)
            ours.add(f"{name} {member} {field.offset}")
            lines.append(f'printf("{name} {member} %zu\\n", offsetof({name}, {member}));')
        ours.add(f"{name} SIZE {layout.size}")
        lines.append(f'printf("{name} SIZE %zu\\n", sizeof({name}));')
    source = tmp_path / "layout.c"
    source.write_text('#include <stdio.h>\n#include "params_ms.h"\nint main(void) {\n'
                      + "\n".join(lines) + "\nreturn 0;\n}\n")
    binary = tmp_path / "layout"
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{PARAMS_DIR}", "-o", str(binary),
                    str(source)], check=True)
    theirs = set(subprocess.run([str(binary)], capture_output=True, text=True,
                                check=True).stdout.splitlines())
    assert ours == theirs
    assert "ms_ecall_array_isary_t ms_arr 8" in ours  # array_t * (8 bytes), not 40
    assert "ms_ecall_pointer_isptr_readonly_t ms_buf 8" in ours  # buffer_t is a pointer
    assert "ms_tee_verify_qae_report_and_identity_t SIZE 984" in ours  # 960-byte value


# -- types ---------------------------------------------------------------------------
def test_scalars_structs_enums_and_unions(params):
    assert params.ecall_type_char(-5) == -4
    assert params.ecall_type_int(14) == 42
    assert params.ecall_type_float(1.5) == 3.0
    assert params.ecall_type_double(10.0) == 2.5
    assert params.ecall_type_size_t(5) == (1 << 64) - 6
    assert params.ecall_type_wchar_t(ord("x")) == ord("y")
    assert params.ecall_type_struct({"struct_foo_0": 3, "struct_foo_1": 4}) == 3004
    assert params.ecall_type_struct(struct.pack("<I4xQ", 5, 6)) == 5006  # bytes too
    assert params.ecall_type_mixed(-1, 300, 5, 7) == -698
    returned = params.ecall_type_struct_return(1, 2)
    assert params.types.unpack_composite("struct_foo_t", returned) == {
        "struct_foo_0": 2, "struct_foo_1": 4}
    union = params.alloc(8, struct.pack("<Q", 5))
    assert params.ecall_type_enum_union(1, union) == 5  # [user_check]: in place
    assert params.read(union, 8) == bytes([0x11]) * 8
    assert params.ecall_type_enum_union(params.interface.enums["ENUM_FOO_0"], union) == \
        0x1111111111111111
    assert params.read(union, 8) == bytes([0x22]) * 8


# -- pointers -------------------------------------------------------------------------
def test_pointers_in_out_strings_and_sizes(params):
    block = params.alloc(4, b"\x01\x02\x03\x04")
    assert params.ecall_pointer_user_check(block, 4) == 10
    assert params.read(block, 4) == b"\xfe\xfd\xfc\xfb"
    assert params.ecall_pointer_in(5) == 6  # a pointer to one int takes a number
    assert params.ecall_pointer_out(None) == 1234  # it arrived zeroed
    assert params.ecall_pointer_in_out(21) == 42
    assert params.ecall_pointer_string("hello, world") == "HELLO, WORLD"
    assert params.ecall_pointer_string_const("twelve chars") == 12
    assert params.ecall_pointer_wstring("ab\u2603") == ord("a") + ord("b") + 0x2603
    assert params.ecall_pointer_size(b"\x00\x01\xff", None) == b"\x5a\x5b\xa5"
    big = bytes(range(256)) * 400  # 100 KiB: a heap block, not the untrusted stack
    assert params.ecall_pointer_size(big, len(big)) == bytes(b ^ 0x5A for b in big)
    assert params.ecall_pointer_count([1, -2, 3], None) == struct.pack("<3i", -1, 2, -3)
    assert params.ecall_pointer_struct({"struct_foo_0": 1, "struct_foo_1": 2}) == (
        3, struct.pack("<I4xQ", 2, 6))
    items = b"abcdef"
    assert params.ecall_pointer_size_count(items, 2, None) == fnv(items) + (2 << 32)
    assert params.ecall_pointer_size_count(items, None, 3) == fnv(items) + (2 << 32)


def test_isptr_buffers(params):
    data = b"readonly buffer"
    checksum = 0
    for byte in data:
        checksum = (checksum * 31 + byte) & ((1 << 64) - 1)
    assert params.ecall_pointer_isptr_readonly(data, None) == checksum
    assert params.ecall_pointer_isptr_out(None, 5) == bytes([0, 7, 14, 21, 28])


def test_sizefunc_buffers_as_sdk_1x_marshalled_them(params):
    # The enclave measures the buffer with its own get_buffer_len (a uint32
    # header), twice; vsgx measures it with the Python one.
    assert params.ecall_pointer_sizefunc(b"\x08\0\0\0abcd") == b"\x08\0\0\0egik"
    with pytest.raises(ArgumentError, match=r"sizefunc get_buffer_len makes buf 8 .* 6 given"):
        params.ecall_pointer_sizefunc(b"\x08\0\0\0ab")  # the enclave would read past it
    params.sizefuncs.clear()  # without one, the bytes given are the buffer
    assert params.ecall_pointer_sizefunc(b"\x06\0\0\0ab") == b"\x06\0\0\0eg"


# -- arrays ----------------------------------------------------------------------------
def test_arrays_and_foreign_arrays(params):
    block = params.alloc(16, struct.pack("<4i", 1, 2, 3, 4))
    assert params.ecall_array_user_check(block) == 10
    assert struct.unpack("<4i", params.read(block, 16)) == (11, 12, 13, 14)
    assert params.ecall_array_in([1, 2, 3, 4]) == 30
    assert params.ecall_array_out(None) == struct.pack("<4i", 0, 1, 4, 9)
    assert params.ecall_array_in_out([1, 2, 3, 4]) == struct.pack("<4i", 1, 4, 9, 16)
    assert params.ecall_array_2d(list(range(1, 7))) == struct.pack(
        "<6i", 10, 21, 32, 43, 54, 65)
    array = params.alloc(40, struct.pack("<10i", *range(10)))
    assert params.ecall_array_isary(array) == 45  # [user_check, isary]: an address
    assert struct.unpack("<10i", params.read(array, 40)) == tuple(range(100, 90, -1))
    assert params.ecall_array_isary_in(struct.pack("<10i", *range(10))) == sum(
        (i + 1) * i for i in range(10))
    assert params.ecall_array_isary_out(None) == struct.pack("<10i", *range(1000, 1010))


# -- functions and OCALLs ----------------------------------------------------------------
def test_private_ecall_only_nested_from_the_ocall_that_allows_it(params):
    assert params.ecall_function_public(5) == (5 + 1) * 7 + 1 + 1
    with pytest.raises(SgxStatusError) as refused:
        params.ecall_function_private(1)
    assert refused.value.status == st.SGX_ERROR_ECALL_NOT_ALLOWED


def test_ocalls_of_every_parameter_kind(params):
    assert params.ecall_ocalls() == 0  # every check inside the enclave passed
    seen = params.handlers.seen
    assert seen["print"] == "hello from the params enclave"
    assert params.raw.base <= seen["user_check"] < params.raw.base + params.raw.size
    assert seen["in"] == struct.pack("<i", 7) and seen["out"] == bytes(4)
    assert seen["strings"] == ("narrow", "wide \u2603")
    assert seen["sizefunc"] == 12 and seen["isptr"] == (b"isptr!", 6)


def test_an_ocall_sized_by_a_missing_sizefunc_names_it(params):
    params.sizefuncs.clear()
    with pytest.raises(OcallError, match=r"buf is sized by sizefunc get_buffer_len"):
        params.ecall_ocalls()
    params.sizefuncs.update(SIZEFUNCS)
    assert params.ecall_ocalls() == 0  # the enclave unwound cleanly


def test_the_standard_edls_ecalls(params):
    assert params.sl_init_switchless(params.alloc(8)) == 0
    assert params.sl_init_switchless(None) == st.SGX_ERROR_INVALID_PARAMETER
    assert params.sl_run_switchless_tworker() == 0
    status, g_a = params.sgx_ra_get_ga(5, None)
    assert status == 5 ^ 0x1000 and g_a == bytes(range(5, 69))
    msg2, target = bytes(range(168)), bytes(range(256)) * 2
    status, report, nonce = params.sgx_ra_proc_msg2_trusted(7, msg2, target, None, None)
    assert status == fnv(msg2, target)
    assert report == bytes(msg2[i % 168] ^ target[i % 512] for i in range(432))
    assert nonce == bytes(range(7, 23))
    qe_report = bytes(range(256)) + bytes(176)
    msg3 = params.alloc(336)
    assert params.sgx_ra_get_msg3_trusted(1, 100, qe_report, msg3, 336) == (
        fnv(qe_report) + 101) & 0xFFFFFFFF
    assert params.read(msg3, 16) == qe_report[:16]
    quote, info, supplemental = b"quote" * 20, bytes(range(240)) * 4, b"supplemental"
    assert params.sgx_tvl_verify_qve_report_and_identity(
        quote, None, info, 1_700_000_000, 2, 3, supplemental, None, 4) == (
        fnv(quote, info, supplemental) ^ (1_700_000_000 & 0xFFFFFFFF) ^ 6 ^ 15 ^ 28)
    qae_input = bytes(range(72))
    assert params.tee_verify_qae_report_and_identity(qae_input, info, 9) == \
        fnv(qae_input, info) ^ 9


# -- lazily made proxies -----------------------------------------------------------------
def test_only_the_ecall_that_needs_an_unknown_type_fails(params_signed, make_avm):
    with Enclave.load(params_signed, edl=EDL, evm=make_avm(), sizefuncs=SIZEFUNCS) as enclave:
        assert enclave.ecall_type_int(1) == 3  # array_t is not known: the rest works
        with pytest.raises(Exception, match=r"ECALL ecall_array_isary_in needs the size of "
                                            r"type 'array_t'.*--type array_t=SIZE"):
            enclave.ecall_array_isary_in(bytes(40))
        assert enclave.ecall_array_isary(enclave.alloc(40)) == 0  # user_check needs no size
        assert "ecall_array_isary_in" in enclave.ecalls


# -- the command line -----------------------------------------------------------------------
def ecall(capsys, signed, *args):
    code = main(["ecall", str(signed), "--edl", str(EDL), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, expected", [
    (["ecall_type_char", "A"], "ecall_type_char returned 66"),
    (["ecall_type_int", "14"], "ecall_type_int returned 42"),
    (["ecall_type_float", "1.25"], "ecall_type_float returned 2.5"),
    (["ecall_type_double", "10"], "ecall_type_double returned 2.5"),
    (["ecall_type_size_t", "0xfffffffffffffff0"], "ecall_type_size_t returned 15"),
    (["ecall_type_wchar_t", "x"], "ecall_type_wchar_t returned 121"),
    (["ecall_type_struct", '{"struct_foo_0": 3, "struct_foo_1": 4}'],
     "ecall_type_struct returned 3004"),
    (["ecall_type_enum_union", "ENUM_FOO_1", "hex:0500000000000000"],
     "ecall_type_enum_union returned 5\nval2 (untrusted) = 1111111111111111"),
    (["ecall_type_mixed", "-1", "300", "5", "7"], "ecall_type_mixed returned -698"),
    (["ecall_pointer_user_check", "hex:01020304", "4"],
     "ecall_pointer_user_check returned 10\nval (untrusted) = fefdfcfb"),
    (["ecall_pointer_in", "hex:05000000"], "ecall_pointer_in returned 6"),
    (["ecall_pointer_out"], "val = 1234"),
    (["ecall_pointer_in_out", "hex:15000000"], "val = 42"),
    (["ecall_pointer_string", "shout"], "str = 'SHOUT'"),
    (["ecall_pointer_string_const", "twelve chars"], "ecall_pointer_string_const returned 12"),
    (["ecall_pointer_wstring", "ab\u2603"], f"returned {ord('a') + ord('b') + 0x2603}"),
    (["ecall_pointer_size", "hex:0001ff"], "ptr = 5a5ba5"),
    (["ecall_pointer_count", "[1, -2, 3]"], "arr = ffffffff02000000fdffffff"),
    (["ecall_pointer_isptr_readonly", "abc"], "ecall_pointer_isptr_readonly returned 96354"),
    (["ecall_pointer_isptr_out", "-", "5"], "buf = 00070e151c"),
    (["ecall_pointer_sizefunc", "hex:0800000061626364"], "buf = 080000006567696b"),
    (["ecall_pointer_struct", '{"struct_foo_0": 1, "struct_foo_1": 2}'],
     "foo = {'struct_foo_0': 2, 'struct_foo_1': 6}"),
    (["ecall_array_user_check", "hex:01000000020000000300000004000000"],
     "ecall_array_user_check returned 10"),
    (["ecall_array_in", "[1, 2, 3, 4]"], "ecall_array_in returned 30"),
    (["ecall_array_out"], "arr = 00000000010000000400000009000000"),
    (["ecall_array_isary", "alloc:40"], "ecall_array_isary returned 0"),
    (["--type", "array_t=40", "ecall_array_isary_out"], "arr = e8030000e9030000"),
    (["ecall_array_2d", "[1, 2, 3, 4, 5, 6]"], "arr = 0a000000150000002000"),
    (["sgx_ra_get_ga", "5"], "sgx_ra_get_ga returned 4101\ng_a = 05060708"),
    (["sl_run_switchless_tworker"], "sl_run_switchless_tworker returned 0"),
])
def test_vsgx_ecall_passes_every_parameter_kind(capsys, params_signed, args, expected):
    code, out, err = ecall(capsys, params_signed, *args)
    assert code == 0, err
    assert expected in out


@pytest.mark.parametrize("args, message", [
    (["ecall_array_isary_in", "hex:00"],
     "ECALL ecall_array_isary_in needs the size of type 'array_t'"),
    (["--type", "array_t", "ecall_type_int", "1"], "expected NAME=SIZE"),
    (["--type", "array_t=x", "ecall_type_int", "1"], "must be numbers"),
    (["--type", "array_t=40:3", "ecall_type_int", "1"], "are not valid"),
    (["ecall_function_private", "3"], "SGX_ERROR_ECALL_NOT_ALLOWED"),
    (["ecall_ocalls"], "OCALL ocall_pointer_user_check (index 2), which has no handler"),
    (["ecall_pointer_size", "hex:00", "99999999999"],
     "99999999999 bytes are more than vsgx passes in one buffer"),
    (["ecall_type_struct", "{bad json"], "is not JSON"),
])
def test_vsgx_ecall_errors_are_one_line(capsys, params_signed, args, message):
    code, _, err = ecall(capsys, params_signed, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and message in lines[0], err


def test_vsgx_ecall_reads_type_sizes_from_a_file(capsys, params_signed, tmp_path):
    types = tmp_path / "types.toml"
    types.write_text("[types]\narray_t = [40, 4]\n")
    code, out, err = ecall(capsys, params_signed, "--types", types, "ecall_array_isary_in",
                           "hex:" + struct.pack("<10i", *range(10)).hex())
    assert code == 0, err
    assert f"returned {sum((i + 1) * i for i in range(10))}" in out
    types.write_text("array_t = 'forty'\n")
    code, _, err = ecall(capsys, params_signed, "--types", types, "ecall_type_int", "1")
    assert code == 1 and "expected SIZE or [SIZE, ALIGN]" in err
    types.write_text("[types\n")
    code, _, err = ecall(capsys, params_signed, "--types", types, "ecall_type_int", "1")
    assert code == 1 and "not valid TOML" in err
